"""Each way the simulator can be wrong like Windows (docs/simulator.md "Realism knobs"), polled through the
exporter over real WinRM/NTLM: a healthy server must look healthy, an unreadable part must say "unknown"
with a reason, never a wrong verdict (issue: real Exchange servers, section 1 and 3).

The second half runs every knob through real Prometheus and the shipped rules (every `for:` set to 0s, as in
test_integration.py): a healthy server under any knob raises nothing it should not, and a twin of it whose
EEMS fetches fail is never silent (issue 17, "Real Exchange servers, round 2").
"""

from __future__ import annotations

import re
import time
from pathlib import Path
import urllib.parse
import urllib.request
from contextlib import ExitStack
from datetime import datetime, timedelta, timezone

import pytest
import yaml

from exporter.catalog import Catalog
from exporter.exporter import Exporter
from exporter.interpret import CHECK_SETTLE
from exporter.web import serve
from exporter.scripts import ServerScriptParameters, powershell_command, server_script
from exporter.collectors import script_failure
from exporter.config import load_config
from simulator.scenario import scenario_from_dict

from ..conftest import SimulatedFleet, free_port, jea_scenario, poll_all, polled_samples, relocate, samples
from .test_integration import (
    RULES, Program, evaluated_after, get_json, prometheus_command, rules_without_for, wait_until,
)

SE = "15.2.2562.53"
SERVERS = [
    {"name": "EN", "build": SE, "mitigations": {"applied": []}},
    {"name": "DE", "build": SE, "locale": "de-DE"},
    {"name": "FR", "build": SE, "locale": "fr-FR"},
    {"name": "JA", "build": SE, "locale": "ja-JP"},
    {"name": "EDGE", "build": "15.2.1748.39", "role": "Edge"},
    {"name": "PRE-EEMS", "build": "15.1.2308.27"},
    {"name": "LEASTPRIV", "build": SE, "account": "least_privilege", "unreadable": ["events", "log"]},
    {"name": "LEASTPRIV-SVC", "build": SE, "account": "least_privilege"},
    {"name": "UTF16-CULTURE", "build": SE, "locale": "fr-FR", "log_encoding": "utf-16", "log_time": "culture"},
    {"name": "JA-CULTURE", "build": SE, "locale": "ja-JP", "log_time": "culture"},
    {"name": "DAILY-W3C", "build": SE, "log_rotation": "daily", "log_header": "w3c"},
    {"name": "DAILY-OPEN", "build": SE, "log_rotation": "daily", "log_last_write": "at_open"},
    {"name": "CULTURE-EAST", "build": SE, "locale": "de-DE", "log_time": "culture", "log_time_zone": "+01:00"},
    {"name": "EMPTY-BUILD", "build": SE, "build_source": "empty"},
    {"name": "BIGLOG", "build": SE, "application_log_events": 3_000_000},
    {"name": "CLM", "build": SE, "language_mode": "constrained"},
    {"name": "NOSHELL", "build": SE, "remote_shell": "disabled"},
    {"name": "CULTURE-WEST", "build": SE, "log_time": "culture", "log_time_zone": "-05:00", "log_rotation": "daily",
     "log_last_write": "at_open"},
    {"name": "NONFETCH", "build": SE, "non_fetch_errors": True},
    {"name": "BADEVENT", "build": SE, "unreadable_event": True, "success_events": True, "log_file": "absent"},
    {"name": "NULLTEXT", "build": "15.2.1544.36", "unreadable_event": "null_message", "log_file": "absent"},
    {"name": "PROXY407", "build": SE, "winhttp_proxy": {"proxy": "proxy.contoso.com:8080", "answers": 407}},
    {"name": "FAILING", "build": "15.2.1544.36"},
    {"name": "EP-TIMEOUT", "build": SE, "endpoint_failure": "timeout"},
    {"name": "EP-TLS", "build": SE, "endpoint_failure": "tls_validation"},
    {"name": "EP-CRL", "build": SE, "endpoint_failure": "revocation"},
    {"name": "EP-DNS", "build": SE, "endpoint_failure": "dns"},
]


