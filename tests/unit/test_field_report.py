"""The field report's parts (exporter/field_report.py) on the shapes the demo fleet lacks: a least-privilege
account with localized errors, an hourly UTF-16 log with culture times, event texts per id, host-name scrubbing.
The whole report against the simulated fleet is tests/system/test_diagnose.py."""

from __future__ import annotations

import base64
import json
import re
import struct
from datetime import datetime, timezone

from exporter.field_report import NameScrubber, build_report, names_of
from exporter.model import RawCulture
from exporter.redact import Redactor

from ..conftest import PASSWORD


def lines(report: str) -> dict[str, str]:
    return dict(re.findall(r"^([a-z_]+(?:\.[^:\s]+)*): (.*)$", report, re.MULTILINE))


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


def test_an_application_log_the_account_may_not_read_is_denied_in_the_report():
    """Windows PowerShell 5.1 says so with LogInfoUnavailable around an UnauthorizedAccessException, then
    NoMatchingLogsFound (GetEventCommand.cs; PowerShell/PowerShell#10637): before, the report said "ok"."""
    config = {"id": "LogInfoUnavailable,Microsoft.PowerShell.Commands.GetWinEventCommand", "type": "System.Exception",
              "inner": "System.UnauthorizedAccessException",
              "message": "Could not retrieve information about the Application log. Error: Attempted to perform an "
                         "unauthorized operation.."}
    no_log = {"id": "NoMatchingLogsFound,Microsoft.PowerShell.Commands.GetWinEventCommand", "type": "System.Exception",
              "message": 'There is not an event log on the localhost computer that matches "Application".'}
    got = _report(_diagnose_output(event_errors=[config, no_log]))
    assert got["rights.event_log"].startswith("DENIED: LogInfoUnavailable")


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
                  culture=RawCulture("dd.MM.yyyy", "HH:mm:ss", "", ""))
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


def test_a_list_windows_powershell_wrapped_reads_as_the_poll_reads_it():
    """Windows PowerShell 5.1's ConvertTo-Json may write an array as {"value": [...], "Count": n}; the poll's parser
    unwraps it (parse.as_list). The field report read the same shape with a copy of its own that did not, so it
    showed one event of id None where the poll read three."""
    events = [{"id": 1006, "level": 4, "time": f"\\/Date({1795950000000 - i * 3600_000})\\/", "message": "applied"}
              for i in range(3)]
    got = _report(_diagnose_output(events={"value": events, "Count": 3}))
    assert got["events.ids"] == "1006 x 3"


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


def test_redact_names_also_scrubs_values_that_are_not_strings():
    """A value of the diagnose script's JSON that is a list or an object (a hostile or an odd server's) was written
    with str() after the scrubbers had looked only at strings: its host names and addresses stayed in the report."""
    odd = {"culture": ["ex01.contoso.com", "10.1.2.3"], "ui_culture": {"host": "EX01.contoso.com"},
           "powershell": ["EX01"], "exsetup_version": [f"EX01 {PASSWORD}"], "utc_offset_minutes": ["10.1.2.3"]}
    text = build_report(server="EX01", created=datetime(2026, 11, 29, tzinfo=timezone.utc), collect="not run",
                        interpretation=None, diagnose=_diagnose_output(**odd), secrets=Redactor([PASSWORD]),
                        redact_names=["EX01.contoso.com", "10.1.2.3"])
    got = lines(text)
    for key in ("os.culture", "os.ui_culture", "os.powershell", "server.exsetup_version_raw", "os.utc_offset"):
        assert "<host>" in got[key] or "<address>" in got[key], (key, got[key])
    assert not re.search(r"ex01|contoso|10\.1\.2\.3", text, re.IGNORECASE), text
    assert PASSWORD not in text


