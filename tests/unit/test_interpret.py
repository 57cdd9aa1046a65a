"""Interpretation with the real EEMS event texts and log lines from docs/reference/eems-facts.md, each source absent or both."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.catalog import Catalog
from exporter.eems_log import FETCH_ERROR_REASONS
from exporter.interpret import _nearest, interpret_server
from exporter.model import RawCulture, RawEndpoint, RawError, RawEvent, RawLog, RawServerFacts
from exporter.parse import parse_server_output
from exporter.scripts import ServerScriptParameters, powershell_command, server_script
from simulator.scenario import scenario_from_dict

from ..conftest import demo_scenario

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


EN_US = RawCulture("M/d/yyyy", "h:mm:ss tt", "AM", "PM")
GETWINEVENT = "Microsoft.PowerShell.Commands.GetWinEventCommand"


def error(part: str, error_id: str, category: str = "ObjectNotFound", type_: str = "System.Exception",
          message: str = "(localized text)") -> RawError:
    return RawError(part, error_id, category, type_, message)


def facts(events=(), tail: str | None = None, **fields) -> RawServerFacts:
    base = RawServerFacts(
        now=NOW, culture=EN_US, exsetup_version="15.02.2562.043", build_source="exsetup", edge=False,
        service_key_start=2, service_queried=True, service_status="Running", service_start_type="Automatic",
        events=tuple(events), log_folder=True,
        logs=() if tail is None else (RawLog(None, tail),),
        endpoints=(), errors=(), utc_offset_minutes=0,
    )
    return replace(base, **fields)


def interpret(f: RawServerFacts, catalog: Catalog, lookback: timedelta = LOOKBACK):
    return interpret_server("EX01", f, catalog, lookback=lookback, now=NOW)


# ---------------------------------------------------------------- build, service, endpoint


def endpoint(name="GetExchangeMitigations", status=200, web_status=None, revocation_failed=False) -> RawEndpoint:
    return RawEndpoint(name, status, 0.31, web_status, revocation_failed)


def test_build_service_and_endpoint(catalog):
    state = interpret(facts(endpoints=(endpoint(), endpoint("GetExchangeConfig"))), catalog)
    assert state.name == "EX01" and state.build.update == "Jun26SU" and state.eems_supported
    assert (state.service_state, state.service_start_mode) == ("running", "auto")
    assert [(e.endpoint, e.reachable, e.reason, e.duration_seconds) for e in state.endpoints] == [
        ("mitigations", True, "ok", 0.31), ("flighting", True, "ok", 0.31)]
    down = interpret(facts(endpoints=(endpoint(status=0, web_status="ConnectFailure"),)), catalog)
    assert [(e.reachable, e.reason) for e in down.endpoints] == [(False, "connect_failed")]


@pytest.mark.parametrize("exsetup, admin_display_version, flighting", [
    ("15.01.2507.075", None, False),  # 2016 CU23 Sep26SUv2: Feature Flighting never came to 2016
    ("15.02.1544.048", None, False),  # 2019 CU14 Sep26SUv2: the CU before flighting
    ("15.02.1748.010", None, True),  # 2019 CU15's own build: the first with flighting
    ("15.02.2562.053", None, True),  # SE RTM
    (None, "Version 15.2 (Build 1544.4)", False),  # CU-level: every 2019 CU14 build lacks it
    (None, None, True),  # build unread: nothing says the server lacks it
])
def test_flighting_endpoint_is_reported_only_for_builds_with_feature_flighting(catalog, exsetup, admin_display_version,
                                                                               flighting):
    """HealthChecker shows Feature Flighting and its GetExchangeConfig endpoint only from Exchange 2019 CU15 and on
    SE (Invoke-AnalyzerExchangeInformation.ps1; Learn's "Feature Flighting in Exchange Server" applies to 2019 and
    SE, not 2016). Before, the endpoint check's `flighting` result was reported for every server, and a proxy that
    let only GetExchangeMitigations through raised ExchangeEEMSEndpointUnreachable{endpoint="flighting"} on a 2016
    or 2019 CU14 server, which has no service that uses it."""
    down = endpoint("GetExchangeConfig", status=0, web_status="ConnectFailure")
    state = interpret_server("EX01", facts(exsetup_version=exsetup, endpoints=(endpoint(), down)), catalog,
                             lookback=LOOKBACK, now=NOW, admin_display_version=admin_display_version)
    expected = [("mitigations", True)] + ([("flighting", False)] if flighting else [])
    assert [(e.endpoint, e.reachable) for e in state.endpoints] == expected


@pytest.mark.parametrize(
    "status, web_status, revocation_failed, reason",
    [
        (407, "ProtocolError", False, "proxy_auth_required"),
        (0, "Timeout", False, "timeout"),
        (0, "TrustFailure", False, "tls_validation"),
        (0, "TrustFailure", True, "revocation_unknown"),
        (0, "NameResolutionFailure", False, "dns"),
        (503, "ProtocolError", False, "http_status"),
        (0, "SendFailure", False, "other"),
    ],
)
def test_endpoint_failure_reasons_come_from_invariant_status_names(catalog, status, web_status, revocation_failed, reason):
    state = interpret(facts(endpoints=(endpoint(status=status, web_status=web_status, revocation_failed=revocation_failed),)),
                      catalog)
    assert [(e.reachable, e.reason) for e in state.endpoints] == [(False, reason)]


def test_edge_server_never_has_eems(catalog):
    state = interpret(facts(edge=True, service_queried=False, service_key_start=None, service_status=None,
                            service_start_type=None, errors=(error("service_key", "PathNotFound,x"),)), catalog)
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


# ---------------------------------------------------------------- what Windows reports as an error


@pytest.mark.parametrize("message", [
    "No events were found that match the specified selection criteria.",
    "Es wurden keine Ereignisse gefunden, die den angegebenen Auswahlkriterien entsprechen.",
    "Aucun événement correspondant aux critères de sélection spécifiés n’a été trouvé.",
    "指定された選択条件に一致するイベントが見つかりませんでした。",
])
def test_no_events_in_any_language_is_not_a_failure(catalog, message):
    state = interpret(facts(errors=(error("events", f"NoMatchingEventsFound,{GETWINEVENT}", message=message),)), catalog)
    assert state.collection_errors == ()


def test_edge_and_pre_eems_builds_have_no_events_and_no_log_folder_without_failures(catalog):
    absent = (error("service_key", "PathNotFound,Microsoft.PowerShell.Commands.GetItemPropertyCommand"),
              error("service", "NoServiceFoundForGivenName,Microsoft.PowerShell.Commands.GetServiceCommand"),
              error("events", f"NoMatchingEventsFound,{GETWINEVENT}"))
    no_service = dict(service_queried=False, service_key_start=None, service_status=None, service_start_type=None,
                      log_folder=False, errors=absent)
    for server in (facts(edge=True, **no_service), facts(exsetup_version="15.02.0922.007", **no_service)):
        state = interpret(server, catalog)
        assert state.collection_errors == () and state.service_installed is False and state.service_state is None
    missing = interpret(facts(log_folder=False, errors=(error("events", f"NoMatchingProvidersFound,{GETWINEVENT}"),)),
                        catalog)
    assert {(f.part, f.reason) for f in missing.collection_errors} == {("events", "not_found"), ("log", "not_found")}


def test_a_server_without_eems_misses_only_its_log_folder_silently(catalog):
    """A build that predates EEMS has no log folder: that is an answer. Another part not found is still a failure."""
    state = interpret(facts(exsetup_version="15.02.0922.007", errors=(
        error("log", "PathNotFound,Microsoft.PowerShell.Commands.GetChildItemCommand"),
        error("events", f"NoMatchingProvidersFound,{GETWINEVENT}"))), catalog)
    assert [(f.part, f.reason) for f in state.collection_errors] == [("events", "not_found")]


def test_service_query_denied_is_unknown_not_missing(catalog):
    """5.1's Get-Service says "no service found" when OpenService is denied: the registry key decides."""
    denied = facts(service_queried=False, service_status=None, service_start_type=None, service_key_start=2,
                   errors=(error("service", "NoServiceFoundForGivenName,Microsoft.PowerShell.Commands.GetServiceCommand"),))
    state = interpret(denied, catalog)
    assert (state.service_installed, state.service_state, state.service_start_mode) == (True, "unknown", "auto")
    assert [(f.part, f.reason) for f in state.collection_errors] == [("service", "access_denied")]
    unreadable_key = interpret(replace(denied, service_key_start=None, errors=denied.errors + (
        error("service_key", "System.Security.SecurityException,Microsoft.PowerShell.Commands.GetItemCommand",
              "NotSpecified", "System.Security.SecurityException"),)), catalog)
    assert unreadable_key.service_installed is None and unreadable_key.service_state == "unknown"


