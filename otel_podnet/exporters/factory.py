"""Exporters by name (``--exporter`` / ``OTEL_METRICS_EXPORTER``)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..resources import env_attributes
from ..settings import Settings
from . import Exporter, ExportStats
from .console import ConsoleExporter
from .otlp_env import check_env


class Exporters:
    """The exporters of ``settings.exporters``, in that order, built in two steps (issue 10).

    The constructor checks every exporter's configuration (ConfigError) and builds those
    that import little: console, and Prometheus, whose port is bound here. :meth:`finish`
    builds the OTLP exporter, whose imports (the OpenTelemetry SDK, protobuf, gRPC: ~17 MiB)
    ``otel-podnet run`` leaves until the BPF object is loaded, so that libbpf's transient
    copy of the kernel's BTF does not come on top of them."""

    def __init__(self, settings: Settings, env: Mapping[str, str] | None = None) -> None:
        self._env = os.environ if env is None else env
        self._node = settings.node_name
        self._interval = settings.interval
        self._stats = ExportStats()
        self._built: list[Exporter | None] = []  # None: the OTLP exporter, built by finish()
        try:
            for name in settings.exporters:
                if name == "console":
                    self._built.append(ConsoleExporter())
                elif name == "otlp":
                    check_env(self._env)
                    env_attributes(self._env)
                    self._built.append(None)
                elif name == "prometheus":
                    from .prometheus import PrometheusExporter

                    self._built.append(
                        PrometheusExporter(settings.node_name, self._stats, settings.prometheus_address, self._env)
                    )
        except BaseException:
            self.shutdown()
            raise

    def finish(self) -> list[Exporter]:
        """Every exporter; on a failure the ones already built are shut down."""
        try:
            if None in self._built:
                from .otlp import OtlpExporter

                self._built = [
                    OtlpExporter(self._node, self._stats, self._env, interval=self._interval) if e is None else e
                    for e in self._built
                ]
        except BaseException:
            self.shutdown()
            raise
        return [e for e in self._built if e is not None]

    def shutdown(self) -> None:
        for e in self._built:
            if e is not None:
                e.shutdown()
