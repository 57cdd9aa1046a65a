"""What a simulated Exchange server's PowerShell session configurations answer over PSRP.

Three configurations, as a real server has them:
- the exporter's JEA endpoint (`JEA_CONFIGURATION` at /wsman): RestrictedRemoteServer, NoLanguage, one visible
  function. The function answers with what the WinRS collection script prints on the same server, for every
  scenario knob, because it *is* that script run through `windows.WindowsHost` with the function's parameters as
  its `$P` line; before the JSON it writes the endpoint's version line. Its commands resolve in the restricted
  session, whose Select-Object is a proxy (restricted.py).
- `Microsoft.PowerShell` at /wsman: full language; the exporter's scripts run as they do over WinRS.
- `Microsoft.Exchange` at /PowerShell (IIS, not the WinRM service): cmdlets with parameters only, under RBAC.
  `Get-OrganizationConfig` and `Get-ExchangeServer` answer with objects built from Exchange's real serialised
  output (data/exchange/*.xml, captured by Microsoft's HealthChecker tests from Exchange 2019 over remote
  PowerShell; microsoft/CSS-Exchange, MIT licence), with this scenario's facts put in. The property set and type
  names are real; that remote PowerShell sends them exactly so to a pypsrp client is UNCONFIRMED (no recorded
  /PowerShell session was available).

A cmdlet the account's RBAC roles do not grant is not in its runspace at all, so calling one fails as a command
that does not exist (CommandNotFoundException) [Microsoft Learn, "Find the permissions required to run any
Exchange cmdlet": RBAC decides which cmdlets and parameters are available; the refusal's text as real sessions
show it, dmaasland/proxyshell-poc#4 over PSRP, dpaulson45/HealthChecker#530 in the EMS; the id from PowerShell's
source, exporter/winrm/psrp.py "Command not found"].
"""

from __future__ import annotations

import base64
import functools
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

from psrpcore.types import (
    ErrorCategory, PSBool, PSCryptoProvider, PSDateTime, PSInt, PSList, PSNoteProperty, PSObject, deserialize,
)

from .host import Answer, ErrorSpec, Invocation

JEA_CONFIGURATION = "ExchangeEemsExporter"
JEA_FUNCTION = "Get-ExchangeEemsFacts"
# The function's [int] parameters and their ValidateRange, as the shipped module declares them; the endpoint
# proxy is no parameter but fixed in the installed function (`Settings.jea_proxy`).
JEA_PARAMETERS: dict[str, tuple[int, int]] = {
    "LookbackHours": (1, 8760), "MaxEvents": (1, 5000), "LogTailBytes": (0, 16 << 20), "CheckEndpoint": (0, 1),
    "EndpointTimeoutSec": (1, 300),
}
JEA_DEFAULTS = {"LookbackHours": 24, "MaxEvents": 50, "LogTailBytes": 32768, "CheckEndpoint": 0,
                "EndpointTimeoutSec": 10}
# RestrictedRemoteServer's own visible commands [Microsoft Learn, "JEA Session Configurations"]; the simulator
# knows their names, not their behaviour.
RESTRICTED_DEFAULTS = ("Clear-Host", "Exit-PSSession", "Get-Command", "Get-FormatData", "Get-Help", "Measure-Object",
                       "Out-Default", "Select-Object")
# ... and their aliases: the built-in aliases whose definition is one of them (InitialSessionState.cs,
# MakeDisallowedEntriesPrivate). The same page also lists `exit`, which is no alias: Enter-PSSession turns a typed
# `exit` into Exit-PSSession on the client (RunspaceRef.cs), so a PSRP client sending `exit` reaches no command.
RESTRICTED_ALIASES = ("cls", "clear", "exsn", "gcm", "measure", "select")
EXCHANGE_CMDLETS = ("Get-OrganizationConfig", "Get-ExchangeServer")
SERVER_MARKER = "# exchange-eems-exporter:collect-server:v1"
POWERSHELL = r'"C:\Windows\System32\WindowsPowerShell\v1.0\powershell.exe"'
NO_LANGUAGE = "The syntax is not supported by this runspace. This can occur if the runspace is in no-language mode."
_RUNTIME_EXCEPTION = ("System.Management.Automation.RuntimeException", "System.SystemException", "System.Exception",
                      "System.Object")