def test_a_service_get_service_answered_is_installed_even_when_its_registry_key_is_unread(catalog):
    """Get-Service found the service: it is installed, whatever the registry read said (no Start value)."""
    state = interpret(facts(service_key_start=None, errors=(
        error("service_key", "System.Security.SecurityException,Microsoft.PowerShell.Commands.GetItemCommand",
              "NotSpecified", "System.Security.SecurityException"),)), catalog)
    assert (state.service_installed, state.service_state, state.service_start_mode) == (True, "running", "auto")


def test_an_unread_build_and_an_unreadable_service_key_are_reported(catalog):
    """Only a missing service key (PathNotFound) is an answer; ExSetup.exe not found, or a key that could not be
    read, is a part the exporter is blind to."""
    state = interpret(facts(exsetup_version=None, errors=(
        error("build", "PathNotFound,Microsoft.PowerShell.Commands.GetItemCommand"),
        error("service_key", "System.Security.SecurityException,Microsoft.PowerShell.Commands.GetItemCommand",
              "NotSpecified", "System.Security.SecurityException"))), catalog)
    assert [(f.part, f.reason) for f in state.collection_errors] == [("build", "not_found"), ("service", "access_denied")]


@pytest.mark.parametrize("error_id, category", [
    ("FileNotFound,Microsoft.PowerShell.Commands.GetItemCommand", "ObjectNotFound"),  # the category alone says so
    ("PathNotFound,Microsoft.PowerShell.Commands.GetChildItemCommand", "NotSpecified"),  # the id alone says so
])
def test_a_missing_item_is_not_found_by_its_category_or_by_its_id(catalog, error_id, category):
    state = interpret(facts(errors=(error("endpoint", error_id, category),)), catalog)
    assert [(f.part, f.reason) for f in state.collection_errors] == [("endpoint", "not_found")]


def test_a_service_query_that_fails_otherwise_keeps_its_own_reason(catalog):
    """Only 5.1's "no service found" is read as access denied; another failure of Get-Service is what it is."""
    state = interpret(facts(service_queried=False, service_status=None, service_start_type=None, errors=(
        error("service", "System.InvalidOperationException,Microsoft.PowerShell.Commands.GetServiceCommand",
              "NotSpecified", "System.InvalidOperationException"),)), catalog)
    assert [(f.part, f.reason) for f in state.collection_errors] == [("service", "other")]
    assert (state.service_installed, state.service_state) == (True, "unknown")


def test_an_endpoint_check_refused_by_constrained_language_says_so(catalog):
    """The script's own record (collect_server.ps1) when the session is not FullLanguage: category SecurityError,
    which is no access denied; the reason tells the admin what to change."""
    state = interpret(facts(errors=(error("endpoint", "ConstrainedLanguage", "SecurityError", "",
                                          "the endpoint check needs FullLanguage"),)), catalog)
    assert [(f.part, f.reason) for f in state.collection_errors] == [("endpoint", "constrained_language")]


def test_access_denied_on_the_event_log_and_log_folder(catalog):
    state = interpret(facts(errors=(
        error("events", f"System.UnauthorizedAccessException,{GETWINEVENT}", "NotSpecified", "System.UnauthorizedAccessException"),
        error("log", "DirUnauthorizedAccessError,Microsoft.PowerShell.Commands.GetChildItemCommand", "PermissionDenied",
              "System.UnauthorizedAccessException"))), catalog)
    assert {(f.part, f.reason) for f in state.collection_errors} == {("events", "access_denied"), ("log", "access_denied")}


def test_an_application_log_the_account_may_not_read_is_access_denied_not_a_missing_log(catalog):
    """What Windows PowerShell 5.1 writes for `Get-WinEvent -LogName Application` when the account may not read the
    channel: GetEventCommand.cs (PowerShell/PowerShell@4e4a07c5, the 5.1 code) opens the log's configuration
    before any query, and its refusal becomes LogInfoUnavailable (a System.Exception around the
    UnauthorizedAccessException), then NoMatchingLogsFound for the name; nothing is thrown (PowerShell/PowerShell
    #10637 and #10639, dsccommunity/xWinEventLog#25 show both records). Before, that read as events/other and
    events/not_found: "the log does not exist", where the runbook's fix is Event Log Readers."""
    state = interpret(facts(errors=(
        RawError("events", f"LogInfoUnavailable,{GETWINEVENT}", "NotSpecified", "System.Exception",
                 "Could not retrieve information about the Application log. Error: Attempted to perform an "
                 "unauthorized operation..", inner="System.UnauthorizedAccessException"),
        error("events", f"NoMatchingLogsFound,{GETWINEVENT}", "ObjectNotFound", "System.Exception",
              'There is not an event log on the localhost computer that matches "Application".'))), catalog)
    assert [(f.part, f.reason) for f in state.collection_errors] == [("events", "access_denied")]


def test_a_log_configuration_unreadable_for_another_reason_stays_other(catalog):
    state = interpret(facts(errors=(
        RawError("events", f"LogInfoUnavailable,{GETWINEVENT}", "NotSpecified", "System.Exception", "(text)",
                 inner="System.Diagnostics.Eventing.Reader.EventLogException"),
        error("events", f"NoMatchingLogsFound,{GETWINEVENT}"))), catalog)
    assert [(f.part, f.reason) for f in state.collection_errors] == [("events", "other")]


def test_an_unformattable_event_keeps_the_others(catalog):
    text = "The description for Event ID '1008' in Source 'MSExchange Mitigation Service' cannot be found."
    events = [RawEvent(1008, at(1), "Cannot retrieve event message text."), RawEvent(1008, at(2), TLS_1008)]
    state = interpret(facts(events, errors=(error("events", f"{text},{GETWINEVENT}", "NotSpecified",
                                                  "System.Diagnostics.Eventing.Reader.EventLogException", text),)), catalog)
    assert state.eems.fetch_errors["tls_validation"] == 1 and state.eems.last_error == at(2)
    assert state.eems.other_errors == 1  # the unreadable 1008 is not known to be a fetch error
    assert [(f.part, f.reason) for f in state.collection_errors] == [("events", "unreadable")]


def test_an_event_reader_that_cannot_start_read_nothing(catalog):
    """An exception thrown out of Get-WinEvent (its reader could not be created: the Event Log service stopped or
    not answering, a corrupt channel) is named by its type, as PowerShell names every .NET exception a cmdlet throws
    (CmdletInvocationException: ErrorRecord(e, e.GetType().FullName, NotSpecified)). No event was read, so it is no
    `unreadable` record (one event not formatted, the others read: GetEventCommand.cs ReadEvents names those by
    their message), which ExchangeCollectorBlind leaves out: the events part went blind in silence."""
    reader = "System.Diagnostics.Eventing.Reader.EventLogException"
    state = interpret(facts(errors=(error("events", f"{reader},{GETWINEVENT}", "NotSpecified", reader,
                                          "The RPC server is unavailable"),)), catalog)
    assert [(f.part, f.reason) for f in state.collection_errors] == [("events", "other")]


def test_missing_and_bad_build(catalog):
    """R7: an unread, empty or refused build is unknown: it never says "predates EEMS" (eems_supported False),
    and where the server shows EEMS (its service, log folder or events) the EEMS alerts stay on."""
    none = interpret(facts(exsetup_version=None), catalog)  # an empty FileVersion without an error record
    assert none.build is None and none.eems_supported is True
    assert [(f.part, f.reason) for f in none.collection_errors] == [("build", "not_found")]
    bad = interpret(facts(exsetup_version="8.3.83.6", errors=(error("log", "", "", "", "access denied"),)), catalog)
    assert bad.build is None and bad.eems_supported is True
    assert [(f.part, f.reason) for f in bad.collection_errors] == [("build", "other"), ("log", "other")]
    assert "'8.3.83.6' is not an Exchange 2013/2016/2019/SE build" in bad.collection_errors[0].message


