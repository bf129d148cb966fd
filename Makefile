# Two entry points: `make figures` and `make test`. Both set themselves up in .venv.
PY ?= python3
SHELL := bash
VENV := .venv
BIN := $(VENV)/bin
PROFILE ?= default
export MPLBACKEND := Agg

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@

.PHONY: setup test test-all figures results plots bench clean $(addprefix study-,$(STUDIES))
setup: $(BIN)/.installed

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

test-all: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m ''

# Studies write results/, plots read results/ and write figures/.
# Two chains of studies run side by side (JOBS=1 runs them one after another): the small
# per-task contractions keep XLA on a CPU from filling both cores with one process. A model
# two studies share is trained once (io.locked in the cache), so the order only balances time.
STUDIES := one_layer implicit_gd condition_numbers prune_depth prune_trajectory prune_bound prune_shots algorithm1
JOBS ?= 2
results: $(BIN)/.installed
	@mkdir -p runs/logs
	@$(MAKE) --no-print-directory -j$(JOBS) $(addprefix study-,$(STUDIES))

study-condition_numbers: study-one_layer
study-prune_depth: study-condition_numbers
study-prune_trajectory: study-prune_depth
study-prune_bound: study-prune_trajectory
study-algorithm1: study-prune_bound
study-prune_shots: study-implicit_gd
study-%: $(BIN)/.installed
	@echo "== study $* ($(PROFILE)) started; its log: runs/logs/$*.log"
	@set -o pipefail; $(BIN)/python -u experiments/$*.py --profile $(PROFILE) 2>&1 | tee runs/logs/$*.log \
	  | sed -u "s/^/[$*] /"

plots: $(BIN)/.installed
	$(BIN)/python -m lintheory.plots --results results --figures figures

figures: results plots

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/train_step.py
	$(BIN)/python benchmarks/sweep.py

clean:
	rm -rf $(VENV) runs
