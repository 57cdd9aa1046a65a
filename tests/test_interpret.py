"""Interpretation with the real EEMS event texts and log lines from docs/reference/eems-facts.md, each source absent or both."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, timedelta, timezone

import pytest

from exporter.catalog import Catalog
from exporter.eems_patterns import (
    FETCH_ERROR_REASONS,
    classify_fetch_error,
    classify_organization_error,
    parse_log_line,
)
from exporter.interpret import interpret_server
from exporter.model import RawEndpoint, RawEvent, RawLog, RawServerFacts

UTC = timezone.utc
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
LOOKBACK = timedelta(hours=24)

# Verbatim texts (docs/reference/eems-facts.md sections 3 and 4).
JAN_2025_1008 = (
    "An unexpected exception occurred.\r\nDiagnostic information: Exception encountered while fetching mitigations."
)
TLS_1008 = (
    "An unexpected exception occurred. Diagnostic information: Exception encountered while fetching mitigations : "
    "System.AggregateException: One or more errors occurred. ---> System.Net.Http.HttpRequestException: An error "
    "occurred while sending the request. ---> System.Net.WebException: The underlying connection was closed: Could "
    "not establish trust relationship for the SSL/TLS secure channel. ---> System.Security.Authentication."
    "AuthenticationException: The remote certificate is invalid according to the validation procedure.\r\n"
    "   at Microsoft.Exchange.Mitigation.Service.MitigationCloudServiceV2.FetchMitigations()\r\n"
    "   at Microsoft.Exchange.Mitigation.Service.Mitigations.MitigationEngine.FetchAndApplyMitigation()"
)
JUNE_2026_1008 = (
    "Exception encountered while fetching mitigations: This XML is not deemed safe to consume since Response xml's "
    "leaf certificate is from unknown issuer or has EKU mismatch"
)
SIGNING_1008 = (
    "An unexpected exception occurred. Diagnostic information: Exception encountered while fetching mitigations : "
    "This XML is not deemed safe to consume since Response xml's signing cert is invalid or not from microsoft"
)
GRANIKOS_CYCLE = [
    "S:LogLevel=Information;S:Message=Started MSExchangeMitigation",
    "S:LogLevel=Information;S:Message=Fetching mitigations from https://officeclient.microsoft.com/getexchangemitigations",
    "S:LogLevel=Information;S:Message=Using Proxy http://[IPADDRESS]/ To Fetch Configurations",
    "S:LogLevel=Information;S:Message=No diagnostic data sent. DataCollectionEnabled is false",
    "S:LogLevel=Warning;S:Message=TLS certificate or its chain validation failed",
    "S:LogLevel=Error;S:Message=Exception encountered while fetching mitigations : One or more errors occurred.;"
    "S:Source=Microsoft.Exchange.Mitigation.Service.Mitigations.MitigationEngine",
]
GRANIKOS_SIGNING = (
    "FetchMitigation,S:LogLevel=Error;'S:Message=Exception encountered while fetching mitigations : This XML is not "
    "deemed safe to consume since Response xml''s signing cert is invalid or not from microsoft'; "
    "S:Source=Microsoft.Exchange.Mitigation.Service.Mitigations.MitigationEngine"
)
UNTRUSTED_LINE = "FetchMitigation,S:LogLevel=Warning;S:Message=Connection attempted against untrusted endpoint"
FETCH_LINE = (
    "FetchMitigation,S:LogLevel=Information;S:Message=Fetching mitigations from "
    "https://officeclient.microsoft.com/getexchangemitigations"
)
DONE_LINE = "FetchMitigation,S:LogLevel=Information;S:Message=Applied mitigations: PING1"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


def stamp(when: datetime, body: str) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.000Z,") + body


def at(hours_ago: float, minutes: float = 0) -> datetime:
    return NOW - timedelta(hours=hours_ago, minutes=minutes)


def facts(events=(), tail: str | None = None, **fields) -> RawServerFacts:
    base = RawServerFacts(
        computer="EX01", now=NOW, exsetup_version="15.2.2562.43", build_source="exsetup", edge=False,
        service_installed=True, service_status="Running", service_start_type="Automatic", events=tuple(events),
        log=None if tail is None else RawLog("MitigationService_20261126-1.LOG", len(tail.encode()), NOW, tail),
        endpoint=None, errors=(),
    )
    return replace(base, **fields)


def interpret(f: RawServerFacts, catalog: Catalog, lookback: timedelta = LOOKBACK):
    return interpret_server("EX01", f, catalog, lookback=lookback, now=NOW)


# ---------------------------------------------------------------- patterns


@pytest.mark.parametrize(
    "text, reason",
    [
        (JAN_2025_1008, "other"),
        (TLS_1008, "tls_validation"),
        (JUNE_2026_1008, "unknown_issuer"),
        (SIGNING_1008, "signature_invalid"),
        ("Connection attempted against untrusted endpoint", "untrusted_endpoint"),
        ("TLS certificate or its chain validation failed", "tls_validation"),
        ("", "other"),
    ],
)
def test_classify_fetch_error(text, reason):
    assert classify_fetch_error(text) == reason


def test_fetch_error_reasons_order():
    assert FETCH_ERROR_REASONS == ("untrusted_endpoint", "unknown_issuer", "tls_validation", "signature_invalid", "other")


@pytest.mark.parametrize(
    "message, reason",
    [
        ("Active Directory operation failed on dc01.contoso.com. The supplied credential is invalid.", "double_hop"),
        ("Could not find any available Domain Controller.", "double_hop"),
        ("The LDAP server is unavailable.", "double_hop"),
        ("A local error occurred.", "double_hop"),
        ("Kerberos delegation is not configured", "double_hop"),
        ("No snap-ins have been registered for Windows PowerShell version 5.", "script_failed"),
        ("The term 'Get-OrganizationConfig' is not recognized", "script_failed"),
    ],
)
def test_classify_organization_error(message, reason):
    assert classify_organization_error(message) == reason


def test_log_line_shapes():
    quoted = parse_log_line(GRANIKOS_SIGNING)
    assert (quoted.operation, quoted.level, quoted.time) == ("FetchMitigation", "Error", None)
    assert quoted.message.endswith("Response xml's signing cert is invalid or not from microsoft")
    timed = parse_log_line(stamp(NOW, FETCH_LINE))
    assert timed.time == NOW and timed.is_check_start and not timed.is_problem
    error = parse_log_line(GRANIKOS_CYCLE[-1])
    assert error.is_problem and error.message == "Exception encountered while fetching mitigations : One or more errors occurred."
    csv_quoted = parse_log_line('2026-11-26T10:00:00Z,FetchMitigation,"S:LogLevel=Warning;S:Message=a, ""b"""')
    assert (csv_quoted.level, csv_quoted.message) == ("Warning", 'a, "b"')
    assert parse_log_line("#Fields: DateTime,Operation,CustomData") is None
    assert parse_log_line("   ") is None
    assert parse_log_line("partial line without shape").time is None