def test_redact_names_leaves_no_proxy_name_in_the_raw_winhttp_setting():
    """Section 6 printed the WinHttpSettings value as the script sent it, base64: its proxy and bypass names
    (which `os.winhttp_proxy` shows as <host>) were one base64 decode away. The header's bytes, which say whether
    the collection script's layout guess holds, are a line of their own."""
    proxy, bypass = b"http=proxy.fabrikam.net:3128", b"<local>;*.corp.fabrikam.net;10.9.8.7"
    value = struct.pack("<IIII", 0x18, 7, 3, len(proxy)) + proxy + struct.pack("<I", len(bypass)) + bypass
    text = build_report(server="EX01", created=datetime(2026, 11, 29, tzinfo=timezone.utc), collect="not run",
                        interpretation=None, diagnose=_diagnose_output(winhttp_settings=base64.b64encode(value).decode()),
                        secrets=Redactor([PASSWORD]), redact_names=["EX01"])
    decoded = b"".join(base64.b64decode(m + "=" * (-len(m) % 4)) for m in re.findall(r"[A-Za-z0-9+/]{16,}={0,2}", text))
    assert b"fabrikam" not in decoded and b"10.9.8.7" not in decoded
    assert lines(text)["os.winhttp_settings_layout"] == (
        f"{len(value)} bytes; header 18 00 00 00 07 00 00 00 03 00 00 00 1c 00 00 00 "
        "(size, counter, flags, proxy length)")
    kept = build_report(server="EX01", created=datetime(2026, 11, 29, tzinfo=timezone.utc), collect="not run",
                        interpretation=None, diagnose=_diagnose_output(winhttp_settings=base64.b64encode(value).decode()),
                        secrets=Redactor([PASSWORD]), redact_names=None)
    assert base64.b64encode(value).decode() in kept  # without --redact-names the raw value stays


def test_name_scrubber_removes_ipv6_addresses():
    """The exporter polls and proxies over IPv6 (config.py, addresses.py), but only IPv4 addresses were scrubbed:
    another server's, a proxy's or a client's IPv6 address in an error record or an event text stayed."""
    scrub = NameScrubber(names_of("EX01.contoso.com")).scrub
    assert scrub("connect to fd00:10::25 and [2001:db8::1]:443 via http://[fd00::5]:8080/ from fe80::1%12") == \
        "connect to <address> and [<address>]:443 via http://[<address>]:8080/ from <address>"
    assert scrub("2001:0db8:0000:0000:0000:ff00:0042:8329, ::1 and ::ffff:10.1.2.3") == \
        "<address>, <address> and <address>"
    kept = "at 10:27:17.632Z, 6/30/2021 10:03:57 AM, System::Net, MAC 00:15:5d:01:02:03, a::b::c, std::abc"
    assert scrub(kept) == kept


def test_check_span_and_hourly_starts_in_the_log_lines():
    """Two guesses rest on the time between a check's lines: the newest check without a problem line is a success
    only 5 minutes after its start (interpret.CHECK_SETTLE), and EEMS starts a check every hour. The report showed
    the lines, not the time from each start line to that check's last line or the count of starts per hour."""
    start = "S:LogLevel=Information;S:Message=Fetching mitigations from https://officeclient.microsoft.com/getexchangemitigations"
    rows = ["#Fields: DateTime,EventName,CustomData"]
    rows += [f"2026-11-29T{h:02d}:10:00.000Z,FetchMitigation,{start}" for h in (9, 10, 11)]
    rows.insert(2, "2026-11-29T09:10:04.000Z,FetchMitigation,S:LogLevel=Warning;S:Message=TLS certificate or its chain "
                   "validation failed")
    rows.insert(4, "2026-11-29T10:17:00.000Z,FetchMitigation,S:LogLevel=Information;S:Message=done")
    data = ("\r\n".join(rows) + "\r\n").encode()
    files = [{"name": "MitigationService_2026112911-1.LOG", "length": len(data), "stream_length": len(data),
              "last_write": "\\/Date(1795950000000)\\/", "head": base64.b64encode(data).decode(), "tail": ""}]
    got = _report(_diagnose_output(log_folder={"path": "D:\\L", "exists": True, "file_count": 1}, log_files=files))
    assert got["log.read.1.check_starts"] == "3 in the lines read, 2h00m from the first to the last; " \
                                             "median 1h00m between starts"
    assert got["log.read.1.check_span"] == "3 checks: start line to the check's last line median 4s, max 7m00s"
    assert got["log.read.1.check_problem_after"] == ("1 checks with a Warning/Error line, the first at most 4s after "
                                                     "the start; 0 later than 5 minutes: consistent with the 5-minute settle")
    late = [row.replace("09:10:04", "09:16:00") for row in rows]
    data = ("\r\n".join(late) + "\r\n").encode()
    files[0].update(length=len(data), stream_length=len(data), head=base64.b64encode(data).decode())
    got = _report(_diagnose_output(log_folder={"path": "D:\\L", "exists": True, "file_count": 1}, log_files=files))
    assert got["log.read.1.check_problem_after"].endswith("at most 6m00s after the start; 1 later than 5 minutes: "
                                                          "contradicts the 5-minute settle")


