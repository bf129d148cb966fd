# Two entry points: `make figures` and `make test`. Both set themselves up in .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROFILE ?= default
export MPLBACKEND := Agg

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

.PHONY: setup test test-all figures results plots bench clean
setup: $(BIN)/.installed

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

test-all: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m ''

# Studies write results/, plots read results/ and write figures/.
STUDIES := one_layer implicit_gd condition_numbers prune_depth prune_trajectory prune_bound prune_shots algorithm1
results: $(BIN)/.installed
	@for s in $(STUDIES); do echo "== study $$s ($(PROFILE))"; \
	  $(BIN)/python experiments/$$s.py --profile $(PROFILE) || exit 1; done

plots: $(BIN)/.installed
	$(BIN)/python -m lintheory.plots --results results --figures figures

figures: results plots

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/train_step.py
	$(BIN)/python benchmarks/sweep.py

clean:
	rm -rf $(VENV) runs
