"""Poll-cycle benchmark: N simulated servers on loopback, measured against what WinRM itself costs.

The simulator runs as a separate process (its own CPU, its own GIL), started with `exchange-eems-simulator
simulate --scenario` on a generated fleet where every request waits L seconds and the script runs R seconds.
The exporter's poller runs here, so this process's CPU time and peak RSS are the exporter's alone.

A poll costs at least R + k*L, where k is the number of HTTP round trips (5 once the connection and its
NTLM authentication are reused: Create, Command, Receive, Signal, Delete). With C polls in parallel the
ideal cycle is ceil(N/C) * (R + k*L). The first cycle opens the connections and authenticates (k = 8);
the second is the steady state that is measured.

Prints one JSON object; exits 1 if a target is missed (unless --no-targets).
    python bench/bench.py                       # N=2000, ~3 minutes
    python bench/bench.py --servers 200 --runtime 1 --concurrency 50   # about a minute
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exporter.catalog import Catalog  # noqa: E402
from exporter.config import load_config  # noqa: E402
from exporter.exporter import Exporter  # noqa: E402

TARGETS = {
    "cycle_ratio": 1.2,  # measured / ideal
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
        [sys.executable, "-m", "simulator", "simulate", "--scenario", str(scenario_file),
         "--control-address", f"127.0.0.1:{control}", "--write-config", str(config_file)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
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


def poll_all(exporter: Exporter, targets) -> list:
    with ThreadPoolExecutor(exporter.config.poll.concurrency) as pool:
        return list(pool.map(lambda t: exporter.poller.poll_server(t.name), targets))


def render_metrics(exporter: Exporter) -> tuple[float, bytes]:
    """One /metrics body as the HTTP handler builds it (text format)."""
    started = time.perf_counter()
    body, _ = exporter.metrics_body("text/plain")
    return time.perf_counter() - started, body


def measure_cycle(exporter: Exporter, state_url: str) -> tuple[float, float, int]:
    requests_before = total_requests(state_url)
    cpu_before = time.process_time()
    started = time.monotonic()
    results = poll_all(exporter, exporter.poller.targets.mine())
    seconds = time.monotonic() - started
    cpu = time.process_time() - cpu_before
    failures = sum(1 for r in results if not r.outcome.success)
    if failures:
        reasons = sorted({r.outcome.error_reason for r in results if not r.outcome.success})
        print(f"warning: {failures} polls failed: {reasons}", file=sys.stderr)
    return seconds, cpu, total_requests(state_url) - requests_before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=0.01, help="per-request latency L, seconds")
    parser.add_argument("--runtime", type=float, default=3.0, help="script runtime R, seconds")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--address-base", default="127.1.0.1")
    parser.add_argument("--no-targets", action="store_true", help="report only; do not fail on a missed target")
    args = parser.parse_args()

    n, c = args.servers, args.concurrency
    workdir = Path(tempfile.mkdtemp(prefix="eems-bench-"))
    simulator, config_file, state_url = start_simulator(args, workdir)
    try:
        write_exporter_config(config_file, args)
        config = load_config(config_file)
        exporter = Exporter(config, Catalog.load())
        warm_seconds, _, warm_requests = measure_cycle(exporter, state_url)  # connects and authenticates
        cycle_seconds, cpu_seconds, requests = measure_cycle(exporter, state_url)
        cold_render, body = render_metrics(exporter)
        renders = []
        slice_size = max(1, n // 20)  # a 15 s scrape interval sees 1/20 of a 5-minute cycle's polls
        targets = exporter.poller.targets.mine()
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

    per_poll = requests / n
    ideal = math.ceil(n / c) * (args.runtime + per_poll * args.latency)
    cpu_per_poll = cpu_seconds / n
    result = {
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
        "cpu_fraction_of_one_core_at_5m": round(cpu_per_poll * n / 300, 4),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "metrics_render_seconds": round(statistics.median(renders), 4),
        "metrics_render_all_changed_seconds": round(cold_render, 4),
        "metrics_bytes": len(body),
        "leaked_shells": leaked,
        "cpus": os.cpu_count(),
        "simulator": "separate process on the same machine",
    }
    result["targets"] = {name: {"limit": limit, "pass": result[name] <= limit} for name, limit in TARGETS.items()}
    result["targets"]["http_requests_per_poll"] = {"limit": 5, "pass": per_poll <= 5}
    result["targets"]["leaked_shells"] = {"limit": 0, "pass": leaked == 0}
    print(json.dumps(result, indent=2))
    return 0 if args.no_targets or all(t["pass"] for t in result["targets"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
