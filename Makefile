# Fresh-machine entry points: `make run` starts everything on embedded defaults, `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: run demo test bench lint services clean docs

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

services:
	@bash .ci/services.sh

run: $(STAMP) services
	$(VENV)/bin/devart up

demo: $(STAMP) services
	$(VENV)/bin/devart demo

test: $(STAMP) services
	$(PY) -m pytest

bench: $(STAMP) services
	$(PY) -m bench

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .devart .pytest_cache

docs: $(STAMP)
	$(PY) -m control_plane.docs .
