# navit-pack: `make pretrain` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SAMPLE := data/sample
SAMPLE_IMAGES ?= 400
STEPS ?= 300

.PHONY: venv test compose-test pretrain bench gpu-check lint format test-tools clean

# torch is pinned and installed first: a bare `torch` requirement with no torch
# installed would pull several GB of CUDA packages.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Debian tools some tests drive for real: headless Chromium (dashboard) and
# docker-compose (validates docker-compose.yml). Best effort: those tests skip,
# saying why, where the tools cannot be installed. docker-compose without its
# recommended Docker engine: `config` needs none, and no engine runs here.
test-tools:
	@command -v chromium >/dev/null || \
	  { (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      chromium >/dev/null) || echo "warning: could not install chromium"; }
	@command -v docker-compose >/dev/null || \
	  { (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends docker-compose >/dev/null) || \
	    echo "warning: could not install docker-compose"; }

test: venv test-tools
	$(BIN)/python -m pytest -q

# docker-compose.yml on a real Docker engine (needs root; starts an engine when none
# runs and stops only that one; installs docker.io, debootstrap and docker-compose with
# apt when missing; skips, saying why, where no engine can be had). Builds the base
# images locally (no registry needed) and the project's two images, then runs the stack
# with deploy/compose.host.yml: tests/deploy/compose_engine.sh, figures in
# runs/compose-test/figures.json.
compose-test: venv
	bash tests/deploy/compose_engine.sh $(abspath $(BIN)/python)

$(SAMPLE): | venv
	$(BIN)/navit sample-data $(SAMPLE) --images $(SAMPLE_IMAGES) --seed 0

# The main job on this machine: the packer service (local Ray, control plane on
# http://127.0.0.1:8000, Flight on 8815) and two trainer ranks (DDP over gloo on CPU),
# holding VAL_FRACTION of the images out of training; then `navit eval` scores the
# checkpoint on those held-out images at each of EVAL_RESOLUTIONS (trained: 64-128 px).
# Outputs in runs/pretrain/: metrics.jsonl, stats.json, checkpoint.pt, pretrain.png,
# val/ (the held-out split packed at 128 px), eval.png (accuracy against tokens/image).
PRETRAIN_ARGS ?= --trainers 2 --set seq_len=256 --set max_res=128
VAL_FRACTION ?= 0.1
EVAL_RESOLUTIONS ?= 32,48,64,96,128,192,256
pretrain: venv $(SAMPLE)
	$(BIN)/navit pretrain $(SAMPLE) --steps $(STEPS) --run-dir runs/pretrain \
	  --val-fraction $(VAL_FRACTION) $(PRETRAIN_ARGS)
	$(BIN)/navit eval --ckpt runs/pretrain/checkpoint.pt --source $(SAMPLE) \
	  --val-fraction $(VAL_FRACTION) --resolutions $(EVAL_RESOLUTIONS) --plot runs/pretrain/eval.png

# vit-pytorch is the training benchmark's baseline; --no-deps keeps it from pulling a
# torchvision built for another torch (bench_train loads its na_vit.py alone).
bench: venv
	$(BIN)/pip install --quiet --no-deps vit-pytorch einops
	$(BIN)/pip install --quiet py-spy
	$(BIN)/python bench/bench_packing.py
	$(BIN)/python bench/bench_pipeline.py
	$(BIN)/python bench/bench_train.py
	$(BIN)/python bench/bench_service.py
	$(BIN)/python bench/bench_streamers.py

# The GPU side in one go on a CUDA host (bench/gpu_check.sh): the trainer's tests on CUDA,
# flex attention against SDPA, bf16 steps of s16 and b16, packed vs padded vs vit-pytorch,
# and the data-wait share with the service streaming. Results in $(GPU_CHECK_OUT)/.
# Exits 2 with one line where no CUDA device is present.
GPU_CHECK_OUT ?= runs/gpu-check
gpu-check: venv
	$(BIN)/pip install --quiet --no-deps vit-pytorch einops || \
	  echo "warning: no vit-pytorch; gpu-check skips its NaViT baseline"
	PYTHON=$(BIN)/python bash bench/gpu_check.sh $(GPU_CHECK_OUT)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf runs .pytest_cache .ruff_cache
