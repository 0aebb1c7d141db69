# CPU image: the Ray head and workers, the packer service, the sample-data job.
#   docker build -f deploy/cpu.Dockerfile -t navit-pack-cpu .
#
# Ray sends the fill function to its workers by reference (module packer.pipeline), so
# every Ray node must import the same packer code as the packer service: this image
# installs the whole project, and all of them run it.
#
# Build args (defaults: a machine with Docker Hub and PyPI; deploy/README.md has the
# recipe for a machine without a registry):
#   BASE_IMAGE       a Python 3.11 image with `python` and `pip` on PATH
#   TORCH_INDEX_URL  where pip finds torch (PyTorch's CPU wheel index)
#   PIP_FIND_LINKS   extra wheel folders or pages pip also looks in (pip reads it from
#                    the environment, and a build arg is in the environment of RUN)
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch is a dependency of the project (its CLI includes `navit train`); the CPU wheel
# keeps the image about 2 GB smaller than the default CUDA build.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_FIND_LINKS=
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /opt/navit
# Dependencies first, in their own layer: a code change then rebuilds only the last
# layers. Empty packages let the editable install register the package paths (deploy/
# is one once the launch layer is a Python package; until then it is left out, harmlessly).
COPY pyproject.toml README.md ./
RUN mkdir packer service trainer deploy \
    && touch packer/__init__.py service/__init__.py trainer/__init__.py deploy/__init__.py \
    && pip install -e . \
    && python -c "import ray, pyarrow, fastapi, PIL"
# Editable: the dashboard's static files are read from the source tree.
COPY packer packer
COPY service service
COPY trainer trainer
COPY deploy deploy

# Not root. Named volumes copy the owner of these folders when they are first created.
RUN useradd --create-home --uid 1000 navit \
    && mkdir -p /data /state /ckpt \
    && chown navit:navit /data /state /ckpt
USER navit

# Ray GCS, Ray dashboard, packer control plane, packer Flight.
EXPOSE 6379 8265 8000 8815
CMD ["navit", "--help"]
