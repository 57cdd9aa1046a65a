"""WS-Management SOAP for the WinRS shell: parse requests, render responses and faults like Windows.

Responses are rendered as text in the exact shape of recordings from real hosts (pypsrp
tests/tests_pypsrp/responses/*.yml): upper-case GUIDs, `RelatesTo` = the request's MessageID, the
`rsp:Shell` block in CreateResponse. Fault texts come from those recordings and from the Windows SDK
message table (wsmerror.h); `FAULTS` is the one place they live.
"""

from __future__ import annotations

import base64
import re
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

SOAP = "http://www.w3.org/2003/05/soap-envelope"
ADDRESSING = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
WSMAN = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"
SHELL = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
TRANSFER = "http://schemas.xmlsoap.org/ws/2004/09/transfer"

ACTION_CREATE = f"{TRANSFER}/Create"
ACTION_DELETE = f"{TRANSFER}/Delete"
ACTION_COMMAND = f"{SHELL}/Command"
ACTION_RECEIVE = f"{SHELL}/Receive"
ACTION_SIGNAL = f"{SHELL}/Signal"
ACTION_SEND = f"{SHELL}/Send"
SHELL_RESOURCE = f"{SHELL}/cmd"
SIGNAL_CODES = {f"{SHELL}/signal/terminate", f"{SHELL}/signal/Terminate", f"{SHELL}/signal/ctrl_c"}

DEFAULT_MAX_ENVELOPE = 153600
REMOTE_SHELLS_NOT_ALLOWED = 2150859180  # ERROR_WSMAN_REMOTESHELLS_NOT_ALLOWED: the AllowRemoteShellAccess policy
MAX_TIMEOUT_SECONDS = 60.0  # Config/MaxTimeoutms default: longer OperationTimeouts are cut to this

# code -> (s:Code, subcode, reason, f:Message). "{n}" is filled in by the caller.
FAULTS: dict[int, tuple[str, str, str, str]] = {
    5: ("s:Sender", "w:AccessDenied", "Access is denied. ", "Access is denied. "),
    2150858767: (
        "s:Sender",
        "a:InvalidMessageInformationHeader",
        "The WS-Management service cannot process the request because the header is invalid. ",
        "The WS-Management service cannot process the request because it contains an invalid timeout field "
        "in the SOAP header: {n}. ",
    ),
    2150858771: (
        "s:Sender",
        "a:ActionNotSupported",
        "The WS-Management service does not support the action specified in the request. ",
        "The WS-Management service does not support the action specified in the request. ",
    ),
    2150858793: (
        "s:Receiver",
        "w:TimedOut",
        "The WS-Management service cannot complete the operation within the time specified in OperationTimeout.  ",
        "The WS-Management service cannot complete the operation within the time specified in OperationTimeout.  ",
    ),
    # The f:Message is the text users report from real hosts (pywinrm #273, pypsrp #41); the subcode and the
    # s:Reason are our guess (no recorded fault of this code).
    2150858811: (
        "s:Sender",
        "w:DestinationUnreachable",
        "The WS-Management service cannot process the request. The resource URI was not found in the "
        "WS-Management catalog. ",
        "The WS-Management service cannot process the request. The resource URI ({n}) was not found in the "
        "WS-Management catalog. The catalog contains the metadata that describes resources, or logical endpoints. ",
    ),
    2150858817: (
        "s:Sender",
        "w:SchemaValidationError",
        "The SOAP XML in the message does not match the corresponding XML schema definition. Change the XML and retry. ",
        "The SOAP XML in the message does not match the corresponding XML schema definition. Change the XML and retry. ",
    ),
    2150858843: (
        "s:Sender",
        "w:InvalidSelectors",
        "The WS-Management service cannot process the request because the request contained invalid selectors "
        "for the resource. ",
        "{n}",
    ),
    # The Windows Remote Shell policy AllowRemoteShellAccess set to Disabled. Code: ERROR_WSMAN_REMOTESHELLS_NOT_ALLOWED
    # (winerror.h, 0x803381AC); subcode: MS-WSMV 2.2.4.42 ("MUST reply with a wsman:InternalError fault"); the
    # message is the text users report (jpboyce/cb_cis_windows_2016#5, the CIS "Allow Remote Shell Access:
    # Disabled" item). No recorded fault: code, subcode and text were put together from those three sources.
    REMOTE_SHELLS_NOT_ALLOWED: (
        "s:Receiver",
        "w:InternalError",
        "The WS-Management service cannot process the request. The service is configured to not accept any "
        "remote shell requests. ",
        "The WS-Management service cannot process the request. The service is configured to not accept any "
        "remote shell requests. ",
    ),
    2150859173: (
        "s:Sender",
        "w:QuotaLimit",
        "The WS-Management service cannot process the request. The maximum number of concurrent shells for this "
        "user has been exceeded. Close existing shells or raise the quota for this user. ",
        "The WS-Management service cannot process the request. This user is allowed a maximum number of {n} "
        "concurrent shells, which has been exceeded. Close existing shells or raise the quota for this user. ",
    ),
}
UNKNOWN_COMMAND_TEXT = (
    "The Windows Remote Shell received a request to perform an operation on a command identifier that does not "
    "exist. Either the command has completed execution or the client specified an invalid command identifier. "
)
UNKNOWN_SHELL_TEXT = (
    "The request for the Windows Remote Shell with ShellId {shell} failed because the shell was not found on the "
    "server. Possible causes are: the specified ShellId is incorrect or the shell no longer exists on the server. "
    "Provide the correct ShellId or create a new shell and retry the operation. "
)
_INTERNAL = ("s:Receiver", "w:InternalError", "The WS-Management service cannot process the request. ", "{n}")
_UNEXPECTED_SELECTORS = "http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/UnexpectedSelectors"


