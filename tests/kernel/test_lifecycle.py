"""The real `otel-podnet run` process: it attaches, exports, and leaves nothing behind when
stopped (SIGTERM: exit 0 after a final export) or killed (SIGKILL: the kernel drops the
BPF links with the process)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from otel_podnet import features
from otel_podnet.datapath import PROGRAM_SUM, PROGRAMS_CGROUP, PROGRAMS_TRACING
from otel_podnet.simnode import SimNode


def podnet_progs() -> dict[int, str]:
    """id -> name of every loaded podnet_* program on this machine."""
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True).stdout
    return {int(p["id"]): p["name"] for p in json.loads(out) if p.get("name", "").startswith("podnet_")}


def attached_ids(cgroup_root: Path) -> set[int]:
    cmd = ["bpftool", "-j", "cgroup", "show", str(cgroup_root)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    return {int(p["id"]) for p in json.loads(out or "[]")}


def prog_ids_of(pid: int) -> set[int]:
    """The ids of the BPF programs a process holds (its program and link fds)."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        m = re.search(r"^prog_id:\s*(\d+)", text, re.M)
        if m:
            ids.add(int(m.group(1)))
    return ids


class Ours:
    """The programs the agent under test loaded: those its own process holds (agents of
    concurrent test runs load programs of the same names at any moment)."""

    def __init__(self) -> None:
        self.ids: dict[int, str] = {}

    def take(self, pid: int) -> None:
        held = prog_ids_of(pid)
        self.ids = {i: n for i, n in podnet_progs().items() if i in held}

    def loaded(self) -> list[str]:
        now = podnet_progs()
        return [n for i, n in self.ids.items() if i in now]

    def attached(self, cgroup_root: Path) -> list[str]:
        on = attached_ids(cgroup_root)
        return [n for i, n in self.ids.items() if i in on]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode().strip()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode().strip()


HEALTH_PORT = free_port()


