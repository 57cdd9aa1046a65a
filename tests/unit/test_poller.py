"""The poller's wiring against a simulated fleet, observed from outside: the background thread starts what
the schedule says, within the concurrency limit, one poll per server at a time, the organization included.

The schedule's rules themselves (offsets, jitter, failing lane, back-off, reload) are tested on a fake clock
in test_schedule.py; these runs only check that real polls follow them, so they are few and short: the
servers are chosen for offsets within the first second of the interval.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import yaml

from exporter.config import load_config_text
from exporter.poller import Poller
from exporter.runtime import SafeRuntime
from exporter.schedule import offset

from ..conftest import SimulatedFleet, relocate

INTERVAL = 10.0
SE = "15.2.2562.53"


def scenario(names: list[str], *, runtime: float = 0.0, organization: bool = False) -> dict:
    servers = [{"name": name, "address": "127.0.0.1", "build": SE,
                **({"output_faults": {"script_runtime": runtime}} if runtime else {})} for name in names]
    data = {"servers": servers}
    if organization:
        data["organization"] = {"name": "Contoso", "domain": "contoso.com", "mitigations_enabled": True}
    return relocate(data)


def poller_for(fleet: SimulatedFleet, catalog, *, organization: bool = False, **poll) -> Poller:
    data = yaml.safe_load(fleet.config_text(interval=f"{INTERVAL:g}s", timeout="5s", jitter=0, **poll))
    if not organization:
        data.pop("organization", None)
    return Poller(SafeRuntime(load_config_text(yaml.safe_dump(data), Path(".")), catalog))


def early(prefix: str, count: int, within: tuple[float, float] = (0.0, 1.0)) -> list[str]:
    """Names whose offset falls early in the interval, so a run need not wait for most of one."""
    names = (f"{prefix}{i}" for i in range(1, 10_000))
    return [n for n in names if within[0] <= offset(n, INTERVAL) < within[1]][:count]


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


def wait_for(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {seconds:g}s waiting for {what}"
        time.sleep(0.05)


def all_succeeded(poller: Poller, names: list[str]) -> bool:
    servers, _ = poller.snapshot()
    return {r.name for r in servers if r.outcome and r.outcome.success} == set(names)


def test_background_polls_reach_every_server_within_the_concurrency_limit(catalog):
    # six polls of ~1.8 s due within the first second, two slots: the limit binds and polls queue
    names = early("SLOW", 6)
    with SimulatedFleet(scenario(names, runtime=1.5)) as fleet:
        poller = poller_for(fleet, catalog, concurrency=2)
        with ShellSampler(fleet, names) as shells:
            poller.start()
            try:
                wait_for(lambda: all_succeeded(poller, names), 20, "every server's first poll")
            finally:
                poller.stop()
    assert shells.max_total == 2, shells.max_total
    assert shells.max_per_host == 1, shells.max_per_host


def test_a_probe_waits_for_the_scheduled_poll_of_the_same_server(catalog):
    [name] = early("SOLO", 1, within=(0.2, 1.0))
    with SimulatedFleet(scenario([name], runtime=1.5)) as fleet:
        poller = poller_for(fleet, catalog)
        with ShellSampler(fleet, [name]) as shells:
            poller.start()
            try:
                wait_for(lambda: fleet.fleet.open_shells(name) > 0, INTERVAL, "the scheduled poll's shell")
                probe = poller.probe(name)  # what /probe calls
                wait_for(lambda: all_succeeded(poller, [name]), INTERVAL, "the scheduled poll")
            finally:
                poller.stop()
    assert probe.outcome.success
    assert probe.outcome.duration_seconds >= 1.5  # its own poll ran, after the lock was free
    assert shells.max_per_host == 1, shells.max_per_host


def test_the_organization_job_runs_at_start_beside_the_servers(catalog):
    names = early("EX", 2)
    with SimulatedFleet(scenario(names, organization=True)) as fleet:
        poller = poller_for(fleet, catalog, organization=True)
        poller.start()
        try:
            wait_for(lambda: (poller.snapshot()[1].outcome or False) and all_succeeded(poller, names), 15,
                     "the organization's and every server's first poll")
        finally:
            poller.stop()
        organization = poller.snapshot()[1]
    assert organization.outcome.success and organization.name == "Contoso"
    assert {name.lower() for name in names} <= set(organization.servers)