class WsmanFault(Exception):
    """A fault to send back (HTTP 500). `detail` fills the `{n}` placeholder of the catalogued message."""

    def __init__(self, code: int, detail: str = "", fault_detail: str | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.detail = detail
        self.fault_detail = fault_detail

    @classmethod
    def unknown_command(cls) -> WsmanFault:
        return cls(2150858843, UNKNOWN_COMMAND_TEXT, _UNEXPECTED_SELECTORS)

    @classmethod
    def unknown_shell(cls, shell_id: str) -> WsmanFault:
        return cls(2150858843, UNKNOWN_SHELL_TEXT.format(shell=shell_id), _UNEXPECTED_SELECTORS)


@dataclass
class WsmanRequest:
    action: str
    message_id: str
    operation_timeout: float
    max_envelope_size: int
    shell_id: str | None
    body: ET.Element | None
    options: dict[str, str] = field(default_factory=dict)
    resource_uri: str = ""


_DURATION = re.compile(r"^P(?:(\d+)D)?T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?$")


def parse_duration(text: str) -> float:
    """xs:duration as WinRM uses it (`PT20S`, `PT20.000S`, `PT1M`); raises ValueError otherwise."""
    match = _DURATION.match(text.strip())
    if not match or text.strip() == "PT":
        raise ValueError(text)
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds or 0)


def parse_request(data: bytes) -> WsmanRequest:
    """Parse one SOAP envelope; anything malformed becomes a schema-validation fault."""
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise WsmanFault(2150858817)
    try:
        root = ET.fromstring(data)
    except ET.ParseError:
        raise WsmanFault(2150858817) from None
    header = root.find(f"{{{SOAP}}}Header")
    body = root.find(f"{{{SOAP}}}Body")
    if root.tag != f"{{{SOAP}}}Envelope" or header is None or body is None:
        raise WsmanFault(2150858817)
    action = (header.findtext(f"{{{ADDRESSING}}}Action") or "").strip()
    message_id = (header.findtext(f"{{{ADDRESSING}}}MessageID") or "").strip()
    if not action or not message_id:
        raise WsmanFault(2150858817)
    timeout_text = header.findtext(f"{{{WSMAN}}}OperationTimeout")
    timeout = MAX_TIMEOUT_SECONDS
    if timeout_text is not None:
        try:
            timeout = min(parse_duration(timeout_text), MAX_TIMEOUT_SECONDS)
        except ValueError:
            raise WsmanFault(2150858767, timeout_text.strip()[:64]) from None
    envelope_text = (header.findtext(f"{{{WSMAN}}}MaxEnvelopeSize") or "").strip()
    max_envelope = int(envelope_text) if envelope_text.isdigit() else DEFAULT_MAX_ENVELOPE
    shell_id = None
    for selector in header.iter(f"{{{WSMAN}}}Selector"):
        if selector.get("Name") == "ShellId":
            shell_id = (selector.text or "").strip()
    options = {opt.get("Name", ""): (opt.text or "") for opt in header.iter(f"{{{WSMAN}}}Option")}
    resource_uri = (header.findtext(f"{{{WSMAN}}}ResourceURI") or "").strip()
    return WsmanRequest(action, message_id, timeout, max(max_envelope, 8192), shell_id, next(iter(body), None), options,
                        resource_uri)


