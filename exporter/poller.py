"""Poll every server in the background and keep the latest result of each.

Scheduling, in one place:
- each server gets a stable offset inside the interval (a hash of its name), so a fleet is spread over
  the interval instead of polled all at once at start, plus a little jitter per cycle;
- a global limit on concurrent polls (`poll.concurrency`), one poll at a time per server;
- servers whose last poll failed may hold only `poll.failing_share` of the slots, so servers that hang
  until their deadline cannot starve healthy ones, and a server failing three times or more in a row is
  polled at 2x, then 4x the interval until it answers again.
`poll_server` is also what `/probe` and the `poll` command call: the same path, synchronously.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

from . import scripts
from .catalog import Catalog
from .config import Config
from .eems_log import classify_organization_error
from .interpret import interpret_server
from .model import CollectorOutcome, OrganizationResult, RawServerFacts, ServerResult, ServerState
from .parse import ParseError, clixml_to_text, parse_organization_output, parse_server_output
from .targets import Target, Targets
from .winrm_client import PollFailure, ServerConnection

log = logging.getLogger(__name__)

ORGANIZATION_KEY = "\x00organization"
BACKOFF_AFTER_FAILURES = 3
MAX_BACKOFF_FACTOR = 4


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Poller:
    def __init__(self, config: Config, catalog: Catalog):
        self.config = config
        self.catalog = catalog
        self.targets = Targets(config)
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._results: dict[str, ServerResult] = {}
        self._organization: OrganizationResult | None = (
            OrganizationResult(config.organization.name) if config.organization else None
        )
        self._connections: dict[tuple[str, str], ServerConnection] = {}
        self._server_locks: dict[str, threading.Lock] = {}
        self._failures: dict[str, int] = {}
        self._running: set[str] = set()
        self._completed: list[tuple[str, float]] = []
        self._executor: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._random = random.Random()

    # ------------------------------------------------------------ results

    def snapshot(self) -> tuple[list[ServerResult], OrganizationResult | None]:
        with self._lock:
            names = {t.name.lower() for t in self.targets.mine()}
            servers = [r for key, r in sorted(self._results.items()) if key in names]
            return servers, self._organization

    def ready(self) -> bool:
        """Ready once every server of this instance has been polled at least once."""
        servers, _ = self.snapshot()
        return len(servers) == len(self.targets.mine()) and all(r.outcome for r in servers)

    # ------------------------------------------------------------ one poll

    def _server_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._server_locks.setdefault(key, threading.Lock())

    def _connection(self, target: Target, module_name: str) -> ServerConnection:
        key = (target.name.lower(), module_name)
        with self._lock:
            connection = self._connections.get(key)
            if connection is None or connection.endpoint != target.endpoint:
                connection = ServerConnection(
                    target.endpoint,
                    self.config.modules[module_name],
                    max_response_bytes=self.config.limits.max_response_bytes,
                    max_poll_bytes=self.config.limits.max_poll_bytes,
                )
                self._connections[key] = connection
            return connection

    def _run_script(self, target: Target, module_name: str, script: str, deadline: float) -> bytes:
        connection = self._connection(target, module_name)
        result = connection.run(scripts.powershell_command(script), deadline)
        if result.exit_code != 0:
            detail = clixml_to_text(result.stderr).strip() or "no error text"
            raise PollFailure("script_failed", f"PowerShell exited with code {result.exit_code}: {detail}")
        return result.stdout

    def _server_script(self, target: Target) -> str:
        poll = self.config.poll
        proxy = target.endpoint_proxy
        if not proxy and self._organization is not None:
            info = self._organization.servers.get(target.name.lower())
            proxy = info.internet_web_proxy if info and info.internet_web_proxy else ""
        return scripts.server_script(
            scripts.ServerScriptParameters(
                lookback_hours=max(1, int(poll.lookback // 3600)),
                max_events=poll.max_events,
                log_tail_bytes=poll.log_tail_bytes,
                check_endpoint=poll.check_endpoint,
                endpoint_timeout_seconds=max(1, int(poll.endpoint_timeout)),
                proxy=proxy,
            )
        )

    def _admin_display_version(self, target: Target) -> str | None:
        """The build fallback: Get-ExchangeServer's AdminDisplayVersion from the last organization poll."""
        if self._organization is None:
            return None
        info = self._organization.servers.get(target.name.lower())
        return info.admin_display_version if info else None

    def poll_server(self, name: str, *, module: str | None = None, timeout: float | None = None) -> ServerResult:
        """Poll one server now and record the result (a probe with another module is not recorded)."""
        target = self.targets.get(name)
        if target is None:
            raise KeyError(name)
        module_name = module or target.module
        record = module_name == target.module
        budget = min(timeout or self.config.poll.timeout, self.config.poll.timeout)
        requested = time.monotonic()
        deadline = requested + budget  # waiting for another poll of the same server (a probe) spends it too
        lock = self._server_lock(target.name.lower())
        if not lock.acquire(timeout=budget):
            failure = PollFailure("deadline_exceeded", "another poll of this server ran for the whole budget")
            return ServerResult(target.name, outcome=self._failed("server", requested, failure))
        try:
            started = time.monotonic()
            previous = self._results.get(target.name.lower()) if record else None
            result = ServerResult(target.name, state=previous.state if previous else None,
                                  last_success=previous.last_success if previous else None)
            try:
                stdout = self._run_script(target, module_name, self._server_script(target), deadline)
                _, result.state = self.interpret(target, stdout)
                finished = utcnow()
                result.last_success = finished
                result.outcome = CollectorOutcome("server", True, time.monotonic() - started, finished)
            except (PollFailure, ParseError) as failure:
                result.outcome = self._failed("server", started, failure)
                log.warning("poll of %s failed: %s: %s", target.name, result.outcome.error_reason,
                            result.outcome.error_message)
            except Exception as err:  # a bug must cost one server one poll, not the exporter
                log.exception("poll of %s failed unexpectedly", target.name)
                result.outcome = self._failed("server", started, PollFailure("internal_error", type(err).__name__))
            if record:
                with self._lock:
                    if self.targets.get(target.name) is None:  # removed by a reload while it was polled
                        return result
                    self._results[target.name.lower()] = result
                    self._count_failures(target.name.lower(), result.outcome.success)
            return result
        finally:
            lock.release()

    def interpret(self, target: Target, stdout: bytes) -> tuple[RawServerFacts, ServerState]:
        """Parse and judge one output of the collection script, as a poll does. Raises ParseError."""
        facts = parse_server_output(
            stdout, max_events=self.config.poll.max_events, max_log_bytes=self.config.poll.log_tail_bytes
        )
        now = facts.now or utcnow()
        return facts, interpret_server(
            target.name, facts, self.catalog, lookback=timedelta(seconds=self.config.poll.lookback), now=now,
            today=utcnow().date(), admin_display_version=self._admin_display_version(target),
        )

    def run_raw(self, name: str, script: str | None = None, *, timeout: float | None = None) -> bytes:
        """The stdout of `script` (default: the server's collection script) on one server, neither parsed nor
        recorded: `diagnose` shows it beside the interpretation. Raises PollFailure."""
        target = self.targets.get(name)
        if target is None:
            raise KeyError(name)
        deadline = time.monotonic() + (timeout or self.config.poll.timeout)
        return self._run_script(target, target.module, script or self._server_script(target), deadline)

    def _count_failures(self, key: str, success: bool) -> None:
        """Consecutive failures per server (and the organization): they decide the failing lane and back-off."""
        self._failures[key] = 0 if success else self._failures.get(key, 0) + 1

    @staticmethod
    def _failed(collector: str, started: float, failure: Exception) -> CollectorOutcome:
        reason = getattr(failure, "reason", "internal_error")
        return CollectorOutcome(collector, False, time.monotonic() - started, utcnow(),
                                error_reason=reason, error_message=" ".join(str(failure).split())[:300])

    def poll_organization(self) -> OrganizationResult | None:
        organization = self.config.organization
        if organization is None:
            return None
        target = self.targets.get(organization.server) or Target(
            name=organization.server, address=organization.server,
            port=self.config.modules[organization.module].port, scheme=self.config.modules[organization.module].scheme,
            module=organization.module, endpoint_proxy="", discovered=False,
        )
        with self._server_lock(ORGANIZATION_KEY):
            started = time.monotonic()
            previous = self._organization
            result = OrganizationResult(organization.name, facts=previous.facts, last_success=previous.last_success,
                                        servers=previous.servers)
            try:
                stdout = self._run_script(target, organization.module, scripts.organization_script(),
                                          started + self.config.poll.timeout)
                facts = parse_organization_output(stdout, max_servers=self.config.limits.max_servers)
                if facts.error_message:
                    reason = classify_organization_error(facts.error_message)
                    raise PollFailure(reason, f"{facts.error_stage or 'script'}: {facts.error_message}")
                result.facts = facts
                result.servers = {s.name.lower(): s for s in facts.servers}
                result.last_success = utcnow()
                result.outcome = CollectorOutcome("organization", True, time.monotonic() - started, result.last_success)
                if organization.discover_servers:
                    self.targets.set_discovered(facts.servers)
            except (PollFailure, ParseError) as failure:
                result.outcome = self._failed("organization", started, failure)
                log.warning("organization collector on %s failed: %s: %s", target.name,
                            result.outcome.error_reason, result.outcome.error_message)
            except Exception as err:
                log.exception("organization collector failed unexpectedly")
                result.outcome = self._failed("organization", started, PollFailure("internal_error", type(err).__name__))
            with self._lock:
                self._organization = result
                self._count_failures(ORGANIZATION_KEY, result.outcome.success)
            return result

    def run_cycle(self) -> None:
        """Poll the organization, then every server once, concurrently within the limit; wait for all."""
        self.poll_organization()
        with ThreadPoolExecutor(self.config.poll.concurrency) as pool:
            list(pool.map(lambda t: self.poll_server(t.name), self.targets.mine()))

    # ------------------------------------------------------------ background schedule

    def _offset(self, key: str, interval: float) -> float:
        digest = hashlib.sha256(key.lower().encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 * interval

    def start(self) -> None:
        self._executor = ThreadPoolExecutor(self.config.poll.concurrency, thread_name_prefix="poll")
        self._thread = threading.Thread(target=self._schedule, name="scheduler", daemon=True)
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

    def _next_due(self, key: str, started: float, interval: float) -> float:
        failures = self._failures.get(key, 0)
        factor = 1
        if failures >= BACKOFF_AFTER_FAILURES:
            factor = min(MAX_BACKOFF_FACTOR, 2 ** (failures - BACKOFF_AFTER_FAILURES + 1))
        jitter = self._random.uniform(-0.5, 0.5) * self.config.poll.jitter * interval
        return started + factor * interval + jitter

    def _schedule(self) -> None:
        start = time.monotonic()
        queue: list[tuple[float, str]] = []
        known: set[str] = set()

        def add_new() -> None:
            interval = self.config.poll.interval
            keys = [t.name.lower() for t in self.targets.mine()]
            if self.config.organization:
                keys.insert(0, ORGANIZATION_KEY)
            for key in keys:
                if key not in known:
                    known.add(key)
                    offset = 0.0 if key == ORGANIZATION_KEY else self._offset(key, interval)
                    heapq.heappush(queue, (max(start, time.monotonic()) + offset, key))

        while not self._stopping.is_set():
            add_new()
            with self._wakeup:
                now = time.monotonic()
                slots = self.config.poll.concurrency
                failing_slots = max(1, int(slots * self.config.poll.failing_share))
                failing_running = sum(1 for k in self._running if self._failures.get(k, 0))
                deferred = []
                while queue and queue[0][0] <= now and len(self._running) < slots:
                    due, key = heapq.heappop(queue)
                    if key != ORGANIZATION_KEY and self.targets.get(key) is None:
                        known.discard(key)  # removed by a reload
                        continue
                    if key in self._running:
                        deferred.append((due + 1, key))
                        continue
                    if self._failures.get(key, 0) and failing_running >= failing_slots:
                        deferred.append((now + 1, key))
                        continue
                    failing_running += 1 if self._failures.get(key, 0) else 0
                    self._running.add(key)
                    self._executor.submit(self._scheduled_poll, key)
                for item in deferred:
                    heapq.heappush(queue, item)
                wait = min(1.0, max(0.05, queue[0][0] - now)) if queue else 1.0
                self._wakeup.wait(wait)
                for key, due in self._completed:
                    heapq.heappush(queue, (due, key))
                self._completed.clear()

    def _scheduled_poll(self, key: str) -> None:
        started = time.monotonic()
        try:
            if key == ORGANIZATION_KEY:
                self.poll_organization()
                interval = self.config.organization.interval if self.config.organization else self.config.poll.interval
            else:
                target = self.targets.get(key)
                if target is not None:
                    self.poll_server(target.name)
                interval = self.config.poll.interval
        finally:
            with self._wakeup:
                self._running.discard(key)
                self._completed.append((key, self._next_due(key, started, interval)))
                self._wakeup.notify_all()

    # ------------------------------------------------------------ reload

    def apply_config(self, config: Config, catalog: Catalog) -> None:
        """Swap in a new configuration; results of servers that remain are kept, the others dropped, so a
        server added back later shows nothing until it is polled again rather than its old result."""
        with self._lock:
            old_connections = self._connections
            self.config = config
            self.catalog = catalog
            self.targets = Targets(config)
            self._connections = {}
            remaining = {server.name.lower() for server in config.servers} | {ORGANIZATION_KEY}
            self._results = {key: result for key, result in self._results.items() if key in remaining}
            self._failures = {key: count for key, count in self._failures.items() if key in remaining}
            if config.organization is None:
                self._organization = None
            elif self._organization is None or self._organization.name != config.organization.name:
                self._organization = OrganizationResult(config.organization.name)
        for connection in old_connections.values():
            connection.close()
