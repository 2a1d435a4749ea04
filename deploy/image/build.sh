#!/usr/bin/env bash
# Build the node's images without a registry or a Docker engine, and cache them:
#
#   the agent     the project's Dockerfile (repo root)         localhost/otel-podnet:<tag>
#   pause         deploy/image/Dockerfile.pause + pause.c      localhost/otel-podnet-pause:v1
#   workload      deploy/image/Dockerfile.workload             localhost/otel-podnet-workload:v1
#                 (python3 + otel_podnet/simnode/workload.py as /usr/local/bin/podnet-workload)
#
# each as a docker-archive that `ctr -n k8s.io images import` takes, in
#
#   ${PODNET_CACHE:-/var/cache/otel-podnet}/images/<sha256(inputs)[:12]>/
#       otel-podnet-<tag>.tar ... pause.tar workload.tar
#
# and prints those paths on stdout, one a line (the agent's first, in --tag order);
# everything else goes to stderr. With every archive there nothing is built.
#
#   deploy/image/build.sh                      # tag: the version in pyproject.toml
#   deploy/image/build.sh --tag 0.1.0 --tag 0.1.0-b   # a second tag of the same image
#   deploy/image/build.sh --repository registry.example.com/otel-podnet --tag 0.1.0
#
# The base image: Debian 12 made with mmdebstrap from Debian's packages and imported into
# buildah's storage as localhost/otel-podnet-base:<hash> (cached too), given to every
# Dockerfile as BASE. PODNET_IMAGE_BASE=debian:bookworm-slim (or your registry's mirror of
# it) uses that image instead, where a registry is reachable.
#
# Buildah, as root: storage driver overlay (kernel overlayfs; vfs where the cache sits on
# overlayfs or when PODNET_STORAGE_DRIVER=vfs), storage of its own under the cache
# directory, isolation chroot (no OCI runtime, no systemd, works in any container or VM
# that lets root mount). A lock serialises concurrent callers; the second waits, then
# finds the archives. Needs: buildah, mmdebstrap (make cluster-tools).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
here="${root}/deploy/image"
cache_root="${PODNET_CACHE:-/var/cache/otel-podnet}/images"

repository="localhost/otel-podnet"
tags=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --tag) tags+=("$2"); shift 2 ;;
        --tag=*) tags+=("${1#*=}"); shift ;;
        --repository) repository="$2"; shift 2 ;;
        --repository=*) repository="${1#*=}"; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "build.sh: unknown argument '$1': expected --tag TAG or --repository NAME" >&2; exit 2 ;;
    esac