def requested_idle_timeout(request: WsmanRequest) -> float | None:
    """The Create body's `rsp:IdleTimeOut` in seconds (Windows keeps the smaller of it and Winrs/IdleTimeout)."""
    if request.body is None:
        return None
    text = request.body.findtext(f"{{{SHELL}}}IdleTimeOut")
    if not text:
        return None
    try:
        return parse_duration(text) or None
    except ValueError:
        raise WsmanFault(2150858817) from None


def command_line(request: WsmanRequest) -> str:
    """The `rsp:Command` text plus every `rsp:Arguments`, joined by spaces as cmd.exe would see them."""
    if request.body is None or request.body.tag != f"{{{SHELL}}}CommandLine":
        raise WsmanFault(2150858817)
    command = request.body.findtext(f"{{{SHELL}}}Command")
    if command is None:
        raise WsmanFault(2150858817)
    arguments = [arg.text or "" for arg in request.body.iter(f"{{{SHELL}}}Arguments")]
    return " ".join([command.strip(), *arguments]).strip()


def skips_cmd_shell(request: WsmanRequest) -> bool:
    """WINRS_SKIP_CMD_SHELL=TRUE on the Command: Windows starts the program itself, without cmd.exe."""
    return request.options.get("WINRS_SKIP_CMD_SHELL", "").strip().upper() == "TRUE"


_ABSOLUTE_PROGRAM = re.compile(r'"?[A-Za-z]:\\[^"]+\.(?:exe|com)"?', re.IGNORECASE)


def process_command_line(request: WsmanRequest) -> str:
    """Without cmd.exe the `rsp:Command` must name a program by its absolute path (pypsrp's recorded
    test_winrs_no_cmd_shell: a bare `powershell.exe` gets 0x80070002); the line CreateProcess sees is the
    quoted program followed by the arguments."""
    command = request.body.findtext(f"{{{SHELL}}}Command").strip()
    if not _ABSOLUTE_PROGRAM.fullmatch(command):
        raise WsmanFault(2147942402, "The system cannot find the file specified. ")
    arguments = [arg.text or "" for arg in request.body.iter(f"{{{SHELL}}}Arguments")]
    return " ".join([f'"{command.strip(chr(34))}"', *arguments]).strip()


def receive_command_id(request: WsmanRequest) -> str:
    stream = request.body.find(f"{{{SHELL}}}DesiredStream") if request.body is not None else None
    if request.body is None or request.body.tag != f"{{{SHELL}}}Receive" or stream is None:
        raise WsmanFault(2150858817)
    return stream.get("CommandId", "")


def signal_command_id(request: WsmanRequest) -> str:
    if request.body is None or request.body.tag != f"{{{SHELL}}}Signal":
        raise WsmanFault(2150858817)
    if (request.body.findtext(f"{{{SHELL}}}Code") or "").strip() not in SIGNAL_CODES:
        raise WsmanFault(2150858817)
    return request.body.get("CommandId", "")


def new_guid() -> str:
    return str(uuid.uuid4()).upper()


_NAMESPACES = (
    f'xml:lang="en-US" xmlns:s="{SOAP}" xmlns:a="{ADDRESSING}" xmlns:x="{TRANSFER}" xmlns:w="{WSMAN}" '
    f'xmlns:rsp="{SHELL}" xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd"'
)


def _envelope(action: str, relates_to: str, body: str) -> bytes:
    return (
        f"<s:Envelope {_NAMESPACES}><s:Header><a:Action>{action}</a:Action>"
        f"<a:MessageID>uuid:{new_guid()}</a:MessageID>"
        f"<a:To>{ADDRESSING}/role/anonymous</a:To><a:RelatesTo>{escape(relates_to)}</a:RelatesTo>"
        f"</s:Header><s:Body>{body}</s:Body></s:Envelope>"
    ).encode("utf-8")


