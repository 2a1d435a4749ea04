"""otel_podnet.caps: permitted capabilities become effective, as in the image (non-root,
file capabilities permitted only). Each case runs in a child process, whose sets it
changes."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _sets(status: str) -> tuple[int, int]:
    eff = int(re.search(r"^CapEff:\s*([0-9a-f]+)", status, re.M).group(1), 16)  # type: ignore[union-attr]
    prm = int(re.search(r"^CapPrm:\s*([0-9a-f]+)", status, re.M).group(1), 16)  # type: ignore[union-attr]
    return eff, prm


def _child(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout


def test_lowered_effective_set_is_raised_back_to_the_permitted_one() -> None:
    """The child clears its effective set (as an exec of a file with permitted-only
    capabilities leaves it), then raise_permitted() restores every permitted one."""
    out = _child(
        """
        import ctypes
        from otel_podnet import caps
        libc = ctypes.CDLL(None, use_errno=True)
        hdr = caps._Header(caps._LINUX_CAPABILITY_VERSION_3, 0)
        data = (caps._Data * 2)()
        assert libc.capget(ctypes.byref(hdr), data) == 0
        for w in data:
            w.effective = 0
        assert libc.capset(ctypes.byref(hdr), data) == 0
        before = open("/proc/self/status").read()
        returned = caps.raise_permitted()
        after = open("/proc/self/status").read()
        print(before + "\\n--\\n" + after + "\\n--\\n" + str(returned))
        """
    )
    before, after, returned = out.split("\n--\n")
    eff0, prm0 = _sets(before)
    eff1, prm1 = _sets(after)
    assert eff0 == 0
    assert prm1 == prm0
    assert eff1 == prm0
    assert int(returned) == prm0


def test_nothing_changes_when_effective_is_already_permitted() -> None:
    out = _child(
        """
        from otel_podnet import caps
        before = open("/proc/self/status").read()
        returned = caps.raise_permitted()
        after = open("/proc/self/status").read()
        print(before + "\\n--\\n" + after + "\\n--\\n" + str(returned))
        """
    )
    before, after, returned = out.split("\n--\n")
    assert _sets(before) == _sets(after)
    assert int(returned) == _sets(after)[0]
