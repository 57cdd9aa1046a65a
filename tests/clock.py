"""A clock for the poller that only the test moves, so a poll interval passes in no time.

The poller asks its clock what time it is and waits on it for the next due job (exporter/poller.py `Clock`).
Here time stands still until `advance()`, which also wakes whoever waits on it; polls themselves still run in
real time (their deadlines are the WinRM layer's, on `time.monotonic`)."""

from __future__ import annotations

import threading

from exporter.poller import Clock

REAL_WAIT_SECONDS = 1.0  # a waiter not woken by advance() or by the poller looks again after this (a safety net)


class ManualClock(Clock):
    def __init__(self, start: float = 1000.0):
        self._now = start
        self._lock = threading.Lock()
        self._conditions: list[threading.Condition] = []

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds
            conditions = list(self._conditions)
        for condition in conditions:
            with condition:  # taken once the waiter waits, so the wake-up cannot come too early and be lost
                condition.notify_all()

    def wait_until(self, condition: threading.Condition, when: float) -> None:
        with self._lock:
            if condition not in self._conditions:
                self._conditions.append(condition)
            if self._now >= when:
                return
        condition.wait(REAL_WAIT_SECONDS)