def test_an_unread_build_without_a_trace_of_eems_is_unknown(catalog):
    absent = (error("build", "CommandNotFoundException,Microsoft.PowerShell.Commands.GetCommandCommand"),
              error("service_key", "PathNotFound,Microsoft.PowerShell.Commands.GetItemPropertyCommand"),
              error("service", "NoServiceFoundForGivenName,Microsoft.PowerShell.Commands.GetServiceCommand"))
    blind = facts(exsetup_version=None, build_source=None, service_queried=False, service_status=None,
                  service_start_type=None, service_key_start=None, log_folder=False, errors=absent)
    assert interpret(blind, catalog).eems_supported is None
    assert interpret(replace(blind, edge=True), catalog).eems_supported is False
    seen = interpret(replace(blind, events=(RawEvent(1006, at(1), "fetched"),)), catalog)
    assert seen.eems_supported is True


def test_admin_display_version_stands_in_when_exsetup_cannot_be_read(catalog):
    no_exsetup = facts(exsetup_version=None, build_source=None, errors=(error("build", "CommandNotFoundException,Microsoft.PowerShell.Commands.GetCommandCommand"),))
    state = interpret_server("EX01", no_exsetup, catalog, lookback=LOOKBACK, now=NOW,
                             admin_display_version="Version 15.2 (Build 1748.53)")
    assert state.build_source == "admin_display_version"
    assert (state.build.product, state.build.cu, state.build.update, state.build.known) == (
        "Exchange2019", "CU15", "unknown", False)
    # R12: the update is unknown. CU15 RTM is below the June 2026 minimum, a later CU15 update passes it: that
    # cutoff is unknown (no series, no page); every CU15 build passes 2023-03.
    assert state.build.cutoffs == {"2023-03": True}
    assert state.eems_supported


def test_servicing_is_judged_on_the_exporters_date_not_the_servers_clock(catalog):
    wrong_clock = datetime(2031, 1, 1, tzinfo=timezone.utc)  # the server's clock is years ahead
    facts_2019 = facts(exsetup_version="15.2.1748.53", now=wrong_clock)
    state = interpret_server("EX01", facts_2019, catalog, lookback=LOOKBACK, now=wrong_clock,
                             today=date(2026, 10, 31))
    assert state.build.servicing == "serviced"  # ESU ran to 2026-10-31
    assert interpret_server("EX01", facts_2019, catalog, lookback=LOOKBACK, now=wrong_clock,
                            today=date(2026, 11, 1)).build.servicing == "out_of_support"


def test_servicing_is_judged_on_the_servers_date_when_no_exporter_date_is_given(catalog):
    """Without `today`, `now`'s date decides (not the machine's date): 2016 CU22 was serviced until 2023-01-09."""
    then = datetime(2023, 1, 9, 12, tzinfo=UTC)
    state = interpret_server("EX01", facts(exsetup_version="15.1.2375.37", now=then), catalog, lookback=LOOKBACK,
                             now=then)
    assert state.build.servicing == "serviced"


def test_exsetup_wins_over_admin_display_version(catalog):
    state = interpret_server("EX01", facts(), catalog, lookback=LOOKBACK, now=NOW,
                             admin_display_version="Version 15.2 (Build 1748.10)")
    assert (state.build.version, state.build_source, state.build.known) == ("15.2.2562.43", "exsetup", True)


def test_bad_admin_display_version_is_a_build_note(catalog):
    state = interpret_server("EX01", facts(exsetup_version=None, build_source=None), catalog, lookback=LOOKBACK,
                             now=NOW, admin_display_version="Version 15.2 (Build banana)")
    assert state.build is None and state.build_source is None
    assert [(f.part, f.reason, f.message) for f in state.collection_errors] == [
        ("build", "other", "AdminDisplayVersion 'Version 15.2 (Build banana)' is not like 'Version 15.2 (Build 1544.36)'")]


def test_old_build_has_no_eems(catalog):
    assert not interpret(facts(exsetup_version="15.2.922.7"), catalog).eems_supported


# ---------------------------------------------------------------- EEMS history


def test_no_sources_at_all(catalog):
    eems = interpret(facts(), catalog).eems
    assert (eems.last_check, eems.last_success, eems.last_error, eems.last_error_reason) == (None, None, None, None)
    assert eems.fetch_errors == dict.fromkeys(FETCH_ERROR_REASONS, 0)
    assert eems.last_activity is None


def test_a_1008_not_about_fetching_is_counted_apart(catalog):
    """Learn: 1008 is logged "for any encountered errors"; only fetch errors are failed checks."""
    other = "An unexpected exception occurred.\r\nDiagnostic information: Exception encountered while sending diagnostic data"
    events = [RawEvent(1008, at(1), other), RawEvent(1008, at(3), JUNE_2026_1008)]
    eems = interpret(facts(events), catalog).eems
    assert (eems.last_error, eems.last_error_reason) == (at(3), "unknown_issuer")
    assert sum(eems.fetch_errors.values()) == 1 and eems.other_errors == 1
    assert eems.last_activity == at(1)


BLOCKED_LINE = "ApplyMitigation,S:LogLevel=Warning;S:Message=Mitigation M2.1.0 is blocked and was not applied"
UPLOAD_LINE = ("DiagnosticData,S:LogLevel=Error;S:Message=Exception encountered while sending diagnostic data : "
               "The remote name could not be resolved")


def test_a_log_problem_not_about_fetching_is_counted_apart(catalog):
    """R1: as for 1008 events, only a Warning/Error line about fetching mitigations fails a check; EEMS logs
    other errors too (a blocked mitigation, the diagnostic-data upload), one per hourly check here."""
    cycles = []
    for hours in (3, 2, 1, 0.25):
        cycles += [stamp(at(hours), FETCH_LINE), stamp(at(hours, -1), DONE_LINE),
                   stamp(at(hours, -2), BLOCKED_LINE if hours in (3, 1) else UPLOAD_LINE)]
    eems = interpret(facts(tail="\n".join(cycles)), catalog).eems
    assert (eems.failing, eems.last_error, eems.last_error_reason) == (False, None, None)
    assert eems.last_success == at(0.25) and eems.log_other_errors == 4
    failed = cycles + [stamp(at(0, 5), FETCH_LINE), stamp(at(0, 4), UNTRUSTED_LINE), stamp(at(0, 3), BLOCKED_LINE)]
    eems = interpret(facts(tail="\n".join(failed)), catalog).eems
    assert (eems.last_error, eems.last_error_reason, eems.log_other_errors) == (at(0, 4), "untrusted_endpoint", 5)


def test_a_part_says_how_many_error_records_the_script_met(catalog):
    """R11: a reader that fails at every read repeats its error; the script sends five and the count."""
    repeated = error("events", "The data is invalid,Microsoft.PowerShell.Commands.GetWinEventCommand", "NotSpecified",
                     "System.Diagnostics.Eventing.Reader.EventLogInvalidDataException", "The data is invalid")
    state = interpret(facts(errors=(repeated,) * 5, error_counts=(("events", 40000),)), catalog)
    (failure,) = state.collection_errors
    assert (failure.part, failure.reason) == ("events", "unreadable")
    assert failure.message == "The data is invalid (the script met 40000 error records reading events and sent the first 5)"
    state = interpret(facts(errors=(repeated,) * 2, error_counts=(("events", 2),)), catalog)
    assert state.collection_errors[0].message == "The data is invalid"


def test_a_1008_without_a_message_is_read_by_its_insertion_strings(catalog):
    """R6: Get-WinEvent sets Message to null, with no error, when the text cannot be formatted."""
    detail = JUNE_2026_1008
    events = [RawEvent(1008, at(0.5), "", (detail,)), RawEvent(1008, at(1.5), "", (detail,))]
    eems = interpret(facts(events), catalog).eems
    assert (eems.failing, eems.last_error_reason, eems.fetch_errors["unknown_issuer"], eems.other_errors) == (
        True, "unknown_issuer", 2, 0)


def test_failing_needs_the_two_newest_checks_to_fail(catalog):
    clean = [stamp(at(3, -30), FETCH_LINE), stamp(at(3, -31), DONE_LINE)]
    once = [stamp(at(2), FETCH_LINE), stamp(at(2, -1), UNTRUSTED_LINE)]
    recovered = [stamp(at(1), FETCH_LINE), stamp(at(1, -1), DONE_LINE)]
    again = [stamp(at(0, 30), FETCH_LINE), stamp(at(0, 29), UNTRUSTED_LINE)]
    assert not interpret(facts(tail="\n".join(clean + once + recovered)), catalog).eems.failing
    assert not interpret(facts(tail="\n".join(clean + once + recovered + again)), catalog).eems.failing
    assert interpret(facts(tail="\n".join(clean + recovered + once[:0] + again + [
        stamp(at(0, 10), FETCH_LINE), stamp(at(0, 9), UNTRUSTED_LINE)])), catalog).eems.failing
    # an event and the log cycle of the same check are one failed check, not two
    event_and_log = interpret(facts([RawEvent(1008, at(0, 28), JAN_2025_1008)], tail="\n".join(recovered + again)), catalog)
    assert not event_and_log.eems.failing
    events_only = interpret(facts([RawEvent(1008, at(0, 20), TLS_1008), RawEvent(1008, at(1, 20), TLS_1008)]), catalog)
    assert events_only.eems.failing


