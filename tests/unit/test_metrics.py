"""Rendering a poll result: which series exist, and which are absent on purpose."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, timezone

from exporter import __version__
from exporter.catalog import Catalog
from exporter.eems_log import FETCH_ERROR_REASONS
from exporter.metrics import SelfStatus, organization_families, self_families, server_families
from exporter.model import (
    CollectorOutcome,
    EemsHistory,
    EndpointState,
    OrganizationResult,
    OrgServerInfo,
    PartialFailure,
    RawOrganizationFacts,
    ServerResult,
    ServerState,
)

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)
STATE = ServerState(
    name="EX01", build=None, build_source=None, edge=False, eems_supported=True, service_installed=True, service_state="running",
    service_start_mode="auto",
    eems=EemsHistory(last_check=NOW, last_success=NOW, last_error=None, last_error_reason=None,
                     fetch_errors={"untrusted_endpoint": 0, "unknown_issuer": 0, "tls_validation": 0,
                                   "signature_invalid": 0, "other": 0}, other_errors=0, last_activity=NOW, failing=False),
    endpoints=(), collection_errors=(),
)


def series(state: ServerState, success: bool = True) -> dict[tuple[str, tuple], float]:
    outcome = CollectorOutcome("server", success, 1.5, NOW, None if success else "timeout", None)
    result = ServerResult("EX01", outcome=outcome, state=state, last_success=NOW)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in server_families(result) for s in f.samples}


def test_partial_failures_are_one_series_per_part_and_reason():
    found = series(replace(STATE, collection_errors=(
        PartialFailure("events", "access_denied", "Attempted to perform an unauthorized operation."),
        PartialFailure("log", "access_denied", "Access to the path is denied."),
        PartialFailure("service", "access_denied", "Cannot find any service with service name 'MSExchangeMitigation'."))))
    parts = sorted((dict(labels)["part"], dict(labels)["reason"]) for (name, labels) in found
                   if name == "exchange_collector_partial_failure")
    assert parts == [("events", "access_denied"), ("log", "access_denied"), ("service", "access_denied")]
    assert found[("exchange_collector_partial_failure", (("collector", "server"), ("part", "log"), ("reason", "access_denied"),
                                                          ("server", "EX01")))] == 1


def test_a_successful_poll_is_up():
    found = series(STATE)
    assert found[("exchange_up", (("server", "EX01"),))] == 1
    assert found[("exchange_collector_success", (("collector", "server"), ("server", "EX01")))] == 1
    assert found[("exchange_collector_last_success_timestamp_seconds", (("collector", "server"), ("server", "EX01")))] == (
        NOW.timestamp())
    assert not any(name == "exchange_collector_error" for name, _ in found)


def test_a_failed_poll_keeps_the_last_facts_with_up_zero():
    found = series(STATE, success=False)
    assert found[("exchange_up", (("server", "EX01"),))] == 0
    assert found[("exchange_collector_error", (("collector", "server"), ("reason", "timeout"), ("server", "EX01")))] == 1
    assert ("exchange_eems_last_success_timestamp_seconds", (("server", "EX01"),)) in found


def test_endpoint_series_only_when_the_check_ran():
    assert not any(name.startswith("exchange_eems_endpoint") for name, _ in series(STATE))
    found = series(replace(STATE, endpoints=(EndpointState("mitigations", False, "proxy_auth_required", 10.0),
                                             EndpointState("flighting", True, "ok", 0.2))))
    mitigations = (("endpoint", "mitigations"), ("server", "EX01"))
    assert found[("exchange_eems_endpoint_reachable", mitigations)] == 0
    assert found[("exchange_eems_endpoint_reachable", (("endpoint", "flighting"), ("server", "EX01")))] == 1
    assert found[("exchange_eems_endpoint_duration_seconds", mitigations)] == 10.0
    assert found[("exchange_eems_endpoint_result_info",
                  (("endpoint", "mitigations"), ("reason", "proxy_auth_required"), ("server", "EX01")))] == 1


def test_unknown_service_state_is_a_state_not_an_absence():
    """A least-privilege account cannot query the service: the state-set says unknown, never "not installed"."""
    found = series(replace(STATE, service_state="unknown", service_start_mode="auto"))
    assert found[("exchange_service_state", (("name", "MSExchangeMitigation"), ("server", "EX01"), ("state", "unknown")))] == 1
    assert found[("exchange_service_state", (("name", "MSExchangeMitigation"), ("server", "EX01"), ("state", "running")))] == 0


def test_no_start_mode_series_when_the_mode_is_unknown():
    found = series(replace(STATE, service_state="unknown", service_start_mode=None))
    assert not any(name == "exchange_service_start_mode" for name, _ in found)


def test_activity_and_other_errors_are_exported():
    found = series(replace(STATE, eems=replace(STATE.eems, other_errors=3)))
    assert found[("exchange_eems_last_activity_timestamp_seconds", (("server", "EX01"),))] == NOW.timestamp()
    assert found[("exchange_eems_other_errors", (("server", "EX01"),))] == 3


def test_no_service_series_when_not_installed():
    found = series(replace(STATE, service_installed=False, service_state=None, service_start_mode=None))
    assert not any(name.startswith("exchange_service_") for name, _ in found)
    states = series(STATE)
    assert sum(v for (name, _), v in states.items() if name == "exchange_service_state") == 1


def test_update_path_series():
    catalog = Catalog.load()
    behind = replace(STATE, build=catalog.verdict("15.2.2562.41", today=NOW.date()), build_source="exsetup")
    found = series(behind)
    info = {dict(labels)["servicing"]: dict(labels) for (name, labels) in found if name == "exchange_build_update_path_info"}
    assert info["serviced"]["next_version"] == "15.2.2562.53" and info["serviced"]["next_update"] == "Sep26SUv2"
    assert (info["serviced"]["next_product"], info["serviced"]["next_cu"]) == ("ExchangeSE", "RTM")
    assert found[("exchange_build_update_path_timestamp_seconds", (("server", "EX01"),))] == datetime(
        2026, 6, 9, tzinfo=timezone.utc).timestamp()
    assert ("exchange_build_cu_servicing_end_timestamp_seconds", (("server", "EX01"),)) not in found
    build_info = next(dict(labels) for (name, labels) in found if name == "exchange_build_info")
    assert build_info["source"] == "exsetup"

    ended = series(replace(STATE, build=catalog.verdict("15.2.1748.53", today=NOW.date()), build_source="registry"))
    info = next(dict(labels) for (name, labels) in ended if name == "exchange_build_update_path_info")
    assert (info["servicing"], info["next_product"]) == ("out_of_support", "ExchangeSE")
    assert ended[("exchange_build_cu_servicing_end_timestamp_seconds", (("server", "EX01"),))] == datetime(
        2026, 11, 1, tzinfo=timezone.utc).timestamp()

    newest = series(replace(STATE, build=catalog.verdict("15.2.2562.53", today=NOW.date()), build_source="exsetup"))
    info = next(dict(labels) for (name, labels) in newest if name == "exchange_build_update_path_info")
    assert info["next_version"] == "" and info["servicing"] == "serviced"
    assert (info["next_product"], info["next_cu"], info["next_update"]) == ("", "", "")
    assert ("exchange_build_update_path_timestamp_seconds", (("server", "EX01"),)) not in newest


# ---------------------------------------------------------------- which series exist, per scope


def test_eems_series_follow_what_is_known_of_the_service():
    """exchange_eems_supported only when it is known; exchange_eems_failing and the error counters on a server with
    EEMS (the counters also where fetch errors were seen); exchange_eems_last_error_info only with a reason."""
    supported = series(replace(STATE, eems=replace(STATE.eems, last_error=NOW, last_error_reason="unknown_issuer",
                                                   failing=True, log_other_errors=2)))
    server = (("server", "EX01"),)
    assert supported[("exchange_eems_supported", server)] == 1
    assert supported[("exchange_eems_failing", server)] == 1
    assert supported[("exchange_eems_last_error_info", (("reason", "unknown_issuer"), ("server", "EX01")))] == 1
    assert supported[("exchange_eems_log_other_errors", server)] == 2
    assert supported[("exchange_eems_last_error_timestamp_seconds", server)] == NOW.timestamp()
    assert supported[("exchange_eems_last_check_timestamp_seconds", server)] == NOW.timestamp()
    assert series(STATE)[("exchange_eems_failing", server)] == 0
    assert sorted(dict(labels)["reason"] for name, labels in supported if name == "exchange_eems_fetch_errors") == sorted(
        FETCH_ERROR_REASONS)

    unknown = series(replace(STATE, eems_supported=None))
    assert not any(name in ("exchange_eems_supported", "exchange_eems_failing", "exchange_eems_fetch_errors",
                            "exchange_eems_last_error_info") for name, _ in unknown)

    seen = series(replace(STATE, eems_supported=False, eems=replace(STATE.eems, fetch_errors={"other": 2})))
    assert seen[("exchange_eems_supported", server)] == 0 and ("exchange_eems_failing", server) not in seen
    assert seen[("exchange_eems_fetch_errors", (("reason", "other"), ("server", "EX01")))] == 2
    assert seen[("exchange_eems_fetch_errors", (("reason", "tls_validation"), ("server", "EX01")))] == 0


def test_edge_start_mode_and_stage_series():
    found = series(replace(STATE, edge=True, stage_seconds=(("build", 0.25), ("endpoint", 1.5))))
    assert found[("exchange_server_edge", (("server", "EX01"),))] == 1
    assert series(STATE)[("exchange_server_edge", (("server", "EX01"),))] == 0
    modes = {dict(labels)["start_mode"]: value for (name, labels), value in found.items()
             if name == "exchange_service_start_mode"}
    assert modes == {"boot": 0, "system": 0, "auto": 1, "manual": 0, "disabled": 0}
    assert found[("exchange_eems_script_stage_seconds", (("server", "EX01"), ("stage", "build")))] == 0.25
    assert found[("exchange_eems_script_stage_seconds", (("server", "EX01"), ("stage", "endpoint")))] == 1.5


def test_endpoint_proxy_info_only_when_the_server_said_which_proxy():
    said = EndpointState("mitigations", True, "ok", 0.2, proxy="http://proxy.contoso.com:8080/", proxy_source="winhttp",
                         proxy_credentials=True)
    direct = EndpointState("flighting", True, "ok", 0.2, proxy="", proxy_source="none")
    found = series(replace(STATE, endpoints=(said, direct, EndpointState("config", True, "ok", 0.2, proxy="",
                                                                          proxy_source=None))))
    proxies = {dict(labels)["endpoint"]: dict(labels) for (name, labels) in found if name == "exchange_eems_endpoint_proxy_info"}
    assert set(proxies) == {"mitigations", "flighting"}
    assert (proxies["mitigations"]["proxy"], proxies["mitigations"]["source"],
            proxies["mitigations"]["default_credentials"]) == ("http://proxy.contoso.com:8080/", "winhttp", "true")
    assert (proxies["flighting"]["proxy"], proxies["flighting"]["default_credentials"]) == ("", "false")


def test_build_series_of_a_known_build():
    catalog = Catalog.load()
    verdict = catalog.verdict("15.2.2562.41", today=NOW.date())
    found = series(replace(STATE, build=verdict, build_source=None))
    server = (("server", "EX01"),)
    assert found[("exchange_build_known", server)] == 1
    assert found[("exchange_build_release_timestamp_seconds", server)] == datetime(
        verdict.released.year, verdict.released.month, verdict.released.day, tzinfo=timezone.utc).timestamp()
    info = next(dict(labels) for (name, labels) in found if name == "exchange_build_info")
    assert (info["version"], info["source"]) == ("15.2.2562.41", "unknown")  # no source said: unknown, not ""
    assert (info["product"], info["cu"], info["update"]) == (verdict.product, verdict.cu, verdict.update)
    for name, day in (("exchange_build_superseded_timestamp_seconds", verdict.superseded_since),
                      ("exchange_product_support_end_timestamp_seconds", verdict.product_support_end)):
        expected = None if day is None else datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp()
        assert found.get((name, server)) == expected
    assert verdict.superseded_since is not None  # 15.2.2562.41 has a newer update of its CU
    cutoffs = {dict(labels)["cutoff"]: value for (name, labels), value in found.items()
               if name == "exchange_eems_certificate_cutoff_compliant"}
    assert cutoffs == {cutoff: (1 if ok else 0) for cutoff, ok in verdict.cutoffs.items()} and cutoffs
    unknown = series(replace(STATE, build=replace(verdict, known=False)))
    assert unknown[("exchange_build_known", server)] == 0


def test_collector_series_of_a_failed_poll_without_a_reason_say_internal_error():
    outcome = CollectorOutcome("server", False, 2.5, NOW, None, None)
    result = ServerResult("EX01", outcome=outcome, state=None, last_success=None)
    found = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in server_families(result) for s in f.samples}
    collector = (("collector", "server"), ("server", "EX01"))
    assert found == {
        ("exchange_up", (("server", "EX01"),)): 0,
        ("exchange_collector_success", collector): 0,
        ("exchange_collector_duration_seconds", collector): 2.5,
        ("exchange_collector_error", (("collector", "server"), ("reason", "internal_error"), ("server", "EX01"))): 1,
    }
    never = ServerResult("EX01")
    assert [(s.name, s.value) for f in server_families(never) for s in f.samples] == [("exchange_up", 0)]


ORG_OUTCOME = CollectorOutcome("organization", True, 1.0, NOW)


def org_series(*servers: OrgServerInfo, enabled: bool | None = True, dropped: int = 0,
               server_names: dict[str, str] | None = None, polled: frozenset[str] = frozenset()) -> dict:
    facts = RawOrganizationFacts(mitigations_enabled=enabled, servers=servers, error_stage=None, error_message=None,
                                 dropped_label_values=dropped)
    org = OrganizationResult("Contoso", outcome=ORG_OUTCOME, facts=facts, last_success=NOW)
    status = SelfStatus(NOW.date(), 300.0, True, 0.0, server_names=polled, shard_server_names=server_names or {})
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in organization_families(org, status) for s in f.samples}


def org_server(name: str, **fields) -> OrgServerInfo:
    defaults = dict(fqdn=None, mailbox_role=True, admin_display_version=None, mitigations_enabled=None,
                    mitigations_applied=(), mitigations_blocked=(), mitigations_applied_time=None,
                    data_collection_enabled=None, internet_web_proxy=None)
    return OrgServerInfo(name=name, **{**defaults, **fields})


def test_organization_series_per_server():
    found = org_series(
        org_server("EX01", fqdn="ex01.contoso.com", mitigations_enabled=False, mitigations_applied=("PING1", "M2.1.0"),
                   mitigations_blocked=("M1",), mitigations_applied_time=NOW, data_collection_enabled=True),
        org_server("EX02", mailbox_role=None),
        org_server("EDGE01", mailbox_role=False),
        enabled=False, dropped=3, server_names={"ex01.contoso.com": "ex01.contoso.com"}, polled=frozenset({"ex01.contoso.com"}))
    org = (("collector", "organization"), ("organization", "Contoso"))
    assert found[("exchange_collector_dropped_label_values", org)] == 3
    assert (found[("exchange_collector_success", org)], found[("exchange_collector_duration_seconds", org)]) == (1, 1.0)
    assert found[("exchange_eems_mitigations_enabled", (("organization", "Contoso"), ("scope", "organization")))] == 0
    ex01 = (("server", "ex01.contoso.com"),)  # the name this exporter polls it by
    assert found[("exchange_eems_mitigations_enabled", (("scope", "server"), *ex01))] == 0
    assert found[("exchange_organization_server_polled", (("name", "EX01"), *ex01))] == 1
    assert found[("exchange_organization_server_polled", (("name", "EX02"), ("server", "EX02")))] == 0
    assert not any(name == "exchange_organization_server_polled" and dict(labels)["name"] == "EDGE01"
                   for name, labels in found)
    assert found[("exchange_eems_mitigation_applied", (("mitigation", "M2.1.0"), *ex01))] == 1
    assert found[("exchange_eems_mitigation_applied", (("mitigation", "PING1"), *ex01))] == 1
    assert found[("exchange_eems_mitigation_blocked", (("mitigation", "M1"), *ex01))] == 1
    assert found[("exchange_eems_mitigations_applied_timestamp_seconds", ex01)] == NOW.timestamp()
    assert found[("exchange_eems_data_collection_enabled", ex01)] == 1
    ex02 = (("server", "EX02"),)
    assert not any(labels == ex02 or dict(labels).get("scope") == "server" and dict(labels)["server"] == "EX02"
                   for name, labels in found if name != "exchange_organization_server_polled")
    assert not any(name == "exchange_eems_mitigations_enabled" for name, _ in org_series(enabled=None))
    enabled = org_series(org_server("EX03", mitigations_enabled=True, data_collection_enabled=False), enabled=True)
    assert enabled[("exchange_eems_mitigations_enabled", (("organization", "Contoso"), ("scope", "organization")))] == 1
    assert enabled[("exchange_eems_mitigations_enabled", (("scope", "server"), ("server", "EX03")))] == 1
    assert enabled[("exchange_eems_data_collection_enabled", (("server", "EX03"),))] == 0


def test_organization_settings_a_build_before_eems_does_not_have_are_a_partial_failure():
    """Get-OrganizationConfig on a build before EEMS (organization.server on 2016 CU21, say) has no MitigationsEnabled,
    and its Get-ExchangeServer no Mitigations*: the organization's alerts (disabled, blocked) could not fire, and
    nothing said why. Said once, by shard 0, as the organization-level setting is."""
    settings = (("collector", "organization"), ("organization", "Contoso"), ("part", "settings"), ("reason", "not_found"))
    assert org_series(org_server("EX01"), enabled=None)[("exchange_collector_partial_failure", settings)] == 1
    assert ("exchange_collector_partial_failure", settings) not in org_series(org_server("EX01"), enabled=False)
    facts = RawOrganizationFacts(mitigations_enabled=None, servers=(), error_stage=None, error_message=None,
                                 dropped_label_values=0)
    org = OrganizationResult("Contoso", outcome=ORG_OUTCOME, facts=facts, last_success=NOW)
    other_shard = SelfStatus(NOW.date(), 300.0, True, 0.0, shard=(1, 2))
    assert not any(s.name == "exchange_collector_partial_failure"
                   for f in organization_families(org, other_shard) for s in f.samples)


def test_self_series():
    status = SelfStatus(catalog_newest_release=date(2026, 6, 9), poll_interval_seconds=300.0,
                        last_reload_successful=False, last_reload_timestamp=1764158400.0,
                        credential_paused={"winrm_b": False, "winrm_a": True}, servers=7, shard=(1, 3),
                        shard_servers=(2, 3, 2), start_time=1764158000.5)
    found = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in self_families(status) for s in f.samples}
    assert found == {
        ("exchange_exporter_build_info", (("version", __version__),)): 1,
        ("exchange_exporter_shard_info", (("shard", "1"), ("shards", "3"))): 1,
        ("exchange_exporter_shard_servers", (("shard", "0"), ("shards", "3"))): 2,
        ("exchange_exporter_shard_servers", (("shard", "1"), ("shards", "3"))): 3,
        ("exchange_exporter_shard_servers", (("shard", "2"), ("shards", "3"))): 2,
        ("exchange_catalog_newest_release_timestamp_seconds", ()): datetime(2026, 6, 9, tzinfo=timezone.utc).timestamp(),
        ("exchange_catalog_checked_timestamp_seconds", ()): datetime(2026, 6, 9, tzinfo=timezone.utc).timestamp(),
        ("exchange_exporter_start_time_seconds", ()): 1764158000.5,
        ("exchange_exporter_poll_interval_seconds", ()): 300.0,
        ("exchange_exporter_servers", ()): 7,
        ("exchange_exporter_config_last_reload_successful", ()): 0,
        ("exchange_exporter_config_last_reload_success_timestamp_seconds", ()): 1764158400.0,
        ("exchange_exporter_credential_paused", (("module", "winrm_a"),)): 1,
        ("exchange_exporter_credential_paused", (("module", "winrm_b"),)): 0,
    }
    reloaded = replace(status, last_reload_successful=True)
    assert [s.value for f in self_families(reloaded) for s in f.samples
            if s.name == "exchange_exporter_config_last_reload_successful"] == [1]


def test_clock_offset_series_only_when_the_server_said_its_time():
    assert not any(name == "exchange_server_clock_offset_seconds" for name, _ in series(STATE))
    found = series(replace(STATE, clock_offset_seconds=-7200.25, clock_uncertainty_seconds=0.5))
    assert found[("exchange_server_clock_offset_seconds", (("server", "EX01"),))] == -7200.25
    # a failed poll keeps the last good poll's offset beside exchange_up 0, like the rest of its facts
    failed = series(replace(STATE, clock_offset_seconds=400.0), success=False)
    assert failed[("exchange_server_clock_offset_seconds", (("server", "EX01"),))] == 400.0
