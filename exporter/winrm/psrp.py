"""PowerShell remoting (PSRP): the second implementation of `ServerConnection`'s interface.

`PsrpConnection.run(command, deadline)` takes the same `scripts.Command` a WinRS poll runs and returns the
same `CommandResult`, so the collectors do not know which protocol a module uses. What it sends depends on the
module's session configuration (MS-PSRP over WS-Management, MS-PSRP 3.1.5.3):
- the exporter's JEA endpoint (`windows_endpoint.py`, NoLanguage): the server script becomes one call of its
  function, the script's `$P` parameter line becoming the function's parameters. The function writes its
  version first; another version than the one this exporter ships is `endpoint_outdated`, never a verdict;
- Exchange's own endpoint (`Microsoft.Exchange` at /PowerShell, cmdlets only, under RBAC): the organization
  script becomes `Get-OrganizationConfig` and `Get-ExchangeServer | Select-Object -Property ...`, and their
  objects are written back as the organization script's JSON. A cmdlet the account's RBAC roles do not grant
  is not in its runspace (CommandNotFoundException): `rbac_denied` (the id: see "Command not found" below).
  Whether that runspace offers Select-Object is UNCONFIRMED: where it answers CommandNotFoundException for it,
  the collector asks again for the full objects (about 110 KB a server in a captured Exchange 2019 object),
  within limits.max_poll_bytes, and keeps doing so;
- any other configuration (full language, e.g. Microsoft.PowerShell): the script itself.

Command not found: a command the runspace does not have, or (JEA) has but not visible to the connecting user, fails
the pipeline with FullyQualifiedErrorId exactly `CommandNotFoundException`, the name in TargetObject [confirmed,
PowerShell/PowerShell@929903692e: CommandDiscovery.cs `LookupCommandInfo` and `ShouldRun` (a command that is not
Public, invoked from the runspace) throw it with that id, no command resolved to suffix it (ErrorPackage.cs
`FullyQualifiedErrorId`); LocalPipeline.cs rethrows it unwrapped; EncodeAndDecode.cs sends its ErrorRecord as the
state's ExceptionAsErrorRecord; test/powershell/engine/Remoting/RoleCapabilityFiles.Tests.ps1 asserts the id for
a cmdlet outside a role capability; that is PowerShell 7's source, 5.1's is not published: jborean93/pypsrp@42a34ed
tests/tests_pypsrp/test_integration.py `test_psrp_jea` shows the same text from a real JEA endpoint]. Exchange's
refusal of a cmdlet outside the account's roles has the same text in real sessions (dmaasland/proxyshell-poc#4
over PSRP; dpaulson45/HealthChecker#530, with the id, in the EMS).

The protocol's state is psrpcore's (`ClientRunspacePool`, `ClientPowerShell`: public API, no I/O); the bytes
travel over the same authenticated link as WinRS (`client.Link`), so PSRP gets the WinRS path's deadline, size
bounds, authentication, trust (no proxy or CA from the environment) and channel renewal (a kept channel is
authenticated anew before a poll its Kerberos ticket would not outlive; the kept pool is reached from the new one). Every fragment is checked by
`psrp_fragments.FragmentReader` before psrpcore parses it. With `keep_runspace` the pool stays open between
polls (one `wsmprovhost.exe` on the server per exporter, instead of a `powershell.exe` per poll): an
invocation then costs a Command and its Receives.
"""

from __future__ import annotations

import base64
import binascii
import collections
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Callable

import psrpcore
from psrpcore.types import HostMethodIdentifier, PSInvocationState, RunspacePoolState

from ..config import EXCHANGE_CONFIGURATION, ModuleConfig
from ..scripts import ORGANIZATION_MARKER, SERVER_MARKER, Command
from ..terminal import paired_surrogates
from ..windows_endpoint import FUNCTION_NAME, PARAMETERS, VERSION_PREFIX, endpoint_version, update_command
from . import wsman
from .client import (MIN_FOLLOW_UP_SECONDS, MIN_REQUEST_SECONDS, CommandResult, LinkedConnection, request_timeouts,
                     without_secrets)
from .connection import Endpoint
from .errors import OPERATION_TIMEOUT, AuthenticationRejected, PollFailure, WSManFault, classify
from .psrp_fragments import FragmentReader, split_fragments

log = logging.getLogger(__name__)

