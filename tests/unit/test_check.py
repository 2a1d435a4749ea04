"""`otel-podnet check` over host trees built here: each missing piece is a FAIL line with a
fix, and the hooks are not tried until the basics hold."""

from __future__ import annotations

from pathlib import Path

from otel_podnet.check import run_checks


def host(tmp_path: Path, cgroup2: bool, btf: bool, cap_eff: str) -> tuple[Path, Path]:
    proc, sysfs = tmp_path / "proc", tmp_path / "sys"
    (proc / "self").mkdir(parents=True)
    cg = tmp_path / "cgroup"
    cg.mkdir()
    (cg / "cgroup.procs").write_text("")
    line = f"41 31 0:38 / {cg} rw - {'cgroup2 cgroup2' if cgroup2 else 'tmpfs tmpfs'} rw\n"
    (proc / "self" / "mountinfo").write_text(line)
    (proc / "self" / "status").write_text(f"Name:\tx\nCapEff:\t{cap_eff}\n")
    if btf:
        (sysfs / "kernel" / "btf").mkdir(parents=True)
        (sysfs / "kernel" / "btf" / "vmlinux").write_text("")
    return proc, sysfs


def by_name(results: list) -> dict[str, object]:  # type: ignore[type-arg]
    return {r.name: r for r in results}


def test_not_ready_host_says_what_and_how(tmp_path: Path) -> None:
    proc, sysfs = host(tmp_path, cgroup2=False, btf=False, cap_eff="0000000000001000")  # NET_ADMIN only
    r = by_name(run_checks(proc=proc, sysfs=sysfs))
    assert not r["btf"].ok and "CONFIG_DEBUG_INFO_BTF" in r["btf"].line()  # type: ignore[attr-defined]
    assert not r["cgroup2"].ok and "no cgroup2 mount" in r["cgroup2"].line()  # type: ignore[attr-defined]
    assert r["privileges"].line() == (  # type: ignore[attr-defined]
        "FAIL privileges   missing CAP_BPF, CAP_PERFMON -> add the capabilities CAP_BPF, CAP_PERFMON"
    )
    assert not r["hooks"].ok and "not tried" in r["hooks"].line()  # type: ignore[attr-defined]


def test_ready_basics_then_the_object_is_required(tmp_path: Path) -> None:
    proc, sysfs = host(tmp_path, cgroup2=True, btf=True, cap_eff="000001ffffffffff")
    r = by_name(run_checks(proc=proc, sysfs=sysfs, object_path=tmp_path / "missing.o"))
    assert all(r[n].ok for n in ("btf", "cgroup2", "privileges", "libbpf"))  # type: ignore[attr-defined]
    assert not r["bpf-object"].ok and "pip install" in r["bpf-object"].line()  # type: ignore[attr-defined]


def test_kernel_line_from_what_the_matrix_proves() -> None:
    from otel_podnet.check import _kernel

    assert _kernel("6.1.0-56-amd64").line() == "ok   kernel       Linux 6.1.0-56-amd64"
    assert _kernel("5.15.0-91-generic").line() == (
        "warn kernel       Linux 5.15.0-91-generic: expected to work, not proven (needs Linux 6.1 or newer to be)"
    )
    assert _kernel("5.10.0-28-amd64").line() == "FAIL kernel       Linux 5.10.0-28-amd64 -> needs Linux 6.1 or newer"