@dataclass(frozen=True)
class Configuration:
    """One registered session configuration: where it is served and what it runs."""

    name: str
    path: str  # "/wsman" (the WinRM service) or "/powershell" (Exchange's IIS application)
    kind: str  # "jea" | "powershell" | "exchange"

    @property
    def resource_uri(self) -> str:
        return f"http://schemas.microsoft.com/powershell/{self.name}"


@dataclass
class Settings:
    """The scenario's `remoting` section: which endpoints exist and how they behave."""

    jea_configuration: str = JEA_CONFIGURATION
    # The installed function (`installed_function`): the version it reports and the collection script it runs.
    # What the Windows model answers depends on the script's text (e.g. which Get-WinEvent form it uses).
    jea_version: str = "exchange-eems-exporter/endpoint/unknown"
    jea_body: str = ""
    jea_proxy: str = ""  # the endpoint proxy written into the function
    jea_outdated: tuple[str, ...] = ()  # servers whose installed endpoint is older
    jea_absent: tuple[str, ...] = ()  # servers where the endpoint was never registered
    rbac_denied: tuple[str, ...] = ()  # Exchange cmdlets the monitoring account's roles do not grant
    # Exchange's /PowerShell takes Kerberos only, as real Exchange does (pypsrp issue #187); a scenario may open it
    # to NTLM to show the rest of that endpoint without a KDC.
    exchange_kerberos_only: bool = True
    # Whether Exchange's runspace offers Select-Object to the account [UNCONFIRMED either way: a restricted runspace
    # has it among its few core commands; whether Exchange's RBAC-built runspace keeps it is not documented].
    exchange_select_object: bool = True
    winrs: bool = True  # False: the fleet refuses WinRS shells, so only PSRP works
    outdated_version: str = "exchange-eems-exporter/endpoint/0000000000000000"


_VERSION_LINE = re.compile(r"^'(exchange-eems-exporter/endpoint/[0-9a-z]+)'\r?$", re.MULTILINE)
_BODY = re.compile(r"^# >>> collect_server\.ps1\r?\n(.*?)^# <<< collect_server\.ps1", re.MULTILINE | re.DOTALL)
_PROXY = re.compile(r"^\$P=@\{.*;Proxy='((?:[^']|'')*)'(?:;ProxyDefaultCredentials=\d)?\}\r?$", re.MULTILINE)


def installed_function(role_capability: str) -> tuple[str, str, str]:
    """(version, script body, endpoint proxy) of the function in a role capability file `windows-endpoint`
    wrote: the file an admin installs on the server, read here as the server would hold it."""
    version, body, proxy = (_VERSION_LINE.search(role_capability), _BODY.search(role_capability),
                            _PROXY.search(role_capability))
    if version is None or body is None or proxy is None:
        raise ValueError("not a role capability written by exchange-eems-exporter windows-endpoint "
                         "(no version line, $P line or collect_server.ps1 body)")
    return version.group(1), body.group(1).replace("\r\n", "\n"), proxy.group(1).replace("''", "'")


