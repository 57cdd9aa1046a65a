"""`exchange-eems-exporter diagnose SERVER`: the field report against the simulated demo fleet, and its parts.

The report is what an admin attaches to a bug, so it must say what the server showed (culture, rights, log
file names, encodings, first and last lines per level, event texts per id) and must never carry a secret;
with --redact-names, no host name or address either.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import subprocess
import sys
from datetime import datetime, timezone

import pytest

from exporter.field_report import NameScrubber, build_report, names_of
from exporter.model import RawCulture
from exporter.redact import Redactor

from .conftest import PASSWORD, SimulatedFleet, demo_scenario, relocate
from .test_secrets import ROOT, assert_no_secret, exporter_env

PROXY_WITH_PASSWORD = f"http://svc-proxy:{PASSWORD}@proxy.contoso.com:8080/"


# The demo fleet has a German least-privilege server (hourly UTF-16 log, culture times, event log denied), a
# Japanese one (daily W3C log, culture times, a non-fetch 1008, an unreadable event) and a build before EEMS.
# One more: a Japanese least-privilege account that may not read the log folder.
EXTRA_SERVERS = [{"name": "EX-SE09-JA-LOG", "build": "15.2.2562.53", "locale": "ja-JP", "account": "least_privilege",
                  "unreadable": ["log"]}]


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


def diagnose(config_file, server: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "exporter", "diagnose", "--config.file", str(config_file),
                             "--log.level", "debug", server, *extra],
                            cwd=ROOT, env=exporter_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def lines(report: str) -> dict[str, str]:
    return dict(re.findall(r"^([a-z_]+(?:\.[^:\s]+)*): (.*)$", report, re.MULTILINE))


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, tuple[int, str, bytes]]:
    """server -> (exit code, report, stdout + stderr) for a few demo servers, polled once each."""
    runs = {"EX-SE01": (), "EX-SE04-PROXY": ("--redact-names",), "EX-SE04-PROXY plain": (), "EDGE01": (),
            "EX16-CU21": (), "EX19-CU12": (), "EX-SE05-NOWINRM": (), "EX-SE06-DE": ("--redact-names",),
            "EX-SE07-JA": (), "EX-SE08-FR": ("--redact-names",), "EX-SE09-JA-LOG": ()}
    with SimulatedFleet(fleet_scenario()) as fleet:
        config_file = tmp_path_factory.mktemp("diagnose") / "config.yml"
        config_file.write_text(fleet.config_text())
        running = {label: diagnose(config_file, label.split()[0], *extra) for label, extra in runs.items()}
        results = {}
        for label, proc in running.items():
            stdout, stderr = proc.communicate(timeout=120)
            results[label] = (proc.returncode, stdout.decode(), stdout + b"\n--- stderr ---\n" + stderr)
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
    assert got["events.read_error.1"].startswith("NoMatchingEventsFound,")
    assert report.count("## ") == 6 and '"schema":1' in report  # the collection script's output as received


def test_a_german_least_privilege_server_with_an_hourly_utf16_log(reports):
    code, report, _ = reports["EX-SE06-DE"]
    got = lines(report)
    assert code == 0 and got["os.culture"] == "de-DE" and got["account.is_admin"] == "no"
    assert got["os.culture_patterns"].startswith("date dd.MM.yyyy, time HH:mm:ss")
    assert got["rights.service_query"].startswith("DENIED: Get-Service finds no service, but its registry key exists")
    assert got["interpretation.service_state"] == "unknown"
    assert got["rights.event_log"].startswith("DENIED: System.UnauthorizedAccessException")
    assert got["rights.event_log"].endswith("Es wurde versucht, einen nicht autorisierten Vorgang auszuführen.")
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


def test_the_winhttp_proxy_eems_goes_through(reports):
    assert lines(reports["EX-SE01"][1])["os.winhttp_proxy"] == "direct access (no WinHTTP proxy)"
    _, report, _ = reports["EX-SE08-FR"]
    assert lines(report)["os.winhttp_proxy"] == "<host>:8080 (bypass: none)"  # proxy.contoso.com, redacted
    assert "contoso" not in report.lower()


def test_winhttp_settings_with_a_bypass_list():
    proxy, bypass = b"http=proxy.fabrikam.net:3128;https=10.0.0.5:3129", b"<local>;*.fabrikam.net"
    value = (struct.pack("<IIII", 0x18, 7, 3, len(proxy)) + proxy + struct.pack("<I", len(bypass)) + bypass)
    output = _diagnose_output(winhttp_settings=base64.b64encode(value).decode())
    assert _report(output)["os.winhttp_proxy"] == (
        "http=proxy.fabrikam.net:3128;https=10.0.0.5:3129 (bypass: <local>;*.fabrikam.net)")
    assert _report(output, redact_names=["EX01"])["os.winhttp_proxy"] == (
        "http=<host>:3128;https=<address>:3129 (bypass: <local>;*.<host>)")
    direct = struct.pack("<IIII", 0x18, 1, 1, 0) + struct.pack("<I", 0)
    assert _report(_diagnose_output(winhttp_settings=base64.b64encode(direct).decode()))["os.winhttp_proxy"] == \
        "direct access (no WinHTTP proxy)"


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
    assert "Using Proxy http://svc-proxy:<redacted>@proxy.contoso.com:8080/" in report


def test_edge_and_old_builds(reports):
    for server in ("EDGE01", "EX16-CU21"):
        got = lines(reports[server][1])
        assert got["rights.service_query"] == "not installed: no service and no registry key", server
        assert got["log.folder"].endswith("(does not exist)"), server
        assert got["events.read_error.1"].startswith("NoMatchingProvidersFound,"), server
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


# ---------------------------------------------------------------- the report's parts, on shapes the demo lacks


def _diagnose_output(**doc) -> bytes:
    base = {"schema": 1, "computer": "EX01", "now": "\\/Date(1795950000000)\\/", "culture": "de-DE",
            "ui_culture": "de-DE", "is_admin": False, "exsetup_version": "15.02.1544.004", "service": None,
            "service_key": None, "log_folder": None, "log_files": [], "events": [], "event_errors": [], "errors": []}
    return json.dumps({**base, **doc}).encode()


def _report(diagnose_output: bytes, redact_names=None, culture=None) -> dict[str, str]:
    text = build_report(server="EX01", created=datetime(2026, 11, 29, tzinfo=timezone.utc), collect="not run",
                        interpretation=None, diagnose=diagnose_output, secrets=Redactor([PASSWORD]),
                        redact_names=redact_names, culture=culture)
    return lines(text)


def test_least_privilege_account_and_localized_errors():
    denied = {"id": "NoServiceFoundForGivenName,Microsoft.PowerShell.Commands.GetServiceCommand",
              "type": "Microsoft.PowerShell.Commands.ServiceCommandException",
              "message": "Es wurde kein Dienst mit dem Dienstnamen \u201eMSExchangeMitigation\u201c gefunden."}
    no_events = {"id": "NoMatchingEventsFound,Microsoft.PowerShell.Commands.GetWinEventCommand",
                 "type": "System.Exception",
                 "message": "Es wurden keine Ereignisse gefunden, die den angegebenen Auswahlkriterien entsprechen."}
    folder = {"id": "System.UnauthorizedAccessException", "type": "System.UnauthorizedAccessException",
              "message": "Der Zugriff auf den Pfad wurde verweigert."}
    got = _report(_diagnose_output(service={"error": denied}, service_key={"start": 2, "account": "LocalSystem"},
                                   event_errors=[no_events], log_folder={"error": folder}))
    assert got["os.culture"] == "de-DE" and got["account.is_admin"] == "no"
    assert got["rights.service_query"].startswith("DENIED: Get-Service finds no service, but its registry key exists")
    assert got["rights.event_log"] == "ok"
    assert got["events.read_error.1"].endswith("Es wurden keine Ereignisse gefunden, die den angegebenen "
                                               "Auswahlkriterien entsprechen.")
    assert got["rights.log_folder"].startswith("failed: System.UnauthorizedAccessException")


def test_hourly_utf16_log_with_culture_times_and_a_csv_header_first():
    rows = ["DateTime,EventName,CustomData", "#Software: Microsoft Exchange Server", "#Version: 15.02.1544.004",
            "#Fields: DateTime,EventName,CustomData"]
    rows += [f"29.11.2026 {h:02d}:10:0{s},FetchMitigation,S:LogLevel={level};S:Message={message}"
             for h in range(9, 12) for s, level, message in (
                 (0, "Information", "Fetching mitigations from https://officeclient.microsoft.com/getexchangemitigations"),
                 (1, "Warning" if h == 9 else "Information", "Verbindung EX01.contoso.com fehlgeschlagen" if h == 9 else "Fertig"))]
    content = "\ufeff" + "\r\n".join(rows) + "\r\n"
    data = content.encode("utf-16-le")
    head, tail = data[:900], data[-301:]  # a tail that starts on an odd byte, mid-character
    files = [{"name": f"MitigationService_20261129{h:02d}-1.LOG", "length": 100 if h == 11 else len(data),
              "last_write": f"\\/Date({1795950000000 - (12 - h) * 3600_000 + 602_000})\\/"}  # lines in UTC+1
             for h in (11, 10, 9)]
    files[0].update(stream_length=len(data), head=base64.b64encode(head).decode(), tail=base64.b64encode(tail).decode())
    got = _report(_diagnose_output(log_folder={"path": "D:\\Exchange\\Logging\\MitigationService", "exists": True,
                                               "file_count": 3}, log_files=files), redact_names=["EX01"],
                  culture=RawCulture("de-DE", "de-DE", "dd.MM.yyyy", "HH:mm:ss", "", ""))
    assert got["log.naming"].startswith("prefix MitigationService; stamp 3 x yyyyMMddHH (hourly)")
    assert got["log.rotation"].startswith("median 1h00m")
    assert got["log.read.1.encoding"] == "utf-16-le (BOM FF FE)" and got["log.read.1.first_bytes"] == "ff fe 44 00"
    assert got["log.read.1.length"] == f"stream {len(data)}, directory entry 100 (differ)"
    assert got["log.read.1.first_lines.1"] == "DateTime,EventName,CustomData"
    assert got["log.read.1.time_column"].startswith("iso 0, culture ")
    assert re.fullmatch(r"(\d+) of \1 lines", got["log.read.1.exporter_reads_time"])
    assert got["os.culture_patterns"].startswith("date dd.MM.yyyy")
    assert got["log.read.1.last_write_minus_newest_line"] == "-1h00m"  # the lines are in local time
    assert got["log.read.1.level.Warning.first"].endswith("S:Message=Verbindung <host> fehlgeschlagen")
    assert got["log.read.1.level.Information.last"].endswith("S:Message=Fertig")


def test_event_texts_per_id():
    events = [{"id": 1006, "level": 4, "time": f"\\/Date({1795950000000 - i * 3600_000})\\/", "message": "applied"}
              for i in range(3)]
    events += [{"id": 1008, "level": 2, "time": "\\/Date(1795940000000)\\/", "message": None}]
    got = _report(_diagnose_output(events=events))
    assert got["events.ids"] == "1006 x 3, 1008 x 1"
    assert got["events.id.1006.interval"] == "median 1h00m, min 1h00m, max 1h00m"
    assert got["events.id.1006.text.1"] == "3 x applied"
    assert got["events.id.1008.without_text"] == "1" and got["events.id.1008.levels"] == "Error"


def test_name_scrubber():
    scrub = NameScrubber(names_of("EX01.contoso.com", "10.1.2.3")).scrub
    assert names_of("EX01.contoso.com", "10.1.2.3") == {"EX01.contoso.com", "EX01", "contoso.com"}
    assert scrub("EX01 ex01.CONTOSO.com dc1.contoso.com") == "<host> <host> dc1.<host>"
    assert scrub("E\x00X\x000\x001\x00 and E\\u0000X\\u00000\\u00001") == "<host>\x00 and <host>"
    assert scrub("via http://proxy.fabrikam.net:8080/ to https://officeclient.microsoft.com/x") == \
        "via http://<host>:8080/ to https://officeclient.microsoft.com/x"
    assert scrub("from 10.1.2.3 and 192.168.0.1.") == "from <address> and <address>."
    kept = "EX010 15.2.986.42 15.02.0986.005 System.Net.WebException Microsoft.Exchange.Mitigation.Service"
    assert scrub(kept) == kept
