"""The fault matrix: every fault the simulator can inject, on one server of a fleet whose other servers
are healthy. The exporter must keep serving, keep the healthy servers' data unchanged, mark the failing
server with the right reason, leak no WinRM shell, and recover as soon as the fault clears."""

from __future__ import annotations

import dataclasses
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.catalog import Catalog
from exporter.exporter import Exporter
from simulator.host import Faults

from ..conftest import SimulatedFleet, poll_all, relocate, serving, wait_until

SE = "15.2.2562.53"
SCENARIO = {
    # The servers' clock stands still: a healthy server's hourly check between the two polls a case compares
    # would change its state (a new last check) for reasons that have nothing to do with the fault.
    "clock": "2026-11-26T12:30:00Z",
    "organization": {"name": "Contoso", "domain": "contoso.com", "mitigations_enabled": True},
    "servers": [
        {"name": "HEALTHY1", "address": "127.0.0.1", "build": SE},
        {"name": "HEALTHY2", "address": "127.0.0.1", "build": "15.2.1544.36"},
        {"name": "VICTIM", "address": "127.0.0.1", "build": SE},
    ],
}

# fault kind -> (protocol faults, output faults, expected reasons)
MATRIX = {
    "connection_refused": ({"refuse_connections": True}, {}, {"connection_refused"}),
    "reset_mid_response": ({"reset_mid_response": True}, {}, {"connection_error"}),
    "hang": ({"hang": True}, {}, {"timeout"}),
    "unauthorized": ({"unauthorized": True}, {}, {"auth_failed"}),
    "access_denied_fault": ({"fault_code": 5}, {}, {"access_denied"}),
    "quota_fault": ({"fault_code": 2150859173}, {}, {"quota_exceeded"}),
    "remote_shell_disabled": ({"fault_code": 2150859180}, {}, {"remote_shell_disabled"}),
    "other_fault": ({"fault_code": 2150858817}, {}, {"wsman_fault"}),
    "slow_responses": ({"latency_seconds": 2.0}, {}, {"timeout"}),
    "garbage_output": ({}, {"garbage_output": True}, {"bad_output"}),
    "truncated_output": ({}, {"truncated_output": True}, {"truncated_output"}),
    "oversized_output": ({}, {"oversized_output": 3 << 20}, {"output_too_large"}),
    "exit_code": ({}, {"exit_code": 1}, {"script_failed"}),
    "runtime_past_deadline": ({}, {"script_runtime": 30.0}, {"timeout"}),  # slow, not trickling: timeout
}


@pytest.fixture(scope="module")
def rig():
    with SimulatedFleet(relocate(SCENARIO)) as fleet:
        text = fleet.config_text(interval="30s", timeout="6s")
        text += "limits:\n  max_poll_bytes: 1048576\n  max_response_bytes: 1048576\n"
        from exporter.config import load_config_text
        from pathlib import Path

        exporter = Exporter(load_config_text(text, Path(".")), Catalog.load())
        with serving(exporter) as port:
            url = f"http://127.0.0.1:{port}/metrics"
            poll_all(exporter.poller)
            yield fleet, exporter, url


def _set_fault(fleet: SimulatedFleet, protocol: dict, output: dict) -> None:
    host = fleet.hosts["VICTIM"]
    fleet.set_faults("VICTIM", Faults(**protocol))
    windows = host.run
    windows.server = dataclasses.replace(windows.server, output=dataclasses.replace(windows.server.output, **output))


def _clear_fault(fleet: SimulatedFleet) -> None:
    host = fleet.hosts["VICTIM"]
    fleet.set_faults("VICTIM")
    windows = host.run
    windows.server = dataclasses.replace(windows.server, output=type(windows.server.output)())


def _judged(state):
    """What a poll concluded of a server, without its clock's offset: a measurement of that poll's timing (the
    servers' clock stands still here, the exporter's does not), not of the server."""
    return dataclasses.replace(state, clock_offset_seconds=None, clock_uncertainty_seconds=None)


def _metric_text(url: str) -> tuple[str, float]:
    started = time.monotonic()
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode(), time.monotonic() - started


@pytest.mark.parametrize("kind", list(MATRIX))
def test_fault_is_contained_and_recovers(rig, kind):
    fleet, exporter, url = rig
    protocol, output, reasons = MATRIX[kind]
    healthy_before = {name: _judged(exporter.poller.poll_server(name).state) for name in ("HEALTHY1", "HEALTHY2")}
    _set_fault(fleet, protocol, output)
    try:
        # poll the victim in the background while /metrics is scraped: scrapes must not wait for polls
        requests = fleet.fleet.request_count("VICTIM")
        poll = threading.Thread(target=exporter.poller.poll_server, args=("VICTIM",))
        poll.start()
        wait_until(lambda: fleet.fleet.request_count("VICTIM") > requests or not poll.is_alive(), 10,
                   "the victim's poll to reach it")
        _, seconds = _metric_text(url)
        assert seconds < 1.0, f"/metrics took {seconds:.2f}s while a poll was running"
        poll.join(timeout=60)
        assert not poll.is_alive()
        for name in ("HEALTHY1", "HEALTHY2"):
            assert _judged(exporter.poller.poll_server(name).state) == healthy_before[name], name
        text, _ = _metric_text(url)
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in text_string_to_metric_families(text) for s in f.samples}
        assert samples[("exchange_up", (("server", "VICTIM"),))] == 0
        errors = [dict(labels)["reason"] for (name, labels), v in samples.items()
                  if name == "exchange_collector_error" and dict(labels).get("server") == "VICTIM" and v == 1]
        assert len(errors) == 1 and errors[0] in reasons, errors
        assert samples[("exchange_up", (("server", "HEALTHY1"),))] == 1
        if kind != "connection_refused":  # a refusing server cannot be told to delete; see below
            assert fleet.fleet.open_shells() == 0, "a WinRM shell leaked"
    finally:
        _clear_fault(fleet)
    recovered = exporter.poller.poll_server("VICTIM")
    assert recovered.outcome.success, recovered.outcome
    assert fleet.fleet.open_shells() == 0, "a shell of the failed poll was not deleted after recovery"


def test_failed_server_keeps_its_last_known_facts(rig):
    fleet, exporter, _ = rig
    exporter.poller.poll_server("VICTIM")
    _set_fault(fleet, {"refuse_connections": True}, {})
    try:
        result = exporter.poller.poll_server("VICTIM")
    finally:
        _clear_fault(fleet)
    assert not result.outcome.success
    assert result.state is not None and result.state.build.version == SE


def test_a_server_without_powershell_at_its_path_says_so(rig):
    """WinRS without cmd.exe answers a program it cannot find with fault 2147942402 (pypsrp's recording of real
    Windows); the exporter starts powershell.exe under C:\\Windows, so on a server whose Windows is elsewhere the
    reason must name that path and the way out, not only the fault's number."""
    fleet, exporter, _ = rig
    _set_fault(fleet, {"fault_code": 2147942402}, {})
    try:
        outcome = exporter.poller.poll_server("VICTIM").outcome
    finally:
        _clear_fault(fleet)
    assert outcome.error_reason == "wsman_fault"
    assert r"C:\Windows\System32\WindowsPowerShell\v1.0\powershell.exe" in outcome.error_message
    assert "protocol: psrp" in outcome.error_message
    assert fleet.fleet.open_shells() == 0, "a WinRM shell leaked"
