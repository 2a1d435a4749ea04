"""ctypes binding of the system libbpf (libbpf1): the only module that touches libbpf.

It covers what the agent needs and nothing more: open and load an object, set its
``const volatile`` globals, attach its programs through BPF links, and the map
operations. Every failure raises :class:`LibbpfError` with the errno and what was tried.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
from collections.abc import Iterator
from logging import getLogger
from typing import Any

_logger = getLogger(__name__)

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2
BPF_F_MMAPABLE = 1 << 10  # an array map user space can mmap
_BTF_KIND_DATASEC = 15
ENOTSUPP = 524  # the kernel's internal "operation not supported" (not in the errno module)
BTF_KIND_STRUCT = 4
BTF_KIND_ENUM = 6
BTF_KIND_ENUM64 = 19


class LibbpfError(OSError):
    """A libbpf call failed."""


class MapFull(LibbpfError):
    """An insert into a hash map found it full (E2BIG)."""


def _load_library() -> ctypes.CDLL:
    """The system libbpf.so.1, or exactly the copy PODNET_LIBBPF names (a path to a
    libbpf.so.1 built elsewhere, e.g. to test another libbpf release): never a silent
    fallback from it to the system's."""
    chosen = os.environ.get("PODNET_LIBBPF", "")
    if chosen:
        try:
            return ctypes.CDLL(chosen, use_errno=True)
        except OSError as exc:
            raise LibbpfError(errno.ENOENT, f"PODNET_LIBBPF={chosen}: cannot load it ({exc})") from exc
    candidates = ["libbpf.so.1", ctypes.util.find_library("bpf") or ""]
    last: OSError | None = None
    for name in candidates:
        if not name:
            continue
        try:
            return ctypes.CDLL(name, use_errno=True)
        except OSError as exc:
            last = exc
    raise LibbpfError(errno.ENOENT, f"libbpf.so.1 not found ({last}); install libbpf1 (apt-get install libbpf1)")


_lib: ctypes.CDLL | None = None
_print_cb: Any = None


def lib() -> ctypes.CDLL:
    """The loaded libbpf with prototypes declared (loaded on first use)."""
    global _lib
    if _lib is None:
        _lib = _declare(_load_library())
        _install_print()
    return _lib


def _declare(lb: ctypes.CDLL) -> ctypes.CDLL:
    vp, ci, cu32, cu64, cs = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_char_p
    protos: dict[str, tuple[Any, list[Any]]] = {
        "libbpf_major_version": (cu32, []),
        "libbpf_minor_version": (cu32, []),
        "libbpf_num_possible_cpus": (ci, []),
        "libbpf_set_print": (vp, [vp]),
        "bpf_object__open_file": (vp, [cs, vp]),
        "bpf_object__load": (ci, [vp]),
        "bpf_object__close": (None, [vp]),
        "bpf_object__btf": (vp, [vp]),
        "bpf_object__next_map": (vp, [vp, vp]),
        "bpf_object__find_program_by_name": (vp, [vp, cs]),
        "bpf_object__find_map_by_name": (vp, [vp, cs]),
        "bpf_map__name": (cs, [vp]),
        "bpf_map__fd": (ci, [vp]),
        "bpf_map__key_size": (cu32, [vp]),
        "bpf_map__value_size": (cu32, [vp]),
        "bpf_map__max_entries": (cu32, [vp]),
        "bpf_map__set_max_entries": (ci, [vp, cu32]),
        "bpf_map__map_flags": (cu32, [vp]),
        "bpf_map__set_map_flags": (ci, [vp, cu32]),
        "bpf_map__initial_value": (vp, [vp, ctypes.POINTER(ctypes.c_size_t)]),
        "bpf_program__fd": (ci, [vp]),
        "bpf_program__attach": (vp, [vp]),
        "bpf_program__attach_cgroup": (vp, [vp, ci]),
        "bpf_program__set_autoload": (ci, [vp, ctypes.c_bool]),
        "bpf_link__destroy": (ci, [vp]),
        "btf__find_by_name_kind": (ctypes.c_int32, [vp, cs, cu32]),
        "btf__load_vmlinux_btf": (vp, []),
        "btf__free": (None, [vp]),
        "btf__type_by_id": (vp, [vp, cu32]),
        "btf__name_by_offset": (cs, [vp, cu32]),
        "bpf_map_lookup_elem": (ci, [ci, vp, vp]),
        "bpf_map_update_elem": (ci, [ci, vp, vp, cu64]),
        "bpf_map_delete_elem": (ci, [ci, vp]),
        "bpf_map_lookup_and_delete_elem": (ci, [ci, vp, vp]),
        "bpf_map_get_next_key": (ci, [ci, vp, vp]),
        "bpf_map_lookup_batch": (ci, [ci, vp, vp, vp, vp, ctypes.POINTER(cu32), vp]),
        "bpf_prog_test_run_opts": (ci, [ci, vp]),
        "libbpf_probe_bpf_prog_type": (ci, [ci, vp]),
        "libbpf_probe_bpf_helper": (ci, [ci, ci, vp]),
    }
    for name, (res, args) in protos.items():
        fn = getattr(lb, name)
        fn.restype = res
        fn.argtypes = args
    return lb


