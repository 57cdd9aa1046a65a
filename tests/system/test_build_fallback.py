"""When ExSetup.exe cannot be read: the build comes from the organization collector's AdminDisplayVersion,
polled over real WinRM from the simulator, and is judged at CU level (its update is unknown)."""

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
