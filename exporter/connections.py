"""Which WinRM connection a poll uses: one per server and module, one poll of a server at a time.

A poll borrows its connection with `lease()`, which first waits (within the poll's deadline) for any other
poll of the same server to end, so a `/probe` and a scheduled poll never overlap on one server. A
connection is made with the settings of the configuration the poll runs under; when a reload or a new
discovery changes them (address, module, byte limits), the old connection is retired: taken out of the
pool at once and closed when the last poll using it has given it back, never under a poll that is reading
from it. A reload that leaves a server's settings alone leaves its connection alone.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from .config import Config, ModuleConfig
from .targets import Target, Targets
from .winrm import PollFailure, ServerConnection, connect


@dataclass(frozen=True)
class _Settings:
    endpoint: str
    module: ModuleConfig
    max_response_bytes: int
    max_poll_bytes: int
    server_name: str  # the configured name: the Kerberos SPN and the NTLM target name come from it


def _settings(target: Target, module_name: str, config: Config) -> _Settings | None:
    module = config.modules.get(module_name)
    if module is None:
        return None
    return _Settings(target.endpoint, module, config.limits.max_response_bytes, config.limits.max_poll_bytes,
                     target.name)


class _Entry:
    def __init__(self, settings: _Settings):
        self.settings = settings
        # WinRS, or PowerShell remoting for a module with `protocol: psrp`: the same interface
        self.connection = connect(settings.endpoint, settings.module, max_response_bytes=settings.max_response_bytes,
                                  max_poll_bytes=settings.max_poll_bytes, server_name=settings.server_name)
        self.users = 0
        self.retired = False


class Connections:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: dict[tuple[str, str], _Entry] = {}
        self._server_locks: dict[str, threading.Lock] = {}

    @contextmanager
    def lease(self, target: Target, module_name: str, config: Config, deadline: float) -> Iterator[ServerConnection]:
        """The connection for polling `target` with `module_name`, held by this poll alone among the polls of
        that server until the block ends. Raises PollFailure when another poll of the server holds it past
        `deadline` (monotonic)."""
        key = target.name.lower()
        with self._lock:
            server_lock = self._server_locks.setdefault(key, threading.Lock())
        if not server_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise PollFailure("deadline_exceeded", "another poll of this server ran for the whole budget")
        try:
            settings = _settings(target, module_name, config)
            if settings is None:
                raise PollFailure("not_found", f"module {module_name[:64]!r} is not configured")
            entry = self._borrow((key, module_name), settings)
            try:
                yield entry.connection
            finally:
                self._give_back(entry)
        finally:
            server_lock.release()

    def _borrow(self, key: tuple[str, str], settings: _Settings) -> _Entry:
        retired = None
        with self._lock:
            entry = self._pool.get(key)
            if entry is None or entry.settings != settings:
                retired = entry and self._retire(key)
                entry = self._pool[key] = _Entry(settings)
            entry.users += 1
        if retired is not None:
            retired.close()
        return entry

    def _give_back(self, entry: _Entry) -> None:
        with self._lock:
            entry.users -= 1
            idle_and_retired = entry.retired and entry.users == 0
        if idle_and_retired:
            entry.connection.close()

    def _retire(self, key: tuple[str, str]) -> ServerConnection | None:
        """Take a connection out of the pool (under the lock); the connection to close now if no poll has it."""
        entry = self._pool.pop(key)
        entry.retired = True
        return entry.connection if entry.users == 0 else None

    def follow(self, config: Config, targets: Targets) -> None:
        """After a reload or a discovery: retire the connections of servers that are no longer targets and
        those whose settings changed; the others stay as they are."""
        organization = targets.for_organization()

        def target(name: str) -> Target | None:
            if organization is not None and organization.name.lower() == name:
                return organization
            return targets.get(name)

        to_close = []
        with self._lock:
            for key, entry in list(self._pool.items()):
                name, module_name = key
                now = target(name)
                if now is None or _settings(now, module_name, config) != entry.settings:
                    to_close.append(self._retire(key))
            self._server_locks = {name: lock for name, lock in self._server_locks.items()
                                  if target(name) is not None or lock.locked()}
        for connection in to_close:
            if connection is not None:
                connection.close()

    def close(self) -> None:
        """Retire every connection (the poller stops)."""
        with self._lock:
            to_close = [self._retire(key) for key in list(self._pool)]
        for connection in to_close:
            if connection is not None:
                connection.close()
