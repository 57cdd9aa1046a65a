"""The PowerShell sent to each server, and the WinRS command line that carries it.

The scripts live as .ps1 files in the package; this module only adds the marker line and the parameter
line (see docs/design.md section 1) and encodes the result the way `powershell -EncodedCommand` wants it.
WinRS runs the command through cmd.exe, whose command line is limited to 8191 characters, so the encoded
command is checked here rather than discovered as "The command line is too long." on a production server.
"""

from __future__ import annotations

import base64
import functools
import re
from dataclasses import dataclass
from importlib import resources

CMD_LINE_LIMIT = 8191
SERVER_MARKER = "# exchange-eems-exporter:collect-server:v1"
ORGANIZATION_MARKER = "# exchange-eems-exporter:collect-organization:v1"
_PREFIX = "powershell -NoProfile -NonInteractive -EncodedCommand "


@dataclass(frozen=True)
class ServerScriptParameters:
    lookback_hours: int
    max_events: int
    log_tail_bytes: int
    check_endpoint: bool
    endpoint_timeout_seconds: int
    proxy: str


@functools.cache
def _body(name: str) -> str:
    """The packaged script text, read once: it cannot change while the exporter runs, and reading it for
    every poll took seven system calls, each handing the GIL to another of the polls in flight."""
    return resources.files("exporter").joinpath("scripts").joinpath(name).read_text(encoding="utf-8")


_PROXY_URL = re.compile(r"https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?/?")
_PS_QUOTES = "'\u2018\u2019\u201a\u201b"  # PowerShell ends a single-quoted string at any of these


def _ps_single_quoted(value: str) -> str:
    return "'" + "".join(c + c if c in _PS_QUOTES else c for c in value) + "'"


def safe_proxy(value: str) -> str:
    """A proxy URL may come from Active Directory (InternetWebProxy); only a plain URL reaches the script."""
    return value if _PROXY_URL.fullmatch(value or "") else ""


def server_script(params: ServerScriptParameters) -> str:
    parameter_line = (
        f"$P=@{{LookbackHours={int(params.lookback_hours)};MaxEvents={int(params.max_events)};"
        f"LogTailBytes={int(params.log_tail_bytes)};CheckEndpoint={1 if params.check_endpoint else 0};"
        f"EndpointTimeoutSec={int(params.endpoint_timeout_seconds)};Proxy={_ps_single_quoted(safe_proxy(params.proxy))}}}"
    )
    return "\n".join((SERVER_MARKER, parameter_line, _body("collect_server.ps1")))


def organization_script() -> str:
    return "\n".join((ORGANIZATION_MARKER, _body("collect_organization.ps1")))


def command_line(script: str) -> str:
    encoded = base64.b64encode(script.encode("utf-16-le")).decode("ascii")
    line = _PREFIX + encoded
    if len(line) > CMD_LINE_LIMIT:
        raise ValueError(
            f"encoded PowerShell command is {len(line)} characters; Windows allows {CMD_LINE_LIMIT}"
        )
    return line
