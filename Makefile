# kdbench: `make demo` and `make test` do all the set-up (a .venv with kdbench installed).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.kdbench-installed

.PHONY: install demo test test-slow bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

## demo: every registered method on the embedded `digits` dataset, 2 seeds, leaderboard at the end
demo: $(STAMP)
	$(VENV)/bin/kdbench run

## test: the fast test suite (minutes on 2 CPU cores)
test: $(STAMP)
	$(PY) -m pytest -q

## test-slow: the longer end-to-end tests (marked @pytest.mark.slow)
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

## bench: the speed benchmarks quoted in the issue notes
bench: $(STAMP)
	$(PY) benchmarks/kd_step.py
	$(PY) benchmarks/data_pipeline.py

clean:
	rm -rf $(VENV) kdbench-out .pytest_cache
