"""deploy/: the static manifest and the Helm chart against a real kube-apiserver.

- every object passes server-side dry-run with strict field validation;
- the chart lints and renders the same agent as the static manifest;
- the agent's ServiceAccount, as bound by the manifests, can read pods and the
  owners it resolves, and nothing else (real requests with a TokenRequest
  token, and SelfSubjectAccessReview).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.apiserver import ApiServer, run_apiserver

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "deploy" / "otel-podnet.yaml"
CHART = REPO / "deploy" / "helm" / "otel-podnet"
IMAGE = "ghcr.io/otel-podnet/otel-podnet:0.1.0"
CAPABILITIES = {"BPF", "PERFMON", "NET_ADMIN"}
IMAGE_UID = 65532
CHART_NS = "otel-podnet-chart"
CHART_RELEASE = "e2e"

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    with run_apiserver(tmp_path_factory.mktemp("kube")) as server:
        yield server


def _load(text: str) -> list[Obj]:
    return [d for d in yaml.safe_load_all(text) if d]


def _manifest() -> list[Obj]:
    return _load(MANIFEST.read_text())


def _helm(api: ApiServer, *args: str) -> str:
    proc = _helm_run(api, *args)
    assert proc.returncode == 0, f"helm {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _helm_run(api: ApiServer, *args: str) -> subprocess.CompletedProcess[str]:
    home = api.workdir / "helm-home"
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    return subprocess.run([str(api.helm_path), *args], capture_output=True, text=True, env=env, check=False)


def _render_chart(api: ApiServer, *set_values: str) -> list[Obj]:
    args = ["template", CHART_RELEASE, str(CHART), "--namespace", CHART_NS]
    for value in set_values:
        args += ["--set", value]
    return _load(_helm(api, *args))


def _ensure_namespace(api: ApiServer, name: str, obj: Obj | None = None) -> None:
    """Create a namespace for real unless it exists; ``obj`` is the manifest's own."""
    status, _ = api.request("GET", f"/api/v1/namespaces/{name}")
    if status != 404:
        return
    if obj is None:
        labels = {f"pod-security.kubernetes.io/{m}": "privileged" for m in ("enforce", "warn")}
        api.create_namespace(name, labels=labels)
    else:
        api.create_object(obj, dry_run=True)
        api.create_object(obj)
        api.create_service_account(name, "default", exist_ok=True)


def _dry_run_all(api: ApiServer, objs: Sequence[Obj]) -> list[Obj]:
    """Dry-run every object. Namespaces are created for real (after their own dry
    run): namespaced objects cannot be dry-run into a namespace that does not exist."""
    for obj in objs:
        if obj["kind"] == "Namespace":
            _ensure_namespace(api, obj["metadata"]["name"], obj)
    return [api.create_object(obj, dry_run=True) for obj in objs if obj["kind"] != "Namespace"]


def _by_kind(objs: Sequence[Obj], kind: str) -> Obj:
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


# --------------------------------------------------------------------------
# Server-side dry-run
# --------------------------------------------------------------------------


def test_manifest_kinds() -> None:
    kinds = sorted(o["kind"] for o in _manifest())
    assert kinds == sorted(["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet"])


def test_manifest_server_dry_run(api: ApiServer) -> None:
    results = _dry_run_all(api, _manifest())
    ds = _by_kind(results, "DaemonSet")
    # A dry run persists nothing.
    status, _ = api.request("GET", "/apis/apps/v1/namespaces/otel-podnet/daemonsets/otel-podnet")
    assert status == 404
    _check_agent_pod_spec(ds["spec"]["template"]["spec"])


def test_manifest_kubectl_apply_dry_run(api: ApiServer) -> None:
    _ensure_namespace(api, "otel-podnet", _by_kind(_manifest(), "Namespace"))
    out = api.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", str(MANIFEST)).stdout
    assert "daemonset.apps/otel-podnet created (server dry run)" in out


