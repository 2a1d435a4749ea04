"""The ``otel-podnet`` command: run, demo, check, version, top."""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Sequence
from logging import getLogger
from pathlib import Path

from . import __version__
from . import log as podnet_log
from .caps import raise_permitted
from .settings import ConfigError, Settings, build

_logger = getLogger(__name__)

EXIT_OK, EXIT_UNEXPECTED, EXIT_CONFIG, EXIT_NOT_READY = 0, 1, 2, 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_CONFIG, f"otel-podnet: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="otel-podnet",
        description="Per-pod TCP connections and traffic, counted with eBPF, exported as OpenTelemetry metrics.",
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="the node agent (the DaemonSet entrypoint)")
    run.add_argument("--node-name", help="this node's name [NODE_NAME] (default: the host name)")
    run.add_argument(
        "--pods-file", help="a PodList (kubectl get pods -o yaml) used instead of the API [PODNET_PODS_FILE]"
    )
    run.add_argument("--kubeconfig", help="kubeconfig file [KUBECONFIG]")
    run.add_argument("--cgroup-root", help="cgroup v2 mount [PODNET_CGROUP_ROOT] (default: from /proc/self/mountinfo)")
    run.add_argument("--interval", help="seconds between exports (default: OTEL_METRIC_EXPORT_INTERVAL ms, else 10)")
    run.add_argument(
        "--exporter",
        action="append",
        help="otlp (default), prometheus, console, none; repeatable [OTEL_METRICS_EXPORTER, comma list]",
    )
    run.add_argument(
        "--prometheus-address", help="HOST:PORT of /metrics [PODNET_PROMETHEUS_ADDRESS] (default 0.0.0.0:9464)"
    )
    run.add_argument(
        "--health-address", help="HOST:PORT of /healthz and /readyz [PODNET_HEALTH_ADDRESS] (default: off)"
    )
    run.add_argument(
        "--max-pods",
        help="the most pods this node runs: sizes the kernel's tables [PODNET_MAX_PODS] (default 110)",
    )
    run.add_argument(
        "--max-peers",
        help="peer series per pod and metric, the busiest by bytes; the rest as kind=other; 0: off "
        "[PODNET_MAX_PEERS] (default 20)",
    )
    run.add_argument(
        "--peer-cidr",
        action="append",
        metavar="NAME=CIDR",
        help="external addresses in CIDR are the peer workload NAME; repeatable [PODNET_PEER_CIDRS, comma list]",
    )
    for sp in (run,):
        sp.add_argument("--log-level", default="info", help="debug, info, warning, error (default info)")
        sp.add_argument("--log-format", default="text", help="text or json (default text)")
    demo = sub.add_parser("demo", help="a simulated node with real traffic, per-pod figures beside the ground truth")
    demo.add_argument("--log-level", default="warning")
    check = sub.add_parser("check", help="preflight: is this node ready?")
    check.add_argument("--cgroup-root", help="cgroup v2 mount (default: from /proc/self/mountinfo)")
    sub.add_parser("version", help="version, libbpf version, BPF object build id")
    top = sub.add_parser(
        "top",
        help="this node's pods sorted by traffic, live",
        description="This node's pods sorted by traffic (bytes/s in and out, connections/s, failures/s, active), "
        "from a running agent's /metrics (--from) or from a datapath of its own (root).",
    )
    top.add_argument("--from", dest="from_address", metavar="HOST:PORT", help="a running agent's /metrics address")
    top.add_argument("--once", action="store_true", help="print one table with exact figures and exit")
    top.add_argument(
        "--interval",
        default="2",
        help="seconds between readings of the own datapath (default 2); with --from, the agent's interval",
    )
    top.add_argument("--pods-file", help="without --from: pods (kubectl get pods -o yaml) to name the pods")
    top.add_argument("--cgroup-root", help="without --from: cgroup v2 mount (default: from /proc/self/mountinfo)")
    top.add_argument("--node-name", help="without --from: this node's name, for --pods-file (default: the host name)")
    top.add_argument("--log-level", default="warning")
    return p


def _settings(a: argparse.Namespace) -> Settings:
    return build(
        node_name=a.node_name,
        pods_file=a.pods_file,
        kubeconfig=a.kubeconfig,
        cgroup_root=a.cgroup_root,
        interval=a.interval,
        exporters=a.exporter,
        prometheus_address=a.prometheus_address,
        health_address=a.health_address,
        log_level=a.log_level,
        log_format=a.log_format,
        max_pods=a.max_pods,
        max_peers=a.max_peers,
        peer_cidrs=a.peer_cidr,
    )


def _version() -> int:
    from . import libbpf
    from .datapath import default_object_path

    obj = default_object_path()
    try:
        build_id = hashlib.sha256(obj.read_bytes()).hexdigest()[:16]
    except OSError:
        build_id = f"missing ({obj})"
    try:
        lv = libbpf.version()
    except OSError as exc:
        lv = f"unavailable ({exc})"
    print(f"otel-podnet {__version__}\nlibbpf {lv}\nbpf object {build_id}")
    return EXIT_OK


def _top(a: argparse.Namespace) -> int:
    from .settings import parse_address, parse_interval
    from .top import main as top_main

    try:
        address = parse_address(a.from_address, "--from") if a.from_address else None
        interval = parse_interval(a.interval, {})
        if a.pods_file is not None and not Path(a.pods_file).is_file():
            raise ConfigError(f"--pods-file {a.pods_file!r}: expected an existing PodList file")
        if a.cgroup_root is not None and not Path(a.cgroup_root).is_dir():
            raise ConfigError(f"--cgroup-root {a.cgroup_root!r}: expected the cgroup v2 mount directory")
    except ConfigError as exc:
        print(f"otel-podnet: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    podnet_log.setup(a.log_level)
    return top_main(
        address,
        a.once,
        interval,
        Path(a.cgroup_root) if a.cgroup_root else None,
        Path(a.pods_file) if a.pods_file else None,
        a.node_name,
    )


def main(argv: Sequence[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    try:
        # The image's interpreter holds its capabilities permitted, not effective (caps.py).
        raise_permitted()
    except OSError as exc:
        _logger.debug("capabilities not raised: %s", exc)
    if a.command == "version":
        return _version()
    if a.command == "check":
        from .check import main as check_main

        podnet_log.setup("warning")
        return check_main(cgroup_root=Path(a.cgroup_root) if a.cgroup_root else None)
    if a.command == "top":
        return _top(a)
    if a.command == "demo":
        from .demo import main as demo_main

        podnet_log.setup(a.log_level)
        return demo_main()
    try:
        settings = _settings(a)
    except ConfigError as exc:
        print(f"otel-podnet: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    podnet_log.setup(settings.log_level, settings.log_format)
    from .run import run

    return run(settings)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
