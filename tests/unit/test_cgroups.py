"""Kubelet cgroup names, the cgroup2 mount, and the index over a tree built here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from otel_podnet.cgroups import CgroupError, CgroupIndex, find_cgroup2_mount, pod_uid_of

UID = "0f9d4b1e-8a2c-4c3e-9f00-1234567890ab"
U_ = UID.replace("-", "_")


@pytest.mark.parametrize(
    "path",
    [
        f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{U_}.slice/cri-containerd-{'a' * 64}.scope",
        f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{U_}.slice/crio-{'b' * 64}.scope",
        f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{U_}.slice/crio-conmon-{'b' * 64}.scope",
        f"kubepods.slice/kubepods-pod{U_}.slice/docker-{'c' * 64}.scope",
        f"kubepods.slice/kubepods-pod{U_}.slice",
        f"kubepods/burstable/pod{UID}/{'d' * 64}",
        f"kubepods/pod{UID}/{'e' * 64}",
        f"kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{U_}.slice",
    ],
)
def test_pod_uid_from_kubelet_names(path: str) -> None:
    assert pod_uid_of(path) == UID


@pytest.mark.parametrize(
    "path",
    [
        "",
        "system.slice/containerd.service",
        "kubepods.slice",
        "kubepods/burstable",
        f"user.slice/pod{UID}",
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podnot-a-uid.slice",
    ],
)
def test_not_a_pod(path: str) -> None:
    assert pod_uid_of(path) is None


def test_cgroup2_mount_from_mountinfo(tmp_path: Path) -> None:
    mi = tmp_path / "mountinfo"
    mi.write_text(
        "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
        "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw\n"
    )
    assert find_cgroup2_mount(mi) == Path("/sys/fs/cgroup/unified")
    mi.write_text("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n")
    with pytest.raises(CgroupError, match="no cgroup2 mount"):
        find_cgroup2_mount(mi)


def test_index_resolves_ids_and_rescans_only_pod_subtrees(tmp_path: Path) -> None:
    pod = tmp_path / "kubepods.slice" / "kubepods-burstable.slice" / f"kubepods-burstable-pod{U_}.slice"
    cont = pod / "cri-containerd-abc.scope"
    cont.mkdir(parents=True)
    (tmp_path / "system.slice" / "sshd.service").mkdir(parents=True)
    idx = CgroupIndex(tmp_path)
    everything = {i.relpath: i for i in idx.walk_all()}
    assert (
        everything["kubepods.slice/kubepods-burstable.slice/" + pod.name + "/cri-containerd-abc.scope"].pod_uid == UID
    )
    assert everything["system.slice/sshd.service"].pod_uid is None

    late = pod / "cri-containerd-late.scope"
    late.mkdir()
    idx.begin_round()
    info = idx.lookup(os.stat(late).st_ino)
    assert info is not None and info.pod_uid == UID and idx.scans == 1
    assert idx.lookup(12345678901) is None and idx.scans == 1  # at most one rescan per round
    late.rmdir()
    assert not idx.exists(info)
