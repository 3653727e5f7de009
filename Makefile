# stbava — every target is one `stbava` command; `make setup` builds .venv first.
# Override on the command line, e.g. `make train-fusion CACHE=cache/ms3.zarr RUN=runs/ms3`.

PYTHON      ?= python3
VENV        ?= .venv
# CPU build by default so a CPU machine never pulls multi-GB CUDA wheels.
# GPU users: make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC  ?= torch==2.13.0
BIN         := $(VENV)/bin
STBAVA      := $(BIN)/stbava

DATA        ?= data/avsbench/Multi-sources
SUBSET      ?= ms3
CACHE       ?= cache/$(SUBSET).zarr
BACKEND     ?= zarr
ENCODER     ?= vit_h
SAM_CKPT    ?= checkpoints/sam_vit_h_4b8939.pth
VGGISH_CKPT ?= checkpoints/vggish-10086976.pth
# Later stages find the weight files a cache/checkpoint recorded (recorded path, then by name in WEIGHTS).
WEIGHTS     ?= checkpoints
# Frames per image-encoder forward at extraction; 0 = sized from the encoder and the free memory.
FPF         ?= 0
CONFIG      ?= configs/$(SUBSET).yaml
RUN         ?= runs/$(SUBSET)_fusion
ADAPTER_RUN ?= runs/$(SUBSET)_adapters
SPLIT       ?= test
CKPT        ?= $(RUN)/best.pt
REPORT      ?= $(RUN)/report_$(SPLIT).json
DEVICE      ?= auto
BATCH       ?= 4
# AMP=bf16: the demo in bf16 autocast (CPUs with native bf16, or CUDA), into its own folder
AMP         ?= off
DEMO_OUT    ?= demo_out$(if $(filter bf16,$(AMP)),_bf16,)
# Any further flags for the stbava command of a target, e.g. EXTRA="--batch-size 8 --epochs 50"
EXTRA       ?=
VIDEO       ?= my_video.mp4
PRED_OUT    ?= predictions
SPEC        ?= configs/experiments/table6_3.yaml
OUT         ?= experiments/$(basename $(notdir $(SPEC)))
SEEDS       ?= 0,1,2
PORT        ?= 7860
RUNS        ?= $(RUN)
CURVES      ?= curves.png
# Extraction records its weight files (sha256); train-fusion starts the decoder from the cache's SAM, and
# finetune-adapters / eval / predict find and verify the recorded files themselves (--weights-dir $(WEIGHTS)).
# torchrun: make train-fusion NPROC=4  (NNODES / NODE_RANK / MASTER_ADDR for several nodes)
NPROC       ?= 1
NNODES      ?= 1
NODE_RANK   ?= 0
MASTER_ADDR ?= 127.0.0.1
MASTER_PORT ?= 29500
ifeq ($(NPROC)$(NNODES),11)
LAUNCH      := $(STBAVA)
else
LAUNCH      := $(BIN)/torchrun --nproc-per-node $(NPROC) --nnodes $(NNODES) --node-rank $(NODE_RANK) \
               --master-addr $(MASTER_ADDR) --master-port $(MASTER_PORT) -m stbava
endif

.PHONY: setup demo test bench lint extract-features train-fusion finetune-adapters eval predict experiment \
        app plot check-data clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e ".[dev,app,tensorboard,sam2]"
# SAM 2 backbones (docs/sam2.md): the sam2 sdist without its CUDA extension and without torchvision (its
# modeling code needs neither); hydra-core / iopath come with the sam2 extra above
	SAM2_BUILD_CUDA=0 $(BIN)/pip install -q --no-build-isolation --no-deps "sam2==1.1.0"
	touch $@

demo: setup
	$(STBAVA) demo --out $(DEMO_OUT) --amp $(AMP)

# Two pytest-xdist workers, one test file at a time each (module fixtures are built once); the slowest 15 listed.
test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15

bench: setup
	$(BIN)/python -m benchmarks

lint: setup
	$(BIN)/ruff check stbava tests benchmarks

check-data: setup
	$(STBAVA) check-data --data-root $(DATA) --subset $(SUBSET)

extract-features: setup
	$(LAUNCH) extract-features --data-root $(DATA) --subset $(SUBSET) --cache $(CACHE) --backend $(BACKEND) \
	  --encoder $(ENCODER) --sam-checkpoint $(SAM_CKPT) --vggish-checkpoint $(VGGISH_CKPT) --batch-size $(BATCH) \
	  --frames-per-forward $(FPF) --device $(DEVICE) $(EXTRA)

train-fusion: setup
	$(LAUNCH) train-fusion --cache $(CACHE) --data-root $(DATA) --subset $(SUBSET) --config $(CONFIG) --out $(RUN) \
	  --weights-dir $(WEIGHTS) --device $(DEVICE) $(EXTRA)

finetune-adapters: setup
	$(LAUNCH) finetune-adapters --data-root $(DATA) --subset $(SUBSET) --init $(RUN) --out $(ADAPTER_RUN) \
	  --weights-dir $(WEIGHTS) --device $(DEVICE) $(EXTRA)

eval: setup
	$(LAUNCH) eval --checkpoint $(CKPT) --cache $(CACHE) --data-root $(DATA) --subset $(SUBSET) --split $(SPLIT) \
	  --out $(REPORT) --weights-dir $(WEIGHTS) --device $(DEVICE) $(EXTRA)

predict: setup
	$(STBAVA) predict --checkpoint $(CKPT) --input $(VIDEO) --out $(PRED_OUT) --weights-dir $(WEIGHTS) --device $(DEVICE) \
	  $(EXTRA)

# Every variant x seed of a spec (configs/experiments/) on one cache -> $(OUT)/results.md; re-run to continue.
experiment: setup
	$(STBAVA) experiment $(SPEC) --cache $(CACHE) --data-root $(DATA) --out $(OUT) --seeds $(SEEDS) --split $(SPLIT) \
	  --weights-dir $(WEIGHTS) --device $(DEVICE) $(EXTRA)

app: setup
	$(STBAVA) app --checkpoint $(CKPT) --port $(PORT) --device $(DEVICE) $(EXTRA)

plot: setup
	$(STBAVA) plot $(RUNS) --out $(CURVES)

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
