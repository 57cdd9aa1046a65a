"""The WinRS messages of a poll written from templates, and each answer parsed once.

pywinrm's `Protocol` builds every request as nested dicts that xmltodict serialises element by element,
then parses the answer with ElementTree and walks the whole tree again for each field it reads (three
times for a Receive). Per poll that cost more CPU than anything but HTTP itself (docs/scaling.md
section 3). `WinRSProtocol` keeps everything else of pywinrm's Protocol: its transport and NTLM message
encryption, `send_message` with its fault handling, the method names and arguments. It writes the same
bytes pywinrm writes (tests/unit/test_wsman.py compares them) and reads the same fields from one pass over the
parsed answer; an answer without a field pywinrm would index raises `WinRMError` (a WS-Management fault
to the caller) instead of pywinrm's StopIteration or KeyError.
"""

from __future__ import annotations

import base64
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable

from winrm.exceptions import WinRMError
from winrm.protocol import Protocol


SHELL_URI = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd"
_TRANSFER = "http://schemas.xmlsoap.org/ws/2004/09/transfer/"
_SHELL = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/"
_ENVELOPE_START = (
    '<?xml version="1.0" encoding="utf-8"?>\n<env:Envelope'
    ' xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
    ' xmlns:env="http://www.w3.org/2003/05/soap-envelope" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing"'
    ' xmlns:b="http://schemas.dmtf.org/wbem/wsman/1/cimbinding.xsd"'
    ' xmlns:n="http://schemas.xmlsoap.org/ws/2004/09/enumeration"'
    ' xmlns:x="http://schemas.xmlsoap.org/ws/2004/09/transfer" xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"'
    ' xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd"'
    ' xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell"'
    ' xmlns:cfg="http://schemas.microsoft.com/wbem/wsman/1/config">'
    "<env:Header><a:To>http://windows-host:5985/wsman</a:To><a:ReplyTo>"
    '<a:Address mustUnderstand="true">http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:Address>'
    '</a:ReplyTo><w:MaxEnvelopeSize mustUnderstand="true">153600</w:MaxEnvelopeSize><a:MessageID>uuid:'
)
_HEADER_MIDDLE = (
    '</a:MessageID><w:Locale mustUnderstand="false" xml:lang="en-US"></w:Locale>'
    '<p:DataLocale mustUnderstand="false" xml:lang="en-US"></p:DataLocale><w:OperationTimeout>PT'
)
_DONE_STATE = "CommandState/Done"


def _text(value: str) -> str:
    """Element text escaped as xmltodict's XML generator escapes it."""
    return value.replace("&", "&amp;").replace(">", "&gt;").replace("<", "&lt;")


def _attribute(value: str) -> str:
    """A quoted attribute value, escaped and quoted as xml.sax.saxutils.quoteattr does for xmltodict."""
    value = _text(value).replace("\n", "&#10;").replace("\r", "&#13;").replace("\t", "&#9;")
    if '"' not in value:
        return f'"{value}"'
    if "'" not in value:
        return f"'{value}'"
    return '"' + value.replace('"', "&quot;") + '"'


def _options(options: Iterable[tuple[str, str]]) -> str:
    return "<w:OptionSet>" + "".join(
        f"<w:Option Name={_attribute(name)}>{_text(value)}</w:Option>" for name, value in options
    ) + "</w:OptionSet>"


def _children(root: ET.Element) -> Iterable[ET.Element]:
    """Every element below the root, in document order: what pywinrm's `root.findall('.//*')` visits."""
    elements = root.iter()
    next(elements)
    return elements


