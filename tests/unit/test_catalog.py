"""Build verdicts at every cutoff boundary, unknown-build rules, and catalog-file validation."""

from __future__ import annotations

import csv
from datetime import date
from pathlib import Path

import pytest

from exporter.catalog import VERDICTS_KEPT, BuildVersionError, Catalog, parse_admin_display_version, parse_build
from exporter.catalog_data import CatalogError, packaged_builds, parse_builds
from exporter.cli import verdict_to_json
from exporter.model import BuildVerdict

REPO = Path(__file__).resolve().parents[2]
REFERENCE_BUILDS = REPO / "docs" / "reference" / "exchange-builds.tsv"
HEADER = "product\tcu\tupdate\tbuild\treleased\n"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


def cutoffs(catalog: Catalog, version: str) -> tuple[bool, bool]:
    v = catalog.verdict(version)
    return v.cutoffs["2023-03"], v.cutoffs["2026-06"]


def test_cutoff_ids_and_newest_release(catalog):
    assert catalog.cutoff_ids == ("2023-03", "2026-06")
    assert catalog.newest_release >= date(2026, 8, 11)


@pytest.mark.parametrize(
    "version, expected",
    [
        # 2016 CU23: Mar23SU is the 2023 minimum, Jun26SU the 2026 one.
        ("15.1.2507.21", (False, False)),
        ("15.1.2507.23", (True, False)),
        ("15.1.2507.66", (True, False)),
        ("15.1.2507.69", (True, True)),
        # 2019 CU11 / CU12 Mar23SU minimums.
        ("15.2.986.41", (False, False)),
        ("15.2.986.42", (True, False)),
        ("15.2.1118.25", (False, False)),
        ("15.2.1118.26", (True, False)),
        ("15.2.1118.40", (True, False)),
        # 2019 CU13 RTM: every CU13 build passes 2023-03, none passes 2026-06.
        ("15.2.1258.12", (True, False)),
        ("15.2.1258.39", (True, False)),
        # 2019 CU14 / CU15 2026 minimums.
        ("15.2.1544.39", (True, False)),
        ("15.2.1544.41", (True, True)),
        ("15.2.1748.43", (True, False)),
        ("15.2.1748.46", (True, True)),
        # SE: RTM passes 2023-03; May26HU .41 is before the June 2026 cutoff, Jun26SU .43 passes.
        ("15.2.2562.17", (True, False)),
        ("15.2.2562.41", (True, False)),
        ("15.2.2562.43", (True, True)),
        ("15.2.2562.46", (True, True)),
    ],
)
def test_cutoff_boundaries(catalog, version, expected):
    assert cutoffs(catalog, version) == expected
    assert catalog.verdict(version).known


def test_every_2016_cu22_build_fails_both_cutoffs(catalog):
    cu22 = [r for r in _reference_rows() if r["product"] == "Exchange2016" and r["cu"] == "CU22"]
    assert len(cu22) >= 9
    for row in cu22:
        v = catalog.verdict(row["build"])
        assert v.eems_supported, row
        assert v.cutoffs == {"2023-03": False, "2026-06": False}, row


def test_exchange_2013_has_no_eems(catalog):
    v = catalog.verdict("15.0.1497.48")
    assert (v.product, v.cu, v.update, v.known) == ("Exchange2013", "CU23", "Mar23SU", True)
    assert not v.eems_supported
    assert v.cutoffs == {"2023-03": False, "2026-06": False}
    assert v.product_support_end == date(2023, 4, 11)


@pytest.mark.parametrize(
    "version, eems",
    [("15.1.2308.8", False), ("15.1.2375.7", True), ("15.2.922.7", False), ("15.2.986.5", True), ("15.2.2562.17", True)],
)
def test_eems_starts_at_2016_cu22_and_2019_cu11(catalog, version, eems):
    v = catalog.verdict(version)
    assert v.known and v.eems_supported is eems
    if not eems:
        assert not any(v.cutoffs.values())


