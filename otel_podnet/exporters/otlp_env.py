"""The ``OTEL_EXPORTER_OTLP_*`` variables checked without the OpenTelemetry SDK, protobuf
or gRPC: ``otel-podnet run`` checks them before it loads the BPF object, and imports the
exporter itself (otlp.py, ~17 MiB of those imports) only after (issue 10)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from urllib.parse import urlparse

from ..settings import ConfigError

PROTOCOLS = ("grpc", "http/protobuf")


def protocol(env: Mapping[str, str]) -> str:
    for var in ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        p = env.get(var)
        if p:
            if p not in PROTOCOLS:
                raise ConfigError(f"{var} {p!r}: expected one of {', '.join(PROTOCOLS)}")
            return p
    return "grpc"


def _number(v: str) -> bool:
    try:
        return math.isfinite(float(v)) and float(v) >= 0
    except ValueError:
        return False


def _headers(v: str) -> bool:
    for item in v.split(","):
        key, sep, _ = item.partition("=")
        if item.strip() and (not sep or not key.strip()):
            return False
    return True


def _readable_file(v: str) -> bool:
    return os.path.isfile(v) and os.access(v, os.R_OK)


# The OTLP exporter's variables that the SDK reads (each also as OTEL_EXPORTER_OTLP_METRICS_*):
# name -> (valid?, what is expected). The SDK itself fails on some (a traceback) and ignores
# others silently; here every bad value is one line and exit 2.
_CHECKS: dict[str, tuple[Callable[[str], bool], str]] = {
    "TIMEOUT": (_number, "a timeout as a non-negative number, such as 10"),
    "COMPRESSION": (lambda v: v.strip().lower() in ("gzip", "deflate", "none"), "gzip, deflate or none"),
    "HEADERS": (_headers, "key=value pairs separated by commas, such as api-key=secret"),
    "INSECURE": (lambda v: v.strip().lower() in ("true", "false"), "true or false"),
    "CERTIFICATE": (_readable_file, "a readable PEM file of CA certificates"),
    "CLIENT_KEY": (_readable_file, "a readable PEM file of the client's private key"),
    "CLIENT_CERTIFICATE": (_readable_file, "a readable PEM file of the client's certificate"),
}
# where an empty value is no value for the SDK too (it fails on an empty timeout or compression)
_EMPTY_IS_UNSET = ("HEADERS", "INSECURE", "CERTIFICATE", "CLIENT_KEY", "CLIENT_CERTIFICATE")


def check_env(env: Mapping[str, str]) -> None:
    """Every OTLP variable the agent or the SDK reads, checked before the SDK sees it."""
    proto = protocol(env)
    check_endpoint(env, proto)
    for name, (valid, expected) in _CHECKS.items():
        for var in (f"OTEL_EXPORTER_OTLP_METRICS_{name}", f"OTEL_EXPORTER_OTLP_{name}"):
            value = env.get(var)
            if value is None or (value == "" and name in _EMPTY_IS_UNSET):
                continue
            if not valid(value):
                raise ConfigError(f"{var} {value!r}: expected {expected}")
    delta_preferred(env)


def check_endpoint(env: Mapping[str, str], proto: str) -> None:
    for var in ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        value = env.get(var)
        if not value:
            continue
        ok = False
        if "://" in value:
            u = urlparse(value)
            try:
                port_ok = u.port is None or 0 < u.port < 65536
            except ValueError:
                port_ok = False
            ok = u.scheme in ("http", "https") and bool(u.hostname) and port_ok and " " not in value
        elif proto == "grpc":  # the gRPC exporter also takes host:port
            host, _, port = value.rpartition(":")
            ok = bool(host) and port.isdigit() and 0 < int(port) < 65536
        if not ok:
            raise ConfigError(
                f"{var} {value!r}: expected a URL such as http://collector:4317 (grpc) or "
                "http://collector:4318 (http/protobuf)"
            )


def delta_preferred(env: Mapping[str, str]) -> bool:
    v = (env.get("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE") or "cumulative").strip().lower()
    if v not in ("cumulative", "delta", "lowmemory"):
        raise ConfigError(
            f"OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE {v!r}: expected cumulative, delta or lowmemory"
        )
    # "lowmemory" keeps observable counters cumulative, as the specification says
    return v == "delta"
