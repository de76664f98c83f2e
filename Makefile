# Two commands on a fresh machine:  make bench  (the main job)  and  make test
VENV ?= .venv
PY := $(VENV)/bin/python
# Spec-Bench development questions where this checkout sits beside them, else the packaged MT-bench set
SPEC_BENCH := ../shared/data/spec_bench/question.jsonl
QUESTIONS ?= $(if $(wildcard $(SPEC_BENCH)),$(SPEC_BENCH),mtbench)
PER_CATEGORY ?= 1
MAX_NEW_TOKENS ?= 128

.PHONY: install bench test test-fast test-full clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

bench: install
	$(VENV)/bin/draftsmith bench --questions $(QUESTIONS) --per-category $(PER_CATEGORY) \
		--max-new-tokens $(MAX_NEW_TOKENS) --method none --method ngram --out runs/bench

# two worker processes (the tests use one torch thread each); a file stays on one worker, so the
# real model is fetched once
test: install
	$(PY) -m pytest -q -n 2 --dist loadfile

test-fast: install
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow and not extended"

# every case of every matrix (the default run leaves out the `extended` ones: a second sampling case per drafter)
test-full: install
	$(PY) -m pytest -q -n 2 --dist loadfile -m ""

clean:
	rm -rf $(VENV) runs
