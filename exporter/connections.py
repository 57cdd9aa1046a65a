"""Which WinRM connection a poll uses, and whether it may use its credential now.

A poll borrows its connection with `lease()`, which first waits (within the poll's deadline) for any other
poll of the same server to end, so a `/probe` and a scheduled poll never overlap on one server. A
connection is made with the settings of the configuration the poll runs under; when a reload or a new
discovery changes them (address, module, byte limits), the old connection is retired: taken out of the
pool at once and closed when the last poll using it has given it back, never under a poll that is reading
from it. A reload that leaves a server's settings alone leaves its connection alone.

Every poll that reaches a server logs on with its module's credential, and a domain controller counts each
rejected logon against the account's lockout threshold: 40 servers polled every 5 minutes with a wrong or
expired password lock a typical account, and with it every other tool that uses it. So until a server has
accepted a module's credential, only as many of its polls log on at once as rejections are left before the pause;
when servers keep rejecting it (`CredentialGuard`), its polls pause, with a growing back-off, and one poll
at a time tries again; a reload that changes the module resumes them at once.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Iterator

from .config import Config, ModuleConfig
from .model import CollectorOutcome
from .runtime import Target, Targets
from .winrm import PollFailure, ServerConnection, connect

log = logging.getLogger(__name__)

REJECTIONS_TO_PAUSE = 3  # rejected logons in a row, by at least two servers (one alone is that server's problem)
# At least the "Reset account lockout counter after" that Windows security baselines recommend (15 minutes,
# learn.microsoft.com .../security-policy-settings/reset-account-lockout-counter-after): on a domain set so, the
# rejections before a pause have left the counter when the next try comes.
FIRST_PAUSE_SECONDS = 15 * 60
MAX_PAUSE_SECONDS = 60 * 60  # doubling up to this: at most one rejected logon an hour once it is reached
# Failures that say nothing about the credential: no server answered about it, or (spn_key_mismatch) a server
# could not decrypt the service ticket the KDC issued with the credential: that server's key for its SPN is wrong,
# and no logon was refused (Kerberos pre-authenticates at the KDC only, so it cannot lock the account out).
UNTESTED = frozenset({"connection_refused", "connection_error", "tls_error", "timeout", "deadline_exceeded",
                      "http_error", "not_found", "internal_error", "kdc_unreachable", "spn_unknown", "clock_skew",
                      "credssp_outdated", "spn_key_mismatch"})


@dataclass(frozen=True)
class _Settings:
    endpoint: str
    module: ModuleConfig
    max_response_bytes: int
    max_poll_bytes: int
    server_name: str  # the configured name or spn_hostname: the Kerberos SPN and the NTLM target name come from it


def _settings(target: Target, module_name: str, config: Config) -> _Settings | None:
    module = config.modules.get(module_name)
    if module is None:
        return None
    return _Settings(target.endpoint, module, config.limits.max_response_bytes, config.limits.max_poll_bytes,
                     target.spn_hostname)


def _target_of(targets: Targets, name: str) -> Target | None:
    """The target `name` (lower case) is among `targets`, the organization collector's server included."""
    organization = targets.for_organization()
    if organization is not None and organization.name.lower() == name:
        return organization
    return targets.get(name)


def _pooled_target(config: Config, targets: Targets, name: str, module_name: str) -> Target | None:
    """The target `name` (lower case) is when its connection with `module_name` is kept between polls: what the
    background polls use, the organization collector's server with the organization's module, and a server this
    instance polls with its own module. Anything else is only ever probed (a server of another shard, a module
    named by /probe?module=): pooled, its connection stayed for as long as the configuration did, where nothing
    polled it, with a socket the server had long closed or a runspace pool."""
    organization = targets.for_organization()
    if organization is not None and organization.name.lower() == name and module_name == config.organization.module:
        return organization
    target = targets.get(name) if targets.polls(name) else None
    return target if target is not None and target.module == module_name else None


