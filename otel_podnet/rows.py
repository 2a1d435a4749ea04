"""Kernel tables read as bytes and decoded into Python objects only where they changed
(issue 10: most rows are the same from one collection to the next, or zeros)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

BLOCK = 32  # rows compared at once: an unchanged block costs one memcmp, not a step per row


class RowCache(Generic[T]):
    """A table's rows as decoded at the last read, and the bytes they were decoded from."""

    def __init__(self) -> None:
        self._table = b""
        self._span = 0
        self._rows: list[T] = []

    def decode(self, table: bytes, span: int, decode: Callable[[bytes], T]) -> list[T]:
        """Every row of ``table`` (``span`` bytes each) decoded by ``decode``, but a row
        whose bytes are those of the same row at the last call is the very object of that
        call (with rows of the same size), not decoded again. Blocks of BLOCK rows are compared whole first, and
        compared as ``bytes``: a ``memoryview`` compares element by element, ten times
        slower than the ``memcmp`` of bytes."""
        if len(table) % span:
            raise ValueError(f"a table of {len(table)} bytes is no whole number of {span}-byte rows")
        old, old_rows = (self._table, self._rows) if span == self._span else (b"", [])
        out: list[T] = []
        step = BLOCK * span
        for first in range(0, len(table), step):
            end = first + step
            if table[first:end] == old[first:end]:
                out += old_rows[first // span : end // span]
                continue
            for base in range(first, min(end, len(table)), span):
                raw = table[base : base + span]
                out.append(old_rows[base // span] if raw == old[base : base + span] else decode(raw))
        self._table, self._span, self._rows = table, span, out
        return out
