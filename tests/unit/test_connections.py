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
from exporter.connections import (FIRST_PAUSE_SECONDS, MAX_PAUSE_SECONDS, REJECTIONS_TO_PAUSE, Connections,
                                  CredentialGuard)
from exporter.model import CollectorOutcome
from exporter.runtime import Targets
from exporter.winrm import PollFailure

from ..conftest import minimal_config, wait_until

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
        admission = guard.admit(module, time.monotonic())
    except PollFailure as failure:
        assert failure.reason == "credential_paused"
        return "skipped"
    guard.settle(admission, server, outcome(reason))
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
    admission = guard.admit(module, time.monotonic())  # the pause is over: one poll tries again ...
    assert admission.trial and poll(guard, module, "EX05", None) == "skipped"  # ... and only one
    guard.settle(admission, "EX04", outcome(None))
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


# ---------------------------------------------------------------- logons at once until one is accepted


def admitted(guard: CredentialGuard, module, count: int) -> list:
    """`count` polls let through without waiting (each raises if it would have to wait)."""
    return [guard.admit(module, time.monotonic()) for _ in range(count)]


def refused_at_once(guard: CredentialGuard, module) -> bool:
    """Whether a poll with no time to wait is turned away because as many polls as may be rejected are out."""
    try:
        guard.settle(guard.admit(module, time.monotonic()), "EX99", None)
    except PollFailure as failure:
        return failure.reason == "timeout"
    return False


def test_until_a_server_accepts_the_credential_no_more_polls_log_on_at_once_than_rejections_are_left():
    """Each start counted from zero and let poll.concurrency polls log on at once: with a wrong password all
    of them logged on before the third rejection paused the module (4 to 33 rejected logons a start at 32 at once,
    tests/system/test_credential_pause.py)."""
    guard, module = CredentialGuard(Now()), config().modules["default"]
    first = admitted(guard, module, REJECTIONS_TO_PAUSE)
    assert refused_at_once(guard, module)
    guard.settle(first[0], "EX01", outcome("auth_failed"))
    assert refused_at_once(guard, module), "one rejection counted, two polls out: two may still be rejected"
    guard.settle(first[1], "EX02", outcome(None))  # accepted: fan out
    many = admitted(guard, module, 50)
    for admission in [first[2], *many]:
        guard.settle(admission, "EX03", outcome(None))


def test_a_poll_waiting_for_its_turn_goes_when_one_settles_or_stops_when_the_module_pauses():
    guard, module = CredentialGuard(Now()), config().modules["default"]
    out = admitted(guard, module, REJECTIONS_TO_PAUSE)
    ended: list[str] = []

    def waiting_poll() -> None:
        try:
            guard.settle(guard.admit(module, time.monotonic() + 30), "EX09", outcome("auth_failed"))
            ended.append("auth_failed")
        except PollFailure as failure:
            ended.append(failure.reason)

    waiting = [threading.Thread(target=waiting_poll) for _ in range(2)]
    for thread in waiting:
        thread.start()
    guard.settle(out[0], "EX01", outcome("timeout"))  # says nothing of the credential: one waiting poll takes its turn
    wait_until(lambda: ended, 10, "one waiting poll's turn")
    assert ended == ["auth_failed"]  # the first rejection: two polls out, two rejections left
    guard.settle(out[1], "EX02", outcome("auth_failed"))  # the second: one poll out, one rejection left
    assert ended == ["auth_failed"]
    guard.settle(out[2], "EX03", outcome("auth_failed"))  # the third: paused, and the other waiting poll with it
    for thread in waiting:
        thread.join(10)
    assert ended == ["auth_failed", "credential_paused"]
    assert guard.paused(config().modules) == {"default"}


def test_a_server_rejecting_alone_leaves_one_poll_at_a_time_to_the_others():
    guard, module = CredentialGuard(Now()), config().modules["default"]
    for _ in range(REJECTIONS_TO_PAUSE + 2):  # one round after another: no rejections left before a pause
        assert poll(guard, module, "EX01", "auth_failed") == "auth_failed"
    last = admitted(guard, module, 1)[0]
    assert refused_at_once(guard, module)
    guard.settle(last, "EX02", outcome(None))
    assert guard.paused(config().modules) == set() and not refused_at_once(guard, module)


def test_a_reload_that_changes_the_module_tries_the_new_credential_a_few_polls_at_a_time_again():
    guard, module = CredentialGuard(Now()), config().modules["default"]
    assert poll(guard, module, "EX01", None) == "ok"
    admitted(guard, module, 10)  # accepted: as many as the poll slots allow
    changed = load_config_text(minimal_config().replace("svc_monitor", "svc_eems"), Path("."))
    guard.follow(changed.modules)
    admitted(guard, changed.modules["default"], REJECTIONS_TO_PAUSE)
    assert refused_at_once(guard, changed.modules["default"])
