# syntax=docker/dockerfile:1
#
# otel-podnet node agent image.
#
#   docker build -t ghcr.io/otel-podnet/otel-podnet:0.1.0 .
#
# Stage 1 builds the wheel; the package build (setup.py) compiles
# bpf/podnet.bpf.c into a CO-RE object with clang, so the image needs no
# compiler, kernel headers or LLVM at run time. Base images are pinned to a
# release tag; pin them by digest as well when publishing.

FROM debian:12.11-slim AS build

# clang-19/llvm-19: BPF target; libbpf-dev: bpf_helpers.h and friends;
# gcc/libc6-dev: the multiarch include dir (asm/types.h) that setup.py adds.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      clang-19 llvm-19 libbpf-dev gcc libc6-dev linux-libc-dev \
      python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

ENV CLANG=clang-19 \
    PATH=/usr/lib/llvm-19/bin:$PATH

WORKDIR /src
COPY . .
RUN python3 -m venv /opt/build \
 && /opt/build/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /dist . \
 && ls -l /dist


FROM python:3.11.13-slim-bookworm

LABEL org.opencontainers.image.title="otel-podnet" \
      org.opencontainers.image.description="Per-pod network metrics from eBPF, exported over OTLP" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"

# libbpf1: the loader the agent binds with ctypes (libbpf.so.1), same version
# as the libbpf-dev headers the object was built against.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libbpf1 \
 && rm -rf /var/lib/apt/lists/*

COPY --from=build /dist/ /tmp/dist/
RUN pip install --no-cache-dir /tmp/dist/*.whl \
 && rm -rf /tmp/dist

# The root filesystem is mounted read-only in the DaemonSet.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# No non-root USER: loading and attaching BPF programs needs CAP_BPF,
# CAP_PERFMON and CAP_NET_ADMIN, and container runtimes grant added
# capabilities only to uid 0 (no ambient capabilities for other users). The
# DaemonSet drops every other capability and forbids privilege escalation.
USER 0

# /healthz and /readyz (--health-address); 9464 serves /metrics when the
# prometheus exporter is enabled.
EXPOSE 9465 9464

ENTRYPOINT ["otel-podnet"]
CMD ["run"]
