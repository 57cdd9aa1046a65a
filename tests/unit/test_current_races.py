"""What is current, under polls that overlap a reload or a discovery (docs/design.md, "What is current"): a result
is kept only for a server or organization that is current when it is recorded, and what the poller follows is the
newest runtime. Each test writes out one interleaving, by running the reload at the point where the race lands (no
network: the collectors are replaced, and a lease only makes the connection object). Each failed before its fix."""

from __future__ import annotations

import contextlib
import textwrap
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from exporter.config import load_config, load_config_text
from exporter.connections import Connections
from exporter.model import CollectorOutcome, OrganizationResult, ScriptOutput, ServerResult
from exporter.poller import Poller
from exporter.winrm import PollFailure
from exporter.runtime import SafeRuntime, Targets

from ..clock import ManualClock
from ..conftest import PASSWORD_ENV, minimal_config, wait_until

ORGANIZATION = "organization: {name: Contoso, server: ex01.contoso.com}\n"


class Fleet:
    """A configuration file the test rewrites, its runtime holder and a poller on it, with collectors that answer
    at once."""

    def __init__(self, tmp_path, catalog, monkeypatch, servers=("ex01", "ex02"), extra: str = ""):
        self.path = tmp_path / "exporter.yml"
        self.write(servers, extra)
        self.runtime = SafeRuntime(load_config(self.path), catalog)
        self.poller = Poller(self.runtime, clock=ManualClock())
        monkeypatch.setattr("exporter.poller.collect_server", self._collect_server)
        self.organization_poll = None  # called inside the organization's poll, while it holds its server

        def collect_organization(target, connection, organization, deadline, max_servers):
            if self.organization_poll is not None:
                self.organization_poll()
            return OrganizationResult(organization.name, outcome=ok("organization"))

        monkeypatch.setattr("exporter.poller.collect_organization", collect_organization)

    def write(self, servers, extra: str = "") -> None:
        self.path.write_text(textwrap.dedent(f"""\
            modules:
              default:
                username: 'EXCH\\svc_monitor'
                password_env: {PASSWORD_ENV}
            servers: [{", ".join(f"{name}.contoso.com" for name in servers)}]
            """) + extra)

    def reload(self, servers, extra: str = "") -> None:
        """What Exporter.reload does: swap, then follow."""
        self.write(servers, extra)
        ok_, message = self.runtime.reload()
        assert ok_ and message == "configuration reloaded", message
        self.poller.follow()

    @staticmethod
    def _collect_server(target, connection, poll, catalog, deadline, known=None):
        return ServerResult(target.name, outcome=ok("server"), output=ScriptOutput(b"{}", b"", 0))

    def results(self) -> set[str]:
        servers, _ = self.poller.snapshot()
        return {r.name.lower() for r in servers}


def ok(collector: str) -> CollectorOutcome:
    return CollectorOutcome(collector, True, 0.0, datetime.now(timezone.utc))


def test_a_server_removed_while_its_poll_ends_and_added_back_shows_nothing(tmp_path, catalog, monkeypatch):
    """poll_server read the runtime once its poll ended and passed those targets to Store.record; a reload that
    removed the server and followed before the store took its lock let the result in after Store.follow had
    forgotten the server. The server added back showed that old result (and /-/ready counted it) before any poll
    of it, and its raw output stayed held against limits.max_debug_output_bytes while it was gone."""
    fleet = Fleet(tmp_path, catalog, monkeypatch)
    record = fleet.poller.store.record

    def removed_first(*args, **kwargs):  # the reload lands after the poll read its targets, before it records
        fleet.reload(["ex01"])
        return record(*args, **kwargs)

    fleet.poller.store.record = removed_first
    fleet.poller.poll_server("ex02.contoso.com")
    del fleet.poller.store.record
    assert fleet.poller.store.outputs.get("ex02.contoso.com") is None, "the removed server's output is kept"

    fleet.reload(["ex01", "ex02"])
    assert "ex02.contoso.com" not in fleet.results(), "the server added back shows the result from before"
    assert not fleet.poller.ready()


def test_an_organization_removed_while_its_poll_runs_leaves_no_series(tmp_path, catalog, monkeypatch):
    """A reload that removed the organization section while its poll ran: Store.follow set the organization to
    None, then the poll's Store.record_organization put its result back, and /metrics showed the organization's
    series (and exchange_organization_up) for an organization no longer configured, until the next reload."""
    fleet = Fleet(tmp_path, catalog, monkeypatch, extra=ORGANIZATION)
    fleet.organization_poll = lambda: fleet.reload(["ex01", "ex02"])
    fleet.poller.poll_organization()
    assert fleet.poller.snapshot()[1] is None, "the removed organization's result is shown"


