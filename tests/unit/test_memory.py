"""The C allocator's large-block threshold (otel_podnet.memory)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

from otel_podnet import memory

GLIBC = os.confstr("CS_GNU_LIBC_VERSION") if "CS_GNU_LIBC_VERSION" in os.confstr_names else None

# A child process allocates and frees a 1 MiB block, then keeps another of 200 KiB: glibc moves
# its threshold up to the freed block's size and takes the 200 KiB from the heap, unless the
# threshold was fixed first, when the block is a mapping of its own. malloc_usable_size tells:
# a mapped chunk's header has the IS_MMAPPED bit (0x2) of its size word set.
_CHILD = """
import ctypes, sys
from otel_podnet import memory
if sys.argv[1] == "fixed":
    assert memory.unmap_large_blocks()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
big = libc.malloc(1 << 20)
libc.free(big)
block = libc.malloc(200 * 1024)
size_word = ctypes.c_size_t.from_address(block - ctypes.sizeof(ctypes.c_size_t)).value
print("mapped" if size_word & 2 else "heap")
"""


def _child(mode: str) -> str:
    out = subprocess.run([sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(GLIBC is None, reason="not glibc: mallopt's threshold is glibc's")
def test_large_blocks_stay_mapped_once_the_threshold_is_fixed() -> None:
    assert _child("default") == "heap"  # glibc's dynamic threshold, as without the agent's call
    assert _child("fixed") == "mapped"


def test_without_mallopt_nothing_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoMallopt:
        def __init__(self, name: object) -> None:
            pass

    monkeypatch.setattr(ctypes, "CDLL", NoMallopt)
    assert memory.unmap_large_blocks() is False
