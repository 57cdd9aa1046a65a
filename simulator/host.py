"""The contract between the simulator's two halves.

`wsman`/`server` (the WinRM protocol side) serve one `SimulatedHost` per listening address and ask it to
run each WinRS command line; `scenario`/`windows` (the Windows + EEMS side) build the hosts from a
scenario file and answer the commands. Both halves may change a host's `faults` while it runs, so tests
can inject a fault and clear it again.
"""

from __future__ import annotations

import contextvars
import threading
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class CommandOutput:
    """What one WinRS command produced, as Windows would stream it."""

    stdout_chunks: list[bytes]  # one element per write by the child process
    stderr: bytes = b""  # raw bytes (CLIXML for PowerShell errors/progress)
    exit_code: int = 0
    runtime_seconds: float = 0.0  # CommandState stays Running until this has passed


@dataclass
class Faults:
    """Protocol-level misbehaviour of one host. Output-level faults live in the scenario."""

    latency_seconds: float = 0.0  # added before every HTTP response
    slow_start_seconds: float = 0.0  # added before the answers to Create and Command only: a busy Windows starting
    # the shell host (winrshost.exe) and the process, while Signal and Delete stay quick
    refuse_connections: bool = False  # nothing listens: connection refused
    reset_mid_response: bool = False  # Receive answers with part of the headers, then a TCP reset
    hang: bool = False  # requests are read but never answered
    unauthorized: bool = False  # every request gets 401, even with valid credentials
    fault_code: int | None = None  # Command is answered with this WS-Man fault (5, 2150859173, ...)


@dataclass(frozen=True)
class Logon:
    """The network logon a WinRS shell runs in: the account, and whether the client delegated a credential to
    it (its Kerberos ticket-granting ticket, or with CredSSP its password). Only a delegated logon can reach
    another server, Active Directory included, from inside the shell (the "double hop"); NTLM and a Kerberos
    ticket without delegation cannot."""

    principal: str
    delegated: bool = False


_LOGON: contextvars.ContextVar[Logon | None] = contextvars.ContextVar("logon", default=None)


def run_as(logon: Logon, run: Callable[[str], CommandOutput], line: str) -> CommandOutput:
    """`run(line)` with `current_logon()` returning `logon`, so a host can answer as that logon would."""
    token = _LOGON.set(logon)
    try:
        return run(line)
    finally:
        _LOGON.reset(token)


def current_logon() -> Logon | None:
    """The logon of the command being run (None outside `run_as`, as in tests that call a host directly)."""
    return _LOGON.get()


@dataclass
class SimulatedHost:
    name: str
    address: str  # a 127.0.0.0/8 address
    port: int
    scheme: str  # "http" or "https"
    run: Callable[[str], CommandOutput]  # command line -> output; never raises
    faults: Faults = field(default_factory=Faults)
    max_shells_per_user: int = 30
    idle_timeout_seconds: float = 180.0
    fqdn: str = ""  # the computer's DNS name; its Kerberos service principals are HTTP/<fqdn> and WSMAN/<fqdn>
    auth: tuple[str, ...] = ("ntlm",)  # what Negotiate takes: "ntlm", "kerberos" (a domain may restrict NTLM)
    cbt_hardening: str = "relaxed"  # WinRM's CbtHardeningLevel for Kerberos over HTTPS: relaxed | strict
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # The PowerShell session configurations this host serves over PSRP (a `remoting.Endpoints`); None = only
    # WinRS. `winrs=False` refuses the WinRS cmd shell, so a PSRP-only fleet cannot pass by falling back.
    endpoints: Any = None
    winrs: bool = True
    # The Windows Remote Shell policy (AllowRemoteShellAccess = Disabled, scenario `remote_shell: disabled`): every
    # new shell, WinRS or PSRP, is refused.
    remote_shell_disabled: bool = False


@dataclass(frozen=True)
class ErrorSpec:
    """A PowerShell ErrorRecord as the remoting side writes it: what a real one carries that a client reads."""

    message: str
    error_id: str  # FullyQualifiedErrorId
    category: int  # System.Management.Automation.ErrorCategory value
    exception: tuple[str, ...]  # the exception's type names, most derived first
    target: str | None = None
    reason: str = ""  # CategoryInfo.Reason: the exception's short type name


@dataclass
class Invocation:
    """One pipeline a client invoked: its statements in order, each a list of piped commands, each command
    (name or script text, is_script, parameters). Positional arguments arrive with the name None."""

    statements: list[list[tuple[str, bool, list[tuple[str | None, Any]]]]]


@dataclass
class Answer:
    """What a pipeline produced: output objects, non-terminating errors, and a terminating error (Failed)."""

    output: list[Any] = field(default_factory=list)
    errors: list[ErrorSpec] = field(default_factory=list)
    failure: ErrorSpec | None = None
    runtime_seconds: float = 0.0  # the pipeline stays Running until this has passed
