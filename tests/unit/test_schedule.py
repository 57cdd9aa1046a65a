"""The background schedule's rules, on a fake clock: offsets, interval and jitter, the concurrency limit, the
failing lane, back-off and recovery, jobs added and removed by a reload.

`simulate` drives a `Schedule` as the poller does (start what is due, report each run when it ends), with
time advancing in small ticks and each run lasting as long as the test says: minutes of schedule in
milliseconds, and no test reaches into the schedule's state.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest

from exporter.schedule import Cadence, Schedule, offset

INTERVAL = 10.0
TICK = 0.05


@dataclass
class Run:
    key: str
    start: float
    end: float
    ok: bool


def jobs(names, interval: float = INTERVAL) -> dict[str, Cadence]:
    return {name: Cadence(interval, offset(name, interval)) for name in names}


def new_schedule(names, *, concurrency: int = 8, failing_share: float = 0.5, jitter: float = 0.0) -> Schedule:
    schedule = Schedule(concurrency=concurrency, failing_share=failing_share, jitter=jitter, rng=random.Random(7))
    schedule.set_jobs(jobs(names), 0.0)
    return schedule


def simulate(schedule: Schedule, until: float, *, duration=lambda key, n: 1.0, ok=lambda key, n: True,
             at: dict[float, object] | None = None) -> list[Run]:
    """Run `schedule` from time 0 to `until`; the n-th run of `key` lasts `duration(key, n)` and succeeds if
    `ok(key, n)`; `at` maps a time to a function of the schedule and the time (a reload)."""
    runs: list[Run] = []
    running: list[Run] = []
    counts: Counter[str] = Counter()
    pending = sorted((at or {}).items())
    now = 0.0
    while now <= until:
        while pending and pending[0][0] <= now:
            pending.pop(0)[1](schedule, now)
        for run in [r for r in running if r.end <= now]:
            running.remove(run)
            schedule.done(run.key, run.ok, run.start)
        for key in schedule.due(now):
            n = counts[key]
            counts[key] += 1
            run = Run(key, now, now + duration(key, n), ok(key, n))
            runs.append(run)
            running.append(run)
        now = round(now + TICK, 6)
    return runs


def starts(runs: list[Run], key: str) -> list[float]:
    return [r.start for r in runs if r.key == key]


def gaps(values: list[float]) -> list[float]:
    return [round(b - a, 6) for a, b in zip(values, values[1:])]


def overlapping(runs: list[Run]) -> int:
    """The most of `runs` that ran at the same instant (a run ending as another starts does not overlap)."""
    edges = sorted([(r.start, 1) for r in runs] + [(r.end, -1) for r in runs])
    most = current = 0
    for _, step in edges:
        current += step
        most = max(most, current)
    return most


NAMES = [f"ex{i:02d}" for i in range(1, 21)]


# ---------------------------------------------------------------- offsets, interval, jitter


def test_offsets_are_stable_per_name_inside_the_interval_and_distinct():
    for name in NAMES:
        assert offset(name, INTERVAL) == offset(name.upper(), INTERVAL)
        assert 0 <= offset(name, INTERVAL) < INTERVAL
    assert len({round(offset(n, INTERVAL), 6) for n in NAMES}) == len(NAMES)
    values = sorted(offset(n, INTERVAL) for n in NAMES)
    assert values[-1] - values[0] > INTERVAL / 2, values


def test_first_runs_are_spread_over_the_interval_at_each_jobs_offset():
    runs = simulate(new_schedule(NAMES, concurrency=20), INTERVAL)
    first = {name: starts(runs, name)[0] for name in NAMES}
    for name, start in first.items():
        assert 0 <= start - offset(name, INTERVAL) < TICK + 1e-9, (name, start)


def test_the_next_run_is_one_interval_after_the_last_start():
    runs = simulate(new_schedule(NAMES[:3]), 5 * INTERVAL, duration=lambda key, n: 3.0)
    for name in NAMES[:3]:
        assert all(abs(g - INTERVAL) < TICK + 1e-9 for g in gaps(starts(runs, name))), gaps(starts(runs, name))


def test_jitter_stays_within_its_share_of_the_interval():
    runs = simulate(new_schedule(NAMES[:5], jitter=0.2), 60 * INTERVAL)
    spread = [g for name in NAMES[:5] for g in gaps(starts(runs, name))]
    assert len(spread) > 200
    assert all(0.9 * INTERVAL <= g <= 1.1 * INTERVAL + TICK for g in spread), (min(spread), max(spread))
    assert max(spread) - min(spread) > 1.0, "no jitter at all"


def test_a_job_with_its_own_cadence_runs_first_and_at_its_own_interval():
    schedule = new_schedule(NAMES[:2])
    organization = object()  # any key: the poller's organization job is an object, not a server name
    schedule.set_jobs({**jobs(NAMES[:2]), organization: Cadence(3 * INTERVAL, 0.0)}, 0.0)
    runs = simulate(schedule, 7 * INTERVAL)
    org_starts = [r.start for r in runs if r.key is organization]
    assert org_starts[0] == 0.0 and gaps(org_starts) == [3 * INTERVAL, 3 * INTERVAL], org_starts


# ---------------------------------------------------------------- concurrency


def test_no_more_than_the_limit_run_at_once_and_the_backlog_catches_up():
    # 20 runs of 1.8 s in a 10 s interval need ~3.6 slots: with 3 the limit binds and runs queue
    runs = simulate(new_schedule(NAMES, concurrency=3), 3 * INTERVAL, duration=lambda key, n: 1.8)
    assert overlapping(runs) == 3
    assert {r.key for r in runs} == set(NAMES)
    late = [r for r in runs if r.start - offset(r.key, INTERVAL) > 1.0 and r.start < INTERVAL]
    assert late, "no run waited for a slot: the limit was not exercised"


def test_a_job_never_runs_twice_at_once_even_when_it_outlasts_its_interval():
    runs = simulate(new_schedule(["slow"]), 6 * INTERVAL, duration=lambda key, n: 2.5 * INTERVAL)
    assert len(runs) >= 2 and overlapping(runs) == 1
    assert all(abs(g - 2.5 * INTERVAL) < TICK + 1e-9 for g in gaps(starts(runs, "slow"))), runs


def test_a_lower_limit_from_a_reload_applies_to_the_next_starts():
    def lower(schedule, now):
        schedule.configure(concurrency=1, failing_share=0.5, jitter=0.0)

    runs = simulate(new_schedule(NAMES, concurrency=8), 4 * INTERVAL, duration=lambda key, n: 0.3,
                    at={2 * INTERVAL: lower})
    assert overlapping([r for r in runs if r.start >= 2 * INTERVAL + 1]) == 1
    assert overlapping([r for r in runs if r.start < 2 * INTERVAL]) > 1


# ---------------------------------------------------------------- the failing lane


def test_failing_jobs_hold_only_their_share_of_slots_and_healthy_jobs_keep_their_interval():
    hanging = [f"hang{i}" for i in range(1, 7)]
    healthy = ["good1", "good2"]
    schedule = new_schedule(hanging + healthy, concurrency=4, failing_share=0.25)
    runs = simulate(schedule, 6 * INTERVAL,
                    duration=lambda key, n: 5.0 if key in hanging else 0.5, ok=lambda key, n: key in healthy)
    failed_once = max(min(r.end for r in runs if r.key == name) for name in hanging)
    lane = [r for r in runs if r.key in hanging and r.start >= failed_once]
    assert len(lane) >= 4, lane
    assert overlapping(lane) == 1, lane  # max(1, int(4 * 0.25)) slots for jobs whose last run failed
    for name in healthy:  # from when the lane applies (before, no job's last run had failed)
        later = [s for s in starts(runs, name) if s >= failed_once]
        assert len(later) >= 3 and all(abs(g - INTERVAL) < TICK + 1e-9 for g in gaps(later)), later


def test_with_no_failures_every_slot_is_open_to_every_job():
    runs = simulate(new_schedule(NAMES[:8], concurrency=8, failing_share=0.25), INTERVAL + 1,
                    duration=lambda key, n: INTERVAL)
    assert overlapping(runs) == 8


# ---------------------------------------------------------------- back-off and recovery


def test_back_off_doubles_then_quadruples_the_interval_after_three_failures_and_ends_on_success():
    runs = simulate(new_schedule(["flaky"]), 25 * INTERVAL, ok=lambda key, n: n >= 6)
    # failures before each gap: 1, 2 -> 1x; 3 -> 2x; 4, 5 -> 4x (the cap); then the 6th run succeeds
    factors = [g / INTERVAL for g in gaps(starts(runs, "flaky"))]
    assert factors[:7] == [1, 1, 2, 4, 4, 4, 1], factors


def test_a_job_that_failed_once_runs_again_one_interval_later():
    runs = simulate(new_schedule(["refused"]), 4 * INTERVAL, ok=lambda key, n: n > 0)
    first, second, *_ = runs
    assert not first.ok and second.ok
    assert abs(second.start - first.start - INTERVAL) < TICK + 1e-9


# ---------------------------------------------------------------- reload


def test_a_reload_stops_removed_jobs_and_starts_added_ones_at_their_offset():
    old, new, steady = "old", "new", "steady"

    def reload(schedule, now):
        schedule.set_jobs(jobs([steady, new]), now)

    reload_at = 12.0
    runs = simulate(new_schedule([old, steady]), 5 * INTERVAL, at={reload_at: reload})
    assert starts(runs, old) and all(s < reload_at for s in starts(runs, old))
    assert abs(starts(runs, new)[0] - reload_at - offset(new, INTERVAL)) < TICK + 1e-9
    assert all(abs(g - INTERVAL) < TICK + 1e-9 for g in gaps(starts(runs, steady)))


def test_a_job_removed_while_it_runs_is_not_queued_again_and_its_failures_are_forgotten():
    def remove(schedule, now):
        schedule.set_jobs({}, now)

    def add_back(schedule, now):
        schedule.set_jobs(jobs(["flaky"]), now)

    # three failures put "flaky" in back-off; its 4th run is removed while it runs, then added back
    long_fourth = lambda key, n: 5.0 if n == 3 else 1.0  # noqa: E731
    fourth_start = offset("flaky", INTERVAL) + 4 * INTERVAL  # 1x, 1x, then 2x after three failures
    runs = simulate(new_schedule(["flaky"]), 12 * INTERVAL, duration=long_fourth, ok=lambda key, n: False,
                    at={fourth_start + 1: remove, fourth_start + 10: add_back})
    before = [r for r in runs if r.start < fourth_start + 1]
    after = [r for r in runs if r.start >= fourth_start + 1]
    assert len(before) == 4, before
    re_added = fourth_start + 10 + offset("flaky", INTERVAL)
    assert abs(after[0].start - re_added) < 2 * TICK, (after, re_added)  # the reload lands on a tick
    assert abs(after[1].start - after[0].start - INTERVAL) < TICK + 1e-9  # the count restarted: no back-off


@pytest.mark.parametrize("share, slots", [(0.25, 1), (0.5, 2), (1.0, 4)])
def test_failing_lane_size_is_a_share_of_the_limit_and_at_least_one(share, slots):
    hanging = [f"hang{i}" for i in range(1, 9)]
    runs = simulate(new_schedule(hanging, concurrency=4, failing_share=share), 8 * INTERVAL,
                    duration=lambda key, n: 4.0, ok=lambda key, n: False)
    failed_once = max(min(r.end for r in runs if r.key == name) for name in hanging)
    assert overlapping([r for r in runs if r.start >= failed_once]) == slots
