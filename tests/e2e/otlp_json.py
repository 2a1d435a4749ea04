"""Reading what the Collector's file exporter wrote: OTLP JSON, one request per line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

Point = tuple[str, tuple[tuple[str, str], ...]]  # (metric name, sorted point attributes)


def _value(v: dict[str, Any]) -> Any:
    for k in ("stringValue", "intValue", "doubleValue", "boolValue"):
        if k in v:
            return int(v[k]) if k == "intValue" else v[k]
    return None


def attrs(items: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {a["key"]: _value(a["value"]) for a in items or []}


def requests(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    # Only whole lines: the Collector may be writing the last one right now (a busy machine
    # makes that window long enough to be read).
    text = path.read_text()
    whole = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in whole.splitlines() if line.strip()]


def resource_points(rm: dict[str, Any]) -> dict[Point, float]:
    """Every data point of one ResourceMetrics: (metric, attributes) -> value."""
    out: dict[Point, float] = {}
    for sm in rm.get("scopeMetrics", []):
        for m in sm.get("metrics", []):
            data = m.get("sum") or m.get("gauge") or {}
            for dp in data.get("dataPoints", []):
                key = (m["name"], tuple(sorted((k, str(v)) for k, v in attrs(dp.get("attributes")).items())))
                out[key] = float(dp["asInt"]) if "asInt" in dp else float(dp.get("asDouble", 0))
    return out


def by_pod(request: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[Point, float]]]:
    for rm in request.get("resourceMetrics", []):
        yield attrs(rm.get("resource", {}).get("attributes")), resource_points(rm)


def temporality(request: dict[str, Any], metric: str) -> int | None:
    for rm in request.get("resourceMetrics", []):
        for sm in rm.get("scopeMetrics", []):
            for m in sm.get("metrics", []):
                if m["name"] == metric and "sum" in m:
                    return int(m["sum"].get("aggregationTemporality", 0))
    return None
