"""otel_podnet.rows: a table's rows decoded again only where their bytes changed; and a
kernel row of counters decoded (Counters.from_row)."""

from __future__ import annotations

import struct

import pytest

from otel_podnet import abi
from otel_podnet.rows import BLOCK, RowCache
from otel_podnet.samples import ZERO, Counters

ROW = struct.Struct("<2Q")


def table(rows: list[tuple[int, int]]) -> bytes:
    return b"".join(ROW.pack(*r) for r in rows)


class Decoder:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, raw: bytes) -> tuple[int, ...]:
        self.calls += 1
        return ROW.unpack(raw)


def test_unchanged_rows_are_the_same_objects_and_changed_ones_are_seen() -> None:
    n = 3 * BLOCK + 5  # whole blocks and a partial one
    rows = [(i, 0) for i in range(n)]
    cache: RowCache[tuple[int, ...]] = RowCache()
    dec = Decoder()
    first = cache.decode(table(rows), ROW.size, dec)
    assert first == rows and dec.calls == n

    again = cache.decode(table(rows), ROW.size, dec)
    assert again == rows and dec.calls == n  # nothing decoded again
    assert all(a is b for a, b in zip(again, first, strict=True))

    # one row in a block and the last row change after being cached: both are seen, the
    # other rows of their blocks are still the objects decoded first
    rows[BLOCK + 3] = (BLOCK + 3, 7)
    rows[-1] = (n - 1, 9)
    changed = cache.decode(table(rows), ROW.size, dec)
    assert changed == rows and dec.calls == n + 2
    assert all(changed[i] is first[i] for i in range(n) if i not in (BLOCK + 3, n - 1))

    # back to what they were first: decoded again (compared with the last read, not the first)
    rows[BLOCK + 3] = (BLOCK + 3, 0)
    assert cache.decode(table(rows), ROW.size, dec) == rows and dec.calls == n + 3


def test_a_longer_or_shorter_table() -> None:
    rows = [(i, i) for i in range(BLOCK + 2)]
    cache: RowCache[tuple[int, ...]] = RowCache()
    dec = Decoder()
    cache.decode(table(rows[:3]), ROW.size, dec)
    assert cache.decode(table(rows), ROW.size, dec) == rows and dec.calls == 3 + len(rows) - 3
    rows[1] = (1, 5)
    assert cache.decode(table(rows[:2]), ROW.size, dec) == rows[:2]
    assert cache.decode(table(rows), ROW.size, dec) == rows
    with pytest.raises(ValueError):
        cache.decode(b"\x00" * (ROW.size + 1), ROW.size, dec)


def test_counters_from_a_kernel_row() -> None:
    words = len(abi.PodnetCounters())
    values = tuple(range(1, words + 1))
    raw = struct.pack(f"<{words}Q", *values)
    c = Counters.from_row(raw)
    assert c == Counters.from_values(values) and c.values() == values
    assert c.opened_out == values[abi.COUNTER_FIELDS.index("opened_out")]
    assert c.connect_out.buckets == values[len(abi.COUNTER_FIELDS) : len(abi.COUNTER_FIELDS) + abi.HIST_BUCKETS]
    assert Counters.from_row(bytes(len(raw))) == ZERO


def test_rows_of_another_size_are_all_decoded() -> None:
    """The same bytes read as rows of another size (per-CPU rows instead of sums): nothing
    of the last call is reused, its rows are other rows."""
    cache: RowCache[bytes] = RowCache()
    raw = bytes(range(64))
    assert cache.decode(raw, 8, bytes) == [raw[i : i + 8] for i in range(0, 64, 8)]
    assert cache.decode(raw, 16, bytes) == [raw[i : i + 16] for i in range(0, 64, 16)]
