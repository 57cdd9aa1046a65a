"""The Windows service vocabulary, in one place: .NET's names for a service's status and start mode (what
Get-Service and the service's registry key report) and the windows_exporter label values the metrics use
for them, so a dashboard built for windows_exporter's `windows_service_state` reads ours the same way.

Both tables are in .NET enum order, which parse.py relies on to read a number: ServiceControllerStatus
counts from 1, ServiceStartMode from 0 (the registry key's Start value uses the same numbers).
"""

from __future__ import annotations

# ServiceControllerStatus name -> windows_exporter `state`
STATES = {
    "Stopped": "stopped",
    "StartPending": "start pending",
    "StopPending": "stop pending",
    "Running": "running",
    "ContinuePending": "continue pending",
    "PausePending": "pause pending",
    "Paused": "paused",
}
UNKNOWN_STATE = "unknown"  # the service exists, or may, but its status could not be read
STATE_LABELS = (*STATES.values(), UNKNOWN_STATE)

# ServiceStartMode name -> windows_exporter `start_mode`
START_MODES = {
    "Boot": "boot",
    "System": "system",
    "Automatic": "auto",
    "Manual": "manual",
    "Disabled": "disabled",
}
