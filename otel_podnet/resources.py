"""Resource attributes: one Resource per pod, one for the node (with the agent's health).

``service.*`` follows the OpenTelemetry semantic conventions' guidance for Kubernetes:
the ``resource.opentelemetry.io/service.*`` annotations first, then the
``app.kubernetes.io/name`` label, then the workload's name, then the pod's name.
``OTEL_RESOURCE_ATTRIBUTES`` is added to every Resource (the pod's own attributes win).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import unquote

from . import __version__
from .inventory import PodInfo
from .settings import ConfigError

_ANN = "resource.opentelemetry.io/"
_WORKLOAD_ORDER = (
    "k8s.deployment.name",
    "k8s.statefulset.name",
    "k8s.daemonset.name",
    "k8s.cronjob.name",
    "k8s.job.name",
    "k8s.replicaset.name",
)


def env_attributes(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``OTEL_RESOURCE_ATTRIBUTES`` (``k=v,k2=v2``, values percent-decoded)."""
    raw = (os.environ if env is None else env).get("OTEL_RESOURCE_ATTRIBUTES", "")
    out: dict[str, str] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"OTEL_RESOURCE_ATTRIBUTES {raw!r}: entry {item.strip()!r}: expected key=value pairs "
                "separated by commas, such as k8s.cluster.name=prod"
            )
        out[key.strip()] = unquote(value.strip())
    return out


def service_name(pod: PodInfo) -> str:
    for candidate in (
        pod.annotations.get(_ANN + "service.name"),
        pod.labels.get("app.kubernetes.io/name"),
        *(pod.workload.get(k) for k in _WORKLOAD_ORDER),
    ):
        if candidate:
            return candidate
    return pod.name


def pod_attributes(uid: str, pod: PodInfo | None, node_name: str, extra: Mapping[str, str]) -> dict[str, str]:
    attrs = dict(extra)
    attrs["k8s.pod.uid"] = uid
    attrs["k8s.node.name"] = node_name
    if pod is None:  # known by its cgroup only (host mode, or not in the inventory yet)
        attrs["service.name"] = attrs.get("service.name", "unknown_service")
        return attrs
    attrs["k8s.pod.name"] = pod.name
    attrs["k8s.namespace.name"] = pod.namespace
    attrs.update(pod.workload)
    attrs["service.name"] = service_name(pod)
    attrs["service.namespace"] = pod.annotations.get(_ANN + "service.namespace") or pod.namespace
    attrs["service.instance.id"] = pod.annotations.get(_ANN + "service.instance.id") or f"{pod.namespace}.{pod.name}"
    if pod.annotations.get(_ANN + "service.version"):
        attrs["service.version"] = pod.annotations[_ANN + "service.version"]
    return attrs


def node_attributes(node_name: str, extra: Mapping[str, str]) -> dict[str, str]:
    attrs = dict(extra)
    attrs.update({"k8s.node.name": node_name, "service.name": "otel-podnet", "service.version": __version__})
    return attrs
