# syntax=docker/dockerfile:1
#
# otel-podnet node agent image.
#
#   docker build -t registry.example.com/otel-podnet:0.1.0 .
#   docker build --build-arg BASE=registry.example.com/mirror/debian:bookworm-slim -t ... .
#
# BASE is any Debian 12 (bookworm) image with apt: debian:bookworm-slim by default, a
# mirror of it in your registry, or (deploy/image/build.sh, with no registry at all) a
# base made with mmdebstrap from Debian's packages. Both stages start from it, so the
# Python that builds the virtualenv is the one that runs it.
#
# Stage "build" compiles bpf/podnet.bpf.c into a CO-RE object with clang (setup.py does
# it during the package build) and installs the package and its dependencies into the
# virtualenv /opt/otel-podnet. The image that ships has no compiler, no headers and no
# pip: Python, libbpf1 (the loader the agent binds with ctypes) and that virtualenv.
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS build

# clang-19: the BPF target; libbpf-dev: bpf_helpers.h and friends, the same libbpf
# release as the libbpf1 that loads the object; gcc and libc6-dev: the multiarch include
# directory (asm/types.h) that bpf/build.py adds; python3-venv: the virtualenv.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      clang-19 libbpf-dev gcc libc6-dev linux-libc-dev python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# A package index or proxy CA of your own for pip (pip's standard variables); only this
# stage sees them.
ARG PIP_INDEX_URL
ARG PIP_CERT
ENV CLANG=clang-19 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# --copies: the interpreter is the virtualenv's own file, so the file capabilities set on
# it below are the agent's alone (/usr/bin/python3.11 stays without).
RUN python3 -m venv --copies /opt/otel-podnet

# The dependencies first, from pyproject.toml alone: a change to the sources reuses
# this layer.
WORKDIR /src
COPY pyproject.toml ./
RUN python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
      > /tmp/requirements.txt \
 && /opt/otel-podnet/bin/pip install -r /tmp/requirements.txt

COPY setup.py README.md ./
COPY bpf/ bpf/
COPY otel_podnet/ otel_podnet/
RUN /opt/otel-podnet/bin/pip install --no-deps . \
 && /opt/otel-podnet/bin/pip uninstall -y pip setuptools \
 && rm -rf /opt/otel-podnet/bin/activate* /opt/otel-podnet/bin/Activate.ps1 \
 && cd /opt/otel-podnet/bin && for p in python python3.11; do ln -sf python3 "$p"; done


FROM ${BASE}

LABEL org.opencontainers.image.title="otel-podnet" \
      org.opencontainers.image.description="Per-pod TCP connections and traffic, counted with eBPF, exported over OTLP" \
      org.opencontainers.image.licenses="Apache-2.0"

# python3: the interpreter the virtualenv was built with; libbpf1: libbpf.so.1, which
# the agent loads with ctypes. libcap2-bin only lends setcap below and leaves again.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 libbpf1 libcap2-bin \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log

COPY --from=build /opt/otel-podnet /opt/otel-podnet

# The agent runs as the unprivileged user 65532. Container runtimes give a non-root
# process no ambient capabilities (Kubernetes has no way to ask for them), so the
# capabilities the DaemonSet adds would be lost at exec. The virtualenv's interpreter
# therefore carries them as file capabilities, permitted only (no effective bit): the
# kernel grants those of them that are in the container's bounding set, the agent raises
# them to effective at start (otel_podnet/caps.py), and a container started without them
# still runs (`otel-podnet check` then names what is missing). The pod must not set
# allowPrivilegeEscalation: false (no_new_privs disables file capabilities); so that this
# grants nothing else, no file in the image keeps a setuid or setgid bit.
RUN setcap cap_bpf,cap_perfmon,cap_net_admin=p /opt/otel-podnet/bin/python3 \
 && apt-get purge -y --auto-remove libcap2-bin \
 && rm -rf /var/log/apt /var/log/dpkg.log /var/cache/debconf/*-old \
 && find / -xdev -type f -perm /6000 -exec chmod ug-s {} + \
 && groupadd --system --gid 65532 otel-podnet \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin otel-podnet

# The root filesystem is mounted read-only in the DaemonSet; the bytecode is compiled
# in the image already.
ENV PATH=/opt/otel-podnet/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER 65532:65532

# 9465: /healthz and /readyz (--health-address); 9464: /metrics when the prometheus
# exporter is on.
EXPOSE 9465 9464

ENTRYPOINT ["otel-podnet"]
CMD ["run"]
