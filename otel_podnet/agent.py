"""``otel-podnet run``: collect every interval, hand the snapshot to each exporter; on
SIGTERM/SIGINT one final export, then every program detached."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Sequence
from logging import getLogger
from types import FrameType

from .core import Core
from .exporters import Exporter
from .health import HealthState

_logger = getLogger(__name__)


class Agent:
    def __init__(
        self, core: Core, exporters: Sequence[Exporter], interval: float, health: HealthState | None = None
    ) -> None:
        self.core = core
        self.exporters = list(exporters)
        self.interval = interval
        self.stop_event = threading.Event()
        self.health = health or HealthState(interval)

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT end the loop at once, which sleeps until the next collection
        or a change of the pod source, with no periodic wake-up (issue 10: each costs CPU
        on every node, all the time). The handler runs in the main thread, possibly while
        that thread holds the lock of the event it waits on, so it must not set that event
        itself: it writes to a pipe, and a thread blocked on the pipe sets it."""
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)

        def _stop(signum: int, frame: FrameType | None) -> None:
            _logger.info("received %s: final export, then detaching", signal.Signals(signum).name)
            self.stop_event.set()  # the main thread only reads it (is_set: no lock)
            try:
                os.write(wake_w, b"\0")
            except BlockingIOError:  # a wake-up is pending already
                pass

        def _waker() -> None:
            while os.read(wake_r, 64):
                self.core.source.changed.set()

        threading.Thread(target=_waker, name="signal-waker", daemon=True).start()
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)

    def collect_and_export(self) -> None:
        try:
            snapshot = self.core.collect()
        except Exception as exc:  # after start nothing ends the agent (see Core.failed)
            self.core.failed("a collection", exc)
            self.health.collected()  # the loop turns; the failure is in the health metric
            return
        self.health.collected()
        pods = self.core.pods
        for exporter in self.exporters:
            try:
                exporter.export(snapshot, pods)
            except Exception:  # an exporter's failure must not stop the counting
                _logger.exception("exporter %s failed", type(exporter).__name__)

    def run(self) -> int:
        self.core.start()
        try:
            self.collect_and_export()
            deadline = time.monotonic() + self.interval
            while not self.stop_event.is_set():
                # Between collections, pod changes (a pod gone, an IP reused) reach the
                # kernel's maps at once when the pod source says so.
                changed = self.core.source.changed
                timeout = max(0.0, deadline - time.monotonic())
                if changed.wait(timeout) and not self.stop_event.is_set():
                    changed.clear()
                    self.core.resync()
                if time.monotonic() >= deadline:
                    self.collect_and_export()
                    deadline += self.interval
                    if deadline < time.monotonic():  # a slow collection: do not try to catch up
                        deadline = time.monotonic() + self.interval
            self.collect_and_export()
        finally:
            for exporter in self.exporters:
                try:
                    exporter.shutdown()
                except Exception:
                    _logger.exception("shutting down %s", type(exporter).__name__)
            self.core.close()
        _logger.info("stopped; every program detached")
        return 0
