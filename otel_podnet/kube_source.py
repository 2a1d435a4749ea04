"""Which Kubernetes API the agent learns its node's pods from, if any.

The choice needs no ``kubernetes`` import: with no pods file, the agent uses

1. the kubeconfig given by ``--kubeconfig`` or ``KUBECONFIG`` (explicit wins),
2. else the in-cluster config: ``KUBERNETES_SERVICE_HOST`` set and the service account
   token mounted at ``/var/run/secrets/kubernetes.io/serviceaccount/token``,
3. else ``~/.kube/config`` when it exists,
4. else nothing: host mode.

The source itself (list, then watch) lives in otel_podnet.kube, imported only when one of
the first three applies.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from logging import getLogger
from pathlib import Path

from .inventory import PodSource
from .settings import ConfigError, Settings

_logger = getLogger(__name__)

SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


@dataclass(frozen=True)
class ApiTarget:
    """How to reach the API: in-cluster, or a kubeconfig (possibly a ``KUBECONFIG`` list)."""

    in_cluster: bool
    kubeconfig: Path | None
    description: str  # names the credentials in log lines and errors


def choose_target(
    settings: Settings,
    env: Mapping[str, str] | None = None,
    home: Path | None = None,
    token_file: Path | None = None,
) -> ApiTarget | None:
    """The API config to use, or None for host mode (see the module docstring for the order)."""
    env = os.environ if env is None else env
    token_file = token_file or SERVICE_ACCOUNT_TOKEN
    if settings.kubeconfig is not None:
        return ApiTarget(False, settings.kubeconfig, f"kubeconfig {settings.kubeconfig}")
    if env.get("KUBERNETES_SERVICE_HOST") and token_file.is_file():
        return ApiTarget(True, None, f"the in-cluster service account token {token_file}")
    try:
        default = (home if home is not None else Path.home()) / ".kube" / "config"
    except RuntimeError:  # no home directory
        return None
    if default.is_file():
        return ApiTarget(False, default, f"kubeconfig {default}")
    return None


def maybe_api_source(settings: Settings) -> PodSource | None:
    """The API source when a Kubernetes config is available, else None (host mode).

    Lists the node's pods before returning (retrying for up to 30 s when the API is
    unreachable), then keeps watching them in a background thread; with peer metrics on,
    also the cluster's pods and Services (its ``peer_directory()``). Raises ConfigError when
    the credentials are rejected or lack a permission, or the API stays unreachable."""
    target = choose_target(settings)
    if target is None:
        return None
    mode = "in-cluster config" if target.in_cluster else "kubeconfig"
    _logger.info("pod inventory: Kubernetes API, %s (%s), node %s", mode, target.description, settings.node_name)
    try:
        from .kube import KubePodSource, open_source
    except ImportError as exc:
        raise ConfigError(
            f"{target.description}: the Kubernetes API needs the Python package 'kubernetes' ({exc}); "
            "expected it installed with otel-podnet"
        ) from exc
    source = open_source(target, settings.node_name)
    # peer metrics on (issue 12): the cluster's pods and Services too
    if settings.max_peers > 0 and isinstance(source, KubePodSource):
        try:
            source.start_peer_directory()
        except BaseException:
            source.close()
            raise
    return source
