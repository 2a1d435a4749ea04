"""Compiles the BPF object as part of the package build, never at agent start-up."""

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def _bpf_build():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("podnet_bpf_build", HERE / "bpf" / "build.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class BuildWithBpf(build_py):
    def run(self) -> None:
        _bpf_build().compile_bpf()
        super().run()


setup(cmdclass={"build_py": BuildWithBpf})
