"""The agent's loop (otel_podnet.agent.Agent.run) with a core that counts its calls: it
sleeps until the next collection or a change of the pod source, with no periodic wake-up,
and SIGTERM ends it at once with one final export."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from otel_podnet.agent import Agent
from otel_podnet.samples import Health, Snapshot


class Source:
    def __init__(self) -> None:
        self.changed = threading.Event()


class CountingCore:
    """What Agent.run needs of otel_podnet.core.Core, counting what it is asked."""

    def __init__(self) -> None:
        self.source = Source()
        self.pods: Mapping[str, Any] = {}
        self.collections = 0
        self.resyncs = 0
        self.started = self.closed = False

    def start(self) -> None:
        self.started = True

    def collect(self) -> Snapshot:
        self.collections += 1
        return Snapshot((), Health(0, 1, 1, 0, 1, 0, 0, 0))

    def resync(self) -> None:
        self.resyncs += 1

    def failed(self, what: str, exc: Exception) -> None:
        raise AssertionError(f"{what}: {exc}")

    def close(self) -> None:
        self.closed = True


class CountingExporter:
    def __init__(self) -> None:
        self.exports = 0
        self.shut = False

    def export(self, snapshot: Snapshot, pods: Mapping[str, Any]) -> None:
        self.exports += 1

    def shutdown(self) -> None:
        self.shut = True


@pytest.fixture
def restore_signals() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def _in_main_thread(agent: Agent, actions: list[tuple[float, Any]]) -> int:
    """agent.run() here (signals reach the main thread only), ``actions`` from a thread."""

    def drive() -> None:
        for delay, action in actions:
            time.sleep(delay)
            action()

    t = threading.Thread(target=drive, daemon=True)
    t.start()
    rc = agent.run()
    t.join(timeout=10)
    return rc


def test_sigterm_ends_the_loop_with_one_final_export(restore_signals: None) -> None:
    core, exporter = CountingCore(), CountingExporter()
    agent = Agent(core, [exporter], interval=3600.0)  # type: ignore[arg-type]
    agent.install_signal_handlers()
    rc = _in_main_thread(agent, [(0.3, lambda: os.kill(os.getpid(), signal.SIGTERM))])
    assert rc == 0
    # the first collection at start and the final one; none from the hour-long interval
    assert (core.collections, exporter.exports) == (2, 2)
    assert core.started and core.closed and exporter.shut
    assert core.resyncs == 0  # the wake-up is no pod change


def test_a_source_change_wakes_the_loop_for_a_resync_only(restore_signals: None) -> None:
    core, exporter = CountingCore(), CountingExporter()
    agent = Agent(core, [exporter], interval=3600.0)  # type: ignore[arg-type]
    agent.install_signal_handlers()
    actions = [
        (0.2, core.source.changed.set),
        (0.5, core.source.changed.set),
        (0.5, lambda: os.kill(os.getpid(), signal.SIGINT)),
    ]
    assert _in_main_thread(agent, actions) == 0
    assert core.resyncs == 2
    assert (core.collections, exporter.exports) == (2, 2)


def test_the_loop_does_not_wake_up_between_collections(restore_signals: None) -> None:
    """Over 1.5 s of a 1-hour interval the main thread waits once: counted as the calls of
    the pod source's event's wait() (each wake-up of a periodic loop is one more)."""
    core, exporter = CountingCore(), CountingExporter()
    waits = 0
    real_wait = core.source.changed.wait

    def counting_wait(timeout: float | None = None) -> bool:
        nonlocal waits
        waits += 1
        return real_wait(timeout)

    core.source.changed.wait = counting_wait  # type: ignore[method-assign]
    agent = Agent(core, [exporter], interval=3600.0)  # type: ignore[arg-type]
    agent.install_signal_handlers()
    assert _in_main_thread(agent, [(1.5, lambda: os.kill(os.getpid(), signal.SIGTERM))]) == 0
    assert waits == 1