def test_known_verdict_fields(catalog):
    v = catalog.verdict("15.2.1544.4")
    assert (v.product, v.cu, v.update, v.released) == ("Exchange2019", "CU14", "", date(2024, 2, 13))
    assert v.superseded_since == date(2024, 3, 12)
    assert v.product_support_end == date(2025, 10, 14)
    se = catalog.verdict("15.2.2562.17")
    assert (se.product, se.product_support_end) == ("ExchangeSE", None)


def test_newest_build_of_a_cu_is_not_superseded(catalog):
    newest_cu22 = catalog.verdict("15.1.2375.37")
    assert newest_cu22.superseded_since is None


def test_verdict_to_json(catalog):
    assert verdict_to_json(catalog.verdict("15.2.2562.41")) == {
        "version": "15.2.2562.41",
        "product": "ExchangeSE",
        "cu": "RTM",
        "update": "May26HU",
        "released": "2026-05-07",
        "known": True,
        "eems_supported": True,
        "cutoffs": {"2023-03": True, "2026-06": False},
        "superseded_since": "2026-06-09",
        "product_support_end": None,
        "servicing": "serviced",
        "cu_servicing_end": None,
        "next_build": {"version": "15.2.2562.53", "product": "ExchangeSE", "cu": "RTM", "update": "Sep26SUv2",
                       "released": "2026-10-02"},
        "update_path_since": "2026-06-09",
    }


# ---------------------------------------------------------------- full-build thresholds


@pytest.mark.parametrize(
    "version, eems",
    [
        ("15.1.2375.6", False), ("15.1.2375.7", True),  # 2016 CU22 is 15.1.2375.7: HealthChecker's >= 15.1.2375.7
        ("15.2.986.4", False), ("15.2.986.5", True),  # 2019 CU11
        ("15.2.2562.16", False), ("15.2.2562.17", True),  # SE RTM
    ],
)
def test_eems_gate_compares_the_full_build(catalog, version, eems):
    v = catalog.verdict(version)
    assert v.eems_supported is eems
    if not eems:
        assert not any(v.cutoffs.values())


@pytest.mark.parametrize(
    "version, flighting",
    [
        ("15.0.1497.48", False), ("15.1.2507.75", False),  # 2013, 2016: never
        ("15.2.1544.48", False), ("15.2.1748.9", False), ("15.2.1748.10", True),  # 2019 from CU15's own build
        ("15.2.1748.53", True), ("15.2.2562.17", True), ("15.2.2700.1", True),  # SE, a future SE CU
    ],
)
def test_feature_flighting_starts_at_2019_cu15_and_se_rtm(catalog, version, flighting):
    """cutoffs.yaml `flighting`: the builds whose Feature Flighting service uses OCS's GetExchangeConfig."""
    assert catalog.verdict(version).flighting_supported is flighting


def test_a_row_before_2019_cu15s_first_build_moves_the_flighting_threshold():
    """Like EEMS's first CU, flighting's is a threshold a list may not move (`catalog update` refuses it)."""
    from exporter.catalog import Build
    from exporter.catalog_data import threshold_changes
    packaged = packaged_builds()
    early = Build("Exchange2019", "CU15", "Early", (15, 2, 1748, 5), date(2025, 2, 1))
    assert threshold_changes(packaged, {**packaged, early.parts: early}) == [
        "Feature Flighting from Exchange2019 15.2.1748.10 -> 15.2.1748.5"]


def test_all_from_cutoff_compares_the_full_build(catalog):
    # 2023-03 passes every build "from 2019 CU13" = from 15.2.1258.12, not from 15.2.1258.0.
    assert cutoffs(catalog, "15.2.1258.11") == (False, False)
    assert cutoffs(catalog, "15.2.1258.12") == (True, False)


# ---------------------------------------------------------------- servicing and the update path

TODAY = date(2026, 11, 29)


