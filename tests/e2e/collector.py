"""Build and run the real OpenTelemetry Collector (``otelcol-podnet``) in e2e tests.

The collector is built from ``tests/e2e/infra/otelcol-builder.yaml`` by
``tests/e2e/infra/build-otelcol.sh`` and cached (see that script).

Overriding the shipped configs (collector-config/*.yaml) in tests
-----------------------------------------------------------------
Both mechanisms below were checked against the pinned collector (v0.161.0);
see test_collector_configs.py for their use.

* Several ``--config`` files are merged in the order given. Maps are merged
  recursively (later files win per key, and may add new components); lists are
  replaced whole, never appended. So an extra file can add an exporter and
  then must restate the complete list, e.g.
  ``service: {pipelines: {metrics: {exporters: [file, prometheus]}}}``.
  YAML is a superset of JSON, so such a file can be written with ``json.dumps``
  (no quoting worries for paths); the ``file:`` scheme is implied for plain
  paths.

* ``--set=KEY=VALUE`` is applied after all ``--config`` files. KEY is a path
  with ``.`` (or ``::``) between levels; VALUE is parsed as YAML, so
  ``--set=service.pipelines.metrics.processors=[memory_limiter,batch]``
  replaces the processor list (this is how the tests drop ``k8s_attributes``,
  which needs a Kubernetes API, from the gateway pipeline), and
  ``--set=exporters.prometheus.endpoint=127.0.0.1:PORT`` or
  ``--set=receivers.otlp.protocols.http.endpoint=127.0.0.1:PORT`` move
  listeners to free loopback ports. A ``--set`` may also create a component
  that is not in the file (maps are joined). Limits: a key segment cannot
  contain ``.`` and a value is YAML (quote it if it contains ``: `` or ``#``).
  Internally each ``--set`` becomes a ``yaml:`` config URI, which is why the
  builder manifest includes the yamlprovider.

* Components that are defined but used by no pipeline are still validated
  (so env vars they reference must be set to something valid) but are not
  started: the gateway's ``k8s_attributes`` and ``otlp_http/vendor`` stay
  harmless in tests once they are out of the pipeline. Left in the pipeline
  without a Kubernetes API, ``k8s_attributes`` makes the collector exit at
  start ("Could not initialize kube client"); ``validate`` does not need an API.

* The collector's own telemetry listens on 127.0.0.1:8888 by default; tests
  turn it off with ``--set=service.telemetry.metrics.level=none`` so runs do
  not collide on that port (``SELF_TELEMETRY_OFF``).

``otelcol-podnet print-config --config=... --set=...`` prints the merged result
(with secrets redacted), handy when an override does not do what you expect.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "tests" / "e2e" / "infra" / "build-otelcol.sh"
CONFIG_DIR = REPO_ROOT / "collector-config"

# --set that disables the collector's self-metrics endpoint (127.0.0.1:8888).
SELF_TELEMETRY_OFF = "service.telemetry.metrics.level=none"

_TERM_GRACE_SECONDS = 10.0


class CollectorError(RuntimeError):
    """Building, validating or starting the collector failed."""


def build_otelcol(timeout: float | None = 3600.0) -> Path:
    """Build (or reuse the cached) otelcol-podnet and return the binary's path.

    The first build downloads modules and compiles for several minutes; later
    calls return at once. Raises CollectorError carrying the script's stderr.
    """
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise CollectorError(f"{BUILD_SCRIPT} failed with exit code {proc.returncode}:\n{proc.stderr}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if not lines:
        raise CollectorError(f"{BUILD_SCRIPT} printed no binary path:\n{proc.stderr}")
    binary = Path(lines[-1].strip())
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise CollectorError(f"{BUILD_SCRIPT} reported {binary}, which is not an executable")
    return binary


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def collector_args(binary: Path, configs: Sequence[Path], sets: Sequence[str]) -> list[str]:
    """Command-line arguments shared by running and validating."""
    return [
        str(binary),
        *(f"--config={Path(c).resolve()}" for c in configs),
        *(f"--set={s}" for s in sets),
    ]


def validate_config(
    binary: Path,
    configs: Sequence[Path],
    sets: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``otelcol-podnet validate``; the result's returncode/stderr tell the outcome."""
    args = collector_args(binary, configs, sets)
    return subprocess.run(
        [args[0], "validate", *args[1:]],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=_merged_env(env),
        timeout=timeout,
        check=False,
    )


@contextlib.contextmanager
def run_collector(
    binary: Path,
    configs: list[Path],
    sets: list[str],
    workdir: Path,
    ready_port: int,
    timeout: float = 30,
    env: Mapping[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run the collector until the ``with`` block ends.

    Ready means 127.0.0.1:``ready_port`` accepts TCP connections; use a
    receiver port, since receivers start after processors and exporters. The
    collector's output goes to ``workdir/collector.log``, which is quoted in the
    error if the collector dies or never gets ready. On exit (also when the body
    raised) the process gets SIGTERM, then SIGKILL after 10 s. ``env`` entries
    are added to the current environment.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "collector.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            collector_args(binary, configs, sets),
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_merged_env(env),
        )
    try:
        _wait_ready(proc, ready_port, timeout, log_path)
        yield proc
    finally:
        _stop(proc)


def _merged_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    if extra:
        env.update(extra)
    return env


def _wait_ready(proc: subprocess.Popen[bytes], port: int, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while True:
        code = proc.poll()
        if code is not None:
            raise CollectorError(
                f"collector exited with code {code} before 127.0.0.1:{port} was ready:\n" + _tail(log_path)
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() >= deadline:
            raise CollectorError(
                f"collector did not listen on 127.0.0.1:{port} within {timeout} s:\n" + _tail(log_path)
            )
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=_TERM_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _tail(path: Path, max_chars: int = 8000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return text[-max_chars:]