CONFIGURATION_NOT_FOUND = 2150858811  # "The resource URI ... was not found in the WS-Management catalog"
POOL_IDLE_TIMEOUT = "PT600.000S"  # a kept pool outlives the usual 5-minute interval; a lost one goes soon
KEEP_IF_POLLED_WITHIN = 480.0  # a pool idle longer than this may be gone: open a new one
CLOSE_SECONDS = 2.0
# What the organization collector reads of each server (the organization script's fields).
SERVER_PROPERTIES = ("Name", "Fqdn", "ServerRole", "AdminDisplayVersion", "MitigationsEnabled", "MitigationsApplied",
                     "MitigationsBlocked", "MitigationsAppliedTime", "DataCollectionEnabled", "InternetWebProxy")
# Exchange's ServerRole flags as a pypsrp-like client reads the enum's value: the bits of the server object's
# msExchCurrentServerRoles (Mailbox 2, Client Access 4, Edge Transport 64: LdapTools' ServerRole enum,
# github.com/ldaptools/ldaptools src/LdapTools/Enums/Exchange/ServerRole.php @ 78aefa1e; Mailbox = 2 also in a
# capture of real Get-ExchangeServer output). Only the Mailbox bit decides anything (`OrgServerInfo.may_run_eems`).
SERVER_ROLES = {2: "Mailbox", 4: "ClientAccess", 64: "Edge"}
_PARAMETER = re.compile(r"(\w+)=(-?\d+|'(?:[^']|'')*')")


@dataclass(frozen=True)
class _Statement:
    command: str
    parameters: tuple[tuple[str, Any], ...] = ()
    script: bool = False
    select: tuple[str, ...] = ()  # piped into Select-Object -Property


@dataclass
class _Pool:
    runspace: psrpcore.ClientRunspacePool
    shell_id: str
    reader: FragmentReader
    last_used: float


def outdated_message(configuration: str, server: str, found: str | None) -> str:
    """`endpoint_outdated`'s text. The found version is shown by its hash only, so that the update hint still fits
    in a poll failure's message (MAX_MESSAGE_CHARS) after a long server name."""
    found_text = (f"version {found[len(VERSION_PREFIX):][:40]}" if found and found.startswith(VERSION_PREFIX)
                  else "no version")
    return f"the JEA endpoint {configuration} on {server} is {found_text}, not {endpoint_version()}: {update_command()}"


