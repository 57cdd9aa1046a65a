"""WinRSProtocol must say and understand exactly what pywinrm's Protocol does, only cheaper.

Each request is compared byte for byte with the one pywinrm writes for the same arguments (the message
ID pinned), including identifiers a hostile server could choose; each answer, rendered by the simulator
like Windows renders it, must give the same result through both.
"""

from __future__ import annotations

import uuid

from xml.sax.saxutils import escape

import pytest
from winrm.encryption import Encryption
from winrm.exceptions import WinRMError
from winrm.protocol import Protocol

from simulator import wsman as windows
from simulator.host import CommandOutput, SimulatedHost
from simulator.server import Fleet
from exporter.bounded_http import BoundedAdapter
from exporter.winrm_transport import bounded_protocol
from exporter.wsman import WinRSProtocol
from exporter.wsman_http import TemplateEncryption

ENDPOINT = "http://127.0.0.1:5985/wsman"
FIXED_ID = uuid.UUID("0f487c31-c76e-4bd7-bfb6-80e618387180")
HOSTILE_IDS = ["2D6534E8-3A2B-4E0E-8A3B-6C1D1D1D1D1D", "a&b<c>d\"e'f", "tab\tnew\nline\rcr", "only\"double", "only'single"]


def _canned(protocol_class: type[Protocol], answer: bytes, monkeypatch) -> tuple[Protocol, list[str]]:
    monkeypatch.setattr(uuid, "uuid4", lambda: FIXED_ID)
    protocol = protocol_class(ENDPOINT, transport="ntlm", username="u", password="p", operation_timeout_sec=17,
                              read_timeout_sec=18)
    sent: list[str] = []

    def send_message(message: str) -> bytes:
        sent.append(message)
        return answer

    protocol.send_message = send_message
    return protocol, sent


def _both(call, answer: bytes, monkeypatch):
    """(result, request) from pywinrm's Protocol, then from WinRSProtocol; an exception's type is its result."""
    outcomes = []
    for protocol_class in (Protocol, WinRSProtocol):
        protocol, sent = _canned(protocol_class, answer, monkeypatch)
        try:
            result = call(protocol)
        except Exception as error:  # noqa: BLE001 - compared by the caller
            result = type(error)
        outcomes.append((result, sent))
    return outcomes


def _relates() -> str:
    return f"uuid:{str(FIXED_ID).upper()}"


@pytest.mark.parametrize("shell_id", HOSTILE_IDS)
def test_create_request_and_shell_id_match_pywinrm(shell_id, monkeypatch):
    answer = windows.create_response(_relates(), ENDPOINT, escape(shell_id), "EXCH\\svc", "127.0.0.1", 120)
    (theirs, their_request), (ours, our_request) = _both(
        lambda p: p.open_shell(idle_timeout="PT120.000S"), answer, monkeypatch)
    assert our_request == their_request
    assert ours == theirs == shell_id.replace("\r", "\n")  # XML turns a bare CR into LF


@pytest.mark.parametrize("shell_id", HOSTILE_IDS)
@pytest.mark.parametrize("arguments,skip", [((), False), (("-NoProfile", b"-EncodedCommand", "QQ<&>=="), True)])
def test_command_request_and_command_id_match_pywinrm(shell_id, arguments, skip, monkeypatch):
    answer = windows.command_response(_relates(), "C0FFEE00-0000-0000-0000-000000000001")
    (theirs, their_request), (ours, our_request) = _both(
        lambda p: p.run_command(shell_id, 'powershell "a" & <b>', arguments, skip_cmd_shell=skip), answer, monkeypatch)
    assert our_request == their_request
    assert ours == theirs == "C0FFEE00-0000-0000-0000-000000000001"


@pytest.mark.parametrize("command_id", HOSTILE_IDS)
@pytest.mark.parametrize("stdout,stderr,exit_code", [
    ([b'{"a":1}', b"\r\n"], [], 0),
    ([], [b"#< CLIXML\r\n", b"<Objs/>"], 1),
    ([b"partial"], [b"warn"], None),  # still running
    ([], [], 4294967295),
])
def test_receive_request_and_output_match_pywinrm(command_id, stdout, stderr, exit_code, monkeypatch):
    answer = windows.receive_response(_relates(), command_id, stdout, stderr, exit_code)
    (theirs, their_request), (ours, our_request) = _both(
        lambda p: p.get_command_output_raw("SHELL-1", command_id), answer, monkeypatch)
    assert our_request == their_request
    assert ours == theirs
    assert ours == (b"".join(stdout), b"".join(stderr), -1 if exit_code is None else exit_code, exit_code is not None)


