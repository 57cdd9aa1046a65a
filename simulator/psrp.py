"""PowerShell remoting (PSRP) over WS-Management: runspace pools and pipelines on psrpcore's server side.

psrpcore (`ServerRunspacePool`, `ServerPipeline`) keeps the protocol's state and does the (de)fragmenting and
CLIXML; it has no I/O. This module is the WS-Man half that Windows' WinRM service (or Exchange's IIS application)
provides around it:
- Create (the client's ShellId and creationXml), Command (a pipeline per CommandId), Send, Receive, Signal, Delete;
- psrpcore has ONE outgoing buffer; its payloads are split into fragments and routed into a queue for the pool
  and one per command, and each Receive answers from the queue it names;
- Receive long-polls until its OperationTimeout (then fault 2150858793), as WinRM does: answering at once with
  that fault makes pypsrp spin;
- each Receive carries whole fragments up to the request's MaxEnvelopeSize (pypsrp raises it to 512,000 after
  SessionCapability 2.3); fragments are cut to fit the smallest envelope the pool has seen;
- Delete closes every pipeline before the pool (psrpcore refuses to close a pool with pipelines).

Pipelines are answered through psrpcore's public `prepare_message` with its public message types (output,
ErrorRecord, PipelineState). psrpcore's pipeline state machine has no public way to fail a pipeline
(`ServerPipeline` offers `start`, `complete` and `stop`; failing needs the private `_change_state`), and its
`start()` emits a Running state that a real server does not send (pypsrp's recorded sessions go straight to
Completed or Failed). So a pipeline stays NotStarted in psrpcore, which lets `close()` remove it at any time,
while the client sees exactly the messages a real one gets.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import struct
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import psrpcore
from psrpcore import PSRPPayload, StreamType
from psrpcore.types import (
    ErrorCategory, ErrorCategoryInfo, ErrorRecord, NETException, PipelineState, PSInvocationState, PSRPMessageType,
)

from . import wsman
from .host import Answer, ErrorSpec, Invocation, SimulatedHost
from .wsman import WsmanFault

log = logging.getLogger(__name__)

FRAGMENT_HEADER = 21  # object id, fragment id, flags, length (MS-PSRP 2.2.4)
STREAM_OVERHEAD = 120  # bytes of one <rsp:Stream Name="stdout" CommandId="..."> element around its base64
MAX_PENDING_FRAGMENTS = 100_000  # a client that never receives cannot make a pool grow without end
# Windows PowerShell 5.1's PSVersionTable as the recorded JEA session shows it (pypsrp test recordings).
PS_VERSION_TABLE = {
    "PSVersion": "5.1.14393.2248", "PSEdition": "Desktop", "BuildVersion": "10.0.14393.2248",
    "CLRVersion": "4.0.30319.42000", "WSManStackVersion": "3.0",
}


def _fragment_budget(max_envelope: int) -> int:
    """Bytes of PSRP data (fragment headers included) one Receive can carry within `max_envelope`."""
    return max(FRAGMENT_HEADER + 1, (max_envelope - wsman.RECEIVE_OVERHEAD - STREAM_OVERHEAD) * 3 // 4)


def split_fragments(data: bytes) -> list[bytes]:
    """The fragments of one psrpcore payload, each with its header (the length is big-endian at offset 17)."""
    fragments = []
    while data:
        (length,) = struct.unpack(">I", data[17:FRAGMENT_HEADER])
        fragments.append(data[: FRAGMENT_HEADER + length])
        data = data[FRAGMENT_HEADER + length :]
    return fragments


@dataclass
class _Queue:
    fragments: deque = field(default_factory=deque)
    done: bool = False  # the pipeline's final state is queued: Done goes with the last fragment


@dataclass
class _Command:
    pipeline: psrpcore.ServerPipeline
    queue: _Queue = field(default_factory=_Queue)
    task: asyncio.Task | None = None


class Pool:
    """One runspace pool: psrpcore's state, its queues, and the pipelines it runs."""

    def __init__(self, shell_id: str, configuration: Any, owner: str, idle_timeout: float, max_envelope: int) -> None:
        self.shell_id = shell_id
        self.configuration = configuration
        self.owner = owner
        self.idle_timeout = idle_timeout
        self.last_used = time.monotonic()
        self.runspace = psrpcore.ServerRunspacePool(application_private_data={"PSVersionTable": dict(PS_VERSION_TABLE)})
        self.queue = _Queue()
        self.commands: dict[str, _Command] = {}  # by WS-Man CommandId
        self.by_pipeline: dict[uuid.UUID, str] = {}  # PSRP pipeline id -> CommandId
        self.changed = asyncio.Condition()
        self.fragment_bytes = _fragment_budget(max_envelope)
        self.process_id = 1000 + os.getpid() % 60000