@pytest.fixture(scope="module")
def metrics():
    scenario = relocate({"credentials": [], "servers": [{"address": "127.0.0.1", **s} for s in SERVERS],
                         "organization": {"server": "EN"}})
    with SimulatedFleet(scenario) as fleet:
        exporter = Exporter(fleet.config(check_endpoint=True), Catalog.load())
        poll_all(exporter.poller)
        server = serve(exporter, "127.0.0.1", 0, None)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.server_address[1]}/metrics", timeout=10) as response:
                yield samples(response.read().decode())
        finally:
            server.shutdown()
            exporter.stop()


@pytest.fixture
def metrics_with():
    """Metrics of one server polled with poll settings of the test's own."""
    def polled(server: dict, **poll) -> dict:
        scenario = relocate({"credentials": [], "servers": [{"address": "127.0.0.1", **server}]})
        with SimulatedFleet(scenario) as fleet:
            return polled_samples(fleet.config(**poll))
    return polled


def value(metrics, metric, **labels):
    return metrics.get((metric, frozenset(labels.items())))


def partial_failures(metrics, server: str) -> set[tuple[str, str]]:
    return {(dict(labels)["part"], dict(labels)["reason"]) for (name, labels), v in metrics.items()
            if name == "exchange_collector_partial_failure" and dict(labels)["server"] == server and v == 1}


def test_every_server_is_polled(metrics):
    expected = {s["name"]: 0 if s.get("remote_shell") == "disabled" else 1 for s in SERVERS}
    assert {s["name"]: value(metrics, "exchange_up", server=s["name"]) for s in SERVERS} == expected


def test_remote_shell_disabled_by_policy_is_named(metrics):
    """R13: AllowRemoteShellAccess = Disabled refuses every new shell (WS-Management fault 2150859180)."""
    assert value(metrics, "exchange_collector_error", collector="server", server="NOSHELL",
                 reason="remote_shell_disabled") == 1


def test_the_event_query_costs_the_window_not_the_log():
    """R5: a provider and time filter is evaluated over the whole Application log (no index; CSS-Exchange saw
    minutes per server); the script's query lets the first record older than the window through and stops there.
    The simulator charges the records the query reads (simulator/eventlog.py)."""
    command = powershell_command(server_script(ServerScriptParameters(24, 200, 65536, False, 10, ""))).line

    def seconds(records: int) -> float:
        scenario = scenario_from_dict({"credentials": [{"username": "u", "password": "p"}],
                                       "servers": [{"name": "EN", "address": "127.0.0.1", "build": SE,
                                                    "application_log_events": records}]})
        out = scenario.hosts[0].run(command)
        assert out.exit_code == 0
        return out.runtime_seconds

    assert seconds(5_000_000) - seconds(20_000) < 1.0


def test_a_reader_that_repeats_its_error_cannot_flood_the_poll():
    """R11: Get-WinEvent writes each failed read as an error and reads on (GetEventCommand.cs ReadEvents: catch,
    WriteError, continue; PowerShell/PowerShell#10637: "The data is invalid" repeated many times). The script sends
    the first five records of a part and how many it met: its output does not grow with the repeats (without the cap
    it does), and the poll succeeds with the events it read, the part named unreadable and the count said."""
    script = server_script(ServerScriptParameters(24, 200, 65536, False, 10, ""))
    uncapped = re.sub(r"if\(\$n\[\$part\] -g[et] 5\)\{return\};", "", script)
    assert uncapped != script

    def output_bytes(repeats: int, sent: str = script) -> int:
        scenario = scenario_from_dict({"credentials": [{"username": "u", "password": "p"}],
                                       "servers": [{"name": "EN", "address": "127.0.0.1", "build": SE,
                                                    "event_read_errors": repeats}]})
        out = scenario.hosts[0].run(powershell_command(sent).line)
        assert out.exit_code == 0
        return sum(map(len, out.stdout_chunks))

    assert output_bytes(1_000_000) - output_bytes(10) < 16  # the count's digits
    assert output_bytes(10_000, uncapped) > 50 * output_bytes(10, uncapped)

    scenario = relocate({"credentials": [], "servers": [{"name": "EN", "address": "127.0.0.1", "build": SE,
                                                         "event_read_errors": 1_000_000}]})
    with SimulatedFleet(scenario) as fleet:
        exporter = Exporter(fleet.config(), Catalog.load())
        try:
            poll_all(exporter.poller)
            (result,), _ = exporter.snapshot()
        finally:
            exporter.stop()
    assert result.outcome.success, result.outcome.error_message
    (failure,) = result.state.collection_errors
    assert (failure.part, failure.reason) == ("events", "unreadable")
    assert "met 1000000 error records reading events and sent the first 5" in failure.message
    assert result.state.eems.last_success is not None