# ---------------------------------------------------------------- build, service, endpoint


def test_build_service_and_endpoint(catalog):
    state = interpret(facts(endpoint=RawEndpoint(200, 0.31, None)), catalog)
    assert state.name == "EX01" and state.build.update == "Jun26SU" and state.eems_supported
    assert (state.service_state, state.service_start_mode) == ("running", "auto")
    assert (state.endpoint_reachable, state.endpoint_duration_seconds) == (True, 0.31)
    down = interpret(facts(endpoint=RawEndpoint(0, 10.0, "Unable to connect")), catalog)
    assert down.endpoint_reachable is False


def test_edge_server_never_has_eems(catalog):
    state = interpret(facts(edge=True, service_installed=False, service_status=None, service_start_type=None), catalog)
    assert state.build.eems_supported and not state.eems_supported
    assert (state.service_installed, state.service_state, state.service_start_mode) == (False, None, None)


@pytest.mark.parametrize(
    "status, start, expected",
    [
        ("Stopped", "Disabled", ("stopped", "disabled")),
        ("StartPending", "Manual", ("start pending", "manual")),
        ("StopPending", "Boot", ("stop pending", "boot")),
        ("ContinuePending", "System", ("continue pending", "system")),
        ("PausePending", "Automatic", ("pause pending", "auto")),
        ("Paused", None, ("paused", None)),
        (None, None, ("unknown", None)),
    ],
)
def test_service_names_follow_windows_exporter(catalog, status, start, expected):
    state = interpret(facts(service_status=status, service_start_type=start), catalog)
    assert (state.service_state, state.service_start_mode) == expected


def test_missing_and_bad_build(catalog):
    none = interpret(facts(exsetup_version=None), catalog)
    assert none.build is None and not none.eems_supported
    bad = interpret(facts(exsetup_version="8.3.83.6", errors=("log: access denied",)), catalog)
    assert bad.build is None and not bad.eems_supported
    assert bad.collection_errors[0] == "log: access denied"
    assert "build: '8.3.83.6' is not an Exchange 2013/2016/2019/SE build" in bad.collection_errors[1]