def create_response(relates_to: str, address: str, shell_id: str, owner: str, client_ip: str, idle_seconds: float) -> bytes:
    body = (
        f"<x:ResourceCreated><a:Address>{escape(address)}</a:Address><a:ReferenceParameters>"
        f"<w:ResourceURI>{SHELL_RESOURCE}</w:ResourceURI><w:SelectorSet>"
        f'<w:Selector Name="ShellId">{shell_id}</w:Selector></w:SelectorSet></a:ReferenceParameters>'
        f'</x:ResourceCreated><rsp:Shell xmlns:rsp="{SHELL}"><rsp:ShellId>{shell_id}</rsp:ShellId>'
        f"<rsp:ResourceUri>{SHELL_RESOURCE}</rsp:ResourceUri><rsp:Owner>{escape(owner)}</rsp:Owner>"
        f"<rsp:ClientIP>{escape(client_ip)}</rsp:ClientIP><rsp:IdleTimeOut>PT{idle_seconds:.3f}S</rsp:IdleTimeOut>"
        "<rsp:InputStreams>stdin</rsp:InputStreams><rsp:OutputStreams>stdout stderr</rsp:OutputStreams>"
        "<rsp:ShellRunTime>P0DT0H0M0S</rsp:ShellRunTime><rsp:ShellInactivity>P0DT0H0M0S</rsp:ShellInactivity>"
        "</rsp:Shell>"
    )
    return _envelope(f"{TRANSFER}/CreateResponse", relates_to, body)


def command_response(relates_to: str, command_id: str) -> bytes:
    body = f"<rsp:CommandResponse><rsp:CommandId>{command_id}</rsp:CommandId></rsp:CommandResponse>"
    return _envelope(f"{SHELL}/CommandResponse", relates_to, body)


RECEIVE_OVERHEAD = 2048  # bytes of envelope around the streams, kept free below MaxEnvelopeSize


def receive_response(
    relates_to: str, command_id: str, stdout: list[bytes], stderr: list[bytes], exit_code: int | None
) -> bytes:
    """One `rsp:Stream` per chunk; `exit_code` None = still Running (more output follows), else Done."""
    cid = quoteattr(command_id)
    parts = [f'<rsp:Stream Name="stdout" CommandId={cid}>{base64.b64encode(c).decode()}</rsp:Stream>' for c in stdout]
    parts += [f'<rsp:Stream Name="stderr" CommandId={cid}>{base64.b64encode(c).decode()}</rsp:Stream>' for c in stderr]
    if exit_code is None:
        parts.append(f'<rsp:CommandState CommandId={cid} State="{SHELL}/CommandState/Running"></rsp:CommandState>')
    else:
        parts.append(f'<rsp:Stream Name="stdout" CommandId={cid} End="true"></rsp:Stream>')
        parts.append(f'<rsp:Stream Name="stderr" CommandId={cid} End="true"></rsp:Stream>')
        parts.append(
            f'<rsp:CommandState CommandId={cid} State="{SHELL}/CommandState/Done">'
            f"<rsp:ExitCode>{exit_code}</rsp:ExitCode></rsp:CommandState>"
        )
    return _envelope(f"{SHELL}/ReceiveResponse", relates_to, f"<rsp:ReceiveResponse>{''.join(parts)}</rsp:ReceiveResponse>")


def signal_response(relates_to: str) -> bytes:
    return _envelope(f"{SHELL}/SignalResponse", relates_to, "<rsp:SignalResponse/>")


def delete_response(relates_to: str) -> bytes:
    return _envelope(f"{TRANSFER}/DeleteResponse", relates_to, "")


