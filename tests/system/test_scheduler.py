"""The background scheduler against a simulated fleet, observed from outside.

Every run uses the real `Poller.start()` with the shortest interval the configuration allows (10 s), a real
fleet over NTLM, and a recorder wrapped around `poll_server` (what the scheduler calls) that notes when each
poll started and ended and how it went. The simulator's open shells are sampled as a second, independent
view. Intervals are real seconds, so the runs are few: one long "timeline" run carries back-off, recovery
and reload, each with its own servers and its own test.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from exporter.config import load_config_text
from exporter.poller import Poller
from simulator.host import Faults

from ..conftest import SimulatedFleet, minimal_config, relocate

INTERVAL = 10.0
JITTER = 0.1
SLACK = 1.0  # scheduling and CPU noise on a shared two-core machine
SE = "15.2.2562.53"


@dataclasses.dataclass
class Poll:
    name: str
    start: float
    end: float = float("inf")
    success: bool | None = None
    reason: str | None = None
    worked_from: float | None = None  # when the real poll began, after waiting for the server's lock


class Recorder:
    """Stands in for `poller.poll_server` and records each call; the real method does the work."""

    def __init__(self, poller: Poller, on_done=None):
        self._poll_server = poller.poll_server
        self._lock = threading.Lock()
        self._on_done = on_done
        self.polls: list[Poll] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.started = threading.Condition(self._lock)
        poller.poll_server = self

    def __call__(self, name: str, **kwargs):
        poll = Poll(name, time.monotonic())
        with self._lock:
            self.polls.append(poll)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.started.notify_all()
        try:
            result = self._poll_server(name, **kwargs)
            poll.success, poll.reason = result.outcome.success, result.outcome.error_reason
            poll.worked_from = time.monotonic() - result.outcome.duration_seconds
            return result
        finally:
            with self._lock:
                self.in_flight -= 1
                poll.end = time.monotonic()
            if self._on_done:
                self._on_done(poll)

    def of(self, name: str) -> list[Poll]:
        with self._lock:
            return [p for p in self.polls if p.name == name]

    def wait_for(self, predicate, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out after {timeout:g}s; polls: {self.polls}"
            time.sleep(0.05)


class ShellSampler:
    """The simulator's view: the most shells open at once, fleet-wide and per host."""

    def __init__(self, fleet: SimulatedFleet, hosts: list[str]):
        self._fleet, self._hosts = fleet.fleet, hosts
        self.max_total = 0
        self.max_per_host = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            counts = [self._fleet.open_shells(h) for h in self._hosts]
            self.max_total = max(self.max_total, sum(counts))
            self.max_per_host = max(self.max_per_host, *counts)

    def __enter__(self) -> "ShellSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def scenario(names: list[str], *, faults: dict | None = None, output_faults: dict | None = None) -> dict:
    servers = []
    for name in names:
        server = {"name": name, "address": "127.0.0.1", "build": SE}
        if faults and name in faults:
            server["faults"] = faults[name]
        if output_faults and name in output_faults:
            server["output_faults"] = output_faults[name]
        servers.append(server)
    return relocate({"servers": servers})


def poll_settings(**overrides) -> dict:
    return {"interval": f"{INTERVAL:g}s", "timeout": "5s", "jitter": JITTER, **overrides}


def config_with(fleet: SimulatedFleet, servers: list[str] | None = None, **poll):
    """The fleet's config for `servers` (default: all), without the organization collector, whose one extra
    poll per interval would blur what these runs measure."""
    data = yaml.safe_load(fleet.config_text(**poll_settings(**poll)))
    data.pop("organization", None)
    data["servers"] = [s for s in data["servers"] if servers is None or s["name"] in servers]
    return load_config_text(yaml.safe_dump(data), Path("."))


def offset_of(name: str) -> float:
    return Poller(load_config_text(minimal_config(), Path(".")), None)._offset(name, INTERVAL)


def names_with_offsets(prefix: str, windows: list[tuple[float, float]]) -> list[str]:
    """Deterministic names whose scheduling offset falls in each window, so runs need not wait a whole interval."""
    names, index = [], 0
    for lo, hi in windows:
        while True:
            index += 1
            name = f"{prefix}{index}"
            if lo <= offset_of(name) < hi and name not in names:
                names.append(name)
                break
    return names


