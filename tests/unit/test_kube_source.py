"""The Kubernetes API pod source without an API server: which config is chosen, owners to
workload names, the view and its events, errors and their messages, and the list/watch loop
driven by a scripted API."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3

from otel_podnet import kube, kube_source
from otel_podnet.kube import KubePodSource, backoff_delay, describe, first_list_error
from otel_podnet.kube_source import ApiTarget, choose_target, maybe_api_source
from otel_podnet.kubeapi import ApiConfig, ApiError, KubeApi
from otel_podnet.owners import workload_from_owner_object
from otel_podnet.settings import ConfigError, NotReady, Settings

SERVER = "https://10.0.0.1:6443"


def settings(kubeconfig: Path | None = None) -> Settings:
    return Settings(
        node_name="n1",
        pods_file=None,
        kubeconfig=kubeconfig,
        cgroup_root=None,
        interval=10.0,
        exporters=(),
        prometheus_address=("0.0.0.0", 9464),
        health_address=None,
        log_level="info",
        log_format="text",
    )


# -- which config -------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    token = tmp_path / "sa" / "token"
    token.parent.mkdir()
    token.write_text("t")
    home = tmp_path / "home"
    (home / ".kube").mkdir(parents=True)
    (home / ".kube" / "config").write_text("apiVersion: v1\nkind: Config\n")
    explicit = tmp_path / "explicit.kubeconfig"
    explicit.write_text("apiVersion: v1\nkind: Config\n")
    return {"token": token, "home": home, "explicit": explicit, "empty_home": tmp_path}


def test_explicit_kubeconfig_wins_even_in_cluster(files: dict[str, Path]) -> None:
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1"}
    t = choose_target(settings(files["explicit"]), env, files["home"], files["token"])
    assert t == ApiTarget(False, files["explicit"], f"kubeconfig {files['explicit']}")


def test_in_cluster_needs_the_env_and_the_token(files: dict[str, Path]) -> None:
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1"}
    t = choose_target(settings(), env, files["home"], files["token"])
    assert t is not None and t.in_cluster and t.kubeconfig is None
    assert str(files["token"]) in t.description
    # no token mounted: not in-cluster, the home kubeconfig then
    t = choose_target(settings(), env, files["home"], files["token"].with_name("missing"))
    assert t == ApiTarget(False, files["home"] / ".kube" / "config", f"kubeconfig {files['home']}/.kube/config")
    # a token but no service host: same
    t = choose_target(settings(), {}, files["home"], files["token"])
    assert t is not None and not t.in_cluster


def test_home_kubeconfig_else_host_mode(files: dict[str, Path]) -> None:
    t = choose_target(settings(), {}, files["home"], files["token"].with_name("missing"))
    assert t is not None and t.kubeconfig == files["home"] / ".kube" / "config"
    assert choose_target(settings(), {}, files["empty_home"], files["token"].with_name("missing")) is None


def test_maybe_api_source_host_mode_and_choice_logged(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(files["empty_home"]))
    monkeypatch.setattr(kube_source, "SERVICE_ACCOUNT_TOKEN", files["token"].with_name("missing"))
    assert maybe_api_source(settings()) is None

    opened: list[tuple[ApiTarget, str]] = []
    sentinel = object()

    def fake_open(target: ApiTarget, node_name: str) -> object:
        opened.append((target, node_name))
        return sentinel

    monkeypatch.setattr(kube, "open_source", fake_open)
    monkeypatch.setattr(kube_source, "SERVICE_ACCOUNT_TOKEN", files["token"])
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    with caplog.at_level(logging.INFO, logger="otel_podnet.kube_source"):
        assert maybe_api_source(settings()) is sentinel
    assert opened == [(ApiTarget(True, None, f"the in-cluster service account token {files['token']}"), "n1")]
    assert "pod inventory: Kubernetes API, in-cluster config" in caplog.text


def test_unusable_kubeconfig_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.kubeconfig"
    bad.write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
    with pytest.raises(ConfigError) as e:
        kube.load_configuration(ApiTarget(False, bad, f"kubeconfig {bad}"))
    assert str(e.value).startswith(f"kubeconfig {bad}: ") and "\n" not in str(e.value)


# -- owners to workload names ---------------------------------------------------------------


def owned_by(kind: str, name: str) -> dict[str, Any]:
    return {"metadata": {"ownerReferences": [{"kind": kind, "name": name, "controller": True}]}}


def test_workload_from_owner_object() -> None:
    assert workload_from_owner_object("ReplicaSet", "sf-5d8", owned_by("Deployment", "storefront")) == {
        "k8s.replicaset.name": "sf-5d8",
        "k8s.deployment.name": "storefront",
    }
    assert workload_from_owner_object("ReplicaSet", "bare", {"metadata": {}}) == {"k8s.replicaset.name": "bare"}
    assert workload_from_owner_object("Job", "nightly-290", owned_by("CronJob", "nightly")) == {
        "k8s.job.name": "nightly-290",
        "k8s.cronjob.name": "nightly",
    }
    assert workload_from_owner_object("Job", "once", {}) == {"k8s.job.name": "once"}
    # an owner that is not a controller names nothing
    not_controller = {"metadata": {"ownerReferences": [{"kind": "Deployment", "name": "x"}]}}
    assert workload_from_owner_object("ReplicaSet", "rs", not_controller) == {"k8s.replicaset.name": "rs"}


def make_source(**kw: Any) -> KubePodSource:
    return KubePodSource(
        KubeApi(ApiConfig(SERVER, lambda: None)), "n1", server=SERVER, credentials="kubeconfig k", **kw
    )


class OwnerApi:
    """get_owner stand-in: owner objects by (kind, namespace, name), or an exception."""

    def __init__(self, objects: dict[tuple[str, str, str], Any]) -> None:
        self.objects = objects
        self.calls: list[tuple[str, str, str]] = []

    def __call__(self, kind: str, namespace: str, name: str) -> Any:
        self.calls.append((kind, namespace, name))
        got = self.objects[(kind, namespace, name)]
        if isinstance(got, BaseException):
            raise got
        return got


def test_owner_lookups_cached_and_direct_kinds_need_none(monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_source()
    api = OwnerApi({("ReplicaSet", "shop", "sf-5d8"): owned_by("Deployment", "storefront")})
    monkeypatch.setattr(src, "get_owner", api)
    for _ in range(3):
        assert src.workload("shop", ("ReplicaSet", "sf-5d8"), {}) == {
            "k8s.replicaset.name": "sf-5d8",
            "k8s.deployment.name": "storefront",
        }
    assert src.workload("shop", ("StatefulSet", "db"), {}) == {"k8s.statefulset.name": "db"}
    assert src.workload("shop", ("DaemonSet", "fluent"), {}) == {"k8s.daemonset.name": "fluent"}
    assert src.workload("shop", ("Node", "n1"), {}) == {}  # a static pod's mirror
    assert api.calls == [("ReplicaSet", "shop", "sf-5d8")]


def test_forbidden_or_missing_owner_falls_back_to_labels_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    src = make_source()
    forbidden = ApiError(
        403, "Forbidden", json.dumps({"message": 'replicasets.apps "a-1f" is forbidden: User "u" cannot get ...'})
    )
    api = OwnerApi(
        {
            ("ReplicaSet", "shop", "a-1f"): forbidden,
            ("ReplicaSet", "shop", "b-2e"): forbidden,
            ("Job", "shop", "j"): ApiError(404, "Not Found", ""),
        }
    )
    monkeypatch.setattr(src, "get_owner", api)
    with caplog.at_level(logging.WARNING, logger="otel_podnet.kube"):
        a = src.workload("shop", ("ReplicaSet", "a-1f"), {"pod-template-hash": "1f"})
        b = src.workload("shop", ("ReplicaSet", "b-2e"), {"pod-template-hash": "2e"})
        again = src.workload("shop", ("ReplicaSet", "a-1f"), {"pod-template-hash": "1f"})
        j = src.workload("shop", ("Job", "j"), {})
    assert a == again == {"k8s.replicaset.name": "a-1f", "k8s.deployment.name": "a"}
    assert b == {"k8s.replicaset.name": "b-2e", "k8s.deployment.name": "b"}
    assert j == {"k8s.job.name": "j"}
    assert len(api.calls) == 3  # cached, failures included
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert (
        "cannot get replicasets.apps (403 Forbidden" in warnings[0] and "grant get on replicasets.apps" in warnings[0]
    )
    assert "Job shop/j not found (404)" in warnings[1]


def test_unreachable_owner_lookup_is_retried_later_not_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_source()
    api = OwnerApi({("ReplicaSet", "shop", "w-9"): urllib3.exceptions.ProtocolError("Connection aborted.")})
    monkeypatch.setattr(src, "get_owner", api)
    assert src.workload("shop", ("ReplicaSet", "w-9"), {"pod-template-hash": "9"}) == {
        "k8s.replicaset.name": "w-9",
        "k8s.deployment.name": "w",
    }
    src.workload("shop", ("ReplicaSet", "w-9"), {"pod-template-hash": "9"})
    assert len(api.calls) == 1  # paused after a failure
    src._resolver.pause_until = 0.0
    api.objects[("ReplicaSet", "shop", "w-9")] = owned_by("Deployment", "web")
    assert src.workload("shop", ("ReplicaSet", "w-9"), {})["k8s.deployment.name"] == "web"


# -- the view -------------------------------------------------------------------------------


def pod(name: str, uid: str, ip: str = "", **meta: Any) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Running"} if ip else {"phase": "Pending"}
    if ip:
        status |= {"podIP": ip, "podIPs": [{"ip": ip}]}
    return {
        "metadata": {"name": name, "namespace": "shop", "uid": uid, "resourceVersion": "1", **meta},
        "spec": {"nodeName": "n1"},
        "status": status,
    }


def event(kind: str, obj: dict[str, Any], rv: str) -> dict[str, Any]:
    obj = json.loads(json.dumps(obj))
    obj.setdefault("metadata", {})["resourceVersion"] = rv
    return {"type": kind, "object": obj}


def test_events_change_the_view_and_refresh_reports_it() -> None:
    src = make_source()
    assert src.refresh() is False and dict(src.pods()) == {}
    src.apply_event(event("ADDED", pod("a", "u-a"), "5"))
    assert src.changed.is_set()
    assert dict(src.pods()) == {}  # until refresh
    assert src.refresh() is True and not src.changed.is_set()
    held = src.pods()
    assert set(held) == {"u-a"} and held["u-a"].phase == "Pending"
    with pytest.raises(TypeError):
        held["x"] = held["u-a"]  # type: ignore[index]

    src.apply_event(event("MODIFIED", pod("a", "u-a", "10.1.0.5"), "6"))
    src.apply_event(event("ADDED", pod("b", "u-b", "10.1.0.6"), "7"))
    assert src.refresh() is True
    assert src.pods()["u-a"].ips == ("10.1.0.5",) and set(src.pods()) == {"u-a", "u-b"}
    assert set(held) == {"u-a"} and held["u-a"].ips == ()  # an old snapshot never changes

    # a status change the view does not keep (conditions, timestamps): no change
    noisy = pod("b", "u-b", "10.1.0.6")
    noisy["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    src.apply_event(event("MODIFIED", noisy, "8"))
    assert not src.changed.is_set() and src.refresh() is False

    src.apply_event({"type": "BOOKMARK", "object": {"kind": "Pod", "metadata": {"resourceVersion": "42"}}})
    assert src._rv == "42" and src.refresh() is False
    src.apply_event(event("DELETED", pod("a", "u-a", "10.1.0.5"), "43"))
    src.apply_event(event("DELETED", pod("zz", "u-zz"), "44"))  # never seen: nothing
    assert src.refresh() is True and set(src.pods()) == {"u-b"} and src._rv == "44"

    with pytest.raises(kube._Gone):
        src.apply_event({"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}})


def test_pods_with_fields_of_the_wrong_type_never_end_the_watch(caplog: pytest.LogCaptureFixture) -> None:
    src = make_source()
    src.apply_event(event("ADDED", pod("good", "u-good", "10.1.0.5"), "1"))
    bad: list[dict[str, Any]] = []
    for i, (where, key, value) in enumerate(
        [
            ("metadata", "labels", ["app"]),
            ("metadata", "annotations", "x"),
            ("status", "podIP", "10.1.0.300"),
            ("spec", "hostNetwork", "false"),
            ("metadata", "ownerReferences", 7),
        ]
    ):
        p = pod(f"bad{i}", f"u-bad{i}", "10.1.0.9")
        p[where][key] = value
        bad.append(p)
    not_a_pod = {"metadata": ["x"], "spec": 1}
    with caplog.at_level(logging.WARNING, logger="otel_podnet.kube"):
        for kind in ("ADDED", "MODIFIED", "MODIFIED"):  # status updates repeat them
            for n, p in enumerate(bad):
                src.apply_event(event(kind, p, str(10 + n)))
            src.apply_event({"type": kind, "object": not_a_pod})
    assert src.refresh() is True and set(src.pods()) == {"u-good"}
    assert src._rv == "14"
    assert [r.getMessage() for r in caplog.records] == [
        "the API: pod shop/bad0 skipped: metadata.labels: expected a mapping, got list",
        "the API: pod shop/bad1 skipped: metadata.annotations: expected a mapping, got str",
        "the API: pod shop/bad2 skipped: status.podIP: '10.1.0.300' is not an IP address",
        "the API: pod shop/bad3 skipped: spec.hostNetwork: expected true or false, got 'false'",
        "the API: pod shop/bad4 skipped: metadata.ownerReferences: expected a list, got int",
        "the API: pod ?/? skipped: pod.metadata: expected a mapping, got list",
    ]
    # the watch goes on: the next update of a good pod is taken
    src.apply_event(event("MODIFIED", pod("good", "u-good", "10.1.0.6"), "20"))
    assert src.refresh() is True and src.pods()["u-good"].ips == ("10.1.0.6",)


def test_relist_replaces_the_view_at_once(caplog: pytest.LogCaptureFixture) -> None:
    src = make_source()
    for p in (pod("a", "u-a", "10.0.0.1"), pod("b", "u-b", "10.0.0.2"), pod("c", "u-c", "10.0.0.3")):
        src.apply_event(event("ADDED", p, "1"))
    src.refresh()
    new = {}
    for p in (pod("a", "u-a", "10.0.0.1"), pod("b", "u-b", "10.0.0.9"), pod("d", "u-d", "10.0.0.4")):
        info = src._convert(p)
        assert info is not None
        new[info.uid] = info
    with caplog.at_level(logging.INFO, logger="otel_podnet.kube"):
        assert src.replace_all(new, "410 Gone") is True
    assert "4 pods" not in caplog.text and "3 pods, 1 added, 1 removed, 1 updated" in caplog.text
    assert src.refresh() is True and set(src.pods()) == {"u-a", "u-b", "u-d"}
    assert src.replace_all(dict(new), "again") is False and src.refresh() is False


# -- errors ---------------------------------------------------------------------------------


def api_error(status: int, message: str | None) -> ApiError:
    body = json.dumps({"kind": "Status", "message": message}) if message is not None else ""
    return ApiError(status, {401: "Unauthorized", 403: "Forbidden"}.get(status, "x"), body)


def test_first_list_errors_name_the_credentials_and_permission() -> None:
    e401 = first_list_error(api_error(401, "Unauthorized"), SERVER, "kubeconfig /k")
    assert str(e401) == f"Kubernetes API at {SERVER}: 401 Unauthorized: the credentials of kubeconfig /k were rejected"
    msg = (
        'pods is forbidden: User "system:serviceaccount:x:y" cannot list resource "pods" in API group "" '
        "at the cluster scope"
    )
    e403 = first_list_error(api_error(403, msg), SERVER, "kubeconfig /k")
    assert str(e403) == (
        f"Kubernetes API at {SERVER}: 403 Forbidden: system:serviceaccount:x:y cannot list pods at the cluster "
        "scope; grant get/list/watch on pods (deploy/otel-podnet.yaml)"
    )
    e403 = first_list_error(api_error(403, None), SERVER, "kubeconfig /k")
    assert "403 Forbidden: the credentials of kubeconfig /k cannot list pods" in str(e403)
    assert first_list_error(api_error(500, "etcd"), SERVER, "k") is None


def test_describe_is_one_short_line() -> None:
    conn = urllib3.exceptions.NewConnectionError(
        object(),
        "HTTPSConnection(host='x', port=1): Failed to establish a new connection: [Errno 111] Connection refused",
    )
    assert describe(urllib3.exceptions.MaxRetryError(None, "/api/v1/pods", conn)) == "[Errno 111] Connection refused"
    assert describe(api_error(500, "etcdserver: request timed out")) == "HTTP 500: etcdserver: request timed out"
    assert describe(urllib3.exceptions.ProtocolError("Response ended prematurely")) == "Response ended prematurely"


def test_backoff_is_exponential_jittered_and_capped() -> None:
    assert backoff_delay(0) == 0.0
    assert [backoff_delay(n, rand=lambda: 1.0) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert [backoff_delay(n, rand=lambda: 0.0) for n in (1, 2, 3)] == [0.25, 0.5, 1.0]
    assert backoff_delay(50, rand=lambda: 1.0) == 30.0 and backoff_delay(50, rand=lambda: 0.0) == 15.0


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def test_unreachable_api_at_start_gives_up_after_the_timeout(tmp_path: Path) -> None:
    cfg = ApiConfig(f"https://127.0.0.1:{closed_port()}", lambda: None)
    src = KubePodSource(KubeApi(cfg), "n1", server=cfg.host, credentials="kubeconfig k", first_list_timeout=1.5)
    t0 = time.monotonic()
    with pytest.raises(NotReady) as e:
        src.start()
    assert 1.5 <= time.monotonic() - t0 < 5
    assert (
        str(e.value) == f"Kubernetes API at {cfg.host} unreachable: [Errno 111] Connection refused (retried for 1.5 s)"
    )
    src.close()


# -- the list/watch loop against a scripted API ---------------------------------------------


class Resp:
    """An API answer: a body, or a watch stream of events that, when ``hold``, stays open
    until shut down (as a live watch does)."""

    def __init__(
        self,
        body: Any = None,
        events: tuple[dict[str, Any], ...] = (),
        hold: bool = False,
        gate: threading.Event | None = None,
    ) -> None:
        self.body = body
        self.events = events
        self.hold = hold
        self.gate = gate
        self.closed = threading.Event()

    def stream(self, amt: int | None = None, decode_content: bool = True) -> Iterator[bytes]:
        if self.gate is not None:
            self.gate.wait(10)
        for e in self.events:
            line = json.dumps(e).encode() + b"\n"
            yield line[:7]  # events split across chunks, too
            yield line[7:]
        if self.hold:
            self.closed.wait(10)

    def release_conn(self) -> None:
        pass

    def shutdown(self) -> None:
        self.closed.set()


class ScriptedApi:
    """KubeApi stand-in: list (get) and watch answers in order (an exception is raised)."""

    def __init__(self, lists: list[Any], watches: list[Any]) -> None:
        self.lists, self.watches = lists, watches
        self.calls: list[dict[str, Any]] = []

    def _answer(self, path: str, query: Any, watch: bool) -> Any:
        assert path == "/api/v1/pods"
        self.calls.append({**query, "watch": watch})
        queue = self.watches if watch else self.lists
        got = queue.pop(0) if queue else Resp(hold=True)
        if isinstance(got, BaseException):
            raise got
        return got

    def get(self, path: str, query: Any = None, *, timeout: Any) -> Any:
        return self._answer(path, query, False).body

    def watch(self, path: str, query: Any, *, timeout: Any) -> Any:
        return self._answer(path, query, True)

    def close(self) -> None:
        pass


def pod_list(rv: str, *pods: dict[str, Any]) -> Resp:
    return Resp({"kind": "PodList", "metadata": {"resourceVersion": rv}, "items": list(pods)})


def wait_until(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_list_watch_410_relist_resumes_from_the_new_version(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    core = ScriptedApi(
        lists=[
            pod_list("10", pod("a", "u-a", "10.0.0.1"), pod("b", "u-b", "10.0.0.2")),
            pod_list("30", pod("a", "u-a", "10.0.0.7"), pod("c", "u-c", "10.0.0.3"), pod("d", "u-d", "10.0.0.4")),
        ],
        watches=[
            Resp(
                events=(
                    event("ADDED", pod("c", "u-c", "10.0.0.3"), "11"),
                    event("DELETED", pod("b", "u-b", "10.0.0.2"), "12"),
                    {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "20"}}},
                    {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old resource version"}},
                ),
                gate=gate,
            ),
        ],
    )
    src = make_source()
    monkeypatch.setattr(src, "_api", core)
    monkeypatch.setattr(src, "_check_watch_allowed", lambda: None)
    src.start()
    try:
        assert src.refresh() and set(src.pods()) == {"u-a", "u-b"}
        gate.set()
        wait_until(lambda: len(core.calls) == 4)  # list, watch, list, watch (held open)
        assert src.refresh() and set(src.pods()) == {"u-a", "u-c", "u-d"}
        assert src.pods()["u-a"].ips == ("10.0.0.7",)
    finally:
        src.close()
    first_watch, second_watch = core.calls[1], core.calls[3]
    for w in (first_watch, second_watch):
        assert w["watch"] is True and w["allowWatchBookmarks"] is True
        assert w["fieldSelector"] == "spec.nodeName=n1"
    assert first_watch["resourceVersion"] == "10" and second_watch["resourceVersion"] == "30"
    assert core.calls[0]["fieldSelector"] == core.calls[2]["fieldSelector"] == "spec.nodeName=n1"


def test_api_down_keeps_the_view_and_retries_with_backoff(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    refused = urllib3.exceptions.MaxRetryError(
        None, "/api/v1/pods", urllib3.exceptions.NewConnectionError(object(), "[Errno 111] Connection refused")
    )
    denied = api_error(403, 'pods is forbidden: User "u" cannot watch resource "pods"')
    core = ScriptedApi(
        lists=[pod_list("10", pod("a", "u-a", "10.0.0.1"))],
        watches=[
            refused,
            refused,
            denied,
            Resp(events=(event("ADDED", pod("e", "u-e", "10.0.0.5"), "11"),), hold=True),
        ],
    )
    src = make_source(backoff_cap=0.05)
    monkeypatch.setattr(src, "_api", core)
    monkeypatch.setattr(src, "_check_watch_allowed", lambda: None)
    with caplog.at_level(logging.INFO, logger="otel_podnet.kube"):
        src.start()
        try:
            src.refresh()
            wait_until(lambda: "u-e" in src._pods)
            assert src.refresh() and set(src.pods()) == {"u-a", "u-e"}  # the view survived, then moved on
        finally:
            src.close()
    assert [c["resourceVersion"] for c in core.calls[1:5]] == ["10"] * 4  # resumed, never relisted
    trouble = [(r.levelno, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(trouble) == 2  # rate-limited: the second refusal is counted, not logged
    assert trouble[0][0] == logging.WARNING
    assert "unreachable ([Errno 111] Connection refused); keeping the last view of 1 pods" in trouble[0][1]
    assert trouble[1][0] == logging.ERROR
    assert "refused to watch the pods of node n1 with the credentials of kubeconfig k (HTTP 403: " in trouble[1][1]
    assert "reachable again" in caplog.text
