"""One simulated Exchange server's Windows: answers a WinRS command line the way cmd.exe and PowerShell 5.1 would.

Only the exporter's two collection scripts and its diagnose script (answered by diagnose.py) are "run"; they are
recognised by their marker line, and the `$P=@{...}` line is read for its parameters. The JSON is written the way Windows PowerShell 5.1
`ConvertTo-Json -Compress` writes it (\\/Date(ms)\\/ dates, unwrapped one-element arrays, \\u0027 escapes), so the
exporter's parser is tested against the quirks it will meet. Anything else gets the error Windows would give.
"""

from __future__ import annotations

import base64
import binascii
import json
import ntpath
import re
import threading
import zlib
from importlib import resources
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http import HTTPStatus
from typing import Any

import yaml

from . import diagnose, eems, eventlog, language, logfolder, restricted, timezones
from .host import CommandOutput, current_logon

SERVER_MARKER = "# exchange-eems-exporter:collect-server:v1"
ORGANIZATION_MARKER = "# exchange-eems-exporter:collect-organization:v1"
STDOUT_CHUNK = 4096
PARAMETERS = ("LookbackHours", "MaxEvents", "LogTailBytes", "CheckEndpoint", "EndpointTimeoutSec", "Proxy")
SERVICE_STATUS = ("Stopped", "StartPending", "StopPending", "Running", "ContinuePending", "PausePending", "Paused")
START_TYPES = ("Boot", "System", "Automatic", "Manual", "Disabled")
DATE_STYLES = ("ms", "ms_offset", "iso", "getdate")
ENUM_STYLES = ("strings", "integers")
ARRAY_STYLES = ("arrays", "unwrapped")
VERSION_STYLES = ("padded", "plain")
ACCOUNTS = ("admin", "least_privilege")
# What Invoke-WebRequest (5.1, HttpWebRequest) throws per failure: WebExceptionStatus name, .NET's message.
ENDPOINT_FAILURES = {
    "timeout": ("Timeout", "The operation has timed out.", False),
    "tls_validation": ("TrustFailure", "The underlying connection was closed: Could not establish trust relationship "
                       "for the SSL/TLS secure channel.", False),
    "revocation": ("TrustFailure", "The underlying connection was closed: Could not establish trust relationship "
                   "for the SSL/TLS secure channel.", True),  # the script's retry without revocation succeeds
    "dns": ("NameResolutionFailure", "The remote name could not be resolved: 'officeclient.microsoft.com'", False),
}
DENIABLE = ("service", "events", "log")

# The collection script offers the account's default credentials to a proxy only when its parameter asks (issue
# 24 finding 17), and says which proxy it used.
_ASKS_BEFORE_OFFERING_CREDENTIALS = re.compile(r"if\(\$P\.ProxyDefaultCredentials\)\{\$a\.ProxyUseDefaultCredentials=\$true\}")
_REPORTS_PROXY = re.compile(r"proxy_source=")
# The collection script times its stages (issue 17, R5).
_MEASURES_STAGES = re.compile(r"\$r\.stages\.\w+=\((?:Microsoft\.PowerShell\.Utility\\)?Measure-Command\b")
# The collection script sends each event's insertion strings (issue 17, R6).
_READS_INSERTION_STRINGS = re.compile(r"\$_\.Properties\b")
# The collection script keeps this many error records per part (review R11), and says how many it met in all.
_KEEPS_ERRORS = re.compile(r"function Fail\(\$part,\$e\)\{[^}]*?-(ge|gt) (\d+)\)\{return\}")
# The collection script sends the server's UTC offset changes over its lookback (a script before it did not).
SENDS_UTC_OFFSETS = re.compile(r"\$r\.utc_offsets=")
_COUNTS_ERRORS = re.compile(r"^\$r\.error_counts=\$n\b", re.MULTILINE)
# The collection script treats an empty FileVersion as a failure (issue 17, R7).
_EMPTY_VERSION_THROWS = re.compile(r"if\(!\$r\.exsetup_version\)\{throw\b")
_READS_COMPONENT_STATES = re.compile(r"ServerComponentStates\\ServerWideOffline")
# The registry entries of ServerWideOffline per `maintenance` choice (scenario.py): (requester, state). Setup writes
# Functional (Microsoft's serialized Get-ServerComponentState of freshly installed servers, CSS-Exchange's HealthChecker
# tests); `maintenance` adds the admin's request, `functional` is what third-party posts report after a failed CU.
MAINTENANCE = {"none": (("Functional", 1),), "maintenance": (("Functional", 1), ("Maintenance", 0)),
               "functional": (("Functional", 0),), "other_format": (("Functional", 1), ("Maintenance", 0)),
               "absent": ()}

