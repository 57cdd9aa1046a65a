"""Run one PowerShell script on one server over WinRS, within a deadline, leaving nothing behind.

pywinrm's `Session.run_ps` has no overall deadline, leaks the shell when Receive fails, and opens a new
TCP connection (and NTLM handshake) per call. This module drives `winrm.protocol.Protocol` directly:
- the authenticated connection is kept per server and reused across polls while it works (a steady
  poll costs Create, Command, Receive, Signal, Delete);
- every request's timeouts are cut to what is left of the poll's deadline;
- Signal and Delete always run, on a fresh connection if the old one broke, so no shell leaks;
- every response is read with a byte bound and under the poll's deadline (`bounded_http`,
  `winrm_transport`), so a misbehaving server can neither exhaust memory nor hold a poll past its deadline;
- failures become `PollFailure(reason, message)` with a reason class from docs/design.md section 4.
Retries (tenacity) cover only transient faults, never authentication, and stay inside the deadline.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

import requests
import tenacity
from spnego._ntlm_raw.crypto import lmowfv1, ntowfv1  # the functions pyspnego derives the hashes with
from winrm.exceptions import (
    InvalidCredentialsError,
    WinRMError,
    WinRMOperationTimeoutError,
    WinRMTransportError,
    WSManFaultError,
)
from winrm.protocol import Protocol

from .bounded_http import BoundedAdapter, DeadlineExceeded, ResponseTooLarge, UnexpectedResponse
from .config import ModuleConfig
from .scripts import Command
from .winrm_transport import MalformedAnswer, bounded_protocol
from .wsman import WinRSProtocol

log = logging.getLogger(__name__)

ACCESS_DENIED = 5
QUOTA_FAULTS = {2150859173, 2150859174, 2150859175, 2150859176, 2150859179}
TRANSIENT_REASONS = {"connection_refused", "connection_error", "timeout", "http_error"}
CLEANUP_TIMEOUT_SECONDS = 8
MAX_ORPHANS = 16
# Asked for at Create: a shell whose ID never reached us (the Create answer was lost) lives this long on the
# server, not Windows' default of two hours, so it cannot pile up against MaxShellsPerUser.
SHELL_IDLE_TIMEOUT = "PT120.000S"
_MIN_REQUEST_SECONDS = 2
# stderr only ever becomes a 300-character failure message: keep its start, drop the rest as it arrives.
MAX_STDERR_BYTES = 64 << 10


class PollFailure(Exception):
    """A failed poll: `reason` is a stable class for metrics, `message` a short human text without secrets."""

    def __init__(self, reason: str, message: str, *, connection_intact: bool = False):
        message = " ".join(message.split())[:300]  # server text must not start a new log line
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.connection_intact = connection_intact  # raised between requests: the connection is still usable


@dataclass(frozen=True)
class CommandResult:
    stdout: bytes
    stderr: bytes
    exit_code: int


def classify(error: BaseException) -> PollFailure:
    """Map what pywinrm/requests raise to a reason class (docs/reference/winrm.md section 2.3 lists what each fault raises)."""
    if isinstance(error, PollFailure):
        return error
    if isinstance(error, ResponseTooLarge):
        return PollFailure("output_too_large", str(error))
    if isinstance(error, DeadlineExceeded):
        return PollFailure("deadline_exceeded", str(error))
    if isinstance(error, (MalformedAnswer, UnexpectedResponse)):
        return PollFailure("wsman_fault", f"malformed WS-Management answer: {error}")
    if isinstance(error, InvalidCredentialsError):
        return PollFailure("auth_failed", "the server rejected the credentials (HTTP 401)")
    if isinstance(error, WSManFaultError):
        codes = {error.wsman_fault_code, error.wmierror_code}
        reason_text = " ".join(str(error.reason or "").split())
        if ACCESS_DENIED in codes:
            return PollFailure("access_denied", f"WS-Management access denied (fault 5): {reason_text}")
        if codes & QUOTA_FAULTS:
            return PollFailure("quota_exceeded", f"WinRM quota exceeded: {reason_text}")
        code = error.wsman_fault_code or error.wmierror_code
        return PollFailure("wsman_fault", f"WS-Management fault {code}: {reason_text}")
    if isinstance(error, WinRMOperationTimeoutError):
        return PollFailure("timeout", "WS-Management operation timed out")
    if isinstance(error, WinRMTransportError):
        if error.code == 401:
            return PollFailure("auth_failed", "the server rejected the credentials (HTTP 401)")
        return PollFailure("http_error", f"HTTP {error.code} from the WinRM service")
    if isinstance(error, requests.exceptions.SSLError):
        return PollFailure("tls_error", f"TLS handshake failed: {_root_cause(error)}")
    if isinstance(error, (requests.exceptions.ConnectTimeout, requests.exceptions.ReadTimeout)):
        return PollFailure("timeout", "no HTTP answer from the WinRM service in time")
    if isinstance(error, requests.exceptions.ConnectionError):
        text = _root_cause(error)
        if "refused" in text.lower():
            return PollFailure("connection_refused", "connection refused (is WinRM listening on that port?)")
        return PollFailure("connection_error", f"connection failed: {text}")
    if isinstance(error, requests.exceptions.RequestException):
        return PollFailure("connection_error", f"HTTP request failed: {error.__class__.__name__}")
    if isinstance(error, (AssertionError, WinRMError)) or error.__class__.__name__ == "ParseError":
        return PollFailure("wsman_fault", f"malformed WS-Management answer ({error.__class__.__name__})")
    origin = _raised_in(error)
    if origin == "ntlm":
        return PollFailure("auth_failed", f"the NTLM handshake failed: the server's answer was not a valid "
                                          f"challenge ({error.__class__.__name__})")
    if origin == "wsman":  # indexing into an answer without the field, int() of a non-number, ...
        return PollFailure("wsman_fault", f"malformed WS-Management answer ({error.__class__.__name__})")
    return PollFailure("internal_error", f"unexpected {error.__class__.__name__}")


# Code that reads a server's answers, by what a ValueError/KeyError/... raised there means.
_ANSWER_READERS = {"winrm": "wsman", "exporter.wsman": "wsman", "requests_ntlm": "ntlm", "spnego": "ntlm"}


def _raised_in(error: BaseException) -> str:
    """`wsman` or `ntlm` when the innermost frame of an answer reader raised `error`, else ''."""
    traceback, origin = error.__traceback__, ""
    while traceback is not None:
        module = traceback.tb_frame.f_globals.get("__name__", "")
        for prefix, kind in _ANSWER_READERS.items():
            if module == prefix or module.startswith(prefix + "."):
                origin = kind
        traceback = traceback.tb_next
    return origin


def _root_cause(error: BaseException) -> str:
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    args = getattr(error, "args", ())
    text = str(args[-1] if args else error)
    return text.split(": ", 1)[-1][:200] if "object at 0x" in text else text[:200]


class ServerConnection:
    """The WinRM endpoint of one server. Not thread-safe: the poller runs one poll per server at a time."""

    def __init__(self, endpoint: str, module: ModuleConfig, *, max_response_bytes: int, max_poll_bytes: int):
        self.endpoint = endpoint
        self.module = module
        self.max_response_bytes = max_response_bytes
        self.max_poll_bytes = max_poll_bytes
        self._protocol: Protocol | None = None
        self._reused = False
        self._orphans: list[str] = []  # shells whose Delete failed: deleted at the next poll that connects
        self._ntlm_hashes: str | None = None  # password-equivalent for NTLM: never logged, kept like the password
        self._lock = threading.Lock()

    # ------------------------------------------------------------ connection

    def _password(self) -> str | None:
        """The password as pywinrm gets it. For NTLM, the LM and NT hashes in pyspnego's `lm:nt` hex form,
        computed once per server: pyspnego accepts them in place of the password and otherwise derives
        them with pure-Python DES and MD4 for every new connection, about 0.8 ms, which at a 5-minute
        interval (HTTP.sys drops idle connections after two minutes) is every poll. NTLM needs only the
        hashes; Basic and CredSSP send the password itself."""
        if self.module.password is None:
            return None
        if self.module.transport != "ntlm":
            return self.module.password.reveal()
        if self._ntlm_hashes is None:
            password = self.module.password.reveal()
            self._ntlm_hashes = f"{lmowfv1(password).hex()}:{ntowfv1(password).hex()}"
        return self._ntlm_hashes

    def _new_protocol(self) -> Protocol:
        m = self.module
        transport = {"basic": "basic" if m.scheme == "http" else "ssl"}.get(m.transport, m.transport)
        protocol = WinRSProtocol(
            self.endpoint,
            transport=transport,
            username=m.username,
            password=self._password(),
            server_cert_validation="ignore" if m.insecure_skip_verify else "validate",
            ca_trust_path=str(m.ca_file) if m.ca_file else None,
            cert_pem=str(m.cert_file) if m.cert_file else None,
            cert_key_pem=str(m.key_file) if m.key_file else None,
            message_encryption="auto",
            operation_timeout_sec=int(m.operation_timeout),
            read_timeout_sec=int(m.read_timeout),
            proxy=None,
            service="WSMAN" if m.transport == "kerberos" else "HTTP",
            kerberos_delegation=m.kerberos_delegation,
        )
        return bounded_protocol(protocol, BoundedAdapter(self.max_response_bytes))

    def _connected(self, deadline: float) -> Protocol:
        if self._protocol is None:
            protocol = self._new_protocol()
            self._set_timeouts(protocol, deadline)
            protocol.transport.build_session()  # NTLM handshake happens here for encrypted HTTP
            self._protocol = protocol
        return self._protocol

    def close(self) -> None:
        if self._protocol is not None:
            self._protocol.transport.adapter.release()
            try:
                self._protocol.transport.close_session()
            except Exception:  # closing a broken connection must not fail a poll
                pass
            self._protocol = None

    def _set_timeouts(self, protocol: Protocol, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining < _MIN_REQUEST_SECONDS:
            raise PollFailure("deadline_exceeded", "the poll deadline passed", connection_intact=True)
        op = max(1, min(int(self.module.operation_timeout), int(remaining) - 1))
        protocol.operation_timeout_sec = op
        protocol.read_timeout_sec = op + 1
        protocol.transport.read_timeout_sec = op + 1
        protocol.transport.adapter.guard(deadline)

    # ------------------------------------------------------------ one command

    def run(self, command: Command, deadline: float) -> CommandResult:
        """Run one command; retry transient faults while the deadline allows."""
        with self._lock:

            def attempt() -> CommandResult:
                try:
                    return self._run_once(command, deadline)
                except BaseException as err:
                    failure = classify(err)
                    self.close()
                    if failure.reason == "auth_failed" and self._reused:
                        # A kept connection the server dropped looks like 401 to pywinrm: retry once, fresh.
                        self._reused = False
                        return self._run_once(command, deadline)
                    raise failure from None

            retrying = tenacity.Retrying(
                retry=tenacity.retry_if_exception(
                    lambda e: isinstance(e, PollFailure) and e.reason in TRANSIENT_REASONS
                ),
                stop=tenacity.stop_after_attempt(3) | _stop_at_deadline(deadline),
                wait=tenacity.wait_exponential_jitter(multiplier=0.5, max=5, jitter=0.5),
                reraise=True,
            )
            try:
                return retrying(attempt)
            except PollFailure as failure:
                raise self._without_secrets(failure) from None
            except BaseException as err:
                raise self._without_secrets(classify(err)) from None
            finally:
                if self._protocol is not None:  # kept for the next poll: its sockets must outlive this deadline
                    self._protocol.transport.adapter.release()

    def _without_secrets(self, failure: PollFailure) -> PollFailure:
        """A server's fault text may quote our request, Authorization header included: mask the credential."""
        text = failure.message
        for secret in self.module.secrets():
            text = text.replace(secret, "<redacted>")
        if text == failure.message:
            return failure
        return PollFailure(failure.reason, text, connection_intact=failure.connection_intact)

    def _run_once(self, command: Command, deadline: float) -> CommandResult:
        if self._protocol is not None and self._protocol.transport.idle_connection_dropped():
            self.close()  # HTTP.sys closes idle connections after about two minutes: authenticate anew
        self._reused = self._protocol is not None
        protocol = self._connected(deadline)
        self._delete_orphans(protocol, deadline)
        shell_id = command_id = None
        intact = True
        try:
            self._set_timeouts(protocol, deadline)
            shell_id = protocol.open_shell(idle_timeout=SHELL_IDLE_TIMEOUT)
            self._set_timeouts(protocol, deadline)
            # WINRS_SKIP_CMD_SHELL: CreateProcess's 32,767-character limit instead of cmd.exe's 8,191 (scripts.py)
            command_id = protocol.run_command(shell_id, command.executable, command.arguments, skip_cmd_shell=True)
            stdout, stderr, exit_code = self._receive(protocol, shell_id, command_id, deadline)
            return CommandResult(stdout, stderr, exit_code)
        except PollFailure as failure:
            intact = failure.connection_intact
            raise
        except (WSManFaultError, WinRMOperationTimeoutError):
            raise  # the server answered with a fault: the connection is fine
        except BaseException:
            intact = False
            raise
        finally:
            self._cleanup(shell_id, command_id, broken=not intact)

    def _receive(self, protocol: Protocol, shell_id: str, command_id: str, deadline: float) -> tuple[bytes, bytes, int]:
        stdout, stderr = bytearray(), bytearray()
        while True:
            self._set_timeouts(protocol, deadline)
            try:
                out, err, code, done = protocol.get_command_output_raw(shell_id, command_id)
            except WinRMOperationTimeoutError:
                continue  # Windows answers "nothing yet" this way; ask again while the deadline allows
            stdout += out
            stderr += err[: max(0, MAX_STDERR_BYTES - len(stderr))]
            if len(stdout) + len(stderr) > self.max_poll_bytes:
                raise PollFailure(
                    "output_too_large", f"command output exceeds limits.max_poll_bytes ({self.max_poll_bytes})",
                    connection_intact=True,
                )
            if done:
                return bytes(stdout), bytes(stderr), code

    def _delete_orphans(self, protocol: Protocol, deadline: float) -> None:
        """Delete shells a failed poll could not: a server that refused or dropped the connection then may
        still hold them, and they count against MaxShellsPerUser until its idle timeout."""
        while self._orphans:
            shell_id = self._orphans[0]
            self._set_timeouts(protocol, deadline)
            try:
                protocol.close_shell(shell_id, close_session=False)
            except WSManFaultError:
                pass  # already gone (expired or the service restarted): nothing to delete
            self._orphans.pop(0)

    def _cleanup(self, shell_id: str | None, command_id: str | None, *, broken: bool) -> None:
        """Signal terminate and delete the shell. After a failure, use a new connection: the old one may be dead."""
        if shell_id is None:
            return
        if broken:
            self.close()
        cleanup_deadline = time.monotonic() + CLEANUP_TIMEOUT_SECONDS + 1
        try:
            protocol = self._connected(cleanup_deadline)
            self._set_timeouts(protocol, cleanup_deadline)
            if command_id is not None:
                try:
                    protocol.cleanup_command(shell_id, command_id)
                except Exception:  # the command may already be gone; Delete still matters
                    pass
            protocol.close_shell(shell_id, close_session=False)
        except Exception as err:
            log.warning("could not delete WinRM shell on %s, will retry at the next poll: %s", self.endpoint,
                        classify(err).message)
            if len(self._orphans) < MAX_ORPHANS:
                self._orphans.append(shell_id)
            self.close()
        finally:
            if broken:
                self.close()


def _stop_at_deadline(deadline: float) -> Callable:
    class _Stop(tenacity.stop.stop_base):
        def __call__(self, retry_state) -> bool:
            return deadline - time.monotonic() < _MIN_REQUEST_SECONDS + 1

    return _Stop()
