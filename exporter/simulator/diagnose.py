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
from datetime import datetime, timedelta
from typing import Any

from . import eems, windows

MARKER = "# exchange-eems-exporter:diagnose-server:v1"
PARAMETERS = ("LookbackHours", "MaxEvents", "MessageChars", "ListFiles", "ReadFiles", "HeadBytes", "TailBytes")
INSTALL_PATH = "C:\\Program Files\\Microsoft\\Exchange Server\\V15\\"
LOG_FOLDER = INSTALL_PATH + "Logging\\MitigationService"
SERVICE_KEY = "HKLM:\\SYSTEM\\CurrentControlSet\\Services\\MSExchangeMitigation"
START_VALUES = {"Boot": 0, "System": 1, "Automatic": 2, "Manual": 3, "Disabled": 4}
EVENT_LEVELS = {eems.EVENT_ERROR: 2}  # Windows event level: 2 Error, 3 Warning, 4 Information
INFORMATION = 4
EXCEPTION_TYPES = {
    "NoServiceFoundForGivenName": "Microsoft.PowerShell.Commands.ServiceCommandException",
    "PathNotFound": "System.Management.Automation.ItemNotFoundException",
    "NoMatchingEventsFound": "System.Exception",
    "NoMatchingProvidersFound": "System.Exception",
}


def parse_parameters(line: str) -> dict[str, int] | str:
    """The `$P=@{...}` line -> values, or the error a missing value causes in the script."""
    values = {key: int(value) for key, value in re.findall(r"(\w+)=(-?\d+)", line)} if line.startswith("$P=@{") else {}
    missing = [key for key in PARAMETERS if key not in values or values[key] < 0]
    if missing:
        return f"Cannot validate argument on parameter '{missing[0]}'. The argument is null or negative."
    return values


def _error(error_id: str, command: str, message: str) -> dict[str, str]:
    return {"id": f"{error_id},Microsoft.PowerShell.Commands.{command}", "type": EXCEPTION_TYPES[error_id],
            "message": message}


def facts(server: windows.WindowsServer, now: datetime, parameter_line: str) -> dict[str, Any] | str:
    """The diagnose script's JSON document for `server` at `now`, or the error text of a bad parameter line."""
    p = parse_parameters(parameter_line)
    if isinstance(p, str):
        return p
    date = lambda t: windows.PsDate(t, server.date_style)  # noqa: E731 - the shape follows the server's style
    document: dict[str, Any] = {
        "schema": 1,
        "computer": server.name.upper(),
        "now": date(now),
        "culture": "en-US",
        "ui_culture": "en-US",
        "is_admin": True,
        "exsetup_version": server.build if server.build_source != "none" else None,
        "service": _service(server),
        "service_key": _service_key(server),
    }
    document.update(_log(server, now, p, date))
    document.update(_events(server, now, p, date))
    document["errors"] = []
    return document


def _service(server: windows.WindowsServer) -> dict[str, Any]:
    if server.service_status is None:
        return {"error": _error("NoServiceFoundForGivenName", "GetServiceCommand",
                                "Cannot find any service with service name 'MSExchangeMitigation'.")}
    return {"status": server.service_status, "start_type": server.service_start_type}


def _service_key(server: windows.WindowsServer) -> dict[str, Any]:
    if server.service_status is None:
        return {"error": _error("PathNotFound", "GetItemPropertyCommand",
                                f"Cannot find path '{SERVICE_KEY}' because it does not exist.")}
    return {"start": START_VALUES[server.service_start_type], "account": "LocalSystem"}


def _log(server: windows.WindowsServer, now: datetime, p: dict[str, int], date) -> dict[str, Any]:
    if server.eems is None:
        return {"log_folder": {"path": LOG_FOLDER, "exists": False}, "log_files": []}
    newest = eems.newest_log(server.eems, now) if server.log_file else None
    files = [newest] if newest is not None else []
    listed = []
    for index, log in enumerate(files[: p["ListFiles"]]):
        entry: dict[str, Any] = {"name": log.name, "length": len(log.content), "last_write": date(log.last_write)}
        if index < p["ReadFiles"]:
            entry["stream_length"] = len(log.content)
            entry["head"] = base64.b64encode(log.content[: p["HeadBytes"]]).decode()
            entry["tail"] = base64.b64encode(log.content[-p["TailBytes"] :] if p["TailBytes"] else b"").decode()
        listed.append(entry)
    return {"log_folder": {"path": LOG_FOLDER, "exists": True, "count": len(files)}, "log_files": listed}


def _events(server: windows.WindowsServer, now: datetime, p: dict[str, int], date) -> dict[str, Any]:
    if server.eems is None:
        message = ("There is not an event provider on the localhost computer that matches "
                   "\"MSExchange Mitigation Service\".")
        return {"events": [], "event_errors": [_error("NoMatchingProvidersFound", "GetWinEventCommand", message)]}
    found = eems.events(server.eems, now, timedelta(hours=p["LookbackHours"]), p["MaxEvents"]) if server.events else []
    if not found:
        message = "No events were found that match the specified selection criteria."
        return {"events": [], "event_errors": [_error("NoMatchingEventsFound", "GetWinEventCommand", message)]}
    events = [{"id": e.id, "level": EVENT_LEVELS.get(e.id, INFORMATION), "time": date(e.time),
               "message": e.message[: p["MessageChars"]]} for e in found]
    return {"events": events, "event_errors": []}
