"""Options and environment: defaults, precedence, one-line errors naming the value."""

from __future__ import annotations

from pathlib import Path

import pytest

from otel_podnet.cli import main
from otel_podnet.settings import ConfigError, build


def make(env: dict[str, str] | None = None, **kw: object) -> object:
    args: dict[str, object] = dict(
        node_name=None,
        pods_file=None,
        kubeconfig=None,
        cgroup_root=None,
        interval=None,
        exporters=None,
        prometheus_address=None,
        health_address=None,
        log_level="info",
        log_format="text",
    )
    args.update(kw)
    return build(env=env or {}, **args)  # type: ignore[arg-type]


def test_defaults_and_env() -> None:
    s = make({"NODE_NAME": "n7", "OTEL_METRIC_EXPORT_INTERVAL": "2500", "OTEL_METRICS_EXPORTER": "console,prometheus"})
    assert (s.node_name, s.interval, s.exporters) == ("n7", 2.5, ("console", "prometheus"))  # type: ignore[attr-defined]
    d = make()
    assert (d.interval, d.exporters, d.prometheus_address) == (10.0, ("otlp",), ("0.0.0.0", 9464))  # type: ignore[attr-defined]
    assert make({"OTEL_METRICS_EXPORTER": "none"}).exporters == ()  # type: ignore[attr-defined]


def test_options_win_over_env() -> None:
    s = make({"OTEL_METRIC_EXPORT_INTERVAL": "2500"}, interval="1", exporters=["console"])
    assert (s.interval, s.exporters) == (1.0, ("console",))  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("kw", "env", "match"),
    [
        ({"interval": "fast"}, {}, "--interval 'fast': expected a number of seconds"),
        ({"interval": "0"}, {}, "expected an interval between"),
        ({}, {"OTEL_METRIC_EXPORT_INTERVAL": "10s"}, "OTEL_METRIC_EXPORT_INTERVAL '10s': expected milliseconds"),
        ({"exporters": ["otlp", "zipkin"]}, {}, "--exporter 'zipkin': expected one of otlp, prometheus, console, none"),
        ({"prometheus_address": "9464"}, {}, "--prometheus-address '9464': expected HOST:PORT"),
        ({"pods_file": "/nonexistent/pods.yaml"}, {}, "--pods-file '/nonexistent/pods.yaml': expected an existing"),
        ({"log_level": "loud"}, {}, "--log-level 'loud'"),
    ],
)
def test_bad_values(kw: dict[str, object], env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make(env, **kw)


def test_cli_exit_2_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["run", "--interval", "soon", "--exporter", "console"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--interval 'soon'" in err
    with pytest.raises(SystemExit) as exc:
        main(["run", "--no-such-option"])
    assert exc.value.code == 2