def cycle_lines(when: datetime, failed: bool) -> list[str]:
    return [stamp(when, FETCH_LINE), stamp(when + timedelta(minutes=1), UNTRUSTED_LINE if failed else DONE_LINE)]


def test_a_check_fails_when_its_log_says_so_even_if_its_event_says_success(catalog):
    """An event and a log cycle of one check count once, as failed if either says so."""
    events = [RawEvent(1006, at(0, 28), "fetched"), RawEvent(1006, at(1, 28), "fetched")]
    tail = "\n".join(cycle_lines(at(1, 30), True) + cycle_lines(at(0, 30), True))
    assert interpret(facts(events, tail=tail), catalog).eems.failing


def test_a_check_seen_twice_keeps_its_own_outcome(catalog):
    """A check traced by an event and a log cycle is one check with its own outcome, whichever check is newer."""
    clean = [RawEvent(1006, at(1, 28), "fetched")]
    newest_failed = "\n".join(cycle_lines(at(1, 30), False) + cycle_lines(at(0, 30), True))
    assert not interpret(facts(clean, tail=newest_failed), catalog).eems.failing
    twice_failed = [RawEvent(1008, at(1, 28), TLS_1008)]
    newest_clean = "\n".join(cycle_lines(at(1, 30), True) + cycle_lines(at(0, 30), False))
    assert not interpret(facts(twice_failed, tail=newest_clean), catalog).eems.failing
    both_clean = [RawEvent(1006, at(0, 28), "fetched")]
    older_failed = "\n".join(cycle_lines(at(1, 30), True) + cycle_lines(at(0, 30), False))
    assert not interpret(facts(both_clean, tail=older_failed), catalog).eems.failing


def test_failing_next_check_and_same_check_bounds(catalog):
    """Two failures exactly NEXT_CHECK (an hour and a half) apart, the newer that old, are consecutive checks; a
    minute more and an hourly check fits between them; two failures exactly SAME_CHECK (ten minutes) apart are
    two checks."""
    assert interpret(facts([RawEvent(1008, at(1, 30), TLS_1008), RawEvent(1008, at(3), TLS_1008)]),
                     catalog).eems.failing
    assert not interpret(facts([RawEvent(1008, at(1, 30), TLS_1008), RawEvent(1008, at(3, 1), TLS_1008)]),
                         catalog).eems.failing
    assert not interpret(facts([RawEvent(1008, at(1, 31), TLS_1008), RawEvent(1008, at(2, 31), TLS_1008)]),
                         catalog).eems.failing
    assert interpret(facts([RawEvent(1008, at(0, 10), TLS_1008), RawEvent(1008, at(0, 20), TLS_1008)]),
                     catalog).eems.failing


def test_activity_is_any_event_or_log_write(catalog):
    eems = interpret(facts([RawEvent(1004, at(0.5), "unrelated")]), catalog).eems
    assert eems.last_activity == at(0.5) and eems.last_success is None
    log = RawLog(at(0.2), "")
    assert interpret(facts(logs=(log,)), catalog).eems.last_activity == at(0.2)


def test_hourly_files_utf16_and_culture_times_are_read_together(catalog):
    """Other Exchange 2016+ logs roll hourly, start with a bare CSV header and may write culture-formatted
    times; none of that may hide the checks."""
    def culture_stamp(when: datetime, body: str) -> str:
        return f"{when.month}/{when.day}/{when.year} {(when.hour % 12) or 12}:{when:%M:%S} {'AM' if when.hour < 12 else 'PM'},{body}"

    header = "DateTime,EventName,CustomData\r\n#Software: Microsoft Exchange Server\r\n#Fields: DateTime,EventName,CustomData\r\n"
    older = header + culture_stamp(at(2), FETCH_LINE) + "\r\n" + culture_stamp(at(2, -1), UNTRUSTED_LINE) + "\r\n"
    newer = "\ufeff" + header + culture_stamp(at(1), FETCH_LINE) + "\r\n" + culture_stamp(at(1, -1), DONE_LINE) + "\r\n"
    logs = (RawLog(at(1, -1), newer),
            RawLog(at(2, -1), older))
    eems = interpret(facts(logs=logs), catalog).eems
    assert eems.last_success == at(1) and eems.last_check == at(1)
    assert (eems.last_error, eems.last_error_reason) == (at(2, -1), "untrusted_endpoint")


def culture_time(when: datetime, offset_hours: float = 0) -> str:
    """`DateTime.ToString()` in en-US, in the zone `offset_hours` from UTC (no zone is written)."""
    t = when + timedelta(hours=offset_hours)
    return f"{t.month}/{t.day}/{t.year} {(t.hour % 12) or 12}:{t:%M:%S} {'AM' if t.hour < 12 else 'PM'}"


@pytest.mark.parametrize("offset_hours", [1, 2, 14, -1, -5, -12, 5.5])
def test_culture_times_in_the_servers_zone_are_placed_by_its_offset(catalog, offset_hours):
    """R4: culture-formatted times carry no zone. Closed hourly files show which reading fits: their UTC write
    time is their newest line's, and no line is later than the server's now. Nothing is dropped."""
    logs = []
    for hours in (3, 2, 1, 0.25):  # hourly files, the newest still open
        lines = [f"{culture_time(at(hours), offset_hours)},{FETCH_LINE}",
                 f"{culture_time(at(hours, -1), offset_hours)},{UNTRUSTED_LINE if hours == 2 else DONE_LINE}"]
        tail = "\r\n".join(lines) + "\r\n"
        logs.insert(0, RawLog(at(hours, -1), tail))
    state = interpret(facts(logs=tuple(logs), utc_offset_minutes=int(offset_hours * 60)), catalog)
    assert (state.eems.last_check, state.eems.last_success) == (at(0.25), at(0.25))
    assert (state.eems.last_error, state.eems.last_error_reason) == (at(2, -1), "untrusted_endpoint")
    assert state.eems.last_activity == at(0.25, -1) and state.collection_errors == ()


def test_a_closed_file_newer_than_its_write_time_places_culture_times_in_the_servers_zone(catalog):
    """Every line is older than the zone's offset, so no line looks later than now under either reading: only the
    closed file shows the zone (read as UTC, its newest line would be two hours after the file was closed).
    An older file in ISO times (with a zone) is read as written beside them."""
    def cycle(hours: float) -> str:
        return f"{culture_time(at(hours), 2)},{FETCH_LINE}\r\n{culture_time(at(hours, -1), 2)},{DONE_LINE}\r\n"

    iso = "\n".join([stamp(at(6), FETCH_LINE), stamp(at(6, -1), UNTRUSTED_LINE)])
    logs = (RawLog(at(4, -1), cycle(4)), RawLog(at(5, -1), cycle(5)), RawLog(at(6, -1), iso))
    eems = interpret(facts(logs=logs, utc_offset_minutes=120), catalog).eems
    assert (eems.last_check, eems.last_success, eems.last_error) == (at(4), at(4), at(6, -1))


def test_culture_times_that_would_lie_in_the_future_as_utc_are_read_in_the_servers_zone(catalog):
    """One open file without a write time, east of UTC: read as UTC its newest line would be later than now."""
    tail = f"{culture_time(at(0.5), 2)},{FETCH_LINE}\r\n{culture_time(at(0.5, -1), 2)},{DONE_LINE}\r\n"
    eems = interpret(facts(logs=(RawLog(None, tail),), utc_offset_minutes=120), catalog).eems
    assert (eems.last_check, eems.last_success) == (at(0.5), at(0.5))


def test_culture_times_that_fit_either_zone_are_read_as_utc(catalog):
    """With nothing that contradicts either reading (old lines, a write time that fits), a zoneless time is UTC."""
    tail = f"{culture_time(at(8))},{FETCH_LINE}\r\n{culture_time(at(8, -1))},{DONE_LINE}\r\n"
    for log in (RawLog(None, tail), RawLog(at(8, -1), tail)):
        assert interpret(facts(logs=(log,), utc_offset_minutes=-300), catalog).eems.last_check == at(8)


