from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class PeerWorkload:
    namespace: str
    workload: str  # Deployment/StatefulSet/DaemonSet/Job/CronJob name, else the pod name
    kind: str  # "deployment"|"statefulset"|"daemonset"|"job"|"cronjob"|"pod"


@dataclass(frozen=True)
class ServiceRef:
    namespace: str
    name: str
    backends: tuple[PeerWorkload, ...]  # distinct workloads of its ready endpoints (may be empty)


class PeerDirectory(Protocol):
    def pod_by_ip(self, ip: str) -> PeerWorkload | None: ...
    def service_by_ip(self, ip: str) -> ServiceRef | None: ...  # ClusterIPs
