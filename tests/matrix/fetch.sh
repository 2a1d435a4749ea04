#!/usr/bin/env bash
# Fetch what the kernel matrix boots and loads, from Debian's packages, into the cache:
#   $CACHE/kernels/<package>/        a Debian kernel package extracted (boot/vmlinuz-*, lib/modules/*)
#   $CACHE/libbpf/<version>/         a libbpf1 package extracted (usr/lib/x86_64-linux-gnu/libbpf.so.1)
# and print, one per line, "kernel <release> <dir>" and "libbpf <version> <path to libbpf.so.1>".
# Kernels: the newest 6.1 of bookworm and the newest 6.12 of bookworm-backports, as the
# linux-image-amd64 meta package of each suite names them; libbpf1 from both suites.
# Idempotent: bookworm-backports is added as an apt source once; a cached package is not
# fetched again. Concurrent runs wait for each other (flock).
set -euo pipefail

CACHE=${PODNET_CACHE:-/var/cache/otel-podnet}
SOURCES=/etc/apt/sources.list.d/otel-podnet-backports.sources
mkdir -p "$CACHE/kernels" "$CACHE/libbpf" "$CACHE/debs"
chown _apt "$CACHE/debs" 2>/dev/null || true  # apt-get download runs as _apt
exec 9>"$CACHE/matrix-fetch.lock"
flock 9

if ! grep -rqs '^Suites:.*bookworm-backports\|^deb .* bookworm-backports ' /etc/apt/sources.list /etc/apt/sources.list.d/; then
	cat > "$SOURCES" <<'SRC'
# added by otel-podnet (tests/matrix/fetch.sh): kernels and libbpf for the kernel matrix.
# Backports have apt priority 100: nothing installed is upgraded from here.
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
	apt-get update -qq
elif ! apt-cache show 'linux-image-amd64/bookworm-backports' >/dev/null 2>&1; then
	apt-get update -qq
fi

# The package a meta package depends on, in a suite (empty suite: the default release).
depends_of() {
	local spec=$1
	apt-cache depends "$spec" 2>/dev/null | awk '/^  Depends: linux-image-/ {print $2; exit}'
}

# Download a package (name or name/suite) and extract it into a directory, once.
extract() {
	local spec=$1 dest=$2
	if [ -f "$dest/.complete" ]; then
		return
	fi
	rm -rf "$dest" && mkdir -p "$dest"
	(cd "$CACHE/debs" && apt-get download -qq "$spec" >/dev/null)
	local name=${spec%%/*}
	name=${name%%=*}
	local deb
	deb=$(ls -t "$CACHE/debs/${name}_"*.deb | head -n1)
	dpkg-deb -x "$deb" "$dest"
	rm -f "$deb"
	touch "$dest/.complete"
}

for meta in linux-image-amd64 linux-image-amd64/bookworm-backports; do
	pkg=$(depends_of "$meta")
	if [ -z "$pkg" ]; then
		echo "fetch.sh: no kernel package behind $meta" >&2
		exit 1
	fi
	extract "$pkg" "$CACHE/kernels/$pkg"
	release=$(ls "$CACHE/kernels/$pkg/lib/modules")
	echo "kernel $release $CACHE/kernels/$pkg"
done

for suite in bookworm bookworm-backports; do
	version=$(apt-cache policy libbpf1 | awk -v s=" $suite/main " '$0 ~ s {print prev; exit} {prev = ($1 == "***") ? $2 : $1}')
	if [ -z "$version" ]; then
		echo "fetch.sh: no libbpf1 in $suite" >&2
		exit 1
	fi
	dir="$CACHE/libbpf/${version//[:~+]/_}"
	extract "libbpf1=$version" "$dir"
	so=$(ls "$dir"/usr/lib/x86_64-linux-gnu/libbpf.so.1.* | head -n1)
	echo "libbpf $version $so"
done
