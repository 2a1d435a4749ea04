"""cgroup v2: where it is mounted, and which pod a cgroup belongs to.

Kubelet names pod cgroups in two ways, by its cgroup driver:

* systemd: ``kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice``
  (the UID's dashes as underscores; Guaranteed pods have no QoS level:
  ``kubepods.slice/kubepods-pod<uid>.slice``), containers below it as
  ``cri-containerd-<id>.scope``, ``crio-<id>.scope`` or ``docker-<id>.scope``;
* cgroupfs: ``kubepods/burstable/pod<uid>/<container id>`` (Guaranteed: ``kubepods/pod<uid>``).

Everything below a pod's cgroup belongs to that pod. A cgroup id is the inode number of its
directory, which is what the BPF side reads.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from logging import getLogger
from pathlib import Path

_logger = getLogger(__name__)

_UID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"
# a kubelet --cgroup-root prefixes every slice name (kind, k3s: "kubelet-kubepods-...")
_SYSTEMD_POD = re.compile(rf"^(?:[a-z0-9]+-)*kubepods(?:-(?:burstable|besteffort))?-pod({_UID})\.slice$")
_CGROUPFS_POD = re.compile(rf"^pod({_UID})$")


class CgroupError(Exception):
    """No usable cgroup v2 hierarchy."""


def find_cgroup2_mount(mountinfo: Path = Path("/proc/self/mountinfo")) -> Path:
    """The cgroup v2 mount point from mountinfo (``/sys/fs/cgroup`` on most nodes,
    ``/sys/fs/cgroup/unified`` on hybrid hosts)."""
    try:
        text = mountinfo.read_text()
    except OSError as exc:
        raise CgroupError(f"cannot read {mountinfo}: {exc.strerror}") from exc
    for line in text.splitlines():
        pre, sep, post = line.partition(" - ")
        if not sep:
            continue
        if post.split(" ", 1)[0] == "cgroup2":
            fields = pre.split(" ")
            if len(fields) >= 5:
                return Path(_unescape(fields[4]))
    raise CgroupError(f"no cgroup2 mount in {mountinfo}; mount one (mount -t cgroup2 none /sys/fs/cgroup)")


def _unescape(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def pod_uid_of(relpath: str) -> str | None:
    """The pod UID a cgroup path (relative to the cgroup root) belongs to, or None."""
    parts = [p for p in relpath.split("/") if p]
    for i, part in enumerate(parts):
        m = _SYSTEMD_POD.match(part)
        if m and any("kubepods" in p for p in parts[:i]):
            return m.group(1).replace("_", "-")
        m = _CGROUPFS_POD.match(part)
        if m and any("kubepods" in p for p in parts[:i]):
            return m.group(1).replace("_", "-")
    return None


@dataclass(frozen=True)
class CgroupInfo:
    cgid: int
    relpath: str
    pod_uid: str | None


class CgroupIndex:
    """cgroup id → path and pod, for the pod subtrees (``kubepods*``) of a cgroup root.

    A lookup miss rescans only the kubepods subtrees, at most once per :meth:`begin_round`,
    so resolving new cgroup ids costs O(pod cgroups) when they appear, never a full walk of
    the hierarchy per interval.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._root_str = str(root)
        self._by_id: dict[int, CgroupInfo] = {}
        self._scanned_this_round = False
        self.scans = 0

    def begin_round(self) -> None:
        self._scanned_this_round = False

    def lookup(self, cgid: int) -> CgroupInfo | None:
        info = self._by_id.get(cgid)
        if info is None and not self._scanned_this_round:
            self.rescan_pods()
            info = self._by_id.get(cgid)
        return info

    def known(self, cgid: int) -> CgroupInfo | None:
        return self._by_id.get(cgid)

    def exists(self, info: CgroupInfo) -> bool:
        """Whether that cgroup directory is still there (and still the same cgroup)."""
        try:  # a string join, not a Path: this runs per pod cgroup per interval (issue 10)
            return os.stat(f"{self._root_str}/{info.relpath}").st_ino == info.cgid
        except OSError:
            return False

    def forget(self, cgid: int) -> None:
        self._by_id.pop(cgid, None)

    def keep_only(self, alive: set[int]) -> None:
        for cgid in [c for c in self._by_id if c not in alive]:
            del self._by_id[cgid]

    def rescan_pods(self) -> None:
        self._scanned_this_round = True
        self.scans += 1
        for top in self._kubepods_tops():
            self._walk(top, pods_only=True)

    def walk_all(self) -> list[CgroupInfo]:
        """Every cgroup under the root (done once, at start)."""
        found: list[CgroupInfo] = []
        self._walk("", pods_only=False, out=found)
        return found

    def _kubepods_tops(self) -> list[str]:
        """kubepods* directories at the top or one level down (kubelet.slice/...)."""
        tops: list[str] = []
        for entry in _scandirs(self.root):
            if entry.name.startswith("kubepods"):
                tops.append(entry.name)
            elif entry.name.startswith("kubelet"):
                tops.extend(
                    f"{entry.name}/{e.name}"
                    for e in _scandirs(Path(entry.path))
                    if e.name.startswith("kubelet-kubepods") or e.name.startswith("kubepods")
                )
        return tops

    def _walk(self, start: str, pods_only: bool, out: list[CgroupInfo] | None = None) -> None:
        stack = [start]
        if start:
            try:
                self._add(os.stat(self.root / start).st_ino, start, out)
            except OSError:
                return
        else:
            self._add(os.stat(self.root).st_ino, "", out)
        while stack:
            rel = stack.pop()
            for entry in _scandirs(self.root / rel):
                child = f"{rel}/{entry.name}" if rel else entry.name
                self._add(entry.inode(), child, out)
                stack.append(child)

    def _add(self, cgid: int, rel: str, out: list[CgroupInfo] | None) -> None:
        info = self._by_id.get(cgid)
        if info is None or info.relpath != rel:
            info = CgroupInfo(cgid, rel, pod_uid_of(rel))
            self._by_id[cgid] = info
        if out is not None:
            out.append(info)


def _scandirs(path: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return [e for e in it if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []
