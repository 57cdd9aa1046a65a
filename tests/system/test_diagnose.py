"""`exchange-eems-exporter diagnose SERVER`: the field report against the simulated demo fleet.

The report is what an admin attaches to a bug, so it must say what the server showed (culture, rights, log
file names, encodings, first and last lines per level, event texts per id) and must never carry a secret;
with --redact-names, no host name or address either.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from ..conftest import PASSWORD, SimulatedFleet, demo_scenario, relocate
from ..unit.test_field_report import lines
from .test_secrets import ROOT, assert_no_secret, exporter_env

PROXY_WITH_PASSWORD = f"http://svc-proxy:{PASSWORD}@proxy.contoso.com:8080/"


# The demo fleet has a German least-privilege server (hourly UTF-16 log, culture times, event log denied), a
# Japanese one (daily W3C log, culture times, a non-fetch 1008, an unreadable event) and a build before EEMS.
# One more: a Japanese least-privilege account that may not read the log folder.
EXTRA_SERVERS = [{"name": "EX-SE09-JA-LOG", "build": "15.2.2562.53", "locale": "ja-JP", "account": "least_privilege",
                  "unreadable": ["log"]},
                 # issue 17: Constrained Language Mode, 1008 texts that cannot be formatted, a zone east of UTC
                 {"name": "EX19-CLM", "build": "15.2.1544.36", "language_mode": "constrained",
                  "unreadable_event": "null_message", "log_time_zone": "+02:00"},
                 # review R11: a reader that fails at every read repeats its error
                 {"name": "EX-SE10-READS", "build": "15.2.2562.53", "event_read_errors": 1_000_000}]


def fleet_scenario() -> dict:
    """The demo fleet plus EXTRA_SERVERS; the proxy server's InternetWebProxy carries the password, so EEMS
    writes it into its log and the report must remove it."""
    scenario = demo_scenario()
    scenario["servers"] += [{**server, "address": "127.0.0.1"} for server in EXTRA_SERVERS]
    scenario = relocate(scenario)
    for server in scenario["servers"]:
        if server["name"] == "EX-SE04-PROXY":
            server["internet_web_proxy"] = PROXY_WITH_PASSWORD
    return scenario


def diagnose(config_file, server: str, *extra: str, encoding: str | None = None) -> subprocess.Popen:
    """`encoding`: of the exporter's stdout (Windows writes a redirected stdout in its ANSI code page)."""
    env = {**exporter_env(), **({"PYTHONIOENCODING": encoding} if encoding else {})}
    return subprocess.Popen([sys.executable, "-m", "exporter", "diagnose", "--config.file", str(config_file),
                             "--log.level", "debug", server, *extra],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, tuple[int, str, bytes]]:
    """server -> (exit code, report, stdout + stderr) for a few demo servers, polled once each."""
    runs = {"EX-SE01": (), "EX-SE04-PROXY": ("--redact-names",), "EX-SE04-PROXY plain": (), "EDGE01": (),
            "EX16-CU21": (), "EX19-CU12": (), "EX-SE05-NOWINRM": (), "EX-SE06-DE": ("--redact-names",),
            "EX-SE07-JA": (), "EX-SE08-FR": ("--redact-names",), "EX-SE09-JA-LOG": (), "EX19-CLM": (),
            "EX-SE10-READS": (), "EX-SE07-JA cp1252": ()}
    with SimulatedFleet(fleet_scenario()) as fleet:
        config_file = tmp_path_factory.mktemp("diagnose") / "config.yml"
        config_file.write_text(fleet.config_text())
        running = {label: diagnose(config_file, label.split()[0], *extra, encoding="cp1252" if label.endswith(" cp1252") else None)
                   for label, extra in runs.items()}
        results = {}
        for label, proc in running.items():
            stdout, stderr = proc.communicate(timeout=120)
            results[label] = (proc.returncode, stdout.decode(errors="replace"), stdout + b"\n--- stderr ---\n" + stderr)
    return results