def test_admin_display_version_stands_in_when_exsetup_cannot_be_read(catalog):
    no_exsetup = facts(exsetup_version=None, build_source=None, errors=("build: ExSetup.exe not found",))
    state = interpret_server("EX01", no_exsetup, catalog, lookback=LOOKBACK, now=NOW,
                             admin_display_version="Version 15.2 (Build 1748.53)")
    assert state.build_source == "admin_display_version"
    assert (state.build.product, state.build.cu, state.build.update, state.build.known) == (
        "Exchange2019", "CU15", "unknown", False)
    # The update is unknown: CU15 RTM is below the June 2026 minimum, so the CU as a whole is not compliant.
    assert state.build.cutoffs == {"2023-03": True, "2026-06": False}
    assert state.eems_supported


def test_servicing_is_judged_on_the_exporters_date_not_the_servers_clock(catalog):
    wrong_clock = datetime(2031, 1, 1, tzinfo=timezone.utc)  # the server's clock is years ahead
    facts_2019 = facts(exsetup_version="15.2.1748.53", now=wrong_clock)
    state = interpret_server("EX01", facts_2019, catalog, lookback=LOOKBACK, now=wrong_clock,
                             today=date(2026, 10, 31))
    assert state.build.servicing == "serviced"  # ESU ran to 2026-10-31
    assert interpret_server("EX01", facts_2019, catalog, lookback=LOOKBACK, now=wrong_clock,
                            today=date(2026, 11, 1)).build.servicing == "out_of_support"


def test_exsetup_wins_over_admin_display_version(catalog):
    state = interpret_server("EX01", facts(), catalog, lookback=LOOKBACK, now=NOW,
                             admin_display_version="Version 15.2 (Build 1748.10)")
    assert (state.build.version, state.build_source, state.build.known) == ("15.2.2562.43", "exsetup", True)


def test_bad_admin_display_version_is_a_build_note(catalog):
    state = interpret_server("EX01", facts(exsetup_version=None, build_source=None), catalog, lookback=LOOKBACK,
                             now=NOW, admin_display_version="Version 15.2 (Build banana)")
    assert state.build is None and state.build_source is None
    assert state.collection_errors == ("build: AdminDisplayVersion 'Version 15.2 (Build banana)' is not like "
                                       "'Version 15.2 (Build 1544.36)'",)


def test_old_build_has_no_eems(catalog):
    assert not interpret(facts(exsetup_version="15.2.922.7"), catalog).eems_supported


# ---------------------------------------------------------------- EEMS history


def test_no_sources_at_all(catalog):
    eems = interpret(facts(), catalog).eems
    assert (eems.last_check, eems.last_success, eems.last_error, eems.last_error_reason) == (None, None, None, None)
    assert eems.fetch_errors == dict.fromkeys(FETCH_ERROR_REASONS, 0)


def test_events_only(catalog):
    events = [
        RawEvent(1008, at(1), JUNE_2026_1008),
        RawEvent(1008, at(2), TLS_1008),
        RawEvent(1005, at(3), "Mitigation PING1 applied"),
        RawEvent(1008, at(30), SIGNING_1008),  # outside the 24 h lookback
        RawEvent(1004, at(0.5), "unrelated"),
    ]
    eems = interpret(facts(events), catalog).eems
    assert eems.last_check == at(1)
    assert eems.last_success == at(3)
    assert (eems.last_error, eems.last_error_reason) == (at(1), "unknown_issuer")
    assert eems.fetch_errors == {"untrusted_endpoint": 0, "unknown_issuer": 1, "tls_validation": 1,
                                 "signature_invalid": 0, "other": 0}
    wide = interpret(facts(events), catalog, lookback=timedelta(days=2)).eems
    assert wide.fetch_errors["signature_invalid"] == 1


def test_log_only_granikos_cycle_then_clean_cycle(catalog):
    failing = [stamp(at(2, -i), line) for i, line in enumerate(GRANIKOS_CYCLE)]
    clean = [stamp(at(1), FETCH_LINE), stamp(at(1, -1), DONE_LINE)]
    eems = interpret(facts(tail="\n".join(failing + clean) + "\n"), catalog).eems
    assert eems.last_check == at(1)
    assert eems.last_success == at(1)
    assert (eems.last_error, eems.last_error_reason) == (at(2, -4), "tls_validation")  # first Warning line
    assert eems.fetch_errors == dict.fromkeys(FETCH_ERROR_REASONS, 0)  # counts are 1008 events only


