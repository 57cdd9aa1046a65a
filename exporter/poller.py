"""Poll every server in the background; poll one now for `/probe`, `poll` and `diagnose`.

The poller wires the parts: the schedule (`schedule.py`) says which job runs when, a job being one
server's poll or the organization collector's; `connections.py` lends each poll its server's WinRM
connection, one poll of a server at a time, unless servers keep rejecting the module's credential; the
collectors (`collectors.py`) do one poll each; the store (`store.py`) keeps the background polls' latest
results, which /metrics shows. Configuration, catalog and targets come from the runtime holder
(`runtime.py`) at every poll; `follow()` adopts a reload or a discovery. Time for the schedule and the
credential pauses comes from a `Clock`, which a test replaces; a poll's own deadline is always real time.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .config import MAX_CONCURRENCY, Config, reusable_credential, scheme_problem
from .collectors import collect_organization, collect_server, failed, interpret_output, run_script, server_script
from .connections import Connections
from .model import OrganizationResult, RawServerFacts, ServerResult, ServerState
from .runtime import Runtime, SafeRuntime, Target
from .schedule import Cadence, Schedule, offset
from .store import Store
from .winrm import PollFailure

log = logging.getLogger(__name__)


def _tell_parse_notes(server: str, before: OrganizationResult | None, after: OrganizationResult) -> None:
    """Log the fields the organization's output sent of the wrong type (its parse notes: which ones, our words, none
    of the output's bytes) when they appear or change, and say when they clear. exchange_collector_partial_failure
    part "parse" sends the admin to the log for them, but logged at every poll, the same warning came every
    interval for as long as the field stayed so, and buried the rest of the log. A failed poll tells nothing: the
    notes are those of the last output read, kept with its facts (Store.record_organization); nor does a result
    the store did not keep (`before` None or of another name: a reload removed or renamed the organization)."""
    if before is None or before.name != after.name or not after.outcome.success or after.facts is None:
        return
    told = before.facts.parse_notes if before.facts is not None else ()
    notes = after.facts.parse_notes
    if notes == told:
        return
    if notes:
        log.warning("organization collector on %s: %s", server, "; ".join(notes))
    else:
        log.info("organization collector on %s: its output has no field of the wrong type any more", server)


class Clock:
    """Monotonic seconds for the schedule, and a wait until one of them. A test passes a clock it moves itself
    (tests/clock.py), so a poll interval takes no real time."""

    def now(self) -> float:
        return time.monotonic()

    def wait_until(self, condition: threading.Condition, when: float) -> None:
        """Wait on `condition` (held by the caller) until `when`, or until it is notified."""
        condition.wait(max(0.0, when - time.monotonic()))


def _deadline(requested: float, budget: float, scheduled: bool) -> float:
    """When a poll that holds its server now must end. A probe's budget is its scrape's, so the time it waited for
    another poll of the same server (in `lease`, at most `budget`) is spent. A scheduled poll, or the organization
    collector on its server, gets its whole poll.timeout from now: the wait was for the exporter's own other poll,
    not for a slow server, and counting it failed healthy polls with `timeout` (the organization collector,
    due while its server's own poll ran, every interval on a demo with a 6 s timeout and 3 s scripts)."""
    return time.monotonic() + budget if scheduled else requested + budget


def _own_module(config: Config, target: Target, module: str) -> bool:
    """Whether the exporter itself uses `module` with `target`: its module, or the organization's when it is the
    organization's server."""
    if module == target.module:
        return True
    organization = config.organization
    return organization is not None and module == organization.module and \
        organization.server.lower() in {target.name.lower(), target.address.lower(), target.spn_hostname.lower()}


class ProbeRefused(ValueError):
    """A /probe the configuration does not allow: an unknown module or target, or a module whose credentials must
    not go over the target's scheme (`config.scheme_problem`). Nothing has connected."""


@dataclass(frozen=True)
class Job:
    """What the schedule runs: one server's poll, or the organization collector (which is not a server)."""

    collector: str  # "server" | "organization"
    name: str  # the server's name in lower case, or the organization's name


class Poller:
    def __init__(self, runtime: SafeRuntime, *, clock: Clock | None = None):
        self.runtime = runtime
        self._clock = clock or Clock()
        self.store = Store()
        self.connections = Connections(self._clock.now)
        poll = runtime.current().config.poll
        self._wakeup = threading.Condition()
        self._schedule = Schedule(concurrency=poll.concurrency, failing_share=poll.failing_share, jitter=poll.jitter)
        self._executor: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._following = threading.Lock()  # one follow at a time, each of the runtime current when it runs
        self.follow()  # the store learns the organization; nothing to connect or schedule yet

    # ------------------------------------------------------------ results

    def snapshot(self) -> tuple[list[ServerResult], OrganizationResult | None]:
        """The latest background result of every server this instance polls, and of the organization."""
        return self.store.snapshot(self.runtime.current().targets.polled), self.store.organization()

    def ready(self) -> bool:
        """Ready once every server of this instance has been polled at least once. Decided on one runtime: the
        results of one and the count of the next (a reload in between) made it ready while servers of both were
        not yet polled."""
        polled = self.runtime.current().targets.polled
        servers = self.store.snapshot(polled)
        return len(servers) == len(polled) and all(r.outcome for r in servers)

    # ------------------------------------------------------------ one poll

    def _target(self, current: Runtime, name: str) -> Target:
        target = current.targets.get(name)
        if target is None:
            raise KeyError(name)
        return target

    def poll_server(self, name: str) -> ServerResult:
        """Poll one server now with its own module, and keep the result as its latest (what the background does)."""
        current = self.runtime.current()
        result = self._poll(current, self._target(current, name), None, None, scheduled=True)
        budget = self.runtime.current().config.limits.max_debug_output_bytes
        return self.store.record(result, output_budget=budget)

    def probe(self, name: str, *, module: str | None = None, timeout: float | None = None) -> ServerResult:
        """Poll one server now, within `timeout` if given, and keep nothing: what `/probe` answers. What it may
        poll is decided on the configuration the poll then uses: checked on one and polled with the next (a
        reload in between), a Basic password went to a server the reload had moved to plain http."""
        current = self.runtime.current()
        settings = current.config.modules.get(module) if module is not None else None
        if module is not None and settings is None:
            raise ProbeRefused(f"Unknown module {module[:64]!r}")
        target = current.targets.get(name)
        if target is None:
            raise ProbeRefused(f"Unknown target {name[:256]!r}: only configured or discovered servers can be probed")
        problem = settings and scheme_problem(settings, target.scheme)
        if problem:
            raise ProbeRefused(f"Module {module!r} cannot be used with target {target.name!r} ({target.scheme}): "
                               f"{problem}")
        handed = settings and not _own_module(current.config, target, module) and reusable_credential(settings)
        if handed:  # any client of the port would choose which server gets another module's password
            raise ProbeRefused(f"Module {module!r} is not the own module of target {target.name!r} "
                               f"({target.module}), and a server it authenticates to receives {handed}")
        return self._poll(current, target, module, timeout)

    def _poll(self, current: Runtime, target: Target, module: str | None, timeout: float | None, *,
              scheduled: bool = False) -> ServerResult:
        config = current.config
        requested = time.monotonic()
        budget = min(timeout or config.poll.timeout, config.poll.timeout)
        try:
            with self.connections.lease(target, module or target.module, config, requested + budget) as lease:
                deadline = _deadline(requested, budget, scheduled)
                result = collect_server(target, lease.connection, config.poll, current.catalog, deadline,
                                        known=self.store.known(target.name))
                lease.outcome = result.outcome
                return result
        except PollFailure as failure:
            return ServerResult(target.name, outcome=failed("server", requested, failure))
        except Exception as err:  # a bug costs one poll, recorded as failed; raised, the poll left no result
            log.exception("poll of %s failed unexpectedly", target.name)
            return ServerResult(target.name, outcome=failed("server", requested,
                                                           PollFailure("internal_error", type(err).__name__)))

    def poll_organization(self) -> OrganizationResult | None:
        current = self.runtime.current()
        organization = current.config.organization
        if organization is None:
            return None
        target = current.targets.for_organization()
        requested = time.monotonic()
        budget = current.config.poll.timeout
        try:
            with self.connections.lease(target, organization.module, current.config, requested + budget) as lease:
                result = collect_organization(target, lease.connection, organization,
                                              _deadline(requested, budget, scheduled=True),
                                              max_servers=current.config.limits.max_servers)
                lease.outcome = result.outcome
        except PollFailure as failure:
            result = OrganizationResult(organization.name, outcome=failed("organization", requested, failure))
        before = self.store.organization()
        result = self.store.record_organization(result)
        _tell_parse_notes(target.name, before, result)
        if result.outcome.success and organization.discover_servers:
            if self.runtime.discovered(organization, result.facts.servers):
                self.follow()
        return result

    def run_raw(self, name: str, script: str | None = None, *, timeout: float | None = None,
                module: str | None = None) -> bytes:
        """The stdout of `script` (default: the server's collection script) on one server, neither parsed nor
        recorded, through its module or `module`: `diagnose` shows it beside the interpretation. Raises PollFailure."""
        current = self.runtime.current()
        target = self._target(current, name)
        deadline = time.monotonic() + (timeout or current.config.poll.timeout)
        script = script or server_script(target, current.config.poll, self.store.known(target.name))
        with self.connections.lease(target, module or target.module, current.config, deadline) as lease:
            return run_script(lease.connection, script, deadline)

    def interpret(self, target: Target, stdout: bytes) -> tuple[RawServerFacts, ServerState]:
        """Parse and judge one output of the collection script, as a poll does. Raises ParseError."""
        current = self.runtime.current()
        return interpret_output(target, stdout, current.config.poll, current.catalog, self.store.known(target.name))

    # ------------------------------------------------------------ background schedule

    def start(self) -> None:
        # The schedule caps how many polls run, and a reload may change the cap: the executor, sized once, makes its
        # threads as polls need them, up to the most any configuration allows (sized to the first one, a reload
        # that raised poll.concurrency still ran the old number at once, the others queued with their time running)
        self._executor = ThreadPoolExecutor(MAX_CONCURRENCY, thread_name_prefix="poll")
        with self._following:  # the jobs of the newest runtime, whatever a reload does meanwhile
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
        self.connections.close()

    def _sync_jobs(self) -> None:
        """Tell the schedule the jobs and limits of now (at start, after a reload, after a discovery)."""
        if self._executor is None:
            return  # not polling in the background: a job's first run is timed from when polling starts
        current = self.runtime.current()
        poll, organization = current.config.poll, current.config.organization
        jobs = {}
        if organization is not None:
            jobs[Job("organization", organization.name)] = Cadence(organization.interval, 0.0)
        for target in current.targets.polled:
            jobs[Job("server", target.name.lower())] = Cadence(poll.interval, offset(target.name, poll.interval))
        with self._wakeup:
            self._schedule.configure(concurrency=poll.concurrency, failing_share=poll.failing_share,
                                     jitter=poll.jitter)
            self._schedule.set_jobs(jobs, self._clock.now())
            self._wakeup.notify_all()

    def _run_schedule(self) -> None:
        with self._wakeup:
            while not self._stopping.is_set():
                now = self._clock.now()
                for job in self._schedule.due(now):
                    self._executor.submit(self._run, job)
                next_due = self._schedule.next_due()
                # at least every second: a lost wake-up costs a second, never a poll
                self._clock.wait_until(self._wakeup, now + (min(1.0, max(0.05, next_due - now))
                                                            if next_due is not None else 1.0))

    def _run(self, job: Job) -> None:
        started = self._clock.now()
        ok = False
        try:
            if job.collector == "organization":
                result = self.poll_organization()
            else:
                result = self.poll_server(job.name) if self.runtime.current().targets.get(job.name) else None
            # a poll skipped while its credential is paused cost nothing: it keeps the job's normal cadence, so
            # the polls resume at their usual times once the pause ends
            ok = bool(result and result.outcome and (result.outcome.success
                                                     or result.outcome.error_reason == "credential_paused"))
        finally:
            with self._wakeup:
                self._schedule.done(job, ok, started)
                self._wakeup.notify_all()

    # ------------------------------------------------------------ reload, discovery

    def follow(self) -> None:
        """Adopt the runtime holder's current configuration and targets (after a reload or a discovery).
        Results and connections of servers that remain, with the same settings, are kept, the others dropped
        (a running poll keeps its connection until it ends); the schedule gets the new jobs and limits.
        Following an unchanged runtime changes nothing. A reload's thread and a discovering organization poll's
        both follow: one at a time, each reading the runtime once it runs, so the last follow is of the newest
        runtime (a follow that had read it before a reload and ended after that reload's follow left the store
        on the older targets, and a server the reload added was polled but never shown)."""
        with self._following:
            current = self.runtime.current()
            organization = current.config.organization
            self.store.follow(current.targets, organization.name if organization else None)
            self.connections.follow(current.config, current.targets)
            self._sync_jobs()
