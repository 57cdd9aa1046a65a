"""What the exporter's `diagnose` script would find on one simulated server, as Windows PowerShell 5.1 prints it.

The diagnose script reads more than a poll (every EEMS event id, the heads and tails of the newest log files as
raw bytes, the OS culture, which reads were denied) so that an admin's field report shows what our model of
Windows got wrong. Here the simulator answers it from the same server state the collection scripts see, so the
report can be tested end to end. The error records carry the FullyQualifiedErrorId and exception type that
Windows PowerShell 5.1 gives for each failure.
"""

from __future__ import annotations

import base64
import re
import struct
from datetime import datetime, timedelta
from typing import Any

from . import eems, eventlog, language, timezones, windows

MARKER = "# exchange-eems-exporter:diagnose-server:v1"
PARAMETERS = ("LookbackHours", "MaxEvents", "MessageChars", "ListFiles", "ReadFiles", "HeadBytes", "TailBytes")
INSTALL_PATH = "C:\\Program Files\\Microsoft\\Exchange Server\\V15\\"
LOG_FOLDER = INSTALL_PATH + "Logging\\MitigationService"
SERVICE_KEY = "HKLM:\\SYSTEM\\CurrentControlSet\\Services\\MSExchangeMitigation"
RETAINED_FILES = 2000  # files the folder keeps; Exchange's log retention deletes older ones (the limit is ours)
START_VALUES = {"Boot": 0, "System": 1, "Automatic": 2, "Manual": 3, "Disabled": 4}
EVENT_LEVELS = {eems.EVENT_ERROR: 2}  # Windows event level: 2 Error, 3 Warning, 4 Information
INFORMATION = 4
EVENT_ERRORS_SENT = 20  # the diagnose script sends the first 20 error records of its event query, and their count


def parse_parameters(line: str) -> dict[str, int] | str:
    """The `$P=@{...}` line -> values, or the error a missing value causes in the script."""
    values = {key: int(value) for key, value in re.findall(r"(\w+)=(-?\d+)", line)} if line.startswith("$P=@{") else {}
    missing = [key for key in PARAMETERS if key not in values or values[key] < 0]
    if missing:
        return f"Cannot validate argument on parameter '{missing[0]}'. The argument is null or negative."
    return values


def _error(error_id: str, command: str, exception: str, message: str) -> dict[str, str]:
    """An error record as the script's Err function prints it."""
    return {"id": f"{error_id},Microsoft.PowerShell.Commands.{command}", "type": exception, "message": message}