class Endpoints:
    """The configurations of one simulated server, and the answers of their commands."""

    def __init__(self, windows_host: Any, settings: Settings) -> None:
        self.windows = windows_host  # windows.WindowsHost of this server
        self.settings = settings
        name = windows_host.server.name.upper()
        configurations = [Configuration("Microsoft.PowerShell", "/wsman", "powershell"),
                          Configuration("Microsoft.Exchange", "/powershell", "exchange")]
        if name not in settings.jea_absent:
            configurations.append(Configuration(settings.jea_configuration, "/wsman", "jea"))
        self._configurations = {(c.path, c.name.lower()): c for c in configurations}
        self.version = settings.outdated_version if name in settings.jea_outdated else settings.jea_version

    def find(self, path: str, resource_uri: str) -> Configuration | None:
        """The configuration a Create names, on the HTTP path it came to; None = not in that catalog."""
        prefix = "http://schemas.microsoft.com/powershell/"
        if not resource_uri.lower().startswith(prefix):
            return None
        return self._configurations.get((path.lower(), resource_uri[len(prefix):].lower()))

    def invoke(self, configuration: Configuration, invocation: Invocation) -> Answer:
        """Statements run in order, as in a script: an error that ends one statement (a command not found, a
        parameter that does not bind) is written to the error stream and the next statement runs; in the last
        statement it fails the pipeline. A script in a no-language runspace fails the whole pipeline where it
        stands, as the recorded JEA session shows (our reading of the rest: UNCONFIRMED)."""
        result = Answer()
        last = len(invocation.statements) - 1
        for index, statement in enumerate(invocation.statements):
            answer = self._statement(configuration, *statement[0])
            for command in statement[1:]:
                answer = _select(answer, *command, available=self.settings.exchange_select_object) \
                    if configuration.kind == "exchange" else Answer(failure=_not_simulated("a pipeline of several commands"))
            result.output += answer.output
            result.errors += answer.errors
            result.runtime_seconds += answer.runtime_seconds
            if answer.failure is None:
                continue
            if index == last or answer.failure.error_id == "ScriptsNotAllowed":
                result.failure = answer.failure
                break
            result.errors.append(answer.failure)
        return result

    def _statement(self, configuration: Configuration, name: str, is_script: bool, parameters: list) -> Answer:
        if configuration.kind == "powershell":
            return self._powershell(name, is_script)
        if is_script:  # NoLanguage: JEA's RestrictedRemoteServer and Exchange's endpoint alike
            return Answer(failure=_scripts_not_allowed(name))
        if configuration.kind == "jea":
            return self._jea(name, parameters)
        return self._exchange(name, parameters)

    # ------------------------------------------------------------ the JEA function

    def _jea(self, name: str, parameters: list[tuple[str | None, Any]]) -> Answer:
        if name.lower() != JEA_FUNCTION.lower():
            if name.lower() in (c.lower() for c in RESTRICTED_DEFAULTS + RESTRICTED_ALIASES):
                return Answer(failure=_not_simulated(name))
            return Answer(failure=_command_not_found(name))
        values = dict(JEA_DEFAULTS)
        for key, value in parameters:
            declared = next((p for p in JEA_PARAMETERS if key is not None and p.lower() == key.lower()), None)
            if declared is None:
                return Answer(failure=_parameter_not_found(JEA_FUNCTION, key))
            converted = _convert(declared, value)
            if isinstance(converted, ErrorSpec):
                return Answer(failure=converted)
            values[declared] = converted
        proxy = self.settings.jea_proxy.replace("'", "''")
        # the installed function offers no default credentials to its proxy (windows_endpoint.py, issue 24.17)
        line = "$P=@{" + ";".join(f"{k}={v}" for k, v in values.items()) + f";Proxy='{proxy}';ProxyDefaultCredentials=0}}"
        output = self.windows.run_function(f"{SERVER_MARKER}\n{line}\n{self.settings.jea_body}")
        text = b"".join(output.stdout_chunks).decode("utf-8", "replace").rstrip("\r\n")
        answer = Answer([self.version, text] if text else [self.version], runtime_seconds=output.runtime_seconds)
        if output.exit_code != 0:  # what the script printed before it failed still went out
            answer.failure = _runtime_error(_clixml_text(output.stderr))
        return answer

    # ------------------------------------------------------------ Microsoft.PowerShell

    def _powershell(self, text: str, is_script: bool) -> Answer:
        if not is_script or not text.lstrip("\ufeff").startswith("# exchange-eems-exporter:"):
            return Answer(failure=_not_simulated(text.split()[0] if text.split() else "an empty command"))
        output = self.windows(_encoded(text))
        result = Answer(runtime_seconds=output.runtime_seconds)
        stdout = b"".join(output.stdout_chunks).decode("utf-8", "replace").rstrip("\r\n")
        if stdout:
            result.output.append(stdout)
        if output.exit_code != 0:
            result.failure = _runtime_error(_clixml_text(output.stderr))
        return result

    # ------------------------------------------------------------ Microsoft.Exchange

    def _exchange(self, name: str, parameters: list[tuple[str | None, Any]]) -> Answer:
        cmdlet = next((c for c in EXCHANGE_CMDLETS if c.lower() == name.lower()), None)
        if cmdlet is None or cmdlet in self.settings.rbac_denied:
            return Answer(failure=_command_not_found(name))
        allowed = {"Get-OrganizationConfig": (), "Get-ExchangeServer": ("Identity",)}[cmdlet]
        identity = None
        for key, value in parameters:
            declared = next((p for p in allowed if key is not None and p.lower() == key.lower()), None)
            if declared is None:
                return Answer(failure=_parameter_not_found(cmdlet, key))
            identity = str(value)
        if cmdlet == "Get-OrganizationConfig":
            return Answer([_organization_config(self.windows.organization)], runtime_seconds=0.2)
        objects, errors = [], []
        for server, entry in self.windows.organization_servers():
            if identity is None or identity.lower() in (server.name.lower(), server.fqdn.lower()):
                objects.append(_exchange_server(server, _Facts(entry), self.windows.organization))
        if identity is not None and not objects:
            errors.append(_server_not_found(identity, self.windows.organization.domain))
        return Answer(objects, errors, runtime_seconds=0.3)


