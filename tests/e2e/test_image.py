"""The agent's container image as deploy/image/build.sh builds it from the Dockerfile, and
the pause and workload images the cluster test imports.

- the agent image holds Python, libbpf.so.1 and a BPF object, no compiler and no pip, runs
  as user 65532 with the manifests' three capabilities as permitted file capabilities of
  its interpreter, and has no setuid or setgid file; its size is reported;
- under runc, started as containerd starts the DaemonSet's container (user 65532, only
  BPF, PERFMON and NET_ADMIN, nothing ambient, no_new_privs, read-only root, the host's
  cgroup v2 tree read-only), ``otel-podnet check`` is ready and ``otel-podnet run``
  exports and stops cleanly on SIGTERM; without NET_ADMIN, or without any of the three,
  the interpreter still starts and check names exactly what is missing;
- the pause image stops at once on SIGTERM; the workload image's server and client
  report exactly the bytes they moved.

The images come from the build script's cache; a cold build takes about ten minutes.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .images import Archives, Opened, build_images, container, missing_tools, opened, run, runc_spec

CAPS = {"CAP_NET_ADMIN": 12, "CAP_PERFMON": 38, "CAP_BPF": 39}
UID = 65532
# The agent image's size budget (uncompressed layers): Debian minbase, Python 3.11, libbpf
# and the virtualenv (the kubernetes client alone is 57 MB) measured 251 MB.
SIZE_BUDGET = 280 * 10**6


@pytest.fixture(scope="module")
def archives() -> Archives:
    if os.geteuid() != 0:
        pytest.skip("building images needs root (buildah, runc)")
    missing = missing_tools()
    assert not missing, f"missing {', '.join(missing)}: run `make cluster-tools`"
    return build_images(("0.1.0", "0.1.0-test"))


@pytest.fixture(scope="module")
def agent(archives: Archives, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Opened]:
    with opened(archives.agent["0.1.0"], tmp_path_factory.mktemp("agent-image")) as image:
        yield image


def _site_packages(root: Path) -> Path:
    [site] = root.glob("opt/otel-podnet/lib/python3.*/site-packages")
    return site


def _resolve(root: Path, path: str) -> Path:
    """``path`` inside the image, its symlinks followed inside the image."""
    p = root / path.lstrip("/")
    for _ in range(16):
        if not p.is_symlink():
            return p
        target = os.readlink(p)
        p = root / target.lstrip("/") if target.startswith("/") else p.parent / target
    raise AssertionError(f"symlink loop at {path}")


def test_agent_image_holds_python_libbpf_and_the_bpf_object_and_no_compiler(
    agent: Opened, record_property: Callable[[str, object], None]
) -> None:
    root = agent.rootfs
    cfg = agent.config
    assert cfg["User"] == f"{UID}:{UID}"
    assert cfg["Entrypoint"] == ["otel-podnet"]
    assert cfg["Cmd"] == ["run"]

    obj = _site_packages(root) / "otel_podnet" / "bpf" / "podnet.bpf.o"
    head = obj.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 247, "not an EM_BPF ELF object"
    libbpf = _resolve(root, "/usr/lib/x86_64-linux-gnu/libbpf.so.1")
    assert libbpf.is_file(), "libbpf.so.1 missing"

    bins = [root / d for d in ("usr/bin", "usr/local/bin", "usr/sbin", "opt/otel-podnet/bin")]
    compilers = re.compile(r"(clang|gcc|g\+\+|cc|c\+\+|cpp|ld|ld\.(bfd|gold|lld)|as|llc|pip\d*(\.\d+)?)(-\d+)?")
    found = sorted(str(f.relative_to(root)) for d in bins for f in d.iterdir() if compilers.fullmatch(f.name))
    assert found == []
    assert not list(root.glob("usr/lib/llvm-*")) and not list(root.glob("usr/lib/gcc*"))
    assert not list(_site_packages(root).glob("pip*")), "pip shipped"
    assert not (root / "usr/include/linux").exists(), "kernel headers shipped"

    setid = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_mode & 0o6000:
                setid.append(os.path.join(dirpath, name))
    assert setid == []

    record_property("agent_image_bytes", agent.size)
    print(f"\nagent image: {agent.size / 1e6:.1f} MB uncompressed")
    assert agent.size < SIZE_BUDGET, f"agent image {agent.size / 1e6:.1f} MB over its {SIZE_BUDGET / 1e6:.0f} MB budget"


def test_interpreter_holds_exactly_the_manifests_capabilities_permitted_only(agent: Opened) -> None:
    """security.capability of the virtualenv's python3 (VFS_CAP_REVISION_2): BPF, PERFMON,
    NET_ADMIN permitted, nothing inheritable, no effective bit; the system's python
    carries none."""
    py = agent.rootfs / "opt/otel-podnet/bin/python3"
    assert not py.is_symlink()
    raw = os.getxattr(py, "security.capability")
    magic, prm_lo, inh_lo, prm_hi, inh_hi = (int.from_bytes(raw[i : i + 4], "little") for i in range(0, 20, 4))
    assert magic == 0x02000000  # revision 2, effective flag clear
    assert prm_lo | prm_hi << 32 == sum(1 << bit for bit in CAPS.values())
    assert inh_lo == inh_hi == 0
    system = _resolve(agent.rootfs, "/usr/bin/python3")
    with pytest.raises(OSError):
        os.getxattr(system, "security.capability")


def _agent_spec(agent: Opened, args: list[str], **kw: object) -> dict[str, object]:
    return runc_spec(agent.rootfs, ["otel-podnet", *args], env=["NODE_NAME=image-test"], **kw)  # type: ignore[arg-type]


def test_check_is_ready_as_the_daemonset_runs_it(agent: Opened, tmp_path: Path) -> None:
    """User 65532, only the three capabilities, no_new_privs on (allowPrivilegeEscalation:
    false), read-only root, the host's cgroup v2 tree."""
    res = run(_agent_spec(agent, ["check", "--cgroup-root=/host/sys/fs/cgroup"]), tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"^ok\s+privileges\s+CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN$", res.stdout, re.M), res.stdout
    assert re.search(r"^ok\s+hooks\s+attached and detached", res.stdout, re.M), res.stdout
    assert res.stdout.rstrip().endswith("ready")


