"""Which of the exporter's files run code for one background poll and one scrape, and for one /probe: the
figures of docs/design.md "How the trace was taken" (issue 19: how many files a reader must hold to follow a
poll).

A profiler (`sys.setprofile` and `threading.setprofile`) records every call into `exporter/` made by the
exporter's own threads (this script's thread, which only waits, is left out), against a one-server simulated
fleet (EX-SE01 of the demo scenario: NTLM over HTTP with message encryption) with background polling and the
real HTTP server; every thread the exporter starts is traced, the HTTP loop's too. Phases: `cold` (the first poll,
which logs on, and a scrape), `steady` (a poll on the kept connection and a scrape: the third poll, since the
client keeps a connection only once polls come within KEEP_IF_POLLED_WITHIN of each other, so the second poll
logs on again; it is not traced), `probe` (one GET /probe). "Lines" are whole files (`wc -l`) of the files in
which code ran, what a reader following the poll holds; "lines run" are the lines of the functions that ran.

    python bench/trace_poll.py            # counts per phase, file by file
    python bench/trace_poll.py --order    # also each function in the order it was first called
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import threading
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from exporter.catalog import Catalog  # noqa: E402
from exporter.config import load_config_text  # noqa: E402
from exporter.exporter import Exporter  # noqa: E402
from exporter.web import serve  # noqa: E402
from tests.conftest import PASSWORD, PASSWORD_ENV, SimulatedFleet, demo_scenario, relocate  # noqa: E402

PACKAGE = str(REPO / "exporter") + os.sep


class Trace:
    """Calls into exporter/ per phase: (file, function) -> count, first-call order, and the threads."""

    def __init__(self) -> None:
        self.phase: str | None = None
        self.calls: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.order: dict[str, dict] = collections.defaultdict(dict)
        self.threads: dict[str, set] = collections.defaultdict(set)
        self.spans: dict[tuple[str, str], int] = {}  # (file, function) -> its lines, first to last

    def profile(self, frame, event, arg) -> None:
        if event != "call" or self.phase is None or threading.current_thread() is threading.main_thread():
            return
        filename = frame.f_code.co_filename
        if filename.startswith(PACKAGE):
            key = (filename[len(PACKAGE):], frame.f_code.co_qualname)
            if key not in self.spans:
                code = frame.f_code
                self.spans[key] = max((line for _, _, line in code.co_lines() if line), default=code.co_firstlineno) \
                    - code.co_firstlineno + 1
            self.calls[self.phase][key] += 1
            self.order[self.phase].setdefault(key, len(self.order[self.phase]))
            self.threads[self.phase].add(threading.current_thread().name)


def lines(file: str) -> int:
    with open(REPO / "exporter" / file, encoding="utf-8") as handle:
        return sum(1 for _ in handle)


def run(trace: Trace) -> None:
    scenario = demo_scenario()
    scenario["servers"] = [s for s in scenario["servers"] if s["name"] == "EX-SE01"]
    scenario["organization"].pop("server", None)
    with SimulatedFleet(relocate(scenario)) as fleet:
        config = yaml.safe_load(fleet.config_text(interval="10s", timeout="8s"))
        config.pop("organization", None)
        exporter = Exporter(load_config_text(yaml.safe_dump(config), REPO), Catalog.load())
        threading.setprofile(trace.profile)  # before the HTTP loop's thread starts
        server = serve(exporter, "127.0.0.1", 0, None)
        base = f"http://127.0.0.1:{server.server_address[1]}"

        def finished():
            results, _ = exporter.poller.snapshot()
            return results[0].outcome.finished if results and results[0].outcome else None

        threading.setprofile(trace.profile)
        sys.setprofile(trace.profile)
        try:
            for phase in ("cold", None, "steady"):  # None: the second poll, not traced
                trace.phase, before = phase, finished()
                if phase == "cold":
                    exporter.start()
                deadline = time.monotonic() + 60
                while finished() == before:  # the next background poll has ended
                    if time.monotonic() > deadline:
                        raise SystemExit(f"no background poll ended in 60 s ({phase or 'second'})")
                    time.sleep(0.05)
                urllib.request.urlopen(base + "/metrics", timeout=10).read()
                trace.phase = None
            trace.phase = "probe"
            urllib.request.urlopen(base + "/probe?target=EX-SE01", timeout=20).read()
            trace.phase = None
        finally:
            sys.setprofile(None)
            threading.setprofile(None)
            exporter.stop()
            server.shutdown()
            server.server_close()


def report(trace: Trace, order: bool) -> None:
    for phase, counter in trace.calls.items():
        files = sorted({file for file, _ in counter})
        functions = {key for key in counter if "<" not in key[1]}
        run = {file: sum(trace.spans[key] for key in counter if key[0] == file) for file in files}
        print(f"## {phase}: {len(files)} files, {sum(lines(f) for f in files):,} lines ({sum(run.values()):,} run), "
              f"{len(functions)} functions, {sum(counter.values()):,} calls, threads {sorted(trace.threads[phase])}")
        for file in files:
            print(f"   {file:28s} {lines(file):5d} lines {run[file]:5d} run "
                  f"{sum(1 for key in functions if key[0] == file):3d} functions")
        if order:
            for (file, name), index in sorted(trace.order[phase].items(), key=lambda item: item[1]):
                if "<" not in name:
                    print(f"      {index:4d} {file}:{name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--order", action="store_true", help="list each function in the order it was first called")
    args = parser.parse_args()
    os.environ.setdefault(PASSWORD_ENV, PASSWORD)
    trace = Trace()
    run(trace)
    report(trace, args.order)


if __name__ == "__main__":
    main()
