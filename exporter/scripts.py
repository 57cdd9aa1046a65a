"""The PowerShell sent to each server, and the WinRS command that carries it.

The scripts live as .ps1 files in the package; this module only adds the marker line and the parameter
line (see docs/design.md section 1) and encodes the result the way `powershell -EncodedCommand` wants it.

The command runs without cmd.exe (WinRS option WINRS_SKIP_CMD_SHELL=TRUE): through cmd.exe a command line
is limited to 8,191 characters, and the base64 of the UTF-16 script (2.67 characters per script
character) left no room for the checks a real server needs. Without cmd.exe, Windows starts the program
named in the command with CreateProcess, whose command line may hold 32,767 characters including the
terminating NUL; the program must then be an absolute path (WinRS answers "The system cannot find the
file specified." for a bare `powershell`). The limit is checked here rather than discovered on a
production server.
"""

from __future__ import annotations

import base64
import functools
from dataclasses import dataclass
from importlib import resources

from .addresses import is_proxy_url

# Windows PowerShell, whichever the server has: 5.1 (Server 2016 and later, and 2012 R2 with WMF 5.1) or 4.0 (Server
# 2012 R2 in-box, which Exchange 2016 supports); the scripts need 3.0 (docs/design.md, "Which PowerShell").
POWERSHELL = r"C:\Windows\System32\WindowsPowerShell\v1.0\powershell.exe"
CREATE_PROCESS_LIMIT = 32767  # characters of lpCommandLine, including the terminating NUL (CreateProcessW)
SERVER_MARKER = "# exchange-eems-exporter:collect-server:v1"
ORGANIZATION_MARKER = "# exchange-eems-exporter:collect-organization:v1"
DIAGNOSE_MARKER = "# exchange-eems-exporter:diagnose-server:v1"
_SWITCHES = ("-NoProfile", "-NonInteractive", "-EncodedCommand")


@dataclass(frozen=True)
class ServerScriptParameters:
    lookback_hours: int
    max_events: int
    log_tail_bytes: int
    check_endpoint: bool
    endpoint_timeout_seconds: int
    proxy: str
    proxy_default_credentials: bool = False  # offer the account's default credentials to the proxy used


@dataclass(frozen=True)
class DiagnoseScriptParameters:
    """Bounds of the `diagnose` script's output: it reads more than a poll, but never an unbounded amount."""

    lookback_hours: int
    max_events: int
    message_chars: int  # per event message
    list_files: int  # log files listed (name, size, time)
    read_files: int  # newest log files whose head and tail are read
    head_bytes: int
    tail_bytes: int


@dataclass(frozen=True)
class Command:
    """What WinRS starts: `executable` (absolute path) with `arguments`, no cmd.exe in between."""

    executable: str
    arguments: tuple[str, ...]

    @property
    def line(self) -> str:
        """The command line CreateProcess receives: the quoted program, then the arguments."""
        return " ".join((f'"{self.executable}"', *self.arguments))


@functools.cache
def _body(name: str) -> str:
    """The packaged script text, read once: it cannot change while the exporter runs, and reading it for
    every poll took seven system calls, each handing the GIL to another of the polls in flight."""
    return resources.files("exporter").joinpath("scripts").joinpath(name).read_text(encoding="utf-8")


_PS_QUOTES = "'\u2018\u2019\u201a\u201b"  # PowerShell ends a single-quoted string at any of these


def _ps_single_quoted(value: str) -> str:
    return "'" + "".join(c + c if c in _PS_QUOTES else c for c in value) + "'"


def safe_proxy(value: str) -> str:
    """A proxy URL may come from Active Directory (InternetWebProxy); only a plain URL reaches the script, by the
    same rule the configuration's endpoint_proxy is checked with."""
    return value if value and is_proxy_url(value) else ""


def _with_parameters(marker: str, values: dict[str, int | bool | str], body: str) -> str:
    """The marker line, the `$P=@{...}` parameter line (flags as 1/0, strings single-quoted), the script."""
    rendered = (
        str(int(v)) if isinstance(v, (bool, int)) else _ps_single_quoted(v) for v in values.values()
    )
    parameter_line = "$P=@{" + ";".join(f"{k}={v}" for k, v in zip(values, rendered)) + "}"
    return "\n".join((marker, parameter_line, _body(body)))


def server_script(params: ServerScriptParameters) -> str:
    return _with_parameters(SERVER_MARKER, {
        "LookbackHours": params.lookback_hours, "MaxEvents": params.max_events,
        "LogTailBytes": params.log_tail_bytes, "CheckEndpoint": params.check_endpoint,
        "EndpointTimeoutSec": params.endpoint_timeout_seconds, "Proxy": safe_proxy(params.proxy),
        "ProxyDefaultCredentials": params.proxy_default_credentials,
    }, "collect_server.ps1")


def organization_script() -> str:
    return "\n".join((ORGANIZATION_MARKER, _body("collect_organization.ps1")))


def diagnose_script(params: DiagnoseScriptParameters) -> str:
    return _with_parameters(DIAGNOSE_MARKER, {
        "LookbackHours": params.lookback_hours, "MaxEvents": params.max_events, "MessageChars": params.message_chars,
        "ListFiles": params.list_files, "ReadFiles": params.read_files, "HeadBytes": params.head_bytes,
        "TailBytes": params.tail_bytes,
    }, "diagnose_server.ps1")


def powershell_command(script: str) -> Command:
    encoded = base64.b64encode(script.encode("utf-16-le")).decode("ascii")
    command = Command(POWERSHELL, (*_SWITCHES, encoded))
    if len(command.line) >= CREATE_PROCESS_LIMIT:
        raise ValueError(
            f"encoded PowerShell command is {len(command.line)} characters; Windows allows {CREATE_PROCESS_LIMIT - 1}"
        )
    return command