class PoolTable:
    """The runspace pools open on one host, with Windows' per-user quota and idle expiry (as `shells.ShellTable`)."""

    def __init__(self) -> None:
        self._pools: dict[str, Pool] = {}
        self.created = 0  # pools ever opened: whether a client kept its pool or opened new ones

    def add(self, pool: Pool, max_pools: int) -> None:
        self.expire()
        owned = sum(1 for p in self._pools.values() if p.owner.lower() == pool.owner.lower())
        if owned >= max_pools:
            raise WsmanFault(2150859173, str(max_pools))
        self._pools[pool.shell_id] = pool
        self.created += 1

    def get(self, shell_id: str) -> Pool:
        self.expire()
        pool = self._pools.get(shell_id.upper())
        if pool is None:
            raise WsmanFault.unknown_shell(shell_id)
        pool.last_used = time.monotonic()
        return pool

    def remove(self, shell_id: str) -> Pool:
        pool = self._pools.pop(shell_id.upper(), None)
        if pool is None:
            raise WsmanFault.unknown_shell(shell_id)
        return pool

    def expire(self) -> None:
        now = time.monotonic()
        for shell_id in [s for s, p in self._pools.items() if now - p.last_used >= p.idle_timeout]:
            _cancel(self._pools.pop(shell_id))

    def open_count(self) -> int:
        self.expire()
        return len(self._pools)


