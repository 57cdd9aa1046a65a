"""The WS-Management messages (exporter/winrm/wsman.py) must say and understand exactly what pywinrm's
Protocol does: pywinrm 0.5 is the real peer here (a test dependency), its requests checked against
Windows by its own project.

Each request is compared byte for byte with the one pywinrm writes for the same arguments (the message
ID pinned), including identifiers a hostile server could choose; each answer, rendered by the simulator
like Windows renders it, must give the same result through both; each fault the same fields.
"""

from __future__ import annotations

import uuid
from xml.sax.saxutils import escape

import pytest
from winrm.exceptions import WinRMOperationTimeoutError, WinRMTransportError, WSManFaultError
from winrm.protocol import Protocol

from exporter.winrm import wsman
from exporter.winrm.errors import MalformedAnswer
from simulator import wsman as windows

ENDPOINT = "http://127.0.0.1:5985/wsman"
FIXED_ID = uuid.UUID("0f487c31-c76e-4bd7-bfb6-80e618387180")
HOSTILE_IDS = ["2D6534E8-3A2B-4E0E-8A3B-6C1D1D1D1D1D", "a&b<c>d\"e'f", "tab\tnew\nline\rcr", "only\"double", "only'single"]
OPERATION_TIMEOUT = 17


def pywinrm(call, answer: bytes, monkeypatch):
    """(result, request) of `call` on pywinrm's Protocol answered with `answer`; an exception's type is its result."""
    monkeypatch.setattr(uuid, "uuid4", lambda: FIXED_ID)
    protocol = Protocol(ENDPOINT, transport="ntlm", username="u", password="p",
                        operation_timeout_sec=OPERATION_TIMEOUT, read_timeout_sec=OPERATION_TIMEOUT + 1)
    sent: list[str] = []
    protocol.transport.send_message = lambda message: sent.append(message) or answer
    try:
        result = call(protocol)
    except Exception as error:  # noqa: BLE001 - compared by the caller
        result = type(error)
    return result, sent[0].encode("utf-8")


def _relates() -> str:
    return f"uuid:{str(FIXED_ID).upper()}"


@pytest.mark.parametrize("shell_id", HOSTILE_IDS)
def test_create_request_and_shell_id_match_pywinrm(shell_id, monkeypatch):
    answer = windows.create_response(_relates(), ENDPOINT, escape(shell_id), "EXCH\\svc", "127.0.0.1", 120)
    theirs, their_request = pywinrm(lambda p: p.open_shell(idle_timeout="PT120.000S"), answer, monkeypatch)
    assert wsman.create(OPERATION_TIMEOUT, "PT120.000S", message_id=FIXED_ID) == their_request
    assert wsman.shell_id(answer) == theirs == shell_id.replace("\r", "\n")  # XML turns a bare CR into LF


@pytest.mark.parametrize("shell_id", HOSTILE_IDS)
@pytest.mark.parametrize("arguments,skip", [((), False), (("-NoProfile", "-EncodedCommand", "QQ<&>=="), True)])
def test_command_request_and_command_id_match_pywinrm(shell_id, arguments, skip, monkeypatch):
    answer = windows.command_response(_relates(), "C0FFEE00-0000-0000-0000-000000000001")
    theirs, their_request = pywinrm(
        lambda p: p.run_command(shell_id, 'powershell "a" & <b>', arguments, skip_cmd_shell=skip), answer, monkeypatch)
    ours = wsman.command(OPERATION_TIMEOUT, shell_id, 'powershell "a" & <b>', arguments, skip_cmd_shell=skip,
                         message_id=FIXED_ID)
    assert ours == their_request
    assert wsman.command_id(answer) == theirs == "C0FFEE00-0000-0000-0000-000000000001"


@pytest.mark.parametrize("command_id", HOSTILE_IDS)
@pytest.mark.parametrize("stdout,stderr,exit_code", [
    ([b'{"a":1}', b"\r\n"], [], 0),
    ([], [b"#< CLIXML\r\n", b"<Objs/>"], 1),
    ([b"partial"], [b"warn"], None),  # still running
    ([], [], 4294967295),
])
def test_receive_request_and_output_match_pywinrm(command_id, stdout, stderr, exit_code, monkeypatch):
    answer = windows.receive_response(_relates(), command_id, stdout, stderr, exit_code)
    theirs, their_request = pywinrm(lambda p: p.get_command_output_raw("SHELL-1", command_id), answer, monkeypatch)
    assert wsman.receive(OPERATION_TIMEOUT, "SHELL-1", command_id, message_id=FIXED_ID) == their_request
    assert wsman.output(answer) == theirs
    assert theirs == (b"".join(stdout), b"".join(stderr), -1 if exit_code is None else exit_code, exit_code is not None)