def test_helm_lint(api: ApiServer) -> None:
    out = _helm(api, "lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize(
    "set_values",
    [
        (),
        ("prometheus.enabled=true", "clusterName=prod", "otlp.headers=authorization=Bearer x"),
        ("serviceAccount.create=false", "rbac.create=false", "priorityClassName="),
    ],
    ids=["defaults", "all-options", "no-rbac"],
)
def test_chart_server_dry_run(api: ApiServer, set_values: tuple[str, ...]) -> None:
    _ensure_namespace(api, CHART_NS)
    objs = _render_chart(api, *set_values)
    assert all(o["kind"] != "Namespace" for o in objs)
    results = _dry_run_all(api, objs)
    _check_agent_pod_spec(_by_kind(results, "DaemonSet")["spec"]["template"]["spec"])


def test_chart_matches_static_manifest(api: ApiServer) -> None:
    static = _manifest()
    chart = _render_chart(api)
    assert _by_kind(chart, "ClusterRole")["rules"] == _by_kind(static, "ClusterRole")["rules"]

    def pod(objs: Sequence[Obj]) -> Obj:
        return dict(_by_kind(objs, "DaemonSet")["spec"]["template"]["spec"])

    s, c = pod(static), pod(chart)
    for key in (
        "hostNetwork",
        "hostPID",
        "priorityClassName",
        "tolerations",
        "volumes",
        "nodeSelector",
        "terminationGracePeriodSeconds",
    ):
        assert c.get(key) == s.get(key), key
    sc, cc = s["containers"][0], c["containers"][0]
    for key in ("image", "securityContext", "resources", "livenessProbe", "readinessProbe", "volumeMounts", "ports"):
        assert cc.get(key) == sc.get(key), key
    assert cc["env"][:3] == sc["env"][:3]
    assert set(sc["args"]) <= set(cc["args"])


# --------------------------------------------------------------------------
# What the agent's pod spec must be
# --------------------------------------------------------------------------


def _check_agent_pod_spec(spec: Obj) -> None:
    assert spec.get("hostNetwork", False) is False
    assert spec.get("hostPID", False) is False
    assert spec["tolerations"] == [{"operator": "Exists"}]
    [container] = spec["containers"]
    assert container["image"] == IMAGE
    assert "--health-address=0.0.0.0:9465" in container["args"]
    sec = container["securityContext"]
    assert sec.get("privileged", False) is False
    # Non-root, the capabilities kept through exec by the image's file capabilities
    # (see the Dockerfile), no_new_privs on.
    assert sec["allowPrivilegeEscalation"] is False
    assert sec["readOnlyRootFilesystem"] is True
    assert sec["runAsUser"] == IMAGE_UID
    assert sec["runAsNonRoot"] is True
    assert sec["capabilities"]["drop"] == ["ALL"]
    assert set(sec["capabilities"]["add"]) == CAPABILITIES
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"].startswith("http")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["health"] == 9465
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["limits"]["memory"]
    host_paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    assert host_paths == {"host-cgroup": "/sys/fs/cgroup"}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["host-cgroup"]["readOnly"] is True


def test_image_user_and_file_capabilities_match_the_manifests() -> None:
    """The Dockerfile's USER is the manifests' runAsUser, and the file capabilities it sets
    on the agent's interpreter are exactly the capabilities the manifests add."""
    text = (REPO / "Dockerfile").read_text()
    assert re.findall(r"^USER (\S+)$", text, re.M)[-1] == f"{IMAGE_UID}:{IMAGE_UID}"
    [setcap] = re.findall(r"setcap (\S+)=p /opt/otel-podnet/bin/python3", text)
    assert {c.removeprefix("cap_").upper() for c in setcap.split(",")} == CAPABILITIES


def test_every_capability_and_host_mount_is_explained() -> None:
    """Each added capability and each host mount has a comment line just above it."""
    for path in (MANIFEST, CHART / "templates" / "daemonset.yaml"):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            capability = re.fullmatch(r"\s*- (BPF|PERFMON|NET_ADMIN|SYS_RESOURCE)", line)
            host_mount = re.fullmatch(r"\s*- name: host-\S+", line) and "mountPath" in lines[i + 1]
            if capability or host_mount:
                assert lines[i - 1].strip().startswith("#"), f"{path.name}:{i + 1}: {line.strip()}"


# --------------------------------------------------------------------------
# RBAC of the agent's ServiceAccount
# --------------------------------------------------------------------------

EXPECTED_RULES = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["services"], "verbs": ["list", "watch"]},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
    {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["get"]},
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get"]},
]


def test_cluster_role_grants_nothing_else() -> None:
    assert _by_kind(_manifest(), "ClusterRole")["rules"] == EXPECTED_RULES