def test_log_only_signing_error_newest(catalog):
    tail = "\r\n".join([stamp(at(2), FETCH_LINE), stamp(at(2, -1), DONE_LINE), stamp(at(1), FETCH_LINE),
                        stamp(at(1, -1), GRANIKOS_SIGNING)])
    eems = interpret(facts(tail=tail), catalog).eems
    assert (eems.last_check, eems.last_success) == (at(1), at(2))
    assert (eems.last_error, eems.last_error_reason) == (at(1, -1), "signature_invalid")


def test_check_in_progress_is_not_yet_a_success(catalog):
    tail = "\n".join([stamp(at(2), FETCH_LINE), stamp(at(2, -1), DONE_LINE), stamp(at(0, 1), FETCH_LINE)])
    eems = interpret(facts(tail=tail), catalog).eems
    assert eems.last_check == at(0, 1) and eems.last_success == at(2)


def test_generic_jan_2025_event_is_refined_from_the_log(catalog):
    tail = "\n".join([stamp(at(1), FETCH_LINE), stamp(at(1, -1), UNTRUSTED_LINE)])
    events = [RawEvent(1008, at(1, -2), JAN_2025_1008), RawEvent(1008, at(5), JAN_2025_1008)]
    eems = interpret(facts(events, tail=tail), catalog).eems
    assert (eems.last_error, eems.last_error_reason) == (at(1, -2), "untrusted_endpoint")
    # the older event is beyond the log tail: the same persistent cause explains it
    assert eems.fetch_errors["untrusted_endpoint"] == 2 and eems.fetch_errors["other"] == 0
    assert eems.last_success is None and eems.last_check == at(1, -2)


def test_generic_event_far_from_the_log_cycle_takes_the_nearest_cause(catalog):
    tail = "\n".join([stamp(at(9), FETCH_LINE), stamp(at(9, -1), "FetchMitigation," + GRANIKOS_CYCLE[4]),
                      stamp(at(3), FETCH_LINE), stamp(at(3, -1), UNTRUSTED_LINE)])
    eems = interpret(facts([RawEvent(1008, at(1), JAN_2025_1008)], tail=tail), catalog).eems
    assert (eems.last_error, eems.last_error_reason) == (at(1), "untrusted_endpoint")


def test_both_sources_newest_evidence_wins(catalog):
    tail = "\n".join([stamp(at(0, 30), FETCH_LINE), stamp(at(0, 29), DONE_LINE)])
    events = [RawEvent(1008, at(2), TLS_1008), RawEvent(1006, at(3), "applied")]
    eems = interpret(facts(events, tail=tail), catalog).eems
    assert eems.last_check == at(0, 30) and eems.last_success == at(0, 30)
    assert (eems.last_error, eems.last_error_reason) == (at(2), "tls_validation")
    assert eems.fetch_errors["tls_validation"] == 1


def test_future_dated_lines_and_events_are_ignored(catalog):
    future = NOW + timedelta(days=3)
    tail = "\n".join([stamp(at(2), FETCH_LINE), stamp(at(2, -1), DONE_LINE), stamp(future, FETCH_LINE),
                      stamp(future, UNTRUSTED_LINE)])
    eems = interpret(facts([RawEvent(1008, future, TLS_1008)], tail=tail), catalog).eems
    assert (eems.last_check, eems.last_success, eems.last_error) == (at(2), at(2), None)
    assert sum(eems.fetch_errors.values()) == 0


def test_partial_first_line_and_odd_lines_do_not_crash(catalog):
    tail = "mitigations from https://officeclient.microsoft.com/x\n" + "\n".join(
        ["#Software: Microsoft Exchange Server", "garbage,,,;;'\"", "S:LogLevel=Error;S:Message=no time",
         stamp(at(1), FETCH_LINE), "\x00\ufffd", stamp(at(1, -1), DONE_LINE)]
    )
    log = RawLog("x.LOG", 10_000_000, NOW, tail)  # the tail is a suffix of a larger file
    eems = interpret(facts(log=log), catalog).eems
    assert (eems.last_check, eems.last_success, eems.last_error) == (at(1), at(1), None)


def test_generic_event_without_log_is_explained_by_the_build(catalog):
    events = [RawEvent(1008, at(1), JAN_2025_1008), RawEvent(1008, at(2), JAN_2025_1008)]
    old = interpret(facts(events, exsetup_version="15.2.1118.25"), catalog).eems  # 2019 CU12 Feb23SU
    assert old.fetch_errors["untrusted_endpoint"] == 2 and old.last_error_reason == "untrusted_endpoint"
    current = interpret(facts(events), catalog).eems  # SE Jun26SU: the generic text stays unexplained
    assert current.fetch_errors["other"] == 2 and current.last_error_reason == "other"
