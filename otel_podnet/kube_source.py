"""Placeholder seam for the Kubernetes API pod source (see otel_podnet.kube)."""

from __future__ import annotations

from .inventory import PodSource
from .settings import Settings


def maybe_api_source(settings: Settings) -> PodSource | None:
    """The API source when a Kubernetes config is available, else None (host mode)."""
    return None