class _Entry:
    def __init__(self, settings: _Settings):
        self.settings = settings
        # WinRS, or PowerShell remoting for a module with `protocol: psrp`: the same interface
        self.connection = connect(settings.endpoint, settings.module, max_response_bytes=settings.max_response_bytes,
                                  max_poll_bytes=settings.max_poll_bytes, server_name=settings.server_name)
        self.users = 0
        self.retired = False


@dataclass(eq=False)
class Lease:
    """A poll's hold on its server's connection; the poll sets its outcome, which the credential guard reads."""

    connection: ServerConnection
    outcome: CollectorOutcome | None = None


class Connections:
    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        """`now`: the poller's clock, for how long a credential stays paused."""
        self._lock = threading.Lock()
        self._pool: dict[tuple[str, str], _Entry] = {}
        self._server_locks: dict[str, threading.Lock] = {}
        self._followed: tuple[Config, Targets] | None = None  # as of the last `follow`: what belongs in the pool
        self.credentials = CredentialGuard(now)

    @contextmanager
    def lease(self, target: Target, module_name: str, config: Config, deadline: float) -> Iterator[Lease]:
        """The connection for polling `target` with `module_name`, held by this poll alone among the polls of
        that server until the block ends. Raises PollFailure when the module's credential is paused
        (`credential_paused`), or when another poll of the server, or the polls trying a credential no server has
        accepted yet (`CredentialGuard.admit`), hold it past `deadline` (monotonic)."""
        settings = _settings(target, module_name, config)
        if settings is None:
            raise PollFailure("not_found", f"module {module_name[:64]!r} is not configured")
        key = target.name.lower()
        server_lock = self._hold(key, deadline)
        try:
            admission = self.credentials.admit(settings.module, deadline)
            try:
                entry = self._borrow((key, module_name), settings)
            except BaseException:  # no connection, no outcome: the poll let through ends without one
                self.credentials.settle(admission, target.name, None)
                raise
            lease = Lease(entry.connection)
            try:
                with entry.connection.answers_to(partial(self.credentials.accepted, admission, target.name)):
                    yield lease
            finally:
                self._give_back(entry)
                self.credentials.settle(admission, target.name, lease.outcome)
        finally:
            server_lock.release()

    def _hold(self, key: str, deadline: float) -> threading.Lock:
        """Take the server's lock, the one in the table once it is held. It is waited for outside the table's lock:
        a follow meanwhile may drop it (the server removed, nobody holding it yet) and a poll after make a new one
        (the server added back), and two polls held one server at once."""
        while True:
            with self._lock:
                server_lock = self._server_locks.setdefault(key, threading.Lock())
            if not server_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise PollFailure("timeout", "another poll of this server ran for the whole budget")
            with self._lock:
                if self._server_locks.setdefault(key, server_lock) is server_lock:
                    return server_lock
            server_lock.release()

    def _borrow(self, key: tuple[str, str], settings: _Settings) -> _Entry:
        retired = None
        with self._lock:
            entry = pooled = self._pool.get(key)
            if pooled is None or pooled.settings != settings:
                entry = _Entry(settings)
                if self._belongs(key, settings):
                    retired = pooled and self._retire(key)
                    self._pool[key] = entry
                else:
                    entry.retired = True  # this poll's alone: closed when it gives it back
            entry.users += 1
        if retired is not None:
            retired.close()
        return entry

    def _belongs(self, key: tuple[str, str], settings: _Settings) -> bool:
        """Whether a connection made with `settings` goes in the pool (under the lock): only for what the background
        polls use (`_pooled_target`), with the settings the configuration last followed gives it. A poll that read
        the runtime before a reload and leases after its follow gets a connection of its own: pooled, a removed
        server's stayed there, where no follow looked for it, and a changed server's retired the one made with the
        reloaded settings."""
        if self._followed is None:
            return True
        config, targets = self._followed
        name, module_name = key
        now = _pooled_target(config, targets, name, module_name)
        return now is not None and _settings(now, module_name, config) == settings

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
        """After a reload or a discovery: retire the connections of servers this instance no longer polls
        (removed, no longer discovered, moved to another shard) and those whose settings changed; the others stay
        as they are."""
        with self._lock:
            self._followed = config, targets
            to_close = [self._retire(key) for key, entry in list(self._pool.items())
                        if not self._belongs(key, entry.settings)]
            self._server_locks = {name: lock for name, lock in self._server_locks.items()
                                  if _target_of(targets, name) is not None or lock.locked()}
        for connection in to_close:
            if connection is not None:
                connection.close()
        self.credentials.follow(config.modules)

    def close(self) -> None:
        """Retire every connection (the poller stops)."""
        with self._lock:
            to_close = [self._retire(key) for key in list(self._pool)]
        for connection in to_close:
            if connection is not None:
                connection.close()