def test_a_healthy_server(reports):
    code, report, _ = reports["EX-SE01"]
    assert code == 0, report
    got = lines(report)
    assert got["poll.outcome"] == "ok" and got["diagnose.outcome"] == "ok"
    assert got["poll.exsetup_version_raw"] == got["server.exsetup_version_raw"] == "15.02.2562.053"
    assert got["interpretation.build.version"] == "15.2.2562.53"
    assert got["interpretation.service_state"] == "running"
    assert got["os.culture"] == "en-US" and got["os.ui_culture"] == "en-US" and got["account.is_admin"] == "yes"
    assert got["rights.service_query"] == "ok: Running, Automatic"
    assert got["rights.event_log"] == "ok" and got["rights.log_folder"] == "ok"
    assert got["rights.service_sddl"].startswith("exit 0: D:(A;;") and got["rights.log_folder_sddl"].startswith("O:SYG:SYD:")
    assert re.fullmatch(r"MitigationService_\d{10}-1\.LOG", got["log.read.1.name"])
    assert got["log.naming"].startswith("prefix MitigationService; stamp 48 x yyyyMMddHH (hourly)")
    assert got["log.rotation"].startswith("median 1h00m")
    assert got["log.read.1.encoding"] == "utf-8 (no BOM)" and got["log.read.1.read"] == "the whole file"
    assert got["log.read.1.first_lines.1"] == "DateTime,EventName,CustomData"
    assert got["log.read.1.first_lines.2"] == "#Software: Microsoft Exchange Server"
    assert got["log.read.1.time_column"] == "iso 3, culture 0, none 0"
    assert got["log.read.1.exporter_reads_time"] == "3 of 3 lines"
    assert got["log.read.1.last_write_minus_newest_line"] == "+0h00m"
    assert got["log.read.1.level.Information.first"].endswith(
        "S:Message=Fetching mitigations from https://officeclient.microsoft.com/getexchangemitigations")
    assert "log.read.1.level.Warning.first" not in got
    assert got["events.ids"] == "no events"  # no 1006 for a check that changed nothing (the realistic default)
    # the query stops at the first record older than the window, which it returned: no "no events" error
    assert got["events.read_errors"] == "none" and float(got["events.query_seconds"]) > 0
    assert got["os.language_mode"] == "FullLanguage" and got["os.utc_offset"] == "0"
    assert report.count("## ") == 7 and '"schema":1' in report  # the collection script's output as received


def test_a_german_least_privilege_server_with_an_hourly_utf16_log(reports):
    code, report, _ = reports["EX-SE06-DE"]
    got = lines(report)
    assert code == 0 and got["os.culture"] == "de-DE" and got["account.is_admin"] == "no"
    assert got["os.culture_patterns"].startswith("date dd.MM.yyyy, time HH:mm:ss")
    assert got["rights.service_query"].startswith("DENIED: Get-Service finds no service, but its registry key exists")
    assert got["rights.service_sddl"].startswith("exit 5: ")
    assert got["interpretation.service_state"] == "unknown"
    assert got["rights.event_log"].startswith(
        "DENIED: LogInfoUnavailable,Microsoft.PowerShell.Commands.GetWinEventCommand")
    assert got["rights.event_log"].endswith("Es wurde versucht, einen nicht autorisierten Vorgang auszuführen..")
    assert got["log.naming"].startswith("prefix MitigationService; stamp 48 x yyyyMMddHH (hourly)")
    assert got["log.read.1.encoding"] == "utf-16-le (BOM FF FE)" and got["log.read.1.first_bytes"] == "ff fe 44 00"
    assert got["log.read.1.first_lines.1"] == "DateTime,EventName,CustomData"
    culture_lines = re.fullmatch(r"iso 0, culture ([1-9]\d*), none 0", got["log.read.1.time_column"])
    assert culture_lines and got["log.read.1.exporter_reads_time"] == f"{culture_lines[1]} of {culture_lines[1]} lines"
    assert got["log.read.1.last_write_minus_newest_line"] == "+0h00m"  # culture times, still UTC
    assert re.fullmatch(r"\d\d\.\d\d\.\d{4} \d\d:\d\d:\d\d,FetchMitigation,S:LogLevel=Information;"
                        r"S:Message=Fetching mitigations from https://officeclient\.microsoft\.com/getexchangemitigations",
                        got["log.read.1.level.Information.first"])


