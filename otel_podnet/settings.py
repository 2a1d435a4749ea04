"""Settings of ``otel-podnet run``: options, then their environment variables, then defaults.

Every bad value is a :class:`ConfigError` whose message names the value and what was
expected; the CLI prints it on one line and exits 2.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .capacity import DEFAULT_MAX_PODS, MAX_MAX_PODS
from .peers import Network, parse_peer_cidr

# a DNS subdomain name, as Kubernetes names nodes
_NODE_NAME = re.compile(r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
EXPORTERS = ("otlp", "prometheus", "console", "none")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


class ConfigError(Exception):
    """A bad option or environment value (exit 2)."""


class NotReady(Exception):
    """Something the agent needs is not there yet, such as an unreachable API (exit 3)."""


@dataclass(frozen=True)
class Settings:
    node_name: str
    pods_file: Path | None
    kubeconfig: Path | None
    cgroup_root: Path | None  # None: found in /proc/self/mountinfo
    interval: float
    exporters: tuple[str, ...]
    prometheus_address: tuple[str, int]
    health_address: tuple[str, int] | None
    log_level: str
    log_format: str
    max_pods: int = DEFAULT_MAX_PODS  # sizes the kernel's tables (capacity.py)
    max_peers: int = 20  # peer series per pod and metric (issue 12); 0: no peer metrics
    peer_cidrs: tuple[tuple[str, Network], ...] = ()  # --peer-cidr NAME=CIDR groups


DEFAULT_MAX_PEERS = 20
MAX_MAX_PEERS = 1000


def parse_max_peers(cli: str | None, env: Mapping[str, str]) -> int:
    """``--max-peers`` [``PODNET_MAX_PEERS``], default 20; 0 turns peer metrics off."""
    if cli is not None:
        raw, what = cli, "--max-peers"
    elif env.get("PODNET_MAX_PEERS"):
        raw, what = env["PODNET_MAX_PEERS"], "PODNET_MAX_PEERS"
    else:
        return DEFAULT_MAX_PEERS
    if not raw.strip().isdigit() or int(raw) > MAX_MAX_PEERS:
        raise ConfigError(
            f"{what} {raw!r}: expected the number of peers per pod and metric, 0 (off) to {MAX_MAX_PEERS}"
        )
    return int(raw)


def parse_peer_cidrs(cli: list[str] | None, env: Mapping[str, str]) -> tuple[tuple[str, Network], ...]:
    """``--peer-cidr NAME=CIDR``, repeatable [``PODNET_PEER_CIDRS``, comma list]."""
    if cli:
        items, what = cli, "--peer-cidr"
    elif env.get("PODNET_PEER_CIDRS"):
        items, what = [i for i in env["PODNET_PEER_CIDRS"].split(",") if i.strip()], "PODNET_PEER_CIDRS"
    else:
        return ()
    out = []
    for item in items:
        try:
            out.append(parse_peer_cidr(item, what))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return tuple(out)


def parse_max_pods(cli: str | None, env: Mapping[str, str]) -> int:
    """``--max-pods`` [``PODNET_MAX_PODS``], default 110 (kubelet's)."""
    if cli is not None:
        raw, what = cli, "--max-pods"
    elif env.get("PODNET_MAX_PODS"):
        raw, what = env["PODNET_MAX_PODS"], "PODNET_MAX_PODS"
    else:
        return DEFAULT_MAX_PODS
    if not raw.strip().isdigit() or not 1 <= int(raw) <= MAX_MAX_PODS:
        raise ConfigError(f"{what} {raw!r}: expected the node's maximum number of pods, 1 to {MAX_MAX_PODS}")
    return int(raw)


def parse_address(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what} {value!r}: expected HOST:PORT with a port from 1 to 65535")
    return host.strip("[]") or "0.0.0.0", int(port)


def parse_interval(cli: str | None, env: Mapping[str, str]) -> float:
    if cli is not None:
        try:
            v = float(cli)
        except ValueError:
            raise ConfigError(f"--interval {cli!r}: expected a number of seconds") from None
        what = f"--interval {cli!r}"
    elif env.get("OTEL_METRIC_EXPORT_INTERVAL"):
        raw = env["OTEL_METRIC_EXPORT_INTERVAL"]
        try:
            v = float(raw) / 1000.0
        except ValueError:
            raise ConfigError(f"OTEL_METRIC_EXPORT_INTERVAL {raw!r}: expected milliseconds, such as 10000") from None
        what = f"OTEL_METRIC_EXPORT_INTERVAL {raw!r}"
    else:
        return 10.0
    if not 0.05 <= v <= 86400:
        raise ConfigError(f"{what}: expected an interval between 0.05 s and 1 day")
    return v


def parse_exporters(cli: list[str] | None, env: Mapping[str, str]) -> tuple[str, ...]:
    if cli:
        names, what = [n.strip() for item in cli for n in item.split(",")], "--exporter"
    elif env.get("OTEL_METRICS_EXPORTER"):
        names, what = [n.strip() for n in env["OTEL_METRICS_EXPORTER"].split(",")], "OTEL_METRICS_EXPORTER"
    else:
        return ("otlp",)
    for n in names:
        if n not in EXPORTERS:
            raise ConfigError(f"{what} {n!r}: expected one of {', '.join(EXPORTERS)}")
    return tuple(n for n in dict.fromkeys(names) if n != "none")


def build(
    *,
    node_name: str | None,
    pods_file: str | None,
    kubeconfig: str | None,
    cgroup_root: str | None,
    interval: str | None,
    exporters: list[str] | None,
    prometheus_address: str | None,
    health_address: str | None,
    log_level: str,
    log_format: str,
    env: Mapping[str, str] | None = None,
    max_pods: str | None = None,
    max_peers: str | None = None,
    peer_cidrs: list[str] | None = None,
) -> Settings:
    env = os.environ if env is None else env

    def pick(cli: str | None, var: str, option: str) -> tuple[str | None, str]:
        """The value and the name to put in an error: the option's, or the variable's."""
        if cli:
            return cli, option
        return (env.get(var) or None), var

    pods, pods_what = pick(pods_file, "PODNET_PODS_FILE", "--pods-file")
    kube, kube_what = pick(kubeconfig, "KUBECONFIG", "--kubeconfig")
    cg, cg_what = pick(cgroup_root, "PODNET_CGROUP_ROOT", "--cgroup-root")
    if cg is not None and not Path(cg).is_dir():
        raise ConfigError(f"{cg_what} {cg!r}: expected the cgroup v2 mount directory")
    if pods is not None and not Path(pods).is_file():
        raise ConfigError(f"{pods_what} {pods!r}: expected an existing pods file (kubectl get pods -o yaml)")
    if kube is not None and ":" not in kube and not Path(kube).is_file():
        raise ConfigError(f"{kube_what} {kube!r}: expected an existing kubeconfig file")
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"--log-level {log_level!r}: expected one of {', '.join(LOG_LEVELS)}")
    if log_format not in LOG_FORMATS:
        raise ConfigError(f"--log-format {log_format!r}: expected one of {', '.join(LOG_FORMATS)}")
    prom_raw, prom_what = pick(prometheus_address, "PODNET_PROMETHEUS_ADDRESS", "--prometheus-address")
    health, health_what = pick(health_address, "PODNET_HEALTH_ADDRESS", "--health-address")
    node, node_what = pick(node_name, "NODE_NAME", "--node-name")
    if node is not None and not _NODE_NAME.fullmatch(node):
        raise ConfigError(
            f"{node_what} {node!r}: expected a Kubernetes node name (lowercase letters, digits, '-' and '.')"
        )
    from .resources import env_attributes

    env_attributes(env)  # its bad entries, before any exporter (or the SDK) reads them
    for var, what in (("PODNET_BPF_OBJECT", "the compiled BPF object (podnet.bpf.o)"), ("PODNET_LIBBPF", "libbpf.so")):
        value = env.get(var)
        if value is not None and not Path(value).is_file():
            raise ConfigError(f"{var} {value!r}: expected the path of an existing file, {what}")
    return Settings(
        node_name=node or socket.gethostname(),
        pods_file=Path(pods) if pods else None,
        kubeconfig=Path(kube) if kube else None,
        cgroup_root=Path(cg) if cg else None,
        interval=parse_interval(interval, env),
        exporters=parse_exporters(exporters, env),
        prometheus_address=parse_address(prom_raw or "0.0.0.0:9464", prom_what),
        health_address=parse_address(health, health_what) if health else None,
        log_level=log_level,
        log_format=log_format,
        max_pods=parse_max_pods(max_pods, env),
        max_peers=parse_max_peers(max_peers, env),
        peer_cidrs=parse_peer_cidrs(peer_cidrs, env),
    )