def test_every_rbac_rule_is_explained() -> None:
    """Each rule of the ClusterRole has a comment line just above it."""
    for path in (MANIFEST, CHART / "templates" / "clusterrole.yaml"):
        lines = path.read_text().splitlines()
        rules = [i for i, line in enumerate(lines) if re.fullmatch(r"\s*- apiGroups: .*", line)]
        assert len(rules) == len(EXPECTED_RULES), path.name
        for i in rules:
            assert lines[i - 1].strip().startswith("#"), f"{path.name}:{i + 1}: {lines[i].strip()}"


def _install_rbac(api: ApiServer, objs: Sequence[Obj]) -> tuple[str, str]:
    """Create the ServiceAccount, ClusterRole and binding for real; return (ns, sa)."""
    for obj in objs:
        if obj["kind"] == "Namespace":
            _ensure_namespace(api, obj["metadata"]["name"], obj)
    sa = _by_kind(objs, "ServiceAccount")
    for kind in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding"):
        obj = _by_kind(objs, kind)
        path = api.resource_path(obj["apiVersion"], kind, obj["metadata"].get("namespace"))
        status, body = api.request("POST", path, obj)
        assert status in (201, 409), body
    return str(sa["metadata"]["namespace"]), str(sa["metadata"]["name"])


@pytest.fixture(scope="module")
def workload(api: ApiServer) -> Obj:
    """A pod, ReplicaSet and Job to read (no controllers run, so nothing reacts)."""
    ns = "rbac-target"
    api.create_namespace(ns)
    api.create_pod(ns, "app-0", node_name="node-a")
    labels = {"app": "rbac"}
    containers = [{"name": "app", "image": "registry.invalid/app:1"}]
    template: Obj = {"metadata": {"labels": labels}, "spec": {"containers": containers}}
    api.create_object(
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {"name": "app-rs", "namespace": ns},
            "spec": {"replicas": 0, "selector": {"matchLabels": labels}, "template": template},
        }
    )
    job_template: Obj = {"metadata": {"labels": labels}, "spec": {"containers": containers, "restartPolicy": "Never"}}
    api.create_object(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "app-job", "namespace": ns},
            "spec": {"suspend": True, "template": job_template},
        }
    )
    return {"ns": ns}