def fault_response(fault: WsmanFault, relates_to: str, machine: str) -> bytes:
    soap_code, subcode, reason, message = FAULTS.get(fault.code, _INTERNAL)
    message = message.replace("{n}", fault.detail)
    detail = f"<w:FaultDetail>{fault.fault_detail}</w:FaultDetail>" if fault.fault_detail else ""
    body = (
        f"<s:Fault><s:Code><s:Value>{soap_code}</s:Value><s:Subcode><s:Value>{subcode}</s:Value></s:Subcode>"
        f'</s:Code><s:Reason><s:Text xml:lang="en-US">{escape(reason)}</s:Text></s:Reason><s:Detail>{detail}'
        f'<f:WSManFault xmlns:f="http://schemas.microsoft.com/wbem/wsman/1/wsmanfault" Code="{fault.code}" '
        f"Machine={quoteattr(machine)}><f:Message>{escape(message)}</f:Message></f:WSManFault></s:Detail></s:Fault>"
    )
    return _envelope("http://schemas.dmtf.org/wbem/wsman/1/wsman/fault", relates_to, body)


# ---------------------------------------------------------------- PowerShell remoting (PSRP) shells

POWERSHELL_RESOURCE = "http://schemas.microsoft.com/powershell/"


def pool_create_response(relates_to: str, address: str, resource_uri: str, shell_id: str, owner: str, client_ip: str,
                         idle_seconds: float, process_id: int) -> bytes:
    """CreateResponse for a runspace pool: the client's ShellId kept, the fields of the recorded JEA session
    (pypsrp test_psrp_with_jea_configuration.yml)."""
    uri = escape(resource_uri)
    body = (
        f"<x:ResourceCreated><a:Address>{escape(address)}</a:Address><a:ReferenceParameters>"
        f"<w:ResourceURI>{uri}</w:ResourceURI><w:SelectorSet>"
        f'<w:Selector Name="ShellId">{shell_id}</w:Selector></w:SelectorSet></a:ReferenceParameters>'
        f'</x:ResourceCreated><rsp:Shell xmlns:rsp="{SHELL}"><rsp:ShellId>{shell_id}</rsp:ShellId>'
        f"<rsp:ResourceUri>{uri}</rsp:ResourceUri><rsp:Owner>{escape(owner)}</rsp:Owner>"
        f"<rsp:ClientIP>{escape(client_ip)}</rsp:ClientIP><rsp:ProcessId>{process_id}</rsp:ProcessId>"
        f"<rsp:IdleTimeOut>PT{idle_seconds:.3f}S</rsp:IdleTimeOut>"
        "<rsp:InputStreams>stdin pr</rsp:InputStreams><rsp:OutputStreams>stdout</rsp:OutputStreams>"
        "<rsp:MaxIdleTimeOut>PT2147483.647S</rsp:MaxIdleTimeOut><rsp:Locale>en-US</rsp:Locale>"
        "<rsp:DataLocale>en-US</rsp:DataLocale><rsp:CompressionMode>NoCompression</rsp:CompressionMode>"
        "<rsp:ProfileLoaded>Yes</rsp:ProfileLoaded><rsp:Encoding>UTF8</rsp:Encoding><rsp:BufferMode>Block</rsp:BufferMode>"
        "<rsp:State>Connected</rsp:State><rsp:ShellRunTime>P0DT0H0M0S</rsp:ShellRunTime>"
        "<rsp:ShellInactivity>P0DT0H0M0S</rsp:ShellInactivity></rsp:Shell>"
    )
    return _envelope(f"{TRANSFER}/CreateResponse", relates_to, body)


def psrp_receive_response(relates_to: str, command_id: str | None, fragments: list[bytes], done: bool) -> bytes:
    """One `rsp:Stream Name="stdout"` per PSRP fragment, as the recorded sessions show; a pipeline's last answer
    ends with CommandState Done (ExitCode 0). Answers for the pool itself carry no CommandId and no state."""
    cid = f" CommandId={quoteattr(command_id)}" if command_id else ""
    parts = [f'<rsp:Stream Name="stdout"{cid}>{base64.b64encode(f).decode()}</rsp:Stream>' for f in fragments]
    if command_id and done:
        parts.append(f'<rsp:CommandState{cid} State="{SHELL}/CommandState/Done"><rsp:ExitCode>0</rsp:ExitCode>'
                     "</rsp:CommandState>")
    return _envelope(f"{SHELL}/ReceiveResponse", relates_to, f"<rsp:ReceiveResponse>{''.join(parts)}</rsp:ReceiveResponse>")


def send_response(relates_to: str) -> bytes:
    return _envelope(f"{SHELL}/SendResponse", relates_to, "<rsp:SendResponse/>")
