"""`windows-endpoint --output DIR`: the JEA endpoint the exporter ships, written from the script WinRS sends.

The endpoint gives the monitoring account exactly one command, `Get-ExchangeEemsFacts`, and nothing else. Its
body IS `scripts/collect_server.ps1`, the script a WinRS poll sends, behind a parameter block that fills the
same `$P` the WinRS parameter line fills; so the two protocols cannot drift. Before the facts the function
writes its version line, a hash of everything it runs: an exporter that meets another version reports
`endpoint_outdated` with the command that updates the endpoint, never a verdict from code it did not ship.

What is written (Microsoft Learn, "JEA Role Capabilities" and "JEA Session Configurations",
learn.microsoft.com/powershell/scripting/security/remoting/jea/):
- `ExchangeEemsExporter/` — a PowerShell module (manifest only) whose `RoleCapabilities/ExchangeEemsReader.psrc`
  defines the one function (FunctionDefinitions) and makes it visible (VisibleFunctions). A role capability
  must sit in a module's RoleCapabilities folder on PSModulePath [confirmed, "Role capabilities"].
- `ExchangeEemsExporter.pssc` — SessionType RestrictedRemoteServer (NoLanguage, no providers, no external
  programs, eight default commands and their aliases besides ours), RunAsVirtualAccount (a member of the local
  Administrators group, on a domain controller of Domain Admins, unless `--virtual-account-group` names groups
  instead), RoleDefinitions for the one group given with `--group`, and with `--transcript-directory` a
  transcript of every session [all confirmed, "JEA Session Configurations", "JEA Security Considerations"].
- `Install-ExchangeEemsEndpoint.ps1` — copies the module to Program Files and registers the configuration,
  updates both when they differ, `-Remove` takes both away; a second run changes nothing. It refuses a domain
  controller when no virtual-account group is named (Domain Admins), and gives the transcript folder to SYSTEM
  and Administrators only ("Session transcripts": standard users should have no access).

The language mode of the function body [confirmed, "Role capabilities", Creating custom functions]: "The body
(script block) of custom functions runs in the default language mode for the system and isn't subject to
JEA's language constraints" — FullLanguage, or ConstrainedLanguage where WDAC/AppLocker enforce it, which is
why the collection script is kept Constrained-Language-safe. The same page: functions are still subject to
the proxy functions JEA creates, e.g. the constrained `Select-Object`: the script names every command with its
module (docs/design.md, "Full command names").
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from . import __version__ as EXPORTER_VERSION
from .addresses import is_proxy_url, without_userinfo
from .config import MAX_ENDPOINT_TIMEOUT_SECONDS, MAX_EVENTS_ASKED, MAX_LOG_TAIL_BYTES, MAX_LOOKBACK_HOURS
from .scripts import SERVER_MARKER

CONFIGURATION_NAME = "ExchangeEemsExporter"
MODULE_NAME = "ExchangeEemsExporter"
ROLE_CAPABILITY = "ExchangeEemsReader"
FUNCTION_NAME = "Get-ExchangeEemsFacts"
INSTALL_SCRIPT = "Install-ExchangeEemsEndpoint.ps1"
VERSION_PREFIX = "exchange-eems-exporter/endpoint/"
# The function's parameters in the order of the WinRS parameter line (scripts.py): (name, lowest, highest,
# default). The upper bounds are the configuration's (config.py's MAX_*), so a stolen credential cannot ask the
# server for more work than the exporter ever would, and the exporter never asks for more than the function takes.
# They are part of the function, so of its version: changing one makes every installed endpoint
# `endpoint_outdated` until it is reinstalled. The endpoint proxy is NOT a parameter: it is fixed when the
# endpoint is written (`--endpoint-proxy`), since the script sends the server's own credentials to it
# (ProxyUseDefaultCredentials) and a caller-chosen proxy would hand them to whoever runs it. Nor are those
# credentials offered unless asked (issue 24 finding 17): ProxyDefaultCredentials is fixed at 0 here.
PARAMETERS = (
    ("LookbackHours", 1, MAX_LOOKBACK_HOURS, 24), ("MaxEvents", 1, MAX_EVENTS_ASKED, 50),
    ("LogTailBytes", 0, MAX_LOG_TAIL_BYTES, 32768), ("CheckEndpoint", 0, 1, 0),
    ("EndpointTimeoutSec", 1, MAX_ENDPOINT_TIMEOUT_SECONDS, 10),
)
_NAMESPACE = uuid.UUID("0b8cf5e4-1f0e-4d55-9a55-3f1c8c6d2a61")  # GUIDs derived from names: stable across runs
_GROUP = re.compile(r"[^\x00-\x1f'\u2018\u2019\u201a\u201b\"`$]{1,256}")
_BODY_START, _BODY_END = "# >>> collect_server.ps1", "# <<< collect_server.ps1"


def _collect_script() -> str:
    return resources.files("exporter").joinpath("scripts", "collect_server.ps1").read_text(encoding="utf-8")


def _function_body(script: str, version_line: str, proxy: str) -> str:
    """The function's script block: parameters, the version line, `$P` as WinRS fills it, the script verbatim."""
    params = ",\n".join(f"    [ValidateRange({low},{high})][int]${name}={default}" for name, low, high, default in PARAMETERS)
    values = ";".join(f"{name}=${name}" for name, _, _, _ in PARAMETERS)
    return (
        f"param(\n{params}\n)\n"
        f"{version_line}\n"
        f"$P=@{{{values};Proxy={_quoted(proxy)};ProxyDefaultCredentials=0}}\n"
        f"{_BODY_START}\n{script.rstrip()}\n{_BODY_END}\n"
    )