# ---------------------------------------------------------------- Select-Object on Exchange's endpoint


def _select(answer: Answer, name: str, is_script: bool, parameters: list, *, available: bool = True) -> Answer:
    """`... | Select-Object -Property A,B`: Exchange's runspace offers Select-Object among the few core cmdlets
    of a restricted session [UNCONFIRMED for /PowerShell]. Each object becomes a PSCustomObject named
    `Selected.<type>` with only those properties; a complex value goes out as its ToString, as PowerShell's
    default serialization depth of 1 does for a selected object [UNCONFIRMED], a list as a list.
    Not `available` (`remoting.exchange.select_object: false`): the pipeline's commands are looked up before any
    runs, so the whole statement fails with CommandNotFoundException and nothing of the first command goes out."""
    if not available and name.lower() in ("select-object", "select"):
        return Answer(failure=_command_not_found(name))
    if answer.failure is not None:
        return answer
    if is_script or name.lower() not in ("select-object", "select"):
        return Answer(failure=_not_simulated(f"'{name}' after another command"))
    names: list[str] = []
    for key, value in parameters:
        if key is not None and key.lower() != "property":
            return Answer(failure=_not_simulated(f"Select-Object -{key}"))
        names += [str(v) for v in (value if isinstance(value, list) else [value])]
    selected = []
    for obj in answer.output:
        if not isinstance(obj, PSObject):
            continue
        out = PSObject()
        out.PSObject.type_names = [f"Selected.{obj.PSObject.type_names[0]}", "System.Management.Automation.PSCustomObject",
                                   "System.Object"]
        props = {p.name.lower(): p for p in obj.PSObject.adapted_properties}
        for wanted in names:
            prop = props.get(wanted.lower())
            value = prop.get_value(obj) if prop is not None else None
            if isinstance(value, PSObject) and not isinstance(value, (list, int, str, datetime)):
                value = value.PSObject.to_string
            elif isinstance(value, list):
                value = [str(v) for v in value]
            out.PSObject.extended_properties.append(PSNoteProperty(prop.name if prop else wanted, value))
        selected.append(out)
    return Answer(selected, answer.errors, runtime_seconds=answer.runtime_seconds)


# ---------------------------------------------------------------- the function's parameters


