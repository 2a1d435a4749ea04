"""A real Prometheus (Debian's ``prometheus`` package) for e2e tests: it scrapes the given
targets on loopback every 5 s (a loaded machine can take seconds to answer), evaluates
the given rule files every second, keeps its data in a directory of its own, and is
stopped and its data removed when the block ends."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .collector import free_port

PROMETHEUS = shutil.which("prometheus")


class PrometheusError(RuntimeError):
    pass


@dataclass
class Prometheus:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=30) as r:
            body = json.loads(r.read().decode())
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str, at: float) -> list[tuple[dict[str, str], float]]:
        """An instant query at unix time ``at``: (labels without __name__, value) per series."""
        data = self.api("query", query=expr, time=f"{at:.3f}")
        assert data["resultType"] == "vector", data
        out = []
        for r in data["result"]:
            labels = {k: v for k, v in r["metric"].items() if k != "__name__"}
            out.append((labels, float(r["value"][1])))
        return out

    def targets_up(self) -> dict[str, str]:
        return {t["labels"]["job"]: t["health"] for t in self.api("targets")["activeTargets"]}


@contextlib.contextmanager
def run_prometheus(workdir: Path, targets: Mapping[str, str], rule_files: Sequence[Path] = ()) -> Iterator[Prometheus]:
    """``targets``: job name -> HOST:PORT of its /metrics."""
    if PROMETHEUS is None:
        raise PrometheusError("prometheus not installed (Debian package prometheus; `make test` installs it)")
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "data"
    config = {
        "global": {"scrape_interval": "5s", "scrape_timeout": "5s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [t]}]} for job, t in targets.items()],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = workdir / "prometheus.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={data}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise PrometheusError(f"prometheus exited {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise PrometheusError(f"prometheus not ready on 127.0.0.1:{port}:\n{log.read_text()[-4000:]}")
            time.sleep(0.2)
        yield Prometheus(port, proc, log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(data, ignore_errors=True)
