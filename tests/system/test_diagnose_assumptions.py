"""The field report's Assumptions section against simulated servers over WinRM: each verdict on a server where the
assumption holds and on one where it does not (the simulator's knobs, docs/simulator.md). The clock is pinned, so
a daily log file holds half a day of checks whatever the hour the test runs."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import pytest

from ..conftest import SimulatedFleet, polled_samples, relocate
from ..unit.test_field_report import lines
from .test_diagnose import diagnose
from .test_windows_realism import AUTUMN_2026, BERLIN

SERVERS = [
    # healthy: hourly ISO UTF-8 log, direct WinHTTP, the endpoint check reaches OCS
    {"name": "EX01", "build": "15.2.2562.53"},
    # daily culture-time log in local time (UTC+1), UTF-16, whose open file keeps its first line's write time
    {"name": "EX02-DE", "build": "15.2.2562.53", "locale": "de-DE", "log_rotation": "daily", "log_time": "culture",
     "log_encoding": "utf-16", "log_last_write": "at_open", "log_time_zone": "+01:00"},
    # Warning/Error lines and 1008s that are not about fetching
    {"name": "EX03-OTHER", "build": "15.2.2562.53", "log_other_errors": True, "non_fetch_errors": True},
    # every check fails TLS validation; the account may not read the Application log
    {"name": "EX04-PROXY", "build": "15.2.2562.53", "eems_failure": "tls_validation",
     "internet_web_proxy": "http://proxy.contoso.com:8080/", "locale": "fr-FR", "account": "least_privilege",
     "unreadable": ["events"]},
    # the WinHTTP proxy answers the monitoring account 407 while EEMS (LocalSystem) fetches
    {"name": "EX05-407", "build": "15.2.2562.53", "winhttp_proxy": {"proxy": "proxy.contoso.com:8080", "answers": 407}},
]


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory) -> dict[str, dict[str, str]]:
    """server -> {assumption id: verdict line}, from `diagnose SERVER --redact-names`."""
    scenario = relocate({"clock": "2026-11-26T12:30:00Z", "organization": {"name": "Contoso", "domain": "contoso.com"},
                         "servers": [{**s, "address": "127.0.0.1"} for s in SERVERS]})
    with SimulatedFleet(scenario) as fleet:
        config_file = tmp_path_factory.mktemp("assumptions") / "config.yml"
        config_file.write_text(fleet.config_text(check_endpoint=True))
        running = {s["name"]: diagnose(config_file, s["name"], "--redact-names") for s in SERVERS}
        results = {}
        for name, proc in running.items():
            stdout, stderr = proc.communicate(timeout=120)
            assert proc.returncode == 0, stderr.decode(errors="replace")[-2000:]
            results[name] = {k.removeprefix("assumption."): v for k, v in lines(stdout.decode()).items()
                             if k.startswith("assumption.")}
    return results


def status(value: str) -> str:
    return value.split(":", 1)[0]


def test_log_times_zone_and_write_times(verdicts):
    healthy, daily = verdicts["EX01"], verdicts["EX02-DE"]
    assert healthy["log_time_column"].startswith("CONFIRMS: log.read.1.time_column: iso ")
    assert healthy["log_time_zone"] == "CONFIRMS: UTC: every time read carries its zone"
    assert status(daily["log_time_column"]) == "CONFIRMS" and "culture" in daily["log_time_column"]
    assert daily["log_time_zone"].startswith("CONFIRMS: local time: last write minus newest line on the closed files: "
                                             "log.read.2 -1h00m, log.read.3 -1h00m; os.utc_offset: 60")
    # hourly files hold one check each: a stuck write time would not show
    assert healthy["log_write_time_moves"].startswith("NOT SHOWN: log.read.1's lines span 0h00m")
    assert daily["log_write_time_moves"].startswith("CONTRADICTS: log.read.1: lines from ")
    assert status(verdicts["EX03-OTHER"]["log_write_time_moves"]) == "NOT SHOWN"


def test_log_layout(verdicts):
    healthy, daily = verdicts["EX01"], verdicts["EX02-DE"]
    for got in (healthy, daily):
        assert status(got["log_every_check"]) == "CONFIRMS" and "median 1h00m between starts" in got["log_every_check"]
        assert status(got["log_newest_files_newest_lines"]) == "CONFIRMS"
        assert status(got["log_rotation"]) == "CONFIRMS" and status(got["log_folder"]) == "CONFIRMS"
        assert status(got["log_custom_data"]) == "CONFIRMS" and status(got["check_start_text"]) == "CONFIRMS"
        assert status(got["log_dir_entry_length"]) == "CONFIRMS"
    assert "log.naming: prefix MitigationService; stamp 48 x yyyyMMdd (daily)" in daily["log_rotation"]
    assert healthy["log_encoding"].startswith("CONFIRMS: log.read.1.encoding: utf-8 (no BOM)")
    assert daily["log_encoding"].startswith("CONFIRMS: log.read.1.encoding: utf-16-le (BOM FF FE)")


def test_success_texts(verdicts):
    assert verdicts["EX01"]["success_log_text"].startswith(
        "CONFIRMS: 3 x Mitigations fetched successfully from the Office Config Service")
    assert status(verdicts["EX04-PROXY"]["success_log_text"]) == "NOT SHOWN"  # every check failed
    assert status(verdicts["EX01"]["success_event"]) == "NOT SHOWN"  # no 1006 by default (Learn)


def test_texts_the_classifier_does_not_read(verdicts):
    other, failing = verdicts["EX03-OTHER"], verdicts["EX04-PROXY"]
    assert other["event_1008_recognised"].startswith("CONTRADICTS: ")
    assert "not read as a failed fetch (counted in exchange_eems_other_errors): " in other["event_1008_recognised"]
    assert "sending diagnostic data" in other["event_1008_recognised"]
    assert status(other["log_problem_lines_recognised"]) == "CONTRADICTS"
    assert "Mitigation M2.1.0 is blocked and was not applied" in other["log_problem_lines_recognised"] or \
        "sending diagnostic data" in other["log_problem_lines_recognised"]
    assert failing["log_problem_lines_recognised"].startswith("CONFIRMS: ") and \
        "other, tls_validation)" in failing["log_problem_lines_recognised"]
    assert failing["check_settle_5m"].endswith("consistent with the 5-minute settle")
    assert status(verdicts["EX01"]["check_settle_5m"]) == "NOT SHOWN"
    assert status(verdicts["EX01"]["event_1008_recognised"]) == "NOT SHOWN"


def test_rights_and_windows(verdicts):
    failing, healthy = verdicts["EX04-PROXY"], verdicts["EX01"]
    assert failing["event_log_denied_raises"].startswith("CONFIRMS: rights.event_log: DENIED")
    assert failing["error_ids_invariant"].startswith("CONFIRMS: os.culture: fr-FR; untranslated ids: ")
    assert "NoServiceFoundForGivenName" in failing["error_ids_invariant"]
    assert status(healthy["event_log_denied_raises"]) == "NOT SHOWN"
    assert status(healthy["error_ids_invariant"]) == "NOT SHOWN"  # en-US
    assert status(healthy["service_key_means_installed"]) == "CONFIRMS"
    assert status(healthy["service_account_localsystem"]) == "CONFIRMS"
    assert status(healthy["winhttp_layout"]) == "CONFIRMS"
    assert status(verdicts["EX05-407"]["winhttp_layout"]) == "CONFIRMS"
    assert "proxy.contoso" not in str(verdicts)  # the section is redacted like the rest
    assert status(healthy["log_folder_acl_needs_grant"]) == "CONFIRMS"  # the simulator's ACL: SYSTEM, Administrators
    assert status(healthy["service_default_sddl"]) == "CONFIRMS"  # the simulator's: a service's default, as F5 says
    # the simulator's Exchange view agrees with its registry values (both in our guessed format): plumbing only
    assert healthy["component_state_format"] == ("CONFIRMS: functional: registry read as active, LocalStates active")


def test_the_endpoint_check_against_eems(verdicts):
    assert verdicts["EX01"]["endpoint_check_as_eems"].startswith(
        "CONFIRMS: interpretation.endpoints mitigations reachable: yes")
    assert verdicts["EX05-407"]["endpoint_check_as_eems"].startswith(
        "CONTRADICTS: interpretation.endpoints mitigations reachable: no (proxy_auth_required)")
    # the simulated OCS answers the check while EEMS fails TLS validation behind its proxy (docs/simulator.md)
    assert verdicts["EX04-PROXY"]["endpoint_check_as_eems"].startswith(
        "CONTRADICTS: interpretation.endpoints mitigations reachable: yes")


def test_what_the_report_cannot_tell_says_so(verdicts):
    for key in ("winrs_gxgr_enough", "restricted_groups_localized", "listener_keeps_thumbprint", "gpo_startup_script",
                "organization_double_hop"):
        assert status(verdicts["EX01"][key]) == "NOT COLLECTED", key


# Europe/Berlin's autumn change of 2026 (AUTUMN_2026, BERLIN: test_windows_realism's). Five minutes after it, the
# newest check (00:10 UTC) and every file the report reads were written in CEST, while the server's offset now is
# CET's.


@pytest.mark.parametrize("minutes_after", [5, 20])
def test_diagnose_reads_culture_times_across_a_daylight_saving_change_as_the_poll_does(tmp_path, minutes_after):
    """The report reads a zoneless log time with the offset in force when it was written (the script's
    `utc_offsets`, converted by the poll's own code), not with the one offset the server has now: its times agree
    with the exporter's metrics for the same lines, and a server writing local time is not called "neither UTC nor
    local time" for the hours (hourly files) or days (daily files) after a change."""
    now = AUTUMN_2026 + timedelta(minutes=minutes_after)
    servers = [{"name": "BERLIN", **BERLIN}, {"name": "BERLIN-DAILY", **BERLIN, "log_rotation": "daily"}]
    scenario = relocate({"clock": now.isoformat(), "credentials": [],
                         "servers": [{**s, "address": "127.0.0.1"} for s in servers]})
    with SimulatedFleet(scenario) as fleet:
        config_file = tmp_path / "config.yml"
        config_file.write_text(fleet.config_text())
        running = {s["name"]: diagnose(config_file, s["name"]) for s in servers}
        metrics = polled_samples(fleet.config())
        reports = {}
        for name, proc in running.items():
            stdout, stderr = proc.communicate(timeout=120)
            assert proc.returncode == 0, stderr.decode(errors="replace")[-2000:]
            reports[name] = lines(stdout.decode())
    # the checks run at ten past each UTC hour; the newest one before the change wrote 02:10 CEST, after it 02:10 CET
    newest_check = AUTUMN_2026 + timedelta(minutes=10) if minutes_after > 10 else AUTUMN_2026 - timedelta(minutes=50)
    for name, got in reports.items():
        polled = metrics[("exchange_eems_last_check_timestamp_seconds", frozenset({("server", name)}))]
        assert polled == newest_check.timestamp(), name
        assert got["interpretation.eems.last_check"] == newest_check.isoformat(), name
        # the newest line the report reads is the newest check's, a few seconds after its start, in UTC
        newest_line = datetime.fromisoformat(re.search(r"log\.read\.1 (\S+?)(?:,|$)",
                                                       got["assumption.log_newest_files_newest_lines"])[1])
        assert timedelta(0) <= newest_line - newest_check < timedelta(minutes=1), (name, newest_line)
        assert got["assumption.log_time_zone"].startswith("CONFIRMS: local time: "), (name, got["assumption.log_time_zone"])
        assert "os.utc_offsets: +120 from " in got["assumption.log_time_zone"] and ", +60 from 2026-10-25T01:00:00+00:00" \
            in got["os.utc_offsets"], name
    hourly = reports["BERLIN"]
    # an hourly file holds one check, its lines seconds apart: read in one zone, not split an hour apart
    assert hourly["assumption.log_write_time_moves"].startswith("NOT SHOWN: log.read.1's lines span 0h00m"), \
        hourly["assumption.log_write_time_moves"]
    assert hourly["log.read.1.check_starts"].startswith("1 in the lines read"), hourly["log.read.1.check_starts"]
    assert hourly["assumption.log_every_check"].startswith("CONFIRMS: 3 check start lines in the files read, median "
                                                           "1h00m between starts"), hourly["assumption.log_every_check"]
    assert hourly["log.read.2.check_starts"] == hourly["log.read.1.check_starts"]
    if minutes_after > 10:  # the newest daily file holds the checks before (02:10 CEST) and after (02:10 CET) it
        assert reports["BERLIN-DAILY"]["log.read.1.check_starts"] == ("2 in the lines read, 1h00m from the first to "
                                                                      "the last; median 1h00m between starts")
