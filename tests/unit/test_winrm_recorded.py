"""Answers recorded from real Windows by pypsrp's test suite (tests/fixtures/pypsrp/test_winrs_*.yml, see the
fixtures README for the source and commit), replayed through the exporter's WS-Management reading
(exporter/winrm/wsman.py) and its fault classification (exporter/winrm/errors.py).

pypsrp's requests differ from ours (prefixes, a SessionId, Receive keep-alive options), so only the answers
are replayed; each is read as the exporter reads the answer to the same operation. The recordings are the
peer no one here wrote: what Windows actually sends for a shell, a command, its output and its faults."""

from __future__ import annotations

import base64
import re
import uuid
from pathlib import Path

import pytest
import yaml

from exporter.winrm import wsman
from exporter.winrm.errors import OPERATION_TIMEOUT, WSManFault, classify

RECORDINGS = Path(__file__).resolve().parents[1] / "fixtures" / "pypsrp"


def exchanges(name: str) -> list[tuple[str, str, bytes]]:
    """(action, request MessageID, answer) of each recorded exchange."""
    messages = yaml.safe_load((RECORDINGS / f"test_winrs_{name}.yml").read_text(encoding="utf-8"))["messages"]
    found = []
    for message in messages:
        action = re.search(r"Action[^>]*>[^<]*/([A-Za-z]+)</", message["request"]).group(1)
        message_id = re.search(r"MessageID>uuid:([0-9A-Fa-f-]+)<", message["request"]).group(1)
        found.append((action, message_id, message["response"].encode("utf-8")))
    return found


# The one recorded answer that names another request than the one it follows: the Delete of the unicode
# recording relates to C6D0BB3D-..., its request was 52898947-... (the recording was put together from two
# runs). The exporter refuses such an answer, as pywinrm does; test_a_spliced_answer_is_refused checks it.
SPLICED = {("unicode", "Delete")}


def replay(name: str) -> dict:
    """What the exporter reads from each recorded answer, as a poll would; faults are classified."""
    seen: dict = {"shell_id": None, "command_ids": [], "stdout": b"", "stderr": b"", "exit_code": None,
                  "receives": 0, "faults": []}
    for action, message_id, answer in exchanges(name):
        fault = wsman.fault(answer) if b"Fault>" in answer else None
        if fault is not None:
            seen["faults"].append((action, fault.code, classify(fault).reason))
            continue
        if action == "Create":
            seen["shell_id"] = wsman.shell_id(answer)
        elif action == "Command":
            seen["command_ids"].append(wsman.command_id(answer))
        elif action == "Receive":
            stdout, stderr, code, done = wsman.output(answer)
            seen["stdout"] += stdout
            seen["stderr"] += stderr
            seen["receives"] += 1
            if done:
                seen["exit_code"] = code
        elif action in ("Signal", "Delete") and (name, action) not in SPLICED:
            wsman.check_relates_to(answer, uuid.UUID(message_id))
    return seen


def test_the_standard_exchange_reads_shell_command_output_and_exit_code():
    seen = replay("standard")
    assert seen["shell_id"] == "4283CBDC-3706-415B-88BD-B385F3E51A53"
    assert seen["command_ids"] == ["CF84C20A-0A35-43FA-AF78-0B4711DA5F30"]
    assert (seen["stdout"], seen["stderr"], seen["exit_code"], seen["faults"]) == (b"hi\r\n", b"", 0, [])


def test_a_command_still_running_then_timed_out_receives_then_done():
    """Receive answers Running with partial output, then twice the TimedOut fault (2150858793: ask again),
    then Done: the exporter asks again on that fault and gathers every part of the output."""
    seen = replay("operation_timeout")
    assert [code for _, code, _ in seen["faults"]] == [OPERATION_TIMEOUT, OPERATION_TIMEOUT]
    assert {reason for _, _, reason in seen["faults"]} == {"timeout"}
    assert seen["receives"] == 2 and seen["exit_code"] == 0 and seen["stdout"].startswith(b"hi")


def test_stdout_and_stderr_in_one_answer_with_a_failing_exit_code():
    seen = replay("stderr_rc")
    assert seen["stdout"] and seen["stderr"] and seen["exit_code"] == 1


def test_utf8_output_of_a_65001_shell_is_read_unchanged():
    seen = replay("unicode")
    text = seen["stdout"].decode("utf-8")
    assert seen["exit_code"] == 0 and any(ord(c) > 127 for c in text), text


@pytest.mark.parametrize("name, action, code", [
    ("bad_cmd_id", "Receive", 2150858843),  # InvalidSelectors: a CommandId the shell does not know
    ("no_cmd_shell", "Command", 2147942402),  # HRESULT_FROM_WIN32(ERROR_FILE_NOT_FOUND): WINRS_SKIP_CMD_SHELL
    ("fail_poll_process", "Receive", 87),  # ERROR_INVALID_PARAMETER inside a nested ProviderFault
])
def test_recorded_faults_are_read_with_their_code_and_classified(name, action, code):
    seen = replay(name)
    assert seen["faults"] == [(action, code, "wsman_fault")]


def test_a_recorded_fault_keeps_its_text_in_the_failure_message():
    answer = next(a for action, _, a in exchanges("no_cmd_shell") if b"Fault>" in a)
    fault = wsman.fault(answer)
    assert isinstance(fault, WSManFault) and "cannot find the file" in classify(fault).message


def test_every_recorded_answer_passes_the_checks_made_before_parsing():
    """No recorded answer trips the DTD, encoding or element-count checks that refuse hostile ones."""
    for path in sorted(RECORDINGS.glob("test_winrs_*.yml")):
        for _, _, answer in exchanges(path.stem.removeprefix("test_winrs_")):
            wsman.parse(answer)


def test_the_recorded_output_is_base64_of_what_the_command_wrote():
    raw = re.findall(rb'Name="stdout"[^>]*>([^<]+)<', exchanges("standard")[2][2])
    assert b"".join(base64.b64decode(part) for part in raw) == b"hi\r\n"


def test_a_spliced_answer_is_refused():
    from exporter.winrm.errors import MalformedAnswer

    _, message_id, answer = next(e for e in exchanges("unicode") if e[0] == "Delete")
    with pytest.raises(MalformedAnswer, match="relates to"):
        wsman.check_relates_to(answer, uuid.UUID(message_id))