@dataclass
class _Credential:
    module: ModuleConfig  # the settings this is about: a reload that changes them starts afresh
    rejections: int = 0  # rejected logons in a row
    rejecting: set[str] = field(default_factory=set)  # the servers that rejected them
    paused_until: float | None = None  # set while paused, and until a poll after the pause succeeds
    pauses: int = 0  # in a row: the next pause is twice as long
    trial: bool = False  # the one poll let through after a pause is running
    accepted: bool = False  # a server accepted the credential, and none rejected it since
    running: int = 0  # polls let through that have not settled

    def may_fan_out(self) -> bool:
        """Whether one more poll may log on now. Until a server has accepted the credential (since the start, or
        since the reload that made this record) and again after a rejection, only as many polls run at once as
        rejections are left before the pause: every one of them may be rejected, and the guard counts a rejection
        only when its poll ends. The count starts at zero at every start, so at the default poll.concurrency a
        wrong password cost a start 4 to 33 rejected logons, not 3 (test_credential_pause.py). At least one: a
        server that rejects alone (which never pauses) must not stop the others for ever."""
        return self.accepted or self.running < max(1, REJECTIONS_TO_PAUSE - self.rejections)

    def accept(self) -> None:
        """A server accepted the credential: the polls resume (after a pause) and fan out."""
        self.rejections, self.paused_until, self.pauses, self.trial, self.accepted = 0, None, 0, False, True
        self.rejecting.clear()


@dataclass(frozen=True)
class Admission:
    """A poll that `CredentialGuard.admit` let through, for `settle`: the record its outcome counts in (None for a
    poll with settings a reload replaced, which neither waits nor counts), and whether it is the one poll that
    tries again after a pause."""

    record: _Credential | None
    trial: bool = False