def _convert(name: str, value: Any) -> Any:
    """PowerShell's binding of one value to an [int] parameter with ValidateRange."""
    lower, upper = JEA_PARAMETERS[name]
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not re.fullmatch(r"\s*-?\d+\s*", str(value)):
        return ErrorSpec(
            f"Cannot process argument transformation on parameter '{name}'. Cannot convert value \"{value}\" to type "
            "\"System.Int32\". Error: \"Input string was not in a correct format.\"",
            f"ParameterArgumentTransformationError,{JEA_FUNCTION}", int(ErrorCategory.InvalidData),
            ("System.Management.Automation.ParameterBindingArgumentTransformationException",
             "System.Management.Automation.ParameterBindingException", *_RUNTIME_EXCEPTION),
            None, "ParameterBindingArgumentTransformationException")
    number = int(str(value))
    if number < lower:
        return ErrorSpec(
            f"Cannot validate argument on parameter '{name}'. The {number} argument is less than the minimum allowed "
            f"range of {lower}. Supply an argument that is greater than or equal to {lower} and then try the command "
            "again.",
            f"ParameterArgumentValidationError,{JEA_FUNCTION}", int(ErrorCategory.InvalidData),
            ("System.Management.Automation.ParameterBindingValidationException",
             "System.Management.Automation.ParameterBindingException", *_RUNTIME_EXCEPTION),
            None, "ParameterBindingValidationException")
    if number > upper:
        return ErrorSpec(
            f"Cannot validate argument on parameter '{name}'. The {number} argument is greater than the maximum "
            f"allowed range of {upper}. Supply an argument that is less than or equal to {upper} and then try the "
            "command again.",
            f"ParameterArgumentValidationError,{JEA_FUNCTION}", int(ErrorCategory.InvalidData),
            ("System.Management.Automation.ParameterBindingValidationException",
             "System.Management.Automation.ParameterBindingException", *_RUNTIME_EXCEPTION),
            None, "ParameterBindingValidationException")
    return number


def _encoded(script: str) -> str:
    """The command line WinRS would carry for this script: the same path through WindowsHost as a WinRS poll."""
    return f"{POWERSHELL} -NoProfile -NonInteractive -EncodedCommand {base64.b64encode(script.encode('utf-16-le')).decode()}"


def _clixml_text(stderr: bytes) -> str:
    """The error text of powershell.exe's CLIXML stderr (or the plain text it wrote), in the console's code page
    (437, as windows.py writes it)."""
    text = stderr.decode("cp437")
    parts = re.findall(r'<S S="Error">(.*?)</S>', text, re.S)
    if parts:
        text = "".join(parts).replace("_x000D__x000A_", "\n")
        text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return text.strip() or "The command failed."


# ---------------------------------------------------------------- ErrorRecords


def _command_not_found(name: str) -> ErrorSpec:
    return ErrorSpec(
        f"The term '{name}' is not recognized as the name of a cmdlet, function, script file, or operable program. "
        "Check the spelling of the name, or if a path was included, verify that the path is correct and try again.",
        "CommandNotFoundException", int(ErrorCategory.ObjectNotFound),
        ("System.Management.Automation.CommandNotFoundException", *_RUNTIME_EXCEPTION), name, "CommandNotFoundException")


def _scripts_not_allowed(text: str) -> ErrorSpec:
    """As the recorded JEA session answers a script (pypsrp test_psrp_with_jea_configuration.yml)."""
    return ErrorSpec(NO_LANGUAGE, "ScriptsNotAllowed", int(ErrorCategory.ParserError),
                     ("System.Management.Automation.ParseException", *_RUNTIME_EXCEPTION), text, "ParseException")


def _parameter_not_found(command: str, name: str | None) -> ErrorSpec:
    if name is None:
        message = "A positional parameter cannot be found that accepts argument."
        error_id = f"PositionalParameterNotFound,{command}"
    else:
        message = f"A parameter cannot be found that matches parameter name '{name}'."
        error_id = f"NamedParameterNotFound,{command}"
    return ErrorSpec(message, error_id, int(ErrorCategory.InvalidArgument),
                     ("System.Management.Automation.ParameterBindingException", *_RUNTIME_EXCEPTION), None,
                     "ParameterBindingException")


def _server_not_found(identity: str, domain: str) -> ErrorSpec:
    """Exchange's answer for an identity it cannot find (text UNCONFIRMED; the exception type is Exchange's)."""
    return ErrorSpec(
        f"The operation couldn't be performed because object '{identity}' couldn't be found on 'DC01.{domain}'.",
        "ManagementObjectNotFoundException", int(ErrorCategory.NotSpecified),
        ("Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException", "System.Exception",
         "System.Object"), identity, "ManagementObjectNotFoundException")


