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

RUN python3 -m venv /opt/otel-podnet

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
# Left out of what ships: pip and setuptools, and the kubernetes client's asyncio variant
# (kubernetes.aio, 68 MB; the agent uses the synchronous client) with aiohttp, which only
# that variant imports.
RUN /opt/otel-podnet/bin/pip install --no-deps . \
 && /opt/otel-podnet/bin/pip uninstall -y \
      aiohttp aiohttp-retry aiohappyeyeballs aiosignal frozenlist multidict propcache yarl pip setuptools \
 && site=$(/opt/otel-podnet/bin/python3 -c 'import sysconfig; print(sysconfig.get_path("purelib"))') \
 && rm -rf "$site/kubernetes/aio" /opt/otel-podnet/bin/activate* /opt/otel-podnet/bin/Activate.ps1 \
 && cd / && /opt/otel-podnet/bin/python3 -c 'import otel_podnet.kube, otel_podnet.run'


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

# The agent runs as the unprivileged user 65532. Container runtimes put the capabilities a
# pod adds into the permitted set of the process they start, but a non-root process loses
# them at exec: runtimes set no ambient capabilities (Kubernetes has no way to ask for
# them). The virtualenv's interpreter therefore carries BPF, PERFMON and NET_ADMIN as file
# capabilities, permitted only (no effective bit): at exec the kernel grants those of them
# in the container's bounding set, no_new_privs (allowPrivilegeEscalation: false) caps them
# at what the runtime had granted, the agent raises them to effective at start
# (otel_podnet/caps.py), and a container started without them still runs (`otel-podnet
# check` then names what is missing). No file in the image keeps a setuid or setgid bit.
# The virtualenv's python3 (a symlink to /usr/bin/python3 in the build stage) becomes a
# copy of that interpreter, so the capabilities are the agent's alone.
RUN cp --remove-destination /usr/bin/python3.11 /opt/otel-podnet/bin/python3 \
 && setcap cap_bpf,cap_perfmon,cap_net_admin=p /opt/otel-podnet/bin/python3 \
 && apt-get purge -y --auto-remove libcap2-bin \
 && rm -rf /var/log/apt /var/log/dpkg.log /var/cache/apt/*.bin /var/cache/debconf/*-old \
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