class CredentialGuard:
    """Keeps a rejected credential from locking its account out: few logons at once until one is accepted, a pause
    after REJECTIONS_TO_PAUSE rejections, then one try per growing back-off."""

    def __init__(self, now: Callable[[], float]):
        self._now = now
        self._changed = threading.Condition(threading.Lock())  # a poll settled, or a reload forgot a record
        self._modules: dict[str, _Credential] = {}
        self._followed: dict[str, ModuleConfig] | None = None  # the modules of the last `follow`

    def follow(self, modules: dict[str, ModuleConfig]) -> None:
        """After a reload: a module whose settings changed starts afresh, so its polls resume at once."""
        with self._changed:
            self._followed = modules
            for name, state in list(self._modules.items()):
                if modules.get(name) != state.module:
                    if state.paused_until is not None:
                        log.info("module %s changed: its polls resume", name)
                    del self._modules[name]
            self._changed.notify_all()  # a poll waiting with the old settings now neither waits nor counts

    def _state(self, module: ModuleConfig) -> _Credential | None:
        """What is known of `module`'s credential; None for a poll with other settings of the same name (one that
        read the configuration before a reload, or after it before `follow`): it neither waits for the pause
        nor ends it. It replaced the record, so a poll that had waited across a reload undid the new module's
        pause and its back-off. Nor does it make the record when there is none (the reload's `follow` forgot it):
        made with its settings, the record kept every poll with the new ones from being counted, or paused."""
        state = self._modules.get(module.name)
        if state is None and (self._followed is None or self._followed.get(module.name) == module):
            state = self._modules[module.name] = _Credential(module)
        return state if state is not None and state.module == module else None

    def admit(self, module: ModuleConfig, deadline: float) -> Admission:
        """Let a poll use `module`'s credential, waiting until `deadline` (monotonic) while as many polls as may
        be rejected before the pause are out and none has been accepted yet (`_Credential.may_fan_out`); or
        raise `credential_paused`: while the pause lasts, and after it while the one poll that tries again is
        out; or `timeout` when the polls out took this one's whole budget."""
        with self._changed:
            while True:
                state = self._state(module)
                if state is None:
                    return Admission(None)
                if state.paused_until is not None:
                    break
                if state.may_fan_out():
                    state.running += 1
                    return Admission(state)
                if not self._changed.wait(deadline - time.monotonic()):
                    raise PollFailure("timeout", f"no server has accepted module {module.name}'s credential since "
                                                 f"the start, the reload that changed it or its last rejection, and "
                                                 f"the {state.running} polls trying it took this poll's whole budget: "
                                                 f"so that a wrong password cannot lock the account out, its polls "
                                                 f"log on a few at a time until one succeeds")
            now = self._now()
            if now >= state.paused_until and not state.trial:
                state.trial = True
                state.running += 1
                return Admission(state, trial=True)
            wait = f"for another {max(0, round((state.paused_until - now) / 60))} min" if now < state.paused_until \
                else "while one poll tries it again"
        raise PollFailure("credential_paused", f"servers rejected module {module.name}'s credential {state.rejections} "
                                               f"times in a row; its polls are paused {wait} so that the account is "
                                               f"not locked out")

    def settle(self, admission: Admission, server: str, outcome: CollectorOutcome | None) -> None:
        """Count how a poll that was let through fared with the credential (None: it ended without an outcome)."""
        reason = None if outcome is None or outcome.success else outcome.error_reason
        state = admission.record
        with self._changed:
            if state is None or self._modules.get(state.module.name) is not state:
                return  # a reload changed the module while this poll ran: it tells nothing about the new one
            state.running -= 1
            self._changed.notify_all()
            if admission.trial:
                state.trial = False
            if outcome is None or reason in UNTESTED:
                return  # nothing learnt (after a pause: the next poll tries)
            if reason != "auth_failed":  # a success, or a failure after the logon: the credential works
                self._accept(state, server)
                return
            state.accepted = False
            state.rejections += 1
            state.rejecting.add(server.lower())
            if admission.trial or (state.paused_until is None and state.rejections >= REJECTIONS_TO_PAUSE
                                   and len(state.rejecting) >= 2):
                seconds = min(MAX_PAUSE_SECONDS, FIRST_PAUSE_SECONDS * 2 ** state.pauses)
                state.pauses += 1
                state.paused_until = self._now() + seconds
                log.error("module %s: servers rejected its credential %d times in a row (%d servers, last %s); "
                          "its polls pause for %d min so that the account is not locked out (reload with a new "
                          "credential to resume at once)", state.module.name, state.rejections, len(state.rejecting),
                          server, seconds // 60)

    def accepted(self, admission: Admission, server: str) -> None:
        """A request of a poll let through got its answer (`LinkedConnection.answered`): `server` accepted the
        credential, so the module's polls fan out (or resume) now, not when this poll ends."""
        state = admission.record
        with self._changed:
            if state is not None and not state.accepted and self._modules.get(state.module.name) is state:
                self._accept(state, server)
                self._changed.notify_all()

    def _accept(self, state: _Credential, server: str) -> None:
        """(Under the lock.)"""
        if state.paused_until is not None:
            log.info("module %s: %s accepted the credential again; its polls resume", state.module.name, server)
        state.accept()

    def paused(self, modules: dict[str, ModuleConfig]) -> set[str]:
        """Which of `modules` (the current ones) have their polls paused (also while one poll tries again); a
        module that a reload changed is not paused any more."""
        with self._changed:
            return {name for name, state in self._modules.items()
                    if state.paused_until is not None and modules.get(name) == state.module}