class PsrpConnection(LinkedConnection):
    """The PowerShell remoting endpoint of one server for one module (`protocol: psrp`)."""

    def __init__(self, endpoint: str, module: ModuleConfig, **options):
        super().__init__(endpoint, module, **options)
        self._pool: _Pool | None = None
        self._configuration = module.configuration_name
        self._selects = True  # Exchange's endpoint: pipe into Select-Object, until it says it has none

    # ------------------------------------------------------------ the interface

    def run(self, command: Command, deadline: float) -> CommandResult:
        script = _script(command)
        with self._lock:
            try:
                try:
                    return self._run(script, deadline)
                except _NoSelectObject:
                    self._selects = False
                    log.warning("Exchange's endpoint on %s has no Select-Object (CommandNotFoundException): the "
                                "organization collector reads Get-ExchangeServer's full objects from now on",
                                self._server_name)
                    return self._run(script, deadline)
            except BaseException as error:
                failure = classify(error)
                if failure.reason != "rbac_denied":
                    self._drop_pool(deadline)
                raise without_secrets(self.module, failure) from None
            finally:
                if not self.module.keep_runspace:
                    self._drop_pool(deadline)
                    self._link.close()

    def _run(self, script: str, deadline: float) -> CommandResult:
        statements, answer = self._plan(script)
        try:
            outputs, errors, failure = self._invoke(statements, deadline)
        except PollFailure as failure:
            if failure.reason == "output_too_large" and answer == self._organization and not self._selects:
                raise PollFailure("output_too_large", f"Exchange's endpoint on {self._server_name} has no "
                                  "Select-Object, so Get-ExchangeServer sends its full objects (about 110 KB a "
                                  f"server), more than limits.max_poll_bytes ({self.max_poll_bytes} bytes) for this "
                                  "organization: raise it, or collect the organization over WinRS",
                                  connection_intact=True) from None
            raise
        return answer(outputs, errors, failure)

    def _address(self, endpoint: str) -> Endpoint:
        """The module's `path`: /wsman for a JEA or PowerShell configuration, /PowerShell for Exchange's."""
        return replace(Endpoint.parse(endpoint), path="/" + self.module.path)

    def close(self) -> None:
        """Delete a kept pool (its wsmprovhost.exe would otherwise wait out POOL_IDLE_TIMEOUT), then the
        connection. The Delete gets CLOSE_SECONDS at most: a stuck server cannot hold up a reload."""
        if self._pool is not None:
            self._drop_pool(time.monotonic() + CLOSE_SECONDS)
        self._link.close()

    # ------------------------------------------------------------ what to run for which script

    def _plan(self, script: str) -> tuple[list[_Statement], Callable[..., CommandResult]]:
        marker = script.split("\n", 1)[0].strip()
        if self._configuration == EXCHANGE_CONFIGURATION:
            if marker != ORGANIZATION_MARKER:
                raise PollFailure("configuration_not_found", "Exchange's endpoint runs cmdlets only: poll the "
                                  "servers over WinRS or the exporter's JEA endpoint", connection_intact=True)
            return ([_Statement("Get-OrganizationConfig", select=("MitigationsEnabled",) if self._selects else ()),
                     _Statement("Get-ExchangeServer", select=SERVER_PROPERTIES if self._selects else ())],
                    self._organization)
        if self.module.jea_endpoint:
            if marker != SERVER_MARKER:
                raise PollFailure("configuration_not_found", f"the JEA endpoint {self._configuration} runs only "
                                  "the server collection; use another module for this", connection_intact=True)
            # the function's ValidateRange bounds are the configuration's (config.py MAX_*); a value beyond them (a
            # library caller's) is cut to them rather than refused by the server. Only the function's parameters are
            # sent: the proxy and whether it gets credentials are fixed in the function.
            bounds = {name: (low, high) for name, low, high, _ in PARAMETERS}
            parameters = tuple((k, min(max(v, bounds[k][0]), bounds[k][1]))
                               for k, v in _parameters(script).items() if k in bounds)
            return [_Statement(FUNCTION_NAME, parameters)], self._jea
        return [_Statement(script, script=True)], self._script

    def _jea(self, outputs: list, errors: list, failure) -> CommandResult:
        if failure is not None and _error_id(failure) == "CommandNotFoundException":
            raise PollFailure("configuration_not_found", f"the session configuration {self._configuration} on "
                              f"{self._server_name} has no {FUNCTION_NAME}: its module or role capability is "
                              f"missing; {update_command()}", connection_intact=True)
        expected = endpoint_version()
        found = outputs[0] if outputs and isinstance(outputs[0], str) else None
        if found != expected:
            raise PollFailure("endpoint_outdated", outdated_message(self._configuration, self._server_name, found),
                              connection_intact=True)
        return self._script(outputs[1:], errors, failure)

    def _script(self, outputs: list, errors: list, failure) -> CommandResult:
        # CLIXML text may hold a lone surrogate (`_xD800_`), which UTF-8 cannot encode (UnicodeEncodeError, an
        # internal_error), as parse.clixml_to_text's stderr may
        stdout = paired_surrogates("\r\n".join(str(o) for o in outputs if o is not None)).encode("utf-8")
        records = [*errors, *([failure] if failure is not None else [])]
        return CommandResult(stdout, _error_stream(records), 1 if failure is not None else 0)

    def _organization(self, outputs: list, errors: list, failure) -> CommandResult:
        for record in [*errors, *([failure] if failure is not None else [])]:
            if _error_id(record) == "CommandNotFoundException":
                name = str(getattr(record, "TargetObject", "") or "a cmdlet")
                if name.lower() == "select-object" and self._selects:
                    raise _NoSelectObject()
                raise PollFailure("rbac_denied", f"the account's Exchange RBAC roles do not grant {name[:60]} "
                                  "(View-Only Organization Management does)", connection_intact=True)
        if failure is not None:
            return self._script([], errors, failure)
        organization, servers = None, []
        for obj in outputs:
            names = getattr(getattr(obj, "PSObject", None), "type_names", []) or []
            if any("OrganizationConfig" in n for n in names):
                organization = {"mitigations_enabled": _value(obj, "MitigationsEnabled")}
            elif any("ExchangeServer" in n for n in names):
                servers.append(_server_entry(obj))
        document = {"schema": 1, "organization": organization, "servers": servers, "error": None}
        if errors:  # the organization script stops at its first error ($ErrorActionPreference='Stop') and says where
            document["error"] = {"stage": "servers" if organization else "organization",
                                 "message": _error_text(errors[0])}
        return CommandResult(json.dumps(document).encode("ascii"), b"", 0)

    # ------------------------------------------------------------ the runspace pool

    def _invoke(self, statements: list[_Statement], deadline: float) -> tuple[list, list, Any]:
        pool = self._open_pool(deadline)
        pool.reader.new_poll()
        ps = psrpcore.ClientPowerShell(pool.runspace)
        for index, statement in enumerate(statements):
            if index:
                ps.add_statement()
            if statement.script:
                ps.add_script(statement.command)
            else:
                ps.add_command(statement.command)
                for name, value in statement.parameters:
                    ps.add_parameter(name, value)
            if statement.select:
                ps.add_command("Select-Object")
                ps.add_parameter("Property", list(statement.select))
        ps.start()
        command_id = str(ps.pipeline_id).upper()
        first = pool.runspace.data_to_send()
        self._exchange(lambda op: wsman.pipeline_create(op, self._configuration, pool.shell_id, command_id,
                                                        first.data), deadline)
        while (more := pool.runspace.data_to_send()) is not None:
            self._exchange(lambda op: wsman.pool_send(op, self._configuration, pool.shell_id, command_id, more.data),
                           deadline)
        outputs: list = []
        errors: list = []
        failure = None
        try:
            while ps.state == PSInvocationState.Running:
                for event in self._receive(pool, ps.pipeline_id, command_id, deadline):
                    failure = _gather(event, outputs, errors, failure)
                    if isinstance(event, psrpcore.RunspacePoolStateEvent) and event.state != RunspacePoolState.Opened:
                        raise PollFailure("wsman_fault", f"the runspace pool is {event.state.name} in the middle "
                                          f"of a pipeline: {self._reason(event)}")
                    _refuse_request(event)
            pool.reader.finish()
        except BaseException:
            self._signal(pool, command_id, deadline)
            raise
        if ps.state not in (PSInvocationState.Completed, PSInvocationState.Failed):
            # only the client stops a pipeline: output that ended Stopped is cut short (no servers, no facts)
            raise PollFailure("script_failed", f"the server ended the pipeline {ps.state.name}, neither Completed "
                              "nor Failed", connection_intact=True)
        ps.close()
        _expanded_size([*outputs, *errors, failure], self.max_poll_bytes)
        pool.last_used = time.monotonic()
        return outputs, errors, failure

    def _open_pool(self, deadline: float) -> _Pool:
        pool = self._pool
        if pool is not None and time.monotonic() - pool.last_used < KEEP_IF_POLLED_WITHIN \
                and pool.runspace.state == RunspacePoolState.Opened:
            return pool
        self._drop_pool(deadline)
        runspace = psrpcore.ClientRunspacePool()
        runspace.open()
        shell_id = str(runspace.runspace_pool_id).upper()
        reader = FragmentReader(runspace.runspace_pool_id, max_message_bytes=self.max_response_bytes,
                                max_total_bytes=self.max_poll_bytes)
        pool = _Pool(runspace, shell_id, reader, time.monotonic())
        creation = runspace.data_to_send()
        answer = self._exchange(lambda op: wsman.pool_create(op, self._configuration, shell_id, creation.data,
                                                             POOL_IDLE_TIMEOUT), deadline, opens=True)
        if wsman.shell_id(answer).upper() != shell_id:
            raise PollFailure("bad_output", "the server created a runspace pool with another id than asked")
        self._pool = pool
        while runspace.state not in (RunspacePoolState.Opened, RunspacePoolState.Broken, RunspacePoolState.Closed):
            for event in self._receive(pool, None, None, deadline):
                _refuse_request(event)
                if isinstance(event, psrpcore.RunspacePoolStateEvent) and event.state == RunspacePoolState.Broken:
                    reason = "access_denied" if self._configuration == EXCHANGE_CONFIGURATION else "wsman_fault"
                    raise PollFailure(reason, f"the runspace pool broke while opening: {self._reason(event)}")
        pool.reader.finish()
        if runspace.state != RunspacePoolState.Opened:
            raise PollFailure("wsman_fault", f"the runspace pool did not open ({runspace.state.name})")
        return pool

    def _receive(self, pool: _Pool, pipeline_id: uuid.UUID | None, command_id: str | None,
                 deadline: float) -> list:
        try:
            answer = self._exchange(lambda op: wsman.pool_receive(op, self._configuration, pool.shell_id,
                                                                  command_id), deadline, waits=True)
        except WSManFault as fault:
            if fault.code == OPERATION_TIMEOUT:
                return []  # nothing yet: the server long-polled to the OperationTimeout
            raise
        return _events(pool.runspace, pool.reader.feed(wsman.output(answer)[0], pipeline_id), pipeline_id)

    def _reason(self, event: psrpcore.RunspacePoolStateEvent) -> str:
        """The error record a pool state carries, as text (its size checked first, as a pipeline's output)."""
        _expanded_size([event.reason], self.max_poll_bytes)
        return _error_text(event.reason)

    def _signal(self, pool: _Pool, command_id: str, deadline: float) -> None:
        """Stop a pipeline we leave unfinished (deadline, bad output); its pool is dropped after."""
        message_id = uuid.uuid4()
        try:
            self._exchange(lambda op: wsman.signal_terminate(op, pool.shell_id, command_id, message_id,
                                                             resource_uri=wsman.POWERSHELL_URI + self._configuration),
                           deadline)
        except Exception:  # the pool is deleted next anyway
            pass

    def _drop_pool(self, deadline: float) -> None:
        """Delete the pool on the server (its pipelines go with it); a failure leaves it to its idle timeout."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        message_id = uuid.uuid4()
        try:
            self._exchange(lambda op: wsman.delete(op, pool.shell_id, message_id,
                                                   resource_uri=wsman.POWERSHELL_URI + self._configuration), deadline)
        except Exception as error:
            log.info("could not delete runspace pool on %s (left to its idle timeout): %s", self.endpoint,
                     without_secrets(self.module, classify(error)).message)  # masked before the cut, as WinRS's
            self._link.close()

    # ------------------------------------------------------------ requests (as client.py sends them)

    def _exchange(self, message: Callable[[int], bytes], deadline: float, *, waits: bool = False,
                  opens: bool = False) -> bytes:
        try:
            channel = self._link.open(deadline)
            # a Receive is held by the server up to its OperationTimeout: it must come back before the deadline
            operation, timeout = request_timeouts(self.module, deadline,
                                                  MIN_REQUEST_SECONDS if opens or waits else MIN_FOLLOW_UP_SECONDS)
            answer = channel.exchange(message(operation), deadline=deadline, timeout=timeout)
            self._answered()
            return answer
        except AuthenticationRejected:
            if self._configuration == EXCHANGE_CONFIGURATION and self.module.transport != "kerberos":
                raise PollFailure("auth_failed", "Exchange's remote PowerShell endpoint takes Kerberos only: set "
                                  f"transport: kerberos for module {self.module.name}") from None
            raise
        except WSManFault as fault:
            if fault.code == CONFIGURATION_NOT_FOUND:
                raise PollFailure("configuration_not_found", f"the session configuration {self._configuration} "
                                  f"is not registered at /{self.module.path} on {self._server_name}"
                                  + (": install the exporter's JEA endpoint (exchange-eems-exporter windows-endpoint)"
                                     if self.module.jea_endpoint else ""), connection_intact=True) from None
            raise



def _refuse_request(event: Any) -> None:
    """A request the server then waits on and the exporter never answers: it declares no host (psrpcore's null
    HostInfo) and sends no SecureString, so PowerShell has no reason to call a host method (Read-Host, a prompt)
    or to ask for a session key. Refused at once, with what was asked, rather than waited on until the deadline."""
    if isinstance(event, (psrpcore.PipelineHostCallEvent, psrpcore.RunspacePoolHostCallEvent)):
        method = event.method_identifier
        name = method.name if isinstance(method, HostMethodIdentifier) else "unknown"
        raise PollFailure("bad_output", f"the server called host method {name}, and the exporter declared no host")
    if isinstance(event, psrpcore.PublicKeyRequestEvent):
        raise PollFailure("bad_output", "the server asked for a session key, which the exporter never exchanges")


class _NoSelectObject(Exception):
    """Exchange's endpoint does not know Select-Object: ask again for the full objects."""