def servicing(catalog: Catalog, version: str, today: date) -> tuple[str, date | None]:
    v = catalog.verdict(version, today=today)
    return v.servicing, v.cu_servicing_end


@pytest.mark.parametrize(
    "version, today, expected",
    [
        # Exchange 2019 serviced CU14 and CU15 (two CUs) until ESU Period 2 ended on 2026-10-31.
        ("15.2.1544.48", date(2026, 10, 31), ("serviced", None)),
        ("15.2.1544.48", date(2026, 11, 1), ("out_of_support", date(2026, 11, 1))),
        ("15.2.1748.53", date(2026, 10, 31), ("serviced", None)),
        ("15.2.1748.53", date(2026, 11, 1), ("out_of_support", date(2026, 11, 1))),
        # 2019 CU13 left the window when CU15 shipped (2025-02-10); its last SU was Nov24SUv2.
        ("15.2.1258.39", date(2025, 2, 9), ("serviced", None)),
        ("15.2.1258.39", date(2025, 2, 10), ("cu_not_serviced", date(2025, 2, 10))),
        # 2016 serves one CU: CU22 kept getting SUs after CU23 until Nov22SU; Jan23SU was CU23 only.
        ("15.1.2375.37", date(2023, 1, 9), ("serviced", None)),
        ("15.1.2375.37", date(2023, 1, 10), ("cu_not_serviced", date(2023, 1, 10))),
        ("15.1.2507.75", date(2026, 10, 31), ("serviced", None)),
        ("15.1.2507.75", date(2026, 11, 1), ("out_of_support", date(2026, 11, 1))),
        # 2016 CU20 left the one-CU window when CU21 shipped (2021-06-29); its last SU was Jul21SU, so it stopped
        # at the next release, CU22 (2021-09-28), not when a later CU (CU23) shipped.
        ("15.1.2242.12", date(2021, 9, 27), ("serviced", None)),
        ("15.1.2242.12", date(2021, 9, 28), ("cu_not_serviced", date(2021, 9, 28))),
        # Exchange 2013 ended with its extended support on 2023-04-11 (no ESU).
        ("15.0.1497.48", date(2023, 4, 11), ("serviced", None)),
        ("15.0.1497.48", date(2023, 4, 12), ("out_of_support", date(2023, 4, 12))),
        # An unserviced CU keeps the date it stopped when the product ends later.
        ("15.2.1118.40", TODAY, ("out_of_support", date(2024, 2, 13))),
        # SE has no fixed end: RTM, its only CU, is serviced.
        ("15.2.2562.53", TODAY, ("serviced", None)),
        ("15.2.2562.17", TODAY, ("serviced", None)),
    ],
)
def test_servicing_boundaries(catalog, version, today, expected):
    assert servicing(catalog, version, today) == expected


def test_update_path_of_a_serviced_cu_leads_to_its_newest_update(catalog):
    v = catalog.verdict("15.2.2562.41", today=TODAY)  # SE May26HU
    assert (v.next_build.version, v.next_build.update, v.update_path_since) == ("15.2.2562.53", "Sep26SUv2",
                                                                                 date(2026, 6, 9))
    newest = catalog.verdict("15.2.2562.53", today=TODAY)
    assert newest.next_build is None and newest.update_path_since is None
    # The second-newest update is behind too: its path leads to the newest (Sep26SUv2), open since its successor.
    second = catalog.verdict("15.2.2562.49", today=TODAY)  # Sep26SU
    assert (second.next_build.version, second.update_path_since) == ("15.2.2562.53", date(2026, 10, 2))