def start(tmp_path: Path, node: SimNode, cgroup_root: Path) -> subprocess.Popen[str]:
    pods = tmp_path / "pods.yaml"
    node.write_pod_list(pods)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "otel_podnet",
            "run",
            "--pods-file",
            str(pods),
            "--exporter",
            "console",
            "--interval",
            "0.3",
            "--cgroup-root",
            str(cgroup_root),
            "--node-name",
            node.name,
            "--health-address",
            f"127.0.0.1:{HEALTH_PORT}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("POD"):
            break
        if not line and proc.poll() is not None:
            pytest.fail(f"agent exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
    return proc


def programs() -> list[str]:
    """The agent's programs: podnet_sum too where the kernel can run it (issue 10)."""
    sums = features.USERSPACE_SUMS not in {d.feature for d in features.probe()}
    return sorted(PROGRAMS_CGROUP + PROGRAMS_TRACING + ((PROGRAM_SUM,) if sums else ()))


def test_sigterm_final_export_and_detach(tmp_path: Path, node: SimNode, cgroup_root: Path) -> None:
    a = node.add_pod("a")
    ours = Ours()
    proc = start(tmp_path, node, cgroup_root)
    ours.take(proc.pid)
    try:
        assert sorted(ours.loaded()) == programs()
        assert sorted(ours.attached(cgroup_root)) == ["podnet_egress", "podnet_ingress"]
        assert get(HEALTH_PORT, "/healthz") == (200, "live")
        assert get(HEALTH_PORT, "/readyz") == (200, "ready")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "received SIGTERM" in err
    assert f"{a.namespace}/{a.name}" in out.split("POD")[-1]  # the final export
    assert ours.loaded() == [] and ours.attached(cgroup_root) == []


@pytest.mark.matrix
def test_sigkill_leaves_nothing(tmp_path: Path, node: SimNode, cgroup_root: Path) -> None:
    node.add_pod("a")
    ours = Ours()
    proc = start(tmp_path, node, cgroup_root)
    ours.take(proc.pid)
    assert sorted(ours.loaded()) == programs() and len(ours.attached(cgroup_root)) == 2
    proc.kill()
    proc.communicate(timeout=20)
    deadline = time.monotonic() + 5  # programs are freed as the kernel drops the last reference
    while (ours.loaded() or ours.attached(cgroup_root)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ours.loaded() == [] and ours.attached(cgroup_root) == []


def test_bad_pods_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "pods.yaml"
    bad.write_text("apiVersion: v1\nkind: ConfigMap\n")
    r = subprocess.run(
        [sys.executable, "-m", "otel_podnet", "run", "--pods-file", str(bad), "--exporter", "console"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("otel-podnet: ") and "'ConfigMap' is not a PodList" in last
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("failure", ["config", "unexpected"])
def test_exporter_failing_after_the_load_leaves_nothing(
    tmp_path: Path, cgroup_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], failure: str
) -> None:
    """The BPF object is loaded before the OTLP exporter is built (issue 10: its imports do
    not sit under libbpf's copy of the kernel's BTF); an exporter that fails then leaves no
    program loaded or attached: a ConfigError is one line and exit 2, anything else goes up."""
    from otel_podnet.cli import main
    from otel_podnet.exporters import otlp
    from otel_podnet.settings import ConfigError

    held: list[dict[int, str]] = []  # the programs this process held when the exporter was built

    def failing(*args: object, **kwargs: object) -> None:
        mine = prog_ids_of(os.getpid())
        held.append({i: n for i, n in podnet_progs().items() if i in mine})
        raise ConfigError("the exporter failed") if failure == "config" else RuntimeError("the exporter failed")

    monkeypatch.setattr(otlp, "OtlpExporter", failing)
    pods = tmp_path / "pods.yaml"
    pods.write_text("apiVersion: v1\nkind: PodList\nitems: []\n")
    argv = ["run", "--pods-file", str(pods), "--cgroup-root", str(cgroup_root), "--exporter", "otlp"]
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        if failure == "config":
            assert main([*argv, "--log-level", "warning"]) == 2
            assert capsys.readouterr().err == "otel-podnet: the exporter failed\n"
        else:
            with pytest.raises(RuntimeError, match="the exporter failed"):
                main([*argv, "--log-level", "warning"])
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    (loaded,) = held
    assert sorted(loaded.values()) == programs()
    assert not loaded.keys() & attached_ids(cgroup_root) and not loaded.keys() & prog_ids_of(os.getpid())
    deadline = time.monotonic() + 5  # programs are freed as the kernel drops the last reference
    while loaded.keys() & podnet_progs().keys() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not loaded.keys() & podnet_progs().keys()


def test_detach_and_attach_again_keep_the_maps(node: SimNode, cgroup_root: Path, tmp_path: Path) -> None:
    """Datapath.detach() (bench/interleave.py switches builds with it): nothing of ours stays
    attached, nothing is counted meanwhile, and attach() counts again into the same maps."""
    from otel_podnet.core import Core
    from otel_podnet.inventory import PodsFileSource

    a, b = node.add_pod("sender"), node.add_pod("receiver")
    pods_file = tmp_path / "pods.yaml"
    node.write_pod_list(pods_file)
    core = Core(cgroup_root, PodsFileSource(pods_file, node.name))
    core.start()
    try:
        ours = Ours()
        ours.take(os.getpid())
        mine = {i for i, n in ours.ids.items() if n in PROGRAMS_CGROUP}
        assert len(mine) == len(PROGRAMS_CGROUP) and mine <= attached_ids(cgroup_root)

        def udp(count: int, port: int) -> int:
            rcv = node.workload(b, "udp-recv", addr=b.ip4, port=port, count=count)
            node.wait_ready(rcv)
            assert node.result(node.workload(a, "udp-send", addr=b.ip4, port=port, count=count, size=100)) == {
                "sent": count,
                "bytes": count * 100,
            }
            assert node.result(rcv) == {"received": count, "bytes": count * 100}
            return count

        def sent() -> int:
            for s in core.collect().samples:
                if s.uid == a.uid:
                    return s.counters.packets_tx_udp
            return 0

        first = udp(300, 7100)
        assert sent() == first
        core.datapath.detach()
        assert not mine & attached_ids(cgroup_root)
        udp(200, 7101)  # not seen
        assert sent() == first
        core.datapath.attach()
        assert len({i for i in attached_ids(cgroup_root) if i in mine}) == len(PROGRAMS_CGROUP)
        again = udp(100, 7102)
        assert sent() == first + again
    finally:
        core.close()
    assert not mine & attached_ids(cgroup_root)
