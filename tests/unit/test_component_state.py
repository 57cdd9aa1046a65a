"""Maintenance mode: the server's registry entries of ServerWideOffline, sent raw by the collection script, read by
component_state.py's guessed format, exposed as exchange_server_component_local_state; never a failure where the
key does not exist, and never more than a guess (nothing inhibits on it: docs/alerts.md)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from exporter import scripts
from exporter.component_state import local_state, local_states
from exporter.interpret import interpret_server
from exporter.model import RawComponentState
from exporter.parse import parse_server_output

from ..conftest import SimulatedFleet, polled_samples, relocate

SE = "15.2.2562.17"
NOW = "/Date(1764158400000)/"
TICKS = "639000000000000000"


def _raw(value: str, requester: str = "Maintenance") -> RawComponentState:
    return RawComponentState("ServerWideOffline", requester, value)


@pytest.mark.parametrize(("value", "state"), [
    (f"1:0:{TICKS}", "inactive"),
    (f"1:1:{TICKS}", "active"),
    (f"1:Inactive:{TICKS}", "inactive"),
    (f"1:draining:{TICKS}", "draining"),
    (f"0:{TICKS}", "unrecognised"),  # two fields: which is the state is not guessed
    (f"1:3:{TICKS}", "draining"),  # Draining is 3 in Setup's recorded Active Directory values
    (f"1:2:{TICKS}", "unrecognised"),  # no ServiceState has 2
    (f"1:0:{TICKS}:x", "unrecognised"),
    ("1:0:", "unrecognised"),
    ("", "unrecognised"),
    ("Inactive", "unrecognised"),
])
def test_a_value_is_read_by_the_guessed_format_or_not_at_all(value, state):
    assert local_state(_raw(value)) == state


def test_a_requester_named_twice_counts_once_by_its_first_entry():
    raws = (_raw(f"1:0:{TICKS}"), _raw(f"1:1:{TICKS}", "maintenance"), _raw(f"1:1:{TICKS}", "Functional"))
    assert local_states(raws) == (("ServerWideOffline", "Maintenance", "inactive"),
                                  ("ServerWideOffline", "Functional", "active"))
    assert local_states(None) is None


def _output(**fields) -> bytes:
    return json.dumps({"schema": 1, "now": NOW, "events": [], "logs": [], "errors": [], **fields}).encode()


def test_parse_keeps_known_components_and_requesters_shaped_as_label_values():
    facts = parse_server_output(_output(component_states=[
        {"component": "ServerWideOffline", "requester": "Maintenance", "value": f"1:0:{TICKS}"},
        {"component": "HubTransport", "requester": "Maintenance", "value": f"1:0:{TICKS}"},
        {"component": "ServerWideOffline", "requester": "Main tenance\"}", "value": f"1:0:{TICKS}"},
        {"component": "ServerWideOffline", "requester": "Functional", "value": 7},
        "ServerWideOffline",
    ]))
    assert facts.component_states == (_raw(f"1:0:{TICKS}"),)
    assert sum(e.part == "parse" for e in facts.errors) == 4


def test_parse_reads_one_unwrapped_entry_and_tells_unread_from_none():
    one = {"component": "ServerWideOffline", "requester": "Functional", "value": "x" * 500}
    assert parse_server_output(_output(component_states=one)).component_states == (_raw("x" * 128, "Functional"),)
    assert parse_server_output(_output(component_states=[])).component_states == ()
    assert parse_server_output(_output(component_states=None)).component_states is None
    assert parse_server_output(_output()).component_states is None  # an endpoint installed before


def _error(error_id: str, category: str, exception: str) -> dict:
    return {"part": "component_state", "id": error_id, "category": category, "type": exception, "message": "..."}


def test_a_missing_key_is_no_entries_and_a_denied_one_a_partial_failure(catalog):
    now = datetime(2025, 11, 26, 12, tzinfo=timezone.utc)
    missing = parse_server_output(_output(exsetup_version=SE, errors=[_error(
        "PathNotFound,Microsoft.PowerShell.Commands.GetItemPropertyCommand", "ObjectNotFound",
        "System.Management.Automation.ItemNotFoundException")]))
    state = interpret_server("EX01", missing, catalog, lookback=timedelta(hours=24), now=now)
    assert state.component_states == ()
    assert not any(f.part == "component_state" for f in state.collection_errors)
    denied = parse_server_output(_output(exsetup_version=SE, errors=[_error(
        "System.Security.SecurityException,Microsoft.PowerShell.Commands.GetItemPropertyCommand", "PermissionDenied",
        "System.Security.SecurityException")]))
    state = interpret_server("EX01", denied, catalog, lookback=timedelta(hours=24), now=now)
    assert state.component_states is None
    assert [(f.part, f.reason) for f in state.collection_errors if f.part == "component_state"] == [
        ("component_state", "access_denied")]


def test_the_script_sends_the_values_raw_and_decides_nothing():
    """Keep the PowerShell thin: no split, no state names, no comparison of the value in the script."""
    script = scripts.server_script(scripts.ServerScriptParameters(24, 50, 32768, False, 10, ""))
    line = next(line for line in script.splitlines() if "ServerComponentStates" in line and line.startswith("try"))
    assert "value=[string]$v.Value" in line
    assert not any(word in line for word in ("-split", "Inactive", "Active", "-eq", "-match"))


def test_a_polled_server_in_maintenance_shows_the_requesters_state():
    names = {"EX01": "none", "EX02": "maintenance", "EX03": "functional", "EX04": "other_format", "EX05": "absent"}
    servers = [{"name": name, "address": "127.0.0.1", "build": SE, "maintenance": choice,
                "output_faults": {"script_runtime": 0.05}} for name, choice in names.items()]
    with SimulatedFleet(relocate({"servers": servers})) as fleet:
        found = polled_samples(fleet.config())
    shown = {(dict(labels)["server"], dict(labels)["requester"], dict(labels)["state"])
             for (name, labels), value in found.items() if name == "exchange_server_component_local_state" and value}
    assert shown == {("EX01", "Functional", "active"), ("EX02", "Functional", "active"),
                     ("EX02", "Maintenance", "inactive"), ("EX03", "Functional", "inactive"),
                     ("EX04", "Functional", "active"), ("EX04", "Maintenance", "unrecognised")}
    partial = {dict(labels)["server"] for (name, labels), value in found.items()
               if name == "exchange_collector_partial_failure" and value}
    assert partial == set()
    assert all(value == 1 for (name, labels), value in found.items() if name == "exchange_up")