class WatchedLock:
    """A lock that counts who asked for it: the test sees a follow wait for another without a fixed sleep."""

    def __init__(self):
        self._lock = threading.Lock()
        self.asked = 0

    def __enter__(self):
        self.asked += 1
        self._lock.acquire()

    def __exit__(self, *exc):
        self._lock.release()


def test_a_follow_of_an_older_runtime_never_ends_after_a_newer_one(tmp_path, catalog, monkeypatch):
    """Poller.follow runs on the thread of a reload (SIGHUP, POST /-/reload) and on the organization poll's after a
    discovery. A follow that had read the runtime before a reload and went on after that reload's follow had ended
    left the store (and the connections and the credential guard) following the older runtime: a server the reload
    added was polled but its result never kept, so it had no series and /-/ready stayed false until the next
    reload or discovery."""
    fleet = Fleet(tmp_path, catalog, monkeypatch)
    watched = fleet.poller._following = WatchedLock()  # unused before the fix: follows did not wait for each other
    store_follow = fleet.poller.store.follow
    inside, go = threading.Event(), threading.Event()

    def held_up(*args, **kwargs):  # the first follow stops here, having read the runtime of before the reload
        if threading.current_thread() is first:
            inside.set()
            assert go.wait(10)
        return store_follow(*args, **kwargs)

    fleet.poller.store.follow = held_up
    first = threading.Thread(target=fleet.poller.follow)  # as after a discovery that changed nothing here
    first.start()
    assert inside.wait(10)
    fleet.write(["ex01", "ex02", "ex03"])
    assert fleet.runtime.reload() == (True, "configuration reloaded")
    second = threading.Thread(target=fleet.poller.follow)  # the reload's follow
    second.start()
    wait_until(lambda: not second.is_alive() or watched.asked >= 2, 10, "the reload's follow to end or to wait")
    go.set()
    first.join(10)
    second.join(10)
    fleet.poller.poll_server("ex03.contoso.com")
    assert "ex03.contoso.com" in fleet.results(), "the added server's result was not kept"


# ---------------------------------------------------------------- connections of a poll that read the runtime first


class FakeConnection:
    def __init__(self, *args, **kwargs):
        self.closed = False

    def close(self) -> None:
        self.closed = True

    @contextlib.contextmanager
    def answers_to(self, listener):
        yield  # never asked anything, so never answered


def lease_once(connections, cfg, name: str):
    """One poll of `name` under `cfg`: the connection it was lent."""
    target = Targets(cfg).get(name)
    with connections.lease(target, target.module, cfg, time.monotonic() + 5) as lease:
        return lease.connection


def test_a_poll_that_read_the_runtime_before_a_reload_removed_its_server_leaves_no_connection(monkeypatch):
    """A poll reads the runtime when it starts and leases its connection after (when another poll of the server
    ends, up to poll.timeout later). One that leased after the reload's follow had retired the server's connection
    made a new one and put it in the pool, where no later follow looked for it: a connection (with
    `keep_runspace`, a runspace on the server) kept for a server no longer configured, until the next reload or
    discovery."""
    monkeypatch.setattr("exporter.connections.connect", FakeConnection)
    before = load_config_text(minimal_config().replace("servers:\n", "servers:\n  - ex02.contoso.com\n"), Path("."))
    after = load_config_text(minimal_config(), Path("."))
    connections = Connections()
    connections.follow(before, Targets(before))
    connections.follow(after, Targets(after))  # the reload, while the poll of ex02 waited for its server
    late = lease_once(connections, before, "ex02.contoso.com")
    assert late.closed, "the removed server's connection is kept"


def test_a_poll_that_read_the_runtime_before_a_reload_leaves_the_new_connection_alone(monkeypatch):
    """The same late poll, of a server whose connection settings the reload changed: it took the pooled connection
    for its own settings' sake, retired the one made with the reloaded settings (closed at once when idle) and put
    its own, of the old settings, in the pool, so the next poll (under the reload) had to connect again."""
    monkeypatch.setattr("exporter.connections.connect", FakeConnection)
    before = load_config_text(minimal_config(), Path("."))
    after = load_config_text(minimal_config("limits: {max_response_bytes: 1048576}\n"), Path("."))
    connections = Connections()
    connections.follow(before, Targets(before))
    connections.follow(after, Targets(after))
    current = lease_once(connections, after, "ex01.contoso.com")
    late = lease_once(connections, before, "ex01.contoso.com")
    assert late is not current and late.closed
    assert lease_once(connections, after, "ex01.contoso.com") is current and not current.closed


