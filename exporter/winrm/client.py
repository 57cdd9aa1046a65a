"""Run one command on one server over WinRS, within one deadline, leaving nothing behind.

`ServerConnection.run(command, deadline)` is the package's one entry point: it opens (or reuses) an
authenticated connection (`Link`), creates a shell, runs the command, reads its output until it is done, and
always signals and deletes the shell. It returns the command's output or raises a `PollFailure` with a
reason class (errors.py). Whatever goes wrong, it returns by `deadline`:
- every request is cut to what is left; a connection or a shell is not opened with less than
  MIN_REQUEST_SECONDS left, nor a Command or Receive sent with less than MIN_FOLLOW_UP_SECONDS;
- a request of the shell's work is sent only while the deadline still leaves time for the cleanup it
  would need (Signal and Delete, or Delete alone), each cleanup request reckoned as long as the quickest
  request of the poll so far (a new connection's handshake round trips included; at least
  MIN_CLEANUP_ESTIMATE_SECONDS). Not the slowest: Windows starts a shell host at Create and a process at
  Command, which takes a busy server seconds where Signal and Delete take milliseconds, and one slow request
  (or a hiccup of a loaded machine) counted twice more as cleanup failed healthy polls with time to spare;
  a server slow at everything is slow at its quickest request too. A cleanup that still does not fit
  leaves the shell to be deleted at the next poll (Windows drops it after SHELL_IDLE_TIMEOUT anyway), so a
  `/probe` answers inside its scrape timeout however slow the server;
- when the time left is too short for the next request, the poll fails with `timeout`: the server's
  answers took the poll's time. `deadline_exceeded` is kept for the deadline passing while an answer (or
  our request) is still on the wire, i.e. a server that trickles its answer (connection.py);
- retries (tenacity) cover only transient failures, never authentication, and stay inside the deadline.

A connection is kept for the next poll only when polls of this server come more often than
KEEP_IF_POLLED_WITHIN: HTTP.sys closes a connection idle for about two minutes, so at the usual 5-minute
interval a kept socket would only hold a file descriptor until the next poll found it dead.

One server's authenticated link for one module (`Link`): where the server is, how the module authenticates to
it, and the channel kept between requests. WinRS (`ServerConnection`) and PowerShell remoting
(`psrp.PsrpConnection`) both send every request through one, so they decide alike when a kept channel still
serves. It does while:
- the server has not closed its connection;
- it was used within KEEP_IF_POLLED_WITHIN: a request on a connection HTTP.sys is closing would fail a healthy
  poll;
- its authentication outlives the deadline of the poll that would use it (`Channel.valid_until`, the end of
  the Kerberos TGT its service ticket came from): the link authenticates anew, with the module's current
  ticket, before a poll the old one could end in, so a ticket running out never fails a poll. What was
  opened on the server under the old channel (a WinRS shell, a runspace pool) belongs to the account, not
  to the connection, and is reached from the new one.

Otherwise the link opens a new connection and authenticates it. The authentication object is built once, at
the first request: NTLM derives the password's hashes there, Kerberos finds the module's ticket cache.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import tenacity

from ..config import ModuleConfig
from ..redact import masking
from ..scripts import Command
from . import tls, wsman
from .basic import Basic
from .certificate import Certificate
from .connection import Connection, Endpoint
from .credssp import CredSSP
from .errors import FILE_NOT_FOUND, OPERATION_TIMEOUT, OutOfTime, PollFailure, WSManFault, classify
from .ntlm import NTLM
from .session import Channel

log = logging.getLogger(__name__)

TRANSIENT_REASONS = {"connection_refused", "connection_error", "timeout", "http_error"}
MIN_REQUEST_SECONDS = 2.0  # to open a connection or a shell: less would only leave a shell to clean up
KEEP_IF_POLLED_WITHIN = 90.0  # HTTP.sys's idle connection timeout is about 120 s
USER_AGENT = "exchange-eems-exporter"
MIN_FOLLOW_UP_SECONDS = 0.5  # for Command and Receive
MIN_CLEANUP_SECONDS = 0.05  # Signal and Delete are tried with whatever is left: a shell left costs more
MIN_CLEANUP_ESTIMATE_SECONDS = 0.25  # what a cleanup request is reckoned to take at least
MAX_ORPHANS = 16
# Asked for at Create: a shell whose ID never reached us (the Create answer was lost) lives this long on the
# server, not Windows' default of two hours, so it cannot pile up against MaxShellsPerUser.
SHELL_IDLE_TIMEOUT = "PT120.000S"
# stderr only ever becomes a 300-character failure message: keep its start, drop the rest as it arrives.
MAX_STDERR_BYTES = 64 << 10


def authentication(module: ModuleConfig, hostname: str, *, encrypt: bool):
    """The authentication of `module` towards the server named `hostname` (its configured name: the SPN and
    the NTLM target name come from it, never from the address connected to). `encrypt`: seal the messages, as
    the connection needs when it is plain http (over https TLS protects them); the connection's scheme, not the
    module's, since /probe may pair a module with a server reached over the other one."""
    password = module.password.reveal() if module.password else None
    if module.transport == "ntlm":
        return NTLM(module.username, password, hostname, encrypt=encrypt)
    if module.transport == "basic":
        return Basic(module.username, password)
    if module.transport == "certificate":
        return Certificate()
    if module.transport == "kerberos":
        from .kerberos import Kerberos  # python-krb5 and python-gssapi: the kerberos extra, only when used

        return Kerberos(module, hostname, encrypt=encrypt)
    if module.transport == "credssp":
        return CredSSP(module, hostname, encrypt=encrypt)
    raise ValueError(f"unknown transport {module.transport!r}")