class PsrpService:
    """The PSRP actions of one simulated host. Runs on the fleet's event loop; `run_blocking` moves a pipeline's
    work (the Windows model) to a worker thread."""

    def __init__(self, host: SimulatedHost, run_blocking: Callable[..., Any]) -> None:
        self.host = host
        self.pools = PoolTable()
        self._run_blocking = run_blocking
        self.invocations = 0
        self.tasks: set[asyncio.Task] = set()  # running pipelines, cancelled when the fleet stops

    async def dispatch(self, request: wsman.WsmanRequest, path: str, principal: str, client_ip: str,
                       address: str) -> bytes:
        if request.action == wsman.ACTION_CREATE:
            return self._create(request, path, principal, client_ip, address)
        if request.action not in (wsman.ACTION_COMMAND, wsman.ACTION_SEND, wsman.ACTION_RECEIVE, wsman.ACTION_SIGNAL,
                                  wsman.ACTION_DELETE):
            raise WsmanFault(2150858771)
        pool = self.pools.get(request.shell_id or "")
        if pool.owner.lower() != principal.lower():
            raise WsmanFault(5)  # another user's shell: Windows refuses with access denied
        if request.action == wsman.ACTION_COMMAND:
            return self._command(pool, request)
        if request.action == wsman.ACTION_SEND:
            return self._send(pool, request)
        if request.action == wsman.ACTION_RECEIVE:
            return await self._receive(pool, request)
        if request.action == wsman.ACTION_SIGNAL:
            return self._signal(pool, request)
        _cancel(self.pools.remove(pool.shell_id))
        return wsman.delete_response(request.message_id)

    # ------------------------------------------------------------ actions

    def _create(self, request: wsman.WsmanRequest, path: str, principal: str, client_ip: str, address: str) -> bytes:
        configuration = self.host.endpoints.find(path, request.resource_uri) if self.host.endpoints else None
        if configuration is None:
            raise WsmanFault(2150858811, request.resource_uri[:256])
        shell = request.body
        creation = shell.find("{http://schemas.microsoft.com/powershell}creationXml") if shell is not None else None
        shell_id = (shell.get("ShellId") or "") if shell is not None else ""
        if shell is None or shell.tag != f"{{{wsman.SHELL}}}Shell" or creation is None or not creation.text:
            raise WsmanFault(2150858817)
        try:
            shell_id = str(uuid.UUID(shell_id)).upper() if shell_id else wsman.new_guid()
        except ValueError:
            raise WsmanFault(2150858817) from None
        requested = wsman.requested_idle_timeout(request)
        idle = min(self.host.idle_timeout_seconds, requested) if requested else self.host.idle_timeout_seconds
        pool = Pool(shell_id, configuration, principal, idle, request.max_envelope_size)
        self._feed(pool, creation.text, None)
        self.pools.add(pool, self.host.max_shells_per_user)
        return wsman.pool_create_response(request.message_id, address, configuration.resource_uri, shell_id, principal,
                                          client_ip, idle, pool.process_id)

    def _command(self, pool: Pool, request: wsman.WsmanRequest) -> bytes:
        body = request.body
        if body is None or body.tag != f"{{{wsman.SHELL}}}CommandLine":
            raise WsmanFault(2150858817)
        command_id = body.get("CommandId") or wsman.new_guid()
        try:
            pipeline_id = uuid.UUID(command_id)
        except ValueError:
            raise WsmanFault(2150858817) from None
        command_id = str(pipeline_id).upper()
        if command_id in pool.commands:
            raise WsmanFault(2150858817)
        arguments = [a.text or "" for a in body.iter(f"{{{wsman.SHELL}}}Arguments")]
        # Windows goes by the CommandId; psrpcore by the pipeline id in the PSRP message, which an older pypsrp
        # wrote in another byte order (the recorded JEA session). The pipeline must exist before its
        # CREATE_PIPELINE fragments are fed in, under the id psrpcore will look for.
        pipeline_id = _message_pipeline_id(_decode(arguments[0]) if arguments else b"") or pipeline_id
        if pipeline_id in pool.by_pipeline:
            raise WsmanFault(2150858817)
        pool.commands[command_id] = _Command(psrpcore.ServerPipeline(pool.runspace, pipeline_id))
        pool.by_pipeline[pipeline_id] = command_id
        for argument in arguments:
            self._feed(pool, argument, command_id)
        return wsman.command_response(request.message_id, command_id)

    def _send(self, pool: Pool, request: wsman.WsmanRequest) -> bytes:
        body = request.body
        if body is None or body.tag != f"{{{wsman.SHELL}}}Send":
            raise WsmanFault(2150858817)
        for stream in body.iter(f"{{{wsman.SHELL}}}Stream"):
            command_id = (stream.get("CommandId") or "").upper() or None
            if command_id is not None and command_id not in pool.commands:
                raise WsmanFault.unknown_command()
            self._feed(pool, stream.text or "", command_id)
        return wsman.send_response(request.message_id)

    async def _receive(self, pool: Pool, request: wsman.WsmanRequest) -> bytes:
        command_id = wsman.receive_command_id(request).upper() or None
        pool.fragment_bytes = min(pool.fragment_bytes, _fragment_budget(request.max_envelope_size))
        budget = _fragment_budget(request.max_envelope_size)

        def target() -> _Queue:
            if command_id is None:
                return pool.queue
            command = pool.commands.get(command_id)
            if command is None:
                raise WsmanFault.unknown_command()
            return command.queue

        async with pool.changed:
            try:
                await asyncio.wait_for(pool.changed.wait_for(lambda: target().fragments or target().done),
                                       request.operation_timeout)
            except TimeoutError:
                raise WsmanFault(2150858793) from None
            queue = target()
            taken: list[bytes] = []
            while queue.fragments and (not taken or len(queue.fragments[0]) + STREAM_OVERHEAD <= budget):
                fragment = queue.fragments.popleft()
                taken.append(fragment)
                budget -= len(fragment) + STREAM_OVERHEAD
        pool.last_used = time.monotonic()
        done = queue.done and not queue.fragments
        return wsman.psrp_receive_response(request.message_id, command_id, taken, done)

    def _signal(self, pool: Pool, request: wsman.WsmanRequest) -> bytes:
        command_id = wsman.signal_command_id(request).upper()
        command = pool.commands.pop(command_id, None)
        if command is None:
            raise WsmanFault.unknown_command()
        pool.by_pipeline.pop(command.pipeline.pipeline_id, None)
        _close(command)
        return wsman.signal_response(request.message_id)

    # ------------------------------------------------------------ psrpcore

    def _feed(self, pool: Pool, text: str, command_id: str | None) -> None:
        """Hand base64 PSRP data to psrpcore and act on every event it completes."""
        data = _decode(text)
        pipeline_id = pool.commands[command_id].pipeline.pipeline_id if command_id else None
        pool.runspace.receive_data(PSRPPayload(data, StreamType.default, pipeline_id))
        while True:
            try:
                event = pool.runspace.next_event()
            except (psrpcore.PSRPCoreError, ValueError, struct.error, KeyError) as exc:
                log.info("pool %s: bad PSRP data: %s", pool.shell_id, exc)
                raise WsmanFault(2150858817) from None
            if event is None:
                break
            self._on_event(pool, event)
        self._drain(pool)

    def _on_event(self, pool: Pool, event: Any) -> None:
        runspace = pool.runspace
        if isinstance(event, (psrpcore.SetMaxRunspacesEvent, psrpcore.SetMinRunspacesEvent)):
            runspace.runspace_availability_response(event.ci, True)
        elif isinstance(event, psrpcore.GetAvailableRunspacesEvent):
            runspace.runspace_availability_response(event.ci, runspace.max_runspaces)
        elif isinstance(event, psrpcore.CreatePipelineEvent):
            command = pool.commands.get(pool.by_pipeline.get(event.pipeline_id, ""))
            if command is not None:
                command.task = asyncio.get_running_loop().create_task(self._run(pool, command, event.pipeline))
                self.tasks.add(command.task)
                command.task.add_done_callback(self.tasks.discard)

    def _drain(self, pool: Pool) -> None:
        """Move psrpcore's outgoing messages into the queue of the pool or of their command."""
        while (payload := pool.runspace.data_to_send(pool.fragment_bytes)) is not None:
            if payload.pipeline_id is None:
                queue = pool.queue
            else:
                command = pool.commands.get(pool.by_pipeline.get(payload.pipeline_id, ""))
                if command is None:
                    continue  # the client signalled or closed this command: its output goes nowhere
                queue = command.queue
            if len(queue.fragments) >= MAX_PENDING_FRAGMENTS:
                continue
            queue.fragments.extend(split_fragments(payload.data))
        asyncio.get_running_loop().create_task(_notify(pool))

    async def _run(self, pool: Pool, command: _Command, powershell: Any) -> None:
        """Run one pipeline through the configuration and queue its messages."""
        statements: list[list[tuple[str, bool, list]]] = [[]]
        for c in powershell.commands:
            statements[-1].append((c.command_text, bool(c.is_script), list(c.parameters)))
            if c.end_of_statement:
                statements.append([])
        invocation = Invocation([s for s in statements if s])
        started = time.monotonic()
        try:
            answer: Answer = await self._run_blocking(self.host.endpoints.invoke, pool.configuration, invocation)
        except Exception as exc:  # a broken model must not take the listener down
            log.error("host %s: invoke raised %s", self.host.name, type(exc).__name__)
            answer = Answer(failure=ErrorSpec(f"Simulated host failure: {type(exc).__name__}", "SimulatorFailure",
                                              int(ErrorCategory.NotSpecified), ("System.Exception", "System.Object")))
        self.invocations += 1
        wait = answer.runtime_seconds - (time.monotonic() - started)
        if wait > 0:
            await asyncio.sleep(wait)
        if pool.commands.get(pool.by_pipeline.get(command.pipeline.pipeline_id, "")) is not command:
            return  # signalled or deleted meanwhile
        pipeline = command.pipeline
        for value in answer.output:
            pipeline.prepare_message(value, message_type=PSRPMessageType.PipelineOutput)
        for spec in answer.errors:
            pipeline.prepare_message(error_record(spec), message_type=PSRPMessageType.ErrorRecord)
        if answer.failure is not None:
            state = PipelineState(PipelineState=int(PSInvocationState.Failed),
                                  ExceptionAsErrorRecord=error_record(answer.failure))
        else:
            state = PipelineState(PipelineState=int(PSInvocationState.Completed))
        pipeline.prepare_message(state)
        self._drain(pool)
        command.queue.done = True
        await _notify(pool)