@pytest.mark.parametrize("command_id", HOSTILE_IDS)
def test_signal_and_delete_requests_match_pywinrm(command_id, monkeypatch):
    (theirs, their_request), (ours, our_request) = _both(
        lambda p: p.cleanup_command(command_id, command_id), windows.signal_response(_relates()), monkeypatch)
    assert our_request == their_request and ours is theirs is None
    (theirs, their_request), (ours, our_request) = _both(
        lambda p: p.close_shell(command_id, close_session=False), windows.delete_response(_relates()), monkeypatch)
    assert our_request == their_request and ours is theirs is None


def test_an_answer_to_another_request_is_refused(monkeypatch):
    other = "uuid:11111111-2222-3333-4444-555555555555"
    (theirs, _), _ = _both(lambda p: p.close_shell("S", close_session=False), windows.delete_response(other),
                           monkeypatch)
    assert theirs is AssertionError
    protocol, _ = _canned(WinRSProtocol, windows.delete_response(other), monkeypatch)
    with pytest.raises(WinRMError, match="11111111"):
        protocol.close_shell("S", close_session=False)


def test_a_create_answer_without_shell_id_is_a_protocol_error(monkeypatch):
    protocol, _ = _canned(WinRSProtocol, windows.command_response(_relates(), "C"), monkeypatch)
    with pytest.raises(WinRMError, match="ShellId"):
        protocol.open_shell()


def test_a_done_answer_without_exit_code_is_a_protocol_error(monkeypatch):
    answer = windows.receive_response(_relates(), "C", [b"x"], [], 0).replace(b"<rsp:ExitCode>0</rsp:ExitCode>", b"")
    protocol, _ = _canned(WinRSProtocol, answer, monkeypatch)
    with pytest.raises(WinRMError, match="ExitCode"):
        protocol.get_command_output_raw("S", "C")


def test_a_stream_without_name_is_a_protocol_error(monkeypatch):
    answer = windows.receive_response(_relates(), "C", [b"x"], [], 0).replace(b'Name="stdout" ', b"", 1)
    protocol, _ = _canned(WinRSProtocol, answer, monkeypatch)
    with pytest.raises(WinRMError, match="Name"):
        protocol.get_command_output_raw("S", "C")


# ---------------------------------------------------------------- over real NTLM to the simulator


@pytest.fixture(scope="module")
def plain_host():
    def run(line: str) -> CommandOutput:
        return CommandOutput([line.encode()[::-1]], b"", 3)

    host = SimulatedHost(name="plain", address="127.0.0.31", port=0, scheme="http", run=run)
    with Fleet([host], {"EXCH\\svc": "Pa55-word"}, control_address=("127.0.0.1", 0)) as fleet:
        yield fleet, f"http://{host.address}:{host.port}/wsman"


def test_a_shell_round_trip_over_ntlm_encryption(plain_host, monkeypatch):
    """Both paths drive one real encrypted session; the requests prepared from the template carry the headers
    pywinrm's own preparation sets, and no proxy variable from the environment is consulted."""
    fleet, endpoint = plain_host
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # would fail every request if it were used
    protocol = bounded_protocol(WinRSProtocol(endpoint, transport="ntlm", username="EXCH\\svc", password="Pa55-word",
                                              proxy=None), BoundedAdapter(1 << 20))
    shell_id = protocol.open_shell(idle_timeout="PT60.000S")
    session = protocol.transport.session
    assert isinstance(protocol.transport.encryption, TemplateEncryption) and session.trust_env is False
    theirs = Encryption(session, "ntlm").prepare_encrypted_request(session, endpoint, b"<x/>")
    ours = protocol.transport.encryption.prepare_encrypted_request(session, endpoint, b"<x/>")
    assert (ours.method, ours.url, list(ours.headers.items())) == (theirs.method, theirs.url, list(theirs.headers.items()))
    assert len(ours.body) == len(theirs.body) and ours.hooks == theirs.hooks
    protocol.transport.close_session()  # the two preparations above used up sequence numbers: a fresh session
    shell_id = protocol.open_shell()
    command_id = protocol.run_command(shell_id, "echo", ["hello"])
    assert protocol.get_command_output_raw(shell_id, command_id) == (b"olleh ohce", b"", 3, True)
    protocol.cleanup_command(shell_id, command_id)
    protocol.close_shell(shell_id)
    assert fleet.open_shells() == 1  # the first shell, whose session was dropped above, idles out on its own
