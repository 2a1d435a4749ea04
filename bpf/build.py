"""Compile bpf/podnet.bpf.c into the CO-RE object the package ships.

Used by setup.py (``pip install .``) and by ``make bpf``; the agent never compiles anything.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ARCH = {"x86_64": "x86", "aarch64": "arm64", "ppc64le": "powerpc", "s390x": "s390"}.get(platform.machine(), "x86")
DEFAULT_OUT = HERE.parent / "otel_podnet" / "bpf" / "podnet.bpf.o"


def find_clang() -> str:
    for name in (os.environ.get("CLANG", ""), "clang-19", "clang-18", "clang-17", "clang-16", "clang"):
        if name and shutil.which(name):
            return name
    raise SystemExit("otel-podnet: clang not found; install clang-19 (apt-get install clang-19) to build BPF objects")


def compile_bpf(out: Path = DEFAULT_OUT, src: Path = HERE / "podnet.bpf.c", defines: tuple[str, ...] = ()) -> Path:
    """Compile ``src`` into ``out``; ``defines`` (``NAME=VALUE``) are for bench/run.py's ablations."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        find_clang(),
        "-g",
        "-O2",
        "-target",
        "bpf",
        "-mcpu=v3",
        f"-D__TARGET_ARCH_{ARCH}",
        "-Wall",
        "-Werror",
        f"-I{HERE}",
        *(f"-D{d}" for d in defines),
    ]
    if shutil.which("gcc"):
        multiarch = subprocess.run(["gcc", "-print-multiarch"], capture_output=True, text=True).stdout.strip()
        if multiarch:
            cmd.append(f"-I/usr/include/{multiarch}")  # asm/ headers that linux/*.h include
    subprocess.run([*cmd, "-c", str(src), "-o", str(out)], check=True)
    return out


if __name__ == "__main__":
    print(compile_bpf(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT))
