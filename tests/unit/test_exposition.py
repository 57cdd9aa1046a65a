"""/metrics is rendered from per-server cached lines; it must say exactly what prometheus_client would."""

from __future__ import annotations


import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter.catalog import Catalog
from exporter.exporter import Exporter
from exporter.metrics import render

from ..conftest import SimulatedFleet, demo_scenario, relocate


class _Fixed:
    def __init__(self, families):
        self._families = families

    def collect(self):
        return self._families


@pytest.fixture(scope="module")
def polled():
    with SimulatedFleet(relocate(demo_scenario())) as fleet:
        exporter = Exporter(fleet.config(), Catalog.load())
        exporter.poller.run_cycle()
        yield exporter
        exporter.stop()


def _samples(families) -> set:
    return {(f.name, f.type, f.documentation, s.name, tuple(sorted(s.labels.items())), s.value)
            for f in families for s in f.samples if f.name.startswith("exchange_")}


def _reference(exporter: Exporter) -> CollectorRegistry:
    servers, organization = exporter.poller.snapshot()
    registry = CollectorRegistry()
    registry.register(_Fixed(render(servers, organization, exporter._self_status())))
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