BEFORE_ISSUE_17 = Path(__file__).resolve().parents[1] / "fixtures" / "collect_server_before_issue_17.ps1"


@pytest.mark.parametrize("locale", ["en-US", "de-DE"])
def test_constrained_language_refuses_the_old_script_with_a_reason_of_its_own(locale):
    """R9: under AppLocker/WDAC the script before issue 17 died inside its own error handler; the exporter names
    that `constrained_language` (R14: the German text arrives in code page 437, umlauts intact)."""
    scenario = scenario_from_dict({"credentials": [{"username": "u", "password": "p"}],
                                   "servers": [{"name": "EN", "address": "127.0.0.1", "build": SE, "locale": locale,
                                                "language_mode": "constrained"}]})
    params = ServerScriptParameters(24, 200, 65536, True, 10, "")
    old = server_script(params).split("\n")[:2] + BEFORE_ISSUE_17.read_text().splitlines()
    out = scenario.hosts[0].run(powershell_command("\n".join(old)).line)
    failure = script_failure(out.exit_code, out.stderr)
    assert out.exit_code == 1 and failure.reason == "constrained_language"
    assert "MethodInvocationNotSupportedInConstrainedLanguage" in str(failure)
    if locale == "de-DE":
        assert "Die Methode kann nicht aufgerufen werden" in str(failure) and "\ufffd" not in str(failure)
    now = scenario.hosts[0].run(powershell_command(server_script(params)).line)
    assert now.exit_code == 0, now.stderr


def test_constrained_language_runs_all_but_the_endpoint_check(metrics):
    assert value(metrics, "exchange_up", server="CLM") == 1
    assert partial_failures(metrics, "CLM") == {("endpoint", "constrained_language")}
    assert value(metrics, "exchange_eems_last_success_timestamp_seconds", server="CLM") is not None
    assert not any(name == "exchange_eems_endpoint_reachable" and dict(labels)["server"] == "CLM" for name, labels in metrics)


def test_the_script_times_its_stages(metrics):
    for stage in ("build", "service", "events", "log", "endpoint"):
        assert value(metrics, "exchange_eems_script_stage_seconds", server="EN", stage=stage) >= 0
    assert value(metrics, "exchange_eems_script_stage_seconds", server="BIGLOG", stage="events") > 0.3


def test_the_server_command_needs_more_than_cmd_exe_allows():
    """9: the command only runs because it bypasses cmd.exe's 8,191 characters (the fleet above ran it)."""
    params = ServerScriptParameters(24, 200, 65536, True, 10, "")
    assert len(powershell_command(server_script(params)).line) > 8191


@pytest.mark.parametrize("server", ["EN", "DE", "FR", "JA"])
def test_no_events_in_any_language_is_no_failure(metrics, server):
    """1: every healthy poll meets Get-WinEvent's localized "no events" error."""
    assert partial_failures(metrics, server) == set()
    assert value(metrics, "exchange_eems_last_success_timestamp_seconds", server=server) is not None
    assert value(metrics, "exchange_eems_failing", server=server) == 0


def test_padded_file_version_is_read(metrics):
    assert value(metrics, "exchange_build_info", server="EN", product="ExchangeSE", cu="RTM", update="Sep26SUv2",
                 version="15.2.2562.53", source="exsetup") == 1


