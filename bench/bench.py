"""Poll-cycle benchmark: N simulated servers on loopback, measured against what WinRM itself costs.

The simulator runs as a separate process (its own CPU, its own GIL), started with `exchange-eems-simulator
simulate --scenario` on a generated fleet where every request waits L seconds and the script runs R seconds.
The exporter's poller runs here, so this process's CPU time and peak RSS are the exporter's alone.

A poll costs at least R + k*L, where k is the number of HTTP round trips (5 once the connection and its
NTLM authentication are reused: Create, Command, Receive, Signal, Delete). With C polls in parallel the
ideal cycle is ceil(N/C) * (R + k*L). The first cycle opens the connections and authenticates (k = 7,
what every poll costs at a 5-minute interval); the third is the steady state of polls that come often
enough to keep their connection, and is the one measured.

Two presets: `fleet` (N=2000, C=100: the capacity of one instance, bound by the script runtime) and
`cpu-bound` (N=200, C=100: half the fleet in flight at once, so the CPU each poll costs under one GIL
stretches the cycle on a small machine). Explicit --servers/--concurrency/... override a preset.

Prints one JSON object; exits 1 if a target is missed (unless --no-targets).
    python bench/bench.py                        # preset fleet, ~3 minutes
    python bench/bench.py --preset cpu-bound     # about 30 seconds
    python bench/bench.py --preset cpu-bound --profile /tmp/cycle.txt   # plus CPU per stage (needs py-spy)
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import yaml

# `exporter` is the package installed in the running interpreter's environment (`make install` installs this
# checkout in .venv), so bench/compare.py can run this harness against another checkout's code.
from exporter.catalog import Catalog
from exporter.config import load_config
from exporter.exporter import Exporter
from stages import breakdown

REPOSITORY = Path(__file__).resolve().parents[1]
PRESETS = {
    "fleet": {"servers": 2000, "concurrency": 100, "latency": 0.01, "runtime": 3.0},
    "cpu-bound": {"servers": 200, "concurrency": 100, "latency": 0.01, "runtime": 3.0},
}
CYCLE_RATIO_TARGETS = {"fleet": 1.2, "cpu-bound": 1.1}
PROFILE_RATE = 1000  # py-spy samples per second

TARGETS = {
    "cpu_fraction_of_one_core_at_5m": 0.25,
    "metrics_render_seconds": 0.1,
    "peak_rss_bytes": 300 * 1024 * 1024,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_simulator(args, workdir: Path) -> tuple[subprocess.Popen, Path, str]:
    port, control = free_port(), free_port()
    scenario = {
        "credentials": [{"username": "EXCH\\svc_bench", "password": "bench-only-password"}],
        "defaults": {"scheme": "http", "port": port, "max_shells_per_user": 30, "idle_timeout": 600},
        "organization": {"name": "Bench", "domain": "bench.example", "mitigations_enabled": True},
        "servers": [],
        "generate": {
            "count": args.servers,
            "address_base": args.address_base,
            "name_prefix": "EXBENCH",
            "template": {
                "build": "15.2.1544.36",
                "faults": {"latency": args.latency},
                "output_faults": {"script_runtime": args.runtime},
            },
        },
    }
    scenario_file = workdir / "bench-scenario.yaml"
    scenario_file.write_text(yaml.safe_dump(scenario), encoding="utf-8")
    config_file = workdir / "bench-exporter.yml"
    process = subprocess.Popen(
        [args.simulator_python, "-m", "simulator", "simulate", "--scenario", str(scenario_file),
         "--control-address", f"127.0.0.1:{control}", "--write-config", str(config_file)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        cwd=REPOSITORY,  # `-m simulator` is this checkout's simulator, whichever checkout's exporter is measured
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            raise SystemExit(f"simulator exited with {process.returncode}")
        if line.startswith("exporter configuration:"):
            break
    else:
        raise SystemExit("simulator did not start within 120 s")
    return process, config_file, f"http://127.0.0.1:{control}/state"


def total_requests(state_url: str) -> int:
    with urllib.request.urlopen(state_url, timeout=30) as response:
        hosts = json.load(response)["hosts"]
    return sum(h["requests"] for h in hosts.values())


def open_shells(state_url: str) -> int:
    with urllib.request.urlopen(state_url, timeout=30) as response:
        hosts = json.load(response)["hosts"]
    return sum(h["open_shells"] for h in hosts.values())


def write_exporter_config(config_file: Path, args) -> None:
    config = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    config["poll"] = {"interval": "300s", "timeout": "60s", "concurrency": args.concurrency}
    config.pop("organization", None)  # one poll per server: the organization collector is a separate cost
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")


def fleet_of(exporter: Exporter) -> tuple[list, int]:
    """The exporter's targets and its poll concurrency. Checkouts from before the runtime holder (main before
    issue 12, the baseline of issue 13) kept them on the exporter and its poller, and until issue 19 asked
    `targets.mine()`; bench/compare.py runs those."""
    runtime = getattr(exporter, "runtime", None)
    if runtime is None:
        return exporter.poller.targets.mine(), exporter.config.poll.concurrency
    current = runtime.current()
    polled = getattr(current.targets, "polled", None)  # mine() before the targets became immutable
    return list(polled) if polled is not None else current.targets.mine(), current.config.poll.concurrency


def poll_all(exporter: Exporter, targets) -> list:
    with ThreadPoolExecutor(fleet_of(exporter)[1]) as pool:
        return list(pool.map(lambda t: exporter.poller.poll_server(t.name), targets))


def render_metrics(exporter: Exporter) -> tuple[float, bytes]:
    """One /metrics body as the HTTP handler builds it (text format)."""
    started = time.perf_counter()
    body, _ = exporter.metrics_body("text/plain")
    return time.perf_counter() - started, body


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of another process (Linux /proc), to keep the simulator's CPU apart."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def sampled(profile: Path | None):
    """Sample this process with py-spy (only the thread holding the GIL) while the block runs."""
    if profile is None:
        yield
        return
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if py_spy is None:
        raise SystemExit("--profile needs py-spy (pip install py-spy)")
    recorder = subprocess.Popen(
        [py_spy, "record", "--pid", str(os.getpid()), "--gil", "--nonblocking", "--rate", str(PROFILE_RATE),
         "--format", "raw", "--output", str(profile)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    time.sleep(1)  # py-spy attaches
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)
        output, _ = recorder.communicate(timeout=60)
        if recorder.returncode != 0 or not profile.exists():
            raise SystemExit(f"py-spy failed: {output.strip()[-500:]}")


def measure_cycle(exporter: Exporter, state_url: str, simulator_pid: int,
                  profile: Path | None = None) -> tuple[float, float, float, float, int, dict[str, int]]:
    requests_before = total_requests(state_url)
    with sampled(profile):
        simulator_cpu_before = process_cpu_seconds(simulator_pid)
        times_before = os.times()
        started = time.monotonic()
        results = poll_all(exporter, fleet_of(exporter)[0])
        seconds = time.monotonic() - started
        times_after = os.times()
        cpu = (times_after.user - times_before.user) + (times_after.system - times_before.system)
        system_cpu = times_after.system - times_before.system
        simulator_cpu = process_cpu_seconds(simulator_pid) - simulator_cpu_before
    failed = collections.Counter(r.outcome.error_reason for r in results if not r.outcome.success)
    if failed:
        print(f"warning: {sum(failed.values())} polls failed: {dict(failed)}", file=sys.stderr)
    return seconds, cpu, system_cpu, simulator_cpu, total_requests(state_url) - requests_before, dict(failed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="fleet")
    parser.add_argument("--servers", type=int)
    parser.add_argument("--latency", type=float, help="per-request latency L, seconds")
    parser.add_argument("--runtime", type=float, help="script runtime R, seconds")
    parser.add_argument("--concurrency", type=int)
    parser.add_argument("--address-base", default="127.1.0.1")
    parser.add_argument("--simulator-python", default=sys.executable,
                        help="the Python that runs the simulator (bench/compare.py passes its own, so that old and "
                             "new exporter code face the same simulator)")
    parser.add_argument("--profile", type=Path, help="write py-spy samples of the measured cycle here and "
                        "report the share of samples per poll stage (bench/stages.py)")
    parser.add_argument("--no-targets", action="store_true", help="report only; do not fail on a missed target")
    args = parser.parse_args()
    for name, value in PRESETS[args.preset].items():
        if getattr(args, name) is None:
            setattr(args, name, value)

    n, c = args.servers, args.concurrency
    workdir = Path(tempfile.mkdtemp(prefix="eems-bench-"))
    simulator, config_file, state_url = start_simulator(args, workdir)
    try:
        write_exporter_config(config_file, args)
        config = load_config(config_file)
        exporter = Exporter(config, Catalog.load())
        # The first cycle connects and authenticates every server: what each poll costs at a 5-minute interval,
        # as HTTP.sys closes idle connections after about two minutes. A client that keeps a connection only
        # when polls come that often learns the cadence in the second cycle; the third, the steady state of
        # polls closer than that, is the one measured.
        warm_seconds, warm_cpu, _, _, warm_requests, warm_failed = measure_cycle(exporter, state_url, simulator.pid)
        _, second_cpu, _, _, second_requests, _ = measure_cycle(exporter, state_url, simulator.pid)
        cycle_seconds, cpu_seconds, system_cpu_seconds, simulator_cpu, requests, failed = measure_cycle(
            exporter, state_url, simulator.pid, args.profile)
        cold_render, body = render_metrics(exporter)
        renders = []
        slice_size = max(1, n // 20)  # a 15 s scrape interval sees 1/20 of a 5-minute cycle's polls
        targets = fleet_of(exporter)[0]
        for index in range(5):
            poll_all(exporter, targets[index * slice_size:(index + 1) * slice_size])
            seconds, body = render_metrics(exporter)
            renders.append(seconds)
        exporter.stop()
        time.sleep(1)
        leaked = open_shells(state_url)
    finally:
        simulator.terminate()
        simulator.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)  # the fleet's password file among them

    per_poll = requests / n
    ideal = math.ceil(n / c) * (args.runtime + per_poll * args.latency)
    cpu_per_poll = cpu_seconds / n
    result = {
        "preset": args.preset,
        "servers": n,
        "concurrency": c,
        "latency_seconds": args.latency,
        "script_runtime_seconds": args.runtime,
        "cycle_seconds": round(cycle_seconds, 3),
        "ideal_cycle_seconds": round(ideal, 3),
        "cycle_ratio": round(cycle_seconds / ideal, 4),
        "http_requests_per_poll": round(per_poll, 3),
        "first_cycle_seconds": round(warm_seconds, 3),
        "first_cycle_http_requests_per_poll": round(warm_requests / n, 3),
        "cpu_seconds_per_poll": round(cpu_per_poll, 6),
        "system_share_of_cpu": round(system_cpu_seconds / cpu_seconds, 3) if cpu_seconds else 0.0,
        "first_cycle_cpu_seconds_per_poll": round(warm_cpu / n, 6),
        "second_cycle_cpu_seconds_per_poll": round(second_cpu / n, 6),
        "second_cycle_http_requests_per_poll": round(second_requests / n, 3),
        "simulator_cpu_seconds_per_poll": round(simulator_cpu / n, 6),
        # every poll authenticates a new connection at that interval
        "cpu_fraction_of_one_core_at_5m": round(warm_cpu / 300, 4),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "metrics_render_seconds": round(statistics.median(renders), 4),
        "metrics_render_all_changed_seconds": round(cold_render, 4),
        "metrics_bytes": len(body),
        "leaked_shells": leaked,
        "failed_polls": {"first_cycle": warm_failed, "measured_cycle": failed},  # reason -> count
        "cpus": os.cpu_count(),
        "simulator": "separate process on the same machine",
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    if args.profile:
        stages = breakdown(args.profile.read_text(encoding="utf-8"), rate=PROFILE_RATE, polls=n)
        sampled_ms = sum(stages.values())
        result["profile"] = {
            "sampled_ms_per_poll": round(sampled_ms, 3),
            "share_of_samples": {stage: round(ms / sampled_ms, 3) for stage, ms in stages.items()},
        }
    targets = {"cycle_ratio": CYCLE_RATIO_TARGETS[args.preset], **TARGETS}
    result["targets"] = {name: {"limit": limit, "pass": result[name] <= limit} for name, limit in targets.items()}
    result["targets"]["http_requests_per_poll"] = {"limit": 5, "pass": per_poll <= 5}
    result["targets"]["leaked_shells"] = {"limit": 0, "pass": leaked == 0}
    print(json.dumps(result, indent=2))
    return 0 if args.no_targets or all(t["pass"] for t in result["targets"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
