"""Probe-only mode (`poll.background: false`): Prometheus's /probe targets, not the configuration, decide which
servers are polled. A configured server missing from those targets used to be polled by nothing with nothing
saying so (the organization collector, whose ExchangeServerNotPolled would, does not run in that mode): /metrics
now lists the servers a /probe would poll, and ExchangeServerNotProbed (alerts/tests/exporter.test.yml) names the
ones no probe result comes for."""

from __future__ import annotations

from exporter.web import alerts

from ..conftest import PASSWORD_ENV, own_samples

SERVERS = ["ex01.contoso.com", "ex02.contoso.com", "EX03"]


def _samples(background: bool) -> list[tuple[str, dict[str, str], float]]:
    return own_samples(f"poll: {{background: {str(background).lower()}}}\n", SERVERS)


def test_probe_only_metrics_name_every_server_a_probe_would_poll(monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "a password")
    probed = {labels["server"]: value for name, labels, value in _samples(False)
              if name == "exchange_exporter_probe_target"}
    assert probed == {name: 1 for name in SERVERS}


def test_background_polling_lists_no_probe_target(monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "a password")
    assert not [name for name, _, _ in _samples(True) if name.startswith("exchange_exporter_probe_target")]


def test_the_exporters_own_pages_never_judge_an_unprobed_server(monkeypatch):
    """Only Prometheus knows which targets it probes: on the exporter's own samples every server looks unprobed."""
    monkeypatch.setenv(PASSWORD_ENV, "a password")
    assert "ExchangeServerNotProbed" not in {f.alert for f in alerts.firing(_samples(False))}
