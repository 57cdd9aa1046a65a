"""The WinRS messages of a poll (MS-WSMV 3.1.4), and the reading of every answer and fault.

Requests are written from templates: the same bytes pywinrm 0.5's `Protocol` writes for the same
arguments (tests/unit/test_winrm_wsman.py compares them, hostile identifiers included), without building
nested dictionaries for xmltodict on every message. Each answer is parsed once and every field read in one
pass, as pywinrm reads it; where pywinrm would index a missing field (StopIteration, KeyError, int() of a
word) the reader raises `MalformedAnswer`, so the caller never has to guess what a stray exception means.

Before anything is parsed, an answer must be a plausible WS-Management message: no DTD (a DOCTYPE could
declare entities that expand a 4 KiB answer into millions of elements; WS-Management never uses one) and
at most MAX_XML_ELEMENTS tags. The parser is told the document is UTF-8, whatever it declares, and a
document with a NUL byte (UTF-16 or UTF-32, whose byte order mark the parser would still follow) is
refused, so a DTD cannot hide in another encoding from the byte check. defusedxml refuses DTDs the same
way but at twice the parsing cost (its parser is the pure-Python one): 0.2 ms per poll, measured.
"""

from __future__ import annotations

import base64
import binascii
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator

from .errors import MalformedAnswer, WSManFault

MAX_XML_ELEMENTS = 10_000
SHELL_URI = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd"
_TRANSFER = "http://schemas.xmlsoap.org/ws/2004/09/transfer/"
_SHELL = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/"
_SOAP = "{http://www.w3.org/2003/05/soap-envelope}"
_WSMAN_FAULT = "{http://schemas.microsoft.com/wbem/wsman/1/wsmanfault}"
_WMI_ERROR = "{http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/MSFT_WmiError}"
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


# ---------------------------------------------------------------- requests


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


def _envelope(action: str, body: str, operation_timeout: int, *, shell_id: str | None = None, options: str = "",
              message_id: uuid.UUID, resource_uri: str = SHELL_URI) -> bytes:
    selector = f'<w:SelectorSet><w:Selector Name="ShellId">{_text(shell_id)}</w:Selector></w:SelectorSet>' \
        if shell_id else ""
    return (
        f"{_ENVELOPE_START}{message_id}{_HEADER_MIDDLE}{int(operation_timeout)}S"
        f'</w:OperationTimeout><w:ResourceURI mustUnderstand="true">{_text(resource_uri)}</w:ResourceURI>'
        f'<a:Action mustUnderstand="true">{action}</a:Action>{selector}{options}</env:Header>'
        f"<env:Body>{body}</env:Body></env:Envelope>"
    ).encode("utf-8")


def create(operation_timeout: int, idle_timeout: str | None = None, *,
           message_id: uuid.UUID | None = None) -> bytes:
    """Create a cmd shell (stdin; stdout and stderr) that the server drops after `idle_timeout` (ISO 8601)."""
    idle = f"<rsp:IdleTimeOut>{_text(idle_timeout)}</rsp:IdleTimeOut>" if idle_timeout else ""
    return _envelope(
        _TRANSFER + "Create",
        "<rsp:Shell><rsp:InputStreams>stdin</rsp:InputStreams>"
        f"<rsp:OutputStreams>stdout stderr</rsp:OutputStreams>{idle}</rsp:Shell>",
        operation_timeout,
        options=_options((("WINRS_NOPROFILE", "FALSE"), ("WINRS_CODEPAGE", "437"))),
        message_id=message_id or uuid.uuid4(),
    )


def command(operation_timeout: int, shell_id: str, executable: str, arguments: Iterable[str] = (), *,
            skip_cmd_shell: bool = True, message_id: uuid.UUID | None = None) -> bytes:
    """Run `executable` with `arguments` (one space-joined rsp:Arguments, as pywinrm sends them)."""
    args = list(arguments)
    return _envelope(
        _SHELL + "Command",
        f"<rsp:CommandLine><rsp:Command>{_text(executable)}</rsp:Command>"
        + (f"<rsp:Arguments>{_text(' '.join(args))}</rsp:Arguments>" if args else "")
        + "</rsp:CommandLine>",
        operation_timeout,
        shell_id=shell_id,
        options=_options((("WINRS_CONSOLEMODE_STDIN", "TRUE"), ("WINRS_SKIP_CMD_SHELL", str(skip_cmd_shell).upper()))),
        message_id=message_id or uuid.uuid4(),
    )


def receive(operation_timeout: int, shell_id: str, command_id: str, *, message_id: uuid.UUID | None = None) -> bytes:
    return _envelope(
        _SHELL + "Receive",
        f"<rsp:Receive><rsp:DesiredStream CommandId={_attribute(command_id)}>stdout stderr"
        "</rsp:DesiredStream></rsp:Receive>",
        operation_timeout,
        shell_id=shell_id,
        message_id=message_id or uuid.uuid4(),
    )


