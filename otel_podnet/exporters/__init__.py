"""Exporters: each takes one :class:`~otel_podnet.samples.Snapshot` per interval."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from ..inventory import PodInfo
from ..samples import Snapshot


class Exporter(Protocol):
    def export(self, snapshot: Snapshot, pods: Mapping[str, PodInfo]) -> None: ...

    def shutdown(self) -> None: ...


@dataclass
class ExportStats:
    """Shared by the exporters: failed exports, reported as the agent's own metric."""

    failures: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def failed(self) -> None:
        with self._lock:
            self.failures += 1
