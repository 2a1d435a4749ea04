"""Compiles the BPF object as part of the package build, never at agent start-up."""

import os
import platform
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
ARCH = {"x86_64": "x86", "aarch64": "arm64", "ppc64le": "powerpc", "s390x": "s390"}.get(platform.machine(), "x86")


def find_clang() -> str:
    for name in (os.environ.get("CLANG", ""), "clang-19", "clang-18", "clang-17", "clang-16", "clang"):
        if name and shutil.which(name):
            return name
    raise SystemExit("otel-podnet: clang not found; install clang-19 (apt-get install clang-19) to build the BPF object")


def compile_bpf(out: Path) -> None:
    src = HERE / "bpf" / "podnet.bpf.c"
    out.parent.mkdir(parents=True, exist_ok=True)
    multiarch = subprocess.run(["gcc", "-print-multiarch"], capture_output=True, text=True).stdout.strip() if shutil.which("gcc") else ""
    cmd = [find_clang(), "-g", "-O2", "-target", "bpf", "-mcpu=v3", f"-D__TARGET_ARCH_{ARCH}", "-Wall", "-Werror",
           f"-I{HERE / 'bpf'}"]
    if multiarch:
        cmd.append(f"-I/usr/include/{multiarch}")
    subprocess.run([*cmd, "-c", str(src), "-o", str(out)], check=True)


class BuildWithBpf(build_py):
    def run(self) -> None:
        compile_bpf(HERE / "otel_podnet" / "bpf" / "podnet.bpf.o")
        super().run()


setup(cmdclass={"build_py": BuildWithBpf})
