"""When each background poll runs: offsets, jitter, the concurrency limit, the failing lane and back-off.

Pure bookkeeping over opaque keys (the poller's jobs), with time passed in: `due(now)` says which jobs to
start, `done(key, ok, started)` says how one went. It knows nothing of WinRM or of the poller, so a test
drives it with a fake clock, and the rules are all here:
- each job's first run is at its own offset inside the interval (`offset()` hashes a server's name), so
  a fleet is spread over the interval instead of polled all at once at start;
- the next run is `interval` after the last one started, plus a little jitter;
- at most `concurrency` jobs run at once, and a job never runs twice at once;
- jobs whose last run failed may hold only `failing_share` of the slots, so servers that hang until their
  deadline cannot starve healthy ones; a job failing three times or more in a row runs at 2x, then 4x
  the interval until it succeeds again.
Not thread-safe: the poller calls it under its own lock.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import random
from dataclasses import dataclass
from typing import Hashable, Mapping

BACKOFF_AFTER_FAILURES = 3
MAX_BACKOFF_FACTOR = 4
DEFER_SECONDS = 1.0  # a due job that may not start yet (failing lane full) is looked at again this much later


def offset(name: str, interval: float) -> float:
    """A stable place for `name` inside the interval: the same for every exporter and every run."""
    digest = hashlib.sha256(name.lower().encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * interval


@dataclass(frozen=True)
class Cadence:
    interval: float  # seconds from one run's start to the next
    offset: float  # seconds from when the job is first seen to its first run


class Schedule:
    def __init__(self, *, concurrency: int, failing_share: float, jitter: float,
                 rng: random.Random | None = None):
        self.configure(concurrency=concurrency, failing_share=failing_share, jitter=jitter)
        self._rng = rng or random.Random()
        self._jobs: dict[Hashable, Cadence] = {}
        self._queued: dict[Hashable, float] = {}  # key -> when it is due; the heap may hold stale entries
        self._heap: list[tuple[float, int, Hashable]] = []
        self._order = itertools.count()  # ties on the heap never compare keys
        self._running: set[Hashable] = set()
        self._failures: dict[Hashable, int] = {}  # consecutive failed runs

    def configure(self, *, concurrency: int, failing_share: float, jitter: float) -> None:
        """New limits (a reload); runs already queued keep their times."""
        self.concurrency = concurrency
        self.failing_share = failing_share
        self.jitter = jitter

    def set_jobs(self, jobs: Mapping[Hashable, Cadence], now: float) -> None:
        """The jobs from now on: a new one first runs at `now` plus its offset; a removed one never again
        (if it is running, its `done` is ignored); the others keep their times and take the new cadence."""
        for key in self._jobs.keys() - jobs.keys():
            self._queued.pop(key, None)
            self._failures.pop(key, None)
        for key, cadence in jobs.items():
            if key not in self._jobs:
                self._queue(key, now + cadence.offset)
        self._jobs = dict(jobs)

    def due(self, now: float) -> list[Hashable]:
        """The jobs to start now; they count as running until their `done`."""
        failing_slots = max(1, int(self.concurrency * self.failing_share))
        failing_running = sum(1 for key in self._running if self._failures.get(key))
        started, deferred = [], []
        while self._heap and self._heap[0][0] <= now and len(self._running) < self.concurrency:
            when, _, key = heapq.heappop(self._heap)
            if self._queued.get(key) != when:
                continue  # removed, or queued again since
            del self._queued[key]
            if key in self._running:  # removed and added back while it ran
                deferred.append((key, when + DEFER_SECONDS))
                continue
            failing = bool(self._failures.get(key))
            if failing and failing_running >= failing_slots:
                deferred.append((key, now + DEFER_SECONDS))
                continue
            failing_running += failing
            self._running.add(key)
            started.append(key)
        for key, when in deferred:
            self._queue(key, when)
        return started

    def done(self, key: Hashable, ok: bool, started: float) -> None:
        """A run that began at `started` has ended: count the outcome and queue the next run."""
        self._running.discard(key)
        cadence = self._jobs.get(key)
        if cadence is None:
            return  # removed while it ran
        failures = self._failures[key] = 0 if ok else self._failures.get(key, 0) + 1
        factor = 1
        if failures >= BACKOFF_AFTER_FAILURES:
            factor = min(MAX_BACKOFF_FACTOR, 2 ** (failures - BACKOFF_AFTER_FAILURES + 1))
        jitter = self._rng.uniform(-0.5, 0.5) * self.jitter * cadence.interval
        self._queue(key, started + factor * cadence.interval + jitter)

    def next_due(self) -> float | None:
        """When the earliest queued job is due (None when nothing is queued): how long the poller may sleep."""
        while self._heap and self._queued.get(self._heap[0][2]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def _queue(self, key: Hashable, when: float) -> None:
        self._queued[key] = when
        heapq.heappush(self._heap, (when, next(self._order), key))