def test_update_path_of_an_unserviced_cu_leads_to_the_newest_cu(catalog):
    # 2019 CU12 Nov23SU, the last update of its CU: nothing newer in its CU, but CU12 stopped on 2024-02-13.
    v = catalog.verdict("15.2.1118.40", today=date(2025, 6, 1))
    assert v.superseded_since is None
    assert (v.servicing, v.next_build.product, v.next_build.cu) == ("cu_not_serviced", "Exchange2019", "CU15")
    assert v.update_path_since == date(2024, 2, 13)
    # Behind within an unserviced CU: the path has been open since the first newer update of the CU.
    older = catalog.verdict("15.2.1118.7", today=date(2025, 6, 1))
    assert older.update_path_since == older.superseded_since < date(2024, 2, 13)


def test_out_of_support_products_migrate_to_se(catalog):
    for version in ("15.2.1748.53", "15.1.2507.75", "15.0.1497.48"):
        v = catalog.verdict(version, today=TODAY)
        assert v.servicing == "out_of_support"
        assert (v.next_build.product, v.next_build.version) == ("ExchangeSE", "15.2.2562.53")
        assert v.update_path_since == v.cu_servicing_end


def test_a_new_se_cu_ends_rtm_servicing():
    # Released after today's date on the machine that wrote this test: laid over the packaged list directly, since
    # a catalog_file refuses a release date in the future (test_catalog_update.py).
    extra = parse_builds("extra.tsv", HEADER + "ExchangeSE\tCU1\t\t15.2.2700.10\t2026-12-08\n")
    catalog = Catalog.from_builds({**packaged_builds(), **extra})
    assert servicing(catalog, "15.2.2562.53", date(2026, 12, 7)) == ("serviced", None)
    assert servicing(catalog, "15.2.2562.53", date(2026, 12, 8)) == ("cu_not_serviced", date(2026, 12, 8))
    v = catalog.verdict("15.2.2562.53", today=date(2026, 12, 8))
    assert (v.next_build.cu, v.next_build.version) == ("CU1", "15.2.2700.10")


def test_every_catalog_build_has_a_servicing_verdict_and_path(catalog):
    counts: dict[str, int] = {}
    for build in catalog.builds():
        v = catalog.verdict(".".join(map(str, build.parts)), today=TODAY)
        counts[v.servicing] = counts.get(v.servicing, 0) + 1
        assert (v.servicing == "serviced") == (v.cu_servicing_end is None)
        assert (v.next_build is None) == (v.update_path_since is None)
        if v.next_build is None:
            assert v.servicing == "serviced"
    # On 2026-11-29 only Exchange SE is serviced (its 12 RTM builds); 2013/2016/2019 get no more updates.
    assert counts == {"serviced": 12, "out_of_support": len(catalog.builds()) - 12}


# ---------------------------------------------------------------- CU-level builds (AdminDisplayVersion)


def test_cu_level_build_passes_a_cutoff_only_when_every_build_of_its_cu_does(catalog):
    """R12: where some builds of the CU pass and some fail, the unknown update decides: no verdict, no page."""
    cu15 = catalog.verdict("15.2.1748.53", cu_level=True, today=TODAY)
    assert (cu15.cu, cu15.update, cu15.known, cu15.released) == ("CU15", "unknown", False, None)
    assert cu15.cutoffs == {"2023-03": True}  # CU15 RTM is before the June 2026 minimum, its later updates not
    cu12 = catalog.verdict("15.2.1118.7", cu_level=True, today=TODAY)
    assert cu12.cutoffs == {"2026-06": False}  # no CU12 build passes 2026-06; 2023-03 needs Feb23SU+ of CU12
    cu13 = catalog.verdict("15.2.1258.12", cu_level=True, today=TODAY)
    assert cu13.cutoffs["2023-03"] is True  # every CU13 build passes 2023-03
    se = catalog.verdict("15.2.2562.17", cu_level=True, today=TODAY)
    assert se.cutoffs == {"2023-03": True} and se.superseded_since is None
    assert se.next_build.version == "15.2.2562.53"  # the update is unknown: the newest of its CU is the target


