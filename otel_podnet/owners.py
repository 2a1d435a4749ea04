"""Owner resolution: which workload a pod belongs to, from its controlling owner reference
and, for a ReplicaSet or a Job, that owner's own controller (a Deployment, a CronJob).

Pure functions over objects as the API returns them (plain dicts); fetching an owner object
is the Kubernetes source's job (otel_podnet.kube, the only module that imports
``kubernetes``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Owners whose workload names need the owner object: kind -> resource named in messages.
LOOKED_UP = {"ReplicaSet": "replicasets.apps", "Job": "jobs.batch"}
# Owners that name the workload themselves: kind -> attribute.
DIRECT = {"StatefulSet": "k8s.statefulset.name", "DaemonSet": "k8s.daemonset.name"}


def controller_of(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """(kind, name) of an object's controlling owner reference."""
    meta = obj.get("metadata")
    refs = meta.get("ownerReferences") if isinstance(meta, Mapping) else None
    for ref in refs if isinstance(refs, list) else []:
        if isinstance(ref, Mapping) and ref.get("controller") is True:
            kind, name = ref.get("kind"), ref.get("name")
            if isinstance(kind, str) and isinstance(name, str) and kind and name:
                return kind, name
    return None


def workload_from_owner(owner: tuple[str, str] | None, labels: Mapping[str, str]) -> dict[str, str]:
    """Workload attributes knowable from the pod alone (the API source resolves more)."""
    if owner is None:
        return {}
    kind, name = owner
    if kind == "ReplicaSet":
        out = {"k8s.replicaset.name": name}
        pth = labels.get("pod-template-hash")
        if pth and name.endswith("-" + pth):
            out["k8s.deployment.name"] = name[: -len(pth) - 1]
        return out
    attr = {"StatefulSet": "k8s.statefulset.name", "DaemonSet": "k8s.daemonset.name", "Job": "k8s.job.name"}.get(kind)
    return {attr: name} if attr else {}


def workload_from_owner_object(kind: str, name: str, owner_obj: Mapping[str, Any]) -> dict[str, str]:
    """Workload attributes of a pod controlled by ``kind``/``name``, given that owner object
    as the API returned it (its own controller names the Deployment or CronJob)."""
    parent = controller_of(owner_obj)
    if kind == "ReplicaSet":
        out = {"k8s.replicaset.name": name}
        if parent is not None and parent[0] == "Deployment":
            out["k8s.deployment.name"] = parent[1]
        return out
    if kind == "Job":
        out = {"k8s.job.name": name}
        if parent is not None and parent[0] == "CronJob":
            out["k8s.cronjob.name"] = parent[1]
        return out
    attr = DIRECT.get(kind)
    return {attr: name} if attr else {}
