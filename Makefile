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

# study-NAME is not declared phony: make skips the pattern rule study-% for a phony target.
.PHONY: setup test test-all figures results plots report bench clean
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
# `make results` reruns the stale studies only: those `python -m lintheory.studies --stale` prints (no results
# file of the profile, or one whose trainer revision or code digest differs from the code here; the engine's
# docstring states what the digest covers). FORCE=1 reruns every study. With fresh committed results a fresh
# clone's `make figures` only draws the figures and writes the report.
# results/make_results.json records the wall time of the last run; results/profiles/PROFILE.json that of the
# last run of every study (a partial run does not replace it). Two chains of studies run side by side
# (JOBS=1 runs them one after another); a model two studies share is trained once (a file lock in
# the cache), so the order only balances time. (Starting every study as soon as a slot freed,
# longest first, took longer on 2 cores: it put the two heaviest trainers side by side.) A study left
# out of the rerun finishes at once, so the chains stay as they are.
# APART: studies `make results` does not run (deep_recipes: 23 min at default on 2 cores, its own
# question); it says when one is stale, and `make study-NAME` reruns it.
STUDIES := pruning prune_bound paper_protocol implicit_gd one_layer mismatch in_weights positive_control
APART := deep_recipes
JOBS ?= 2
FORCE ?= 0
results: $(BIN)/.installed
	@mkdir -p runs/logs
	@if [ "$(FORCE)" = 1 ]; then rerun="$(STUDIES)"; \
	  else rerun=$$($(BIN)/python -m lintheory.studies --stale --profile $(PROFILE) $(STUDIES)) || exit 2; fi; \
	  rerun=$$(echo $$rerun); \
	  if [ -z "$$rerun" ]; then echo "== every study's $(PROFILE) results are fresh: none reruns (FORCE=1 reruns them all)"; \
	  else start=$$(date +%s); cached=$$(ls $(CACHE)/cache/*/params.npz 2>/dev/null | wc -l); \
	    $(MAKE) --no-print-directory -j$(JOBS) $(addprefix study-,$(STUDIES)) RERUN="$$rerun" && \
	    $(BIN)/python -m lintheory.studies --record-wall $$start --profile $(PROFILE) --jobs $(JOBS) \
	      --cached-models $$cached $$([ "$$rerun" = "$(STUDIES)" ] || echo --partial) && \
	    for s in $$rerun; do grep -h -A1 "rows, .* failures" runs/logs/$$s.log; done; fi
	@for s in $$($(BIN)/python -m lintheory.studies --stale --profile $(PROFILE) $(APART) 2>/dev/null); do \
	  echo "== $$s has no fresh $(PROFILE) results and make figures does not run it: make study-$$s PROFILE=$(PROFILE)"; done

study-prune_bound: study-pruning
study-paper_protocol: study-prune_bound
study-one_layer: study-implicit_gd
study-mismatch: study-one_layer
study-in_weights: study-mismatch
study-positive_control: study-in_weights
# RERUN (set by `make results`): the studies to run; another study of the chain finishes at once.
study-%: $(BIN)/.installed
	@if [ -n "$(RERUN)" ] && [[ " $(RERUN) " != *" $* "* ]]; then echo "== study $* ($(PROFILE)): fresh, not rerun"; exit 0; fi; \
	  echo "== study $* ($(PROFILE)) started; its log: runs/logs/$*.log"; \
	  set -o pipefail; $(BIN)/python -u -m lintheory.studies $* --profile $(PROFILE) --cache-dir $(CACHE) 2>&1 \
	  | tee runs/logs/$*.log | sed -u "s/^/[$*] /"

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