def test_cu_level_build_gets_no_verdict_when_only_its_cus_newest_update_passes():
    """The catalog as on the day Jun26SU shipped: SE RTM's newest build is the 2026-06 minimum. A CU-level SE RTM
    may be on it, so 2026-06 is left out (R12), not failed (a page an installed update would make false)."""
    then = {parts: b for parts, b in packaged_builds().items()
            if not (b.product == "ExchangeSE" and parts > (15, 2, 2562, 43))}
    v = Catalog.from_builds(then).verdict("15.2.2562.17", cu_level=True, today=date(2026, 6, 10))
    assert v.cutoffs == {"2023-03": True}


def test_cu_level_build_of_an_unlisted_cu_keeps_eems_and_the_cutoffs_its_place_earns(catalog):
    """AdminDisplayVersion of a 2019 CU the catalog does not list (between CU13 and CU14): it has EEMS, so no
    ExchangeBuildWithoutEEMS page, and it reaches 2023-03's "all from CU13"."""
    v = catalog.verdict("15.2.1400.3", cu_level=True, today=TODAY)
    assert (v.product, v.cu, v.known) == ("Exchange2019", "unknown", False)
    assert v.eems_supported is True
    assert v.cutoffs == {"2023-03": True, "2026-06": False}


def test_cu_level_build_of_a_cu_with_one_known_build_is_judged_on_it(catalog):
    v = catalog.verdict("15.1.669.0", cu_level=True, today=TODAY)  # 2016 CU4: one build listed
    assert (v.product, v.cu, v.update, v.known) == ("Exchange2016", "CU4", "unknown", False)
    assert not v.eems_supported and v.cutoffs == {"2023-03": False, "2026-06": False}


# ---------------------------------------------------------------- unknown builds


def test_unknown_build_newer_than_cu_is_judged_as_newest_known(catalog):
    newest = catalog.verdict("15.2.986.42")  # CU11's last build
    v = catalog.verdict("15.2.986.99")
    assert (v.product, v.cu, v.update, v.released, v.known) == ("Exchange2019", "CU11", "unknown", None, False)
    assert v.cutoffs == newest.cutoffs == {"2023-03": True, "2026-06": False}
    assert v.eems_supported and v.superseded_since is None
    assert catalog.verdict("15.1.2375.99").cutoffs == catalog.verdict("15.1.2375.37").cutoffs


def test_unknown_build_between_known_builds_compares_within_its_cu(catalog):
    below = catalog.verdict("15.2.1748.45")
    above = catalog.verdict("15.2.1748.47")
    assert (below.cu, below.known, above.known) == ("CU15", False, False)
    assert below.cutoffs["2026-06"] is False and above.cutoffs["2026-06"] is True
    assert below.superseded_since == date(2026, 6, 9)  # Jun26SU .46 is the first known newer build
    assert above.superseded_since == date(2026, 7, 14)


def test_unknown_build_older_than_first_known_build_of_its_cu(catalog):
    v = catalog.verdict("15.2.1748.1")
    assert (v.cu, v.update, v.known, v.released) == ("CU15", "unknown", False, None)
    assert v.superseded_since == date(2025, 2, 10)
    assert v.cutoffs == {"2023-03": True, "2026-06": False}


def test_future_cu_passes_every_cutoff(catalog):
    se_cu1 = catalog.verdict("15.2.2700.5")
    assert (se_cu1.product, se_cu1.cu, se_cu1.known) == ("ExchangeSE", "unknown", False)
    assert se_cu1.eems_supported and all(se_cu1.cutoffs.values())
    # 15.2 below 2562 stays Exchange 2019 even when newer than every 2019 CU.
    assert catalog.verdict("15.2.2561.1").product == "Exchange2019"


@pytest.mark.parametrize("version", ["15.1.2600.1", "15.1.2507.65535", "15.2.1800.3", "15.2.2561.1",
                                     "15.0.1600.1"])