@pytest.mark.parametrize("source", ["manifest", "chart"])
def test_agent_service_account_rbac(api: ApiServer, workload: Obj, source: str) -> None:
    objs = _manifest() if source == "manifest" else _render_chart(api)
    if source == "chart":
        _ensure_namespace(api, CHART_NS)
    sa_ns, sa_name = _install_rbac(api, objs)
    token = api.create_sa_token(sa_ns, sa_name)
    ns = workload["ns"]

    def status_of(method: str, path: str, body: Any = None, **query: str) -> int:
        ctype = "application/merge-patch+json" if method == "PATCH" else "application/json"
        code, _ = api.request(method, path, body, token=token, query=query or None, content_type=ctype)
        return code

    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "evil"},
        "spec": {"containers": [{"name": "x", "image": "registry.invalid/x:1"}]},
    }
    patch = {"metadata": {"labels": {"pwned": "true"}}}

    # Allowed: exactly what the agent does.
    assert status_of("GET", "/api/v1/pods") == 200
    assert status_of("GET", "/api/v1/pods", fieldSelector="spec.nodeName=node-a") == 200
    assert status_of("GET", f"/api/v1/namespaces/{ns}/pods") == 200
    assert status_of("GET", f"/api/v1/namespaces/{ns}/pods/app-0") == 200
    assert status_of("GET", "/api/v1/pods", watch="1", timeoutSeconds="1") == 200
    assert status_of("GET", f"/apis/apps/v1/namespaces/{ns}/replicasets/app-rs") == 200
    assert status_of("GET", f"/apis/batch/v1/namespaces/{ns}/jobs/app-job") == 200
    # peers: the cluster's pods (above), Services and EndpointSlices, listed and watched
    assert status_of("GET", "/api/v1/pods", fieldSelector="status.podIP!=,status.phase!=Succeeded") == 200
    assert status_of("GET", "/api/v1/services") == 200
    assert status_of("GET", "/api/v1/services", watch="1", timeoutSeconds="1") == 200
    assert status_of("GET", "/apis/discovery.k8s.io/v1/endpointslices") == 200
    assert status_of("GET", "/apis/discovery.k8s.io/v1/endpointslices", watch="1", timeoutSeconds="1") == 200

    # Denied: everything else.
    forbidden = {
        "list secrets": status_of("GET", "/api/v1/secrets"),
        "list secrets in ns": status_of("GET", f"/api/v1/namespaces/{sa_ns}/secrets"),
        "create pod": status_of("POST", f"/api/v1/namespaces/{ns}/pods", pod),
        "delete pod": status_of("DELETE", f"/api/v1/namespaces/{ns}/pods/app-0"),
        "patch pod": status_of("PATCH", f"/api/v1/namespaces/{ns}/pods/app-0", patch),
        "patch pod status": status_of("PATCH", f"/api/v1/namespaces/{ns}/pods/app-0/status", patch),
        "pod exec": status_of("POST", f"/api/v1/namespaces/{ns}/pods/app-0/exec", command="id"),
        "list nodes": status_of("GET", "/api/v1/nodes"),
        "list configmaps": status_of("GET", "/api/v1/configmaps"),
        "list replicasets": status_of("GET", "/apis/apps/v1/replicasets"),
        "list jobs": status_of("GET", "/apis/batch/v1/jobs"),
        "get deployments": status_of("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/x"),
        "create service": status_of(
            "POST",
            f"/api/v1/namespaces/{ns}/services",
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "evil"}, "spec": {"ports": [{"port": 1}]}},
        ),
        "service proxy": status_of("GET", f"/api/v1/namespaces/{ns}/services/x/proxy/"),
        "list endpoints": status_of("GET", "/api/v1/endpoints"),
        "delete endpointslices": status_of("DELETE", f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"),
        "token request": status_of(
            "POST",
            f"/api/v1/namespaces/{sa_ns}/serviceaccounts/{sa_name}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}},
        ),
    }
    assert forbidden == dict.fromkeys(forbidden, 403)
    assert api.call("GET", f"/api/v1/namespaces/{ns}/pods/app-0")["metadata"].get("labels") is None

    # The same through SelfSubjectAccessReview.
    assert api.can_i(token, "watch", "pods")
    assert api.can_i(token, "get", "replicasets", group="apps", namespace=ns)
    for verb in ("create", "update", "patch", "delete", "deletecollection"):
        assert not api.can_i(token, verb, "pods", namespace=ns), verb
    assert not api.can_i(token, "get", "secrets", namespace=ns)
    assert not api.can_i(token, "create", "pods", namespace=ns, subresource="eviction")
    assert not api.can_i(token, "get", "pods", namespace=ns, subresource="log")
    assert not api.can_i(token, "*", "*", group="*")
    assert api.can_i(token, "watch", "services") and api.can_i(
        token, "watch", "endpointslices", group="discovery.k8s.io"
    )
    for verb in ("create", "update", "patch", "delete"):
        assert not api.can_i(token, verb, "services", namespace=ns), verb
        assert not api.can_i(token, verb, "endpointslices", group="discovery.k8s.io", namespace=ns), verb

    # And as a client of the agent would see it, through a kubeconfig.
    kubeconfig = api.kubeconfig_for_token(token)
    listed = api.kubectl("get", "pods", "-A", "-o", "name", kubeconfig=kubeconfig).stdout
    assert "pod/app-0" in listed


# --------------------------------------------------------------------------
# Prometheus Operator objects and the Grafana dashboard (off by default)
# --------------------------------------------------------------------------

RULES = REPO / "deploy" / "prometheus" / "otel-podnet-rules.yaml"
DASHBOARD = REPO / "deploy" / "dashboards" / "otel-podnet.json"
MONITORING = (
    "prometheus.enabled=true",
    "podMonitor.enabled=true",
    "serviceMonitor.enabled=true",
    "prometheusRule.enabled=true",
    "grafanaDashboard.enabled=true",
)
# CRDs of the Prometheus Operator: not on this apiserver, so checked here field by field.
OPERATOR_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}
# monitoring.coreos.com/v1 fields the chart may use (a subset of the CRDs' schemas)
MONITOR_SPEC = {"jobLabel", "selector", "namespaceSelector", "podMetricsEndpoints", "endpoints"}
ENDPOINT = {"port", "path", "interval", "relabelings"}
RELABEL = {"sourceLabels", "targetLabel", "regex", "replacement", "action", "separator"}