def test_a_daily_file_held_open_west_of_utc_places_its_culture_times_by_the_offset(catalog):
    """R3 on a server at UTC-5: the open file still shows the time it was opened. Read as UTC its lines would
    predate that; read in the server's zone they follow it, which an open file may."""
    lines = []
    for hours in (3.5, 2.5, 1.5):
        lines += [f"{culture_time(at(hours), -5)},{FETCH_LINE}", f"{culture_time(at(hours, -1), -5)},{DONE_LINE}"]
    state = interpret(facts(logs=(RawLog(at(4), "\r\n".join(lines)),), utc_offset_minutes=-300), catalog)
    assert (state.eems.last_check, state.eems.last_success) == (at(1.5), at(1.5))


def test_the_newest_error_names_the_reason(catalog):
    tail = "\n".join([stamp(at(2), FETCH_LINE), stamp(at(2, -1), UNTRUSTED_LINE),
                      stamp(at(1), FETCH_LINE), stamp(at(1, -1), "FetchMitigation," + GRANIKOS_CYCLE[4])])
    eems = interpret(facts(tail=tail), catalog).eems
    assert (eems.last_error, eems.last_error_reason) == (at(1, -1), "tls_validation")


def test_culture_times_in_utc_stay_utc_on_a_server_in_another_zone(catalog):
    tail = f"{culture_time(at(1))},{FETCH_LINE}\r\n{culture_time(at(1, -1))},{DONE_LINE}\r\n"
    older = f"{culture_time(at(2))},{FETCH_LINE}\r\n{culture_time(at(2, -1))},{DONE_LINE}\r\n"
    logs = (RawLog(at(1, -1), tail), RawLog(at(2, -1), older))
    for offset in (60, -300):
        assert interpret(facts(logs=logs, utc_offset_minutes=offset), catalog).eems.last_success == at(1)


def test_a_daily_file_held_open_keeps_its_lines(catalog):
    """R3: Microsoft documents that a file's last write time may not move until its writer closes it. A daily
    file EEMS holds open shows the time it was opened; its lines are what proves the checks since."""
    lines = []
    for hour in range(12):
        lines += [stamp(NOW.replace(hour=hour, minute=10), FETCH_LINE),
                  stamp(NOW.replace(hour=hour, minute=11), DONE_LINE)]
    tail = "\n".join(lines)
    opened = NOW.replace(hour=0, minute=10)
    state = interpret(facts(logs=(RawLog(opened, tail),)), catalog)
    assert state.collection_errors == ()
    assert state.eems.last_success == NOW.replace(hour=11, minute=10)
    assert state.eems.last_activity == NOW.replace(hour=11, minute=11)


def test_a_line_later_than_the_servers_now_is_not_believed_but_the_file_is(catalog):
    """Line times are bounded by the server's own clock (plus ten minutes), not by the file's write time."""
    tail = "\n".join([stamp(at(1), FETCH_LINE), stamp(at(1, -1), DONE_LINE), stamp(at(-1), FETCH_LINE),
                      stamp(at(-1, -1), UNTRUSTED_LINE)])
    state = interpret(facts(logs=(RawLog(at(1, -1), tail),)), catalog)
    assert (state.eems.last_success, state.eems.last_check, state.eems.last_error) == (at(1), at(1), None)
    assert state.eems.last_activity == at(1, -1) and state.collection_errors == ()


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


def test_a_check_that_logged_only_its_start_is_never_a_success(catalog):
    """However old, a newest check with no line after its start line (the tail was read, or the service stopped,
    right after it) confirms nothing."""
    tail = "\n".join([stamp(at(2), FETCH_LINE), stamp(at(2, -1), DONE_LINE), stamp(at(0.5), FETCH_LINE)])
    eems = interpret(facts(tail=tail), catalog).eems
    assert eems.last_check == at(0.5) and eems.last_success == at(2)


def test_a_finished_clean_check_is_a_success_once_exactly_check_settle_old(catalog):
    tail = "\n".join([stamp(at(0, 5), FETCH_LINE), stamp(at(0, 4), DONE_LINE)])  # CHECK_SETTLE is five minutes
    assert interpret(facts(tail=tail), catalog).eems.last_success == at(0, 5)


def test_the_lookback_window_and_the_clock_tolerance_include_their_bounds(catalog):
    """A 1008 exactly `lookback` old is counted; an event exactly FUTURE_TOLERANCE (a day) ahead is believed;
    a log problem line exactly `lookback` old is counted."""
    events = [RawEvent(1008, NOW - LOOKBACK, TLS_1008), RawEvent(1008, NOW - LOOKBACK, "Mitigation M1 failed"),
              RawEvent(1006, NOW + timedelta(days=1), "fetched")]
    tail = stamp(NOW - LOOKBACK, BLOCKED_LINE)
    eems = interpret(facts(events, tail=tail), catalog).eems
    assert (eems.fetch_errors["tls_validation"], eems.other_errors, eems.log_other_errors) == (1, 1, 1)
    assert eems.last_check == eems.last_success == NOW + timedelta(days=1)
    ahead = NOW + timedelta(minutes=10)  # LOG_CLOCK_SLACK: a line this far ahead of the server's now is believed
    written = interpret(facts(logs=(RawLog(NOW + timedelta(days=1), stamp(ahead, FETCH_LINE)),)), catalog).eems
    assert (written.last_check, written.last_activity) == (ahead, NOW + timedelta(days=1))


def test_a_generic_event_midway_between_two_failed_checks_takes_the_older_ones_cause(catalog):
    """Equally near two failed log cycles, a generic 1008 takes the cause of the first (the older) one."""
    tail = "\n".join([stamp(at(2, 1), FETCH_LINE), stamp(at(2), "FetchMitigation," + GRANIKOS_CYCLE[4]),
                      stamp(at(1, 1), FETCH_LINE), stamp(at(1), UNTRUSTED_LINE)])
    eems = interpret(facts([RawEvent(1008, at(1.5), JAN_2025_1008)], tail=tail), catalog).eems
    assert eems.fetch_errors["tls_validation"] == 1 and eems.fetch_errors["untrusted_endpoint"] == 0


def test_a_check_that_has_logged_its_preamble_but_no_result_is_not_yet_a_success(catalog):
    """A check through a proxy logs "Using Proxy" and its diagnostic-data line before the fetch fails (the GRANIKOS
    capture): a poll landing in between must not read the newest check as a success, or a server failing every
    check reads as recovered for one poll (its alerts resolve and page again). Once the check is older than a
    fetch can take and still shows no problem, it was a success."""
    def cycle(hours_ago: float, minutes: float, failed: bool) -> list[str]:
        lines = GRANIKOS_CYCLE[1:] if failed else GRANIKOS_CYCLE[1:4]
        return [stamp(at(hours_ago, minutes - i / 60), "FetchMitigation," + line) for i, line in enumerate(lines)]

    failed_twice = cycle(2, 0, True) + cycle(1, 0, True)
    for minutes_ago in (0.5, 2):  # its preamble logged, the fetch still running
        eems = interpret(facts(tail="\n".join(failed_twice + cycle(0, minutes_ago, False))), catalog).eems
        assert eems.failing and eems.last_success is None, minutes_ago
        assert eems.last_check == at(0, minutes_ago)
    eems = interpret(facts(tail="\n".join(failed_twice + cycle(0, 20, False))), catalog).eems
    assert not eems.failing and eems.last_success == at(0, 20)


def test_no_demo_server_reads_differently_at_any_moment_of_its_check_or_of_the_hour_turn(catalog):
    """Every demo server, read as a poll reads it at instants 100 ms apart around its next hourly check (the lines
    of a check are stamped over its first 3 s) and around the turn of the hour (hourly log files roll): what the
    alerts rest on never differs from a calm moment of the same hour. The demo fleet does not change; a verdict
    that flickers is a page that resolves and fires again."""
    calm = datetime(2026, 11, 26, 12, 30, tzinfo=UTC)
    scenario = scenario_from_dict({**demo_scenario(), "clock": calm})
    command = powershell_command(server_script(ServerScriptParameters(24, 50, 32768, False, 10, ""))).line

    def verdict(host, moment: datetime):
        scenario.clock.pinned = moment
        out = host.run(command)
        raw = parse_server_output(b"".join(out.stdout_chunks), max_events=50, max_log_bytes=32768)
        state = interpret_server(host.name, raw, catalog, lookback=LOOKBACK, now=raw.now)
        eems = state.eems
        return ((eems.failing, eems.last_error_reason, eems.last_success is None, eems.other_errors > 0,
                 eems.log_other_errors > 0, sorted(k for k, n in eems.fetch_errors.items() if n >= 6),
                 sorted(e.part for e in state.collection_errors)), eems.last_check)

    moments = 0
    for host in scenario.hosts:
        expected, last_check = verdict(host, calm)
        around = [datetime(2026, 11, 26, 13, tzinfo=UTC) + timedelta(milliseconds=ms) for ms in range(-500, 1500, 100)]
        if last_check is not None:
            around += [last_check + timedelta(hours=1, milliseconds=ms) for ms in range(-500, 3000, 100)]
        for moment in around:
            assert verdict(host, moment)[0] == expected, (host.name, moment)
        moments += len(around)
    assert moments > 40 * len(scenario.hosts) // 2  # most servers have a check to step through


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