# powershell.exe switches that take a value, and those that do not (PowerShell accepts unique prefixes).
_PS_VALUE_SWITCHES = ("executionpolicy", "windowstyle", "inputformat", "outputformat", "version", "configurationname", "file")
_PS_FLAG_SWITCHES = ("noprofile", "noninteractive", "nologo", "noexit", "sta", "mta")


class Clock:
    """The scenario's "now": pinned for deterministic tests, else real UTC time."""

    def __init__(self, pinned: datetime | None = None):
        self.pinned = pinned

    def now(self) -> datetime:
        return self.pinned if self.pinned is not None else datetime.now(timezone.utc)


@dataclass(frozen=True)
class ProxyRequest:
    """One request of the endpoint check as a proxy receives it."""

    proxy: str
    url: str
    default_credentials: bool  # the monitoring account's credentials offered (ProxyUseDefaultCredentials)


@dataclass(frozen=True)
class OutputFaults:
    script_runtime: float | None = None  # seconds; None = 0.3 (server script) / 2.0 (organization script)
    garbage_output: bool = False
    truncated_output: bool = False
    oversized_output: int | None = None  # pad the JSON to at least this many bytes
    exit_code: int = 0


@dataclass(frozen=True)
class WindowsServer:
    """Everything the two scripts can observe on one server."""

    name: str
    fqdn: str
    build: str
    role: str  # Mailbox | Edge
    service_status: str | None  # None = MSExchangeMitigation not installed
    service_start_type: str | None
    eems: eems.EemsSetup | None  # None = no EEMS on this build/role
    mitigations_enabled: bool | None
    applied: tuple[str, ...]
    blocked: tuple[str, ...]
    data_collection_enabled: bool | None
    internet_web_proxy: str | None
    endpoint_status: int
    log_file: bool
    events: bool
    build_source: str  # exsetup | registry | none | empty (FileVersion empty, no error)
    date_style: str
    enum_style: str
    output: OutputFaults
    locale: str = "en-US"
    denied: tuple[str, ...] = ()  # what the monitoring account may not read: service, events, log
    unreadable_event: str | None = None  # "exception": the newest event cannot be formatted (an error record);
    # "null_message": no event's text can be formatted (message file or locale missing), no error
    winhttp_proxy: str | None = None  # netsh winhttp proxy the endpoint check goes through
    winhttp_proxy_answers: int = 200  # what that proxy answers the monitoring account (407: needs auth)
    endpoint_failure: str | None = None  # a key of ENDPOINT_FAILURES: how the endpoint check fails
    array_style: str = "arrays"
    version_style: str = "padded"
    time_zone: timezones.Zone = timezones.fixed(timedelta(0))  # the server's zone (log_time_zone or time_zone)
    clock_offset: timedelta = timedelta(0)  # the server's clock minus the scenario clock: all it reports reads it
    log_other_file: bool = False  # the log folder also holds a non-log file, rewritten at every check
    language_mode: str = "full"  # full | constrained (AppLocker/WDAC script enforcement: ConstrainedLanguage)
    application_log_events: int | None = None  # records in the Application log; None: its size is not modelled
    event_read_errors: int = 0  # reads of the Application log that fail, each written as an error (eventlog.py)
    maintenance: str = "none"  # a key of MAINTENANCE: the registry's ServerWideOffline entries


@dataclass(frozen=True)
class Organization:
    name: str
    domain: str
    mitigations_enabled: bool
    server: str | None  # the server the exporter should ask (for the CLI and docs)
    double_hop: bool


