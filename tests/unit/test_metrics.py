"""Rendering a poll result: which series exist, and which are absent on purpose."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone

from exporter.catalog import Catalog
from exporter.metrics import render
from exporter.model import CollectorOutcome, EemsHistory, EndpointState, PartialFailure, ServerResult, ServerState

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
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in render([result], None, None) for s in f.samples}


def test_partial_failures_are_one_series_per_part_and_reason():
    found = series(replace(STATE, collection_errors=(
        PartialFailure("events", "access_denied", "Attempted to perform an unauthorized operation."),
        PartialFailure("log", "access_denied", "Access to the path is denied."),
        PartialFailure("service", "access_denied", "Cannot find any service with service name 'MSExchangeMitigation'."))))
    parts = sorted((dict(labels)["part"], dict(labels)["reason"]) for (name, labels) in found
                   if name == "exchange_collector_partial_failure")
    assert parts == [("events", "access_denied"), ("log", "access_denied"), ("service", "access_denied")]


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
    assert ("exchange_build_update_path_timestamp_seconds", (("server", "EX01"),)) not in newest