_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


def _install_print() -> None:
    """Route libbpf's messages (verifier log included) to our logger."""
    global _print_cb
    libc = ctypes.CDLL(None)
    vsnprintf = libc.vsnprintf
    vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]

    def _cb(level: int, fmt: bytes, args: int) -> int:
        buf = ctypes.create_string_buffer(4096)
        vsnprintf(buf, len(buf), fmt, args)
        text = buf.value.decode(errors="replace").rstrip()
        if level == 0:  # LIBBPF_WARN
            _logger.warning("libbpf: %s", text)
        else:
            _logger.debug("libbpf: %s", text)
        return 0

    _print_cb = _PRINT_FN(_cb)
    assert _lib is not None
    _lib.libbpf_set_print(ctypes.cast(_print_cb, ctypes.c_void_p))


def version() -> str:
    lb = lib()
    return f"{lb.libbpf_major_version()}.{lb.libbpf_minor_version()}"


def num_possible_cpus() -> int:
    n = int(lib().libbpf_num_possible_cpus())
    if n <= 0:
        raise LibbpfError(-n, "libbpf_num_possible_cpus failed")
    return n


BPF_PROG_TYPE_SYSCALL = 31  # enum bpf_prog_type
BPF_FUNC_loop = 181  # enum bpf_func_id
BPF_FUNC_map_lookup_percpu_elem = 195


def kernel_has_helper(prog_type: int, helper: int) -> bool:
    """Whether the running kernel lets programs of ``prog_type`` call ``helper``: libbpf
    loads a two-instruction program of that type calling it and reads the verifier's
    answer. A program type the kernel does not know is no (libbpf would guess yes: its
    helper probe reads only the verifier's complaint about the helper, and a kernel without
    the type refuses the program before the verifier runs)."""
    lb = lib()
    if lb.libbpf_probe_bpf_prog_type(prog_type, None) != 1:
        return False
    return bool(lb.libbpf_probe_bpf_helper(prog_type, helper, None) == 1)


def kernel_btf_has_type(name: str, kinds: tuple[int, ...]) -> bool:
    """Whether the running kernel's BTF (/sys/kernel/btf/vmlinux) has a type of this name
    and one of these kinds: the user-space side of bpf_core_type_exists()."""
    lb = lib()
    btf = _check_ptr(lb.btf__load_vmlinux_btf(), "loading the kernel's BTF")
    try:
        return any(lb.btf__find_by_name_kind(btf, name.encode(), kind) > 0 for kind in kinds)
    finally:
        lb.btf__free(btf)


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = ctypes.get_errno() or -rc
        raise LibbpfError(err, f"{what}: {os.strerror(err)}")
    return rc


def _check_ptr(ptr: int | None, what: str) -> int:
    if not ptr:
        err = ctypes.get_errno() or errno.EINVAL
        raise LibbpfError(err, f"{what}: {os.strerror(err)}")
    return ptr


