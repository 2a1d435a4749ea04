"""The container images of deploy/image/build.sh, opened and run without containerd.

- :func:`build_images` runs the build script (cached by input hash; minutes when cold)
  and returns the archives it printed;
- :func:`opened` loads a docker-archive into a buildah store of its own, as
  ``ctr images import`` would take it, and mounts its root filesystem;
- :func:`runc_spec` and :func:`run` start a process of that root filesystem under runc
  the way containerd's CRI plugin does for a Kubernetes container: the added
  capabilities in the bounding, permitted and effective sets, none ambient or
  inheritable, the pod's user, no_new_privs from allowPrivilegeEscalation, a read-only
  root, the DaemonSet's host mounts.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "deploy" / "image" / "build.sh"
TOOLS = ("buildah", "mmdebstrap", "runc")


@dataclass(frozen=True)
class Archives:
    agent: dict[str, Path]  # tag -> archive
    pause: Path
    workload: Path


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


def build_images(tags: Sequence[str] = ("0.1.0",), timeout: float = 3600.0) -> Archives:
    """Run deploy/image/build.sh with --tag for each of ``tags``; its stderr goes to ours."""
    args = ["bash", str(BUILD_SCRIPT)]
    for t in tags:
        args += ["--tag", t]
    out = subprocess.run(args, stdout=subprocess.PIPE, text=True, timeout=timeout, check=True).stdout
    paths = [Path(line) for line in out.splitlines() if line.strip()]
    assert len(paths) == len(tags) + 2, out
    return Archives(dict(zip(tags, paths[: len(tags)], strict=True)), paths[-2], paths[-1])


def _driver(path: Path) -> str:
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True).stdout.strip()
    return os.environ.get("PODNET_STORAGE_DRIVER") or ("vfs" if fs in ("overlayfs", "fuse", "fuseblk") else "overlay")


@dataclass(frozen=True)
class Opened:
    rootfs: Path
    config: dict[str, Any]  # the image's OCI config ("User", "Env", "Entrypoint", ...)
    size: int  # bytes of the image's layers, uncompressed (layers_size)


def layers_size(archive: Path) -> int:
    """Bytes of a docker-archive's layers, uncompressed: what the image takes on a node."""
    with tarfile.open(archive) as tar:
        manifest = tar.extractfile("manifest.json")
        assert manifest is not None
        [image] = json.load(manifest)
        return sum(tar.getmember(layer).size for layer in image["Layers"])


@contextlib.contextmanager
def opened(archive: Path, workdir: Path) -> Iterator[Opened]:
    """The archive loaded into a fresh buildah store under ``workdir``, its root mounted."""
    store = workdir / "store"
    store.mkdir(parents=True, exist_ok=True)
    bh = ["buildah", "--root", str(store), "--runroot", str(workdir / "run"), "--storage-driver", _driver(store)]
    container = ""
    try:
        image = subprocess.run(
            [*bh, "pull", "--quiet", f"docker-archive:{archive}"], capture_output=True, text=True, check=True
        ).stdout.split()[-1]
        inspect = subprocess.run([*bh, "inspect", "--type", "image", image], capture_output=True, check=True)
        info = json.loads(inspect.stdout)
        container = subprocess.run(
            [*bh, "from", "--pull=never", image], capture_output=True, text=True, check=True
        ).stdout.strip()
        root = subprocess.run([*bh, "mount", container], capture_output=True, text=True, check=True).stdout.strip()
        yield Opened(Path(root), info["OCIv1"]["config"], layers_size(archive))
    finally:
        if container:
            subprocess.run([*bh, "rm", container], capture_output=True)
        subprocess.run([*bh, "rmi", "--all", "--force"], capture_output=True)
        shutil.rmtree(store, ignore_errors=True)


def host_cgroup2() -> Path:
    """This machine's cgroup v2 mount (/sys/fs/cgroup/unified on hybrid hosts)."""
    from otel_podnet.cgroups import find_cgroup2_mount

    return find_cgroup2_mount()


def runc_spec(
    rootfs: Path,
    args: Sequence[str],
    *,
    user: tuple[int, int] = (65532, 65532),
    capabilities: Sequence[str] = ("BPF", "PERFMON", "NET_ADMIN"),
    no_new_privs: bool = True,
    env: Sequence[str] = (),
    netns: Path | None = None,
) -> dict[str, Any]:
    """An OCI runtime spec as containerd's CRI plugin makes it for the DaemonSet's
    container: securityContext capabilities.add in bounding, permitted and effective (drop
    ALL: nothing else), nothing ambient or inheritable, runAsUser/runAsGroup,
    allowPrivilegeEscalation as no_new_privs, readOnlyRootFilesystem, the host's cgroup v2
    tree read-only at /host/sys/fs/cgroup and a tmpfs at /tmp."""
    caps = [f"CAP_{c}" for c in capabilities]

    def mount(dest: str, kind: str, source: str, *options: str) -> dict[str, Any]:
        return {"destination": dest, "type": kind, "source": source, "options": list(options)}

    mounts = [
        mount("/proc", "proc", "proc"),
        mount("/dev", "tmpfs", "tmpfs", "nosuid", "strictatime", "mode=755"),
        mount("/dev/pts", "devpts", "devpts", "nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"),
        mount("/dev/shm", "tmpfs", "shm", "nosuid", "noexec", "nodev", "mode=1777", "size=65536k"),
        mount("/sys", "sysfs", "sysfs", "nosuid", "noexec", "nodev", "ro"),
        mount("/host/sys/fs/cgroup", "bind", str(host_cgroup2()), "rbind", "ro"),
        mount("/tmp", "tmpfs", "tmpfs", "nosuid", "nodev", "mode=1777", "size=16m"),
    ]
    namespaces: list[dict[str, str]] = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    namespaces.append({"type": "network", "path": str(netns)} if netns else {"type": "network"})
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": user[0], "gid": user[1]},
            "args": list(args),
            "env": ["PATH=/opt/otel-podnet/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", *env],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps, "inheritable": [], "ambient": []},
            "noNewPrivileges": no_new_privs,
        },
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": "image-test",
        "mounts": mounts,
        "linux": {
            "namespaces": namespaces,
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }


@contextlib.contextmanager
def container(spec: dict[str, Any], workdir: Path) -> Iterator[tuple[str, list[str]]]:
    """A bundle for ``spec`` and the runc command prefix with a state root of its own;
    yields (container id, runc argv prefix) and deletes the container afterwards."""
    cid = f"podnet-image-test-{secrets.token_hex(4)}"
    bundle = workdir / cid
    bundle.mkdir(parents=True)
    (bundle / "config.json").write_text(json.dumps(spec))
    runc = ["runc", "--root", str(workdir / "runc-state")]
    try:
        yield cid, [*runc, "run", "--bundle", str(bundle), cid]
    finally:
        subprocess.run([*runc, "delete", "--force", cid], capture_output=True)
        shutil.rmtree(bundle, ignore_errors=True)


def run(spec: dict[str, Any], workdir: Path, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run the spec's process to its end under runc; its exit status and output."""
    with container(spec, workdir) as (_, argv):
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