def request_timeouts(module: ModuleConfig, deadline: float, minimum: float) -> tuple[int, float]:
    """(OperationTimeout for the envelope, socket read timeout) for a request sent now; OutOfTime (`timeout`)
    when less than `minimum` seconds are left before `deadline`. Both are the module's `operation_timeout` and
    `read_timeout`, cut to the time left; the read timeout stays above the OperationTimeout, since a Receive
    is held by the server up to it."""
    remaining = deadline - time.monotonic()
    if remaining < minimum:
        raise OutOfTime(f"the server's answers took the poll's time (poll.timeout): {max(0.0, remaining):.1f} s "
                        "left, too little for the next request")
    operation = max(1, min(int(module.operation_timeout), int(remaining) - 1))
    return operation, min(module.read_timeout, max(remaining, operation + 1.0))


class Link:
    """The authenticated channel to `address` (the server named `server_name`) for `module`."""

    def __init__(self, address: Endpoint, module: ModuleConfig, server_name: str | None, *, max_response_bytes: int):
        self.address = address
        self.module = module
        self.server_name = server_name or address.host
        self.max_response_bytes = max_response_bytes
        self.channel: Channel | None = None
        self._authentication = None

    def open(self, deadline: float) -> Channel:
        """The kept channel if it still serves a poll that ends by `deadline` (module docstring), else a new
        connection, authenticated."""
        channel = self.channel
        if channel is not None:
            if self._serves(channel, deadline):
                return channel
            self.close()  # the server will have closed it, or did, or its ticket ends first: no request wasted
        timeout = request_timeouts(self.module, deadline, MIN_REQUEST_SECONDS)[1]
        if self._authentication is None:
            self._authentication = authentication(self.module, self.server_name,
                                                  encrypt=self.address.scheme == "http")
        context = tls.context(self.module) if self.address.scheme == "https" else None
        connection = Connection.open(self.address, context, deadline=deadline, timeout=timeout,
                                     max_response_bytes=self.max_response_bytes, user_agent=USER_AGENT)
        try:
            self.channel = self._authentication.open(connection, deadline=deadline, timeout=timeout)
        except BaseException:
            connection.close()
            raise
        return self.channel

    @staticmethod
    def _serves(channel: Channel, deadline: float) -> bool:
        idle = time.monotonic() - channel.connection.last_used
        lasts = channel.valid_until is None or channel.valid_until > deadline
        return idle < KEEP_IF_POLLED_WITHIN and lasts and not channel.connection.dropped()

    def close(self) -> None:
        if self.channel is not None:
            self.channel.connection.close()
            self.channel = None


class LinkedConnection:
    """What ServerConnection and PsrpConnection share: the WinRM endpoint of one server for one module, reached
    through one `Link`, and `_lock`, which runs one command at a time (the poller polls one server at a time anyway)."""

    def __init__(self, endpoint: str, module: ModuleConfig, *, max_response_bytes: int, max_poll_bytes: int,
                 server_name: str | None = None, clock: Callable[[], float] = time.monotonic):
        self.endpoint = endpoint
        self.module = module
        self.max_response_bytes = max_response_bytes
        self.max_poll_bytes = max_poll_bytes
        self._link = Link(self._address(endpoint), module, server_name, max_response_bytes=max_response_bytes)
        self._server_name = self._link.server_name
        self._clock = clock
        self._lock = threading.Lock()
        self._answered: Callable[[], None] = _unheard  # see answers_to

    @contextmanager
    def answers_to(self, listener: Callable[[], None]) -> Iterator[None]:
        """Call `listener` whenever a request gets its answer (HTTP 200: the server accepted the module's credential)
        while the block runs. The poll holding the connection listens (Connections.lease), so that the credential
        guard lets the module's other polls log on then, not a whole script's runtime later, when this poll ends."""
        self._answered = listener
        try:
            yield
        finally:
            self._answered = _unheard

    def _address(self, endpoint: str) -> Endpoint:
        """Where requests go: the endpoint's URL (WinRS: /wsman)."""
        return Endpoint.parse(endpoint)

    def close(self) -> None:
        self._link.close()


