"""The poller's wiring against a simulated fleet, observed from outside: the background thread starts what
the schedule says, within the concurrency limit, one poll per server at a time, the organization included.

The schedule's rules themselves (offsets, jitter, failing lane, back-off, reload) are tested on a fake clock
in test_schedule.py; these runs only check that real polls follow them. The poller's clock is a manual one
(tests/clock.py): one step of a poll interval makes every server's first poll due, and the polls themselves
run in real time.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from exporter.config import load_config_text
from exporter.poller import Poller
from exporter.runtime import SafeRuntime

from ..clock import ManualClock
from ..conftest import SimulatedFleet, relocate, wait_until

INTERVAL = 10.0
SE = "15.2.2562.53"


def scenario(names: list[str], *, runtime: float = 0.0, organization: bool = False) -> dict:
    servers = [{"name": name, "address": "127.0.0.1", "build": SE,
                **({"output_faults": {"script_runtime": runtime}} if runtime else {})} for name in names]
    data = {"servers": servers}
    if organization:
        data["organization"] = {"name": "Contoso", "domain": "contoso.com", "mitigations_enabled": True}
    return relocate(data)


def poller_for(fleet: SimulatedFleet, catalog, clock: ManualClock, *, organization: bool = False, **poll) -> Poller:
    data = yaml.safe_load(fleet.config_text(interval=f"{INTERVAL:g}s", timeout="5s", jitter=0, **poll))
    if not organization:
        data.pop("organization", None)
    return Poller(SafeRuntime(load_config_text(yaml.safe_dump(data), Path(".")), catalog), clock=clock)


class ShellSampler:
    """The simulator's view: the most shells open at once, fleet-wide and per host."""

    def __init__(self, fleet: SimulatedFleet, hosts: list[str]):
        self._fleet, self._hosts = fleet.fleet, hosts
        self.max_total = 0
        self.max_per_host = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            counts = [self._fleet.open_shells(h) for h in self._hosts]
            self.max_total = max(self.max_total, sum(counts))
            self.max_per_host = max(self.max_per_host, *counts)

    def __enter__(self) -> "ShellSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def all_succeeded(poller: Poller, names: list[str]) -> bool:
    servers, _ = poller.snapshot()
    return {r.name for r in servers if r.outcome and r.outcome.success} == set(names)


def test_background_polls_reach_every_server_within_the_concurrency_limit(catalog):
    # six polls of ~0.8 s due at once, two slots: the limit binds and polls queue
    names = [f"SLOW{i}" for i in range(1, 7)]
    clock = ManualClock()
    with SimulatedFleet(scenario(names, runtime=0.5)) as fleet:
        poller = poller_for(fleet, catalog, clock, concurrency=2)
        with ShellSampler(fleet, names) as shells:
            poller.start()
            clock.advance(INTERVAL)
            try:
                wait_until(lambda: all_succeeded(poller, names), 20, "every server's first poll")
            finally:
                poller.stop()
    assert shells.max_total == 2, shells.max_total
    assert shells.max_per_host == 1, shells.max_per_host


def test_a_probe_waits_for_the_scheduled_poll_of_the_same_server(catalog):
    name = "SOLO"
    clock = ManualClock()
    with SimulatedFleet(scenario([name], runtime=0.5)) as fleet:
        poller = poller_for(fleet, catalog, clock)
        with ShellSampler(fleet, [name]) as shells:
            poller.start()
            clock.advance(INTERVAL)
            try:
                wait_until(lambda: fleet.fleet.open_shells(name) > 0, 10, "the scheduled poll's shell")
                probe = poller.probe(name)  # what /probe calls
                wait_until(lambda: all_succeeded(poller, [name]), 10, "the scheduled poll")
            finally:
                poller.stop()
    assert probe.outcome.success
    assert probe.outcome.duration_seconds >= 0.5  # its own poll ran, after the lock was free
    assert shells.max_per_host == 1, shells.max_per_host


def test_the_organization_job_runs_at_start_beside_the_servers(catalog):
    names = ["EX1", "EX2"]
    clock = ManualClock()
    # the simulated organization script takes 2 s unless told otherwise
    with SimulatedFleet(scenario(names, runtime=0.1, organization=True)) as fleet:
        poller = poller_for(fleet, catalog, clock, organization=True)
        poller.start()
        try:
            wait_until(lambda: poller.snapshot()[1].outcome, 15, "the organization's first poll, due at start")
            assert not any(r.outcome for r in poller.snapshot()[0]), "a server's first poll ran before its offset"
            clock.advance(INTERVAL)
            wait_until(lambda: all_succeeded(poller, names), 15, "every server's first poll")
        finally:
            poller.stop()
        organization = poller.snapshot()[1]
    assert organization.outcome.success and organization.name == "Contoso"
    assert all(organization.server(name) is not None for name in names)


def test_a_scheduled_poll_that_waits_for_its_server_still_gets_the_whole_timeout(catalog):
    """The organization collector runs on one of the servers: due while that server's own poll runs, it waits
    for it (one poll per server). The wait is the exporter's doing, not a slow server: the organization's
    3 s script still has poll.timeout (5 s) once the server is free, and so has a server poll that waits for
    the organization. (It used to spend the wait too: `timeout`, "1.8 s left, too little for the next request".)
    The two orders run side by side, each on a fleet of its own."""
    with ThreadPoolExecutor(2) as pool:
        organization_waits = pool.submit(_one_poll_after_another, catalog, "server", "organization")
        server_waits = pool.submit(_one_poll_after_another, catalog, "organization", "server")
        server, organization = organization_waits.result()
        _, after_organization = server_waits.result()
    assert server.outcome.success, server.outcome
    assert organization.outcome.success, organization.outcome
    assert organization.outcome.duration_seconds >= 3.0
    assert after_organization.outcome.success, after_organization.outcome


def _one_poll_after_another(catalog, first: str, then: str) -> tuple:
    """On a one-server fleet whose scripts take 3 s: the `first` poll ("server" or "organization"), and once its
    shell is open the `then` poll, which waits for it. Both results."""
    name = "EX1"
    with SimulatedFleet(scenario([name], runtime=3.0, organization=True)) as fleet:
        poller = poller_for(fleet, catalog, ManualClock(), organization=True)
        polls = {"server": lambda: poller.poll_server(name), "organization": poller.poll_organization}
        with ThreadPoolExecutor(1) as pool:
            earlier = pool.submit(polls[first])
            wait_until(lambda: fleet.fleet.open_shells(name) > 0, 10, f"the {first} poll's shell")
            later = polls[then]()
            return earlier.result(), later
