"""Owner resolution: which workload a pod belongs to, from its controlling owner reference
and, for a ReplicaSet or a Job, that owner's own controller (a Deployment, a CronJob).

Functions over objects as the API returns them (plain dicts), and :class:`OwnerResolver`,
which caches what one lookup per owner found. Fetching an owner object is the Kubernetes
source's job (otel_podnet.kube, the only module that imports ``kubernetes``), handed in as a
function.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

from .log import RateLimited

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


class OwnerLookupError(Exception):
    """Fetching an owner object failed: ``status`` is the API's HTTP status (403, 404, 500...)
    or None when the API was not reached; ``detail`` describes it for the log and ``message``
    is the API Status object's message, if any."""

    def __init__(self, status: int | None, detail: str, message: str = "") -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.message = message


class OwnerResolver:
    """Workload attributes of pods by their controlling owner.

    A StatefulSet or DaemonSet owner names itself; a ReplicaSet or Job owner is fetched once
    (``fetch(kind, namespace, name)``, raising :class:`OwnerLookupError`) for its own
    controller and cached. A 403 or 404 falls back to what the pod's labels tell, with one
    warning per kind and status, and is cached too. Any other failure may pass: labels only,
    not cached, and no lookups for ``pause`` seconds (a pod burst must not wait on a
    struggling API)."""

    def __init__(
        self,
        fetch: Callable[[str, str, str], Mapping[str, Any]],
        logger: logging.Logger,
        rbac_hint: str,
        pause: float = 30.0,
    ) -> None:
        self._fetch = fetch
        self._logger = logger
        self._rbac_hint = rbac_hint
        self._pause = pause
        self.cache: dict[tuple[str, str, str], dict[str, str]] = {}
        self.pause_until = 0.0
        self._warned: set[tuple[str, int]] = set()
        self._trouble = RateLimited(logger, 60.0)

    def workload(self, namespace: str, owner: tuple[str, str], labels: Mapping[str, str]) -> dict[str, str]:
        kind, name = owner
        if kind not in LOOKED_UP:
            attr = DIRECT.get(kind)
            return {attr: name} if attr else workload_from_owner(owner, labels)
        key = (namespace, kind, name)
        cached = self.cache.get(key)
        if cached is not None:
            return dict(cached)
        if time.monotonic() < self.pause_until:
            return workload_from_owner(owner, labels)
        try:
            result = workload_from_owner_object(kind, name, self._fetch(kind, namespace, name))
        except OwnerLookupError as exc:
            if exc.status not in (403, 404):
                self.pause_until = time.monotonic() + self._pause
                self._trouble.log(
                    logging.WARNING,
                    "cannot resolve the workload of %s %s (%s); using the pod's labels for now",
                    kind,
                    name,
                    exc.detail,
                )
                return workload_from_owner(owner, labels)
            self._warn_once(kind, namespace, name, exc.status, exc.message)
            result = workload_from_owner(owner, labels)
        self.cache[key] = result
        return dict(result)

    def prune(self, in_use: Collection[tuple[str, str, str]], slack: int = 256) -> None:
        """Forget owners no pod uses once the cache holds ``slack`` more than are in use."""
        if len(self.cache) <= len(in_use) + slack:
            return
        self.cache = {k: v for k, v in self.cache.items() if k in in_use}

    def _warn_once(self, kind: str, namespace: str, name: str, status: int, message: str) -> None:
        if (kind, status) in self._warned:
            return
        self._warned.add((kind, status))
        resource = LOOKED_UP[kind]
        if status == 403:
            self._logger.warning(
                "cannot get %s (403 Forbidden: %s): workload names of pods owned by a %s come from their labels only; "
                "grant get on %s (%s)",
                resource,
                message,
                kind,
                resource,
                self._rbac_hint,
            )
        else:
            self._logger.warning(
                "%s %s/%s not found (404): workload names of its pods come from their labels only "
                "(further %s not found are not reported)",
                kind,
                namespace,
                name,
                resource,
            )
