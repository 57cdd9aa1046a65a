"""The field report's Assumptions section (exporter/assumptions.py): per assumption id, a server whose facts confirm
it and one whose facts contradict it, on the diagnose script's JSON as a server would send it. The same verdicts on
the simulated fleet over WinRM are tests/system/test_diagnose_assumptions.py."""

from __future__ import annotations

import base64
import re
import struct
from datetime import datetime, timedelta, timezone
from pathlib import Path

from exporter.assumptions import ASSUMPTIONS
from exporter.field_report import build_report
from exporter.model import RawCulture
from exporter.redact import Redactor

from ..conftest import PASSWORD
from .test_field_report import _diagnose_output, _report, lines

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)
START = "S:LogLevel=Information;S:Message=Fetching mitigations from https://officeclient.microsoft.com/getexchangemitigations"
SUCCESS = "S:LogLevel=Information;S:Message=Mitigations fetched successfully from the Office Config Service"
GERMAN = RawCulture("dd.MM.yyyy", "HH:mm:ss", "", "")


def _ms(when: datetime) -> str:
    return f"\\/Date({int(when.timestamp() * 1000)})\\/"


def _file(name: str, rows: list[str], last_write: datetime, *, encoding: str = "utf-8", bom: bytes = b"") -> dict:
    data = bom + ("\r\n".join(rows) + "\r\n").encode(encoding)
    return {"name": name, "length": len(data), "stream_length": len(data), "last_write": _ms(last_write),
            "file_last_write": _ms(last_write), "head": base64.b64encode(data).decode(), "tail": ""}


def _checks(hours: list[datetime], *, culture: bool = False, shift: timedelta = timedelta(0)) -> list[str]:
    """A check per hour: its start and success lines, times written `shift` from UTC."""
    def stamp(when: datetime) -> str:
        when = when + shift
        return when.strftime("%d.%m.%Y %H:%M:%S") if culture else when.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    rows = ["#Fields: DateTime,EventName,CustomData"]
    for hour in hours:
        rows += [f"{stamp(hour)},FetchMitigation,{START}",
                 f"{stamp(hour + timedelta(seconds=2))},FetchMitigation,{SUCCESS}"]
    return rows


def _hourly(count: int = 3, **kwargs) -> list[dict]:
    """The newest `count` hourly files, newest first, each closed at its check's last line."""
    files = []
    for back in range(count):
        hour = NOW - timedelta(hours=back, minutes=50)
        files.append(_file(f"MitigationService_{hour:%Y%m%d%H}-1.LOG", _checks([hour], **kwargs),
                           hour + timedelta(seconds=2)))
    return files


def verdicts(**doc) -> dict[str, str]:
    culture = doc.pop("culture_patterns", None)
    redact = doc.pop("redact_names", None)
    got = _report(_diagnose_output(**doc), redact_names=redact, culture=culture)
    return {k.removeprefix("assumption."): v for k, v in got.items() if k.startswith("assumption.")}


def status(value: str) -> str:
    return value.split(":", 1)[0]


FOLDER = {"path": "D:\\L", "exists": True, "file_count": 3}


def test_every_assumption_has_a_verdict_line_after_the_header():
    text = build_report(server="EX01", created=NOW, collect="not run", interpretation=None,
                        diagnose=_diagnose_output(), secrets=Redactor([PASSWORD]), redact_names=None)
    assert re.findall(r"^assumption\.([a-z0-9_]+): ", text, re.MULTILINE) == list(ASSUMPTIONS)
    headings = re.findall(r"^## (.*)$", text, re.MULTILINE)
    assert headings[0].startswith("Assumptions") and headings[1].startswith("1. ")
    for value in re.findall(r"^assumption\.[a-z0-9_]+: (.*)$", text, re.MULTILINE):
        assert re.match(r"(CONFIRMS|CONTRADICTS|NOT SHOWN|NOT COLLECTED): \S", value), value


def test_the_docs_name_every_assumption_id():
    field_report = (ROOT / "docs" / "field-report.md").read_text()
    alerts = (ROOT / "docs" / "alerts.md").read_text()
    for key in ASSUMPTIONS:
        assert f"`{key}`" in field_report, key
    for key in ("log_every_check", "log_write_time_moves", "log_time_column", "log_time_zone", "success_log_text",
                "success_event", "endpoint_check_as_eems", "check_settle_5m", "log_encoding",
                "log_newest_files_newest_lines", "event_1008_recognised", "service_key_means_installed",
                "error_ids_invariant", "event_log_denied_raises"):
        assert f"`{key}`" in alerts, key


