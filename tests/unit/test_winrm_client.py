"""One WinRS command on one server (exporter/winrm_client.py), driven directly against simulated hosts over real
HTTP with NTLM and message encryption: the output, the shell cleanup, the reused connection, and the reason
class of each failure. The whole fault matrix through the exporter is tests/system/test_faults.py."""

from __future__ import annotations

import dataclasses
import json
import threading
import time

import pytest

from exporter.config import Secret
from exporter.scripts import ServerScriptParameters, powershell_command, server_script
from exporter.winrm_client import PollFailure, ServerConnection
from simulator.host import Faults

from ..conftest import SimulatedFleet, relocate

SE = "15.2.2562.53"
SCENARIO = {"servers": [{"name": name, "address": "127.0.0.1", "build": SE} for name in ("EX01", "EX02", "EX03")]}
COMMAND = powershell_command(server_script(ServerScriptParameters(24, 50, 32768, False, 10, "")))
STEADY_REQUESTS = 5  # Create, Command, Receive, Signal, Delete on the already authenticated connection


@pytest.fixture(scope="module")
def fleet():
    with SimulatedFleet(relocate(SCENARIO)) as fleet:
        yield fleet


@pytest.fixture
def host(fleet):
    """EX01, free of faults again after the test."""
    yield fleet.hosts["EX01"]
    fleet.hosts["EX01"].faults = Faults()


def connection(fleet: SimulatedFleet, name: str, **module_changes) -> ServerConnection:
    config = fleet.config()
    server = next(s for s in config.servers if s.name == name)
    module = dataclasses.replace(config.modules[server.module], **module_changes)
    target = f"{module.scheme}://{server.address}:{server.port}/wsman"
    return ServerConnection(target, module, max_response_bytes=config.limits.max_response_bytes,
                            max_poll_bytes=config.limits.max_poll_bytes)


def failure(conn: ServerConnection, seconds: float) -> tuple[PollFailure, float]:
    started = time.monotonic()
    with pytest.raises(PollFailure) as raised:
        conn.run(COMMAND, started + seconds)
    return raised.value, time.monotonic() - started


def test_the_command_returns_the_scripts_output_and_leaves_no_shell(fleet):
    conn = connection(fleet, "EX01")
    result = conn.run(COMMAND, time.monotonic() + 20)
    conn.close()
    assert result.exit_code == 0 and json.loads(result.stdout)["schema"] == 1
    assert fleet.fleet.open_shells("EX01") == 0


def test_a_steady_poll_reuses_the_authenticated_connection(fleet):
    conn = connection(fleet, "EX02")
    before = fleet.fleet.request_count("EX02")
    conn.run(COMMAND, time.monotonic() + 20)
    first = fleet.fleet.request_count("EX02") - before
    conn.run(COMMAND, time.monotonic() + 20)
    second = fleet.fleet.request_count("EX02") - before - first
    conn.close()
    assert second == STEADY_REQUESTS and first > second, (first, second)


def test_a_refused_connection_is_named(fleet, host):
    host.faults = Faults(refuse_connections=True)
    error, _ = failure(connection(fleet, "EX01"), 10)
    assert error.reason == "connection_refused"


def test_rejected_credentials_are_not_retried(fleet):
    before = fleet.fleet.request_count("EX03")
    error, _ = failure(connection(fleet, "EX03", password=Secret("not-the-password")), 10)
    assert error.reason == "auth_failed"
    assert fleet.fleet.request_count("EX03") - before <= 3, "an authentication failure was retried"


def test_a_slow_server_fails_at_the_deadline_not_at_its_own_pace(fleet, host):
    """Every answer takes 3 s, so a poll needs far more than the 5 s it has: it ends with a timeout reason,
    bounded by the deadline plus the shell cleanup that always runs."""
    host.faults = Faults(latency_seconds=3.0)
    error, elapsed = failure(connection(fleet, "EX01"), 5)
    assert error.reason in {"timeout", "deadline_exceeded"}, error
    assert elapsed < 5 + 10, f"took {elapsed:.1f} s"


def test_ntlm_hashes_are_derived_once_per_server_not_per_connection(fleet, monkeypatch):
    """pyspnego derives the LM hash with pure-Python DES for every new NTLM context unless it is given the
    hashes: three connections (HTTP.sys drops idle ones, so in production every poll opens one) cost one
    derivation, and the hashes authenticate like the password."""
    import spnego._ntlm_raw.crypto as crypto

    here = threading.current_thread()  # the simulator's NTLM acceptor runs in its own thread
    derivations = []
    original = crypto.des
    monkeypatch.setattr(crypto, "des", lambda *a: (threading.current_thread() is here and derivations.append(1))
                        or original(*a))
    conn = connection(fleet, "EX02")
    for _ in range(3):
        assert conn.run(COMMAND, time.monotonic() + 20).exit_code == 0
        conn.close()  # the next poll opens and authenticates a new connection
    assert len(derivations) == 2, derivations  # one LM hash: two DES blocks