def test_a_japanese_server_with_a_daily_log_and_other_events(reports):
    got = lines(reports["EX-SE07-JA"][1])
    assert got["os.culture"] == "ja-JP" and got["rights.event_log"] == "ok"
    assert got["log.naming"].startswith("prefix MitigationService; stamp 48 x yyyyMMdd (daily)")
    assert got["log.rotation"].startswith("median 24h00m")
    assert got["log.read.1.first_lines.1"] == "#Software: Microsoft Exchange Server"
    assert re.fullmatch(r"iso 0, culture [1-9]\d*, none 0", got["log.read.1.time_column"])
    assert got["events.ids"].startswith("1006 x ") and ", 1008 x " in got["events.ids"]
    assert got["events.id.1006.interval"].startswith("median 1h00m")
    assert got["events.id.1006.text.1"].split(" x ", 1)[1].startswith("Mitigation service successfully fetched")
    assert "sending diagnostic data" in got["events.id.1008.text.1"]  # a 1008 that is not a failed fetch
    assert got["events.id.1008.interval"].startswith("median 6h00m")
    # The newest event failed to format: a 1006, or a 1008 in the hour after each 6-hourly diagnostic-data failure.
    assert any(v.endswith(" x \u30a4\u30d9\u30f3\u30c8 \u30e1\u30c3\u30bb\u30fc\u30b8 \u30c6\u30ad\u30b9\u30c8\u3092"
                          "\u53d6\u5f97\u3067\u304d\u307e\u305b\u3093\u3002")
               for k, v in got.items() if re.fullmatch(r"events\.id\.\d+\.text\.\d+", k))
    assert "EventLogException" in got["events.read_error.1"]


def test_the_report_is_utf8_whatever_the_consoles_code_page(reports):
    """Windows writes a redirected stdout (`diagnose EX01 > report.txt`) in its ANSI code page: the Japanese
    server's report ended in a UnicodeEncodeError, exit 1, and no report. It is written as UTF-8 bytes."""
    code, report, output = reports["EX-SE07-JA cp1252"]
    assert code == 0, output[-2000:]
    assert lines(report)["os.culture"] == "ja-JP" and lines(report)["log.read.1.time_column"]
    assert report.count("\u30a4\u30d9\u30f3\u30c8") == reports["EX-SE07-JA"][1].count("\u30a4\u30d9\u30f3\u30c8") > 0


def test_the_winhttp_proxy_eems_goes_through(reports):
    assert lines(reports["EX-SE01"][1])["os.winhttp_proxy"] == "direct access (no WinHTTP proxy)"
    _, report, _ = reports["EX-SE08-FR"]
    assert lines(report)["os.winhttp_proxy"] == "<host>:8080 (bypass: none)"  # proxy.contoso.com, redacted
    assert "contoso" not in report.lower()


def test_a_japanese_server_that_may_not_read_the_log_folder(reports):
    got = lines(reports["EX-SE09-JA-LOG"][1])
    assert got["rights.log_folder"].startswith("failed: DirUnauthorizedAccessError")
    assert got["rights.log_folder"].endswith("\u62d2\u5426\u3055\u308c\u307e\u3057\u305f\u3002")  # in Japanese
    assert got["log.folder"].startswith("not readable: DirUnauthorizedAccessError")


def test_a_failing_server_behind_a_proxy(reports):
    code, report, _ = reports["EX-SE04-PROXY plain"]
    got = lines(report)
    assert code == 0 and got["interpretation.eems.last_error_reason"] == "tls_validation"
    assert got["log.read.1.level.Warning.last"].endswith("S:Message=TLS certificate or its chain validation failed")
    assert got["log.read.1.level.Error.message.1"].endswith(
        "x Exception encountered while fetching mitigations : One or more errors occurred.")
    assert "events.id.1008.text.1" in got and "events.id.1006.count" not in got
    assert got["log.read.1.check_problem_after"].endswith("0 later than 5 minutes: consistent with the 5-minute settle")
    assert re.match(r"[1-9]\d* in the lines read", got["log.read.1.check_starts"])
    assert "Using Proxy http://svc-proxy:<redacted>@proxy.contoso.com:8080/" in report


def test_what_confirms_the_guesses_of_issue_17(reports):
    """docs/field-report.md: the language mode, the zone, the event query's time, the insertion strings of a 1008
    whose text cannot be formatted, and both write times of each log file."""
    code, report, _ = reports["EX19-CLM"]
    got = lines(report)
    assert code == 0 and got["poll.outcome"] == "ok" and got["diagnose.outcome"] == "ok", report
    assert got["os.language_mode"] == "ConstrainedLanguage" and got["os.utc_offset"] == "120"
    assert got["os.powershell"].startswith("5.1.")
    assert got["account.is_admin"] not in ("yes", "no")  # needs .NET: unknown in ConstrainedLanguage
    assert got["events.id.1008.without_text"] != "0"
    assert "fetching mitigations" in got["events.id.1008.data.1"]
    assert "(directory entry)" in got["log.files.1"] and "(the file)" in got["log.files.1"]
    assert got["interpretation.eems.last_error_reason"] == "unknown_issuer"