def test_log_times_utc_local_or_neither():
    utc = verdicts(log_folder=FOLDER, log_files=_hourly(culture=True), utc_offset_minutes=60, culture_patterns=GERMAN)
    assert utc["log_time_zone"].startswith("CONFIRMS: UTC: last write minus newest line on the closed files: "
                                           "log.read.2 0h00m, log.read.3 0h00m; os.utc_offset: 60")
    assert status(utc["log_time_column"]) == "CONFIRMS" and "culture 2" in utc["log_time_column"]
    local = verdicts(log_folder=FOLDER, log_files=_hourly(culture=True, shift=timedelta(hours=1)),
                     utc_offset_minutes=60, culture_patterns=GERMAN)
    assert local["log_time_zone"].startswith("CONFIRMS: local time: ") and "log.read.2 -1h00m" in local["log_time_zone"]
    neither = verdicts(log_folder=FOLDER, log_files=_hourly(culture=True, shift=timedelta(hours=3)),
                       utc_offset_minutes=60, culture_patterns=GERMAN)
    assert neither["log_time_zone"].startswith("CONTRADICTS: neither UTC nor local time")
    iso = verdicts(log_folder=FOLDER, log_files=_hourly())
    assert iso["log_time_zone"] == "CONFIRMS: UTC: every time read carries its zone"
    assert status(iso["log_every_check"]) == "CONFIRMS" and "median 1h00m" in iso["log_every_check"]


def test_a_time_column_the_exporter_does_not_read():
    files = _hourly(culture=True)  # culture times, but no culture patterns from the poll: the exporter reads none
    got = verdicts(log_folder=FOLDER, log_files=files)
    assert got["log_time_column"].startswith("CONTRADICTS: log.read.1.time_column: iso 0, culture 2, none 0; "
                                             "log.read.1.exporter_reads_time: 0 of 2 lines")


def test_newest_files_by_write_time_hold_the_newest_lines():
    files = _hourly()
    assert status(verdicts(log_folder=FOLDER, log_files=files)["log_newest_files_newest_lines"]) == "CONFIRMS"
    files[1]["last_write"], files[1]["file_last_write"] = files[0]["last_write"], files[0]["last_write"]
    files[0], files[1] = files[1], files[0]  # a file touched after the newest: its lines are an hour older
    got = verdicts(log_folder=FOLDER, log_files=files)["log_newest_files_newest_lines"]
    assert got.startswith("CONTRADICTS: newest line per file, newest write time first: log.read.1 2026-11-29T10:10")


def test_a_write_time_that_stays_at_the_first_line_of_an_open_daily_file():
    hours = [NOW - timedelta(hours=h, minutes=50) for h in range(6, 0, -1)]
    rows = _checks(hours)
    moving = _file(f"MitigationService_{NOW:%Y%m%d}-1.LOG", rows, hours[-1] + timedelta(seconds=2))
    got = verdicts(log_folder=FOLDER, log_files=[moving])
    assert status(got["log_write_time_moves"]) == "CONFIRMS"
    assert status(got["success_log_text"]) == "CONFIRMS" and status(got["check_start_text"]) == "CONFIRMS"
    stuck = _file(f"MitigationService_{NOW:%Y%m%d}-1.LOG", rows, hours[0] + timedelta(seconds=2))
    got = verdicts(log_folder=FOLDER, log_files=[stuck])
    assert got["log_write_time_moves"].startswith("CONTRADICTS: log.read.1: lines from ") and "-5h00m" in \
        got["log_write_time_moves"]


def test_log_encodings():
    files = _hourly()
    assert verdicts(log_folder=FOLDER, log_files=files)["log_encoding"] == \
        "CONFIRMS: log.read.1.encoding: utf-8 (no BOM); log.read.2.encoding: utf-8 (no BOM); " \
        "log.read.3.encoding: utf-8 (no BOM)"
    hour = NOW - timedelta(minutes=50)
    odd = [_file("MitigationService_x.LOG", _checks([hour]), hour, encoding="utf-16-le")]
    assert verdicts(log_folder=FOLDER, log_files=odd)["log_encoding"] == \
        "CONTRADICTS: log.read.1.encoding: utf-16-le (no BOM)"
    assert status(verdicts(log_folder=FOLDER, log_files=[_file("M.LOG", _checks([hour]), hour, encoding="utf-16-le",
                                                               bom=b"\xff\xfe")])["log_encoding"]) == "CONFIRMS"