def test_a_server_removed_and_added_back_while_a_poll_takes_its_lock_is_still_polled_once_at_a_time(monkeypatch):
    """lease() took the server's lock from the table, then waited for it outside the table's lock. A follow that
    removed the server in between dropped that lock from the table (nobody held it yet); once the server was
    added back, the next poll made a new lock, and the two polls held one server at once (two shells, two
    logons), which one lock per server is there to prevent."""
    monkeypatch.setattr("exporter.connections.connect", FakeConnection)
    cfg = load_config_text(minimal_config(), Path("."))
    without = load_config_text(minimal_config().replace("  - ex01.contoso.com\n", "  - ex02.contoso.com\n"),
                               Path("."))
    connections = Connections()
    connections.follow(cfg, Targets(cfg))
    target = Targets(cfg).get("ex01.contoso.com")
    holding, release = threading.Event(), threading.Event()

    def other_poll() -> None:
        with connections.lease(target, target.module, cfg, time.monotonic() + 5):
            holding.set()
            release.wait(10)

    other = threading.Thread(target=other_poll)

    class Taken:
        """The lock this poll took from the table: the reloads land before it waits for it."""

        def __init__(self):
            self._lock = threading.Lock()

        def acquire(self, timeout: float) -> bool:
            connections.follow(without, Targets(without))
            connections.follow(cfg, Targets(cfg))
            other.start()
            assert holding.wait(10)
            return self._lock.acquire(timeout=timeout)

        def release(self) -> None:
            self._lock.release()

        def locked(self) -> bool:
            return self._lock.locked()

    connections._server_locks["ex01.contoso.com"] = Taken()
    try:
        with pytest.raises(PollFailure) as failure:
            with connections.lease(target, target.module, cfg, time.monotonic() + 0.3):
                pass
        assert failure.value.reason == "timeout"
    finally:
        release.set()
        other.join(10)


# ---------------------------------------------------------------- the credential guard across a reload


def test_a_poll_with_the_module_of_before_a_reload_does_not_keep_the_new_one_from_pausing():
    """After a reload to a password that is still wrong, the guard's follow forgot the old module; a poll that
    had read the runtime before the reload and was admitted after it made the guard's record anew, with the old
    module. Every poll with the new module then found a record of other settings: never paused, never counted, so
    servers went on rejecting the new credential at every poll until the account was locked out (until the next
    reload or discovery)."""
    from exporter.connections import CredentialGuard

    old = load_config_text(minimal_config(), Path(".")).modules["default"]
    new = load_config_text(minimal_config().replace("svc_monitor", "svc_eems"), Path(".")).modules["default"]
    guard = CredentialGuard(lambda: 0.0)

    def poll(module, server: str) -> str:
        try:
            admission = guard.admit(module, time.monotonic())
        except PollFailure as failure:
            return failure.reason
        guard.settle(admission, server, CollectorOutcome("server", False, 0.0, datetime.now(timezone.utc),
                                                      error_reason="auth_failed"))
        return "auth_failed"

    guard.follow({"default": old})
    guard.follow({"default": new})  # the reload
    assert poll(old, "EX00") == "auth_failed"  # the poll that read the runtime before it
    assert [poll(new, server) for server in ("EX01", "EX02", "EX03")] == ["auth_failed"] * 3
    assert guard.paused({"default": new}) == {"default"}, "the new module never pauses"
    assert poll(new, "EX04") == "credential_paused"


def test_ready_is_decided_on_one_runtime(tmp_path, catalog, monkeypatch):
    """ready() took the results of one runtime's servers and compared their count with the next's: with ex02 not
    yet polled, a reload from ex01-ex03 to ex01 and ex04 in between made it ready, though neither runtime's servers
    had all been polled (ex02 before, ex04 after)."""
    fleet = Fleet(tmp_path, catalog, monkeypatch, servers=("ex01", "ex02", "ex03"))
    for name in ("ex01.contoso.com", "ex03.contoso.com"):
        fleet.poller.poll_server(name)
    snapshot = fleet.poller.store.snapshot

    def reloaded_after(*args, **kwargs):  # the reload lands between the results and the count
        taken = snapshot(*args, **kwargs)
        fleet.reload(["ex01", "ex04"])
        return taken

    fleet.poller.store.snapshot = reloaded_after
    assert not fleet.poller.ready(), "ready with ex02, then ex04, never polled"
