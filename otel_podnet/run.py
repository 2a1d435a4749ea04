"""Wiring of ``otel-podnet run`` from its settings; maps failures to the exit codes."""

from __future__ import annotations

import sys
from logging import getLogger

from .agent import Agent
from .capacity import Capacity
from .cgroups import CgroupError, find_cgroup2_mount
from .core import Core
from .datapath import AbiMismatch
from .exporters.factory import Exporters
from .health import HealthServer, HealthState
from .inventory import InventoryError, NoPods, PodsFileSource, PodSource
from .libbpf import LibbpfError
from .memory import unmap_large_blocks
from .settings import ConfigError, NotReady, Settings

_logger = getLogger(__name__)


def make_source(settings: Settings) -> PodSource:
    if settings.pods_file is not None:
        _logger.info("pod inventory: pods file %s", settings.pods_file)
        return PodsFileSource(settings.pods_file, settings.node_name)
    from .kube_source import maybe_api_source

    src = maybe_api_source(settings)
    if src is not None:
        return src
    _logger.info("pod inventory: host mode (no pods file, no Kubernetes config): pods known by cgroup UID only")
    return NoPods()


def run(settings: Settings) -> int:
    unmap_large_blocks()  # before the BPF object's load: its parsed BTF is such a block too
    try:
        cgroup_root = settings.cgroup_root or find_cgroup2_mount()
        exporters = Exporters(settings)  # every exporter's configuration; the OTLP one built later
        source = make_source(settings)
        source.refresh()
    except (ConfigError, InventoryError) as exc:
        print(f"otel-podnet: {exc}", file=sys.stderr)
        return 2
    except (CgroupError, NotReady) as exc:
        print(f"otel-podnet: {exc}", file=sys.stderr)
        return 3
    core = Core(
        cgroup_root,
        source,
        capacity=Capacity.for_pods(settings.max_pods),
        interval=settings.interval,
        max_peers=settings.max_peers,
        peer_cidrs=settings.peer_cidrs,
    )
    health = HealthState(settings.interval)
    health_server = None
    if settings.health_address is not None:
        try:
            health_server = HealthServer(settings.health_address, health)
        except ConfigError as exc:
            print(f"otel-podnet: {exc}", file=sys.stderr)
            return 2
    agent = Agent(core, [], settings.interval, health)
    agent.install_signal_handlers()
    try:
        # The BPF object is loaded before the OTLP exporter is built (issue 10): libbpf's
        # parsed copy of the kernel's BTF, freed once loaded, set the agent's peak on top of
        # the exporter's imports. Attached only in agent.run, once the maps hold what exists
        # (Core.start).
        try:
            core.load()
            agent.exporters = exporters.finish()
        except BaseException as exc:
            exporters.shutdown()
            core.close()
            if isinstance(exc, ConfigError):  # checked before: a certificate gone since
                print(f"otel-podnet: {exc}", file=sys.stderr)
                return 2
            raise
        return agent.run()
    except AbiMismatch as exc:  # not the environment: this object was not built with this agent
        print(f"otel-podnet: {exc.strerror}", file=sys.stderr)
        return 3
    except LibbpfError as exc:
        from .check import run_checks

        print(f"otel-podnet: the kernel side could not start: {exc}", file=sys.stderr)
        for r in run_checks(cgroup_root):
            if not r.ok:
                print(r.line(), file=sys.stderr)
        return 3
    finally:
        if health_server is not None:
            health_server.close()