def test_odd_lines_do_not_crash(catalog):
    tail = "mitigations from https://officeclient.microsoft.com/x\n" + "\n".join(
        ["#Software: Microsoft Exchange Server", "garbage,,,;;'\"", "S:LogLevel=Error;S:Message=no time",
         stamp(at(1), FETCH_LINE), "\x00\ufffd", stamp(at(1, -1), DONE_LINE)]
    )
    log = RawLog(NOW, tail)
    eems = interpret(facts(logs=(log,)), catalog).eems
    assert (eems.last_check, eems.last_success, eems.last_error) == (at(1), at(1), None)


def test_generic_event_without_log_is_explained_by_the_build(catalog):
    events = [RawEvent(1008, at(1), JAN_2025_1008), RawEvent(1008, at(2), JAN_2025_1008)]
    old = interpret(facts(events, exsetup_version="15.2.1118.25"), catalog).eems  # 2019 CU12 Feb23SU
    assert old.fetch_errors["untrusted_endpoint"] == 2 and old.last_error_reason == "untrusted_endpoint"
    current = interpret(facts(events), catalog).eems  # SE Jun26SU: the generic text stays unexplained
    assert current.fetch_errors["other"] == 2 and current.last_error_reason == "other"


def test_generic_event_on_a_build_without_a_2023_verdict_is_not_blamed_on_the_certificate(catalog):
    """A CU-level 2019 CU12 (AdminDisplayVersion) has no 2023-03 verdict (its update decides): a generic 1008 there
    stays `other`, not the retired certificate."""
    events = [RawEvent(1008, at(1), JAN_2025_1008)]
    state = interpret_server("EX01", facts(events, exsetup_version=None, build_source=None), catalog, lookback=LOOKBACK,
                             now=NOW, admin_display_version="Version 15.2 (Build 1118.7)")
    assert "2023-03" not in state.build.cutoffs and state.eems_supported
    assert state.eems.last_error_reason == "other" and state.eems.fetch_errors["other"] == 1


@settings(max_examples=500)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=30), st.integers(-5, 45))
def test_nearest_failed_cycle_is_the_first_of_the_nearest(minutes, when_minute):
    """_nearest (bisection) picks what min() over the unsorted list picks, ties included."""
    times = [NOW + timedelta(minutes=m) for m in minutes]
    when = NOW + timedelta(minutes=when_minute)
    by_time = sorted((t, i) for i, t in enumerate(times))
    expected = min(range(len(times)), key=lambda i: abs(times[i] - when))
    assert _nearest([t for t, _ in by_time], [i for _, i in by_time], when) == expected


def test_failing_needs_no_hourly_check_between_or_since_the_two_failures(catalog):
    """EEMS checks every hour (Learn), and a check that succeeds may leave no event (1005/1006 are for actions such
    as applying a mitigation): with the log unread, two 1008s with an hour's check between them unseen, or an
    hour's check since the newer, are one failure among good checks, not "failing now"."""
    unread = dict(log_folder=None, errors=(error("log", "UnauthorizedAccess", "PermissionDenied",
                                                 "System.UnauthorizedAccessException"),))
    between = [RawEvent(1008, at(0, 30), TLS_1008), RawEvent(1008, at(2, 30), TLS_1008)]
    assert not interpret(facts(between, **unread), catalog).eems.failing
    since = [RawEvent(1008, at(1, 40), TLS_1008), RawEvent(1008, at(2, 40), TLS_1008)]
    assert not interpret(facts(since, **unread), catalog).eems.failing
    hourly = [RawEvent(1008, at(0, 40), TLS_1008), RawEvent(1008, at(1, 40), TLS_1008)]
    assert interpret(facts(hourly, **unread), catalog).eems.failing


def test_a_warning_that_only_mentions_fetching_fails_no_check(catalog):
    """The failed checks in every published log are an Error line "Exception encountered while fetching mitigations"
    or a line naming a known failure (a Warning: "untrusted endpoint", "TLS certificate or its chain validation
    failed"). A Warning that only mentions fetching (a retry, a slow answer; no such text is published) is not known
    to end the check in failure: it is counted apart, as other problem lines are, and pages no one."""
    retry = "FetchMitigation,S:LogLevel=Warning;S:Message=Retrying fetching mitigations after a transient error"
    cycles = []
    for hours in (2, 1, 0.25):
        cycles += [stamp(at(hours), FETCH_LINE), stamp(at(hours, -1), retry), stamp(at(hours, -2), DONE_LINE)]
    eems = interpret(facts(tail="\n".join(cycles)), catalog).eems
    assert (eems.failing, eems.last_error, eems.last_success, eems.log_other_errors) == (False, None, at(0.25), 3)
    error_line = ("FetchMitigation,S:LogLevel=Error;S:Message=Exception encountered while fetching mitigations : "
                  "One or more errors occurred.")
    failed = [stamp(at(1, 30), FETCH_LINE), stamp(at(1, 29), error_line),
              stamp(at(0, 30), FETCH_LINE), stamp(at(0, 29), retry), stamp(at(0, 28), error_line)]
    eems = interpret(facts(tail="\n".join(failed)), catalog).eems
    assert (eems.failing, eems.last_error, eems.last_error_reason) == (True, at(0, 28), "other")


def test_a_1008_places_culture_times_where_its_check_failed_in_the_log(catalog):
    """One failed check on a server at UTC+1 whose log writes local times without a zone, the newest line 55
    minutes old and its daily file held open (its write time the opening's): read as UTC, nothing in the files
    contradicts the lines. But the check's 1008 would fall on the log's successful check of the hour before and
    its failed cycle an hour after the 1008: one failure read as two checks in a row, a page. An event and the log
    of one check agree; the reading in the server's zone puts the 1008 on its failed cycle."""
    error_line = ("FetchMitigation,S:LogLevel=Error;S:Message=Exception encountered while fetching mitigations : "
                  "One or more errors occurred.")
    lines = [f"{culture_time(at(2), 1)},{FETCH_LINE}", f"{culture_time(at(2, -1), 1)},{DONE_LINE}",
             f"{culture_time(at(1), 1)},{FETCH_LINE}", f"{culture_time(at(1, -1), 1)},{error_line}"]
    failed = RawEvent(1008, at(1, -1), JAN_2025_1008)
    server = facts([failed], logs=(RawLog(at(12), "\r\n".join(lines)),), utc_offset_minutes=60)
    eems = interpret_server("EX01", server, catalog, lookback=LOOKBACK, now=NOW - timedelta(minutes=5)).eems
    assert (eems.failing, eems.last_error, eems.last_success) == (False, at(1, -1), at(2))


def test_a_fetch_failure_without_a_check_start_line_still_fails_its_check(catalog):
    """The check-start text ("Fetching mitigations from ...") is the one GRANIKOS quoted from a 2021/22 build; the
    failure texts are confirmed (BLOG-2025-01 quotes the untrusted-endpoint Warning alone). A tail whose checks
    log no such start line (another build's wording, or the tail cut inside a check) must not lose its failed
    fetches: they were neither failures nor "other" errors, so with no 1008 in reach (the Application log wrapped,
    or unreadable) a server failing every hour looked healthy. Problem lines of one check (within SAME_CHECK)
    are one failed check, classified on their texts together."""
    lines = []
    for hours in (2, 1, 0):
        lines += [stamp(at(hours, 5), "FetchMitigation,S:LogLevel=Warning;S:Message=TLS certificate or its chain "
                                      "validation failed"),
                  stamp(at(hours, 4), "FetchMitigation," + GRANIKOS_CYCLE[-1])]
    eems = interpret(facts(tail="\n".join(lines)), catalog).eems
    assert (eems.failing, eems.last_error, eems.last_error_reason) == (True, at(0, 5), "tls_validation")
    assert eems.last_check == at(0, 5) and eems.log_other_errors == 0
    # the tail cut inside a failing check, its start line gone: that check's failure counts too
    cut = [stamp(at(1, 4), UNTRUSTED_LINE), stamp(at(0, 5), FETCH_LINE), stamp(at(0, 4), UNTRUSTED_LINE)]
    eems = interpret(facts(tail="\n".join(cut)), catalog).eems
    assert (eems.failing, eems.last_error_reason) == (True, "untrusted_endpoint")