@pytest.mark.parametrize("server", ["EDGE", "PRE-EEMS"])
def test_edge_and_pre_eems_builds_are_not_failures(metrics, server):
    """2: no event provider, no log folder and no service key are answers there, not errors."""
    assert partial_failures(metrics, server) == set()
    assert value(metrics, "exchange_eems_supported", server=server) == 0
    assert not any(name == "exchange_service_state" and dict(labels)["server"] == server for name, labels in metrics)


def test_least_privilege_account_sees_unknown_not_missing(metrics):
    """3: 5.1's Get-Service says "not found" when access is denied; the service key says it is there."""
    service = dict(server="LEASTPRIV", name="MSExchangeMitigation")
    assert value(metrics, "exchange_service_state", **service, state="unknown") == 1
    assert value(metrics, "exchange_service_state", **service, state="running") == 0
    assert value(metrics, "exchange_service_start_mode", **service, start_mode="auto") == 1
    assert partial_failures(metrics, "LEASTPRIV") == {("service", "access_denied"), ("events", "access_denied"),
                                                      ("log", "access_denied")}
    assert partial_failures(metrics, "LEASTPRIV-SVC") == {("service", "access_denied")}
    assert value(metrics, "exchange_eems_last_activity_timestamp_seconds", server="LEASTPRIV-SVC") is not None


@pytest.mark.parametrize("server", ["UTF16-CULTURE", "JA-CULTURE", "DAILY-W3C", "DAILY-OPEN", "CULTURE-EAST",
                                    "CULTURE-WEST"])
def test_log_layouts_still_show_the_checks(metrics, server):
    """5: hourly files, UTF-16, culture-formatted times, either header form; R3/R4: a daily file held open (its
    write time stays at its first line), culture times in the server's zone east or west of UTC.
    The newest check is a success only once it has settled (CHECK_SETTLE): in the minutes after a check starts,
    the activity is that check and the success still the one an hour before."""
    assert partial_failures(metrics, server) == set()
    success = value(metrics, "exchange_eems_last_success_timestamp_seconds", server=server)
    activity = value(metrics, "exchange_eems_last_activity_timestamp_seconds", server=server)
    assert success is not None and activity is not None
    assert 0 <= activity - success < 3600 + CHECK_SETTLE.total_seconds()


def test_an_empty_file_version_is_an_unknown_build_not_one_without_eems(metrics):
    """R7: FileVersion empty and no error; EEMS is there (its service, its log), so its alerts stay on."""
    assert ("build", "other") in partial_failures(metrics, "EMPTY-BUILD")
    assert value(metrics, "exchange_eems_supported", server="EMPTY-BUILD") == 1
    assert value(metrics, "exchange_eems_failing", server="EMPTY-BUILD") == 0
    # the organization collector's AdminDisplayVersion stands in, at CU level (R12: no verdict where the update decides)
    assert {dict(labels)["source"] for name, labels in metrics
            if name == "exchange_build_info" and dict(labels)["server"] == "EMPTY-BUILD"} == {"admin_display_version"}


def test_no_log_budget_still_shows_the_newest_file(metrics_with):
    """R8: with poll.log_tail_bytes 0 the script listed no file, so a healthy server without events in the window
    had no activity at all and paged ExchangeEEMSNoActivity. The newest file is listed without its lines."""
    found = metrics_with({"name": "EN", "build": SE}, log_tail_bytes=0)
    activity = value(found, "exchange_eems_last_activity_timestamp_seconds", server="EN")
    assert activity is not None and time.time() - activity < 3600
    assert value(found, "exchange_eems_last_success_timestamp_seconds", server="EN") is None  # no lines were read


def test_an_unformattable_event_keeps_the_others(metrics):
    """6: Get-WinEvent under -EA Stop lost every event for one bad one."""
    assert partial_failures(metrics, "BADEVENT") == {("events", "unreadable"), ("log", "not_found")}
    assert value(metrics, "exchange_eems_last_success_timestamp_seconds", server="BADEVENT") is not None


