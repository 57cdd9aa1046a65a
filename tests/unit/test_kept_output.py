"""The last polls' raw outputs kept for /server?debug=true: cut, compressed, and bounded for all servers together."""

from __future__ import annotations

import os
from datetime import datetime, timezone

from exporter.field_report import MAX_RAW_CHARS
from exporter.model import ScriptOutput
from exporter.store import KeptOutputs

WHEN = datetime(2026, 12, 6, tzinfo=timezone.utc)


def output(size: int = 20_000, stderr: bytes = b"") -> ScriptOutput:
    """Output that does not compress (random bytes), so that the bound is reached at a known count."""
    return ScriptOutput(os.urandom(size), stderr, 0)


def test_an_output_is_kept_as_received_and_replaced_by_the_next_poll():
    kept = KeptOutputs()
    kept.keep("EX01", ScriptOutput(b'{"schema": 1}', b"warning", 1), WHEN, troubled=True, budget=1 << 20)
    first = kept.get("ex01")
    assert (first.stdout(), first.stderr(), first.exit_code, first.finished) == (b'{"schema": 1}', b"warning", 1, WHEN)
    kept.keep("EX01", None, WHEN, troubled=True, budget=1 << 20)  # the next poll's script did not run
    assert kept.get("EX01") is None and not kept.dropped("EX01") and kept.total == 0


def test_stdout_is_cut_where_diagnose_cuts_it_and_compressed():
    kept = KeptOutputs()
    text = b'{"events": [' + b'{"id": 1008, "message": "Unable to fetch"},' * 20_000 + b"]}"
    kept.keep("EX01", ScriptOutput(text, b"", 0), WHEN, troubled=False, budget=1 << 20)
    entry = kept.get("EX01")
    assert entry.stdout() == text[:MAX_RAW_CHARS] and entry.stdout_bytes == len(text)
    assert kept.total < len(text) // 20  # JSON output compresses well


def test_the_bound_drops_the_oldest_outputs_of_healthy_polls_first():
    kept = KeptOutputs()
    budget = 4 * (20_000 + 400)  # room for four of them, not five (each costs its bytes and some overhead)
    kept.keep("BAD1", output(), WHEN, troubled=True, budget=budget)
    for name in ("OK1", "OK2", "OK3"):
        kept.keep(name, output(), WHEN, troubled=False, budget=budget)
    kept.keep("BAD2", output(), WHEN, troubled=True, budget=budget)
    kept.keep("BAD3", output(), WHEN, troubled=True, budget=budget)
    assert kept.total <= budget
    assert [n for n in ("BAD1", "OK1", "OK2", "OK3", "BAD2", "BAD3") if kept.get(n)] == ["BAD1", "OK3", "BAD2", "BAD3"]
    assert kept.dropped("OK1") and kept.dropped("OK2") and not kept.dropped("OK3")
    for name in ("BAD4", "BAD5"):  # only troubled ones left to drop: the oldest of them goes
        kept.keep(name, output(), WHEN, troubled=True, budget=budget)
    assert not kept.get("OK3") and not kept.get("BAD1") and kept.get("BAD5") and kept.total <= budget


def test_an_output_larger_than_the_bound_or_a_bound_of_zero_keeps_nothing():
    kept = KeptOutputs()
    kept.keep("EX01", output(50_000), WHEN, troubled=True, budget=10_000)
    assert kept.get("EX01") is None and kept.dropped("EX01")
    kept.keep("EX02", output(10), WHEN, troubled=True, budget=0)
    assert kept.get("EX02") is None and kept.dropped("EX02") and kept.total == 0


def test_servers_no_longer_polled_are_forgotten():
    kept = KeptOutputs()
    kept.keep("EX01", output(), WHEN, troubled=False, budget=1 << 20)
    kept.keep("EX02", output(), WHEN, troubled=False, budget=1 << 20)
    kept.follow({"ex02"})
    assert kept.get("EX01") is None and kept.get("EX02") is not None
    assert kept.total == kept.get("EX02").size