def test_an_outage_is_one_run_of_failures_and_failures_among_good_checks_one_each(catalog):
    """ExchangeEEMSFetchErrorsRecurring counts 1008s in the window: an outage of eight hours, fixed, kept eight there for
    a day after, read as errors recurring between successes. Runs tell the two apart."""
    outage = [RawEvent(1008, at(hours, 28), TLS_1008) for hours in range(4, 12)]
    fixed = [RawEvent(1006, at(hours, 28), "fetched") for hours in range(0, 4)]
    eems = interpret(facts(outage + fixed), catalog).eems
    assert (sum(eems.fetch_errors.values()), eems.failing, eems.failure_runs) == (8, False, 1)
    # six failures, each between good checks (events one hour apart), and a log cycle of one of them: six runs
    scattered = [RawEvent(1008 if hours % 3 == 0 else 1006, at(hours, 28), TLS_1008 if hours % 3 == 0 else "fetched")
                 for hours in range(1, 19)]
    tail = "\n".join(cycle_lines(at(3, 30), True))
    eems = interpret(facts(scattered, tail=tail), catalog).eems
    assert (sum(eems.fetch_errors.values()), eems.failing, eems.failure_runs) == (6, False, 6)
    # hours apart with nothing seen between: an unseen hourly check ran between them, so each is its own run
    apart = [RawEvent(1008, at(hours, 28), TLS_1008) for hours in (2, 5, 8)]
    assert interpret(facts(apart), catalog).eems.failure_runs == 3
    # a run that began before the window and reaches into it counts; one that ended before it does not
    window = timedelta(hours=6)
    across = [RawEvent(1008, at(hours, 28), TLS_1008) for hours in range(4, 9)] + [RawEvent(1006, at(3, 28), "fetched")]
    before = [RawEvent(1008, at(hours, 28), TLS_1008) for hours in (7, 8)] + [RawEvent(1006, at(6, 28), "fetched")]
    assert interpret(facts(across), catalog, lookback=window).eems.failure_runs == 1
    assert interpret(facts(before), catalog, lookback=window).eems.failure_runs == 0


# ---------------------------------------------------------------- culture times across a daylight-saving change

# Europe/Berlin in 2026: CET (+1) until 2026-03-29 01:00 UTC, CEST (+2) until 2026-10-25 01:00 UTC, then CET.
SPRING, AUTUMN = datetime(2026, 3, 29, 1, tzinfo=UTC), datetime(2026, 10, 25, 1, tzinfo=UTC)


def berlin(when: datetime) -> int:
    return 2 if SPRING <= when < AUTUMN else 1


def berlin_offsets(now: datetime, lookback: timedelta = LOOKBACK) -> tuple[tuple[datetime, int], ...]:
    """What collect_server.ps1 sends: the offset at the window's start, then each change with the offset after it."""
    start = now - lookback
    return ((start, berlin(start) * 60), *((t, berlin(t) * 60) for t in (SPRING, AUTUMN) if start < t <= now))


def berlin_files(now: datetime, checks: dict[datetime, bool]) -> tuple[RawLog, ...]:
    """Hourly files (named by UTC hour, newest first, the newest open), each check's lines in Berlin local time."""
    logs = []
    for start, failed in sorted(checks.items()):
        lines = [(start, FETCH_LINE), (start + timedelta(seconds=1), UNTRUSTED_LINE if failed else DONE_LINE),
                 (start + timedelta(seconds=2), "DiagnosticData,S:LogLevel=Information;S:Message=No diagnostic data sent")]
        tail = "".join(f"{culture_time(t, berlin(t))},{body}\r\n" for t, body in lines)
        logs.insert(0, RawLog(start + timedelta(seconds=2), tail))
    return tuple(logs)


def dst_state(catalog: Catalog, now: datetime, checks: dict[datetime, bool], offsets=None):
    f = facts(now=now, logs=berlin_files(now, checks), utc_offset_minutes=berlin(now) * 60,
              utc_offsets=berlin_offsets(now) if offsets is None else offsets)
    return interpret_server("EX01", f, catalog, lookback=LOOKBACK, now=now).eems


def test_culture_times_before_the_autumn_change_keep_the_summer_offset(catalog):
    """Just after clocks go back (Berlin, 03:00 CEST -> 02:00 CET), the two newest checks both wrote 02:10 local.
    Each is read with the offset in force when it was written: two failed checks an hour apart, failing. With the
    one current offset, the older read an hour late, on top of the newer: one check, not failing."""
    now = AUTUMN + timedelta(minutes=20)
    checks = {AUTUMN - timedelta(hours=h, minutes=-10): h in (1, 0) for h in (4, 3, 2, 1, 0)}
    eems = dst_state(catalog, now, checks)
    assert (eems.last_check, eems.last_error) == (AUTUMN + timedelta(minutes=10), AUTUMN + timedelta(minutes=10, seconds=1))
    assert eems.last_success == AUTUMN - timedelta(minutes=110)
    assert eems.failing and eems.failure_runs == 1
    assert eems.last_activity == AUTUMN + timedelta(minutes=10, seconds=2)


def test_culture_times_before_the_spring_change_keep_the_winter_offset(catalog):
    """Just after clocks go forward (02:00 CET -> 03:00 CEST): two failed checks an hour apart, 01:10 CET and
    03:10 CEST. With the one current offset the older read an hour early: two hours apart, an unseen check between
    them, not failing."""
    now = SPRING + timedelta(minutes=20)
    checks = {SPRING - timedelta(hours=h, minutes=-10): h in (1, 0) for h in (4, 3, 2, 1, 0)}
    eems = dst_state(catalog, now, checks)
    assert eems.last_check == SPRING + timedelta(minutes=10) and eems.failing
    assert eems.last_success == SPRING - timedelta(minutes=110)


def test_an_older_script_without_offset_changes_reads_every_line_with_the_current_offset(catalog):
    """An endpoint installed before the script sent `utc_offsets` keeps the behaviour it had: the one offset."""
    now = AUTUMN + timedelta(minutes=20)
    checks = {AUTUMN - timedelta(hours=h, minutes=-10): h in (1, 0) for h in (4, 3, 2, 1, 0)}
    eems = dst_state(catalog, now, checks, offsets=())
    assert eems.last_check == AUTUMN + timedelta(minutes=10) and not eems.failing


def test_the_repeated_autumn_hour_is_read_in_the_order_the_lines_were_written(catalog):
    """In one file, 02:10 to 02:50 local twice: the step back from 02:50 to 02:10 is where the clock went back.
    A repeated local time before it reads with the summer offset, after it with the winter one."""
    now = AUTUMN + timedelta(hours=1)
    starts = [AUTUMN - timedelta(minutes=50), AUTUMN - timedelta(minutes=10),
              AUTUMN + timedelta(minutes=10), AUTUMN + timedelta(minutes=50)]
    tail = "".join(f"{culture_time(t, berlin(t))},{FETCH_LINE}\r\n"
                   f"{culture_time(t + timedelta(seconds=1), berlin(t))},{DONE_LINE}\r\n" for t in starts)
    f = facts(now=now, logs=(RawLog(starts[-1] + timedelta(seconds=1), tail),), utc_offset_minutes=60,
              utc_offsets=berlin_offsets(now))
    eems = interpret_server("EX01", f, catalog, lookback=LOOKBACK, now=now).eems
    assert (eems.last_check, eems.last_success) == (starts[-1], starts[-1])
    assert eems.last_activity == starts[-1] + timedelta(seconds=1)