def endpoint_version(script: str | None = None) -> str:
    """The version the function reports: a hash of the code it runs (the script and the wrapper around it; the
    endpoint proxy chosen at install time is configuration, not code)."""
    script = _collect_script() if script is None else script
    digest = hashlib.sha256((SERVER_MARKER + "\n" + _function_body(script, "", "")).encode("utf-8")).hexdigest()
    return VERSION_PREFIX + digest[:16]


def _quoted(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def check_group(group: str) -> str:
    """A Windows group name (`DOMAIN\\Group` or a local group), refused if it could break out of its string."""
    group = group.strip()
    if not _GROUP.fullmatch(group):
        raise ValueError(f"--group {group!r}: expected a group name like 'CONTOSO\\EEMS Monitoring' "
                         "(no quotes, backticks, '$' or control characters)")
    return group


@dataclass(frozen=True)
class EndpointFiles:
    """Relative path -> text of every file `windows-endpoint` writes."""

    files: dict[str, str]
    version: str


def check_proxy(proxy: str) -> str:
    if proxy and not is_proxy_url(proxy):
        shown = without_userinfo(proxy)  # never repeat a password it holds
        raise ValueError(f"--endpoint-proxy {shown!r}: expected "
                         "http(s)://host[:port], without user info")
    return proxy


def module_version(version: str) -> str:
    """`version` as a module manifest's ModuleVersion, which PowerShell reads as [System.Version]: two to four
    numbers, nothing else, so a release such as 0.2.0rc1 or 0.2.0.dev1 keeps its numbers (0.2.0), and the
    manifest stays loadable by Register-PSSessionConfiguration. (A PEP 440 version starts with its release
    numbers; this project sets no epoch.)"""
    numbers = re.match(r"\d+(?:\.\d+){0,3}", version).group()
    return numbers if "." in numbers else numbers + ".0"


def build(group: str, script: str | None = None, proxy: str = "", virtual_account_groups: tuple[str, ...] = (),
          transcript_directory: str = "") -> EndpointFiles:
    group = check_group(group)
    virtual_account_groups = tuple(check_group(g) for g in virtual_account_groups)
    if transcript_directory and not _GROUP.fullmatch(transcript_directory):
        raise ValueError(f"--transcript-directory {transcript_directory!r}: no quotes, backticks or '$'")
    if transcript_directory.endswith("\\"):  # Windows PowerShell 5.1 would pass it to icacls broken (install script)
        raise ValueError(f"--transcript-directory {transcript_directory!r}: without a trailing backslash")
    proxy = check_proxy(proxy)
    script = _collect_script() if script is None else script
    version = endpoint_version(script)
    body = _function_body(script, _quoted(version), proxy)
    header = (f"# Written by exchange-eems-exporter {EXPORTER_VERSION} (windows-endpoint); endpoint version {version}.\n"
              "# Do not edit: run `exchange-eems-exporter windows-endpoint` again and reinstall.\n")
    guid = lambda name: str(uuid.uuid5(_NAMESPACE, name))  # noqa: E731
    manifest = (
        f"{header}@{{\n"
        f"    ModuleVersion = '{module_version(EXPORTER_VERSION)}'\n"
        f"    GUID = '{guid('module')}'\n"
        "    Author = 'exchange-eems-exporter'\n"
        "    Description = 'The role capability of the exchange-eems-exporter JEA endpoint (RoleCapabilities folder).'\n"
        "    PowerShellVersion = '5.1'\n"
        "    FunctionsToExport = @()\n"
        "    CmdletsToExport = @()\n"
        "    VariablesToExport = @()\n"
        "    AliasesToExport = @()\n"
        "}\n"
    )
    role = (
        f"{header}@{{\n"
        f"    GUID = '{guid('role')}'\n"
        "    Author = 'exchange-eems-exporter'\n"
        "    Description = 'Read-only EEMS facts for the exchange-eems-exporter monitoring account: one function.'\n"
        f"    VisibleFunctions = '{FUNCTION_NAME}'\n"
        "    FunctionDefinitions = @{\n"
        f"        Name = '{FUNCTION_NAME}'\n"
        f"        ScriptBlock = {{\n{body}}}\n"
        "    }\n"
        "}\n"
    )
    session = (
        f"{header}@{{\n"
        "    SchemaVersion = '2.0.0.0'\n"
        f"    GUID = '{guid('session')}'\n"
        "    Author = 'exchange-eems-exporter'\n"
        "    Description = 'exchange-eems-exporter: one read-only function for the monitoring group.'\n"
        "    SessionType = 'RestrictedRemoteServer'\n"
        "    RunAsVirtualAccount = $true\n"
        + (f"    RunAsVirtualAccountGroups = {', '.join(_quoted(g) for g in virtual_account_groups)}\n"
           if virtual_account_groups else "")
        + (f"    TranscriptDirectory = {_quoted(transcript_directory)}\n" if transcript_directory else "")
        + "    RoleDefinitions = @{\n"
        f"        {_quoted(group)} = @{{ RoleCapabilities = '{ROLE_CAPABILITY}' }}\n"
        "    }\n"
        "}\n"
    )
    install = resources.files("exporter").joinpath("data", "Install-ExchangeEemsEndpoint.ps1").read_text(encoding="utf-8")
    install = header + install
    return EndpointFiles({
        f"{MODULE_NAME}/{MODULE_NAME}.psd1": manifest,
        f"{MODULE_NAME}/RoleCapabilities/{ROLE_CAPABILITY}.psrc": role,
        f"{CONFIGURATION_NAME}.pssc": session,
        INSTALL_SCRIPT: install,
    }, version)


def write(output: Path, group: str, proxy: str = "", virtual_account_groups: tuple[str, ...] = (),
          transcript_directory: str = "") -> EndpointFiles:
    """Write the files under `output` (created if needed); files of an earlier run are replaced."""
    endpoint = build(group, proxy=proxy, virtual_account_groups=virtual_account_groups,
                     transcript_directory=transcript_directory)
    for relative, text in endpoint.files.items():
        path = output / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        # UTF-8 with a BOM: Windows PowerShell 5.1 reads a file without one in the system's ANSI code page
        path.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode("utf-8"))
    return endpoint


def update_command() -> str:
    """What an admin runs to bring an outdated endpoint up to this exporter's version (the reason's hint). It must
    fit in a poll failure's message (MAX_MESSAGE_CHARS) after the server's name and both versions, and say that the
    options are written again: `--group GROUP` alone drops `--virtual-account-group` (the virtual account becomes a
    local Administrator) and `--transcript-directory`. docs/runbooks.md (`endpoint_outdated`) names them."""
    return f"rerun windows-endpoint with its original options, then .\\{INSTALL_SCRIPT} there as an administrator"
