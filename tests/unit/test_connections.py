"""Which WinRM connection a poll gets (exporter/connections.py): one per server and module, kept across a reload
that leaves its settings alone, one poll of a server at a time. Connections are not opened here: a lease only
hands out the object a poll would connect with."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from exporter.config import load_config_text
from exporter.connections import Connections
from exporter.targets import Targets
from exporter.winrm import PollFailure

from ..conftest import minimal_config

SERVERS = "servers:\n  - ex01.contoso.com\n  - ex02.contoso.com\n"


def config(extra: str = "", servers: str = SERVERS):
    return load_config_text(minimal_config(extra).replace("servers:\n  - ex01.contoso.com\n", servers), Path("."))


def borrowed(connections: Connections, cfg, name: str = "ex01.contoso.com"):
    target = Targets(cfg).get(name)
    with connections.lease(target, target.module, cfg, time.monotonic() + 5) as connection:
        return connection


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
        assert failure.value.reason == "deadline_exceeded"
        other = Targets(cfg).get("ex02.contoso.com")  # another server is not held up
        with connections.lease(other, other.module, cfg, time.monotonic() + 0.2):
            pass
    finally:
        release.set()
        thread.join()