def test_chart_monitoring_off_by_default(api: ApiServer) -> None:
    kinds = sorted(o["kind"] for o in _render_chart(api))
    assert kinds == sorted(["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet"])


def test_chart_monitoring_server_dry_run(api: ApiServer) -> None:
    _ensure_namespace(api, CHART_NS)
    objs = _render_chart(api, *MONITORING)
    assert {o["kind"] for o in objs} >= OPERATOR_KINDS | {"Service", "ConfigMap"}
    # what the options add or change (the RBAC tests create the ServiceAccount for real)
    results = _dry_run_all(api, [o for o in objs if o["kind"] in {"Service", "ConfigMap", "DaemonSet"}])
    _check_agent_pod_spec(_by_kind(results, "DaemonSet")["spec"]["template"]["spec"])
    cm = _by_kind(results, "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["otel-podnet.json"]) == json.loads(DASHBOARD.read_text())
    svc = _by_kind(results, "Service")
    assert svc["spec"]["clusterIP"] == "None"


def test_chart_monitoring_needs_the_metrics_port(api: ApiServer) -> None:
    for kind in ("podMonitor", "serviceMonitor"):
        proc = _helm_run(api, "template", CHART_RELEASE, str(CHART), "--set", f"{kind}.enabled=true")
        assert proc.returncode != 0
        assert f"{kind}.enabled needs prometheus.enabled=true" in proc.stderr


def test_chart_prometheus_rule_is_the_checked_rules_file(api: ApiServer, tmp_path: Path) -> None:
    """The PrometheusRule carries deploy/prometheus/otel-podnet-rules.yaml verbatim: the file
    promtool checks and unit-tests (tests/unit/test_prometheus_rules.py)."""
    assert (CHART / "files" / "otel-podnet-rules.yaml").read_bytes() == RULES.read_bytes()
    assert (CHART / "files" / "otel-podnet.json").read_bytes() == DASHBOARD.read_bytes()
    rule = _by_kind(_render_chart(api, *MONITORING), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == CHART_NS
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    rendered = tmp_path / "rendered-rules.yaml"
    rendered.write_text(yaml.safe_dump(rule["spec"]))
    r = subprocess.run([promtool, "check", "rules", str(rendered)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    n = sum(len(g["rules"]) for g in rule["spec"]["groups"])
    assert f"SUCCESS: {n} rules found" in r.stdout


def _check_endpoints(endpoints: list[Obj]) -> None:
    [ep] = endpoints
    assert set(ep) <= ENDPOINT and ep["port"] == "metrics" and ep["path"] == "/metrics"
    assert re.fullmatch(r"\d+[smh]", ep["interval"])
    for r in ep["relabelings"]:
        assert set(r) <= RELABEL
    assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"} in ep["relabelings"]


def test_chart_monitors_select_the_agents(api: ApiServer) -> None:
    objs = _render_chart(api, *MONITORING)
    ds = _by_kind(objs, "DaemonSet")
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    [container] = ds["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == 9464
    assert "--prometheus-address=0.0.0.0:9464" in container["args"]

    pm = _by_kind(objs, "PodMonitor")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1" and set(pm["spec"]) <= MONITOR_SPEC
    assert pm["spec"]["selector"]["matchLabels"] == ds["spec"]["selector"]["matchLabels"]
    assert pm["spec"]["namespaceSelector"] == {"matchNames": [CHART_NS]}
    # job="otel-podnet", which PodnetAgentDown watches
    assert pod_labels[pm["spec"]["jobLabel"]] == "otel-podnet"
    _check_endpoints(pm["spec"]["podMetricsEndpoints"])

    svc, sm = _by_kind(objs, "Service"), _by_kind(objs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1" and set(sm["spec"]) <= MONITOR_SPEC
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [CHART_NS]}
    assert svc["metadata"]["labels"][sm["spec"]["jobLabel"]] == "otel-podnet"
    [port] = svc["spec"]["ports"]
    assert port["name"] == "metrics" and port["targetPort"] == "metrics"
    _check_endpoints(sm["spec"]["endpoints"])