@contextmanager
def running(poller: Poller, on_done=None):
    recorder = Recorder(poller, on_done)
    began = time.monotonic()
    poller.start()
    try:
        yield recorder, began
    finally:
        poller.stop()


def set_faults(fleet: SimulatedFleet, name: str, **faults) -> None:
    fleet.hosts[name].faults = Faults(**faults)


def overlapping(polls: list[Poll]) -> int:
    """The most of `polls` that ran at the same instant."""
    edges = sorted([(p.start, 1) for p in polls] + [(p.end, -1) for p in polls], key=lambda e: (e[0], e[1]))
    most = current = 0
    for _, step in edges:
        current += step
        most = max(most, current)
    return most


# ---------------------------------------------------------------- offsets and spread


def test_first_polls_are_spread_over_the_interval_at_each_names_offset(catalog):
    names = [f"EX{i:02d}" for i in range(1, 21)]
    with SimulatedFleet(scenario(names)) as fleet:
        poller = Poller(config_with(fleet, concurrency=8), catalog)
        with running(poller) as (recorder, began):
            recorder.wait_for(lambda: {p.name for p in recorder.polls} == set(names), INTERVAL + 2 * SLACK)
            first = {}
            for p in recorder.polls:
                first.setdefault(p.name, p.start - began)
    starts = sorted(first.values())
    assert starts[-1] - starts[0] > INTERVAL / 2, f"first polls bunched: {starts}"
    # 20 hash offsets put up to ~6 in some one-second window by chance; the scheduler must add no bunching
    offsets = sorted(offset_of(n) for n in names)
    busiest = max(sum(1 for t in starts if s <= t < s + 1) for s in starts)
    assert busiest <= max(sum(1 for t in offsets if s <= t < s + 1) for s in offsets) + 1, (starts, offsets)
    assert busiest <= 0.3 * len(names), f"{busiest} first polls within one second: {starts}"
    for name, start in first.items():
        assert abs(start - offset_of(name)) < SLACK, (name, start, offset_of(name))


def test_offsets_are_stable_per_name_across_pollers_and_fleets(catalog):
    names = [f"EX{i:02d}" for i in range(1, 21)]
    one, other = SimulatedFleet(scenario(names)), SimulatedFleet(scenario(list(reversed(names[5:]))))
    first = Poller(one.config(**poll_settings()), catalog)
    second = Poller(other.config(**poll_settings()), catalog)
    for name in names[5:]:
        assert first._offset(name, INTERVAL) == second._offset(name, INTERVAL) == second._offset(name.lower(), INTERVAL)
        assert 0 <= first._offset(name, INTERVAL) < INTERVAL
    assert len({round(offset_of(n), 6) for n in names}) == len(names)


# ---------------------------------------------------------------- concurrency


def test_global_concurrency_limit_holds_under_backlog(catalog):
    # 20 polls of ~1.8 s in a 10 s interval need ~3.6 slots: with 3, polls queue and the limit binds
    names = [f"SLOW{i:02d}" for i in range(1, 21)]
    runtime = {name: {"script_runtime": 1.5} for name in names}
    with SimulatedFleet(scenario(names, output_faults=runtime)) as fleet:
        poller = Poller(config_with(fleet, concurrency=3), catalog)
        with ShellSampler(fleet, names) as shells, running(poller) as (recorder, began):
            recorder.wait_for(lambda: len({p.name for p in recorder.polls if p.success}) == len(names),
                              3 * INTERVAL)
    assert recorder.max_in_flight == 3, recorder.max_in_flight
    assert overlapping(recorder.polls) == 3
    assert 0 < shells.max_total <= 3, shells.max_total
    late = [p for p in recorder.polls if p.start - began - offset_of(p.name) > 1.0]
    assert late, "no poll waited for a slot: the run did not exercise the limit"


