"""The pages' evaluator and the two range functions of the rules, over one instant.

The rules set a server's facts aside once `max_over_time(exchange_up[15m]) == 0` and page a restart loop on
`changes(exchange_exporter_start_time_seconds[1h])`. The pages have the samples of now only: a window holds that one
sample, so the first is the sample (as if it had held for the window, as an alert is shown with its `for:`) and the
second is 0.
"""

from __future__ import annotations

import pytest

from exporter.web import alerts

NOW = 1_796_000_000.0


def stopped_service(up: float) -> list[tuple[str, dict[str, str], float]]:
    """A server with EEMS whose MSExchangeMitigation service is stopped; its last poll gave exchange_up `up`."""
    labels = {"server": "EX01"}
    return [("exchange_up", labels, up), ("exchange_eems_supported", labels, 1.0),
            ("exchange_server_edge", labels, 0.0),
            ("exchange_service_state", {**labels, "name": "MSExchangeMitigation", "state": "running"}, 0.0),
            ("exchange_service_state", {**labels, "name": "MSExchangeMitigation", "state": "stopped"}, 1.0),
            ("exchange_collector_error", {**labels, "collector": "server", "reason": "timeout"}, 1.0 - up)]


def test_a_server_whose_last_poll_failed_shows_only_that_it_cannot_be_polled():
    assert "ExchangeEEMSServiceNotRunning" in {f.alert for f in alerts.firing(stopped_service(1.0), now=NOW)}
    assert {f.alert for f in alerts.firing(stopped_service(0.0), now=NOW)} == {"ExchangeExporterCannotPoll"}


def test_a_restart_loop_is_for_prometheus_to_see():
    """One sample of exchange_exporter_start_time_seconds has no change in it: ExchangeExporterRestarting never
    holds here."""
    samples = [("exchange_exporter_start_time_seconds", {}, NOW - 60.0)]
    assert alerts.evaluated(alerts.read_by_rules(samples), NOW)[0] == []
    assert alerts.read_by_rules(samples) == samples, "the rule's selector is read"


@pytest.mark.parametrize("expression", ["x[5m]", "x[5m] > 0", "max_over_time(x[5y])", "max_over_time(x)",
                                        "changes(rate(x[5m])[1h])", "max_over_time(x[1.5h])"])
def test_a_range_outside_the_two_functions_or_a_bad_window_is_an_error(expression):
    with pytest.raises(alerts.PromQLError):
        alerts.parse(expression)
