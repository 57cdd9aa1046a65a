"""When ExSetup.exe cannot be read: the build comes from the organization collector's AdminDisplayVersion,
polled over real WinRM from the simulator, and is judged at CU level (its update is unknown). And a build of an
Exchange version the catalog cannot place, read either way, is an unknown build, not an unreadable one."""

from __future__ import annotations

import pytest

from exporter.catalog import Catalog
from exporter.metrics import server_families

from ..conftest import SimulatedFleet, relocate

SCENARIO = {
    "organization": {"name": "Contoso", "domain": "contoso.com", "mitigations_enabled": True},
    "servers": [
        {"name": "EX-SE01", "address": "127.0.0.1", "build": "15.2.2562.53"},
        # 2019 CU15 Sep26SUv2, but neither ExSetup.exe nor the registry path can be read
        {"name": "EX19-NOEXSETUP", "address": "127.0.0.1", "build": "15.2.1748.53", "build_source": "none"},
        # an Exchange version newer than every product the catalog knows (the simulator gives it no EEMS)
        {"name": "EX-NEXT", "address": "127.0.0.1", "build": "16.0.100.1"},
    ],
}


def build_labels(result) -> dict[str, str]:
    families = server_families(result)
    return next(dict(s.labels) for f in families for s in f.samples if s.name == "exchange_build_info")


@pytest.fixture
def poller():
    """A fresh poller per test: whether the organization was polled yet is part of each test."""
    from exporter.poller import Poller
    from exporter.runtime import SafeRuntime

    with SimulatedFleet(relocate(SCENARIO)) as fleet:
        poller = Poller(SafeRuntime(fleet.config(), Catalog.load()))
        yield poller
        poller.stop()


def test_without_organization_data_the_build_stays_unknown(poller):
    result = poller.poll_server("EX19-NOEXSETUP")
    assert result.outcome.success and result.state.build is None
    assert any(failure.part == "build" for failure in result.state.collection_errors)


def test_admin_display_version_fills_in_at_cu_level(poller):
    assert poller.poll_organization().outcome.success
    result = poller.poll_server("EX19-NOEXSETUP")
    build = result.state.build
    assert build_labels(result) == {"server": "EX19-NOEXSETUP", "product": "Exchange2019", "cu": "CU15",
                                    "update": "unknown", "version": "15.2.1748.53", "source": "admin_display_version"}
    # Every CU15 build passes 2023-03, but not every one passes 2026-06: the unknown update decides, so there is
    # no verdict (no series, no page) for 2026-06 (review R12).
    assert build.cutoffs == {"2023-03": True}
    se = poller.poll_server("EX-SE01")
    assert build_labels(se)["source"] == "exsetup" and se.state.build.known


def samples_of(result) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in server_families(result) for s in f.samples}


def test_a_newer_exchange_version_is_an_unknown_build(poller):
    """16.0 was refused by the catalog's parser: exchange_collector_partial_failure{part="build"} (ExchangeCollectorBlind,
    "the exporter cannot read") and no build info. It is a build the catalog does not know (ExchangeBuildUnknown),
    and nothing is claimed of it: no cutoff series, no EEMS series where the server shows none (never 0)."""
    for _ in range(2):  # from ExSetup.exe; then again once the organization was polled (its AdminDisplayVersion is 16.0 too)
        result = poller.poll_server("EX-NEXT")
        assert result.outcome.success and result.state.collection_errors == ()
        assert build_labels(result) == {"server": "EX-NEXT", "product": "unknown", "cu": "unknown", "update": "unknown",
                                        "version": "16.0.100.1", "source": "exsetup"}
        found = samples_of(result)
        assert found[("exchange_build_known", (("server", "EX-NEXT"),))] == 0
        assert not {name for name, _ in found} & {"exchange_eems_certificate_cutoff_compliant", "exchange_eems_supported",
                                                  "exchange_collector_partial_failure"}
        assert poller.poll_organization().outcome.success


def test_the_pages_say_a_newer_exchange_version_is_unknown_to_the_exporter(poller):
    """The fleet table and the server page showed such a build as "unknown unknown unknown" over "unknown" (product,
    CU, update, servicing), which reads like an unreadable build; they say what it is."""
    from exporter.web import pages

    result = poller.poll_server("EX-NEXT")
    row = pages.Row(result, ())
    for html in (pages.row_html(row, lambda s: s).render(result.outcome.finished),
                 pages.server(row, pages.timings(result)).decode()):
        assert "16.0.100.1" in html and "an Exchange version this exporter does not know" in html, html
        assert "unknown unknown unknown" not in html