def test_probe_and_scheduled_poll_of_one_server_do_not_overlap(catalog):
    [name] = names_with_offsets("SOLO", [(0.2, 1.0)])
    with SimulatedFleet(scenario([name], output_faults={name: {"script_runtime": 1.5}})) as fleet:
        poller = Poller(config_with(fleet), catalog)
        with ShellSampler(fleet, [name]) as shells, running(poller) as (recorder, _):
            with recorder.started:
                assert recorder.started.wait_for(lambda: recorder.polls, timeout=INTERVAL)
            probe = Poller.poll_server(poller, name)  # what /probe calls, bypassing the recorder
            probe_ended = time.monotonic()
            recorder.wait_for(lambda: recorder.polls[0].success is not None, INTERVAL)
        [scheduled] = recorder.of(name)
    assert probe.outcome.success and scheduled.success
    probe_work = Poll(name, probe_ended - probe.outcome.duration_seconds, probe_ended)
    scheduled_work = Poll(name, scheduled.worked_from, scheduled.end)
    assert min(probe_work.end, scheduled_work.end) - max(probe_work.start, scheduled_work.start) < 0.05, (
        probe_work, scheduled_work)
    assert shells.max_per_host == 1, shells.max_per_host


# ---------------------------------------------------------------- failing lane


def test_hanging_servers_hold_one_slot_and_healthy_servers_keep_their_interval(catalog):
    hanging = [f"HANG{i}" for i in range(1, 7)]
    healthy = ["GOOD1", "GOOD2"]
    with SimulatedFleet(scenario(hanging + healthy, faults={n: {"hang": True} for n in hanging})) as fleet:
        poller = Poller(config_with(fleet, concurrency=4, failing_share=0.25), catalog)
        # each hanging server fails once first (as /probe would), so the lane applies from the first cycle on
        probes = [threading.Thread(target=Poller.poll_server, args=(poller, n)) for n in hanging]
        for probe in probes:
            probe.start()
        for probe in probes:
            probe.join()
        with running(poller) as (recorder, began):
            time.sleep(2 * INTERVAL + 2 * SLACK)
        polls = list(recorder.polls)
    for name in healthy:
        starts = [p.start - began for p in polls if p.name == name]
        assert all(p.success for p in polls if p.name == name)
        assert len(starts) >= 2 and starts[0] <= offset_of(name) + SLACK, (name, starts)
        gaps = [b - a for a, b in zip(starts, starts[1:])]
        assert all(g <= INTERVAL * (1 + JITTER / 2) + SLACK for g in gaps), (name, gaps)
    lane = [p for p in polls if p.name in hanging]
    assert len(lane) >= 3, f"too few polls of failing servers to judge the lane: {lane}"
    assert overlapping(lane) == 1, lane
    assert {p.reason for p in lane if p.end < float("inf")} <= {"timeout", "deadline_exceeded"}


# ---------------------------------------------------------------- back-off arithmetic


@pytest.mark.parametrize("failures, factor", [(0, 1), (1, 1), (2, 1), (3, 2), (4, 4), (5, 4), (9, 4)])
def test_next_due_backs_off_after_three_failures(failures, factor):
    poller = Poller(load_config_text(minimal_config("poll:\n  interval: 10s\n  timeout: 5s\n  jitter: 0\n"), Path(".")), None)
    poller._failures["ex01"] = failures
    assert poller._next_due("ex01", 100.0, INTERVAL) == 100.0 + factor * INTERVAL


def test_next_due_jitter_stays_within_its_share_of_the_interval():
    poller = Poller(load_config_text(minimal_config("poll:\n  interval: 10s\n  timeout: 5s\n  jitter: 0.2\n"), Path(".")), None)
    dues = [poller._next_due("ex01", 0.0, INTERVAL) for _ in range(500)]
    assert all(9.0 <= d <= 11.0 for d in dues)
    assert max(dues) - min(dues) > 1.0, "no jitter at all"


# ---------------------------------------------------------------- the timeline: back-off, recovery, reload


RELOAD_AT = 12.0
TIMELINE_SECONDS = 33.0