def test_constrained_language_still_shows_the_log_lines(reports):
    """The diagnose script reads log bytes with .NET, in FullLanguage only; the collection script reads the tails
    in any mode. Under ConstrainedLanguage the report had no log.read line at all, and nothing said so: the time
    column, the newest line against the write time and the messages per level now come from the poll's tails."""
    got = lines(reports["EX19-CLM"][1])
    assert got["log.read.1.source"].startswith("the collection script's tail"), got
    assert got["log.read.1.name"] == got["log.files.1"].split()[0]
    assert got["log.read.1.encoding"].startswith("not read")
    assert re.fullmatch(r"iso [1-9]\d*, culture 0, none 0", got["log.read.1.time_column"])
    assert got["log.read.1.last_write_minus_newest_line"] == "+0h00m"
    assert "fetching mitigations" in got["log.read.1.level.Error.message.1"]
    assert "log.read.1.first_lines.1" not in got  # a tail's first lines are not the file's


def test_a_reader_that_repeats_its_error(reports):
    """R11: the poll and the diagnose script send a few of the records and how many there were."""
    code, report, _ = reports["EX-SE10-READS"]
    got = lines(report)
    assert code == 0 and got["poll.outcome"] == "ok" and got["diagnose.outcome"] == "ok", report
    assert got["events.read_errors"] == "1000000 (the first 20 below)"
    assert "EventLogInvalidDataException" in got["events.read_error.20"] and "events.read_error.21" not in got
    assert got["interpretation.collection_errors.1.reason"] == "unreadable"
    message = got["interpretation.collection_errors.1.message"]
    assert "met 1000000 error records reading events and sent the first 5" in message
    assert len(report) < 200_000


def test_edge_and_old_builds(reports):
    for server in ("EDGE01", "EX16-CU21"):
        got = lines(reports[server][1])
        assert got["rights.service_query"] == "not installed: no service and no registry key", server
        assert got["log.folder"].endswith("(does not exist)"), server
        # -LogName with -FilterXPath looks no provider up: no NoMatchingProvidersFound (R10), and the older
        # record the query lets through means no NoMatchingEventsFound either
        assert got["events.read_errors"] == "none", server
        assert got["interpretation.collection_errors"] == "(empty)", server
    got = lines(reports["EX19-CU12"][1])
    assert got["interpretation.build.update"] == "Feb23SU"
    assert got["interpretation.eems.last_error_reason"] == "untrusted_endpoint"
    assert got["log.read.1.level.Warning.last"].endswith("Connection attempted against untrusted endpoint")


def test_an_unreachable_server_still_gets_a_report(reports):
    code, report, _ = reports["EX-SE05-NOWINRM"]
    got = lines(report)
    assert code == 0
    assert got["poll.outcome"].startswith("failed: connection_refused")
    assert got["diagnose.outcome"].startswith("failed: connection_refused")


def test_redact_names_removes_every_host_name_and_address(reports):
    _, report, _ = reports["EX-SE04-PROXY"]
    got = lines(report)
    assert got["report.server"] == "<host>" and got["report.names_redacted"] == "yes"
    for name in ("EX-SE04-PROXY", "ex-se04-proxy", "proxy.contoso.com", "contoso", "svc-proxy"):
        assert name.lower() not in report.lower(), name
    assert not re.search(r"127\.\d+\.\d+\.\d+", report)
    assert "https://officeclient.microsoft.com/getexchangemitigations" in report  # Microsoft's endpoint stays
    assert got["interpretation.build.version"] == "15.2.2562.53"  # versions are not addresses


def test_no_report_contains_a_secret(reports):
    assert_no_secret({label: output for label, (_, _, output) in reports.items()})


def test_an_unknown_server_is_a_usage_error(tmp_path):
    config_file = tmp_path / "config.yml"
    config_file.write_text("modules:\n  default:\n    username: u\n    password_env: EEMS_TEST_PASSWORD\n"
                           "servers:\n  - ex01.contoso.com\n")
    proc = diagnose(config_file, "EX99")
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2 and b"'EX99' is not in" in stderr and not stdout
