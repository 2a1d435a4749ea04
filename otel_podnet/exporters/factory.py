"""Exporters by name (``--exporter`` / ``OTEL_METRICS_EXPORTER``)."""

from __future__ import annotations

from ..settings import ConfigError, Settings
from . import Exporter
from .console import ConsoleExporter


def build_exporters(settings: Settings) -> list[Exporter]:
    out: list[Exporter] = []
    for name in settings.exporters:
        if name == "console":
            out.append(ConsoleExporter())
        else:
            raise ConfigError(f"--exporter {name!r}: not available in this build; expected console or none")
    return out