def test_the_security_descriptors_the_setup_page_guesses_at():
    """docs/windows-setup.md marks UNCONFIRMED the service's default descriptor (F5) and the log folder's default ACL
    (F9); the report had only whether a read worked. It now carries both descriptors as SDDL, with a domain's
    SIDs (which name the domain) cut to their RID when names are redacted."""
    domain_sid = "S-1-5-21-1004336348-1177238915-682003330"
    sddl = f"O:SYG:SYD:AI(A;OICIID;FA;;;SY)(A;OICIID;FA;;;BA)(A;OICI;0x1200a9;;;{domain_sid}-1117)"
    service = "D:(A;;CCLCSWRPWPDTLOCRRC;;;SY)(A;;CCDCLCSWRPWPDTLOCRSDRCWDWO;;;BA)(A;;CCLCSWLOCRRC;;;IU)"
    output = _diagnose_output(service_sddl={"exit": 0, "output": service},
                              log_folder={"path": "D:\\L", "exists": True, "file_count": 0, "sddl": sddl})
    got = _report(output)
    assert got["rights.service_sddl"] == f"exit 0: {service}"
    assert got["rights.log_folder_sddl"] == sddl
    text = build_report(server="EX01", created=datetime(2026, 11, 29, tzinfo=timezone.utc), collect="not run",
                        interpretation=None, diagnose=output, secrets=Redactor([PASSWORD]), redact_names=["EX01"])
    assert domain_sid not in text and "1004336348" not in text
    assert lines(text)["rights.log_folder_sddl"].endswith("(A;OICI;0x1200a9;;;S-1-5-21-<domain>-1117)")
    denied = {"error": {"id": "System.UnauthorizedAccessException", "type": "System.UnauthorizedAccessException",
                        "message": "Attempted to perform an unauthorized operation."}}
    got = _report(_diagnose_output(service_sddl={"exit": 5, "output": "[SC] OpenService FAILED 5:  Access is denied."},
                                   log_folder={"path": "D:\\L", "exists": True, "file_count": 0, "sddl": denied}))
    assert got["rights.service_sddl"] == "exit 5: [SC] OpenService FAILED 5:  Access is denied."
    assert got["rights.log_folder_sddl"].startswith("failed: System.UnauthorizedAccessException")


def test_utf16_without_a_bom_is_not_labelled_utf8():
    """UTF-16-LE text without a BOM is valid UTF-8 (ASCII letters and NULs): `log.read.N.encoding` said
    "utf-8 (no BOM)" for it, hiding the one encoding the collection script does not expect."""
    from exporter.field_report import decode_log
    assert decode_log("2026-11-29T10:10:00.000Z,FetchMitigation,S:LogLevel=Information".encode("utf-16-le")) == \
        ("utf-16-le (no BOM)", "2026-11-29T10:10:00.000Z,FetchMitigation,S:LogLevel=Information")
    assert decode_log(b"2026-11-29T10:10:00.000Z,x")[0] == "utf-8 (no BOM)"