# ---------------------------------------------------------------- reading scripts and objects


def _script(command: Command) -> str:
    """The script a WinRS command line carries (`-EncodedCommand`, UTF-16LE base64: scripts.py)."""
    try:
        encoded = command.arguments[command.arguments.index("-EncodedCommand") + 1]
        return base64.b64decode(encoded, validate=True).decode("utf-16-le")
    except (ValueError, IndexError, binascii.Error, UnicodeDecodeError):
        raise PollFailure("internal_error", "not a command scripts.py wrote") from None


def _parameters(script: str) -> dict[str, Any]:
    """The `$P=@{...}` line scripts.py writes (integers and single-quoted strings) as parameter values."""
    lines = script.split("\n")
    if len(lines) < 2 or not lines[1].startswith("$P=@{"):
        raise PollFailure("internal_error", "the server script has no parameter line")
    values = {}
    for name, raw in _PARAMETER.findall(lines[1]):
        values[name] = raw[1:-1].replace("''", "'") if raw.startswith("'") else int(raw)
    return values


def _value(obj: Any, name: str) -> Any:
    """A property of a deserialised object: selected objects carry note properties, full ones adapted ones."""
    for prop in (*obj.PSObject.extended_properties, *obj.PSObject.adapted_properties):
        if prop.name == name:
            return prop.get_value(obj)
    return None


