"""/metrics is rendered from per-server cached lines and /probe through the same encoder; both must say exactly
what prometheus_client would."""

from __future__ import annotations

import time
from datetime import date, datetime, timezone

import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import InfoMetricFamily, Metric
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter.catalog import Catalog
from exporter.exporter import Exporter
from exporter.metrics import (
    CachedExposition,
    SelfStatus,
    _encode,
    _format,
    organization_families,
    probe_body,
    self_families,
    server_families,
)
from exporter.model import CollectorOutcome, OrganizationResult, ServerResult

from ..conftest import SimulatedFleet, demo_scenario, poll_all, quick_organization, relocate


class _Fixed:
    """The families of a snapshot for prometheus_client to encode, merged per name as an exposition must be."""

    def __init__(self, families):
        merged: dict[str, Metric] = {}
        for family in families:
            merged.setdefault(family.name, Metric(family.name, family.documentation, family.type)).samples.extend(
                family.samples)
        self._families = list(merged.values())

    def collect(self):
        return self._families


@pytest.fixture(scope="module")
def polled():
    with SimulatedFleet(relocate(quick_organization(demo_scenario()))) as fleet:
        exporter = Exporter(fleet.config(), Catalog.load())
        poll_all(exporter.poller)
        yield exporter
        exporter.stop()


def _samples(families) -> set:
    return {(f.name, f.type, f.documentation, s.name, tuple(sorted(s.labels.items())), s.value)
            for f in families for s in f.samples if f.name.startswith("exchange_")}


def _reference(exporter: Exporter) -> CollectorRegistry:
    servers, organization = exporter.poller.snapshot()
    families = [f for result in servers for f in server_families(result)]
    families += organization_families(organization, exporter.self_status())
    families += self_families(exporter.self_status())
    registry = CollectorRegistry()
    registry.register(_Fixed(families))
    return registry


def _probe_reference(result) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(_Fixed(server_families(result)))
    return registry


def test_text_format_matches_prometheus_client(polled):
    body, content_type = polled.metrics_body("")
    assert content_type.startswith("text/plain")
    ours = _samples(parse_text(body.decode()))
    assert ours == _samples(parse_text(generate_latest(_reference(polled)).decode()))
    assert len(ours) > 200


def test_openmetrics_matches_prometheus_client(polled):
    body, content_type = polled.metrics_body("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n") and body.count(b"# EOF") == 1
    ours = _samples(parse_openmetrics(body.decode()))
    assert ours == _samples(parse_openmetrics(generate_openmetrics(_reference(polled)).decode()))


def test_a_new_poll_replaces_the_cached_lines(polled):
    before, _ = polled.metrics_body("")
    result = polled.poller.poll_server("EX-SE01")
    after, _ = polled.metrics_body("")
    duration = f'exchange_collector_duration_seconds{{collector="server",server="EX-SE01"}} {result.outcome.duration_seconds!r}'
    assert duration.encode() in after and duration.encode() not in before