def test_1008_texts_the_classifier_does_not_read_are_listed_redacted():
    def event(message, data=None):
        return {"id": 1008, "level": 2, "time": _ms(NOW), "message": message, "data": data or []}
    known = [event("Exception encountered while fetching mitigations : Could not establish trust relationship "
                   "for the SSL/TLS secure channel")]
    assert verdicts(events=known)["event_1008_recognised"] == \
        "CONFIRMS: 1 of 1 1008s read as a failed fetch (events.id.1008.text.N)"
    other = known + [event("Exception encountered while sending diagnostic data to EX01.contoso.com : timeout")] * 2
    got = verdicts(events=other, redact_names=["EX01.contoso.com"])["event_1008_recognised"]
    assert got == ("CONTRADICTS: 2 of 3 1008s not read as a failed fetch (counted in exchange_eems_other_errors): "
                   "2 x Exception encountered while sending diagnostic data to <host> : timeout")
    textless = [event(None, ["Diagnostic information: Exception encountered while fetching mitigations"])]
    got = verdicts(events=textless)
    assert status(got["event_1008_data_names_fetch"]) == "CONFIRMS" and status(got["event_1008_recognised"]) == "CONFIRMS"
    assert status(got["events_format"]) == "CONTRADICTS"
    got = verdicts(events=[event(None, ["0x80004005"])])
    assert status(got["event_1008_data_names_fetch"]) == "CONTRADICTS"


def test_warning_and_error_lines_the_classifier_does_not_read():
    hour = NOW - timedelta(minutes=50)
    rows = _checks([hour]) + [f"{hour:%Y-%m-%dT%H:%M:%S}.500Z,FetchMitigation,S:LogLevel=Warning;S:Message=TLS "
                              "certificate or its chain validation failed"]
    got = verdicts(log_folder=FOLDER, log_files=[_file("M.LOG", rows, hour)])
    assert got["log_problem_lines_recognised"] == \
        "CONFIRMS: 1 Warning/Error lines, every one a failed fetch (tls_validation)"
    rows.append(f"{hour:%Y-%m-%dT%H:%M:%S}.600Z,Upload,S:LogLevel=Error;S:Message=Upload to 10.1.2.3 refused")
    rows.append(f"{hour:%Y-%m-%dT%H:%M:%S}.700Z,Upload,S:LogLevel=Information;S:Message=Upload failed, retrying")
    got = verdicts(log_folder=FOLDER, log_files=[_file("M.LOG", rows, hour)], redact_names=["EX01"])
    assert got["log_problem_lines_recognised"].startswith("CONTRADICTS: 1 of 2 Warning/Error lines not read as a "
                                                          "failed fetch") and "Error: Upload to <address> refused" in \
        got["log_problem_lines_recognised"]
    assert got["information_not_problem"].startswith("CONTRADICTS: 1 Information texts read like a failure")


def test_the_winhttp_settings_layout():
    proxy, bypass = b"proxy.fabrikam.net:3128", b"<local>"
    fits = struct.pack("<IIII", 0x18, 7, 3, len(proxy)) + proxy + struct.pack("<I", len(bypass)) + bypass
    got = verdicts(winhttp_settings=base64.b64encode(fits).decode(), redact_names=["EX01"])
    assert got["winhttp_layout"].startswith("CONFIRMS: os.winhttp_settings_layout: 50 bytes; header 18 00")
    direct = struct.pack("<IIII", 0x18, 1, 1, 0) + struct.pack("<I", 0)
    assert status(verdicts(winhttp_settings=base64.b64encode(direct).decode())["winhttp_layout"]) == "CONFIRMS"
    beyond = struct.pack("<IIII", 0x18, 7, 3, 400) + proxy
    assert verdicts(winhttp_settings=base64.b64encode(beyond).decode())["winhttp_layout"].endswith(
        "the proxy length runs past the value")
    other = struct.pack("<IIII", 0x46, 7, 1, 0x10203) + b"\x00" * 64  # another layout's fields
    assert status(verdicts(winhttp_settings=base64.b64encode(other).decode())["winhttp_layout"]) == "CONTRADICTS"
    assert status(verdicts(winhttp_settings={"error": {"id": "x"}})["winhttp_layout"]) == "NOT SHOWN"