def test_a_cu_after_a_products_final_cu_is_no_release_and_meets_no_cutoff(catalog, version):
    """2016's last CU is CU23, 2019's CU15, 2013's CU23 (Microsoft lifecycle; servicing.tsv final_cu): a build of
    a later CU was never released, so it must not read as compliant (it did: "a future CU passes every cutoff").
    A newer update of the final CU itself is a real future update and still passes."""
    v = catalog.verdict(version, today=TODAY)
    if version == "15.1.2507.65535":
        assert (v.cu, v.known) == ("CU23", False) and all(v.cutoffs.values())
        return
    assert (v.cu, v.update, v.known) == ("unknown", "unknown", False)
    assert v.cutoffs == {"2023-03": False, "2026-06": False}


def test_a_final_cu_the_build_list_does_not_have_is_refused():
    from exporter.catalog_data import CatalogError, packaged_rules
    builds = {parts: b for parts, b in packaged_builds().items() if not (b.product == "Exchange2013" and b.cu == "CU23")}
    with pytest.raises(CatalogError, match="servicing.tsv.*Exchange2013/CU23"):
        packaged_rules(builds)


def test_a_future_cu_keeps_passing_once_a_catalog_file_lists_it(tmp_path):
    """`catalog update` (runbook ExchangeCatalogStale) adds Exchange SE CU1: its servers must not turn "below the
    June 2026 cutoff" (a critical page) for being listed; unlisted they passed as a future CU."""
    extra = tmp_path / "builds.tsv"
    extra.write_text(HEADER + "ExchangeSE\tCU1\t\t15.2.2700.10\t2026-12-01\n")
    listed = Catalog.load(extra).verdict("15.2.2700.10", today=TODAY)
    assert (listed.cu, listed.known) == ("CU1", True)
    assert listed.cutoffs == Catalog.load().verdict("15.2.2700.10", today=TODAY).cutoffs == {
        "2023-03": True, "2026-06": True}


def test_unknown_cu_between_known_cus(catalog):
    # Between 2019 CU13 (1258) and CU14 (1544): reaches the 2023 "all from CU13" rule; the 2026
    # cutoff has only per-CU minimums, so it fails.
    v = catalog.verdict("15.2.1400.3")
    assert (v.cu, v.update, v.known) == ("unknown", "unknown", False)
    assert v.cutoffs == {"2023-03": True, "2026-06": False}
    # Between 2016 CU22 and CU23: EEMS, but no cutoff passes.
    w = catalog.verdict("15.1.2450.1")
    assert w.eems_supported and w.cutoffs == {"2023-03": False, "2026-06": False}


def test_unknown_cu_older_than_every_known_cu(catalog):
    v = catalog.verdict("15.1.100.1")
    assert v.product == "Exchange2016" and not v.eems_supported and not any(v.cutoffs.values())


def test_exchange_2013_future_cu_still_has_no_eems(catalog):
    v = catalog.verdict("15.0.1600.1")
    assert not v.eems_supported and not any(v.cutoffs.values())


# ---------------------------------------------------------------- bad versions


@pytest.mark.parametrize(
    "version, fragment",
    [
        ("15.2", "'15.2' is not a four-part Exchange build (expected e.g. 15.2.1544.4)"),
        ("15.2.1544", "four-part"),
        ("15.2.1544.4.1", "four-part"),
        ("", "four-part"),
        ("15.2.1544.x", "four-part"),
        ("15.2.-1.4", "four-part"),
        ("١٥.٢.١٥٤٤.٤", "four-part"),  # non-ASCII digits
        ("15.2.1544." + "9" * 50, "four-part"),
        (None, "four-part"),
        (15.2, "four-part"),
        ("14.3.123.4", "major.minor must be 15.0, 15.1 or 15.2"),
        ("8.3.83.6", "major.minor must be 15.0, 15.1 or 15.2"),
        ("16.0.65536.1", "a part above 65535"),
        ("65536.0.1.2", "a part above 65535"),
        # of a known product too: no Windows file version holds it, so it is no "future CU" passing the cutoffs
        ("15.2.65536.1", "a part above 65535"),
        ("15.1.2507.99999", "a part above 65535"),
        ("16.0.1.2.3", "four-part"),
        ("-16.0.1.2", "four-part"),
        ("16.0." + "9" * 20 + ".1", "four-part"),
    ],
)
def test_bad_versions_raise_a_clear_value_error(catalog, version, fragment):
    with pytest.raises(BuildVersionError) as info:
        catalog.verdict(version)
    assert isinstance(info.value, ValueError)
    assert fragment in str(info.value)
    assert len(str(info.value)) < 160


