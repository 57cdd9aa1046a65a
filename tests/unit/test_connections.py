"""Which WinRM connection a poll gets (exporter/connections.py): one per server and module, kept across a reload
that leaves its settings alone, one poll of a server at a time. Connections are not opened here: a lease only
hands out the object a poll would connect with."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from exporter.config import load_config_text
from exporter.connections import FIRST_PAUSE_SECONDS, MAX_PAUSE_SECONDS, Connections, CredentialGuard
from exporter.model import CollectorOutcome
from exporter.runtime import Targets
from exporter.winrm import PollFailure

from ..conftest import minimal_config

SERVERS = "servers:\n  - ex01.contoso.com\n  - ex02.contoso.com\n"


def config(extra: str = "", servers: str = SERVERS):
    return load_config_text(minimal_config(extra).replace("servers:\n  - ex01.contoso.com\n", servers), Path("."))


def borrowed(connections: Connections, cfg, name: str = "ex01.contoso.com"):
    target = Targets(cfg).get(name)
    with connections.lease(target, target.module, cfg, time.monotonic() + 5) as lease:
        return lease.connection


def test_a_reload_that_leaves_a_server_alone_leaves_its_connection_alone():
    connections = Connections()
    first = borrowed(connections, config())
    assert borrowed(connections, config()) is first  # an equal configuration, loaded again
    reloaded = config("poll: {timeout: 20s}\n")  # not a connection setting
    connections.follow(reloaded, Targets(reloaded))
    assert borrowed(connections, reloaded) is first


@pytest.mark.parametrize("changed", [
    lambda: config("limits: {max_response_bytes: 1048576}\n"),
    lambda: load_config_text(minimal_config().replace("username:", "port: 5999\n    username:"), Path(".")),
], ids=["byte limit", "module port"])
def test_a_changed_setting_gives_the_next_poll_a_new_connection(changed):
    connections = Connections()
    first = borrowed(connections, config())
    changed = changed()
    connections.follow(changed, Targets(changed))
    assert borrowed(connections, changed) is not first


def test_a_server_removed_and_added_back_gets_a_new_connection():
    connections = Connections()
    first = borrowed(connections, config())
    fewer = config(servers="servers:\n  - ex02.contoso.com\n")
    connections.follow(fewer, Targets(fewer))
    assert borrowed(connections, config()) is not first


def test_a_second_poll_of_a_server_waits_for_the_first_within_its_deadline():
    connections, cfg = Connections(), config()
    target = Targets(cfg).get("ex01.contoso.com")
    holding, release = threading.Event(), threading.Event()

    def first_poll() -> None:
        with connections.lease(target, target.module, cfg, time.monotonic() + 5):
            holding.set()
            release.wait(5)

    thread = threading.Thread(target=first_poll)
    thread.start()
    try:
        assert holding.wait(5)
        started = time.monotonic()
        with pytest.raises(PollFailure) as failure:
            with connections.lease(target, target.module, cfg, started + 0.2):
                pass
        assert failure.value.reason == "timeout"
        other = Targets(cfg).get("ex02.contoso.com")  # another server is not held up
        with connections.lease(other, other.module, cfg, time.monotonic() + 0.2):
            pass
    finally:
        release.set()
        thread.join()


# ---------------------------------------------------------------- the credential guard (issue 25 item 7)


class Now:
    def __init__(self):
        self.seconds = 0.0

    def __call__(self) -> float:
        return self.seconds


def outcome(reason: str | None) -> CollectorOutcome:
    return CollectorOutcome("server", reason is None, 0.1, datetime.now(timezone.utc), error_reason=reason)


def poll(guard: CredentialGuard, module, server: str, reason: str | None) -> str:
    """One poll through the guard: 'skipped' when it was not let through, else the reason it ended with."""
    try:
        trial = guard.admit(module)
    except PollFailure as failure:
        assert failure.reason == "credential_paused"
        return "skipped"
    guard.settle(module, server, outcome(reason), trial=trial)
    return reason or "ok"


def test_one_server_rejecting_alone_never_pauses_the_module():
    guard, module = CredentialGuard(Now()), config().modules["default"]
    assert [poll(guard, module, "EX01", "auth_failed") for _ in range(5)] == ["auth_failed"] * 5
    assert guard.paused(config().modules) == set()


def test_rejections_by_several_servers_in_a_row_pause_until_one_poll_after_the_pause_succeeds():
    now, module = Now(), config().modules["default"]
    guard = CredentialGuard(now)
    assert [poll(guard, module, name, "auth_failed") for name in ("EX01", "EX02", "EX03")] == ["auth_failed"] * 3
    assert poll(guard, module, "EX04", None) == "skipped"
    assert guard.paused({"default": module}) == {"default"}
    now.seconds += FIRST_PAUSE_SECONDS
    trial = guard.admit(module)  # the pause is over: one poll tries again ...
    assert trial and poll(guard, module, "EX05", None) == "skipped"  # ... and only one
    guard.settle(module, "EX04", outcome(None), trial=trial)
    assert guard.paused({"default": module}) == set()
    assert poll(guard, module, "EX05", None) == "ok"


def test_each_rejected_try_doubles_the_pause_up_to_an_hour():
    now, module = Now(), config().modules["default"]
    guard = CredentialGuard(now)
    for name in ("EX01", "EX02", "EX03"):
        poll(guard, module, name, "auth_failed")
    pauses = []
    for _ in range(5):
        waited = 0.0
        while poll(guard, module, "EX01", "auth_failed") == "skipped":
            now.seconds += 60
            waited += 60
        pauses.append(waited)
    assert pauses == [FIRST_PAUSE_SECONDS, 2 * FIRST_PAUSE_SECONDS, MAX_PAUSE_SECONDS, MAX_PAUSE_SECONDS,
                      MAX_PAUSE_SECONDS]


def test_a_try_that_reaches_no_server_lets_the_next_poll_try():
    now, module = Now(), config().modules["default"]
    guard = CredentialGuard(now)
    for name in ("EX01", "EX02", "EX03"):
        poll(guard, module, name, "auth_failed")
    now.seconds += FIRST_PAUSE_SECONDS
    assert poll(guard, module, "EX01", "connection_refused") == "connection_refused"
    assert poll(guard, module, "EX02", None) == "ok"


def test_a_failure_after_the_logon_shows_the_credential_works():
    guard, module = CredentialGuard(Now()), config().modules["default"]
    for name, reason in [("EX01", "auth_failed"), ("EX02", "auth_failed"), ("EX03", "access_denied"),
                         ("EX04", "auth_failed"), ("EX05", "timeout"), ("EX06", "auth_failed")]:
        poll(guard, module, name, reason)
    assert guard.paused(config().modules) == set()  # never three rejections in a row


def test_servers_that_cannot_decrypt_their_service_ticket_never_pause_the_module():
    """spn_key_mismatch: the KDC accepted the credential (it issued the ticket), the server's key for its SPN is
    wrong. Any number of such servers leave the module's polls alone; nor do they end a run of rejections (they say
    nothing about the credential, as a server that was not reached)."""
    now, module = Now(), config().modules["default"]
    guard = CredentialGuard(now)
    for _ in range(3):
        for name in ("EX01", "EX02", "EX03"):
            assert poll(guard, module, name, "spn_key_mismatch") == "spn_key_mismatch"
        now.seconds += 60
    assert poll(guard, module, "EX04", None) == "ok"
    assert guard.paused(config().modules) == set()
    for name, reason in [("EX01", "auth_failed"), ("EX02", "spn_key_mismatch"), ("EX02", "auth_failed"),
                         ("EX03", "spn_key_mismatch"), ("EX03", "auth_failed")]:
        poll(guard, module, name, reason)
    assert guard.paused(config().modules) == {"default"}


def test_a_reload_that_changes_the_module_resumes_its_polls_at_once():
    guard, module = CredentialGuard(Now()), config().modules["default"]
    for name in ("EX01", "EX02", "EX03"):
        poll(guard, module, name, "auth_failed")
    changed = load_config_text(minimal_config().replace("svc_monitor", "svc_eems"), Path("."))
    assert guard.paused(changed.modules) == set()
    guard.follow(changed.modules)  # what Connections.follow does at a reload
    assert poll(guard, changed.modules["default"], "EX01", None) == "ok"
    assert poll(guard, module, "EX02", None) == "ok"  # a poll with the old settings neither waits nor counts