def test_the_descriptors_against_the_setup_page():
    default = "D:(A;;CCLCSWRPWPDTLOCRRC;;;SY)(A;;CCDCLCSWRPWPDTLOCRSDRCWDWO;;;BA)(A;;CCLCSWLOCRRC;;;IU)" \
              "(A;;CCLCSWLOCRRC;;;SU)(A;;CCLCSWLORC;;;S-1-5-21-1-2-3-1117)S:(AU;FA;CCDCLCSWRPWPDTLOCRSDRCWDWO;;;WD)"
    got = verdicts(service_sddl={"exit": 0, "output": default})["service_default_sddl"]
    assert got == "CONFIRMS: query (LC) allowed to BA, IU, SU, SY; 1 ACEs for a domain's SIDs set apart (step 1.2) " \
                  "(rights.service_sddl)"
    opened = default.replace("S:(", "(A;;CCLCSWLOCRRC;;;AU)S:(")
    assert status(verdicts(service_sddl={"exit": 0, "output": opened})["service_default_sddl"]) == "CONTRADICTS"
    assert status(verdicts(service_sddl={"exit": 5, "output": "[SC] OpenService FAILED 5"})["service_default_sddl"]) \
        == "NOT SHOWN"
    admins_only = "O:SYG:SYD:AI(A;OICIID;FA;;;SY)(A;OICIID;FA;;;BA)(A;OICI;0x1200a9;;;S-1-5-21-1-2-3-1117)"
    got = verdicts(log_folder={**FOLDER, "sddl": admins_only})["log_folder_acl_needs_grant"]
    assert got.startswith("CONFIRMS: read allowed to BA, SY; 1 explicit ACEs for a domain's SIDs set apart (step 1.3)")
    users = "O:SYG:SYD:AI(A;OICIID;FA;;;SY)(A;OICIID;FA;;;BA)(A;OICIID;0x1200a9;;;BU)"
    assert verdicts(log_folder={**FOLDER, "sddl": users})["log_folder_acl_needs_grant"].startswith(
        "CONTRADICTS: read allowed to BA, BU, SY")


def test_service_and_event_log_facts():
    installed = verdicts(service={"status": "Running", "start_type": "Automatic"},
                         service_key={"start": 2, "account": "LocalSystem"})
    assert status(installed["service_key_means_installed"]) == "CONFIRMS"
    assert installed["service_account_localsystem"] == "CONFIRMS: rights.service_key: ok: Start=2, account LocalSystem"
    no_key = {"id": "PathNotFound,Microsoft.PowerShell.Commands.GetItemPropertyCommand", "type": "x", "message": "m"}
    got = verdicts(service={"status": "Running", "start_type": "Automatic"}, service_key={"error": no_key})
    assert status(got["service_key_means_installed"]) == "CONTRADICTS"
    other = verdicts(service_key={"start": 2, "account": ".\\svc-eems"}, service={"status": "Running"})
    assert status(other["service_account_localsystem"]) == "CONTRADICTS"
    denied = {"id": "System.UnauthorizedAccessException", "type": "System.UnauthorizedAccessException", "message": "m"}
    got = verdicts(event_errors=[denied])  # culture de-DE in _diagnose_output
    assert status(got["event_log_denied_raises"]) == "CONFIRMS"
    assert got["error_ids_invariant"] == ("CONFIRMS: os.culture: de-DE; untranslated ids: "
                                          "System.UnauthorizedAccessException")
    assert status(verdicts(culture="en-US", event_errors=[denied])["error_ids_invariant"]) == "NOT SHOWN"