def test_probe_says_what_prometheus_client_would_in_both_formats(polled):
    [result] = [r for r in polled.poller.snapshot()[0] if r.name == "EX-SE01"]
    body, content_type = probe_body(result, "")
    assert content_type.startswith("text/plain")
    ours = _samples(parse_text(body.decode()))
    assert ours == _samples(parse_text(generate_latest(_probe_reference(result)).decode())) and len(ours) > 20
    body, content_type = probe_body(result, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n") and body.count(b"# EOF") == 1
    assert _samples(parse_openmetrics(body.decode())) == _samples(
        parse_openmetrics(generate_openmetrics(_probe_reference(result)).decode()))


HOSTILE_TEXT = 'a"b\\c\nd\\n"}'  # a quote, a backslash, a newline, a literal \n and a brace


@pytest.mark.parametrize("accept", ["", "application/openmetrics-text; version=1.0.0"])
def test_label_values_with_quotes_backslashes_and_newlines_reach_the_scraper_unchanged(accept):
    """A label value is escaped as the format says (backslash, double quote, line feed): unescaped, a quote ended the
    value early and a newline broke the line, so the scrape failed or read another value than the exporter meant."""
    organization = OrganizationResult(HOSTILE_TEXT, outcome=CollectorOutcome("organization", False, 1.0, None,
                                                                            "timeout", None))
    families = organization_families(organization, SelfStatus(date(2026, 6, 9), 300.0, True, 0.0))
    body, content_type = _encode([_format(families)], None, accept)
    parse = parse_openmetrics if content_type.startswith("application/openmetrics-text") else parse_text
    ours = _samples(parse(body.decode()))
    assert {dict(labels)["organization"] for *_, labels, _ in ours} == {HOSTILE_TEXT}
    registry = CollectorRegistry()
    registry.register(_Fixed(families))
    reference = generate_openmetrics(registry) if content_type.startswith("application/openmetrics-text") else generate_latest(registry)
    assert ours == _samples(parse(reference.decode()))


@pytest.mark.parametrize("accept", ["", "application/openmetrics-text; version=1.0.0"])
def test_help_text_with_backslashes_and_newlines_is_escaped_as_prometheus_client_escapes_it(accept):
    family = Metric("exchange_test", 'Line one\nline two with a \\ backslash and a "quote".', "gauge")
    family.add_sample("exchange_test", {"server": "EX01"}, 1.0)
    info = InfoMetricFamily("exchange_test_thing", "An info family\\with a backslash.")
    info.add_sample("exchange_test_thing_info", {"server": "EX01", "version": "15.2"}, 1.0)
    body, content_type = _encode([_format([family, info])], None, accept)
    registry = CollectorRegistry()
    registry.register(_Fixed([family, info]))
    if content_type.startswith("application/openmetrics-text"):
        ours, reference = parse_openmetrics(body.decode()), parse_openmetrics(generate_openmetrics(registry).decode())
    else:
        ours, reference = parse_text(body.decode()), parse_text(generate_latest(registry).decode())
    ours, reference = list(ours), list(reference)
    assert [(f.name, f.type, f.documentation) for f in ours] == [(f.name, f.type, f.documentation) for f in reference]
    assert ours[0].documentation == 'Line one\nline two with a \\ backslash and a "quote".'
    assert b"# HELP exchange_test Line one\\nline two with a \\\\ backslash" in body  # escaped in the text itself
    assert _samples(ours) == _samples(reference)


def test_metrics_body_says_when_the_exporter_started_on_every_platform(polled):
    """ExchangeExporterRestarting counts the changes of exchange_exporter_start_time_seconds: the exporter's own
    /metrics must carry it wherever it runs (process_start_time_seconds is Linux's only), one sample, at or before
    now, the same at every scrape."""
    def start_times() -> list[float]:
        body, _ = polled.metrics_body("")
        return [s.value for f in parse_text(body.decode()) if f.name == "exchange_exporter_start_time_seconds"
                for s in f.samples]

    (first,) = start_times()
    assert 0 < first <= time.time()
    assert start_times() == [first]


@pytest.mark.parametrize("accept", ["", "application/openmetrics-text; version=1.0.0"])
def test_metrics_body_keeps_the_process_metrics_and_drops_servers_no_longer_polled(accept):
    """/metrics is prometheus_client's own families (process, GC, platform) followed by the exporter's, with one
    `# EOF` at the very end in OpenMetrics; a server that left the configuration leaves the page."""
    base = CollectorRegistry()
    Gauge("base_process_thing", "From prometheus_client's registry.", registry=base).set(3)
    status = SelfStatus(catalog_newest_release=date(2026, 6, 9), poll_interval_seconds=300.0,
                        last_reload_successful=True, last_reload_timestamp=0.0)
    outcome = CollectorOutcome("server", True, 1.0, datetime(2026, 11, 26, 12, tzinfo=timezone.utc))
    ex01, ex02 = ServerResult("EX01", outcome=outcome), ServerResult("EX02", outcome=outcome)
    exposition = CachedExposition()
    body, content_type = exposition.body([ex01, ex02], None, status, base, accept)
    openmetrics = content_type.startswith("application/openmetrics-text")
    families = {f.name: f for f in (parse_openmetrics if openmetrics else parse_text)(body.decode())}
    assert families["base_process_thing"].samples[0].value == 3
    assert {s.labels["server"] for s in families["exchange_up"].samples} == {"EX01", "EX02"}
    assert body.count(b"# EOF") == (1 if openmetrics else 0) and body.endswith(b"# EOF\n" if openmetrics else b"\n")
    assert body.index(b"base_process_thing") < body.index(b"exchange_up")
    body, _ = exposition.body([ex01], None, status, base, accept)
    families = {f.name: f for f in (parse_openmetrics if openmetrics else parse_text)(body.decode())}
    assert {s.labels["server"] for s in families["exchange_up"].samples} == {"EX01"}


@pytest.mark.parametrize("accept", ["text/plain; version=a", "application/openmetrics-text; version=1.x"])
def test_an_accept_header_with_a_version_prometheus_client_cannot_compare_gets_the_text_format(accept):
    """prometheus_client's choose_encoder raises on such a version; the answer is the text format, as for no header."""
    body, content_type = probe_body(ServerResult("EX01"), accept)
    assert content_type.startswith("text/plain") and b"exchange_up" in body and b"# EOF" not in body