def _unheard() -> None:
    """Nobody listens for answers: no poll holds the connection through Connections.lease."""


def connect(endpoint: str, module: ModuleConfig, **kwargs) -> LinkedConnection:
    """The connection `module.protocol` asks for: WinRS (ServerConnection) or PowerShell remoting
    (psrp.PsrpConnection), both with `run(command, deadline) -> CommandResult` and `close()`."""
    if module.protocol == "psrp":
        from .psrp import PsrpConnection  # psrp.py builds on this module

        return PsrpConnection(endpoint, module, **kwargs)
    return ServerConnection(endpoint, module, **kwargs)


@dataclass(frozen=True)
class CommandResult:
    stdout: bytes
    stderr: bytes
    exit_code: int


def without_secrets(module: ModuleConfig, failure: PollFailure) -> PollFailure:
    """A server's fault text may quote our request, Authorization header included, or echo the password in
    another form (JSON-escaped, percent-encoded, base64, UTF-16...): mask the module's secrets in every form
    the redactor knows, in the failure's text before it was cut."""
    masked = PollFailure(failure.reason, failure.detail, connection_intact=failure.connection_intact,
                         mask=masking(module.secrets()))
    return failure if masked.message == failure.message else masked


class ServerConnection(LinkedConnection):
    """The WinRS endpoint of one server for one module."""

    def __init__(self, endpoint: str, module: ModuleConfig, **options):
        super().__init__(endpoint, module, **options)
        self._orphans: list[str] = []  # shells whose Delete failed: deleted at the next poll that connects
        self._last_start: float | None = None
        self._quickest = 0.0  # the quickest request of the current poll (0: none yet), what cleanup is reckoned at

    # ------------------------------------------------------------ requests

    def _exchange(self, message: Callable[[int], bytes], deadline: float, *, cleanup_requests: int = 0,
                  waits: bool = False, minimum: float = MIN_FOLLOW_UP_SECONDS) -> bytes:
        """Send one message by `deadline`, leaving time for `cleanup_requests` more after it, each reckoned at
        the poll's quickest request, and not with less than `minimum` seconds left. A message that `waits`
        (Receive: the server holds it until there is output, up to OperationTimeout) does not count towards how
        long a request takes."""
        deadline -= cleanup_requests * max(self._quickest, MIN_CLEANUP_ESTIMATE_SECONDS)
        kept, started = self._link.channel, time.monotonic()
        channel = self._link.open(deadline)
        if channel is not kept:  # connected and authenticated now: each handshake request is one round trip
            self._took((time.monotonic() - started) / max(1, channel.connection.requests))
        operation, timeout = request_timeouts(self.module, deadline, minimum)
        started = time.monotonic()
        answer = channel.exchange(message(operation), deadline=deadline, timeout=timeout)
        self._answered()
        if not waits:
            self._took(time.monotonic() - started)
        return answer

    def _took(self, seconds: float) -> None:
        self._quickest = min(self._quickest, seconds) if self._quickest else seconds

    # ------------------------------------------------------------ one command

    def run(self, command: Command, deadline: float) -> CommandResult:
        """Run one command; retry transient failures while the deadline allows."""
        with self._lock:
            started = self._clock()
            keep = self._last_start is not None and started - self._last_start < KEEP_IF_POLLED_WITHIN
            self._last_start = started
            retrying = tenacity.Retrying(
                retry=tenacity.retry_if_exception(lambda e: isinstance(e, PollFailure) and e.reason in TRANSIENT_REASONS
                                                  and not isinstance(e, OutOfTime)),
                # three attempts at most, and none started without the time to open a connection or a shell
                stop=lambda state: state.attempt_number >= 3 or deadline - time.monotonic() < MIN_REQUEST_SECONDS + 1,
                wait=tenacity.wait_exponential_jitter(multiplier=0.5, max=5, jitter=0.5),
                reraise=True,
            )
            try:
                return retrying(self._attempt, command, deadline)
            except BaseException as error:
                raise without_secrets(self.module, classify(error)) from None
            finally:
                if not keep:
                    self.close()

    def _attempt(self, command: Command, deadline: float) -> CommandResult:
        try:
            return self._run_once(command, deadline)
        except BaseException as error:
            failure = classify(error)
            if not failure.connection_intact:
                self.close()
            raise failure from None

    def _run_once(self, command: Command, deadline: float) -> CommandResult:
        self._quickest = 0.0
        self._delete_orphans(deadline)
        shell_id = command_id = None
        intact = True
        try:
            shell_id = wsman.shell_id(self._exchange(lambda op: wsman.create(op, SHELL_IDLE_TIMEOUT), deadline,
                                                     cleanup_requests=1, minimum=MIN_REQUEST_SECONDS))
            # WINRS_SKIP_CMD_SHELL: CreateProcess's 32,767-character limit instead of cmd.exe's 8,191 (scripts.py)
            try:
                command_id = wsman.command_id(self._exchange(
                    lambda op: wsman.command(op, shell_id, command.executable, command.arguments), deadline,
                    cleanup_requests=2))
            except WSManFault as fault:
                if fault.code != FILE_NOT_FOUND:
                    raise
                raise PollFailure("wsman_fault", f"the server has no {command.executable} (WS-Management fault "
                                  f"{FILE_NOT_FOUND}, file not found): Windows installed on another drive than C:? "
                                  "protocol: psrp starts no program", connection_intact=True) from None
            stdout, stderr, exit_code = self._receive(shell_id, command_id, deadline)
            return CommandResult(stdout, stderr, exit_code)
        except PollFailure as failure:
            intact = failure.connection_intact
            raise
        except WSManFault:
            raise  # the server answered with a fault: the connection is fine
        except BaseException:
            intact = False
            raise
        finally:
            if shell_id is not None:
                self._cleanup(shell_id, command_id, deadline, broken=not intact)

    def _receive(self, shell_id: str, command_id: str, deadline: float) -> tuple[bytes, bytes, int]:
        stdout, stderr = bytearray(), bytearray()
        while True:
            try:
                out, err, code, done = wsman.output(self._exchange(
                    lambda op: wsman.receive(op, shell_id, command_id), deadline, cleanup_requests=2, waits=True))
            except WSManFault as fault:
                if fault.code == OPERATION_TIMEOUT:
                    continue  # Windows answers "nothing yet" this way; ask again while the deadline allows
                raise
            stdout += out
            stderr += err[: max(0, MAX_STDERR_BYTES - len(stderr))]
            if len(stdout) + len(stderr) > self.max_poll_bytes:
                raise PollFailure("output_too_large",
                                  f"command output exceeds limits.max_poll_bytes ({self.max_poll_bytes})",
                                  connection_intact=True)
            if done:
                return bytes(stdout), bytes(stderr), code

    def _delete(self, shell_id: str, deadline: float) -> None:
        message_id = uuid.uuid4()
        wsman.check_relates_to(self._exchange(lambda op: wsman.delete(op, shell_id, message_id), deadline,
                                              minimum=MIN_CLEANUP_SECONDS), message_id)

    def _delete_orphans(self, deadline: float) -> None:
        """Delete shells a failed poll could not: a server that refused or dropped the connection then may
        still hold them, and they count against MaxShellsPerUser until its idle timeout."""
        while self._orphans:
            try:
                self._delete(self._orphans[0], deadline)
            except WSManFault:
                pass  # already gone (expired or the service restarted): nothing to delete
            self._orphans.pop(0)

    def _cleanup(self, shell_id: str, command_id: str | None, deadline: float, *, broken: bool) -> None:
        """Signal terminate and delete the shell before `deadline`; after a failure on a new connection (the
        old one may be dead). What does not fit is left for the next poll."""
        if broken:
            self.close()
        try:
            if command_id is not None:
                message_id = uuid.uuid4()
                try:
                    wsman.check_relates_to(self._exchange(
                        lambda op: wsman.signal_terminate(op, shell_id, command_id, message_id), deadline,
                        cleanup_requests=1, minimum=MIN_CLEANUP_SECONDS), message_id)
                except WSManFault:  # the command may already be gone; Delete still matters
                    pass
            self._delete(shell_id, deadline)
        except Exception as error:
            log.warning("could not delete WinRM shell on %s, will retry at the next poll: %s", self.endpoint,
                        without_secrets(self.module, classify(error)).message)
            if len(self._orphans) < MAX_ORPHANS:
                self._orphans.append(shell_id)
            self.close()
