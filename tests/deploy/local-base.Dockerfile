# The machine layer of `make compose-test` (tests/deploy/compose_engine.sh builds it; a
# user's build never sees it): Python 3.11 from Debian on a locally imported Debian
# image, and this machine's CA bundle, because HTTPS to the package index is re-signed
# on the way here. It stands in for python:3.11-slim where no registry is reachable:
#   docker build --network host --build-arg DEBIAN_IMAGE=local/debian:bookworm \
#     -f tests/deploy/local-base.Dockerfile -t local/python:3.11 CONTEXT
# CONTEXT holds ca-bundle.crt (the bundle pip's `cert` setting names).
ARG DEBIAN_IMAGE=local/debian:bookworm
FROM ${DEBIAN_IMAGE}

# Debian bookworm's python3 is 3.11, the project's Python; a venv gives `python` and
# `pip` on PATH as python:3.11-slim does, and keeps pip off Debian's system packages.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/python \
    && /opt/python/bin/python -c "import sys; assert sys.version_info[:2] == (3, 11), sys.version"

COPY ca-bundle.crt /etc/ssl/certs/host-ca-bundle.crt
ENV PATH=/opt/python/bin:$PATH \
    PIP_CERT=/etc/ssl/certs/host-ca-bundle.crt \
    SSL_CERT_FILE=/etc/ssl/certs/host-ca-bundle.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/host-ca-bundle.crt \
    LANG=C.UTF-8
CMD ["python3"]