def _decode(text: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise WsmanFault(2150858817) from None


def _message_pipeline_id(fragment: bytes) -> uuid.UUID | None:
    """The pipeline id in the message header of a start fragment (after its 21 bytes: destination, type, RPID, PID)."""
    if len(fragment) < FRAGMENT_HEADER + 40 or not fragment[16] & 0x1:
        return None
    return uuid.UUID(bytes_le=fragment[FRAGMENT_HEADER + 24 : FRAGMENT_HEADER + 40])


def error_record(spec: ErrorSpec) -> ErrorRecord:
    """An ErrorRecord built from psrpcore's public types, with the exception's real type names."""
    exception = NETException(Message=spec.message, HResult=-2146233087)
    exception.PSObject.type_names = list(spec.exception)
    target_type = "String" if spec.target is not None else ""
    return ErrorRecord(
        Exception=exception,
        CategoryInfo=ErrorCategoryInfo(Category=ErrorCategory(spec.category), Reason=spec.reason,
                                       TargetName=spec.target or "", TargetType=target_type),
        TargetObject=spec.target,
        FullyQualifiedErrorId=spec.error_id,
    )


async def _notify(pool: Pool) -> None:
    async with pool.changed:
        pool.changed.notify_all()


def _close(command: _Command) -> None:
    if command.task is not None:
        command.task.cancel()
    command.pipeline.close()


def _cancel(pool: Pool) -> None:
    """Delete: every pipeline closed first, then the pool (psrpcore refuses the other order)."""
    for command in list(pool.commands.values()):
        _close(command)
    pool.commands.clear()
    pool.by_pipeline.clear()
    runspace = pool.runspace
    if runspace.state in (psrpcore.types.RunspacePoolState.Opened, psrpcore.types.RunspacePoolState.Closing,
                          psrpcore.types.RunspacePoolState.Closed):
        runspace.begin_close()
        runspace.close()
