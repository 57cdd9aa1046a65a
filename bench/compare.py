"""Bench two checkouts of the exporter back to back with the same harness, alternating, and report medians.

The machine may be shared: run both in turns (old, new, old, new, ...) so that a burst of other load hits
both about equally, and read medians. Each checkout runs with its own .venv (`make install` in it), and
both run this checkout's bench/bench.py and this checkout's simulator (with the Python running this script),
so only the exporter code differs.

    python bench/compare.py --baseline ../main-checkout --repeat 5 -- --preset cpu-bound
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
FIGURES = ("cpu_seconds_per_poll", "cycle_ratio", "first_cycle_cpu_seconds_per_poll", "second_cycle_cpu_seconds_per_poll",
           "simulator_cpu_seconds_per_poll")


def run_bench(checkout: Path, bench_args: list[str]) -> dict:
    python = checkout / ".venv" / "bin" / "python"
    completed = subprocess.run([str(python), str(HERE / "bench" / "bench.py"), *bench_args, "--no-targets",
                                "--simulator-python", sys.executable],
                               cwd=checkout, capture_output=True, text=True, check=True)
    return json.loads(completed.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="checkout of the old code, with its .venv")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("bench_args", nargs="*", help="arguments for bench/bench.py (after --)")
    args = parser.parse_args()
    checkouts = {"old": args.baseline.resolve(), "new": HERE}
    runs: dict[str, list[dict]] = {"old": [], "new": []}
    for index in range(args.repeat):
        for name, checkout in checkouts.items():
            load = os.getloadavg()[0]
            result = run_bench(checkout, args.bench_args)
            runs[name].append(result)
            print(f"run {index + 1} {name}: load {load:.2f} before, {result['load_average'][0]:.2f} after, "
                  + ", ".join(f"{figure} {result[figure]}" for figure in FIGURES)
                  + f", failed polls {result.get('failed_polls')}", file=sys.stderr, flush=True)
    medians = {name: {figure: statistics.median(r[figure] for r in results) for figure in FIGURES}
               for name, results in runs.items()}
    report = {
        "bench_args": args.bench_args,
        "repeat": args.repeat,
        "median": medians,
        "new_over_old": {figure: round(medians["new"][figure] / medians["old"][figure], 3) for figure in FIGURES},
        "runs": runs,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
