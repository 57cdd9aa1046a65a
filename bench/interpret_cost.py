"""CPU of parsing and judging one server poll's output, without the network: what each poll costs the
exporter's one GIL after the script's answer has arrived.

A poll's stdout is a JSON document of 20-64 KiB, most of it the tails of the EEMS log files; each log line
is parsed and judged on every poll, so this cost grows with the tail (`poll.log_tail_bytes`, 64 KiB by
default). The simulator builds the output in-process, as a server would write it, for two shapes:

- `default`: the simulator's default server (hourly log files, a 24 h lookback: 25 small files);
- `full`: daily log files and a 4-day lookback, so that the tails fill `log_tail_bytes`;
- `full-generic`: a build below the 2023-03 cutoff, whose hourly 1008 is the generic January 2025 text
  (each one looks for the nearest failed log cycle), daily files and a 5-day lookback to fill the tail.

For each it prints this thread's CPU time (`time.thread_time`) per parse (`parse_server_output`) and per
parse + interpretation (`collectors.interpret_output`, as a poll runs them), and the latter per log line.
Each figure is the least mean of `--repeat` rounds of `--runs` calls, as timeit reports: other load on a
shared machine (cache misses, frequency) only ever adds to it. `--profile` adds the costliest functions.

    python bench/interpret_cost.py [--runs 300] [--repeat 5] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import time
from pathlib import Path
from typing import Callable

from exporter import scripts
from exporter.catalog import Catalog
from exporter.collectors import interpret_output, server_script
from exporter.config import load_config_text
from exporter.parse import parse_server_output
from exporter.runtime import Targets
from simulator.scenario import scenario_from_dict

PASSWORD_ENV = "INTERPRET_COST_PASSWORD"
SHAPES = {
    "default": ({}, ""),
    "full": ({"log_rotation": "daily"}, "poll:\n  lookback: 96h\n"),
    "full-generic": ({"log_rotation": "daily", "build": "15.2.986.5"}, "poll:\n  lookback: 120h\n"),
}


def poll_output(server: dict, poll: str):
    """The target, poll settings and stdout of one simulated poll of a server with these scenario keys."""
    os.environ.setdefault(PASSWORD_ENV, "bench")
    scenario = scenario_from_dict({
        "credentials": [{"username": "EXCH\\bench", "password": os.environ[PASSWORD_ENV]}],
        "servers": [{"name": "EX1", "address": "127.0.0.1", "build": "15.2.1544.36", **server}],
    })
    config = load_config_text(
        f"modules:\n  default:\n    username: 'EXCH\\bench'\n    password_env: {PASSWORD_ENV}\nservers: [EX1]\n{poll}",
        Path("."),
    )
    target = Targets(config).polled[0]
    command = scripts.powershell_command(server_script(target, config.poll, None))
    output = scenario.hosts[0].run(command.line)
    if output.exit_code != 0:
        raise SystemExit(f"simulated script failed: {output.stderr[:300]!r}")
    return target, config.poll, b"".join(output.stdout_chunks)


def cpu_ms(fn: Callable[[], object], runs: int, repeat: int) -> float:
    fn()  # warm caches (regexes, catalog) as a running exporter has them
    rounds = []
    for _ in range(repeat):
        started = time.thread_time()
        for _ in range(runs):
            fn()
        rounds.append((time.thread_time() - started) / runs * 1000)
    return min(rounds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300, help="timed calls per round")
    parser.add_argument("--repeat", type=int, default=5, help="rounds per measurement; the least is reported")
    parser.add_argument("--profile", action="store_true", help="also print the costliest functions (cProfile)")
    args = parser.parse_args()
    catalog = Catalog.load()
    for shape, (server, poll) in SHAPES.items():
        target, settings, stdout = poll_output(server, poll)

        def parse():
            return parse_server_output(stdout, max_events=settings.max_events, max_log_bytes=settings.log_tail_bytes)

        def judge():
            return interpret_output(target, stdout, settings, catalog, None)

        facts, _ = judge()
        lines = sum(len(log.tail.splitlines()) for log in facts.logs)
        tail_kib = sum(len(log.tail.encode("utf-8")) for log in facts.logs) / 1024
        parse_ms, total_ms = cpu_ms(parse, args.runs, args.repeat), cpu_ms(judge, args.runs, args.repeat)
        print(f"{shape}: {len(stdout)} bytes of output, {len(facts.logs)} log files, {lines} lines "
              f"({tail_kib:.1f} KiB), {len(facts.events)} events")
        print(f"  parse            {parse_ms:6.3f} ms")
        print(f"  parse+interpret  {total_ms:6.3f} ms  ({total_ms / max(lines, 1) * 1000:.2f} us per log line)")
        if args.profile:
            profile = cProfile.Profile()
            profile.runcall(lambda: [judge() for _ in range(args.runs)])
            pstats.Stats(profile).sort_stats("tottime").print_stats(15)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