class WindowsHost:
    """The `run` callable of one SimulatedHost."""

    def __init__(self, server: WindowsServer, organization: Organization, fleet: list[WindowsServer], clock: Clock):
        self.server = server
        self.organization = organization
        self.fleet = fleet  # what Get-ExchangeServer returns; filled by the scenario loader
        self.clock = clock
        self._cold = True  # the first powershell.exe "prepares modules for first use"
        self.proxy_requests: list[ProxyRequest] = []  # what proxies received from the endpoint check
        self._lock = threading.Lock()

    def __call__(self, command_line: str) -> CommandOutput:
        try:
            return self._answer(command_line)
        except Exception as exc:  # the contract: never raise; fail like a crashed script
            return _crashed(exc)

    def run_function(self, script: str) -> CommandOutput:
        """`script` run as the body of a role capability's function in a JEA (RestrictedRemoteServer) session: as
        powershell.exe runs it, but its commands resolve in that session, proxies included (restricted.py)."""
        try:
            return self._run_script(script, in_jea=True)
        except Exception as exc:
            return _crashed(exc)

    # ------------------------------------------------------------ command line

    def _answer(self, command_line: str) -> CommandOutput:
        tokens = re.findall(r'"[^"]*"|\S+', command_line)
        if not tokens:
            return CommandOutput([], b"The syntax of the command is incorrect.\r\n", 1)
        program = ntpath.basename(tokens[0].strip('"')).lower()
        if program in ("powershell", "powershell.exe"):
            return self._powershell(tokens[1:])
        if program in ("hostname", "hostname.exe"):
            return CommandOutput([f"{self.server.name}\r\n".encode()])
        message = f"'{tokens[0]}' is not recognized as an internal or external command,\r\noperable program or batch file.\r\n"
        return CommandOutput([], message.encode("ascii", "replace"), 1)

    def _powershell(self, args: list[str]) -> CommandOutput:
        i = 0
        while i < len(args):
            arg = args[i]
            if not arg.startswith(("-", "/")):
                return self._run_script(" ".join(args[i:]))
            name = arg[1:].lower()
            if name in ("ec",) or (name and "encodedcommand".startswith(name)):
                if i + 1 >= len(args):
                    return _host_error("Cannot process the command because of a missing parameter. A command must follow -EncodedCommand.")
                return self._run_encoded(args[i + 1])
            if name and "command".startswith(name):
                return self._run_script(" ".join(args[i + 1 :]))
            if name == "ep" or (name and any(s.startswith(name) for s in _PS_VALUE_SWITCHES)):
                if name and "file".startswith(name):
                    value = args[i + 1] if i + 1 < len(args) else ""
                    return _host_error(f"The argument '{value}' to the -File parameter does not exist. Provide the path to an existing '.ps1' file as an argument to the -File parameter.")
                i += 2
                continue
            if name and any(s.startswith(name) for s in _PS_FLAG_SWITCHES):
                i += 1
                continue
            return self._run_script(" ".join(args[i:]))
        return CommandOutput([])

    def _run_encoded(self, value: str) -> CommandOutput:
        try:
            script = base64.b64decode(value.strip('"'), validate=True).decode("utf-16-le")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return _host_error("Cannot process the command because the value specified with -EncodedCommand is not properly encoded. The value must be Base64 encoded.")
        return self._run_script(script)

    # ------------------------------------------------------------ scripts

    def _run_script(self, script: str, *, in_jea: bool = False) -> CommandOutput:
        lines = [line.strip() for line in script.lstrip("\ufeff").splitlines() if line.strip()]
        if not lines:
            return CommandOutput([])
        if self.server.language_mode == language.CONSTRAINED:
            refusal = language.first_refusal(script)
            if refusal is not None:
                message = LOCALES[self.server.locale]["constrained"].get(refusal.error_id)
                return self._finish(None, _clixml_errors(language.error_lines(refusal, message)), 1, 0.3)
        if lines[0] == SERVER_MARKER:
            params = _parse_parameters(lines[1] if len(lines) > 1 else "")
            if isinstance(params, str):
                return self._finish(None, _clixml_errors(params.split("\r\n")), 1, 0.0)
            document, query_seconds = self._server_json(params, script, in_jea)
            return self._finish(document, b"", 0, 0.3, query_seconds)
        if lines[0] == ORGANIZATION_MARKER:
            return self._finish(self._organization_json(), b"", 0, 2.0)
        if lines[0] == diagnose.MARKER:
            document = diagnose.facts(self.server, self.clock.now() + self.server.clock_offset, lines[1] if len(lines) > 1 else "", script)
            if isinstance(document, str):
                return self._finish(None, _clixml_errors([document]), 1, 0.0)
            return self._finish(document, b"", 0, 1.0)
        first = next((line for line in lines if not line.startswith("#")), None)
        if first is None:
            return CommandOutput([])
        word = first.split()[0].split(";")[0]
        return CommandOutput([], _clixml_errors(_not_recognized(word, first)), 1)

    def _finish(self, document: Any, stderr: bytes, exit_code: int, default_runtime: float,
                query_seconds: float = 0.0) -> CommandOutput:
        """The command's output; it stays Running for the script's own time plus what its event query costs."""
        faults = self.server.output
        runtime = (faults.script_runtime if faults.script_runtime is not None else default_runtime) + query_seconds
        with self._lock:
            cold, self._cold = self._cold, False
        if cold and not stderr:
            stderr = _PROGRESS
        if document is None:
            return CommandOutput([], stderr, exit_code, runtime)
        if faults.oversized_output:
            text = ps_json(document)
            if len(text) < faults.oversized_output:
                document = {**document, "padding": "x" * (faults.oversized_output - len(text))}
        text = ps_json(document)
        if faults.garbage_output:
            text = _formatted_list(document)
        out = text.encode("ascii", "replace")
        out = out[: len(out) // 2] if faults.truncated_output else out + b"\r\n"
        chunks = [out[i : i + STDOUT_CHUNK] for i in range(0, len(out), STDOUT_CHUNK)]
        return CommandOutput(chunks, stderr, faults.exit_code or exit_code, runtime)

    def _server_json(self, p: dict[str, Any], script: str, in_jea: bool = False) -> tuple[dict[str, Any], float]:
        """What collect_server.ps1 prints on this server, errors as Windows PowerShell 5.1 raises them for the
        queries this script sends (and, `in_jea`, for the commands a JEA session gives it)."""
        s = self.server
        now = self.clock.now() + s.clock_offset  # the server's clock: its now, its event and log times
        refused = restricted.refusals(script) if in_jea else {}
        texts = LOCALES[s.locale]
        install = "C:\\Program Files\\Microsoft\\Exchange Server\\V15"
        errors = _Failures(_kept_per_part(script))
        version = source = None
        if s.build_source == "empty" and _EMPTY_VERSION_THROWS.search(script):
            # ExSetup.exe's FileVersion is empty (an unreadable file): the script throws, its registry fallback
            # reads the same file; `throw 'text'` is a RuntimeException whose id is its text, category OperationStopped
            text = "ExSetup.exe has no FileVersion"
            errors.append(_error("build", text, "OperationStopped", "System.Management.Automation.RuntimeException", text))
        elif s.build_source == "empty":
            version, source = "", "exsetup"  # a script that does not check: an empty string, and no error
        elif s.build_source == "none":
            path = "HKLM:\\SOFTWARE\\Microsoft\\ExchangeServer\\v15\\Setup"
            errors.append(_error("build", "PathNotFound,Microsoft.PowerShell.Commands.GetItemPropertyCommand", "ObjectNotFound",
                                 "System.Management.Automation.ItemNotFoundException", texts["path_not_found"].format(path=path)))
        else:
            version, source = _file_version(s.build, s.version_style), s.build_source
        service_key = service = None
        if s.service_status is None:
            key = "HKLM:\\SYSTEM\\CurrentControlSet\\Services\\MSExchangeMitigation"
            errors.append(_error("service_key", "PathNotFound,Microsoft.PowerShell.Commands.GetItemPropertyCommand", "ObjectNotFound",
                                 "System.Management.Automation.ItemNotFoundException", texts["path_not_found"].format(path=key)))
        else:
            service_key = {"start": START_TYPES.index(s.service_start_type)}
        if s.service_status is None or "service" in s.denied:
            # 5.1's Get-Service answers an access-denied OpenService with "no service found" (Service.cs)
            errors.append(_error("service", "NoServiceFoundForGivenName,Microsoft.PowerShell.Commands.GetServiceCommand",
                                 "ObjectNotFound", "Microsoft.PowerShell.Commands.ServiceCommandException",
                                 texts["no_service"].format(service="MSExchangeMitigation")))
        elif s.enum_style == "integers":
            service = {"status": SERVICE_STATUS.index(s.service_status) + 1, "start_type": START_TYPES.index(s.service_start_type)}
        else:
            service = {"status": s.service_status, "start_type": s.service_start_type}
        reads_states = _READS_COMPONENT_STATES.search(script) is not None
        component_states = self._component_states(now, texts, errors) if reads_states else None
        if "events" in refused:  # the pipeline fails as it binds, before Get-WinEvent reads anything
            events, query_seconds = [], 0.0
            errors.append(_proxy_refusal("events", refused["events"], texts))
        else:
            events, query_seconds = self._events(p, now, texts, errors, eventlog.query_form(script), script)
        folder, logs = self._logs(p, now, texts, install, errors, script)
        if "log" in refused and logs:  # the listing's pipeline fails after Test-Path found the folder
            logs = []
            errors.append(_proxy_refusal("log", refused["log"], texts))
        document: dict[str, Any] = {
            "schema": 1,
            "computer": s.name.upper(),
            "now": self._date(now),
            "utc_offset_minutes": int(s.time_zone.offset(now).total_seconds() // 60),
            "culture": {"name": s.locale, "ui": s.locale, "date": texts["culture"]["date"], "time": texts["culture"]["time"],
                        "am": texts["culture"]["am"], "pm": texts["culture"]["pm"]},
            "exsetup_version": version,
            "build_source": source,
            "edge": s.role == "Edge",
            "service_key": service_key,
            "service": service,
            "events": self._array(events),
            "log_folder": folder,
            "logs": self._array(logs),
            "errors": self._array(errors),
        }
        if reads_states:
            document["component_states"] = component_states
        constrained = s.language_mode == language.CONSTRAINED
        document["language_mode"] = "ConstrainedLanguage" if constrained else "FullLanguage"
        endpoints = self._endpoints(p, script) if p["CheckEndpoint"] and not constrained else []
        if p["CheckEndpoint"] and constrained:  # only the script's FullLanguage branch checks the endpoints
            list.append(errors, _error("endpoint", "ConstrainedLanguage", "SecurityError", "",  # not through Fail
                                       "the endpoint check needs FullLanguage; this session runs in ConstrainedLanguage"))
            document["errors"] = self._array(errors)
        elif p["CheckEndpoint"]:
            document["endpoints"] = self._array(endpoints)
        if _COUNTS_ERRORS.search(script):
            document["error_counts"] = dict(errors.counts)
        if SENDS_UTC_OFFSETS.search(script):
            start = now - timedelta(hours=p["LookbackHours"])
            document["utc_offsets"] = self._array([{"since": self._date(since), "minutes": minutes}
                                                   for since, minutes in timezones.offsets(s.time_zone, start, now)])
        if _MEASURES_STAGES.search(script):
            # Measure-Command around each stage; the simulated ones take what the simulator waits, the endpoint
            # check its requests' durations
            document["stages"] = {"build": 0.012, "service": 0.021, "events": round(0.05 + query_seconds, 6),
                                  "log": 0.034, "endpoint": sum(e["ms"] for e in endpoints) / 1000}
        return document, query_seconds

    def _events(self, p: dict[str, Any], now: datetime, texts: dict[str, Any], errors: list,
                form: str | None, script: str = "") -> tuple[list[dict[str, Any]], float]:
        """The events the script prints, and the seconds its query took."""
        s = self.server
        if form is None:
            return [], 0.0
        found = eventlog.answer(form, s.eems, denied="events" in s.denied, has_events=s.events, now=now,
                                lookback=timedelta(hours=p["LookbackHours"]), max_events=p["MaxEvents"],
                                log_records=s.application_log_events, read_errors=s.event_read_errors)
        for error, times in found.errors_with_repeats():
            text = texts.get(error.key, LOCALES["en-US"][error.key]).format(provider=eems.PROVIDER,
                                                                            unauthorized=texts["unauthorized"])
            errors.repeat(_error("events", error.error_id.format(text=text), error.category, error.exception, text,
                                 error.inner), times)
        with_data = _READS_INSERTION_STRINGS.search(script or "") is not None
        events = []
        for e in found.events:
            event: dict[str, Any] = {"id": e.id, "time": self._date(e.time),
                                     "message": None if s.unreadable_event == "null_message" else e.message}
            if with_data:
                event["data"] = list(e.data)
            events.append(event)
        if s.unreadable_event == "exception" and events:
            # FormatDescription failed: Get-WinEvent still writes the event, with NoEventMessage, and an error
            # whose id is the exception's (localized) message (GetEventCommand.cs ReadEvents)
            text = texts["format_failed"].format(id=found.events[0].id, provider=eems.PROVIDER)
            events[0]["message"] = texts["event_unreadable"]
            errors.append(_error("events", f"{text},Microsoft.PowerShell.Commands.GetWinEventCommand", "NotSpecified",
                                 "System.Diagnostics.Eventing.Reader.EventLogException", text))
        return events, found.seconds

    def _logs(self, p: dict[str, Any], now: datetime, texts: dict[str, Any], install: str, errors: list,
              script: str) -> tuple[bool, list]:
        s = self.server
        folder = f"{install}\\Logging\\MitigationService"
        if s.eems is None or not s.log_file:
            return False, []
        if "log" in s.denied:
            errors.append(_error("log", "DirUnauthorizedAccessError,Microsoft.PowerShell.Commands.GetChildItemCommand",
                                 "PermissionDenied", "System.UnauthorizedAccessException", texts["path_denied"].format(path=folder)))
            return True, []
        form = logfolder.reader_form(script)
        if form is None:
            return True, []
        since = now - timedelta(hours=p["LookbackHours"])
        files = logfolder.listing(s.eems, now, since, script, s.log_other_file)
        logs = []
        for entry in logfolder.read(form, files, p["LogTailBytes"], since):
            item: dict[str, Any] = {"name": entry.name, "last_write": self._date(entry.last_write), "tail": entry.tail}
            if entry.length is not None:
                item.update(length=entry.length, encoding=entry.encoding)
            logs.append(item)
        return True, logs

    def _endpoints(self, p: dict[str, Any], script: str) -> list[dict[str, Any]]:
        """Both OCS GETs through the proxy the script picks: its Proxy parameter, else the WinHTTP proxy. Every
        request a proxy receives is recorded in `proxy_requests`, with whether the monitoring account's default
        credentials were offered to it (what a proxy's operator, or a thief of it, would see)."""
        s = self.server
        proxy, source = (p["Proxy"], "parameter") if p["Proxy"] else (
            (f"http://{s.winhttp_proxy}" if "://" not in s.winhttp_proxy else s.winhttp_proxy, "winhttp")
            if s.winhttp_proxy else ("", "none"))
        if _ASKS_BEFORE_OFFERING_CREDENTIALS.search(script):
            credentials = bool(proxy) and p.get("ProxyDefaultCredentials") == 1
        else:  # the script before issue 24: ProxyUseDefaultCredentials whenever there is a proxy
            credentials = bool(proxy) and "ProxyUseDefaultCredentials=$true" in script
        reports_proxy = _REPORTS_PROXY.search(script) is not None
        found = []
        for name in ("GetExchangeMitigations", "GetExchangeConfig"):
            if proxy:
                self.proxy_requests.append(ProxyRequest(proxy, f"https://officeclient.microsoft.com/{name}", credentials))
            ms = 120 + zlib.crc32(f"{s.name}{name}".encode()) % 300
            status = s.winhttp_proxy_answers if source == "winhttp" else s.endpoint_status
            entry: dict[str, Any] = {"name": name, "status": status, "ms": ms, "web_status": None, "error": None,
                                     "revocation_failed": False}
            if reports_proxy:
                entry.update(proxy=proxy, proxy_source=source, proxy_credentials=credentials)
            if s.endpoint_failure:
                web_status, error, revocation = ENDPOINT_FAILURES[s.endpoint_failure]
                entry.update(status=0, web_status=web_status, error=error, revocation_failed=revocation)
            elif status == 0:
                entry.update(web_status="ConnectFailure", error="Unable to connect to the remote server")
            elif status >= 400:
                try:
                    phrase = HTTPStatus(status).phrase
                except ValueError:
                    phrase = "Error"
                entry.update(web_status="ProtocolError", error=f"The remote server returned an error: ({status}) {phrase}.")
            found.append(entry)
        return found

    def _component_states(self, now: datetime, texts: dict[str, Any], errors: list) -> Any:
        values = registry_component_states(self.server, now, texts, errors)
        return None if values is None else self._array(values)

    def _array(self, items: list[Any]) -> Any:
        """Arrays held in a dictionary stay arrays in 5.1's ConvertTo-Json (one element: [x]); the
        `unwrapped` output style imitates a script that pipes them instead."""
        return _unwrap(items) if self.server.array_style == "unwrapped" else items

    def _organization_json(self) -> dict[str, Any]:
        org = self.organization
        logon = current_logon()
        if org.double_hop and not (logon is not None and logon.delegated):
            message = (
                f"Active Directory operation failed on DC01.{org.domain}. This error is not retriable. Additional information: "
                "The supplied credential for 'NT AUTHORITY\\ANONYMOUS LOGON' is invalid.\r\n"
                "Active directory response: The LDAP server is unavailable."
            )
            return {"schema": 1, "organization": None, "servers": [], "error": {"stage": "organization", "message": message}}
        servers = [entry for _, entry in self.organization_servers()]
        return {"schema": 1, "organization": {"mitigations_enabled": org.mitigations_enabled}, "servers": servers, "error": None}

    def organization_servers(self) -> list[tuple[WindowsServer, dict[str, Any]]]:
        """Each server as Get-ExchangeServer reports it, in the organization script's JSON shape (dates as PsDate).
        Exchange's own remote PowerShell endpoint reads the same facts (remoting.py)."""
        now = self.clock.now()
        servers = []
        for s in self.fleet:
            major, minor, build, revision = s.build.split(".")
            entry: dict[str, Any] = {
                "name": s.name,
                "fqdn": s.fqdn,
                "roles": s.role,
                "admin_display_version": f"Version {major}.{minor} (Build {build}.{revision})",
                "mitigations_enabled": s.mitigations_enabled,
                # @($null) for an empty MultiValuedProperty: a one-element array holding null
                "mitigations_applied": list(s.applied) or [None],
                "mitigations_blocked": list(s.blocked) or [None],
            }
            if s.eems is not None:
                applied_time = eems.last_success(s.eems, now)
                entry["mitigations_applied_time"] = self._date(applied_time) if applied_time else None
            entry["data_collection_enabled"] = s.data_collection_enabled
            entry["internet_web_proxy"] = s.internet_web_proxy or ""  # [string]$null
            servers.append((s, entry))
        return servers

    def _date(self, t: datetime) -> Any:
        return PsDate(t, self.server.date_style)


# ---------------------------------------------------------------- PowerShell 5.1 JSON


@dataclass(frozen=True)
class PsDate:
    """A DateTime as ConvertTo-Json writes it, in one of the shapes the parser must accept."""

    time: datetime
    style: str = "ms"

    def to_json(self) -> str:
        ms = int(self.time.timestamp() * 1000)
        if self.style == "ms_offset":
            return f'"\\/Date({ms}+0100)\\/"'
        if self.style == "iso":
            t = self.time.astimezone(timezone.utc)
            return f'"{t:%Y-%m-%dT%H:%M:%S}.{t.microsecond:06d}0Z"'
        if self.style == "getdate":
            long_form = self.time.astimezone(timezone.utc).strftime("%A, %B %d, %Y %I:%M:%S %p")
            return f'{{"value":"\\/Date({ms})\\/","DisplayHint":2,"DateTime":{_ps_string(long_form)}}}'
        return f'"\\/Date({ms})\\/"'


def ps_json(value: Any) -> str:
    """ConvertTo-Json -Compress as Windows PowerShell 5.1 writes it, then made ASCII-only like the scripts do."""
    if isinstance(value, PsDate):
        return value.to_json()
    if isinstance(value, dict):
        return "{" + ",".join(f"{_ps_string(k)}:{ps_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(ps_json(v) for v in value) + "]"
    if isinstance(value, str):
        return _ps_string(value)
    return json.dumps(value)


def _ps_string(text: str) -> str:
    encoded = json.dumps(text, ensure_ascii=True)
    for char, escape in (("'", "\\u0027"), ("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        encoded = encoded.replace(char, escape)
    return encoded


def registry_component_states(server: WindowsServer, now: datetime, texts: dict[str, Any],
                              errors: list) -> list[dict[str, str]] | None:
    """The registry values of ServerWideOffline as Get-ItemProperty reads them, each `1:<state>:<ticks>` (OUR GUESS
    of the format, exporter/component_state.py; `other_format`: a Maintenance value of another shape). No key
    (`absent`): None, and a PathNotFound record of part component_state in `errors`."""
    choice = server.maintenance
    if choice == "absent":
        key = "HKLM:\\SOFTWARE\\Microsoft\\ExchangeServer\\v15\\ServerComponentStates\\ServerWideOffline"
        errors.append(_error("component_state", "PathNotFound,Microsoft.PowerShell.Commands.GetItemPropertyCommand",
                             "ObjectNotFound", "System.Management.Automation.ItemNotFoundException",
                             texts["path_not_found"].format(path=key)))
        return None
    ticks = int((now - timedelta(hours=1) - datetime(1, 1, 1, tzinfo=timezone.utc)).total_seconds()) * 10_000_000
    return [{"component": "ServerWideOffline", "requester": requester,
             "value": f"{state}:{ticks}" if choice == "other_format" and requester == "Maintenance"
             else f"1:{state}:{ticks}"} for requester, state in MAINTENANCE[choice]]


def _error(part: str, error_id: str, category: str, exception: str, message: str, inner: str = "") -> dict[str, str]:
    """An entry of the script's `errors`: what its Fail function records from an ErrorRecord."""
    return {"part": part, "id": error_id, "category": category, "type": exception, "inner": inner, "message": message}


class _Failures(list):
    """The script's `errors` as its Fail function fills them: at most `kept` records per part (None: every one,
    the script before review R11), and how many each part met in all (`counts`, the script's `$n`)."""

    def __init__(self, kept: int | None):
        super().__init__()
        self.kept = kept
        self.counts: dict[str, int] = {}

    def append(self, record: dict[str, str]) -> None:
        self.repeat(record, 1)

    def repeat(self, record: dict[str, str], times: int) -> None:
        """`record` met `times` times (a reader that fails on every read: one dictionary, kept as often as Fail
        keeps it)."""
        part = record["part"]
        before = self.counts.get(part, 0)
        self.counts[part] = before + times
        room = times if self.kept is None else max(0, min(times, self.kept - before))
        self.extend([record] * room)


def _kept_per_part(script: str) -> int | None:
    match = _KEEPS_ERRORS.search(script)
    return int(match.group(2)) if match else None


def _proxy_refusal(part: str, refusal: restricted.Refusal, texts: dict[str, Any]) -> dict[str, str]:
    """The record a stage's catch gets when the JEA session's Select-Object proxy refuses a parameter."""
    text = texts.get("parameter_not_found", LOCALES["en-US"]["parameter_not_found"])
    return _error(part, restricted.ERROR_ID, restricted.CATEGORY, restricted.EXCEPTION,
                  text.format(name=refusal.parameter))


def _crashed(exc: Exception) -> CommandOutput:
    return CommandOutput([], _clixml_errors([f"Simulated host failure: {type(exc).__name__}: {exc}"]), 1)


def _file_version(build: str, style: str) -> str:
    """ExSetup.exe's FileVersion: zero-padded on real servers ("15.02.1544.004", HealthChecker's ExSetup.xml)."""
    if style == "plain":
        return build
    major, minor, cu, revision = (int(part) for part in build.split("."))
    return f"{major}.{minor:02d}.{cu:04d}.{revision:03d}"


def _load_locales() -> dict[str, dict[str, Any]]:
    text = resources.files("simulator").joinpath("data").joinpath("locales.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


LOCALES = _load_locales()


def _unwrap(items: list[Any]) -> Any:
    """PowerShell 5.1 pipes a one-element array out as the element itself."""
    return items[0] if len(items) == 1 else items


def _formatted_list(document: dict[str, Any]) -> str:
    """What a script that forgot ConvertTo-Json prints: a Format-Table of a hashtable."""
    rows = ["", "Name                           Value", "----                           -----"]
    shown = {key: value.time.strftime("%m/%d/%Y %I:%M:%S %p") if isinstance(value, PsDate) else value for key, value in document.items()}
    rows += [f"{key:<30} {str(value)[:48]}" for key, value in shown.items()]
    return "\r\n".join(rows) + "\r\n"


# ---------------------------------------------------------------- parameter line


def _parse_parameters(line: str) -> dict[str, Any] | str:
    """The `$P=@{...}` line -> values, or the PowerShell error text a broken line would cause."""
    match = re.fullmatch(r"\$P=@\{(.*)\}", line)
    if match is None:
        return "The variable '$P' cannot be retrieved because it has not been set.\r\nAt line:2 char:1"
    body, values, pos = match.group(1), {}, 0
    for item in re.finditer(r"\s*(\w+)\s*=\s*(-?\d+|'(?:[^']|'')*')\s*(;|$)", body):
        if item.start() != pos:
            break
        raw = item.group(2)
        values[item.group(1)] = raw[1:-1].replace("''", "'") if raw.startswith("'") else int(raw)
        pos = item.end()
    if pos != len(body):
        return f"At line:2 char:{6 + pos}\r\n+ {line[:60]}\r\nMissing '=' operator after key in hash literal.\r\n    + CategoryInfo          : ParserError: (:) [], ParentContainsErrorRecordException"
    lower = {"LookbackHours": 1, "MaxEvents": 1, "LogTailBytes": 0, "CheckEndpoint": 0, "EndpointTimeoutSec": 1}
    for key in PARAMETERS:
        value = values.get(key)
        if key == "Proxy":
            values.setdefault("Proxy", "")
            continue
        if value is None:
            return f"Cannot validate argument on parameter '{key}'. The argument is null. Provide a valid value for the argument, and then try running the command again."
        if not isinstance(value, int):
            return f"Cannot convert value \"{value}\" to type \"System.Int32\". Error: \"Input string was not in a correct format.\""
        if value < lower[key]:
            return f"Cannot validate argument on parameter '{key}'. The {value} argument is less than the minimum allowed range of {lower[key]}."
    return values


# ---------------------------------------------------------------- stderr


_PROGRESS = (
    b'#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
    b'<Obj S="progress" RefId="0"><TN RefId="0"><T>System.Management.Automation.PSCustomObject</T><T>System.Object</T></TN>'
    b'<MS><I64 N="SourceId">1</I64><PR N="Record"><AV>Preparing modules for first use.</AV><AI>0</AI><Nil />'
    b"<PI>-1</PI><PC>-1</PC><T>Completed</T><SR>-1</SR><SD> </SD></PR></MS></Obj></Objs>"
)


def _not_recognized(word: str, line: str) -> list[str]:
    return [
        f"{word} : The term '{word}' is not recognized as the name of a cmdlet, function, script file, or operable program. "
        "Check the spelling of the name, or if a path was included, verify that the path is correct and try again.",
        "At line:1 char:1",
        f"+ {line[:70]}",
        "+ " + "~" * min(len(word), 70),
        f"    + CategoryInfo          : ObjectNotFound: ({word}:String) [], CommandNotFoundException",
        "    + FullyQualifiedErrorId : CommandNotFoundException",
        " ",
    ]


def _clixml_errors(lines: list[str]) -> bytes:
    """An error record on stderr as powershell.exe writes it: CLIXML, wrapped at the 80-column console width."""
    parts = []
    for line in lines:
        for start in range(0, max(len(line), 1), 80):
            piece = line[start : start + 80]
            escaped = piece.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            parts.append(f'<S S="Error">{escaped}_x000D__x000A_</S>')
    body = "".join(parts)
    # in the console's code page: the exporter asks WinRS for 437 (WINRS_CODEPAGE); what it lacks becomes '?'
    return f'#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">{body}</Objs>'.encode("cp437", "replace")


def _host_error(message: str) -> CommandOutput:
    """powershell.exe's own command-line errors are plain text, not CLIXML."""
    return CommandOutput([], f"{message}\r\n".encode("ascii", "replace"), 1)
