"""A wrong or expired password must not lock the monitoring account out (issue 25 item 7).

Every poll logs on, and a domain controller counts each rejected logon against the account's lockout
threshold: six servers polled every minute with a wrong password are six rejected logons a minute. The
simulator counts them. With the credential guard (exporter/connections.py) the module's polls pause after
three rejections by two servers or more, one poll tries again after each growing pause, and a reload with the
right password resumes at once. The poller runs on a manual clock, so hours of pauses pass in no time."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pytest
import yaml

from exporter.catalog import Catalog
from exporter.config import load_config
from exporter.connections import FIRST_PAUSE_SECONDS, REJECTIONS_TO_PAUSE
from exporter.exporter import Exporter

from ..clock import ManualClock
from ..conftest import PASSWORD_ENV, SimulatedFleet, jea_scenario, relocate, samples, wait_until

SERVERS = [f"EX{i:02d}" for i in range(1, 7)]
INTERVAL = 60.0
CONCURRENCY = 2
WRONG_ENV = "EEMS_TEST_WRONG_PASSWORD"


@pytest.fixture(scope="module")
def fleet():
    servers = [{"name": name, "address": "127.0.0.1", "build": "15.2.2562.53"} for name in SERVERS]
    with SimulatedFleet(relocate({"servers": servers})) as fleet:
        yield fleet


def config_text(fleet: SimulatedFleet, password_env: str, **poll) -> str:
    settings = {"concurrency": CONCURRENCY, "failing_share": 1, **poll}  # failing_share 1: no lane for failing polls
    doc = yaml.safe_load(fleet.config_text(interval=f"{INTERVAL:g}s", jitter=0, **settings))
    doc["modules"]["http"]["password_env"] = password_env
    doc.pop("organization", None)  # server polls only, so that every rejected logon is one server's poll
    return yaml.safe_dump(doc)


def paused(exporter: Exporter) -> float:
    metrics = samples(exporter.metrics_body("")[0].decode())
    return metrics[("exchange_exporter_credential_paused", frozenset({"module": "http"}.items()))]


def one_interval(exporter: Exporter, clock: ManualClock, seconds: float = INTERVAL) -> list:
    """Let `seconds` pass on the poller's clock and wait for every server's poll that is then due."""
    since = datetime.now(timezone.utc)
    clock.advance(seconds)

    def polled():
        servers, _ = exporter.snapshot()
        done = [r for r in servers if r.outcome and r.outcome.finished >= since]
        return done if len(done) == len(exporter.targets()) else None

    return wait_until(polled, 30, "every server's next poll")


def test_a_rejected_credential_pauses_its_polls_instead_of_locking_the_account_out(fleet, tmp_path, monkeypatch):
    monkeypatch.setenv(WRONG_ENV, "an-expired-password")
    path = tmp_path / "exporter.yml"
    path.write_text(config_text(fleet, WRONG_ENV))
    clock = ManualClock()
    exporter = Exporter(load_config(path), Catalog.load(), clock=clock)
    exporter.start()
    try:
        first = one_interval(exporter, clock)
        rejected = fleet.fleet.rejected_logons()
        assert rejected == REJECTIONS_TO_PAUSE  # no more logons at once than rejections left before the pause
        reasons = [r.outcome.error_reason for r in first]
        assert set(reasons) == {"auth_failed", "credential_paused"}, reasons
        assert reasons.count("credential_paused") == len(SERVERS) - rejected
        assert paused(exporter) == 1

        for _ in range(5):  # five more intervals inside the pause: thirty rejected logons without the guard
            polls = one_interval(exporter, clock)
            assert {r.outcome.error_reason for r in polls} == {"credential_paused"}
        assert fleet.fleet.rejected_logons() == rejected

        one_interval(exporter, clock, FIRST_PAUSE_SECONDS)  # the pause is over: one poll tries, and is rejected
        assert fleet.fleet.rejected_logons() == rejected + 1
        assert paused(exporter) == 1
        one_interval(exporter, clock, FIRST_PAUSE_SECONDS)  # the next pause is twice as long
        assert fleet.fleet.rejected_logons() == rejected + 1

        path.write_text(config_text(fleet, PASSWORD_ENV))  # the right password: resume at once
        assert exporter.reload() == (True, "configuration reloaded")
        assert paused(exporter) == 0
        polls = one_interval(exporter, clock)
        assert all(r.outcome.success for r in polls), [r.outcome.error_reason for r in polls]
        assert fleet.fleet.rejected_logons() == rejected + 1
    finally:
        exporter.stop()


@pytest.fixture(scope="module")
def large_fleet():
    servers = [{"name": f"EX{i:02d}", "address": "127.0.0.1", "build": "15.2.2562.53"} for i in range(1, 41)]
    with SimulatedFleet(relocate({"servers": servers})) as fleet:
        yield fleet


def test_a_start_with_a_rejected_credential_costs_at_most_the_rejections_that_pause(large_fleet, tmp_path,
                                                                                     monkeypatch):
    """40 servers all due at once (the manual clock moves a whole interval), polled 32 at a time (the default
    poll.concurrency), with a wrong password: the guard's count starts at zero at every start, and every poll
    already running when the third rejection paused the module had logged on with the bad credential too (4 to
    33 rejected logons a start before the fix, median 12 of 20 starts). A start, and a restart after the pause (a crash loop, a
    rolled-out pod), must each cost the account no more than the REJECTIONS_TO_PAUSE rejected logons that pause
    its polls, whatever the concurrency and the fleet's size."""
    monkeypatch.setenv(WRONG_ENV, "an-expired-password")
    path = tmp_path / "exporter.yml"
    path.write_text(config_text(large_fleet, WRONG_ENV, concurrency=32, failing_share=0.25))
    costs = []
    for _ in ("start", "restart"):
        before = large_fleet.fleet.rejected_logons()
        clock = ManualClock()
        exporter = Exporter(load_config(path), Catalog.load(), clock=clock)
        exporter.start()
        try:
            polls = one_interval(exporter, clock)
            assert paused(exporter) == 1
        finally:
            exporter.stop()
        costs.append(large_fleet.fleet.rejected_logons() - before)
        reasons = [r.outcome.error_reason for r in polls]
        assert reasons.count("auth_failed") == costs[-1] and reasons.count("credential_paused") == 40 - costs[-1]
    assert costs == [REJECTIONS_TO_PAUSE, REJECTIONS_TO_PAUSE], costs