def signal_terminate(operation_timeout: int, shell_id: str, command_id: str, message_id: uuid.UUID, *,
                     resource_uri: str = SHELL_URI) -> bytes:
    """Terminate a command (a WinRS shell's, or with a PSRP resource_uri a pipeline of a runspace pool)."""
    return _envelope(
        _SHELL + "Signal",
        f"<rsp:Signal CommandId={_attribute(command_id)}><rsp:Code>{_SHELL}signal/terminate</rsp:Code>"
        "</rsp:Signal>",
        operation_timeout, shell_id=shell_id, message_id=message_id, resource_uri=resource_uri,
    )


def delete(operation_timeout: int, shell_id: str, message_id: uuid.UUID, *, resource_uri: str = SHELL_URI) -> bytes:
    """Delete a shell (a WinRS shell, or with a PSRP resource_uri a runspace pool)."""
    return _envelope(_TRANSFER + "Delete", "", operation_timeout, shell_id=shell_id, message_id=message_id,
                     resource_uri=resource_uri)


# ---------------------------------------------------------------- PowerShell remoting (PSRP, MS-PSRP 3.1.5.3)

POWERSHELL_URI = "http://schemas.microsoft.com/powershell/"


def pool_create(operation_timeout: int, configuration: str, shell_id: str, creation_xml: bytes,
                idle_timeout: str | None = None, *, message_id: uuid.UUID | None = None) -> bytes:
    """Create a runspace pool of `configuration`: the client names the shell (its pool id) and sends the pool's
    opening PSRP messages as creationXml, as pypsrp and Windows PowerShell do."""
    idle = f"<rsp:IdleTimeOut>{_text(idle_timeout)}</rsp:IdleTimeOut>" if idle_timeout else ""
    return _envelope(
        _TRANSFER + "Create",
        f"<rsp:Shell ShellId={_attribute(shell_id)}><rsp:InputStreams>stdin pr</rsp:InputStreams>"
        f"<rsp:OutputStreams>stdout</rsp:OutputStreams>{idle}"
        f'<creationXml xmlns="http://schemas.microsoft.com/powershell">{base64.b64encode(creation_xml).decode()}'
        "</creationXml></rsp:Shell>",
        operation_timeout,
        options='<w:OptionSet><w:Option MustComply="true" Name="protocolversion">2.3</w:Option></w:OptionSet>',
        message_id=message_id or uuid.uuid4(), resource_uri=POWERSHELL_URI + configuration,
    )


def pipeline_create(operation_timeout: int, configuration: str, shell_id: str, command_id: str, data: bytes, *,
                    message_id: uuid.UUID | None = None) -> bytes:
    """Command: a pipeline whose id is `command_id`, its first PSRP fragments as the one rsp:Arguments."""
    return _envelope(
        _SHELL + "Command",
        f"<rsp:CommandLine CommandId={_attribute(command_id)}><rsp:Command></rsp:Command>"
        f"<rsp:Arguments>{base64.b64encode(data).decode()}</rsp:Arguments></rsp:CommandLine>",
        operation_timeout, shell_id=shell_id, message_id=message_id or uuid.uuid4(),
        resource_uri=POWERSHELL_URI + configuration,
    )


def pool_send(operation_timeout: int, configuration: str, shell_id: str, command_id: str | None, data: bytes, *,
              message_id: uuid.UUID | None = None) -> bytes:
    """Send: more PSRP fragments to the pool, or to the pipeline `command_id`."""
    target = f" CommandId={_attribute(command_id)}" if command_id else ""
    return _envelope(
        _SHELL + "Send",
        f'<rsp:Send><rsp:Stream Name="stdin"{target}>{base64.b64encode(data).decode()}</rsp:Stream></rsp:Send>',
        operation_timeout, shell_id=shell_id, message_id=message_id or uuid.uuid4(),
        resource_uri=POWERSHELL_URI + configuration,
    )


def pool_receive(operation_timeout: int, configuration: str, shell_id: str, command_id: str | None, *,
                 message_id: uuid.UUID | None = None) -> bytes:
    """Receive the pool's PSRP output, or the pipeline `command_id`'s."""
    target = f" CommandId={_attribute(command_id)}" if command_id else ""
    return _envelope(
        _SHELL + "Receive",
        f"<rsp:Receive><rsp:DesiredStream{target}>stdout</rsp:DesiredStream></rsp:Receive>",
        operation_timeout, shell_id=shell_id,
        options=_options((("WSMAN_CMDSHELL_OPTION_KEEPALIVE", "TRUE"),)),
        message_id=message_id or uuid.uuid4(), resource_uri=POWERSHELL_URI + configuration,
    )