def facts(server: windows.WindowsServer, now: datetime, parameter_line: str, script: str = "") -> dict[str, Any] | str:
    """The diagnose script's JSON document for `server` at `now`, or the error text of a bad parameter line;
    its event query is answered as Windows answers the form the script uses (eventlog.py)."""
    p = parse_parameters(parameter_line)
    if isinstance(p, str):
        return p
    texts = windows.LOCALES[server.locale]
    date = lambda t: windows.PsDate(t, server.date_style)  # noqa: E731 - the shape follows the server's style
    full = server.language_mode != language.CONSTRAINED  # the script's .NET parts run in FullLanguage only
    document: dict[str, Any] = {
        "schema": 1,
        "computer": server.name.upper(),
        "now": date(now),
        "utc_offset_minutes": int(server.time_zone.offset(now).total_seconds() // 60),
        "language_mode": "FullLanguage" if full else "ConstrainedLanguage",
        "powershell": "5.1.17763.6414",  # Windows Server 2019's
        "culture": server.locale,
        "ui_culture": server.locale,
        "is_admin": not server.denied if full else None,
        "exsetup_version": (windows._file_version(server.build, server.version_style) if server.build_source not in ("none", "empty")
                            else "" if server.build_source == "empty" else None),
        "winhttp_settings": base64.b64encode(winhttp_settings(server.winhttp_proxy)).decode() if full else None,
        "service": _service(server, texts),
        "service_key": _service_key(server, texts),
        "service_sddl": _service_sddl(server),
    }
    if "Get-ServerComponentState" in script:
        document.update(_maintenance(server, now, texts, date))
    if windows.SENDS_UTC_OFFSETS.search(script):  # the offset changes over its lookback, as collect_server.ps1's
        start = now - timedelta(hours=p["LookbackHours"])
        document["utc_offsets"] = [{"since": date(since), "minutes": minutes}
                                   for since, minutes in timezones.offsets(server.time_zone, start, now)]
    document.update(_log(server, now, p, texts, date, full))
    document.update(_events(server, now, p, texts, date, eventlog.query_form(script)))
    document["errors"] = []
    return document


def _maintenance(server: windows.WindowsServer, now: datetime, texts: dict[str, Any], date) -> dict[str, Any]:
    """The registry's ServerWideOffline values (windows.py, OUR GUESSED format) and Get-ServerComponentState's view
    of them, which agrees (LocalStates and RemoteStates alike): the simulator cannot show the guess wrong, only the
    report's plumbing. Whether the snap-in reaches Active Directory (the double hop) is not modelled here."""
    errors: list = []
    registry = windows.registry_component_states(server, now, texts, errors)
    if registry is None:
        return {"component_states": {"error": {k: errors[0][k] for k in ("id", "type", "message")}},
                "server_component_state": {"state": "Active", "local": [], "remote": []}}
    states = {requester: ("Inactive", "Active")[state] for requester, state in windows.MAINTENANCE[server.maintenance]}
    entries = [{"requester": r, "state": s, "time": date(now - timedelta(hours=1))} for r, s in states.items()]
    return {"component_states": registry,  # the collection script's own expression (test_scripts.py)
            "server_component_state": {"state": "Inactive" if "Inactive" in states.values() else "Active",
                                       "local": entries, "remote": entries}}


def winhttp_settings(proxy: str | None) -> bytes:
    """The registry value `netsh winhttp set proxy` writes (Connections\\WinHttpSettings): structure size,
    a counter, flags (1 direct, 2 proxy), then the proxy and the bypass list, each as a length and ASCII text.
    The same layout the collection script reads; it is UNCONFIRMED (no Microsoft documentation)."""
    text = (proxy or "").encode("ascii")
    return struct.pack("<IIII", 0x18, 0, 3 if proxy else 1, len(text)) + text + struct.pack("<I", 0)


def _service(server: windows.WindowsServer, texts: dict[str, Any]) -> dict[str, Any]:
    if server.service_status is None or "service" in server.denied:
        # 5.1's Get-Service answers an access-denied OpenService with "no service found" (Service.cs)
        return {"error": _error("NoServiceFoundForGivenName", "GetServiceCommand",
                                "Microsoft.PowerShell.Commands.ServiceCommandException",
                                texts["no_service"].format(service="MSExchangeMitigation"))}
    return {"status": server.service_status, "start_type": server.service_start_type}


def _service_key(server: windows.WindowsServer, texts: dict[str, Any]) -> dict[str, Any]:
    if server.service_status is None:
        return {"error": _error("PathNotFound", "GetItemPropertyCommand", "System.Management.Automation.ItemNotFoundException",
                                texts["path_not_found"].format(path=SERVICE_KEY))}
    return {"start": START_VALUES[server.service_start_type], "account": "LocalSystem"}


# Ours, not captured: a service descriptor as Windows gives a service by default (SYSTEM, Administrators, interactive
# and service logons; what docs/windows-setup.md F5 says) and a folder inheriting SYSTEM and Administrators, as
# sc.exe sdshow and Get-Acl print them; the real ones are what F5 and F9 ask the field report for.
SERVICE_SDDL = ("D:(A;;CCLCSWRPWPDTLOCRRC;;;SY)(A;;CCDCLCSWRPWPDTLOCRSDRCWDWO;;;BA)(A;;CCLCSWLOCRRC;;;IU)"
                "(A;;CCLCSWLOCRRC;;;SU)S:(AU;FA;CCDCLCSWRPWPDTLOCRSDRCWDWO;;;WD)")
FOLDER_SDDL = "O:SYG:SYD:AI(A;OICIID;FA;;;SY)(A;OICIID;FA;;;BA)"


def _service_sddl(server: windows.WindowsServer) -> dict[str, Any]:
    if server.service_status is None:
        return {"exit": 1060, "output": "[SC] OpenService FAILED 1060: The specified service does not exist as an "
                                        "installed service."}
    if "service" in server.denied:
        return {"exit": 5, "output": "[SC] OpenService FAILED 5: Access is denied."}
    return {"exit": 0, "output": SERVICE_SDDL}


def _log(server: windows.WindowsServer, now: datetime, p: dict[str, int], texts: dict[str, Any], date,
         full: bool) -> dict[str, Any]:
    if server.eems is None or not server.log_file:
        return {"log_folder": {"path": LOG_FOLDER, "exists": False}, "log_files": []}
    if "log" in server.denied:
        error = _error("DirUnauthorizedAccessError", "GetChildItemCommand", "System.UnauthorizedAccessException",
                       texts["path_denied"].format(path=LOG_FOLDER))
        return {"log_folder": {"error": error}, "log_files": []}
    files = eems.log_files(server.eems, now, server.eems.running_from, limit=RETAINED_FILES)
    listed = []
    for index, log in enumerate(files[: p["ListFiles"]]):
        # the directory entry's write time and the file's own: the same here (both lag an open file, at_open)
        entry: dict[str, Any] = {"name": log.name, "length": len(log.content), "last_write": date(log.last_write),
                                 "file_last_write": date(log.last_write)}
        if index < p["ReadFiles"] and full:
            entry["stream_length"] = len(log.content)
            entry["head"] = base64.b64encode(log.content[: p["HeadBytes"]]).decode()
            entry["tail"] = base64.b64encode(log.content[-p["TailBytes"] :] if p["TailBytes"] else b"").decode()
        listed.append(entry)
    return {"log_folder": {"path": LOG_FOLDER, "exists": True, "file_count": len(files), "sddl": FOLDER_SDDL},
            "log_files": listed}


def _events(server: windows.WindowsServer, now: datetime, p: dict[str, int], texts: dict[str, Any], date,
            form: str | None) -> dict[str, Any]:
    if form is None:
        return {"events": [], "event_errors": [], "event_error_count": None, "event_query_seconds": 0.0}
    found = eventlog.answer(form, server.eems, denied="events" in server.denied, has_events=server.events, now=now,
                            lookback=timedelta(hours=p["LookbackHours"]), max_events=p["MaxEvents"],
                            log_records=server.application_log_events, read_errors=server.event_read_errors)
    # The script sends the first EVENT_ERRORS_SENT records of its ErrorVariable and their count (an access denial is
    # two of them, LogInfoUnavailable and NoMatchingLogsFound: eventlog.py; nothing is thrown).
    errors: list[dict[str, str]] = []
    count = 0
    for error, times in found.errors_with_repeats():
        text = texts.get(error.key, windows.LOCALES["en-US"][error.key]).format(provider=eems.PROVIDER,
                                                                                unauthorized=texts["unauthorized"])
        errors += [{"id": error.error_id.format(text=text), "type": error.exception, "inner": error.inner,
                    "message": text}] * min(times, max(0, EVENT_ERRORS_SENT - len(errors)))
        count += times
    events = [{"id": e.id, "level": EVENT_LEVELS.get(e.id, INFORMATION), "time": date(e.time),
               "message": e.message[: p["MessageChars"]], "data": [d[: p["MessageChars"]] for d in e.data]}
              for e in found.events]
    if server.unreadable_event == "null_message":
        for event in events:
            event["message"] = None
    if server.unreadable_event == "exception" and events:  # as windows.py: the event comes with NoEventMessage, and an error record
        text = texts["format_failed"].format(id=found.events[0].id, provider=eems.PROVIDER)
        events[0]["message"] = texts["event_unreadable"]
        record = {"id": f"{text},Microsoft.PowerShell.Commands.GetWinEventCommand",
                  "type": "System.Diagnostics.Eventing.Reader.EventLogException", "message": text}
        errors += [record][:EVENT_ERRORS_SENT - len(errors)]
        count += 1
    return {"events": events, "event_errors": errors, "event_error_count": count,
            "event_query_seconds": round(0.05 + found.seconds, 6)}