def test_a_1008_without_text_is_read_by_its_insertion_strings(metrics):
    """R6: FormatDescription returns null for a missing message file or locale, with no error; the event's
    insertion strings still say it failed to fetch mitigations."""
    assert value(metrics, "exchange_eems_failing", server="NULLTEXT") == 1
    assert value(metrics, "exchange_eems_last_error_info", server="NULLTEXT", reason="unknown_issuer") == 1
    assert value(metrics, "exchange_eems_fetch_errors", server="NULLTEXT", reason="unknown_issuer") >= 20
    assert value(metrics, "exchange_eems_other_errors", server="NULLTEXT") == 0


def test_non_fetch_1008_is_counted_apart(metrics):
    """7: 1008 is logged for any error; only fetch errors are failed checks."""
    assert value(metrics, "exchange_eems_other_errors", server="NONFETCH") >= 3
    assert sum(v for (name, labels), v in metrics.items()
               if name == "exchange_eems_fetch_errors" and dict(labels)["server"] == "NONFETCH") == 0
    assert value(metrics, "exchange_eems_failing", server="NONFETCH") == 0
    assert value(metrics, "exchange_eems_failing", server="FAILING") == 1


def test_winhttp_proxy_asking_for_credentials_is_named(metrics):
    """4: both OCS endpoints, the reason of the failure."""
    for endpoint in ("mitigations", "flighting"):
        assert value(metrics, "exchange_eems_endpoint_reachable", server="PROXY407", endpoint=endpoint) == 0
        assert value(metrics, "exchange_eems_endpoint_result_info", server="PROXY407", endpoint=endpoint,
                     reason="proxy_auth_required") == 1
        assert value(metrics, "exchange_eems_endpoint_reachable", server="EN", endpoint=endpoint) == 1


@pytest.mark.parametrize("server, reason", [("EP-TIMEOUT", "timeout"), ("EP-TLS", "tls_validation"),
                                            ("EP-CRL", "revocation_unknown"), ("EP-DNS", "dns")])
def test_endpoint_failures_carry_their_reason(metrics, server, reason):
    assert value(metrics, "exchange_eems_endpoint_reachable", server=server, endpoint="mitigations") == 0
    assert value(metrics, "exchange_eems_endpoint_result_info", server=server, endpoint="mitigations", reason=reason) == 1


def test_real_empty_organization_shapes(metrics):
    """8: [null] for no mitigations, "" for no proxy."""
    assert value(metrics, "exchange_collector_success", collector="organization", organization="Contoso") == 1
    assert not any(name == "exchange_eems_mitigation_applied" and dict(labels).get("server") == "EN"
                   for name, labels in metrics)
    assert value(metrics, "exchange_eems_mitigation_applied", server="DE", mitigation="PING1") == 1


# ------------------------------------------------------------------ every knob through Prometheus and the rules

# Alerts that depend on today's date against the catalog, not on a knob; left out of the comparison.
DATED = {"ExchangeBuildSuperseded", "ExchangeBuildCUNotServiced", "ExchangeProductOutOfSupport",
         "ExchangeProductSupportEndingSoon", "ExchangeCatalogStale"}
