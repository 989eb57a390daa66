# syntax=docker/dockerfile:1
# Two images from one file, both non-root (uid 10001, as the operator's worker
# pods run) and without compilers or pip caches:
#
#   docker build --target operator -t kubecast/operator:0.1.0 .
#   docker build --target worker   -t kubecast/worker:0.1.0 .
#
# Without a Docker daemon or a registry, `make images` (hack/images.sh) builds
# both with buildah on a Debian bookworm base it bootstraps itself
# (--build-arg PYTHON_IMAGE=localhost/kubecast/python-base:bookworm: Debian's
# python3, python3-venv, python-is-python3 and python3-pip). Everything below
# works on either base: `python`, `pip` and groupadd/useradd exist in both.
#
# The worker needs no ffmpeg package: PyAV's wheels bundle FFmpeg (libx264,
# AAC, the hls/mp4/flv muxers and the rtmp protocol).
#
# Pins: the base image by tag (override PYTHON_IMAGE with a digest to freeze
# it further), every direct dependency by exact version inside pyproject.toml's
# ranges (tests/unit/test_dockerfile.py checks both), and the build tools.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# ---------------------------------------------------------------- build
# The kubecast wheel itself, built once, without its dependencies.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
RUN pip install --no-compile setuptools==80.9.0
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY workers ./workers
RUN pip wheel --no-build-isolation --no-deps --wheel-dir /wheels .

# ------------------------------------------------------- operator-venv
# The operator talks to the Kubernetes API (kopf, kubernetes); no media code.
FROM ${PYTHON_IMAGE} AS operator-venv
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/kubecast/bin:$PATH
RUN python -m venv /opt/kubecast \
 && pip install \
      kopf==1.45.2 \
      kubernetes==37.0.2 \
      pydantic==2.14.3 \
      prometheus-client==0.26.0 \
      aiohttp==3.14.5 \
      PyYAML==6.0.3
COPY --from=build /wheels /wheels
RUN pip install --no-deps /wheels/kubecast-*.whl

# --------------------------------------------------------- worker-venv
# The media worker never talks to the Kubernetes API (no kopf, no client).
FROM ${PYTHON_IMAGE} AS worker-venv
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/kubecast/bin:$PATH
RUN python -m venv /opt/kubecast \
 && pip install \
      av==18.1.0 \
      pydantic==2.14.3 \
      prometheus-client==0.26.0 \
      aiohttp==3.14.5 \
      m3u8==6.0.0 \
      PyYAML==6.0.3 \
      aiortc==1.16.0
COPY --from=build /wheels /wheels
RUN pip install --no-deps /wheels/kubecast-*.whl

# ------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/kubecast/bin:$PATH
RUN groupadd --system --gid 10001 kubecast \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin kubecast
LABEL org.opencontainers.image.vendor="kubecast" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"

# ------------------------------------------------------------ operator
FROM runtime AS operator
COPY --from=operator-venv /opt/kubecast /opt/kubecast
LABEL org.opencontainers.image.title="kubecast operator" \
      org.opencontainers.image.description="Reconciles LiveStream, TranscodeProfile and Recording resources"
# NB: a numeric user, so that Kubernetes can verify runAsNonRoot.
USER 10001:10001
# 8080 /metrics (Prometheus), 8081 /healthz (answers once this replica leads).
EXPOSE 8080 8081
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8081/healthz', timeout=4)"]
ENTRYPOINT ["kubecast-operator"]

# -------------------------------------------------------------- worker
FROM runtime AS worker
COPY --from=worker-venv /opt/kubecast /opt/kubecast
LABEL org.opencontainers.image.title="kubecast worker" \
      org.opencontainers.image.description="RTMP, SRT and WHIP ingest, ABR transcode (PyAV), HLS origin and recorder"
# SRT ingest: PyAV's FFmpeg has no libsrt, so the worker runs Haivision's
# srt-live-transmit (Debian's srt-tools, on libsrt1.5-openssl; a few MB with its
# libraries) as the SRT listener. Debian's version of the base's release:
# bookworm's security updates replace a pinned version, so it is not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends srt-tools \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
# Where the operator mounts the media and recording volumes; owned by the
# worker's user so that a plain `docker run` can write there too.
RUN mkdir -p /var/lib/kubecast/media /var/lib/kubecast/recording /etc/kubecast/config \
 && chown -R 10001:10001 /var/lib/kubecast
USER 10001:10001
WORKDIR /var/lib/kubecast
# 1935 RTMP ingest, 9000/udp SRT ingest, 8080 playback (HLS, player, probes), 9090
# admin (/status, /metrics; the recorder's only port).
EXPOSE 1935 9000/udp 8889 8080 9090
# No HEALTHCHECK: the worker binds the address it is given (--bind-host, the
# pod IP in Kubernetes), and its pods get HTTP probes from the operator.
HEALTHCHECK NONE
ENTRYPOINT ["kubecast-worker"]
CMD ["--help"]
