"""The process's own capabilities: make the permitted ones effective.

In the container image the agent runs as a non-root user, and its interpreter carries
CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN as file capabilities, permitted but not effective
(see the Dockerfile): a file whose capabilities were all effective could not even start
in a container whose bounding set lacks one of them, while this way the kernel grants
what the container allows and ``otel-podnet check`` names the rest. The agent raises them
to effective itself, first thing. As root (or with nothing permitted) this changes
nothing.
"""

from __future__ import annotations

import ctypes
import os
from logging import getLogger

_logger = getLogger(__name__)

_LINUX_CAPABILITY_VERSION_3 = 0x20080522  # linux/capability.h: 64-bit sets, two words


class _Header(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _Data(ctypes.Structure):
    _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32))


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def raise_permitted() -> int:
    """Set the effective capabilities to the permitted ones; return the effective mask.

    Raises OSError when capget or capset fails (it does not, for a process's own sets).
    """
    libc = _libc()
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capget: {os.strerror(err)}")
    effective = int(data[0].effective) | int(data[1].effective) << 32
    permitted = int(data[0].permitted) | int(data[1].permitted) << 32
    if effective == permitted:
        return effective
    for word in data:
        word.effective = word.permitted
    if libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")
    _logger.debug("capabilities: raised %#x to effective (was %#x)", permitted, effective)
    return permitted