@pytest.mark.parametrize("version", ["15.3.100.1", "16.0.1.2", "15.03.0100.001", "65535.65535.65535.65535"])
def test_a_build_of_a_newer_exchange_version_is_unknown_and_nothing_is_judged_of_it(catalog, version):
    """A future Exchange version (major.minor above 15.2) was a BuildVersionError, so a server on it read as
    unreadable. It is a build the catalog does not know, of a product it cannot place: no EEMS verdict (None, not
    False: ExchangeBuildWithoutEEMS pages on 0), no cutoff verdict (neither passed nor failed), no servicing."""
    for cu_level in (False, True):
        verdict = catalog.verdict(version, cu_level=cu_level, today=date(2026, 11, 26))
        assert verdict == BuildVerdict(
            version=".".join(str(int(p)) for p in version.split(".")), product="unknown", cu="unknown",
            update="unknown", released=None, known=False, eems_supported=None, flighting_supported=None, cutoffs={},
            superseded_since=None,
            product_support_end=None, servicing="unknown", cu_servicing_end=None, next_build=None,
            update_path_since=None)
    assert parse_admin_display_version("Version 16.0 (Build 1.2)") == "16.0.1.2"


@pytest.mark.parametrize("version", ["15.3.100.1", "16.0.1.2"])
def test_the_catalogs_own_data_still_refuse_a_product_they_do_not_know(tmp_path, version):
    """Only a server's report is tolerated: a catalog file (or `catalog update`'s list) naming such a build is
    refused, as no rule (lifecycle, servicing, cutoffs) of that product can be written."""
    with pytest.raises(BuildVersionError, match="major.minor must be 15.0, 15.1 or 15.2"):
        parse_build(version)
    extra = tmp_path / "extra.tsv"
    extra.write_text(HEADER + f"ExchangeSE\tRTM\t\t{version}\t2026-10-13\n")
    with pytest.raises(CatalogError, match="major.minor must be 15.0, 15.1 or 15.2"):
        Catalog.load(extra)


def test_admin_display_version_of_another_product_is_refused():
    with pytest.raises(BuildVersionError, match="major.minor must be 15.0, 15.1 or 15.2"):
        parse_admin_display_version("Version 14.3 (Build 123.4)")  # Exchange 2010 SP3
    assert parse_admin_display_version(" Version 15.2 (Build 1544.36) ") == "15.2.1544.36"


def test_surrounding_whitespace_is_tolerated(catalog):
    assert catalog.verdict(" 15.2.1544.4\r\n").version == "15.2.1544.4"


# ---------------------------------------------------------------- reference data and extra files


def _reference_rows() -> list[dict[str, str]]:
    with REFERENCE_BUILDS.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_every_reference_build_is_in_the_packaged_catalog(catalog):
    rows = _reference_rows()
    assert len(rows) > 300
    for row in rows:
        v = catalog.verdict(row["build"])
        assert v.known, row
        assert (v.product, v.cu, v.update) == (row["product"], row["cu"], row["update"]), row
        assert v.released == date.fromisoformat(row["released"]), row


