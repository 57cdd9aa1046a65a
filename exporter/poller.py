"""Poll every server in the background and keep the latest result of each.

The poller wires the parts and keeps what they return. The schedule (`schedule.py`) says which job runs
when; a job is one server's poll or the organization collector's; the collectors (`collectors.py`) do one
poll each. The poller keeps the latest result per server and of the organization (a failed poll keeps the
last good state), one lock per server (a `/probe` and a scheduled poll of one server never overlap), and
one WinRM connection per server and module. Configuration, catalog and targets come from the runtime
holder at every poll; `reloaded()` follows a reload.
`poll_server` is also what `/probe` and the `poll` command call: the same path, synchronously.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from .collectors import collect_organization, collect_server, failed, interpret_output, run_script, server_script
from .config import Config
from .model import OrganizationResult, OrgServerInfo, RawServerFacts, ServerResult, ServerState
from .runtime import Runtime, SafeRuntime
from .schedule import Cadence, Schedule, offset
from .targets import Target
from .winrm import PollFailure, ServerConnection, connect


@dataclass(frozen=True)
class Job:
    """What the schedule runs: one server's poll, or the organization collector (which is not a server)."""

    collector: str  # "server" | "organization"
    name: str  # the server's name in lower case, or the organization's name


class Poller:
    def __init__(self, runtime: SafeRuntime):
        self.runtime = runtime
        config = runtime.current().config
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._results: dict[str, ServerResult] = {}
        self._organization: OrganizationResult | None = (
            OrganizationResult(config.organization.name) if config.organization else None
        )
        self._connections: dict[tuple[str, str], ServerConnection] = {}
        self._server_locks: dict[str, threading.Lock] = {}
        self._organization_lock = threading.Lock()
        self._schedule = Schedule(concurrency=config.poll.concurrency, failing_share=config.poll.failing_share,
                                  jitter=config.poll.jitter)
        self._executor: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # ------------------------------------------------------------ results

    def snapshot(self) -> tuple[list[ServerResult], OrganizationResult | None]:
        names = {t.name.lower() for t in self.runtime.current().targets.mine()}
        with self._lock:
            servers = [r for key, r in sorted(self._results.items()) if key in names]
            return servers, self._organization

    def ready(self) -> bool:
        """Ready once every server of this instance has been polled at least once."""
        servers, _ = self.snapshot()
        return len(servers) == len(self.runtime.current().targets.mine()) and all(r.outcome for r in servers)

    def _known(self, name: str) -> OrgServerInfo | None:
        """What the last organization poll said about a server (its proxy, its AdminDisplayVersion)."""
        organization = self._organization
        return organization.servers.get(name.lower()) if organization is not None else None

    # ------------------------------------------------------------ one poll

    def _server_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._server_locks.setdefault(key, threading.Lock())

    def _connection(self, target: Target, module_name: str, config: Config) -> ServerConnection:
        key = (target.name.lower(), module_name)
        with self._lock:
            connection = self._connections.get(key)
            if connection is None or connection.endpoint != target.endpoint:
                connection = connect(
                    target.endpoint,
                    config.modules[module_name],
                    max_response_bytes=config.limits.max_response_bytes,
                    max_poll_bytes=config.limits.max_poll_bytes,
                    server_name=target.name,
                )
                self._connections[key] = connection
            return connection

    def _target(self, current: Runtime, name: str) -> Target:
        target = current.targets.get(name)
        if target is None:
            raise KeyError(name)
        return target

    def poll_server(self, name: str, *, module: str | None = None, timeout: float | None = None) -> ServerResult:
        """Poll one server now and record the result (a probe with another module is not recorded)."""
        current = self.runtime.current()
        target = self._target(current, name)
        config = current.config
        module_name = module or target.module
        budget = min(timeout or config.poll.timeout, config.poll.timeout)
        requested = time.monotonic()
        deadline = requested + budget  # waiting for another poll of the same server (a probe) spends it too
        lock = self._server_lock(target.name.lower())
        if not lock.acquire(timeout=budget):
            failure = PollFailure("deadline_exceeded", "another poll of this server ran for the whole budget")
            return ServerResult(target.name, outcome=failed("server", requested, failure))
        try:
            result = collect_server(target, self._connection(target, module_name, config), config.poll,
                                    current.catalog, deadline, known=self._known(target.name))
            return self._record(result) if module_name == target.module else result
        finally:
            lock.release()

    def _record(self, result: ServerResult) -> ServerResult:
        """Keep `result` as the server's latest; a failed poll keeps the last good state."""
        key = result.name.lower()
        with self._lock:
            previous = self._results.get(key)
            if not result.outcome.success and previous is not None:
                result = replace(result, state=previous.state, last_success=previous.last_success)
            if self.runtime.current().targets.get(key) is not None:  # else removed by a reload while polled
                self._results[key] = result
        return result

    def poll_organization(self) -> OrganizationResult | None:
        current = self.runtime.current()
        organization = current.config.organization
        if organization is None:
            return None
        target = current.targets.for_organization()
        with self._organization_lock:
            started = time.monotonic()
            connection = self._connection(target, organization.module, current.config)
            result = collect_organization(target, connection, organization, started + current.config.poll.timeout,
                                          max_servers=current.config.limits.max_servers)
            with self._lock:
                previous = self._organization
                if not result.outcome.success and previous is not None:
                    result = replace(result, facts=previous.facts, last_success=previous.last_success,
                                     servers=previous.servers)
                self._organization = result
            if result.outcome.success and organization.discover_servers:
                self.runtime.current().targets.set_discovered(result.facts.servers)
                self._sync_jobs()
            return result

    def run_raw(self, name: str, script: str | None = None, *, timeout: float | None = None) -> bytes:
        """The stdout of `script` (default: the server's collection script) on one server, neither parsed nor
        recorded: `diagnose` shows it beside the interpretation. Raises PollFailure."""
        current = self.runtime.current()
        target = self._target(current, name)
        deadline = time.monotonic() + (timeout or current.config.poll.timeout)
        script = script or server_script(target, current.config.poll, self._known(target.name))
        return run_script(self._connection(target, target.module, current.config), script, deadline)

    def interpret(self, target: Target, stdout: bytes) -> tuple[RawServerFacts, ServerState]:
        """Parse and judge one output of the collection script, as a poll does. Raises ParseError."""
        current = self.runtime.current()
        return interpret_output(target, stdout, current.config.poll, current.catalog, self._known(target.name))

    # ------------------------------------------------------------ background schedule

    def start(self) -> None:
        self._executor = ThreadPoolExecutor(self.runtime.current().config.poll.concurrency, thread_name_prefix="poll")
        self._sync_jobs()
        self._thread = threading.Thread(target=self._run_schedule, name="scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with self._wakeup:
            self._wakeup.notify_all()
        if self._thread:
            self._thread.join(timeout=5)
        if self._executor:
            # Polls already running finish (each within its deadline): whoever stops the poller may then
            # take the servers away (the demo stops its simulated fleet) without a failed poll or a shell
            # left behind. Polls not yet started are cancelled.
            self._executor.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            connections = list(self._connections.values())
        for connection in connections:
            connection.close()

    def _sync_jobs(self) -> None:
        """Tell the schedule the jobs and limits of now (at start, after a reload, after a discovery)."""
        if self._executor is None:
            return  # not polling in the background: a job's first run is timed from when polling starts
        current = self.runtime.current()
        poll, organization = current.config.poll, current.config.organization
        jobs = {}
        if organization is not None:
            jobs[Job("organization", organization.name)] = Cadence(organization.interval, 0.0)
        for target in current.targets.mine():
            jobs[Job("server", target.name.lower())] = Cadence(poll.interval, offset(target.name, poll.interval))
        with self._wakeup:
            self._schedule.configure(concurrency=poll.concurrency, failing_share=poll.failing_share,
                                     jitter=poll.jitter)
            self._schedule.set_jobs(jobs, time.monotonic())
            self._wakeup.notify_all()

    def _run_schedule(self) -> None:
        while not self._stopping.is_set():
            with self._wakeup:
                now = time.monotonic()
                for job in self._schedule.due(now):
                    self._executor.submit(self._run, job)
                next_due = self._schedule.next_due()
                self._wakeup.wait(min(1.0, max(0.05, next_due - now)) if next_due is not None else 1.0)

    def _run(self, job: Job) -> None:
        started = time.monotonic()
        ok = False
        try:
            if job.collector == "organization":
                result = self.poll_organization()
            else:
                result = self.poll_server(job.name) if self.runtime.current().targets.get(job.name) else None
            ok = bool(result and result.outcome and result.outcome.success)
        finally:
            with self._wakeup:
                self._schedule.done(job, ok, started)
                self._wakeup.notify_all()

    # ------------------------------------------------------------ reload

    def reloaded(self) -> None:
        """Follow the runtime holder's new configuration. Results of servers that remain are kept, the others
        dropped, so a server added back later shows nothing until it is polled again rather than its old
        result; connections are made afresh with the new settings."""
        config = self.runtime.current().config
        with self._lock:
            old_connections = self._connections
            self._connections = {}
            remaining = {server.name.lower() for server in config.servers}
            self._results = {key: result for key, result in self._results.items() if key in remaining}
            self._server_locks = {key: lock for key, lock in self._server_locks.items()
                                  if key in remaining or lock.locked()}
            if config.organization is None:
                self._organization = None
            elif self._organization is None or self._organization.name != config.organization.name:
                self._organization = OrganizationResult(config.organization.name)
        for connection in old_connections.values():
            connection.close()
        self._sync_jobs()
