"""The watchdog that holds every poll to its deadline (exporter/bounded_http.py): each action runs at its
time, whatever order the deadlines were armed in, and a cancelled one never runs."""

from __future__ import annotations

import threading
import time

from exporter.bounded_http import Watchdog


def test_actions_run_at_their_time_in_any_arming_order():
    watchdog = Watchdog()
    fired: dict[str, float] = {}
    done = threading.Event()
    start = time.monotonic()

    def action(name: str):
        def run() -> None:
            fired[name] = time.monotonic() - start
            if len(fired) == 3:
                done.set()
        return run

    watchdog.arm(start + 0.6, action("late"))
    watchdog.arm(start + 0.2, action("early"))  # earlier than what the thread sleeps for: it must wake
    watchdog.arm(start + 0.4, action("middle"))  # between the two: found when the thread next looks
    cancelled = watchdog.arm(start + 0.3, action("cancelled"))
    watchdog.cancel(cancelled)
    assert done.wait(5)
    assert sorted(fired, key=fired.get) == ["early", "middle", "late"]
    assert abs(fired["early"] - 0.2) < 0.15 and abs(fired["middle"] - 0.4) < 0.15 and abs(fired["late"] - 0.6) < 0.15
    assert "cancelled" not in fired
