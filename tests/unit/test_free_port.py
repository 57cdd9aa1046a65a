"""The tests' port allocator (tests/conftest.py `free_port`): a port handed to a program under test must not be
one the kernel may give someone else first (a run failed "cannot listen on 127.0.0.1:58705: Address already in
use": the port came from bind(0), in the range the kernel also uses for every outgoing connection)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from ..conftest import _own_ports, free_port

RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def test_a_free_port_is_below_the_kernels_ephemeral_range_and_never_handed_out_twice_in_a_row():
    ephemeral = int(RANGE_FILE.read_text().split()[0]) if RANGE_FILE.exists() else 32768
    ports = [free_port() for _ in range(50)]
    assert all(10000 <= port < ephemeral for port in ports)
    assert len(set(ports)) == len(ports)


def test_workers_running_at_once_draw_from_shares_that_do_not_overlap(monkeypatch):
    drawn = []
    for worker in range(3):
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{worker}")
        share = set(itertools.islice(_own_ports(), 20000))  # more than a share: it wraps round
        drawn.append(share)
    assert not (drawn[0] & drawn[1] or drawn[0] & drawn[2] or drawn[1] & drawn[2])
    assert all(len(share) > 4000 for share in drawn)


@pytest.mark.parametrize("worker", ["gw0", "gw5"])
def test_a_share_is_walked_whole_before_a_port_comes_again(monkeypatch, worker):
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "6")
    monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
    ports = _own_ports()
    first = list(itertools.islice(ports, 3000))
    assert len(set(first)) == len(first)
