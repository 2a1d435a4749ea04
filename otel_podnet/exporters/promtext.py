"""The Prometheus exposition of a snapshot, as text: the one module that formats it (issue 10).

One series per pod and attribute set: the Resource attributes become labels
(``k8s_pod_name``, ``k8s_namespace_name``, ...) next to the point attributes, and names are
converted as the OpenTelemetry-to-Prometheus rules do (unit suffix, ``_total`` for monotonic
sums, classic histograms). The output is what prometheus_client's ``generate_latest`` (the
classic text format) and its OpenMetrics ``generate_latest`` write for the same families,
byte for byte (tests/unit/test_promtext.py): labels sorted by name, values as Go prints
floats, label values and HELP escaped alike, for each name escaping a scraper can ask for.

Cost: the label string of every series (``name{labels} ``) is made once and kept while its
Resource's attributes do not change; a snapshot then costs one value formatted per sample
and the joins. The sample lines are the same in both formats; only each family's HELP/TYPE
lines and OpenMetrics' ``# EOF`` differ.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import accumulate
from typing import Literal

from ..inventory import PodInfo
from ..resources import node_attributes, pod_attributes
from ..samples import Snapshot
from ..series import (
    HEALTH_METRICS,
    HIST_BOUNDS_S,
    HISTOGRAM_METRICS,
    PEER_METRICS,
    PEER_POINTS,
    POD_HISTOGRAMS,
    POD_METRICS,
    POD_SERIES,
    Attrs,
    MetricDef,
    health_series,
    pod_values,
)

Escaping = Literal["underscores", "allow-utf-8", "dots", "values"]
ESCAPINGS: tuple[Escaping, ...] = ("underscores", "allow-utf-8", "dots", "values")

_UNITS = {"By": "bytes", "s": "seconds"}
_INVALID = re.compile(r"[^a-zA-Z0-9_]")
_LEGACY_METRIC = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LEGACY_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def prom_name(d: MetricDef) -> str:
    """The family name: dots to underscores, the unit as a suffix (annotations such as
    ``{connection}`` are dropped); counters' samples add ``_total``."""
    base = _INVALID.sub("_", d.name)
    unit = _UNITS.get(d.unit, "")
    return f"{base}_{unit}" if unit else base


@functools.lru_cache(maxsize=4096)  # attribute keys: a few dozen
def label_name(key: str) -> str:
    """An attribute key as a label name (what the exporter puts in the sample's labels)."""
    return _INVALID.sub("_", key)


# -- values and escaping ---------------------------------------------------------------------

_EXACT = 2**53  # ints below this are exact as floats: their repr is the digits and ".0"


def go_float(v: float) -> str:
    """A sample value as Prometheus' client writes it: Python's shortest repr of the float,
    but positive values with more than 6 integer digits in exponent form (``1.5e+06``), as
    Go does; ``+Inf``, ``-Inf``, ``NaN``. Counters are ints: formatted without a float."""
    if type(v) is int and -_EXACT < v < _EXACT:
        if v < 1_000_000:
            return f"{v}.0"
        digits = str(v)
        mantissa = f"{digits[0]}.{digits[1:]}".rstrip("0").rstrip(".")
        return f"{mantissa}e+{len(digits) - 1:02d}"
    f = float(v)
    if f != f:
        return "NaN"
    if f in (float("inf"), float("-inf")):
        return "+Inf" if f > 0 else "-Inf"
    text = repr(f)
    dot = text.find(".")
    if f > 0 and dot > 6:  # a plain repr (no exponent) with 7 or more integer digits
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0").rstrip(".")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def escape_value(s: str) -> str:
    """A label value (and OpenMetrics' HELP): backslash, newline and double quote escaped."""
    if "\\" in s or "\n" in s or '"' in s:
        return s.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return s


def escape_help(doc: str, openmetrics: bool) -> str:
    """HELP text: the classic format escapes backslash and newline only."""
    if openmetrics:
        return escape_value(doc)
    return doc.replace("\\", "\\\\").replace("\n", "\\n")


def _legacy_rune(c: str, i: int, metric: bool) -> bool:
    return c.isascii() and (c.isalpha() or c == "_" or (c.isdigit() and i > 0) or (metric and c == ":"))


