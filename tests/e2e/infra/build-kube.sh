#!/usr/bin/env bash
# Build the Kubernetes binaries used by the e2e and cluster tests:
#   kube-apiserver, kubectl  (k8s.io/kubernetes, pinned in kube/go.mod)
#   kube-controller-manager, kube-scheduler, kubelet, kube-proxy
#                            (the same module: the real node of tests/cluster)
#   etcd                     (go.etcd.io/etcd/server/v3, pinned in kube/go.mod)
#   helm                     (helm.sh/helm/v3, pinned in helm/go.mod)
#
# Needs only a Go toolchain (>= the "go" lines of the go.mod files) and access
# to the Go module proxy. Binaries are cached in
#   ${PODNET_CACHE:-/var/cache/otel-podnet}/kube-<hash>/
# where <hash> covers the go.mod/go.sum/Go sources, this script and the Go
# version; a complete cache entry is reused without building. The cache
# directory is printed as the last line on stdout; build logs go to stderr.
#
# Environment:
#   PODNET_CACHE      cache root (default /var/cache/otel-podnet)
#   GO                go binary (default: go on PATH, else /usr/local/go/bin/go)
#   PODNET_BUILD_NICE niceness of the build (default 10)
#
# Why etcd is built rather than taken from Debian: bookworm's etcd-server is
# 3.4.23. kube-apiserver v1.34 runs on it, but logs "RequestWatchProgress
# feature is not supported" and falls back to reading lists from etcd instead
# of its watch cache (needs etcd >= 3.4.31 / 3.5.13), unlike any real v1.34
# cluster. etcd v3.6.4, what kubernetes v1.34.12 is tested against, comes from
# the same module graph (go.etcd.io/etcd/server/v3) and adds ~1 min of build.
set -euo pipefail

# Everything runs from main so that bash has parsed the whole file before it
# starts: editing this script while a build runs cannot derail that build.
main() {
  KUBE_VERSION=v1.34.12
  HELM_VERSION=v3.19.5

  here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  kube_mod="${here}/kube"
  helm_mod="${here}/helm"
  cache_root="${PODNET_CACHE:-/var/cache/otel-podnet}"
  nice_level="${PODNET_BUILD_NICE:-10}"

  log() { printf 'build-kube: %s\n' "$*" >&2; }

  go_bin="${GO:-}"
  if [[ -z "${go_bin}" ]]; then
    if command -v go >/dev/null 2>&1; then
      go_bin="$(command -v go)"
    elif [[ -x /usr/local/go/bin/go ]]; then
      go_bin=/usr/local/go/bin/go
    else
      log "no Go toolchain found (set GO=/path/to/go)"
      exit 1
    fi
  fi

  # Never let a go.mod "toolchain" line download another Go; never rewrite go.mod.
  export GOTOOLCHAIN=local
  export GOFLAGS="-mod=readonly -buildvcs=false"
  export CGO_ENABLED=0

  go_version="$("${go_bin}" env GOVERSION)"

  inputs=(
    "${BASH_SOURCE[0]}"
    "${kube_mod}/go.mod" "${kube_mod}/go.sum" "${kube_mod}/tools.go"
    "${kube_mod}/cmd/etcd/main.go"
    "${helm_mod}/go.mod" "${helm_mod}/go.sum" "${helm_mod}/tools.go"
  )
  hash="$(
    {
      for f in "${inputs[@]}"; do
        printf '%s\n' "$(basename "$f")"
        cat "$f"
      done
      printf 'go=%s goos=%s goarch=%s\n' "${go_version}" "$("${go_bin}" env GOOS)" "$("${go_bin}" env GOARCH)"
    } | sha256sum | cut -c1-16
  )"
  out="${cache_root}/kube-${hash}"
  binaries=(kube-apiserver kubectl etcd helm kube-controller-manager kube-scheduler kubelet kube-proxy)

  complete() {
    [[ -f "${out}/.complete" ]] || return 1
    local b
    for b in "${binaries[@]}"; do
      [[ -x "${out}/${b}" ]] || return 1
    done
  }

  mkdir -p "${cache_root}"
  if complete; then
    log "cached: ${out}"
    printf '%s\n' "${out}"
    exit 0
  fi

  # Serialise concurrent builds of the same cache root (e.g. parallel pytest
  # workers); whoever gets the lock second finds the finished entry.
  exec 9>"${cache_root}/.build-kube.lock"
  flock 9
  if complete; then
    log "cached (built concurrently): ${out}"
    printf '%s\n' "${out}"
    exit 0
  fi

  tmp="$(mktemp -d "${cache_root}/.kube-${hash}.XXXXXX")"
  trap 'rm -rf "${tmp}"' EXIT

  log "building into ${out} with ${go_version} (kubernetes ${KUBE_VERSION}, helm ${HELM_VERSION})"
  start=${SECONDS}

  build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  minor="${KUBE_VERSION#v1.}"
  minor="${minor%%.*}"
  kube_ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    kube_ldflags+=" -X ${pkg}.gitVersion=${KUBE_VERSION}"
    kube_ldflags+=" -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}"
    kube_ldflags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=${build_date}"
  done

  (
    cd "${kube_mod}"
    nice -n "${nice_level}" "${go_bin}" build -trimpath -ldflags "${kube_ldflags}" -o "${tmp}/" \
      k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kubectl \
      ./cmd/etcd
  ) >&2
  log "kube-apiserver, kubectl, etcd built after $((SECONDS - start))s"
  (
    cd "${kube_mod}"
    nice -n "${nice_level}" "${go_bin}" build -trimpath -ldflags "${kube_ldflags}" -o "${tmp}/" \
      k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler \
      k8s.io/kubernetes/cmd/kubelet \
      k8s.io/kubernetes/cmd/kube-proxy
  ) >&2
  log "kube-controller-manager, kube-scheduler, kubelet, kube-proxy built after $((SECONDS - start))s"

  helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
  helm_ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  # Default capabilities for `helm template`/`helm lint`: the Kubernetes minor
  # of helm's client-go (v0.34 -> 1.34), as helm's own release builds set it.
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    helm_ldflags+=" -X ${pkg}.k8sVersionMajor=1 -X ${pkg}.k8sVersionMinor=34"
  done
  (
    cd "${helm_mod}"
    nice -n "${nice_level}" "${go_bin}" build -trimpath -ldflags "${helm_ldflags}" -o "${tmp}/helm" \
      helm.sh/helm/v3/cmd/helm
  ) >&2
  log "helm built after $((SECONDS - start))s"

  "${tmp}/kube-apiserver" --version >&2
  "${tmp}/etcd" --version >&2
  "${tmp}/kubectl" version --client >&2
  "${tmp}/kubelet" --version >&2
  "${tmp}/kube-proxy" --version >&2
  "${tmp}/helm" version --short >&2

  printf 'kubernetes=%s\nhelm=%s\ngo=%s\nbuild_seconds=%s\n' \
    "${KUBE_VERSION}" "${HELM_VERSION}" "${go_version}" "$((SECONDS - start))" >"${tmp}/VERSIONS"
  touch "${tmp}/.complete"
  chmod 0755 "${tmp}"
  rm -rf "${out}"
  mv "${tmp}" "${out}"
  trap - EXIT
  log "done in $((SECONDS - start))s: ${out}"
  printf '%s\n' "${out}"
}

main "$@"
exit