# ---------------------------------------------------------------- answers


def parse(answer: bytes) -> ET.Element:
    """The answer's XML tree, once it passed the checks in the module docstring."""
    if b"<!DOCTYPE" in answer:
        raise MalformedAnswer("the answer declares a DTD, which no WS-Management message does")
    if b"\x00" in answer:  # UTF-16 or UTF-32, whose byte order mark the parser would follow
        raise MalformedAnswer("the answer is not UTF-8")
    elements = answer.count(b"<")
    if elements > MAX_XML_ELEMENTS:
        raise MalformedAnswer(f"the answer holds {elements} XML tags, more than any WS-Management message "
                              f"({MAX_XML_ELEMENTS})")
    parser = ET.XMLParser(encoding="utf-8")
    try:
        parser.feed(answer)
        return parser.close()
    except ET.ParseError as error:
        raise MalformedAnswer(f"not well-formed XML ({error})") from None


def _children(root: ET.Element) -> Iterator[ET.Element]:
    """Every element below the root, in document order: what pywinrm's `root.findall('.//*')` visits."""
    elements = root.iter()
    next(elements)
    return elements


def shell_id(answer: bytes) -> str:
    """The ShellId of a Create answer: the first element named by a `Name="ShellId"` attribute (a selector)."""
    found = next((node.text for node in _children(parse(answer)) if node.get("Name") == "ShellId"), None)
    if found is None:
        raise MalformedAnswer("the Create answer holds no ShellId selector")
    return found


def command_id(answer: bytes) -> str:
    found = next((node.text for node in _children(parse(answer)) if node.tag.endswith("CommandId")), None)
    if found is None:
        raise MalformedAnswer("the Command answer holds no CommandId")
    return found


def output(answer: bytes) -> tuple[bytes, bytes, int, bool]:
    """(stdout, stderr, exit code, done) of one Receive answer; the exit code is -1 until done."""
    streams: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
    done_states = 0
    exit_code: ET.Element | None = None
    for node in _children(parse(answer)):
        tag = node.tag
        if tag.endswith("Stream") and node.text:
            name = node.get("Name")
            if name is None:
                raise MalformedAnswer("a Receive answer stream has no Name")
            if name in streams:
                try:
                    streams[name].append(base64.b64decode(node.text.encode("ascii")))
                except (binascii.Error, UnicodeEncodeError):
                    raise MalformedAnswer(f"a {name} stream that is not base64") from None
        elif exit_code is None and tag.endswith("ExitCode"):
            exit_code = node
        if node.get("State", "").endswith(_DONE_STATE):
            done_states += 1
    done = done_states == 1
    code = -1
    if done:
        if exit_code is None:
            raise MalformedAnswer("the Receive answer says Done but holds no ExitCode")
        try:
            code = int(exit_code.text or -1)
        except ValueError:
            raise MalformedAnswer(f"an ExitCode that is not a number ({(exit_code.text or '')[:20]!r})") from None
    return b"".join(streams["stdout"]), b"".join(streams["stderr"]), code, done


def check_relates_to(answer: bytes, message_id: uuid.UUID) -> None:
    """The answer must name the request it answers (pywinrm asserts the same for Signal and Delete)."""
    relates_to = next((node.text for node in _children(parse(answer)) if node.tag.endswith("RelatesTo")), None)
    try:
        same = relates_to is not None and uuid.UUID(relates_to.replace("uuid:", "")) == message_id
    except ValueError:
        same = False
    if not same:
        raise MalformedAnswer(f"the answer relates to {str(relates_to)[:60]!r}, not to request {message_id}")


def fault(answer: bytes) -> WSManFault | None:
    """The SOAP fault in an error answer, read as pywinrm reads it; None when the body holds none."""
    try:
        root = parse(answer)
    except MalformedAnswer:
        return None
    node = root.find(f"{_SOAP}Body/{_SOAP}Fault")
    if node is None:
        return None
    detail = node.find(f"{_SOAP}Detail/{_WSMAN_FAULT}WSManFault[@Code]")
    wmi = node.find(f"{_SOAP}Detail/{_WMI_ERROR}MSFT_WmiError/{_WMI_ERROR}error_Code")
    reason = node.find(f"{_SOAP}Reason/{_SOAP}Text")
    subcode = node.find(f"{_SOAP}Code/{_SOAP}Subcode/{_SOAP}Value")
    return WSManFault(
        code=_number(detail.get("Code") if detail is not None else None),
        wmi_code=_number(wmi.text if wmi is not None else None),
        reason=(reason.text if reason is not None else None) or "(no error message in fault)",
        subcode=subcode.text if subcode is not None else None,
    )


def _number(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None