done
if [[ ${#tags[@]} -eq 0 ]]; then
    tags=("$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "${root}/pyproject.toml" | head -n1)")
fi
for t in "${tags[@]}"; do
    if ! [[ "$t" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]]; then
        echo "build.sh: --tag '$t': expected an image tag ([A-Za-z0-9_][A-Za-z0-9_.-]*)" >&2
        exit 2
    fi
done
pause_ref="localhost/otel-podnet-pause:v1"
workload_ref="localhost/otel-podnet-workload:v1"

# ---- inputs and their hash ----------------------------------------------------------

# Debian for the base image (mmdebstrap): suite, mirror, and what the image leaves out,
# as debian:bookworm-slim does (docs, man pages, locales).
suite=bookworm
mirror=http://deb.debian.org/debian
security=http://deb.debian.org/debian-security
base_opts=(
    --mode=root --variant=minbase --format=tar
    # /usr merged by a hook, not by the usrmerge package (which would leave perl behind)
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
    --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/info/*'
    --dpkgopt='path-exclude=/usr/share/locale/*'
    --dpkgopt='path-exclude=/usr/share/lintian/*'
    --aptopt='Acquire::Languages "none"'
    --aptopt='APT::Install-Recommends "false"'
    --aptopt='Dir::Cache::pkgcache ""'
    --aptopt='Dir::Cache::srcpkgcache ""'
)
base_sources="deb ${mirror} ${suite} main
deb ${mirror} ${suite}-updates main
deb ${security} ${suite}-security main"

# Every file that goes into an image, and this script: their paths and contents.
mapfile -t inputs < <(
    cd "${root}"
    {
        printf '%s\n' Dockerfile .dockerignore pyproject.toml setup.py README.md deploy/image/build.sh
        find bpf otel_podnet deploy/image -type f \
            ! -path '*/__pycache__/*' ! -name '*.pyc' ! -name '*.o'
    } | LC_ALL=C sort -u
)
inputs_hash="$(
    cd "${root}"
    {
        sha256sum -- "${inputs[@]}"
        printf '%s\n' "${repository}" "${PODNET_IMAGE_BASE:-mmdebstrap}" "${base_opts[@]}" "${base_sources}"
    } | sha256sum | cut -c1-12
)"
base_hash="$(printf '%s\n' "${base_opts[@]}" "${base_sources}" | sha256sum | cut -c1-12)"

dest="${cache_root}/${inputs_hash}"
outputs=()
for t in "${tags[@]}"; do
    outputs+=("${dest}/${repository##*/}-${t}.tar")
done
outputs+=("${dest}/pause.tar" "${dest}/workload.tar")

all_there() {
    local f
    for f in "${outputs[@]}"; do [[ -s "$f" ]] || return 1; done
}
if all_there; then
    printf '%s\n' "${outputs[@]}"
    exit 0
fi

# ---- build ----------------------------------------------------------------------------

for tool in buildah mmdebstrap; do
    if ! command -v "${tool}" >/dev/null 2>&1; then
        echo "build.sh: ${tool} not found: install it (make cluster-tools, or apt-get install buildah mmdebstrap)" >&2
        exit 1
    fi
done
if [[ $(id -u) -ne 0 ]]; then
    echo "build.sh: run as root (buildah's chroot isolation and overlay storage need it)" >&2
    exit 1
fi

mkdir -p "${cache_root}"
exec 9>"${cache_root}/.lock"
flock 9
if all_there; then
    printf '%s\n' "${outputs[@]}"
    exit 0
fi
mkdir -p "${dest}"

start="$(date +%s)"
storage="${cache_root}/storage"
mkdir -p "${storage}"
driver="${PODNET_STORAGE_DRIVER:-}"
if [[ -z "${driver}" ]]; then
    case "$(stat -f -c %T "${storage}")" in
        overlayfs | fuseblk | fuse) driver=vfs ;;  # no overlay upper layer on these
        *) driver=overlay ;;
    esac
fi
bh=(buildah --root "${storage}" --runroot /run/otel-podnet-images --storage-driver "${driver}")
export BUILDAH_ISOLATION=chroot BUILDAH_LAYERS=true BUILDAH_FORMAT=docker
echo "build.sh: building into ${dest} (storage ${storage}, driver ${driver}, isolation chroot)" >&2

scratch="$(mktemp -d "${cache_root}/work.XXXXXX")"
cleanup() {
    local c
    for c in "${containers[@]}"; do "${bh[@]}" rm "$c" >/dev/null 2>&1 || true; done
    rm -rf "${scratch}"
}
containers=()
trap cleanup EXIT

# The base image, once per set of Debian options.
pull=never
if [[ -n "${PODNET_IMAGE_BASE:-}" ]]; then
    base_ref="${PODNET_IMAGE_BASE}"
    pull=false  # from its registry unless already in the store
else
    base_ref="localhost/otel-podnet-base:${base_hash}"
    if ! "${bh[@]}" inspect --type image "${base_ref}" >/dev/null 2>&1; then
        echo "build.sh: making the base image ${base_ref} with mmdebstrap (${suite})" >&2
        t0="$(date +%s)"
        # The system's tools only: mmdebstrap runs python3 (mmtarfilter) once per package,
        # which a version manager's shim on PATH would slow to minutes.
        PATH=/usr/sbin:/usr/bin:/sbin:/bin mmdebstrap --quiet "${base_opts[@]}" "${suite}" "${scratch}/base.tar" - <<<"${base_sources}" >&2
        ctr="$("${bh[@]}" from --pull=never scratch)"
        containers+=("${ctr}")
        "${bh[@]}" add --quiet "${ctr}" "${scratch}/base.tar" / >&2
        "${bh[@]}" config \
            --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            --cmd /bin/bash \
            --label "org.opencontainers.image.description=Debian ${suite} minbase (mmdebstrap), otel-podnet's build base" \
            "${ctr}" >&2
        "${bh[@]}" commit --quiet --rm "${ctr}" "${base_ref}" >&2
        containers=()
        rm -f "${scratch}/base.tar"
        echo "build.sh: base image in $(( $(date +%s) - t0 ))s" >&2
    fi
fi

# pip behind this machine's TLS-intercepting proxy: its CA bundle, bind-mounted into the
# build stage only (never into an image) and named by pip's own PIP_CERT.
build_env=()
if [[ -n "${PIP_CERT:-}" && -f "${PIP_CERT}" ]]; then
    build_env+=(--volume "${PIP_CERT}:/run/podnet-pip-ca.crt:ro" --build-arg PIP_CERT=/run/podnet-pip-ca.crt)
fi
if [[ -n "${PIP_INDEX_URL:-}" ]]; then
    build_env+=(--build-arg "PIP_INDEX_URL=${PIP_INDEX_URL}")
fi

build() {  # build NAME REF CONTEXT [buildah build options...]
    local name="$1" ref="$2" context="$3" t0
    shift 3
    t0="$(date +%s)"
    echo "build.sh: building ${name} (${ref})" >&2
    "${bh[@]}" build --pull="${pull}" --build-arg "BASE=${base_ref}" --tag "${ref}" "$@" "${context}" >&2
    echo "build.sh: ${name} built in $(( $(date +%s) - t0 ))s" >&2
}

export_archive() {  # export_archive REF FILE
    rm -f "$2.tmp"
    "${bh[@]}" push --quiet "$1" "docker-archive:$2.tmp:$1" >&2
    mv -f "$2.tmp" "$2"
}

agent_ref="${repository}:${tags[0]}"
build agent "${agent_ref}" "${root}" --file "${root}/Dockerfile" "${build_env[@]}"
for t in "${tags[@]:1}"; do
    "${bh[@]}" tag "${agent_ref}" "${repository}:${t}"
done

# pause and workload: contexts of their own (the repo's .dockerignore admits only the
# agent's sources).
mkdir -p "${scratch}/pause" "${scratch}/workload"
cp "${here}/pause.c" "${scratch}/pause/"
build pause "${pause_ref}" "${scratch}/pause" --file "${here}/Dockerfile.pause"
cp "${root}/otel_podnet/simnode/workload.py" "${scratch}/workload/"
build workload "${workload_ref}" "${scratch}/workload" --file "${here}/Dockerfile.workload"

i=0
for t in "${tags[@]}"; do
    export_archive "${repository}:${t}" "${outputs[$i]}"
    i=$((i + 1))
done
export_archive "${pause_ref}" "${dest}/pause.tar"
export_archive "${workload_ref}" "${dest}/workload.tar"

for ref in "${agent_ref}" "${pause_ref}" "${workload_ref}"; do
    echo "build.sh: ${ref}: $("${bh[@]}" images --format '{{.Size}}' "${ref}" | head -n1)" >&2
done
# Older cache entries go, but for the last few (another checkout may still use one).
find "${cache_root}" -mindepth 1 -maxdepth 1 -type d -regextype egrep -regex '.*/[0-9a-f]{12}' -printf '%T@ %p\n' \
    | sort -rn | tail -n +5 | cut -d' ' -f2- | xargs -r rm -rf --
echo "build.sh: built in $(( $(date +%s) - start ))s" >&2
printf '%s\n' "${outputs[@]}"
