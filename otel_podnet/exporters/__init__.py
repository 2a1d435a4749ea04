"""Exporters: each takes one :class:`~otel_podnet.samples.Snapshot` per interval."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from ..inventory import PodInfo
from ..samples import Snapshot


class Exporter(Protocol):
    def export(self, snapshot: Snapshot, pods: Mapping[str, PodInfo]) -> None: ...

    def shutdown(self) -> None: ...
