# GPU trainer image: torch (CUDA) + pyarrow + numpy + tqdm and the trainer code only, no
# Ray and no service code (the trainer imports nothing else: trainer/, packer/contract/ and
# the `navit train` command, deploy/cli/train.py with its deploy/cli/options.py).
#   docker build -f deploy/trainer.Dockerfile -t navit-pack-trainer .
# Needs the NVIDIA driver and container toolkit on the host; the CUDA runtime libraries
# come with the torch wheel.
FROM python:3.11-slim

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
RUN pip install "torch==${TORCH_VERSION}" --index-url "https://download.pytorch.org/whl/${TORCH_CUDA}" \
    && pip install "pyarrow>=16" "numpy>=1.26" "tqdm>=4.66"

WORKDIR /app
ENV PYTHONPATH=/app
COPY packer/__init__.py packer/__init__.py
COPY packer/contract packer/contract
COPY trainer trainer
COPY deploy/__init__.py deploy/__init__.py
COPY deploy/cli/options.py deploy/cli/train.py deploy/cli/
COPY deploy/train.sh deploy/train.sh

RUN useradd --create-home --uid 1000 navit \
    && mkdir -p /ckpt \
    && chown navit:navit /ckpt \
    && python -m deploy.cli.train --help >/dev/null
USER navit

CMD ["sh", "deploy/train.sh", "--help"]
