"""The kernel ABI is checked, not trusted: the object is built here and its maps' sizes,
as libbpf reads them from the object, are compared with otel_podnet/abi.py."""

from __future__ import annotations

import ctypes
import importlib.util
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from otel_podnet import abi
from otel_podnet.cli import main
from otel_podnet.datapath import AbiMismatch, check_abi
from otel_podnet.libbpf import BpfObject

BPF = Path(__file__).resolve().parents[2] / "bpf"


def _compile_bpf() -> Callable[[Path, Path], Path]:
    spec = importlib.util.spec_from_file_location("podnet_bpf_build", BPF / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.compile_bpf  # type: ignore[no-any-return]


def build(tmp_path: Path, edit: tuple[str, str] | None = None) -> Path:
    compile_bpf = _compile_bpf()
    src = tmp_path / "src"
    src.mkdir()
    for f in BPF.glob("*.[ch]"):
        shutil.copy(f, src / f.name)
    if edit is not None:
        header = src / "podnet.h"
        text = header.read_text()
        assert edit[0] in text
        header.write_text(text.replace(edit[0], edit[1]))
    return compile_bpf(tmp_path / "podnet.bpf.o", src / "podnet.bpf.c")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("abi"))


def test_every_map_of_the_object_matches_abi(built: Path) -> None:
    obj = BpfObject(str(built))
    try:
        names = obj.maps()
        assert sorted(n for n in names if "." not in n) == sorted(abi.MAPS)  # every map is mirrored
        for name, (key, value) in abi.MAPS.items():
            key_size, value_size, _ = obj.map_layout(name)
            assert key_size == (0 if key is None else ctypes.sizeof(key)), name
            if value is not None:
                assert value_size == ctypes.sizeof(value), name
        # today's layout, spelled out: a change to podnet.h shows up here too
        assert obj.map_layout("podnet_cgroups")[:2] == (8, 8)
        assert obj.map_layout("podnet_pod_ips")[:2] == (16, 8)
        assert obj.map_layout("podnet_health") == (4, 8, abi.NHEALTH)
        assert obj.map_layout("podnet_socks")[:2] == (4, 112)
        # issue 10: the kernel's sums, one row per slot and per peer row, and their context
        assert obj.map_layout("podnet_sums")[:2] == (4, 1120) == obj.map_layout("podnet_stats")[:2]
        assert obj.map_layout("podnet_peer_sums")[:2] == (4, 72) == obj.map_layout("podnet_peer_stats")[:2]
        assert obj.struct_size("podnet_sum_args") == ctypes.sizeof(abi.PodnetSumArgs) == 12
        for section, variables in abi.VARS.items():
            for var, ctype in variables.items():
                assert obj.section_var_offset(section, var)[1] == ctypes.sizeof(ctype), var
        check_abi(obj)  # and the agent's own check agrees
    finally:
        obj.close()


def test_a_changed_header_is_refused_in_one_line(tmp_path: Path) -> None:
    changed = build(
        tmp_path,
        ("struct podnet_cgroup {\n\t__u32 slot;\n", "struct podnet_cgroup {\n\t__u64 slot;\n"),
    )
    obj = BpfObject(str(changed))
    try:
        with pytest.raises(AbiMismatch) as err:
            check_abi(obj)
    finally:
        obj.close()
    msg = str(err.value)
    assert "\n" not in msg
    assert msg == (
        f"[Errno 71] {changed} does not match this agent's otel_podnet/abi.py "
        "(podnet_cgroups value 16 bytes, abi.py 8 (PodnetCgroup)): rebuild the object and the package together"
    )


def test_a_changed_program_context_is_refused(tmp_path: Path) -> None:
    """podnet_sum's context is in no map: its struct is compared by its BTF size."""
    changed = build(tmp_path, ("\t__u32 count;\t/* rows summed from it */\n", "\t__u64 count;\n"))
    obj = BpfObject(str(changed))
    try:
        with pytest.raises(AbiMismatch) as err:
            check_abi(obj)
    finally:
        obj.close()
    assert "(struct podnet_sum_args 16 bytes, abi.py 12): rebuild" in str(err.value)


CHANGED = ("struct podnet_ip_val {\n\t__u32 slot;\n\t__u32 pad;\n", "struct podnet_ip_val {\n\t__u32 slot;\n")


def test_run_refuses_a_mismatched_object_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    changed = build(tmp_path, CHANGED)
    pods = tmp_path / "pods.yaml"
    pods.write_text("apiVersion: v1\nkind: PodList\nitems: []\n")
    (tmp_path / "cg").mkdir()
    monkeypatch.setenv("PODNET_BPF_OBJECT", str(changed))
    argv = ["run", "--pods-file", str(pods), "--cgroup-root", str(tmp_path / "cg"), "--exporter", "none"]
    argv += ["--log-level", "warning"]
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert err == (
        f"otel-podnet: {changed} does not match this agent's otel_podnet/abi.py "
        "(podnet_pod_ips value 4 bytes, abi.py 8 (PodnetIpVal)): rebuild the object and the package together\n"
    )
