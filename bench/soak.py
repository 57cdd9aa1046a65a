"""Bounded soak: thousands of polls against a generated fleet whose faults keep changing, looking for leaks.

A benchmark measures speed; this run looks for what only shows up over time: memory that grows, threads
that pile up, WinRM shells left open on servers, scrapes that fail while polls are failing. Every few
seconds a random share of the servers gets a random fault (every kind the simulator has), while the
exporter's real Poller polls every server in cycles back to back (`poll_cycle`) and /metrics is scraped
through the real `serve()` once a second. At the end the faults are cleared and one clean cycle runs,
which must delete every shell a failed poll left behind.

The simulator runs in a child process (forked before the exporter starts any thread) and takes its fault
commands through a pipe, so RSS, Python objects and threads measured here are the exporter's alone. They
are taken after a warm-up (a clean cycle, one with every fault kind, then a few soak cycles that are not
counted), when the pools, the connections and the allocator's arenas exist.

A shell whose Create answer was lost (say, a latency fault that outlasts the read timeout) cannot be deleted
by anyone who never learned its ID; the exporter asks for a 120 s idle timeout at Create so such a shell
expires. Shells still open after the final clean cycle are reported, and `leaked_shells` counts those
still open once that idle timeout has passed.

`make soak` runs it with MALLOC_ARENA_MAX=2, as the Dockerfile and deploy/ run the exporter: with glibc's
default of one arena per thread, RSS under faults settles about 15% above the warm-up level and stays there.

Prints ONE JSON object; exits 1 if a target is missed, 2 on bad arguments.
    python bench/soak.py                 # 200 servers, 5000 polls, at most 600 s
    python bench/soak.py --quick         # 40 servers, about 45 s
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import multiprocessing
import os
import random
import secrets
import sys
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import free_port  # noqa: E402
from exporter.catalog import Catalog  # noqa: E402
from exporter.config import load_config_text  # noqa: E402
from exporter.exporter import Exporter  # noqa: E402
from exporter.web import serve  # noqa: E402
from simulator.host import Faults  # noqa: E402
from simulator.scenario import scenario_from_dict  # noqa: E402
from simulator.server import Fleet  # noqa: E402
from simulator.windows import OutputFaults  # noqa: E402
from exporter.winrm.client import SHELL_IDLE_TIMEOUT  # noqa: E402

PASSWORD_ENV = "EEMS_SOAK_PASSWORD"
USERNAME = "EXCH\\svc_soak"
RSS_GROWTH_LIMIT = 0.10
THREAD_SLACK = 2  # executor threads that may still be winding down
MAX_RESPONSE_BYTES = 1 << 20

# fault kind -> (protocol faults, output faults); every fault the simulator can inject
FAULTS: dict[str, tuple[dict, dict]] = {
    "refused": ({"refuse_connections": True}, {}),
    "reset": ({"reset_mid_response": True}, {}),
    "hang": ({"hang": True}, {}),
    "unauthorized": ({"unauthorized": True}, {}),
    "access_denied": ({"fault_code": 5}, {}),
    "quota": ({"fault_code": 2150859173}, {}),
    "garbage": ({}, {"garbage_output": True}),
    "truncated": ({}, {"truncated_output": True}),
    "oversized": ({}, {"oversized_output": 2 * MAX_RESPONSE_BYTES}),
    "exit_code": ({}, {"exit_code": 1}),
    "long_runtime": ({}, {"script_runtime": 30.0}),
    "latency": ({"latency_seconds": 2.0}, {}),
}

DEFAULTS = {"servers": 200, "polls": 5000, "seconds": 600.0, "fault_every": 3.0, "warm_up_cycles": 3}
QUICK = {"servers": 40, "polls": 400, "seconds": 15.0, "fault_every": 2.0, "warm_up_cycles": 1}


def _number(convert, what: str, valid, bounds: str):
    """An argparse type: `convert` the text, then require `valid(value)`."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not valid(value):
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value
    return parse