def _plain(value: Any) -> Any:
    """A property value as the organization script's JSON has it: text for objects Exchange sends with a
    ToString (ServerVersion, Uri), ISO text for a DateTime, lists of text, primitives as plain Python."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    for kind in (int, float, str):
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    text = getattr(getattr(value, "PSObject", None), "to_string", None)
    return None if text is None else str(text)


def _server_entry(obj: Any) -> dict[str, Any]:
    role = _value(obj, "ServerRole")
    if isinstance(role, int) and not isinstance(role, bool):
        role = ", ".join(name for bit, name in SERVER_ROLES.items() if role & bit) or str(int(role))
    return {
        "name": _plain(_value(obj, "Name")),
        "fqdn": _plain(_value(obj, "Fqdn")),
        "roles": _plain(role),
        "admin_display_version": _plain(_value(obj, "AdminDisplayVersion")),
        "mitigations_enabled": _plain(_value(obj, "MitigationsEnabled")),
        "mitigations_applied": _plain(_value(obj, "MitigationsApplied")),
        "mitigations_blocked": _plain(_value(obj, "MitigationsBlocked")),
        "mitigations_applied_time": _plain(_value(obj, "MitigationsAppliedTime")),
        "data_collection_enabled": _plain(_value(obj, "DataCollectionEnabled")),
        "internet_web_proxy": _plain(_value(obj, "InternetWebProxy")) or "",
    }


def _events(runspace: psrpcore.ClientRunspacePool, data: bytes, pipeline_id: uuid.UUID | None) -> list:
    """psrpcore's events for `data`, whole fragments (`FragmentReader.feed`), given one fragment at a time: psrpcore
    cuts each fragment off the front of its whole receive buffer (a copy of the rest), so an answer of many tiny
    fragments given at once cost their number times its size."""
    events = []
    try:
        for fragment in split_fragments(data):
            runspace.receive_data(psrpcore.PSRPPayload(fragment, psrpcore.StreamType.default, pipeline_id))
            while (event := runspace.next_event()) is not None:
                events.append(event)
    except Exception as error:
        # Only psrpcore runs here, reading the server's bytes: whatever it raises is the server's bad output, not an
        # exporter bug (internal_error). Not only the ValueError family: a <TS> of 10^18 days is an OverflowError, a
        # <D> that is no number decimal.InvalidOperation, a PIPELINE_STATE without its state or an ErrorRecord
        # without its fields an AttributeError.
        raise PollFailure("bad_output", f"unreadable PSRP message: {error.__class__.__name__}") from None
    return events


def _gather(event: Any, outputs: list, errors: list, failure: Any) -> Any:
    """A pipeline's output objects and error records into their lists; the pipeline's failure, returned: a Failed
    state's reason, else `failure` as it was."""
    if isinstance(event, psrpcore.PipelineOutputEvent):
        outputs.append(event.data)
    elif isinstance(event, psrpcore.ErrorRecordEvent):
        errors.append(event.record)
    elif isinstance(event, psrpcore.PipelineStateEvent) and event.state == PSInvocationState.Failed:
        return event.reason
    return failure