def test_extra_file_adds_and_overrides_builds(tmp_path):
    extra = tmp_path / "extra.tsv"
    extra.write_text(
        "# my own builds\n" + HEADER
        + "ExchangeSE\tRTM\tOct26SU\t15.2.2562.60\t2026-10-13\n"
        + "Exchange2019\tCU15\tJun26SUfixed\t15.2.1748.46\t2026-06-10\n"
    )
    catalog = Catalog.load(extra)
    added = catalog.verdict("15.2.2562.60")
    assert (added.known, added.update, added.released) == (True, "Oct26SU", date(2026, 10, 13))
    assert all(added.cutoffs.values())
    assert catalog.newest_release == date(2026, 10, 13)
    assert catalog.verdict("15.2.2562.53").superseded_since == date(2026, 10, 13)
    overridden = catalog.verdict("15.2.1748.46")
    assert (overridden.update, overridden.released) == ("Jun26SUfixed", date(2026, 6, 10))


def test_reference_tsv_with_its_source_column_is_a_valid_extra_file():
    catalog = Catalog.load(REFERENCE_BUILDS)
    assert catalog.verdict("15.2.2562.43").known


@pytest.mark.parametrize(
    "content, fragment, line",
    [
        ("", "no header line", None),
        ("build\tproduct\n", "header must start with product, cu, update, build, released", 1),
        (HEADER + "ExchangeSE\tRTM\t15.2.2562.60\t2026-10-13\n", "expected 5 tab-separated columns", 2),
        (HEADER + "Exchange2030\tRTM\t\t15.2.2562.60\t2026-10-13\n", "unknown product 'Exchange2030'", 2),
        (HEADER + "ExchangeSE\t\t\t15.2.2562.60\t2026-10-13\n", "empty cu", 2),
        (HEADER + "ExchangeSE\tRTM\t\t15.2.2562\t2026-10-13\n", "is not a four-part Exchange build", 2),
        (HEADER + "Exchange2019\tRTM\t\t15.2.2562.60\t2026-10-13\n", "belongs to ExchangeSE, not Exchange2019", 2),
        (HEADER + "ExchangeSE\tRTM\t\t15.2.2562.60\t13/10/2026\n", "released '13/10/2026' is not a date", 2),
        (HEADER + "\nExchangeSE\tRTM\ta\t15.2.2562.60\t2026-10-13\nExchangeSE\tRTM\tb\t15.2.2562.60\t2026-10-14\n",
         "build 15.2.2562.60 is listed twice", 4),
    ],
)
def test_malformed_extra_file(tmp_path, content, fragment, line):
    extra = tmp_path / "extra.tsv"
    extra.write_text(content)
    with pytest.raises(CatalogError) as info:
        Catalog.load(extra)
    assert fragment in str(info.value)
    assert info.value.path == str(extra) and info.value.line == line
    assert str(info.value).startswith(f"{extra}:{line}:" if line else f"{extra}:")


def test_unreadable_extra_files(tmp_path):
    with pytest.raises(CatalogError, match="cannot read"):
        Catalog.load(tmp_path / "missing.tsv")
    binary = tmp_path / "binary.tsv"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CatalogError, match="not UTF-8"):
        Catalog.load(binary)


def test_verdicts_are_kept_per_build_cu_level_and_day_and_bounded():
    """A poll judges its server's build again each time; the kept verdict is the one judging would give."""
    catalog, day = Catalog.load(), date(2026, 11, 29)
    kept = catalog.verdict("15.2.1544.36", today=day)
    assert catalog.verdict(" 15.02.1544.036", today=day) is kept  # the same build, written differently
    assert kept == Catalog.load().verdict("15.2.1544.36", today=day)
    assert catalog.verdict("15.2.1544.36", today=date(2026, 1, 1)).servicing != kept.servicing  # each day judged
    assert catalog.verdict("15.2.1544.36", cu_level=True, today=day) == Catalog.load().verdict(
        "15.2.1544.36", cu_level=True, today=day)
    for update in range(VERDICTS_KEPT + 10):  # a server reporting ever new builds
        catalog.verdict(f"15.2.1544.{update}", today=day)
    assert len(catalog._verdicts) <= VERDICTS_KEPT