positive_int = _number(int, "a whole number", lambda v: v >= 1, "at least 1")
positive_float = _number(float, "a number of seconds", lambda v: v > 0, "more than 0")
fraction = _number(float, "a fraction between 0 and 1", lambda v: 0 <= v <= 1, "between 0 and 1")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=positive_int, help="simulated servers (default 200)")
    parser.add_argument("--polls", type=positive_int, help="server polls to run (default 5000)")
    parser.add_argument("--seconds", type=positive_float,
                        help="no new cycle starts after this many seconds (default 600)")
    parser.add_argument("--concurrency", type=positive_int, default=32, help="poll.concurrency (default 32)")
    parser.add_argument("--fault-share", type=fraction, default=0.2, help="share of servers faulted (default 0.2)")
    parser.add_argument("--fault-every", type=positive_float, help="seconds between fault changes (default 3)")
    parser.add_argument("--warm-up-cycles", type=positive_int, help="uncounted soak cycles before RSS is taken (default 3)")
    parser.add_argument("--seed", type=int, default=None, help="random seed for the fault schedule")
    parser.add_argument("--quick", action="store_true", help=f"about 30 s; defaults become {QUICK}")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.servers > 5000:
        parser.error(f"--servers: at most 5000 (the exporter's limits.max_servers), got {args.servers}")
    if args.concurrency > 1024:
        parser.error(f"--concurrency: at most 1024 (poll.concurrency), got {args.concurrency}")
    return args


def proc_status(field: str) -> int:
    """A numeric field of /proc/self/status; VmRSS is in kB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == field:
            number = int(value.split()[0])
            return number * 1024 if value.strip().endswith("kB") else number
    raise RuntimeError(f"/proc/self/status has no {field} line")


def fleet_scenario(servers: int, password: str, port: int, rng: random.Random) -> dict:
    return {
        "credentials": [{"username": USERNAME, "password": password}],
        "defaults": {"scheme": "http", "port": port},
        "organization": {"name": "Soak", "domain": "soak.example", "mitigations_enabled": True},
        "servers": [],
        "generate": {
            "count": servers,
            "address_base": f"127.{rng.randint(100, 250)}.{rng.randint(1, 200)}.1",
            "name_prefix": "EXSOAK",
            "template": {"build": "15.2.1544.36"},
        },
    }


def exporter_config(hosts: list[tuple[str, str, int]], organization: tuple[str, str], concurrency: int):
    config = {
        "poll": {"interval": "10s", "timeout": "5s", "concurrency": concurrency},
        "limits": {"max_response_bytes": MAX_RESPONSE_BYTES, "max_poll_bytes": MAX_RESPONSE_BYTES},
        "modules": {"http": {"username": USERNAME, "password_env": PASSWORD_ENV, "scheme": "http",
                             "operation_timeout": "3s", "read_timeout": "5s"}},
        "servers": [{"name": name, "address": address, "port": port, "module": "http"}
                    for name, address, port in hosts],
        "organization": {"name": organization[0], "server": organization[1]},
    }
    return load_config_text(yaml.safe_dump(config, sort_keys=False), Path("."))


def _fleet_process(scenario_dict: dict, conn) -> None:
    """The child: serve the fleet and apply fault commands from the parent until told to stop."""
    scenario = scenario_from_dict(scenario_dict)
    fleet = Fleet(scenario.hosts, scenario.credentials, tls_dir=scenario.tls)
    fleet.start()
    hosts = {h.name: h for h in scenario.hosts}
    conn.send(([(h.name, h.address, h.port) for h in scenario.hosts],
               (scenario.organization.name, scenario.organization.server)))
    while True:
        command, *args = conn.recv()
        if command == "set":
            name, protocol, output = args
            host = hosts[name]
            host.faults = Faults(**protocol)
            host.run.server = dataclasses.replace(host.run.server, output=OutputFaults(**output))
            conn.send(None)
        elif command == "open_shells":
            conn.send({name: fleet.open_shells(name) for name in hosts})
        else:
            fleet.stop()
            conn.send(None)
            return


class FleetProcess:
    """The simulated fleet in a child process, driven through a pipe."""

    def __init__(self, scenario_dict: dict):
        context = multiprocessing.get_context("fork")
        self._conn, child = context.Pipe()
        self._lock = threading.Lock()
        self._process = context.Process(target=_fleet_process, args=(scenario_dict, child), daemon=True)
        self._process.start()
        self.hosts, self.organization = self._conn.recv()
        self.names = [name for name, _, _ in self.hosts]

    def _call(self, *message):
        with self._lock:
            self._conn.send(message)
            return self._conn.recv()

    def set_faults(self, name: str, protocol: dict, output: dict) -> None:
        self._call("set", name, protocol, output)

    def clear_faults(self) -> None:
        for name in self.names:
            self.set_faults(name, {}, {})

    def open_shells(self) -> dict[str, int]:
        return {name: count for name, count in self._call("open_shells").items() if count}

    def stop(self) -> None:
        self._call("stop")
        self._process.join(timeout=30)


class FaultToggler(threading.Thread):
    """Every `every` seconds: clear all faults, then give a random `share` of the servers a random fault."""

    def __init__(self, fleet: FleetProcess, share: float, every: float, rng: random.Random):
        super().__init__(name="soak-faults", daemon=True)
        self.fleet = fleet
        self.share, self.every, self.rng = share, every, rng
        self.injected: Counter[str] = Counter()
        self.history: dict[str, list[str]] = {}  # host -> fault kinds, oldest first
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.fleet.clear_faults()
            for name in self.rng.sample(self.fleet.names, round(len(self.fleet.names) * self.share)):
                kind = self.rng.choice(list(FAULTS))
                self.fleet.set_faults(name, *FAULTS[kind])
                self.injected[kind] += 1
                self.history.setdefault(name, []).append(kind)
            self.stopping.wait(self.every)

    def stop(self) -> None:
        self.stopping.set()
        self.join()
        self.fleet.clear_faults()


class Scraper(threading.Thread):
    """GET /metrics once a second, as Prometheus would; a non-200 or unparsable answer is an error."""

    def __init__(self, url: str):
        super().__init__(name="soak-scraper", daemon=True)
        self.url = url
        self.scrapes = self.errors = 0
        self.slowest = 0.0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(1.0):
            started = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=10) as response:
                    ok = response.status == 200 and b"\nexchange_up{" in response.read()
            except OSError:
                ok = False
            self.slowest = max(self.slowest, time.monotonic() - started)
            self.scrapes += 1
            self.errors += 0 if ok else 1

    def stop(self) -> None:
        self.stopping.set()
        self.join()


def poll_cycle(exporter: Exporter) -> None:
    """One cycle, back to back with the last: the organization, then every server once, concurrently within
    the limit, through the poller's public poll path (the background schedule would pace it by the interval)."""
    poller = exporter.poller
    poller.poll_organization()
    with ThreadPoolExecutor(poller.runtime.current().config.poll.concurrency) as pool:
        list(pool.map(lambda t: poller.poll_server(t.name), poller.runtime.current().targets.polled))