def test_log_times_across_a_daylight_saving_change_are_read_with_the_offset_then():
    """The diagnose script sends `utc_offsets` as the collection script does, and the report reads each zoneless
    time with the offset in force when it was written (the poll's interpret.local_times): files written before a
    change (here at 10:30 UTC, UTC+2 to UTC+1) are local time too. Without the list (a script that threw, or sent
    none) every time is read with the one offset now, as the poll then reads them."""
    change = NOW - timedelta(hours=1, minutes=30)
    files = []
    for back in range(3):
        hour = NOW - timedelta(hours=back, minutes=50)
        shift = timedelta(hours=1 if hour >= change else 2)
        files.append(_file(f"MitigationService_{hour:%Y%m%d%H}-1.LOG", _checks([hour], culture=True, shift=shift),
                           hour + timedelta(seconds=2)))
    offsets = [{"since": _ms(NOW - timedelta(hours=168)), "minutes": 120}, {"since": _ms(change), "minutes": 60}]
    doc = dict(log_folder=FOLDER, log_files=files, utc_offset_minutes=60, culture_patterns=GERMAN)
    got = verdicts(**doc, utc_offsets=offsets)
    assert got["log_time_zone"] == ("CONFIRMS: local time: last write minus newest line on the closed files: "
                                    "log.read.2 -2h00m, log.read.3 -2h00m; os.utc_offset: 60; os.utc_offsets: "
                                    "+120 from 2026-11-22T12:00:00+00:00, +60 from 2026-11-29T10:30:00+00:00")
    assert got["log_newest_files_newest_lines"].endswith(
        "log.read.1 2026-11-29T11:10:02+00:00, log.read.2 2026-11-29T10:10:02+00:00, log.read.3 2026-11-29T09:10:02+00:00")
    for missing, shown in ((None, "(not sent: every zoneless time is read with os.utc_offset)"),
                           (offsets[::-1], "(parse: utc_offsets: expected {since: date, minutes: -720 to 840} objects, "
                                           "since ascending: every zoneless time is read with os.utc_offset)")):
        report = _report(_diagnose_output(**{k: v for k, v in doc.items() if k != "culture_patterns"},
                                          utc_offsets=missing), culture=GERMAN)
        assert report["os.utc_offsets"] == shown
        assert report["assumption.log_time_zone"] == ("CONTRADICTS: neither UTC nor local time: last write minus "
                                                      "newest line on the closed files: log.read.2 -2h00m, "
                                                      "log.read.3 -2h00m; os.utc_offset: 60")


def test_the_registry_reading_of_maintenance_mode_against_exchanges_own():
    """component_state.py guesses the registry values' format; Get-ServerComponentState's LocalStates is Exchange's
    own reading of them, so a report with both confirms or refutes the guess per requester."""
    registry = [{"requester": "Maintenance", "value": "1:0:639000000000000000"},
                {"requester": "Functional", "value": "1:1:639000000000000000"}]
    exchange = {"state": "Inactive", "local": [{"requester": "Maintenance", "state": "Inactive", "time": _ms(NOW)},
                                               {"requester": "Functional", "state": "Active", "time": _ms(NOW)}],
                "remote": []}
    got = verdicts(component_states=registry, server_component_state=exchange)
    assert got["component_state_format"] == ("CONFIRMS: functional: registry read as active, LocalStates active; "
                                             "maintenance: registry read as inactive, LocalStates inactive")
    swapped = {**exchange, "local": [{**e, "state": {"Active": "Inactive", "Inactive": "Active"}[e["state"]]}
                                     for e in exchange["local"]]}
    assert status(verdicts(component_states=registry, server_component_state=swapped)["component_state_format"]) \
        == "CONTRADICTS"
    denied = {"error": {"id": "ADOperationException", "type": "x", "message": "Active Directory operation failed"}}
    assert status(verdicts(component_states=registry, server_component_state=denied)["component_state_format"]) \
        == "NOT COLLECTED"
    assert status(verdicts(component_states=registry)["component_state_format"]) == "NOT COLLECTED"
    absent = {"error": {"id": "PathNotFound,Microsoft.PowerShell.Commands.GetItemPropertyCommand", "type": "x",
                        "message": "Cannot find path"}}
    assert status(verdicts(component_states=absent, server_component_state=exchange)["component_state_format"]) \
        == "NOT SHOWN"


def test_maintenance_lists_windows_powershell_wrote_as_value_and_count_are_read_as_the_poll_reads_them():
    """5.1 sometimes writes an array as {"value": [...], "Count": n} (parse.as_list, which the poll reads the
    registry's entries with): the report called such a list `maintenance.registry: failed: None` and read none of
    its entries, here or in LocalStates, so the verdict could not be drawn where the poll had read the values."""
    def wrapped(items: list) -> dict:
        return {"value": items, "Count": len(items)}

    registry = [{"requester": "Maintenance", "value": "1:0:639000000000000000"},
                {"requester": "Functional", "value": "1:1:639000000000000000"}]
    local = [{"requester": "Maintenance", "state": "Inactive", "time": _ms(NOW)},
             {"requester": "Functional", "state": "Active", "time": _ms(NOW)}]
    got = _report(_diagnose_output(component_states=wrapped(registry), server_component_state={
        "state": "Inactive", "local": wrapped(local), "remote": wrapped([])}))
    assert "maintenance.registry" not in got
    assert got["maintenance.registry.Maintenance"] == "1:0:639000000000000000 (read as inactive)"
    assert got["maintenance.exchange.local.Functional"].startswith("Active at ")
    assert status(got["assumption.component_state_format"]) == "CONFIRMS"