class Map:
    """A BPF map of a loaded object, used through its fd."""

    def __init__(self, name: str, fd: int, key_size: int, value_size: int) -> None:
        self.name = name
        self.fd = fd
        self.key_size = key_size
        self.value_size = value_size

    def lookup(self, key: Any, value: Any) -> bool:
        """Fill ``value`` (a ctypes object) for ``key``; False when absent."""
        rc = lib().bpf_map_lookup_elem(self.fd, _ref(key), ctypes.byref(value))
        if rc < 0:
            err = ctypes.get_errno()
            if err == errno.ENOENT:
                return False
            raise LibbpfError(err, f"lookup in {self.name}: {os.strerror(err)}")
        return True

    def update(self, key: Any, value: Any, flags: int = BPF_ANY) -> None:
        rc = lib().bpf_map_update_elem(self.fd, _ref(key), ctypes.byref(value), flags)
        if rc < 0 and (ctypes.get_errno() or -rc) == errno.E2BIG:
            raise MapFull(errno.E2BIG, f"update of {self.name}: the map is full")
        _check(rc, f"update of {self.name}")

    def read_array(self, values: Any, entries: int, value_bytes: int, first: int = 0) -> None:
        """Elements ``first`` to ``first + entries - 1`` of an array map into ``values``
        (``entries`` x ``value_bytes`` bytes; per-CPU maps: every CPU's row of an element
        in turn), with batch lookups: one system call where the kernel allows, one lookup
        per element where it has none."""
        if ctypes.sizeof(values) < entries * value_bytes:
            raise ValueError(f"{entries} x {value_bytes} bytes of {self.name} do not fit {ctypes.sizeof(values)}")
        keys = (ctypes.c_uint32 * entries)()
        # a batch starts after the key in its first argument (none: at the first key)
        token = ctypes.c_uint32(first - 1)
        count = ctypes.c_uint32()
        done = 0
        while done < entries:
            count.value = entries - done
            rc = lib().bpf_map_lookup_batch(
                self.fd,
                None if done == 0 and first == 0 else ctypes.byref(token),
                ctypes.byref(token),
                ctypes.byref(keys, done * 4),
                ctypes.byref(values, done * value_bytes),
                ctypes.byref(count),
                None,
            )
            err = ctypes.get_errno() if rc < 0 else 0
            if rc < 0 and err != errno.ENOENT:
                if done == 0 and err in (errno.EINVAL, ENOTSUPP):
                    break
                raise LibbpfError(err, f"batch lookup in {self.name}: {os.strerror(err)}")
            done += count.value
            if rc < 0 or count.value == 0:  # ENOENT: that was the last batch
                return
        for i in range(done, entries):  # no batch lookups (before Linux 5.6)
            key = ctypes.c_uint32(first + i)
            ptr = ctypes.cast(ctypes.byref(values, i * value_bytes), ctypes.c_void_p)
            _check(lib().bpf_map_lookup_elem(self.fd, ctypes.byref(key), ptr), f"lookup in {self.name}")

    def mmap(self, entries: int) -> mmap.mmap:
        """The first ``entries`` elements of an array map loaded with BPF_F_MMAPABLE, mapped
        read-only: a slice of it is a copy of those bytes, read without a system call.
        (Elements of an array are ``value_size`` rounded up to 8 bytes apart.)"""
        size = entries * ((self.value_size + 7) // 8 * 8)
        return mmap.mmap(self.fd, -(-size // mmap.PAGESIZE) * mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ)

    def delete(self, key: Any) -> bool:
        rc = lib().bpf_map_delete_elem(self.fd, _ref(key))
        if rc < 0:
            err = ctypes.get_errno()
            if err == errno.ENOENT:
                return False
            raise LibbpfError(err, f"delete from {self.name}: {os.strerror(err)}")
        return True

    def push(self, value: Any) -> None:
        """Push onto a queue map."""
        _check(lib().bpf_map_update_elem(self.fd, None, ctypes.byref(value), BPF_ANY), f"push onto {self.name}")

    def pop(self, value: Any) -> bool:
        """Pop from a queue map; False when empty."""
        rc = lib().bpf_map_lookup_and_delete_elem(self.fd, None, ctypes.byref(value))
        if rc < 0:
            err = ctypes.get_errno()
            if err == errno.ENOENT:
                return False
            raise LibbpfError(err, f"pop from {self.name}: {os.strerror(err)}")
        return True

    def items(self, key_type: type[Any], value_type: type[Any], batch: int = 512) -> Iterator[tuple[Any, Any]]:
        """Every (key, value) pair as ctypes objects (plain integers for simple types), from
        :meth:`dump`."""
        keys, values = self.dump(batch)
        ks, vs = self.key_size, self.value_size
        for i in range(len(keys) // ks):
            yield _element(key_type, keys, i * ks), _element(value_type, values, i * vs)

    def dump(self, batch: int = 512) -> tuple[bytes, bytes]:
        """Every key and every value, each side concatenated (``key_size`` and ``value_size``
        bytes apiece, in the same order): by batch lookups where the kernel has them, one
        lookup per key where it has none. The caller unpacks them in C (``iter_unpack``),
        not field by field through ctypes (issue 10)."""
        ks, vs = self.key_size, self.value_size
        keys = ctypes.create_string_buffer(batch * ks)
        values = ctypes.create_string_buffer(batch * vs)
        token = ctypes.create_string_buffer(max(8, ks))
        count = ctypes.c_uint32()
        got_keys: list[bytes] = []
        got_values: list[bytes] = []
        first = True
        while True:
            count.value = batch
            rc = lib().bpf_map_lookup_batch(
                self.fd, None if first else token, token, keys, values, ctypes.byref(count), None
            )
            err = ctypes.get_errno() if rc < 0 else 0
            if rc < 0 and err not in (errno.ENOENT,):
                if err in (errno.EINVAL, ENOTSUPP) and first:
                    return self._dump_slow()
                raise LibbpfError(err, f"batch lookup in {self.name}: {os.strerror(err)}")
            got_keys.append(ctypes.string_at(keys, count.value * ks))
            got_values.append(ctypes.string_at(values, count.value * vs))
            if rc < 0:  # ENOENT: that was the last batch
                return b"".join(got_keys), b"".join(got_values)
            first = False

    def _dump_slow(self) -> tuple[bytes, bytes]:
        key = ctypes.create_string_buffer(self.key_size)
        nxt = ctypes.create_string_buffer(self.key_size)
        value = ctypes.create_string_buffer(self.value_size)
        got_keys: list[bytes] = []
        got_values: list[bytes] = []
        rc = lib().bpf_map_get_next_key(self.fd, None, nxt)
        while rc == 0:
            if self.lookup(nxt, value):
                got_keys.append(nxt.raw)
                got_values.append(value.raw)
            ctypes.memmove(key, nxt, self.key_size)
            rc = lib().bpf_map_get_next_key(self.fd, key, nxt)
        return b"".join(got_keys), b"".join(got_values)


def _element(ctype: type[Any], buf: bytes, offset: int) -> Any:
    v = ctype.from_buffer_copy(buf, offset)
    return v.value if isinstance(v, ctypes._SimpleCData) else v


def _ref(key: Any) -> Any:
    return None if key is None else ctypes.byref(key)


class Link:
    """A BPF link: destroying it (or the process dying) detaches the program."""

    def __init__(self, ptr: int, what: str) -> None:
        self._ptr: int | None = ptr
        self.what = what

    def destroy(self) -> None:
        if self._ptr:
            lib().bpf_link__destroy(self._ptr)
            self._ptr = None


class BpfObject:
    """An opened (then loaded) BPF object file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._obj: int | None = _check_ptr(lib().bpf_object__open_file(path.encode(), None), f"opening {path}")
        self._links: list[Link] = []
        self.loaded = False

    def _o(self) -> int:
        if not self._obj:
            raise LibbpfError(errno.EBADF, "BPF object already closed")
        return self._obj

    def _map_ptr(self, name: str) -> int:
        return _check_ptr(lib().bpf_object__find_map_by_name(self._o(), name.encode()), f"map {name} in {self.path}")

    def _internal_map(self, suffix: str) -> int:
        m = lib().bpf_object__next_map(self._o(), None)
        while m:
            if (lib().bpf_map__name(m) or b"").decode().endswith(suffix):
                return int(m)
            m = lib().bpf_object__next_map(self._o(), m)
        raise LibbpfError(errno.ENOENT, f"no {suffix} section in {self.path}")

    def maps(self) -> list[str]:
        """The names of every map in the object (internal ones end in .bss, .rodata, ...)."""
        out = []
        m = lib().bpf_object__next_map(self._o(), None)
        while m:
            out.append((lib().bpf_map__name(m) or b"").decode())
            m = lib().bpf_object__next_map(self._o(), m)
        return out

    def _any_map(self, name: str) -> int:
        return self._internal_map(name) if name.startswith(".") else self._map_ptr(name)

    def map_layout(self, name: str) -> tuple[int, int, int]:
        """(key size, value size, max entries) of a map as the object defines it; internal
        maps (``.bss``, ``.rodata``) by their section name."""
        lb, m = lib(), self._any_map(name)
        return int(lb.bpf_map__key_size(m)), int(lb.bpf_map__value_size(m)), int(lb.bpf_map__max_entries(m))

    def set_max_entries(self, name: str, entries: int) -> None:
        """Resize a map before load."""
        if self.loaded:
            raise LibbpfError(errno.EBUSY, "maps can only be resized before load")
        _check(lib().bpf_map__set_max_entries(self._map_ptr(name), entries), f"resizing {name} to {entries}")

    def add_map_flags(self, name: str, flags: int) -> None:
        """Add flags (``BPF_F_*``) to a map's before load."""
        if self.loaded:
            raise LibbpfError(errno.EBUSY, "map flags can only be set before load")
        m = self._map_ptr(name)
        _check(lib().bpf_map__set_map_flags(m, lib().bpf_map__map_flags(m) | flags), f"flags of {name}")

    def section_var_offset(self, section: str, var: str) -> tuple[int, int]:
        """(offset, size) of a global variable in a data section, from the object's BTF."""
        lb = lib()
        btf = _check_ptr(lb.bpf_object__btf(self._o()), f"BTF of {self.path}")
        sec_id = lb.btf__find_by_name_kind(btf, section.encode(), _BTF_KIND_DATASEC)
        if sec_id < 0:
            raise LibbpfError(errno.ENOENT, f"no BTF section {section} in {self.path}")
        t = lb.btf__type_by_id(btf, sec_id)
        header = (ctypes.c_uint32 * 3).from_address(t)  # name_off, info, size
        vlen = header[1] & 0xFFFF
        infos = (ctypes.c_uint32 * (3 * vlen)).from_address(t + 12)  # type, offset, size
        for i in range(vlen):
            vt = lb.btf__type_by_id(btf, infos[3 * i])
            name = lb.btf__name_by_offset(btf, (ctypes.c_uint32 * 1).from_address(vt)[0])
            if name == var.encode():
                return int(infos[3 * i + 1]), int(infos[3 * i + 2])
        raise LibbpfError(errno.ENOENT, f"no variable {var} in {section} of {self.path}")

    def struct_size(self, name: str) -> int:
        """The size of a struct in the object's BTF."""
        lb = lib()
        btf = _check_ptr(lb.bpf_object__btf(self._o()), f"BTF of {self.path}")
        type_id = lb.btf__find_by_name_kind(btf, name.encode(), BTF_KIND_STRUCT)
        if type_id < 0:
            raise LibbpfError(errno.ENOENT, f"no struct {name} in the BTF of {self.path}")
        return int((ctypes.c_uint32 * 3).from_address(lb.btf__type_by_id(btf, type_id))[2])  # name_off, info, size

    def set_rodata(self, var: str, value: Any) -> None:
        """Set a ``const volatile`` global before load."""
        if self.loaded:
            raise LibbpfError(errno.EBUSY, "rodata can only be set before load")
        offset, size = self.section_var_offset(".rodata", var)
        if size != ctypes.sizeof(value):
            raise LibbpfError(errno.EINVAL, f"{var} is {size} bytes in the object, {ctypes.sizeof(value)} given")
        psize = ctypes.c_size_t()
        base = _check_ptr(lib().bpf_map__initial_value(self._internal_map(".rodata"), ctypes.byref(psize)), "rodata")
        ctypes.memmove(base + offset, ctypes.byref(value), size)

    def load(self) -> None:
        _check(lib().bpf_object__load(self._o()), f"loading {self.path} (the verifier log, if any, is above)")
        self.loaded = True

    def map(self, name: str) -> Map:
        """A loaded map by name (internal ones by section: ``.bss``), with the sizes the
        object gives it."""
        key_size, value_size, _ = self.map_layout(name)
        fd = _check(lib().bpf_map__fd(self._any_map(name)), f"fd of map {name}")
        return Map(name, fd, key_size, value_size)

    def _prog(self, name: str) -> int:
        return _check_ptr(lib().bpf_object__find_program_by_name(self._o(), name.encode()), f"program {name}")

    def prog_fd(self, name: str) -> int:
        return _check(lib().bpf_program__fd(self._prog(name)), f"fd of program {name}")

    def set_autoload(self, name: str, autoload: bool) -> None:
        """Whether a program is loaded with the object (before load): one left out is
        never verified, so the object loads on a kernel that lacks what it needs."""
        if self.loaded:
            raise LibbpfError(errno.EBUSY, "autoload can only be set before load")
        _check(lib().bpf_program__set_autoload(self._prog(name), autoload), f"autoload of {name}")

    def attach(self, name: str) -> Link:
        """Attach a program by the kind its section names (tp_btf/... here)."""
        link = Link(_check_ptr(lib().bpf_program__attach(self._prog(name)), f"attaching {name}"), name)
        self._links.append(link)
        return link

    def attach_cgroup(self, name: str, cgroup_path: str) -> Link:
        fd = os.open(cgroup_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            ptr = lib().bpf_program__attach_cgroup(self._prog(name), fd)
            link = Link(_check_ptr(ptr, f"attaching {name} to the cgroup {cgroup_path}"), name)
        finally:
            os.close(fd)
        self._links.append(link)
        return link

    def close(self) -> None:
        """Detach every program and free the object (maps and programs go with it)."""
        for link in reversed(self._links):
            link.destroy()
        self._links.clear()
        if self._obj:
            lib().bpf_object__close(self._obj)
            self._obj = None


class ProgTestRunOpts(ctypes.Structure):
    """struct bpf_test_run_opts (libbpf 1.x layout)."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


# offsetof(struct __sk_buff, ifindex): the last field of the context prog_test_run sets
_SKB_CTX_IFINDEX = 40


def prog_test_run(prog_fd: int, data: bytes, repeat: int = 1, ifindex: int = 0) -> int:
    """BPF_PROG_TEST_RUN with a packet; returns the program's return value. The kernel
    hands the packet in on ``ifindex`` (a device of this network namespace), else on lo."""
    buf = ctypes.create_string_buffer(data, len(data))
    out = ctypes.create_string_buffer(len(data) + 256)
    opts = ProgTestRunOpts(sz=ctypes.sizeof(ProgTestRunOpts))
    if ifindex:
        ctx = ctypes.create_string_buffer(_SKB_CTX_IFINDEX + 4)  # zeroed: the other fields unset
        ctypes.c_uint32.from_buffer(ctx, _SKB_CTX_IFINDEX).value = ifindex
        opts.ctx_in = ctypes.cast(ctx, ctypes.c_void_p)
        opts.ctx_size_in = len(ctx)
    opts.data_in = ctypes.cast(buf, ctypes.c_void_p)
    opts.data_size_in = len(data)
    opts.data_out = ctypes.cast(out, ctypes.c_void_p)
    opts.data_size_out = len(out)
    opts.repeat = repeat
    _check(lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "BPF_PROG_TEST_RUN")
    return int(opts.retval)


def prog_run_ctx(prog_fd: int, ctx: Any) -> int:
    """BPF_PROG_TEST_RUN of a program that takes no packet (BPF_PROG_TYPE_SYSCALL), once,
    with ``ctx`` (a ctypes object) as its context; returns the program's return value."""
    opts = ProgTestRunOpts(sz=ctypes.sizeof(ProgTestRunOpts))
    opts.ctx_in = ctypes.cast(ctypes.byref(ctx), ctypes.c_void_p)
    opts.ctx_size_in = ctypes.sizeof(ctx)
    _check(lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "BPF_PROG_TEST_RUN")
    return int(ctypes.c_int32(opts.retval).value)
