"""The service vocabulary: .NET enum values (learn.microsoft.com: System.ServiceProcess.ServiceControllerStatus
and ServiceStartMode) -> names -> windows_exporter label values, the one table parse, interpret and metrics read."""

from __future__ import annotations

from exporter.windows_service import START_MODES, STATE_LABELS, STATES, UNKNOWN_STATE

SERVICE_CONTROLLER_STATUS = {1: "Stopped", 2: "StartPending", 3: "StopPending", 4: "Running", 5: "ContinuePending",
                             6: "PausePending", 7: "Paused"}
SERVICE_START_MODE = {0: "Boot", 1: "System", 2: "Automatic", 3: "Manual", 4: "Disabled"}


def test_the_tables_are_in_dotnet_enum_order():
    """parse.py reads a number as a position in these tables (status from 1, start mode from 0)."""
    assert {index: name for index, name in enumerate(STATES, start=1)} == SERVICE_CONTROLLER_STATUS
    assert {index: name for index, name in enumerate(START_MODES)} == SERVICE_START_MODE


def test_label_values_are_windows_exporters():
    assert STATE_LABELS == ("stopped", "start pending", "stop pending", "running", "continue pending",
                            "pause pending", "paused", "unknown")
    assert UNKNOWN_STATE == STATE_LABELS[-1]
    assert tuple(START_MODES.values()) == ("boot", "system", "auto", "manual", "disabled")