@pytest.fixture(scope="module")
def timeline(catalog):
    """One run of ~33 s. BACKOFF was refused twice by /probe-style polls before the scheduler starts, so its
    first scheduled poll is its third failure; the fault clears right after. RECOVER refuses until its first
    failure. At RELOAD_AT the configuration drops OLD and adds NEW. STEADY is the control."""
    backoff, recover, steady, old, new = names_with_offsets(
        "T", [(0.3, 1.5), (0.3, 3.0), (0.0, 10.0), (0.0, 2.0), (0.0, 10.0)])
    names = {"backoff": backoff, "recover": recover, "steady": steady, "old": old, "new": new}
    fleet_scenario = scenario(list(names.values()), faults={recover: {"refuse_connections": True}})
    cleared: dict[str, float] = {}
    with SimulatedFleet(fleet_scenario) as fleet:
        settings = {"concurrency": 4, "failing_share": 0.5}
        poller = Poller(config_with(fleet, [backoff, recover, steady, old], **settings), catalog)
        set_faults(fleet, backoff, unauthorized=True)
        probes = [Poller.poll_server(poller, backoff) for _ in range(2)]
        assert [p.outcome.error_reason for p in probes] == ["auth_failed", "auth_failed"]

        def clear_after_failure(poll: Poll) -> None:
            if poll.success is False and poll.name in (backoff, recover) and poll.name not in cleared:
                set_faults(fleet, poll.name)
                cleared[poll.name] = time.monotonic()

        with running(poller, clear_after_failure) as (recorder, began):
            time.sleep(max(0.0, began + RELOAD_AT - time.monotonic()))
            reloaded = time.monotonic()
            poller.apply_config(config_with(fleet, [backoff, recover, steady, new], **settings), catalog)
            time.sleep(max(0.0, began + TIMELINE_SECONDS - time.monotonic()))
            snapshot = {r.name: r for r in poller.snapshot()[0]}
        polls = list(recorder.polls)
    yield {"names": names, "polls": polls, "began": began, "reloaded": reloaded, "cleared": cleared,
           "snapshot": snapshot}


def _of(timeline: dict, role: str) -> list[Poll]:
    return [p for p in timeline["polls"] if p.name == timeline["names"][role]]


def test_backoff_doubles_the_interval_after_three_failures_and_ends_on_success(timeline):
    third, *later = _of(timeline, "backoff")
    assert third.success is False and third.reason == "auth_failed"
    assert len(later) >= 2, later
    after_backoff, normal = later[0], later[1]
    gap = after_backoff.start - third.start
    assert 2 * INTERVAL * (1 - JITTER / 2) - SLACK <= gap <= 2 * INTERVAL * (1 + JITTER / 2) + SLACK, gap
    assert after_backoff.success and normal.success
    gap = normal.start - after_backoff.start
    assert INTERVAL * (1 - JITTER / 2) - SLACK <= gap <= INTERVAL * (1 + JITTER / 2) + SLACK, gap


def test_refusing_server_is_up_within_one_interval_of_the_fault_clearing(timeline):
    failed, *later = _of(timeline, "recover")
    assert failed.success is False and failed.reason == "connection_refused"
    recovered = next(p for p in later if p.success)
    cleared = timeline["cleared"][timeline["names"]["recover"]]
    assert recovered.end - cleared <= INTERVAL * (1 + JITTER / 2) + SLACK, recovered.end - cleared
    assert timeline["snapshot"][timeline["names"]["recover"]].outcome.success


def test_reload_stops_polling_removed_servers_and_starts_added_ones(timeline):
    reloaded = timeline["reloaded"]
    old, new = _of(timeline, "old"), _of(timeline, "new")
    assert old and all(p.start < reloaded + 0.1 for p in old), (reloaded, old)
    assert new and new[0].start - reloaded <= INTERVAL + SLACK, (reloaded, new)
    assert all(p.success for p in new)
    assert timeline["names"]["old"] not in timeline["snapshot"]
    steady = [p.start for p in _of(timeline, "steady")]
    assert len(steady) >= 3 and all(
        abs(b - a - INTERVAL) <= INTERVAL * JITTER / 2 + SLACK for a, b in zip(steady, steady[1:])), steady
