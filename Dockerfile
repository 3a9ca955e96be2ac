# syntax=docker/dockerfile:1
#
# The R4T fan-out retrieval service on a GPU: FastAPI + uvicorn, ONNX Runtime's CUDA provider, no torch.
#
#   docker build -t r4t:0.1.0 .
#   docker run --gpus all -p 8000:8000 -v "$PWD/artifacts:/artifacts:ro" r4t:0.1.0
#
# CUDA and ONNX Runtime must agree: onnxruntime-gpu 1.19-1.26 on PyPI is built for CUDA 12 + cuDNN 9
# (1.26.0 is the newest such build), later releases for CUDA 13 + cuDNN 9 (which needs an NVIDIA driver
# >= 580). The defaults pin the CUDA 12 pair; for CUDA 13 build with
#   --build-arg CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04 --build-arg ONNXRUNTIME_GPU_VERSION=1.31.1
# Both stages use the same base image, so the venv's interpreter (Ubuntu 24.04's python3.12) is the same.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------------------
# builder: the package and the service's dependencies (`pip install .`, never the [train] extra) in a venv
FROM ${CUDA_IMAGE} AS builder
ARG ONNXRUNTIME_GPU_VERSION=1.26.0
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY service ./service
COPY training ./training
COPY export ./export
# The project's pins (constraints.txt), with the onnxruntime-gpu that this CUDA image's libraries load.
RUN grep -v '^onnxruntime-gpu==' constraints.txt > /tmp/constraints.txt \
    && echo "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}" >> /tmp/constraints.txt \
    && /opt/venv/bin/pip install --constraint /tmp/constraints.txt . \
    && /opt/venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"

# ---------------------------------------------------------------------------------------------------
# runtime: CUDA runtime + cuDNN 9 (what the CUDA execution provider loads), python3 and the venv
FROM ${CUDA_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 r4t \
    && useradd --uid 10001 --gid r4t --home-dir /app --no-create-home --shell /usr/sbin/nologin r4t \
    && mkdir -p /app \
    && chown r4t:r4t /app
COPY --from=builder /opt/venv /opt/venv
COPY --chown=r4t:r4t deploy/logging.json /app/logging.json

# Artifacts (encoders/, graphs/, index/) live in a volume at /artifacts. ARTIFACTS_SRC bakes a directory
# of the build context into the image instead; by default it is deploy/artifacts, which holds only a note
# (see deploy/artifacts/README.md). A volume mounted at /artifacts hides what was baked.
ARG ARTIFACTS_SRC=deploy/artifacts
COPY --chown=r4t:r4t ${ARTIFACTS_SRC}/ /artifacts/

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    R4T_ARTIFACTS_DIR=/artifacts \
    R4T_DEVICE=cuda \
    R4T_HOST=0.0.0.0 \
    R4T_PORT=8000
VOLUME /artifacts
WORKDIR /app
USER r4t:r4t
EXPOSE 8000

# Liveness: uvicorn listens only once the artifacts are loaded, hence the long start period.
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

# One uvicorn process per GPU: scale with containers / pods, not with --workers.
CMD ["uvicorn", "service.app:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000", \
     "--log-config", "/app/logging.json"]
