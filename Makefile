# gatelens: `make run` serves the dashboard, `make test` runs every test (browser tests included).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PORT   ?= 8501
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: venv run test lint format demo-models bench clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/gatelens dashboard --port $(PORT)

test: $(STAMP)
	$(PY) -m ruff check gatelens analysis models dashboards data tests benchmarks examples
	$(PY) tests/run_each.py

lint: $(STAMP)
	$(PY) -m ruff check gatelens analysis models dashboards data tests benchmarks examples
	$(PY) -m ruff format --check gatelens analysis models dashboards data tests benchmarks examples

format: $(STAMP)
	$(PY) -m ruff format gatelens analysis models dashboards data tests benchmarks examples
	$(PY) -m ruff check --fix gatelens analysis models dashboards data tests benchmarks examples

demo-models: $(STAMP)
	$(PY) -m gatelens.models.zoo.demos

bench: $(STAMP)
	$(PY) benchmarks/extract.py
	$(PY) benchmarks/analysis.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
