"""Polls across a reload and a credential pause: the poll threads follow a reloaded poll.concurrency, and a pause
ends however its trial poll ends, and only for the module it is about. Each test failed before its fix (a review
of the scheduling and concurrency of polls)."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

from exporter.config import load_config
from exporter.model import CollectorOutcome
from exporter.poller import Poller
from exporter.runtime import SafeRuntime

from ..clock import ManualClock
from ..conftest import minimal_config, wait_until

INTERVAL = 10.0
SERVERS = "servers:\n" + "".join(f"  - ex0{i}.contoso.com\n" for i in range(1, 5))


def config_text(concurrency: int) -> str:
    text = minimal_config(f"poll: {{interval: {INTERVAL:g}s, timeout: 5s, jitter: 0, concurrency: {concurrency}}}\n")
    return text.replace("servers:\n  - ex01.contoso.com\n", SERVERS)


def ok_result():
    return SimpleNamespace(outcome=CollectorOutcome("server", True, 0.0, datetime.now(timezone.utc)))


class BlockingPolls:
    """Stands in for `Poller.poll_server`: each poll holds its slot until released; counts polls in flight."""

    def __init__(self):
        self.lock = threading.Lock()
        self.active = 0
        self.most = 0
        self.release = threading.Event()

    def __call__(self, name: str):
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
        try:
            self.release.wait(10)
        finally:
            with self.lock:
                self.active -= 1
        return ok_result()


def test_a_reload_that_raises_poll_concurrency_runs_that_many_polls_at_once(tmp_path, catalog):
    """poll.concurrency is reloadable (the schedule takes the new limit), but the poll threads were sized at
    start: after a reload from 1 to 4, four polls due at once still ran one at a time."""
    path = tmp_path / "exporter.yml"
    path.write_text(config_text(1))
    clock = ManualClock()
    runtime = SafeRuntime(load_config(path), catalog)
    poller = Poller(runtime, clock=clock)
    polls = BlockingPolls()
    poller.poll_server = polls
    poller.start()
    try:
        path.write_text(config_text(4))
        assert runtime.reload() == (True, "configuration reloaded")
        poller.follow()
        assert runtime.current().config.poll.concurrency == 4
        clock.advance(INTERVAL)  # every server's first poll is due
        wait_until(lambda: polls.active >= 1, 5, "the first poll")
        try:
            wait_until(lambda: polls.active == 4, 3, "four polls in flight (the reloaded limit)")
        finally:
            polls.release.set()
    finally:
        polls.release.set()
        poller.stop()


# ---------------------------------------------------------------- the credential guard's trial poll


def test_a_trial_poll_whose_connection_cannot_be_made_does_not_pause_its_module_for_ever(monkeypatch):
    """When the one poll let through after a pause could not make its connection (connect() raised in
    Connections._borrow, after CredentialGuard.admit let it through: a bracketed IPv6 address did so), the trial
    flag was never cleared: every later poll of the module was `credential_paused` "while one poll tries it
    again", however long one waited."""
    import time as real_time

    from exporter import connections as connections_module
    from exporter.config import load_config_text
    from exporter.connections import FIRST_PAUSE_SECONDS, MAX_PAUSE_SECONDS, Connections
    from exporter.runtime import Targets
    from exporter.winrm import PollFailure

    servers = "servers:\n  - ex01.contoso.com\n  - ex02.contoso.com\n  - ex03.contoso.com\n"
    cfg = load_config_text(minimal_config().replace("servers:\n  - ex01.contoso.com\n", servers), Path("."))
    targets = Targets(cfg)
    now = [0.0]
    connections = Connections(lambda: now[0])
    connect = connections_module.connect

    def refuse_ex03(endpoint, *args, **kwargs):
        if "ex03" in endpoint:
            raise ValueError("no endpoint")
        return connect(endpoint, *args, **kwargs)

    monkeypatch.setattr(connections_module, "connect", refuse_ex03)

    def poll(name: str, reason: str | None) -> str:
        target = targets.get(name)
        try:
            with connections.lease(target, target.module, cfg, real_time.monotonic() + 5) as lease:
                lease.outcome = CollectorOutcome("server", reason is None, 0.0, datetime.now(timezone.utc),
                                                 error_reason=reason)
        except PollFailure as failure:
            return failure.reason
        except ValueError as err:  # what Poller._poll records as internal_error
            return f"raised {type(err).__name__}"
        return reason or "ok"

    for name in ("ex01.contoso.com", "ex02.contoso.com", "ex01.contoso.com"):
        assert poll(name, "auth_failed") == "auth_failed"
    assert poll("ex02.contoso.com", None) == "credential_paused"  # paused, as promised
    now[0] += FIRST_PAUSE_SECONDS
    assert poll("ex03.contoso.com", None) == "raised ValueError"  # the one trial after the pause: no connection
    now[0] += 24 * MAX_PAUSE_SECONDS  # a day later, the password fixed on the domain's side
    assert poll("ex01.contoso.com", None) == "ok", "the module's polls stay paused for ever"
    connections.close()


def test_a_poll_that_started_before_a_reload_does_not_undo_the_new_modules_pause():
    """A poll reads runtime.current() when it starts and hands that module to CredentialGuard.admit once it
    holds its server (after waiting up to poll.timeout for another poll of it). After a reload to a password
    that is still wrong, the new module pauses after three rejections; one such late poll with the old module
    made _state() start the module afresh ("its polls resume"), so the next polls logged on again and the
    back-off started over."""
    from exporter.config import load_config_text
    from exporter.connections import CredentialGuard
    from exporter.winrm import PollFailure

    old = load_config_text(minimal_config(), Path(".")).modules["default"]
    new = load_config_text(minimal_config().replace("svc_monitor", "svc_eems"), Path(".")).modules["default"]
    guard = CredentialGuard(lambda: 0.0)

    def poll(module, server: str, reason: str | None) -> str:
        try:
            admission = guard.admit(module, time.monotonic())
        except PollFailure as failure:
            return failure.reason
        guard.settle(admission, server, CollectorOutcome("server", reason is None, 0.0, datetime.now(timezone.utc),
                                                      error_reason=reason))
        return reason or "ok"

    for server in ("EX01", "EX02", "EX03"):
        assert poll(new, server, "auth_failed") == "auth_failed"
    assert guard.paused({"default": new}) == {"default"}
    poll(old, "EX04", "auth_failed")  # the poll that began before the reload
    assert guard.paused({"default": new}) == {"default"}, "the new module's pause was dropped"
    assert poll(new, "EX05", "auth_failed") == "credential_paused"