def test_a_repeated_hour_that_the_order_leaves_open_is_read_as_the_earlier(catalog):
    """The newest lines, 02:30 local, then nothing: the summer reading (00:30 UTC) and the winter one (01:30 UTC)
    both follow the line before and precede the server's now. The earlier is taken: the service may have stopped
    writing before the change."""
    now = AUTUMN + timedelta(hours=1)
    older, newest = AUTUMN - timedelta(minutes=90), AUTUMN - timedelta(minutes=30)
    tail = (f"{culture_time(older, 2)},{FETCH_LINE}\r\n{culture_time(older + timedelta(seconds=1), 2)},{DONE_LINE}\r\n"
            f"{culture_time(newest, 2)},{FETCH_LINE}\r\n{culture_time(newest + timedelta(seconds=1), 2)},{DONE_LINE}\r\n")
    f = facts(now=now, logs=(RawLog(None, tail),), utc_offset_minutes=60, utc_offsets=berlin_offsets(now))
    eems = interpret_server("EX01", f, catalog, lookback=LOOKBACK, now=now).eems
    assert (eems.last_check, eems.last_activity) == (newest, newest + timedelta(seconds=1))


def test_a_local_time_the_spring_change_skipped_is_read_with_the_offset_before_it(catalog):
    """02:30 local never happens in Berlin on 29 March (02:00 CET is 03:00 CEST); such a line is read as 01:30 UTC
    (read as UTC it would be later than the server's now)."""
    now = SPRING + timedelta(minutes=45)
    tail = f"3/29/2026 2:30:00 AM,{FETCH_LINE}\r\n3/29/2026 2:30:01 AM,{DONE_LINE}\r\n"
    f = facts(now=now, logs=(RawLog(None, tail),), utc_offset_minutes=120, utc_offsets=berlin_offsets(now))
    eems = interpret_server("EX01", f, catalog, lookback=LOOKBACK, now=now).eems
    assert eems.last_check == SPRING + timedelta(minutes=30)



@pytest.mark.parametrize("last_write", ["newest line", None])
def test_a_check_in_the_second_pass_of_the_repeated_hour_at_the_same_second_is_not_the_first_again(catalog, last_write):
    """EEMS checks hourly on a timer, so the check in the second pass of the repeated autumn hour often falls in the
    same second as the one in the first pass, and a quick check writes all its lines in that second (the log has
    no fractions of a second). Its start line then shows the very local time of the line before it: read with the
    earlier offset it was the same instant as the check before, an hour early, the two checks one (and with the
    file's write time beside it, that reading lost to UTC, every line two hours off). Two checks never start at the
    same instant, so it is the second pass."""
    now = AUTUMN + timedelta(minutes=20)
    starts = [AUTUMN - timedelta(minutes=50) - timedelta(hours=h) for h in (2, 1, 0)] + [AUTUMN + timedelta(minutes=10)]
    tail = "".join(f"{culture_time(t, berlin(t))},{FETCH_LINE}\r\n"
                   f"{culture_time(t, berlin(t))},{UNTRUSTED_LINE if t == starts[-2] else DONE_LINE}\r\n"
                   for t in starts)
    log = RawLog(starts[-1] if last_write else None, tail)
    f = facts(now=now, logs=(log,), utc_offset_minutes=60, utc_offsets=berlin_offsets(now))
    eems = interpret_server("EX01", f, catalog, lookback=LOOKBACK, now=now).eems
    assert (eems.last_check, eems.last_success, eems.last_error) == (starts[-1], starts[-1], starts[-2])


# ---------------------------------------------------------------- a build of an Exchange version the catalog does not know


def _real_output_with_build(version: str, **changes) -> bytes:
    """The real zero-padded 2019 CU11 output (tests/fixtures/real/), its ExSetup.exe FileVersion replaced."""
    import json
    from pathlib import Path

    import yaml

    fixture = Path(__file__).parent.parent / "fixtures" / "real" / "exsetup-2019-cu11-zero-padded.yaml"
    doc = json.loads(yaml.safe_load(fixture.read_text(encoding="utf-8"))["output"])
    assert doc["exsetup_version"] == "15.02.0986.005"
    return json.dumps({**doc, "exsetup_version": version, **changes}).encode()


def _server_samples(state) -> dict:
    from exporter.metrics import server_families
    from exporter.model import CollectorOutcome, ServerResult

    result = ServerResult("EX01", outcome=CollectorOutcome("server", True, 1.0, NOW), state=state, last_success=NOW)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in server_families(result) for s in f.samples}


@pytest.mark.parametrize("reported, version", [("15.03.0100.001", "15.3.100.1"), ("16.00.0001.002", "16.0.1.2")])
def test_a_build_of_a_newer_exchange_version_is_an_unknown_build_not_an_unreadable_one(catalog, reported, version):
    """A future Exchange version (15.3, 16.0: a Subscription Edition release numbered past the catalog's products)
    was refused by the catalog's build parser, so the server showed as unreadable: no exchange_build_info, and
    exchange_collector_partial_failure{part="build",reason="other"}, which raises ExchangeCollectorBlind ("the
    exporter cannot read") instead of ExchangeBuildUnknown. It is a build the catalog does not know: build info with
    product, cu and update "unknown", known 0, and nothing judged of it: no cutoff verdict (neither 1 nor 0), no
    release, support end or update path; EEMS as far as the server shows it (its service runs), never from the build."""
    facts_ = parse_server_output(_real_output_with_build(reported))
    state = interpret_server("EX01", facts_, catalog, lookback=LOOKBACK, now=facts_.now)
    assert state.collection_errors == ()
    assert (state.build.version, state.build.product, state.build.cu, state.build.update, state.build.known) == (
        version, "unknown", "unknown", "unknown", False)
    assert state.build.eems_supported is None and state.build.cutoffs == {}
    assert state.eems_supported is True  # the server shows the service, not the build
    found = _server_samples(state)
    server = (("server", "EX01"),)
    info = {"server": "EX01", "product": "unknown", "cu": "unknown", "update": "unknown", "version": version,
            "source": "exsetup"}
    assert found[("exchange_build_info", tuple(sorted(info.items())))] == 1
    assert found[("exchange_build_known", server)] == 0
    assert found[("exchange_eems_supported", server)] == 1
    assert found[("exchange_build_update_path_info", tuple(sorted({
        "server": "EX01", "servicing": "unknown", "next_product": "", "next_cu": "", "next_update": "",
        "next_version": ""}.items())))] == 1
    names = {name for name, _ in found}
    assert not names & {"exchange_eems_certificate_cutoff_compliant", "exchange_collector_partial_failure",
                        "exchange_build_release_timestamp_seconds", "exchange_product_support_end_timestamp_seconds",
                        "exchange_build_update_path_timestamp_seconds",
                        "exchange_build_cu_servicing_end_timestamp_seconds"}


def test_a_build_of_a_newer_exchange_version_never_says_no_eems(catalog):
    """Without a trace of EEMS on the server, a build the catalog cannot place says nothing of EEMS: no
    exchange_eems_supported series (not 0, which would page ExchangeBuildWithoutEEMS), as for an unread build (R7)."""
    bare = _real_output_with_build("16.0.1.2", service=None, service_key=None, log_folder=False, errors=[
        {"part": "service_key", "id": "PathNotFound,Microsoft.PowerShell.Commands.GetItemPropertyCommand",
         "category": "ObjectNotFound", "type": "System.Management.Automation.ItemNotFoundException", "message": "x"}])
    facts_ = parse_server_output(bare)
    state = interpret_server("EX01", facts_, catalog, lookback=LOOKBACK, now=facts_.now)
    assert state.build.product == "unknown" and state.eems_supported is None
    assert not {name for name, _ in _server_samples(state)} & {"exchange_eems_supported",
                                                               "exchange_eems_certificate_cutoff_compliant"}
    assert interpret_server("EX01", replace(facts_, edge=True), catalog, lookback=LOOKBACK,
                            now=facts_.now).eems_supported is False  # Edge: no EEMS whatever the build


@pytest.mark.parametrize("reported", [
    "16.0.1.2.3", "16.0.1", "-16.0.1.2", "16.0.1.x", "16.0." + "9" * 20 + ".1", "16.0.65536.1", "99999.0.1.2",
    "14.3.123.4",  # Exchange 2010: older than every product the exporter monitors, not a future one
    "15.2.70000.1",  # a known product's, but no file version: it read as a future SE CU, compliant with every cutoff
])
def test_garbage_builds_still_count_as_unreadable(catalog, reported):
    facts_ = parse_server_output(_real_output_with_build(reported))
    state = interpret_server("EX01", facts_, catalog, lookback=LOOKBACK, now=facts_.now)
    assert state.build is None
    assert [(f.part, f.reason) for f in state.collection_errors] == [("build", "other")]
    assert len(state.collection_errors[0].message) < 160
