# GPU trainer image: torch (CUDA) + pyarrow + numpy + tqdm and the trainer code only, no
# Ray and no service code (the trainer imports nothing else: trainer/, packer/contract/ and
# the `navit train` command, deploy/cli/train.py with its deploy/cli/options.py).
#   docker build -f deploy/trainer.Dockerfile -t navit-pack-trainer .
# Needs the NVIDIA driver and container toolkit on the host; the CUDA runtime libraries
# come with the torch wheel. A trainer on CPU (as `make compose-test` runs it):
#   docker build -f deploy/trainer.Dockerfile --build-arg TORCH_CUDA=cpu -t navit-pack-trainer .
#
# Build args (defaults: a machine with Docker Hub and PyPI; deploy/README.md has the
# recipe for a machine without a registry):
#   BASE_IMAGE       a Python 3.11 image with `python` and `pip` on PATH (Debian based:
#                    the next layer installs gcc with apt)
#   TORCH_CUDA       the build of PyTorch's wheel index: cu126, cu128, ... or cpu
#   TORCH_INDEX_URL  where pip finds torch (PyTorch's index for TORCH_CUDA)
#   PIP_FIND_LINKS   extra wheel folders or pages pip also looks in
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Triton (flex attention, --compile) builds a small C launcher at run time: it needs gcc.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

ARG TORCH_VERSION=2.13.0
# The CUDA build of the wheel index (cu126, cu128, ...): match it to the hosts' driver.
ARG TORCH_CUDA=cu128
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_CUDA}
ARG PIP_FIND_LINKS=
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}" \
    && pip install "pyarrow>=16" "numpy>=1.26" "tqdm>=4.66"

WORKDIR /app
ENV PYTHONPATH=/app
RUN useradd --create-home --uid 1000 navit \
    && mkdir -p /ckpt \
    && chown navit:navit /ckpt

# The trainer's code: the contract, trainer/ and the `navit train` command alone.
COPY packer/__init__.py packer/__init__.py
COPY packer/contract packer/contract
COPY trainer trainer
COPY deploy/__init__.py deploy/__init__.py
COPY deploy/cli/options.py deploy/cli/train.py deploy/cli/
COPY deploy/train.sh deploy/train.sh
RUN python -m deploy.cli.train --help >/dev/null
USER navit

CMD ["sh", "deploy/train.sh", "--help"]