class WinRSProtocol(Protocol):
    """pywinrm's Protocol with the shell operations of a poll written and read without xmltodict (its
    transport is `winrm_transport.BoundedTransport`, see `bounded_protocol`)."""

    def _envelope(self, action: str, body: str, *, shell_id: str | None = None, options: str = "",
                  message_id: uuid.UUID | None = None) -> str:
        selector = f'<w:SelectorSet><w:Selector Name="ShellId">{_text(shell_id)}</w:Selector></w:SelectorSet>' \
            if shell_id else ""
        return (
            f"{_ENVELOPE_START}{message_id or uuid.uuid4()}{_HEADER_MIDDLE}{int(self.operation_timeout_sec)}S"
            f'</w:OperationTimeout><w:ResourceURI mustUnderstand="true">{SHELL_URI}</w:ResourceURI>'
            f'<a:Action mustUnderstand="true">{action}</a:Action>{selector}{options}</env:Header>'
            f"<env:Body>{body}</env:Body></env:Envelope>"
        )

    def _answer(self, message: str) -> ET.Element:
        return ET.fromstring(self.send_message(message))

    def open_shell(self, idle_timeout: str | None = None) -> str:  # type: ignore[override]
        """Create a cmd shell (stdin; stdout and stderr) that the server drops after `idle_timeout`."""
        idle = f"<rsp:IdleTimeOut>{_text(idle_timeout)}</rsp:IdleTimeOut>" if idle_timeout else ""
        root = self._answer(self._envelope(
            _TRANSFER + "Create",
            "<rsp:Shell><rsp:InputStreams>stdin</rsp:InputStreams>"
            f"<rsp:OutputStreams>stdout stderr</rsp:OutputStreams>{idle}</rsp:Shell>",
            options=_options((("WINRS_NOPROFILE", "FALSE"), ("WINRS_CODEPAGE", "437"))),
        ))
        shell_id = next((node.text for node in _children(root) if node.get("Name") == "ShellId"), None)
        if shell_id is None:
            raise WinRMError("the Create answer holds no ShellId selector")
        return shell_id

    def run_command(self, shell_id: str, command: str, arguments: Iterable[str | bytes] = (),
                    console_mode_stdin: bool = True, skip_cmd_shell: bool = False) -> str:
        args = [a if isinstance(a, str) else a.decode("utf-8") for a in arguments]
        root = self._answer(self._envelope(
            _SHELL + "Command",
            f"<rsp:CommandLine><rsp:Command>{_text(command)}</rsp:Command>"
            + (f"<rsp:Arguments>{_text(' '.join(args))}</rsp:Arguments>" if args else "")
            + "</rsp:CommandLine>",
            shell_id=shell_id,
            options=_options((("WINRS_CONSOLEMODE_STDIN", str(console_mode_stdin).upper()),
                              ("WINRS_SKIP_CMD_SHELL", str(skip_cmd_shell).upper()))),
        ))
        command_id = next((node.text for node in _children(root) if node.tag.endswith("CommandId")), None)
        if command_id is None:
            raise WinRMError("the Command answer holds no CommandId")
        return command_id

    def get_command_output_raw(self, shell_id: str, command_id: str) -> tuple[bytes, bytes, int, bool]:
        root = self._answer(self._envelope(
            _SHELL + "Receive",
            f"<rsp:Receive><rsp:DesiredStream CommandId={_attribute(command_id)}>stdout stderr"
            "</rsp:DesiredStream></rsp:Receive>",
            shell_id=shell_id,
        ))
        streams: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        done_states = 0
        exit_code: ET.Element | None = None
        for node in _children(root):
            tag = node.tag
            if tag.endswith("Stream") and node.text:
                name = node.get("Name")
                if name is None:
                    raise WinRMError("a Receive answer stream has no Name")
                if name in streams:
                    streams[name].append(base64.b64decode(node.text.encode("ascii")))
            elif exit_code is None and tag.endswith("ExitCode"):
                exit_code = node
            if node.get("State", "").endswith(_DONE_STATE):
                done_states += 1
        done = done_states == 1
        code = -1
        if done:
            if exit_code is None:
                raise WinRMError("the Receive answer says Done but holds no ExitCode")
            code = int(exit_code.text or -1)
        return b"".join(streams["stdout"]), b"".join(streams["stderr"]), code, done

    def cleanup_command(self, shell_id: str, command_id: str) -> None:
        message_id = uuid.uuid4()
        root = self._answer(self._envelope(
            _SHELL + "Signal",
            f"<rsp:Signal CommandId={_attribute(command_id)}><rsp:Code>{_SHELL}signal/terminate</rsp:Code>"
            "</rsp:Signal>",
            shell_id=shell_id, message_id=message_id,
        ))
        _check_relates_to(root, message_id)

    def close_shell(self, shell_id: str, close_session: bool = True) -> None:
        message_id = uuid.uuid4()
        try:
            root = self._answer(self._envelope(_TRANSFER + "Delete", "", shell_id=shell_id, message_id=message_id))
        finally:
            if close_session:
                self.transport.close_session()
        _check_relates_to(root, message_id)


def _check_relates_to(root: ET.Element, message_id: uuid.UUID) -> None:
    """The answer must name the request it answers (pywinrm asserts the same)."""
    relates_to = next((node.text for node in _children(root) if node.tag.endswith("RelatesTo")), None)
    if relates_to is None or uuid.UUID(relates_to.replace("uuid:", "")) != message_id:
        raise WinRMError(f"the answer relates to {relates_to!r}, not to request {message_id}")
