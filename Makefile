# Two entry points: `make figures` and `make test`. Both set themselves up in .venv.
PY ?= python3
SHELL := bash
VENV := .venv
BIN := $(VENV)/bin
PROFILE ?= default
CACHE ?= runs
export MPLBACKEND := Agg

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@

.PHONY: setup test test-all figures results plots report bench clean $(addprefix study-,$(STUDIES))
setup: $(BIN)/.installed

# The suite keeps one core busy (compiling small programs, mostly): two workers, one test file each at a
# time (module fixtures are built once), use both cores of the 2-core machine. TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
test: $(BIN)/.installed
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-all: $(BIN)/.installed
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m ''

# Studies write results/ (python -m lintheory.studies NAME), plots read results/ and write figures/,
# the report reads results/ and writes docs/report.md and the generated blocks of README.md and
# docs/scale-out.md; a profile other than default uses results/PROFILE/, figures/PROFILE/ and
# docs/report-PROFILE.md instead (each command derives them from --profile: lintheory.studies.engine.results_dir).
# Every cache lives under CACHE (models and references in CACHE/cache, compiled programs in CACHE/jax_cache).
# results/make_results.json and results/profiles/PROFILE.json record the wall time of the whole run. Two chains of studies run side by side
# (JOBS=1 runs them one after another); a model two studies share is trained once (a file lock in
# the cache), so the order only balances time. (Starting every study as soon as a slot freed,
# longest first, took longer on 2 cores: it put the two heaviest trainers side by side.)
STUDIES := pruning prune_bound paper_protocol implicit_gd one_layer mismatch in_weights positive_control
JOBS ?= 2
results: $(BIN)/.installed
	@mkdir -p runs/logs
	@start=$$(date +%s); cached=$$(ls $(CACHE)/cache/*/params.npz 2>/dev/null | wc -l); \
	  $(MAKE) --no-print-directory -j$(JOBS) $(addprefix study-,$(STUDIES)) && \
	  $(BIN)/python -m lintheory.studies --record-wall $$start --profile $(PROFILE) --jobs $(JOBS) --cached-models $$cached
	@grep -h -A1 "rows, .* failures" $(addprefix runs/logs/,$(addsuffix .log,$(STUDIES)))

study-prune_bound: study-pruning
study-paper_protocol: study-prune_bound
study-one_layer: study-implicit_gd
study-mismatch: study-one_layer
study-in_weights: study-mismatch
study-positive_control: study-in_weights
study-%: $(BIN)/.installed
	@echo "== study $* ($(PROFILE)) started; its log: runs/logs/$*.log"
	@set -o pipefail; $(BIN)/python -u -m lintheory.studies $* --profile $(PROFILE) --cache-dir $(CACHE) 2>&1 | tee runs/logs/$*.log \
	  | sed -u "s/^/[$*] /"

plots: $(BIN)/.installed
	$(BIN)/python -m lintheory.plots --profile $(PROFILE)

report: $(BIN)/.installed
	$(BIN)/python -m lintheory.report --profile $(PROFILE) --docs README.md docs/scale-out.md

figures: results plots report

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/train_step.py
	$(BIN)/python benchmarks/sweep.py
	$(BIN)/python benchmarks/fits.py
	$(BIN)/python -m lintheory.run.device_check --out results/device_check.json

clean:
	rm -rf $(VENV) runs