def _expanded_size(values: list, limit: int) -> int:
    """The text `values` expand to (characters, and one for each object), refused beyond `limit` before str() or
    json writes it. psrpcore gives an object that a message names again (`<Ref RefId>`) as the same Python object:
    1.4 KB of CLIXML can hold 23 lists each holding the one before twice (str() wrote 2^23 strings, 60 MB), or an
    object holding itself (str() recursed until RecursionError). Each object is counted once (memoised)."""
    sizes: dict[int, int] = {}

    def size(value: Any) -> int:
        if isinstance(value, (str, bytes)):
            return len(value)
        known = sizes.get(id(value))
        if known is not None:
            if known < 0:
                raise PollFailure("bad_output", "a PSRP object contains itself (<Ref RefId>)")
            return known
        sizes[id(value)] = -1
        total = 1 + sum(map(size, _parts(value)))
        if total > limit:
            raise PollFailure("output_too_large", f"PowerShell remoting objects expand, through the objects they "
                              f"refer to again, to more than limits.max_poll_bytes ({limit} bytes) of text")
        sizes[id(value)] = total
        return total

    try:
        return sum(map(size, values))
    except RecursionError:
        raise PollFailure("bad_output", "PSRP objects nested too deep") from None


def _parts(value: Any) -> list:
    """What str() or `_plain` of a deserialised value writes out: items, keys and values, properties. A
    collection's text is its items': its `to_string` is not asked for, since psrpcore makes it by str() of the
    whole collection, which is the expansion being measured (the 23-level bomb took 8 s of CPU here)."""
    if isinstance(value, dict):
        parts = [*value.keys(), *value.values()]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    elif isinstance(getattr(value, "queue", None), collections.deque):  # PSQueue
        parts = list(value.queue)
    else:
        parts = None
    ps_object = getattr(value, "PSObject", None)
    if ps_object is None:
        return parts or []
    try:
        # psrpcore makes an object's text with the __str__ of the class it rehydrates it as, from the server's fields:
        # an ErrorRecord whose Exception has no Message raised AttributeError, one whose Message is a number
        # TypeError (internal_error, where every later str() of the record raised it again). Made here once, first.
        if parts is None:
            parts = [ps_object.to_string or ""]
        for prop in (*ps_object.adapted_properties, *ps_object.extended_properties):
            parts += [prop.name, prop.get_value(value)]
    except (PollFailure, RecursionError):
        raise
    except Exception as error:
        raise PollFailure("bad_output", f"a PSRP object whose text cannot be made ({error.__class__.__name__})") \
            from None
    return parts


