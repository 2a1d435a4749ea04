"""Exporters by name (``--exporter`` / ``OTEL_METRICS_EXPORTER``)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..settings import Settings
from . import Exporter, ExportStats
from .console import ConsoleExporter


def build_exporters(settings: Settings, env: Mapping[str, str] | None = None) -> list[Exporter]:
    env = os.environ if env is None else env
    stats = ExportStats()
    out: list[Exporter] = []
    for name in settings.exporters:
        if name == "console":
            out.append(ConsoleExporter())
        elif name == "otlp":
            from .otlp import OtlpExporter

            out.append(OtlpExporter(settings.node_name, stats, env))
        elif name == "prometheus":
            from .prometheus import PrometheusExporter

            out.append(PrometheusExporter(settings.node_name, stats, settings.prometheus_address, env))
    return out