def _runtime_error(message: str) -> ErrorSpec:
    return ErrorSpec(message, "RuntimeException", int(ErrorCategory.OperationStopped), _RUNTIME_EXCEPTION, None,
                     "RuntimeException")


def _not_simulated(what: str) -> ErrorSpec:
    """Something a real endpoint would run that this simulator does not model: said plainly, never faked."""
    return ErrorSpec(f"The simulator does not run {what}.", "NotSimulated", int(ErrorCategory.NotImplemented),
                     _RUNTIME_EXCEPTION, what, "NotImplementedException")


# ---------------------------------------------------------------- Exchange's objects

_CLIXML = "http://schemas.microsoft.com/powershell/2004/04"
_CLIENT_SIDE = ("PSComputerName", "RunspaceId", "PSShowComputerName")  # added by the receiving client, not sent
# The names the captured objects carry, replaced by the scenario's.
_CAPTURED_SERVER, _CAPTURED_DOMAIN, _CAPTURED_ORG = "SOLO-E19A", "Solo.com", "SoloORG"
# ServerRole values: the bits of msExchCurrentServerRoles (LdapTools' ServerRole enum; Mailbox = 2 also in the capture).
_SERVER_ROLES = {"Mailbox": 2, "ClientAccess": 4, "Edge": 64}


def _template(name: str) -> str:
    return resources.files("simulator").joinpath("data", "exchange", name).read_text(encoding="utf-8-sig")


_TEMPLATES = {"server": _template("GetExchangeServer.xml"), "organization": _template("GetOrganizationConfig.xml")}


def _captured(kind: str, replacements: dict[str, str]) -> PSObject:
    """The captured object with names replaced, deserialised, and its type names as the server sends them."""
    text = _TEMPLATES[kind]
    for old, new in replacements.items():
        text = re.sub(re.escape(old), new, text, flags=re.IGNORECASE)
    root = ET.fromstring(text)
    for element in root.iter():
        element.tag = element.tag.replace(f"{{{_CLIXML}}}", "")
    value = deserialize(root[0], _NoSecureStrings())
    _as_sent(value, set())
    value.PSObject.extended_properties[:] = [p for p in value.PSObject.extended_properties if p.name not in _CLIENT_SIDE]
    return value


def _as_sent(value: Any, seen: set[int]) -> None:
    """A deserialiser prefixes every type name with `Deserialized.`; the sending server does not. Dates go out in
    .NET's form (`_DotNetDateTime`)."""
    if not isinstance(value, PSObject) or id(value) in seen:
        return
    seen.add(id(value))
    value.PSObject.type_names = [t.removeprefix("Deserialized.") for t in value.PSObject.type_names]
    for prop in [*value.PSObject.adapted_properties, *value.PSObject.extended_properties]:
        inner = prop.get_value(value)
        if isinstance(inner, PSDateTime) and not isinstance(inner, _DotNetDateTime):
            prop.set_value(_DotNetDateTime.of(inner), value)
            continue
        _as_sent(inner, seen)
        if isinstance(inner, list):
            for item in inner:
                _as_sent(item, seen)


def _set(obj: PSObject, name: str, value: Any, after: str | None = None) -> None:
    """Replace an adapted property's value, or add it after another (a property the capture lacks)."""
    props = obj.PSObject.adapted_properties
    for prop in props:
        if prop.name == name:
            prop.set_value(value, obj)
            return
    index = next((i + 1 for i, p in enumerate(props) if p.name == after), len(props))
    note = PSNoteProperty(name)
    props.insert(index, note)
    note.set_value(value, obj)


def _typed(value: Any, template: Any, text: str) -> Any:
    """`value` with the type names of the captured `template` object and `text` as its ToString."""
    value.PSObject.type_names = list(template.PSObject.type_names)
    value.PSObject.to_string = text
    return value


def _string_list(values: list[str], template: Any) -> Any:
    """A MultiValuedProperty of strings; an empty one is sent as Nil, as the capture shows."""
    items = [v for v in values if v is not None]
    if not items:
        return None
    return _typed(PSList(items), template, " ".join(items))