@functools.lru_cache(maxsize=4096)
def escape_name(name: str, escaping: Escaping, metric: bool) -> str:
    """A metric (``metric``) or label name under the scraper's escaping scheme (the
    ``escaping=`` of its Accept header), as Prometheus defines them: ``allow-utf-8`` quotes
    names outside the legacy character set, ``underscores`` replaces each invalid character
    with ``_``, ``dots`` writes ``_`` as ``__``, ``.`` as ``_dot_`` and others as ``__``
    (every name), ``values`` writes an invalid name as ``U__`` and its characters, ``_`` as
    ``__`` and others as ``_<hex code point>_``. Legacy label names do not start with
    ``__``."""
    if not name:
        return name
    legacy = (_LEGACY_METRIC if metric else _LEGACY_LABEL).fullmatch(name) is not None
    legacy = legacy and (metric or not name.startswith("__"))
    if escaping == "allow-utf-8":
        return name if legacy else f'"{escape_value(name)}"'
    if escaping == "dots":
        return "".join(
            "__" if c == "_" else "_dot_" if c == "." else c if _legacy_rune(c, i, metric) else "__"
            for i, c in enumerate(name)
        )
    if legacy:
        return name
    if escaping == "values":
        return "U__" + "".join(
            "__"
            if c == "_"
            else c
            if _legacy_rune(c, i, metric)
            else "_FFFD_"
            if 0xD800 <= ord(c) <= 0xDFFF
            else f"_{ord(c):x}_"
            for i, c in enumerate(name)
        )
    return "".join(c if _legacy_rune(c, i, metric) else "_" for i, c in enumerate(name))


# -- families --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """One metric family: its HELP/TYPE lines in either format and its sample lines."""

    text_head: str
    openmetrics_head: str
    lines: list[str]


@dataclass(frozen=True)
class Exposition:
    """A snapshot's families, in the order prometheus_client wrote them."""

    families: tuple[Family, ...]

    def text(self) -> bytes:
        """The classic text format (0.0.4, also served as 1.0.0)."""
        return self._join([(f.text_head, f.lines) for f in self.families], "")

    def openmetrics(self) -> bytes:
        """OpenMetrics 1.0.0 (no UNIT lines: the units are in the names)."""
        return self._join([(f.openmetrics_head, f.lines) for f in self.families], "# EOF\n")

    @staticmethod
    def _join(parts: list[tuple[str, list[str]]], end: str) -> bytes:
        out: list[str] = []  # one join of every line: 5 MB copied once, then encoded
        for head, lines in parts:
            out.append(head)
            out.extend(lines)
        out.append(end)
        return "".join(out).encode()

    def only(self, names: Iterable[str]) -> Exposition:
        """The samples named in ``names`` only (``?name[]=...``), families without any left out."""
        wanted = tuple(f"{n}{{" for n in names) + tuple(f"{n} " for n in names)
        kept = []
        for f in self.families:
            lines = [ln for ln in f.lines if ln.startswith(wanted)]
            if lines:
                kept.append(Family(f.text_head, f.openmetrics_head, lines))
        return Exposition(tuple(kept))


def _heads(d: MetricDef, kind: str, escaping: Escaping) -> tuple[str, str]:
    name = prom_name(d)
    text_name = escape_name(name + "_total" if kind == "counter" else name, escaping, True)
    om_name = escape_name(name, escaping, True)
    text = f"# HELP {text_name} {escape_help(d.description, False)}\n# TYPE {text_name} {kind}\n"
    om = f"# HELP {om_name} {escape_help(d.description, True)}\n# TYPE {om_name} {kind}\n"
    return text, om


_NUMBER_METRICS = (*POD_METRICS, *PEER_METRICS, *HEALTH_METRICS)
_LE = (*(go_float(b) for b in HIST_BOUNDS_S), "+Inf")