FETCHES_FAIL = {"eems_failure": "tls_validation"}
FAILING_PAGE = ("ExchangeEEMSFetchErrors", "critical", "tls_validation")
BLIND_CLM = ("ExchangeCollectorBlind", "warning", "constrained_language")  # the endpoint check cannot run
CANNOT_POLL = {("ExchangeExporterCannotPoll", "warning", ""), ("ExchangeExporterCannotPoll", "critical", "")}
# For the log's knobs the failing twin may not read the Application log either: the log is its only witness.
LOG_ONLY = {"account": "least_privilege", "unreadable": ["events"]}
# knob -> (scenario keys, alerts of the healthy server as (alertname, severity, reason or ""), what else the
# failing twin has). Each knob runs on a healthy server and on a twin whose fetches fail (FETCHES_FAIL), which
# must raise FAILING_PAGE.
KNOBS = {
    "log_other_errors": ({"log_other_errors": True}, set(), LOG_ONLY),
    "log_last_write": ({"log_rotation": "daily", "log_last_write": "at_open"}, set(), LOG_ONLY),
    "log_time_zone": ({"log_time": "culture", "log_time_zone": "+01:00"}, set(), LOG_ONLY),
    "log_time_zone west, daily, held open": ({"log_time": "culture", "log_time_zone": "-05:00", "log_rotation": "daily",
                                              "log_last_write": "at_open"}, set(), LOG_ONLY),
    "log_other_file": ({"log_other_file": True}, set(), LOG_ONLY),
    # the build part stays unread (AdminDisplayVersion stands in at CU level): a ticket after an hour
    "build_source: empty": ({"build_source": "empty"}, {("ExchangeCollectorBlind", "warning", "other")}, {}),
    # the events are the only witness of the failing twin: no log folder
    "unreadable_event: null_message": ({"unreadable_event": "null_message", "success_events": True}, set(),
                                       {"log_file": "absent"}),
    "unreadable_event: true": ({"unreadable_event": True, "success_events": True}, set(), {"log_file": "absent"}),
    # three million records: about 90 s for a query that reads them all, beyond the poll's timeout
    "application_log_events": ({"application_log_events": 3_000_000}, set(), {}),
    # a reader that fails at every read repeats its error (R11): the records are capped and counted, the events read
    "event_read_errors": ({"event_read_errors": 1_000_000}, set(), {}),
    "language_mode: constrained": ({"language_mode": "constrained"}, {BLIND_CLM}, {}),
    # the Application log and the service denied (a least-privilege account): blind, and said so, never a page
    "unreadable: [events]": (LOG_ONLY, {("ExchangeCollectorBlind", "warning", "access_denied")}, {}),
    # no shell at all: the poll fails, so the page is the exporter's own
    "remote_shell: disabled": ({"remote_shell": "disabled"}, CANNOT_POLL, {}),
}
# Alerts a failing twin must raise when it is not FAILING_PAGE.
FAILING_TWIN_PAGE = {"remote_shell: disabled": ("ExchangeExporterCannotPoll", "critical", "")}


def knob_servers() -> list[dict]:
    servers = []
    for index, (knob, (keys, _, failing)) in enumerate(KNOBS.items()):
        servers.append({"name": f"K{index:02d}-OK", "build": SE, **keys})
        servers.append({"name": f"K{index:02d}-FAIL", "build": SE, **keys, **FETCHES_FAIL, **failing})
    return servers


@pytest.fixture(scope="module")
def alerts(tmp_path_factory):
    """Every knob server polled once, served on loopback, scraped by Prometheus that evaluates the shipped
    rules: the firing alerts per server, as (alertname, severity, reason)."""
    tmp = tmp_path_factory.mktemp("realism")
    servers = knob_servers()
    scenario = relocate({"credentials": [], "servers": [{"address": "127.0.0.1", **s} for s in servers],
                         "organization": {"server": servers[0]["name"]}})
    with ExitStack() as cleanup:
        fleet = cleanup.enter_context(SimulatedFleet(scenario))
        exporter = Exporter(fleet.config(check_endpoint=True), Catalog.load())
        cleanup.callback(exporter.stop)
        poll_all(exporter.poller)
        server = serve(exporter, "127.0.0.1", 0, None)
        cleanup.callback(server.shutdown)
        rule_file = tmp / "rules.yml"
        rule_file.write_text(rules_without_for(RULES.read_text()))
        port = free_port()
        (tmp / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rule_file)],
            "scrape_configs": [{"job_name": "exchange-eems",
                                "static_configs": [{"targets": [f"127.0.0.1:{server.server_address[1]}"]}]}],
        }))
        prometheus = Program("prometheus", prometheus_command(tmp, port), tmp)
        cleanup.callback(prometheus.stop)
        url = f"http://127.0.0.1:{port}"
        prometheus.wait_ready(f"{url}/-/ready")

        def scraped() -> bool:
            query = urllib.parse.urlencode({"query": "count(exchange_up)"})
            result = get_json(f"{url}/api/v1/query?{query}")["data"]["result"]
            return bool(result) and float(result[0]["value"][1]) == len(servers)

        assert wait_until(scraped, 30, [prometheus]), prometheus.log_tail()
        complete = datetime.now(timezone.utc)
        assert wait_until(lambda: all(evaluated_after(g, complete) for g in get_json(f"{url}/api/v1/rules")["data"]["groups"]),
                          30, [prometheus]), prometheus.log_tail()
        found: dict[str, set] = {s["name"]: set() for s in servers}
        for alert in get_json(f"{url}/api/v1/alerts")["data"]["alerts"]:
            labels = alert["labels"]
            if labels.get("server") in found and labels["alertname"] not in DATED:
                found[labels["server"]].add((labels["alertname"], labels["severity"], labels.get("reason", "")))
        yield found