def warm_up(exporter: Exporter, fleet: FleetProcess) -> None:
    """A clean cycle, one with every fault kind, and a clean one again: connections, NTLM contexts, the
    thread pool and the allocator's arenas for the large fault bodies exist before RSS is taken."""
    poll_cycle(exporter)
    kinds = list(FAULTS)
    for index, name in enumerate(fleet.names[: max(len(kinds), round(len(fleet.names) * 0.2))]):
        fleet.set_faults(name, *FAULTS[kinds[index % len(kinds)]])
    poll_cycle(exporter)
    fleet.clear_faults()
    time.sleep(0.5)  # refused listeners reopen within the simulator's 0.2 s watch
    poll_cycle(exporter)


def settled_rss() -> int:
    gc.collect()
    return proc_status("VmRSS")


def count_outcomes(exporter: Exporter, failures: Counter) -> int:
    """Tally the cycle that just finished: each server's latest result is that cycle's poll."""
    servers, organization = exporter.poller.snapshot()
    for result in servers:
        if result.outcome and not result.outcome.success:
            failures[result.outcome.error_reason] += 1
    if organization and organization.outcome and not organization.outcome.success:
        failures[f"organization:{organization.outcome.error_reason}"] += 1
    return len(servers)


def soak(args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed)
    password = secrets.token_urlsafe(18)  # this run's only credential; never printed
    os.environ[PASSWORD_ENV] = password
    fleet = FleetProcess(fleet_scenario(args.servers, password, free_port(), rng))
    exporter = Exporter(exporter_config(fleet.hosts, fleet.organization, args.concurrency), Catalog.load())
    http = serve(exporter, "127.0.0.1", 0, None)
    try:
        warm_up(exporter, fleet)
        toggler = FaultToggler(fleet, args.fault_share, args.fault_every, rng)
        scraper = Scraper(f"http://127.0.0.1:{http.server_address[1]}/metrics")
        toggler.start()
        scraper.start()
        for _ in range(args.warm_up_cycles):  # under faults: arenas for the poll threads and large bodies fill
            poll_cycle(exporter)
        rss_start, objects_start = settled_rss(), len(gc.get_objects())
        threads_start = proc_status("Threads")
        failures: Counter[str] = Counter()
        polls = cycles = 0
        started = time.monotonic()
        rss_by_cycle = []
        while polls < args.polls and time.monotonic() - started < args.seconds:
            poll_cycle(exporter)
            polls += count_outcomes(exporter, failures)
            cycles += 1
            rss_by_cycle.append(proc_status("VmRSS"))
        duration = time.monotonic() - started
        toggler.stop()
        scraper.stop()

        time.sleep(0.5)  # refused listeners reopen within the simulator's 0.2 s watch
        poll_cycle(exporter)
        clean_failures: Counter[str] = Counter()
        count_outcomes(exporter, clean_failures)
        after_clean_cycle = fleet.open_shells()
        lingering = after_clean_cycle
        if after_clean_cycle:  # only shells whose ID never reached the exporter: they expire by its idle timeout
            time.sleep(float(SHELL_IDLE_TIMEOUT[2:-1]) + 5)
            lingering = fleet.open_shells()
        leaked_shells = sum(lingering.values())
        leaks = {name: {"open_shells": count, "last_faults": toggler.history.get(name, [])[-3:]}
                 for name, count in lingering.items()}
        rss_end, objects_end = settled_rss(), len(gc.get_objects())
        threads_end = proc_status("Threads")
    finally:
        http.shutdown()
        http.server_close()
        exporter.stop()
        fleet.stop()

    growth = (rss_end - rss_start) / rss_start
    targets = {
        "rss_growth_ratio": {"limit": f"< {RSS_GROWTH_LIMIT}", "pass": growth < RSS_GROWTH_LIMIT},
        "threads_flat": {"limit": f"threads at end <= at start + {THREAD_SLACK}",
                         "pass": threads_end <= threads_start + THREAD_SLACK},
        "python_objects": {"limit": f"growth < {RSS_GROWTH_LIMIT}",
                           "pass": objects_end < objects_start * (1 + RSS_GROWTH_LIMIT)},
        "leaked_shells": {"limit": "== 0", "pass": leaked_shells == 0},
        "metrics_scrape_errors": {"limit": "== 0", "pass": scraper.errors == 0 and scraper.scrapes > 0},
        "clean_cycle_failures": {"limit": "== 0 (every server up once faults clear)", "pass": not clean_failures},
        "internal_errors": {"limit": "== 0", "pass": not any(r.endswith("internal_error") for r in failures)},
    }
    return {
        "servers": args.servers,
        "concurrency": args.concurrency,
        "cycles": cycles,
        "polls": polls,
        "failures_by_reason": dict(sorted(failures.items())),
        "faults_injected_by_kind": dict(sorted(toggler.injected.items())),
        "duration_seconds": round(duration, 1),
        "rss_start_bytes": rss_start,
        "rss_end_bytes": rss_end,
        "rss_growth_ratio": round(growth, 4),
        "rss_by_cycle_bytes": rss_by_cycle[:: max(1, len(rss_by_cycle) // 10)],
        "threads_start": threads_start,
        "threads_end": threads_end,
        "python_objects_start": objects_start,
        "python_objects_end": objects_end,
        "open_shells_after_clean_cycle": sum(after_clean_cycle.values()),
        "leaked_shells": leaked_shells,
        "leaked_shell_hosts": leaks,
        "clean_cycle_failures": dict(clean_failures),
        "metrics_scrapes": scraper.scrapes,
        "metrics_scrape_errors": scraper.errors,
        "metrics_scrape_max_seconds": round(scraper.slowest, 3),
        "simulator_in_process": False,
        "malloc_arena_max": os.environ.get("MALLOC_ARENA_MAX"),  # `make soak` sets 2, as the image does
        "note": (f"RSS and threads are the exporter's (the simulator is a child process); start figures are taken "
                 f"after a clean cycle, one with every fault and {args.warm_up_cycles} soak cycles (not counted), after gc"),
        "targets": targets,
        "passed": all(t["pass"] for t in targets.values()),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)  # thousands of expected poll failures; the JSON counts them
    result = soak(args)
    print(json.dumps(result, indent=2))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