class _Owner:
    """The label strings of one Resource's series (``sample_name{labels} ``), made once and
    kept while the Resource's attributes stay the same."""

    __slots__ = ("_escaping", "_labels", "_seen", "_series", "hist", "pod")

    def __init__(self, resource: Mapping[str, str], escaping: Escaping) -> None:
        self._escaping = escaping
        self._labels = {label_name(k): v for k, v in resource.items()}
        self.pod = tuple(self._prefix(_sample_name(d), attrs) for d, attrs, _ in POD_SERIES)
        self.hist = tuple(self._histogram(d, attrs) for d, attrs, _ in POD_HISTOGRAMS)
        self._series: dict[tuple[str, Attrs], str] = {}  # peers' and health's, by (metric, attrs)
        self._seen: dict[tuple[str, Attrs], str] = {}  # those used in this snapshot

    def series(self, d: MetricDef, attrs: Attrs) -> str:
        key = (d.name, attrs)
        prefix = self._series.get(key)
        if prefix is None:
            prefix = self._prefix(_sample_name(d), attrs)
        self._seen[key] = prefix
        return prefix

    def forget_unseen(self) -> None:
        """Keep only what this snapshot used (peers come and go)."""
        self._series, self._seen = self._seen, {}

    def _label_items(self, attrs: Attrs, extra: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
        labels = dict(self._labels)
        labels.update((label_name(k), v) for k, v in attrs)
        if extra:
            labels.update(extra)
        return sorted(labels.items())

    def _join(self, items: list[tuple[str, str]]) -> str:
        return ",".join(f'{escape_name(k, self._escaping, False)}="{escape_value(v)}"' for k, v in items)

    def _prefix(self, sample_name: str, attrs: Attrs) -> str:
        labels = self._join(self._label_items(attrs))
        name = escape_name(sample_name, self._escaping, True)
        return f"{name}{{{labels}}} " if labels else f"{name} "

    def _histogram(self, d: MetricDef, attrs: Attrs) -> tuple[str, str, str, str]:
        """The bucket lines' parts around the ``le`` value (``le`` in its sorted place: kept
        as two strings, not 28 lines' prefixes, for memory), then ``_count``'s and ``_sum``'s
        prefixes."""
        name = prom_name(d)
        items = self._label_items(attrs, {"le": "\0"})
        i = items.index(("le", "\0"))
        before, after = self._join(items[:i]), self._join(items[i + 1 :])
        bucket = escape_name(f"{name}_bucket", self._escaping, True)
        le = escape_name("le", self._escaping, False)
        head = f'{bucket}{{{before}{"," if before else ""}{le}="'
        tail = f'"{"," if after else ""}{after}}} '
        return head, tail, self._prefix(f"{name}_count", attrs), self._prefix(f"{name}_sum", attrs)


def _sample_name(d: MetricDef) -> str:
    return prom_name(d) + ("_total" if d.monotonic else "")


class Renderer:
    """Renders snapshots for one name escaping; keeps each Resource's label strings from one
    snapshot to the next. Not thread-safe: one render at a time."""

    def __init__(self, node_name: str, extra: Mapping[str, str], escaping: Escaping = "underscores") -> None:
        self._node = node_name
        self._extra = extra
        self._escaping = escaping
        self._owners: dict[tuple[tuple[str, str], ...], _Owner] = {}
        self._number_heads = {
            d.name: _heads(d, "counter" if d.monotonic else "gauge", escaping) for d in _NUMBER_METRICS
        }
        self._hist_heads = {d.name: _heads(d, "histogram", escaping) for d in HISTOGRAM_METRICS}

    def render(self, snapshot: Snapshot, pods: Mapping[str, PodInfo], export_failures: int) -> Exposition:
        lines: dict[str, list[str]] = {d.name: [] for d in (*_NUMBER_METRICS, *HISTOGRAM_METRICS)}
        pod_lines = [lines[d.name] for d, _, _ in POD_SERIES]
        hist_lines = [lines[d.name] for d, _, _ in POD_HISTOGRAMS]
        owners: dict[tuple[tuple[str, str], ...], _Owner] = {}
        for s in snapshot.samples:
            if s.uid is None:
                resource = node_attributes(self._node, self._extra)
            else:
                resource = pod_attributes(s.uid, pods.get(s.uid), self._node, self._extra)
            key = tuple(resource.items())
            owner = owners.get(key) or self._owners.get(key) or _Owner(resource, self._escaping)
            owners[key] = owner
            c = s.counters
            for out, prefix, v in zip(pod_lines, owner.pod, pod_values(c), strict=True):
                out.append(f"{prefix}{go_float(v)}\n")
            if s.uid is None:
                for d, attrs, value in health_series(snapshot.health, export_failures):
                    lines[d.name].append(f"{owner.series(d, attrs)}{go_float(value)}\n")
            for attrs, values in s.peers:  # a point only where the figure is not zero
                for (d, point), value in zip(PEER_POINTS, values, strict=True):
                    if value:
                        lines[d.name].append(f"{owner.series(d, point + attrs)}{go_float(value)}\n")
            for out, (head, tail, count, total), (_, _, prop) in zip(
                hist_lines, owner.hist, POD_HISTOGRAMS, strict=True
            ):
                h = getattr(c, prop)
                acc = 0
                for le, acc in zip(_LE, accumulate(h.buckets), strict=True):
                    # most buckets: small counts, written here without a call (as go_float does)
                    out.append(
                        f"{head}{le}{tail}{acc}.0\n" if acc < 1_000_000 else f"{head}{le}{tail}{go_float(acc)}\n"
                    )
                out.append(f"{count}{go_float(acc)}\n")  # a line each: only() filters lines
                out.append(f"{total}{go_float(h.sum_seconds)}\n")
        for owner in owners.values():
            owner.forget_unseen()
        self._owners = owners  # Resources gone (or changed) are forgotten
        return Exposition(tuple(self._families(lines)))

    def _families(self, lines: Mapping[str, list[str]]) -> Iterator[Family]:
        for heads in (self._number_heads, self._hist_heads):
            for name, (text, om) in heads.items():
                if lines[name]:
                    yield Family(text, om, lines[name])
