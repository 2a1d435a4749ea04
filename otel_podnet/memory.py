"""The C allocator's handling of large blocks, set once at start.

Every collection copies a few tables of 0.1-1 MB out of the kernel (the slots' counters, the
peer rows) and keeps the previous copy to see what changed; an export or a Prometheus render
makes blocks of that size too. glibc serves a block over 128 KiB with a mapping of its own,
but raises that limit to the size of each such block freed (and lets the heap's top keep
twice that free), after which these blocks come from the heap. As the tables grew with the
highest slot in use, the heap grew with them and kept the holes: 2.2 MiB more RSS over the
first 1,500 pods of churn, then flat. With both limits fixed (``M_MMAP_THRESHOLD``,
``M_TRIM_THRESHOLD``; setting either stops glibc adjusting them), each such block is unmapped
when freed. The cost is a map and unmap per large block, a few per collection.
"""

from __future__ import annotations

import ctypes
from logging import getLogger

_logger = getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc malloc.h
M_MMAP_THRESHOLD = -3
LARGE_BLOCK = 128 * 1024  # glibc's own initial thresholds (DEFAULT_MMAP_THRESHOLD_MIN, DEFAULT_TRIM_THRESHOLD)


def unmap_large_blocks(threshold: int = LARGE_BLOCK) -> bool:
    """Have the C allocator serve blocks of ``threshold`` bytes or more with mappings of their
    own, returned to the kernel when freed, and keep no more than that free at the heap's top
    (where such a block would otherwise be cut from). What the heap has free now (imports
    leave some) is given back. False (and nothing changed) where the C library has no
    ``mallopt`` (not glibc) or refuses the values."""
    try:
        libc = ctypes.CDLL(None)
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except AttributeError:
        _logger.debug("memory: the C library has no mallopt; large blocks left to its defaults")
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    malloc_trim.argtypes = (ctypes.c_size_t,)
    malloc_trim.restype = ctypes.c_int
    for option in (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD):
        if mallopt(option, threshold) != 1:
            _logger.debug("memory: mallopt(%d, %d) refused", option, threshold)
            return False
    malloc_trim(0)
    return True