SLOW = [f"SLOW{i}" for i in range(1, REJECTIONS_TO_PAUSE + 1)]


@pytest.mark.parametrize("protocol", ["winrs", "psrp"])
def test_the_first_answer_to_a_new_credential_lets_the_other_polls_log_on_without_waiting_for_its_poll(protocol,
                                                                                                       tmp_path):
    """Until a server accepts the credential only REJECTIONS_TO_PAUSE polls log on at once. Polls whose scripts
    run for seconds show that the credential works at their first answer: the other polls go then, not when a
    script has ended (a whole poll's runtime added to every start: 1.45x the first cycle of bench/bench.py)."""
    servers = [{"name": name, "address": "127.0.0.1", "build": "15.2.2562.53",
                "output_faults": {"script_runtime": 8.0}} for name in SLOW]
    servers.append({"name": "EX01", "address": "127.0.0.1", "build": "15.2.2562.53"})
    scenario = {"servers": servers}
    if protocol == "psrp":  # the exporter's JEA endpoint
        scenario["remoting"] = jea_scenario(tmp_path / "endpoint")["remoting"]
    with SimulatedFleet(relocate(scenario)) as fleet:
        doc = yaml.safe_load(config_text(fleet, PASSWORD_ENV, concurrency=8))
        if protocol == "psrp":
            doc["modules"]["http"]["protocol"] = "psrp"
        path = tmp_path / "exporter.yml"
        path.write_text(yaml.safe_dump(doc))
        started = "commands" if protocol == "winrs" else "invocations"
        exporter = Exporter(load_config(path), Catalog.load())
        try:
            with ThreadPoolExecutor(len(SLOW)) as pool:
                slow = [pool.submit(exporter.poller.poll_server, name.lower()) for name in SLOW]
                wait_until(lambda: all(fleet.fleet.stats()["hosts"][name][started] for name in SLOW), 30,
                           "every slow script")
                assert exporter.poller.poll_server("ex01").outcome.success
                assert not any(poll.done() for poll in slow), "EX01's poll waited for a slow poll to end"
                assert all(poll.result().outcome.success for poll in slow)
        finally:
            exporter.stop()