class _Facts(dict):
    """A server's entry, hashable by its values: the objects built from equal facts are equal, so they are
    built once (deserialising the captured object takes about 60 ms) and never changed afterwards."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(repr(sorted(self.items())))


@functools.lru_cache(maxsize=4096)
def _exchange_server(server: Any, entry: _Facts, organization: Any) -> PSObject:
    obj = _captured("server", {_CAPTURED_SERVER: server.name, _CAPTURED_DOMAIN: organization.domain,
                               _CAPTURED_ORG: organization.name})
    obj.PSObject.to_string = server.name
    _set(obj, "Name", server.name)
    _set(obj, "Fqdn", server.fqdn)
    major, minor, build, revision = (int(p) for p in server.build.split("."))
    version = obj.AdminDisplayVersion
    version.PSObject.to_string = entry["admin_display_version"]
    for key, number in (("Major", major), ("Minor", minor), ("Build", build), ("Revision", revision)):
        _set(version, key, PSInt(number))
    role = _typed(PSInt(_SERVER_ROLES[server.role]), obj.ServerRole, server.role)
    _set(obj, "ServerRole", role)
    _set(obj, "IsEdgeServer", PSBool(server.role == "Edge"))
    _set(obj, "IsMailboxServer", PSBool(server.role == "Mailbox"))
    _set(obj, "MitigationsEnabled", entry["mitigations_enabled"])
    applied_time = entry.get("mitigations_applied_time")
    _set(obj, "MitigationsAppliedTime", _datetime(applied_time.time) if applied_time else None, after="MitigationsEnabled")
    template = obj.StaticDomainControllers  # a MultiValuedProperty[string] of the capture
    _set(obj, "MitigationsApplied", _string_list(entry["mitigations_applied"], template))
    _set(obj, "MitigationsBlocked", _string_list(entry["mitigations_blocked"], template))
    _set(obj, "DataCollectionEnabled", entry["data_collection_enabled"])
    _set(obj, "InternetWebProxy", _uri(entry["internet_web_proxy"]) if entry["internet_web_proxy"] else None)
    return obj


@functools.lru_cache(maxsize=64)
def _organization_config(organization: Any) -> PSObject:
    obj = _captured("organization", {_CAPTURED_DOMAIN: organization.domain, _CAPTURED_ORG: organization.name})
    obj.PSObject.to_string = organization.name
    _set(obj, "Name", organization.name)
    _set(obj, "MitigationsEnabled", organization.mitigations_enabled)
    return obj


class _DotNetDateTime(PSDateTime):
    """A DateTime whose year is written with four digits, as .NET writes `<DT>`: psrpcore formats with
    `strftime("%Y")`, which glibc writes unpadded, so the captured organization's DateTime.MinValue fields
    (`0001-01-01T00:00:00`) went out as `1-01-01T00:00:00`, which no client parses."""

    @classmethod
    def of(cls, value: datetime) -> "_DotNetDateTime":
        dotnet = cls(value.year, value.month, value.day, value.hour, value.minute, value.second, value.microsecond,
                     tzinfo=value.tzinfo)
        dotnet.nanosecond = getattr(value, "nanosecond", 0)
        return dotnet

    def strftime(self, fmt: str) -> str:
        return super().strftime(fmt.replace("%Y", f"{self.year:04d}"))


def _datetime(value: datetime) -> PSDateTime:
    return _DotNetDateTime.of(value)


def _uri(text: str) -> PSObject:
    """InternetWebProxy is a System.Uri; sent as its string form with the Uri's type names [UNCONFIRMED]."""
    obj = PSObject()
    obj.PSObject.type_names = ["System.Uri", "System.Object"]
    obj.PSObject.to_string = text
    obj.PSObject.adapted_properties.append(PSNoteProperty("AbsoluteUri", text))
    obj.PSObject.adapted_properties.append(PSNoteProperty("OriginalString", text))
    return obj


class _NoSecureStrings(PSCryptoProvider):
    """The captured objects hold no SecureString; the deserialiser still wants a cipher."""

    def decrypt(self, value: str) -> str:
        raise ValueError("the captured Exchange objects hold no SecureString")

    def encrypt(self, value: str) -> str:
        raise ValueError("the captured Exchange objects hold no SecureString")
