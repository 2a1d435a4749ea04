#!/usr/bin/env bash
# Build the otelcol-podnet OpenTelemetry Collector from otelcol-builder.yaml (next
# to this script) and cache it.
#
#   ${PODNET_CACHE:-/var/cache/otel-podnet}/otelcol-<sha256(manifest)[:12]>/otelcol-podnet
#
# If that binary already exists nothing is built. The path of the binary is always
# the last line on stdout; everything else (builder and go output) goes to stderr.
# Needs only Go (and network access to the Go module proxy) on a fresh machine.
# The Go module and build caches are Go's defaults (GOMODCACHE/GOCACHE), so they
# are shared with any other Go work on the machine.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
manifest="${script_dir}/otelcol-builder.yaml"
cache_root="${PODNET_CACHE:-/var/cache/otel-podnet}"

hash="$(sha256sum "${manifest}" | cut -c1-12)"
dest="${cache_root}/otelcol-${hash}"
binary="${dest}/otelcol-podnet"

if [[ -x "${binary}" ]]; then
    echo "${binary}"
    exit 0
fi

# Go may not be on PATH in a non-login shell; fall back to the standard location.
if ! command -v go >/dev/null 2>&1; then
    if [[ -x /usr/local/go/bin/go ]]; then
        export PATH="/usr/local/go/bin:${PATH}"
    else
        echo "build-otelcol.sh: go not found on PATH or at /usr/local/go/bin/go" >&2
        exit 1
    fi
fi

ocb_version="$(sed -n 's/^# *builder-version: *\(v[0-9][0-9.]*\).*$/\1/p' "${manifest}" | head -n1)"
if [[ -z "${ocb_version}" ]]; then
    echo "build-otelcol.sh: no '# builder-version: vX.Y.Z' line in ${manifest}" >&2
    exit 1
fi

mkdir -p "${dest}"

# Serialise concurrent builds (parallel test runs); the second one waits and then
# finds the finished binary.
exec 9>"${dest}/.lock"
flock 9
if [[ -x "${binary}" ]]; then
    echo "${binary}"
    exit 0
fi

start="$(date +%s)"
echo "build-otelcol.sh: building otelcol-podnet (ocb ${ocb_version}) into ${dest}" >&2

# The builder itself, pinned and kept per cache entry.
ocb_bin_dir="${dest}/ocb-${ocb_version}"
if [[ ! -x "${ocb_bin_dir}/builder" ]]; then
    GOBIN="${ocb_bin_dir}" go install "go.opentelemetry.io/collector/cmd/builder@${ocb_version}" >&2
fi

# ocb's module step runs `go mod tidy`, which also wants the *test-only*
# dependencies of every component; some of those versions (e.g. contrib's
# pkg/semconvtest v0.161.0) are not served by every module proxy. With `-e` in
# GOFLAGS, tidy records what it can and goes on (the other go commands ocb runs
# accept or ignore it). Anything the build really needs still fails loudly at
# compile time.
goflags="$(go env GOFLAGS)"
export GOFLAGS="${goflags:+${goflags} }-e"

# ocb writes sources and the binary to dist.output_path (./dist, relative to the
# working directory), so run it in a fresh scratch directory.
work="$(mktemp -d "${dest}/build.XXXXXX")"
trap 'rm -rf "${work}"' EXIT
(
    cd "${work}"
    "${ocb_bin_dir}/builder" --config="${manifest}"
) >&2

# Publish atomically so a half-written binary is never mistaken for a cached one.
install -m 0755 "${work}/dist/otelcol-podnet" "${binary}.tmp"
mv -f "${binary}.tmp" "${binary}"

echo "build-otelcol.sh: built in $(( $(date +%s) - start ))s" >&2
echo "${binary}"
