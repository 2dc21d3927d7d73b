# Two commands on a fresh machine: `make demo` (set up, run the main job: the lab, quick) and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo lab test clean

$(BIN)/deltalens: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(BIN)/deltalens

setup: $(BIN)/deltalens

demo: setup
	$(BIN)/deltalens lab --quick --out runs/lab-quick

lab: setup
	$(BIN)/deltalens lab --out runs/lab

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
