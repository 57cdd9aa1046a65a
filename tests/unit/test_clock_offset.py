"""The server's clock offset: the script's `now` against the exporter's time while the script ran."""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from exporter.collectors import clock_offset, collect_server
from exporter.winrm import CommandResult
from exporter.runtime import Target
from simulator.scenario import scenario_from_dict

from ..conftest import demo_scenario
from .test_output_properties import SETTINGS

UTC = timezone.utc
SENT = datetime(2026, 11, 26, 12, 30, tzinfo=UTC)


def test_no_offset_when_the_script_did_not_say_its_time():
    assert clock_offset(None, SENT, 2.0, 0.5) is None


def test_the_estimate_is_the_middle_of_the_window_before_the_stages_ran():
    """`now` is read first, so it was read between sending and the answer less the stages that followed it."""
    server_now = SENT + timedelta(hours=2, seconds=1)
    assert clock_offset(server_now, SENT, 10.0, 8.0) == (7200.0, 1.0)
    # without stage times the window is the whole poll
    assert clock_offset(server_now, SENT, 10.0, 0.0) == (7196.0, 5.0)


@pytest.mark.parametrize("stages", [12.0, -1.0, float("nan")])
def test_stage_times_that_do_not_fit_in_the_poll_are_not_trusted(stages):
    assert clock_offset(SENT - timedelta(minutes=10), SENT, 10.0, stages) == (-605.0, 5.0)


def test_a_clock_behind_is_negative_and_the_true_offset_is_within_the_uncertainty():
    for true_offset in (-3 * 3600.0, -0.25, 0.0, 42.5):
        for read_after in (0.0, 1.5, 3.0):  # when, in the 3 s window, the script read its clock
            offset, uncertainty = clock_offset(SENT + timedelta(seconds=read_after + true_offset), SENT, 5.0, 2.0)
            assert abs(offset - true_offset) <= uncertainty == 1.5, (true_offset, read_after)


class HostConnection:
    """A connection that runs the command on a simulated host at once (the simulator's script_runtime is the
    WinRM layer's, not the host's)."""

    module = SimpleNamespace(secrets=lambda: [])

    def __init__(self, host):
        self.host = host

    def run(self, command, deadline):
        out = self.host.run(command.line)
        return CommandResult(b"".join(out.stdout_chunks), out.stderr, out.exit_code)


def _poll(catalog, clock_offset_setting: str | None, clock: datetime | None = None):
    scenario = demo_scenario() | ({"clock": clock} if clock else {})
    server = next(s for s in scenario["servers"] if s["name"] == "EX-SE01")
    if clock_offset_setting is not None:
        server["clock_offset"] = clock_offset_setting
    host = next(h for h in scenario_from_dict(scenario).hosts if h.name == "EX-SE01")
    target = Target("EX-SE01", "127.0.0.1", 5985, "http", "default", "", False, "ex-se01.contoso.com")
    return collect_server(target, HostConnection(host), SETTINGS, catalog, time.monotonic() + 60)


@pytest.mark.parametrize("setting, seconds", [(None, 0.0), ("-2h", -7200.0), ("+6m", 360.0)])
def test_a_poll_reports_the_servers_clock_offset(catalog, setting, seconds):
    result = _poll(catalog, setting)
    state = result.state
    assert result.outcome.success and state is not None
    # the simulator writes `now` in whole milliseconds
    assert abs(state.clock_offset_seconds - seconds) <= state.clock_uncertainty_seconds + 0.001
    assert 0 <= state.clock_uncertainty_seconds <= result.outcome.duration_seconds / 2


def test_a_server_clock_behind_keeps_its_relative_judgments(catalog):
    """interpret ages the server's own times against the server's own now: a clock two hours behind reads the same
    EEMS history as one on time (only the timestamps move with the clock)."""
    calm = datetime(2026, 11, 26, 12, 30, tzinfo=UTC)  # both read at one instant of the scenario
    on_time, behind = _poll(catalog, None, calm).state, _poll(catalog, "-2h", calm).state
    assert behind.eems.failing == on_time.eems.failing
    assert behind.eems.fetch_errors == on_time.eems.fetch_errors
    shift = on_time.eems.last_activity - behind.eems.last_activity
    assert abs(shift - timedelta(hours=2)) < timedelta(seconds=5)  # a check's lines spread over seconds


def test_the_server_page_shows_the_clock_offset_and_says_what_a_skew_means(catalog):
    from exporter.web import pages

    def page(setting):
        result = _poll(catalog, setting)
        return pages.server(pages.Row(result, ()), pages.timings(result)).decode()

    behind = page("-2h")
    assert re.search(r"<b>7,[12]\d\d\.\d s behind the exporter's clock \(&plusmn; \d+\.\d s\)</b>", behind)
    assert "Kerberos fails beyond 5 minutes" in behind
    on_time = page(None)
    assert "ahead of the exporter's clock" in on_time or "behind the exporter's clock" in on_time
    assert "Kerberos fails" not in on_time


@pytest.mark.parametrize("setting, fires", [("-2h", True), ("+6m", True), ("-4m", False), (None, False)])
def test_the_shipped_rule_holds_on_a_polled_server_whose_clock_is_off(catalog, setting, fires):
    """End to end within the process: a simulated server whose clock is off, polled, its series, the shipped rules
    as the pages evaluate them (the `for` is Prometheus's: alerts/tests/clock.test.yml)."""
    from exporter.metrics import server_families
    from exporter.web import alerts

    result = _poll(catalog, setting)
    samples = [(s.name, {"job": "exchange-eems", "instance": "x", **s.labels}, s.value)
               for family in server_families(result) for s in family.samples]
    firing = [f for f in alerts.firing(samples) if f.alert == "ExchangeServerClockSkew"]
    assert bool(firing) == fires, setting