@pytest.mark.parametrize("knob", list(KNOBS))
def test_a_healthy_server_raises_only_what_the_knob_explains(alerts, knob):
    index = list(KNOBS).index(knob)
    assert alerts[f"K{index:02d}-OK"] == KNOBS[knob][1]


@pytest.mark.parametrize("knob", list(KNOBS))
def test_a_server_whose_fetches_fail_is_never_silent(alerts, knob):
    index = list(KNOBS).index(knob)
    assert FAILING_TWIN_PAGE.get(knob, FAILING_PAGE) in alerts[f"K{index:02d}-FAIL"]


# Europe/Berlin's autumn change of 2026: 03:00 CEST (UTC+2) becomes 02:00 CET (UTC+1) at 01:00 UTC.
AUTUMN_2026 = datetime(2026, 10, 25, 1, tzinfo=timezone.utc)
# a server there writing culture times in local time, with no events (its checks are read from the log)
BERLIN = {"build": SE, "log_time": "culture", "locale": "de-DE", "time_zone": "Europe/Berlin", "events": "absent",
          "installed_since": "2026-10-01T00:00:00Z"}


@pytest.mark.parametrize("minutes_after", [5, 20])
def test_culture_times_across_a_daylight_saving_change_are_read_with_the_offset_then(minutes_after):
    """A server in Europe/Berlin writing culture times in local time, polled minutes after its clocks went back.
    Checks run at ten past each UTC hour: the newest before the change wrote 02:10 (CEST), the one after it 02:10
    again (CET). Read with the one offset the server has now, the check before the change looked an hour later than
    it was: five minutes after the change, a check in the future (within the clock slack) that is no success yet.
    Twenty minutes after it, the newest check is the one after the change, read right either way."""
    scenario = relocate({"clock": (AUTUMN_2026 + timedelta(minutes=minutes_after)).isoformat(), "credentials": [],
                         "servers": [{"address": "127.0.0.1", "name": "BERLIN", **BERLIN}]})
    with SimulatedFleet(scenario) as fleet:
        found = polled_samples(fleet.config())
    assert partial_failures(found, "BERLIN") == set()
    newest = AUTUMN_2026 + timedelta(minutes=10) if minutes_after > 10 else AUTUMN_2026 - timedelta(minutes=50)
    for metric in ("exchange_eems_last_check_timestamp_seconds", "exchange_eems_last_success_timestamp_seconds"):
        assert int(value(found, metric, server="BERLIN")) == int(newest.timestamp()), metric
    assert value(found, "exchange_eems_failing", server="BERLIN") == 0


def test_the_jea_endpoint_sends_the_offset_changes_too(tmp_path):
    """The JEA endpoint's function is the collection script: polled over PSRP five minutes after the change, the
    newest check (before it) is read with the offset then in force, as over WinRS."""
    scenario = jea_scenario(tmp_path / "endpoint")
    scenario["clock"] = (AUTUMN_2026 + timedelta(minutes=5)).isoformat()
    scenario["servers"][0].update(BERLIN)
    with SimulatedFleet(scenario) as fleet:
        config = yaml.safe_load(fleet.config_text())
        (module,) = config["modules"].values()
        config["modules"] = {"jea": {**module, "protocol": "psrp"}}
        config["servers"][0]["module"] = "jea"
        path = tmp_path / "exporter.yml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        found = polled_samples(load_config(path))
    assert value(found, "exchange_up", server="EX01") == 1 and partial_failures(found, "EX01") == set()
    newest = AUTUMN_2026 - timedelta(minutes=50)
    assert int(value(found, "exchange_eems_last_check_timestamp_seconds", server="EX01")) == int(newest.timestamp())