def test_status_of_the_agent_process_shows_exactly_the_three_capabilities(agent: Opened, tmp_path: Path) -> None:
    """The process the container starts (uid 65532) holds BPF, PERFMON and NET_ADMIN
    permitted and, once the agent raised them, effective; nothing ambient."""
    code = "from otel_podnet.caps import raise_permitted; raise_permitted(); print(open('/proc/self/status').read())"
    spec = runc_spec(agent.rootfs, ["python3", "-c", code])
    res = run(spec, tmp_path)
    assert res.returncode == 0, res.stderr
    status = dict(line.split(":\t", 1) for line in res.stdout.splitlines() if ":\t" in line)
    want = sum(1 << bit for bit in CAPS.values())
    assert status["Uid"].split()[:2] == [str(UID), str(UID)]
    assert int(status["CapPrm"], 16) == want
    assert int(status["CapEff"], 16) == want
    assert int(status["CapAmb"], 16) == 0
    assert int(status["CapInh"], 16) == 0
    assert status["NoNewPrivs"].strip() == "1"


@pytest.mark.parametrize(
    ("capabilities", "missing"),
    [(("BPF", "PERFMON"), "CAP_NET_ADMIN"), ((), "CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN")],
    ids=["without-net-admin", "without-any"],
)
def test_check_names_what_the_container_lacks(
    agent: Opened, tmp_path: Path, capabilities: tuple[str, ...], missing: str
) -> None:
    """The interpreter still starts (its file capabilities are not effective ones), and
    check exits 3 naming the capabilities the container did not grant."""
    spec = _agent_spec(agent, ["check", "--cgroup-root=/host/sys/fs/cgroup"], capabilities=capabilities)
    res = run(spec, tmp_path)
    assert res.returncode == 3, res.stdout + res.stderr
    assert re.search(rf"^FAIL privileges\s+missing {missing} ->", res.stdout, re.M), res.stdout


def test_agent_runs_exports_and_stops_cleanly_on_sigterm(agent: Opened, tmp_path: Path) -> None:
    args = ["run", "--cgroup-root=/host/sys/fs/cgroup", "--exporter=console", "--interval=1", "--max-pods=16"]
    spec = _agent_spec(agent, args)
    with container(spec, tmp_path) as (cid, argv):
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(4)
            assert proc.poll() is None, proc.communicate()
            subprocess.run(["runc", "--root", str(tmp_path / "runc-state"), "kill", cid, "TERM"], check=True)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, out + err
    # the console exporter's table: the node's own row and the agent's health line
    assert re.search(r"^\(node\)", out, re.M), out
    assert re.search(r"^-- pods \d+, slots \d+/\d+", out, re.M), out


def test_pause_image_holds_one_static_binary_that_stops_at_once_on_sigterm(archives: Archives, tmp_path: Path) -> None:
    with opened(archives.pause, tmp_path / "img") as image:
        files = sorted(str(p.relative_to(image.rootfs)) for p in image.rootfs.rglob("*") if p.is_file())
        assert files == ["pause"]
        assert image.config["Entrypoint"] == ["/pause"]
        spec = runc_spec(image.rootfs, ["/pause"], user=(65535, 65535), capabilities=())
        with container(spec, tmp_path) as (cid, argv):
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            time.sleep(1)
            assert proc.poll() is None, proc.communicate()
            subprocess.run(["runc", "--root", str(tmp_path / "runc-state"), "kill", cid, "TERM"], check=True)
            proc.communicate(timeout=10)
        assert proc.returncode == 0


@pytest.fixture
def netns() -> Iterator[Path]:
    """A network namespace of this test's own, loopback up."""
    name = f"podnet-imgtest-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield Path("/run/netns") / name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def test_workload_image_server_and_client_report_exact_bytes(archives: Archives, tmp_path: Path, netns: Path) -> None:
    with opened(archives.workload, tmp_path / "img") as image:
        assert image.config["Entrypoint"] == ["python3", "/usr/local/bin/podnet-workload"]
        server_args = ["tcp-server", "--addr=127.0.0.1", "--port=8080", "--count=3", "--recv=1000", "--send=7000"]
        client_args = ["tcp-client", "--addr=127.0.0.1", "--port=8080", "--count=3", "--send=1000", "--recv=7000"]
        cmd = (
            "python3 /usr/local/bin/podnet-workload " + " ".join(server_args) + " > /tmp/server & "
            "while ! grep -q ready /tmp/server; do sleep 0.1; done; "
            "python3 /usr/local/bin/podnet-workload " + " ".join(client_args) + "; wait; tail -n1 /tmp/server"
        )
        spec = runc_spec(image.rootfs, ["/bin/sh", "-c", cmd], capabilities=(), netns=netns)
        res = run(spec, tmp_path)
    assert res.returncode == 0, res.stderr
    client, server = (json.loads(line) for line in res.stdout.splitlines()[-2:])
    assert server == {"accepted": 3, "received": 3000, "sent": 21000}
    assert client == {"connected": 3, "sent": 3000, "received": 21000}