def _error_id(record: Any) -> str:
    return str(getattr(record, "FullyQualifiedErrorId", "") or "")


STDERR_CHARS = 64 * 1024  # of error text per command: what a WinRS poll's stderr would carry at most, and more


def _error_stream(records: list) -> bytes:
    """Error records as powershell.exe writes its error stream over WinRS: CLIXML `<S S="Error">` records, each
    record's text and its FullyQualifiedErrorId (what `collectors.script_failure` decides on). Every character
    outside printable ASCII is escaped `_xHHHH_`, as CLIXML escapes: the parser reads stderr in the WinRS shell's
    code page (parse.clixml_to_text, review R14), and PSRP's text is Unicode already."""
    if not records:
        return b""
    lines = []
    for record in records:
        lines.append(_error_text(record, STDERR_CHARS))
        if (error_id := _error_id(record)) and error_id not in lines[-1]:
            lines.append(f"    + FullyQualifiedErrorId : {error_id[:200]}")
    text = "\r\n".join(lines)[:STDERR_CHARS]
    escaped = "".join(c if " " <= c <= "~" and c != "_" else f"_x{min(ord(c), 0xFFFD):04X}_" for c in text)
    escaped = escaped.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return ('#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
            f'<S S="Error">{escaped}</S></Objs>').encode("ascii")


def _error_text(record: Any, limit: int = 300) -> str:
    if record is None:
        return "unknown error"
    text = getattr(getattr(record, "PSObject", None), "to_string", None)
    if not text:
        exception = getattr(record, "Exception", None)
        text = getattr(exception, "Message", None) or str(record)
    return " ".join(str(text).split())[:limit]
