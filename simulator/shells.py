"""The WinRS shells and commands open on one simulated host, with Windows' quota and idle expiry.

Leaked shells are the failure mode that matters for a poller (a failed `run_ps` never deletes its shell),
so shells live until Delete or until `idle_timeout_seconds` pass without a request naming them, and
Create beyond MaxShellsPerUser for the same user is refused. All methods take the host's lock: the
event loop mutates, while tests and the control API read counts from other threads.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from .host import CommandOutput, Logon
from .wsman import WsmanFault, new_guid


_STREAM_OVERHEAD = 120  # bytes of one <rsp:Stream Name=".." CommandId="..."> element around its base64


@dataclass
class Command:
    output: CommandOutput
    started: float  # monotonic time of the Command request; output is ready at started + runtime
    stdout: list[bytes] = field(default_factory=list)  # chunks not yet sent
    stderr: list[bytes] = field(default_factory=list)

    @property
    def ready_at(self) -> float:
        return self.started + max(self.output.runtime_seconds, 0.0)

    def take(self, budget: int) -> tuple[list[bytes], list[bytes], bool]:
        """Pop the output that fits in `budget` bytes of base64 streams: (stdout, stderr, everything sent)."""
        taken: tuple[list[bytes], list[bytes]] = ([], [])
        for source, target in ((self.stdout, taken[0]), (self.stderr, taken[1])):
            while source and budget > 0:
                cost = 4 * ((len(source[0]) + 2) // 3) + _STREAM_OVERHEAD
                if cost <= budget:
                    target.append(source.pop(0))
                    budget -= cost
                    continue
                room = (budget - _STREAM_OVERHEAD) // 4 * 3
                if room > 0:
                    target.append(source[0][:room])
                    source[0] = source[0][room:]
                budget = 0
        return taken[0], taken[1], not self.stdout and not self.stderr


@dataclass
class Shell:
    logon: Logon  # the network logon that created it; its commands run in it
    last_used: float
    idle_timeout: float  # the client's IdleTimeOut when it asked for less than the server's setting
    commands: dict[str, Command] = field(default_factory=dict)


class ShellTable:
    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._shells: dict[str, Shell] = {}
        self.requests = 0
        self.commands = 0

    def create(self, logon: Logon, max_shells: int, idle_timeout: float, requested_idle: float | None = None) -> str:
        now = time.monotonic()
        with self._lock:
            self._expire(now, idle_timeout)
            owned = sum(1 for shell in self._shells.values() if shell.logon.principal.lower() == logon.principal.lower())
            if owned >= max_shells:
                raise WsmanFault(2150859173, str(max_shells))
            shell_id = new_guid()
            own_timeout = min(idle_timeout, requested_idle) if requested_idle else idle_timeout
            self._shells[shell_id] = Shell(logon=logon, last_used=now, idle_timeout=own_timeout)
            return shell_id

    def shell(self, shell_id: str, idle_timeout: float) -> Shell:
        """The shell named by a request; touching it resets its idle clock."""
        now = time.monotonic()
        with self._lock:
            self._expire(now, idle_timeout)
            shell = self._shells.get(shell_id.upper())
            if shell is None:
                raise WsmanFault.unknown_shell(shell_id)
            shell.last_used = now
            return shell

    def add_command(self, shell: Shell, output: CommandOutput, started: float) -> str:
        command_id = new_guid()
        with self._lock:
            shell.commands[command_id] = Command(output, started, list(output.stdout_chunks), [output.stderr] if output.stderr else [])
            self.commands += 1
        return command_id

    def command(self, shell: Shell, command_id: str) -> Command:
        with self._lock:
            command = shell.commands.get(command_id.upper())
        if command is None:
            raise WsmanFault.unknown_command()
        return command

    def remove_command(self, shell: Shell, command_id: str) -> None:
        with self._lock:
            if shell.commands.pop(command_id.upper(), None) is None:
                raise WsmanFault.unknown_command()

    def delete(self, shell_id: str) -> None:
        with self._lock:
            if self._shells.pop(shell_id.upper(), None) is None:
                raise WsmanFault.unknown_shell(shell_id)

    def open_count(self, idle_timeout: float) -> int:
        with self._lock:
            self._expire(time.monotonic(), idle_timeout)
            return len(self._shells)

    def _expire(self, now: float, idle_timeout: float) -> None:
        stale = [sid for sid, shell in self._shells.items()
                 if now - shell.last_used >= min(idle_timeout, shell.idle_timeout)]
        for sid in stale:
            del self._shells[sid]