@pytest.mark.parametrize("command_id", HOSTILE_IDS)
def test_signal_and_delete_requests_match_pywinrm(command_id, monkeypatch):
    answer = windows.signal_response(_relates())
    theirs, their_request = pywinrm(lambda p: p.cleanup_command(command_id, command_id), answer, monkeypatch)
    assert wsman.signal_terminate(OPERATION_TIMEOUT, command_id, command_id, FIXED_ID) == their_request
    assert theirs is None and wsman.check_relates_to(answer, FIXED_ID) is None
    answer = windows.delete_response(_relates())
    theirs, their_request = pywinrm(lambda p: p.close_shell(command_id, close_session=False), answer, monkeypatch)
    assert wsman.delete(OPERATION_TIMEOUT, command_id, FIXED_ID) == their_request
    assert theirs is None and wsman.check_relates_to(answer, FIXED_ID) is None


def test_an_answer_to_another_request_is_refused(monkeypatch):
    other = windows.delete_response("uuid:11111111-2222-3333-4444-555555555555")
    theirs, _ = pywinrm(lambda p: p.close_shell("S", close_session=False), other, monkeypatch)
    assert theirs is AssertionError
    with pytest.raises(MalformedAnswer, match="11111111"):
        wsman.check_relates_to(other, FIXED_ID)


@pytest.mark.parametrize("answer, match", [
    (windows.command_response("uuid:1", "C"), "ShellId"),
])
def test_a_create_answer_without_shell_id_is_malformed(answer, match):
    with pytest.raises(MalformedAnswer, match=match):
        wsman.shell_id(answer)


@pytest.mark.parametrize("edit, match", [
    (lambda a: a.replace(b"<rsp:ExitCode>0</rsp:ExitCode>", b""), "ExitCode"),
    (lambda a: a.replace(b'Name="stdout" ', b"", 1), "Name"),
    (lambda a: a.replace(b"<rsp:ExitCode>0</rsp:ExitCode>", b"<rsp:ExitCode>zero</rsp:ExitCode>"), "number"),
    (lambda a: a.replace(b"eA==", b"e!A"), "base64"),
])
def test_a_receive_answer_pywinrm_would_crash_on_is_malformed(edit, match):
    answer = edit(windows.receive_response(_relates(), "C", [b"x"], [], 0))
    with pytest.raises(MalformedAnswer, match=match):
        wsman.output(answer)


FAULTS = [
    windows.fault_response(windows.WsmanFault(5), "uuid:1", "EX01"),
    windows.fault_response(windows.WsmanFault(2150859173), "uuid:1", "EX01"),
    windows.fault_response(windows.WsmanFault(2150858817), "uuid:1", "EX01"),
    windows.fault_response(windows.WsmanFault(2150858793), "uuid:1", "EX01"),
]


@pytest.mark.parametrize("answer", FAULTS)
def test_faults_are_read_as_pywinrm_reads_them(answer):
    protocol = Protocol(ENDPOINT, transport="ntlm", username="u", password="p")

    def fail(message):
        raise WinRMTransportError("http", 500, answer.decode("utf-8"))

    protocol.transport.send_message = fail
    ours = wsman.fault(answer)
    try:
        protocol.send_message("<x/>")
    except WinRMOperationTimeoutError:
        assert ours.code == 2150858793
    except WSManFaultError as theirs:
        assert (ours.code, ours.wmi_code, ours.reason, ours.subcode) == (
            theirs.wsman_fault_code, theirs.wmierror_code, theirs.reason, theirs.fault_subcode)


@pytest.mark.parametrize("document", [
    b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>',
    '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>'.encode("utf-16"),
    b'<?xml version="1.0" encoding="UTF-7"?>+ADw-!DOCTYPE a+AD4-<a/>',
])
def test_no_document_type_is_parsed_in_any_encoding(document):
    with pytest.raises(MalformedAnswer):
        wsman.parse(document)
