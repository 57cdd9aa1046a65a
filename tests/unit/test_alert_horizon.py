"""How long the pages may keep a server's alerts: the evaluator says when time would turn one of its rules.

The fleet page keeps each server's alerts until its samples change or until `alerts.evaluated` says a comparison
with `time()` could turn for it (fleet.py). Wrong in one direction, a page shows an alert that has stopped or
misses one that started; so the time given must be when the answer really changes, and never later.
"""

from __future__ import annotations

import math

from exporter.web import alerts

NOW = 1_796_000_000.0


def server(name: str, last_activity: float) -> list[tuple[str, dict[str, str], float]]:
    """A healthy server with EEMS whose last EEMS activity was at `last_activity`."""
    labels = {"server": name}
    return [("exchange_up", labels, 1.0), ("exchange_eems_supported", labels, 1.0),
            ("exchange_server_edge", labels, 0.0),
            ("exchange_eems_last_activity_timestamp_seconds", labels, last_activity),
            ("exchange_eems_last_success_timestamp_seconds", labels, NOW - 600),
            ("exchange_collector_last_success_timestamp_seconds", {**labels, "collector": "server"}, NOW - 60),
            ("exchange_exporter_poll_interval_seconds", {}, 300.0)]


def fired(samples, now: float, name: str = "EX01") -> set[str]:
    return {f.alert for f in alerts.evaluated(samples, now)[0] if f.labels.get("server") == name}


def test_an_alert_that_starts_later_is_kept_only_until_it_starts():
    samples = server("EX01", NOW - 2 * 3600 + 100)  # ExchangeEEMSNoActivity starts in 100 s
    firings, until = alerts.evaluated(samples, NOW)
    assert "ExchangeEEMSNoActivity" not in fired(samples, NOW)
    assert until["EX01"] == NOW + 100
    assert fired(samples, until["EX01"] - 0.001) == fired(samples, NOW)
    assert "ExchangeEEMSNoActivity" in fired(samples, until["EX01"] + 0.001)


def test_each_server_has_its_own_time_and_a_server_nothing_turns_for_has_none():
    samples = server("EX01", NOW - 2 * 3600 + 100) + server("EX02", NOW - 60)[:-1]
    _, until = alerts.evaluated(samples, NOW)
    assert until["EX01"] == NOW + 100
    # EX02's earliest turn: its poll goes stale at last success + 3 intervals (900 s), before its EEMS age (2 h)
    assert until["EX02"] == NOW - 60 + 900
    samples = [s for s in server("EX03", math.nan) if "timestamp" not in s[0]]
    assert "EX03" not in alerts.evaluated(samples, NOW)[1]  # no time in any of its comparisons: for ever


def test_an_answer_is_the_same_anywhere_before_its_time():
    """For a few fleets of servers at different ages, the answer at any instant before a server's time is the
    answer now; after the earliest time of all, some answer differs."""
    for offsets in ((100, 5000, -50), (7200, 1, 3599), (0.5, 86400, 10)):
        samples = []
        for i, offset in enumerate(offsets):
            samples += server(f"EX{i}", NOW - 2 * 3600 + offset)[:-1]
        samples.append(("exchange_exporter_poll_interval_seconds", {}, 300.0))
        firings, until = alerts.evaluated(samples, NOW)
        for name in (f"EX{i}" for i in range(len(offsets))):
            limit = until.get(name, math.inf)
            for t in (NOW + 0.25, (NOW + min(limit, NOW + 1e6)) / 2, min(limit, NOW + 1e6) - 0.01):
                assert fired(samples, t, name) == fired(samples, NOW, name), (name, t - NOW)
        earliest = min(until.values())
        assert alerts.evaluated(samples, earliest + 0.01)[0] != firings
