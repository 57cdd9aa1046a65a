#!/usr/bin/env python3
"""`make demo-stack`: the demo fleet and the exporter, Debian's Prometheus and Alertmanager with the repository's
own files, and a webhook receiver that prints every notification: from the README to a page on one machine.

    python tools/demo_stack.py            # real timing: the first pages after about 7 minutes
    python tools/demo_stack.py --fast     # alerts without their `for:` wait, Alertmanager waiting seconds

What it runs, all on 127.0.0.1: `exchange-eems-simulator demo` (the simulated fleet plus the exporter on :10061),
`prometheus` with examples/prometheus.yml and alerts/exchange-eems.rules.yml (:9090), `prometheus-alertmanager`
with examples/alertmanager.yml (:9093), and a webhook receiver here (:9099, the URL in that file). The example
files are copied unchanged except for addresses (and, with --fast, timing). Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PROMETHEUS_EXAMPLE = REPO / "examples" / "prometheus.yml"
ALERTMANAGER_EXAMPLE = REPO / "examples" / "alertmanager.yml"
RULES = REPO / "alerts" / "exchange-eems.rules.yml"
FAST_WAIT = "10s"
# Loopback only: a proxy from the environment must never see these requests.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def binary(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit(f"demo-stack: {names[0]} is not installed (Debian packages prometheus and "
                     "prometheus-alertmanager; `make demo-stack` installs them)")


def prometheus_config(exporter: str, alertmanager: str, rules: Path, fast: bool) -> str:
    config = yaml.safe_load(PROMETHEUS_EXAMPLE.read_text())
    if fast:
        config["global"].update(scrape_interval=FAST_WAIT, evaluation_interval=FAST_WAIT)
    config["rule_files"] = [str(rules)]
    config["alerting"]["alertmanagers"][0]["static_configs"] = [{"targets": [alertmanager]}]
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [exporter]}]
        if fast and "scrape_timeout" in job:
            job["scrape_timeout"] = FAST_WAIT
    return yaml.safe_dump(config, sort_keys=False)


def without_for(text: str) -> str:
    """Every `for:` 0s but ExchangeExporterTargetMissing's: `up` is absent until the first scrape, so without its
    wait it would page at every start."""
    lines, alert = [], None
    for line in text.splitlines(keepends=True):
        if match := re.match(r"\s+- alert: (\S+)", line):
            alert = match.group(1)
        elif alert != "ExchangeExporterTargetMissing":
            line = re.sub(r"^(\s+)for:[ \t]*\S+[ \t]*$", r"\g<1>for: 0s", line, flags=re.MULTILINE)
        lines.append(line)
    return "".join(lines)


def _short_timing(route: dict) -> None:
    if "group_wait" in route or "routes" not in route:
        route.update(group_wait=FAST_WAIT, group_interval=FAST_WAIT)
    for child in route.get("routes", []):
        _short_timing(child)


def alertmanager_config(webhook: str, fast: bool) -> str:
    config = yaml.safe_load(ALERTMANAGER_EXAMPLE.read_text())
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = webhook + "/" + hook["url"].split("/", 3)[3]  # the example's path, this receiver
    if fast:
        _short_timing(config["route"])
    return yaml.safe_dump(config, sort_keys=False)


class Receiver:
    """The webhook: prints one line per notification and appends its JSON to a log file."""

    def __init__(self, host: str, port: int, log: Path):
        receiver = self
        self.log = log
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(min(int(self.headers.get("Content-Length") or 0), 1 << 20))
                receiver.record(self.path, body)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def record(self, path: str, body: bytes) -> None:
        try:
            payload = json.loads(body)
        except ValueError:
            print(f"webhook {path}: not JSON: {body[:200]!r}", flush=True)
            return
        firing = [a for a in payload.get("alerts", []) if a.get("status") == "firing"]
        servers = sorted({a["labels"].get("server") or a["labels"].get("organization", "") for a in firing})
        group = ",".join(f"{k}={v}" for k, v in sorted(payload.get("groupLabels", {}).items()))
        line = f"{path.strip('/').upper():16} {payload.get('status', '?'):9} {group}: {', '.join(servers)}\n"
        # one write per line under the lock: notifications arrive on parallel threads, and print() writes the text
        # and its newline apart, so two of them ran together on one line
        with self.lock, self.log.open("a", encoding="utf-8") as out:
            sys.stdout.write(line)
            sys.stdout.flush()
            out.write(json.dumps({"path": path, "payload": payload}) + "\n")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def exited(name: str, process: subprocess.Popen, log: Path) -> str:
    """Why a program stopped: its exit code and the end of its log, which goes with the temporary folder."""
    try:
        tail = log.read_text(errors="replace").splitlines()[-5:]
    except OSError:
        tail = []
    return "\n".join([f"demo-stack: {name} exited with code {process.returncode}; the end of its log:",
                      *(f"  {line}" for line in tail)])


def wait_ready(url: str, process: subprocess.Popen, name: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(exited(name, process, log))
        try:
            with HTTP.open(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"demo-stack: {name} did not answer {url} within {timeout:.0f}s")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--fast", action="store_true",
                        help="rules without their for: wait; scrapes, evaluations and Alertmanager's group_wait and "
                             "group_interval every 10s")
    parser.add_argument("--scenario", default="demo", help="simulator scenario (default: the shipped demo)")
    parser.add_argument("--interval", default=None, help="the exporter's poll interval (default 30s, 10s with --fast)")
    for name, port in (("exporter", 10061), ("prometheus", 9090), ("alertmanager", 9093), ("webhook", 9099)):
        parser.add_argument(f"--{name}-port", type=int, default=port, help=f"default {port}")
    parser.add_argument("--workdir", type=Path, help="where the configurations and data go (default: a temporary "
                                                     "folder, removed at the end)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prometheus_bin = binary("prometheus")
    alertmanager_bin = binary("prometheus-alertmanager", "alertmanager")

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="eems-demo-stack-"))
    workdir.mkdir(parents=True, exist_ok=True)
    host = "127.0.0.1"
    exporter = f"{host}:{args.exporter_port}"
    prometheus = f"{host}:{args.prometheus_port}"
    alertmanager = f"{host}:{args.alertmanager_port}"
    receiver = Receiver(host, args.webhook_port, workdir / "notifications.jsonl")

    rules = workdir / "exchange-eems.rules.yml"
    rules.write_text(without_for(RULES.read_text()) if args.fast else RULES.read_text())
    (workdir / "prometheus.yml").write_text(prometheus_config(exporter, alertmanager, rules, args.fast))
    (workdir / "alertmanager.yml").write_text(alertmanager_config(receiver.url, args.fast))

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    processes: list[tuple[str, subprocess.Popen]] = []

    def start(name: str, command: list[str]) -> subprocess.Popen:
        log = (workdir / f"{name}.log").open("wb")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        processes.append((name, process))
        return process

    try:
        demo = start("demo", [sys.executable, "-m", "simulator", "demo", "--scenario", args.scenario,
                              "--listen", exporter, "--interval", args.interval or ("10s" if args.fast else "30s")])
        am = start("alertmanager", [alertmanager_bin, f"--config.file={workdir / 'alertmanager.yml'}",
                                    f"--storage.path={workdir / 'alertmanager'}", f"--web.listen-address={alertmanager}",
                                    "--cluster.listen-address="])
        prom = start("prometheus", [prometheus_bin, f"--config.file={workdir / 'prometheus.yml'}",
                                    f"--storage.tsdb.path={workdir / 'prometheus'}", f"--web.listen-address={prometheus}"])
        wait_ready(f"http://{exporter}/-/healthy", demo, "the demo (simulator and exporter)", workdir / "demo.log")
        wait_ready(f"http://{alertmanager}/-/ready", am, "Alertmanager", workdir / "alertmanager.log")
        wait_ready(f"http://{prometheus}/-/ready", prom, "Prometheus", workdir / "prometheus.log")
        first = "within a minute" if args.fast else "after about 7 minutes (the rules' for: 5m, then group_wait 1m)"
        print(f"Exporter:      http://{exporter}/metrics\n"
              f"Prometheus:    http://{prometheus}/alerts\n"
              f"Alertmanager:  http://{alertmanager}/\n"
              f"Webhook:       {receiver.url} (pages and tickets are printed below, {first})\n"
              f"Files and logs: {workdir}\nCtrl-C stops everything.", flush=True)
        while not stop.wait(0.5):
            for name, process in processes:
                if process.poll() is not None:
                    print(exited(name, process, workdir / f"{name}.log"), file=sys.stderr)
                    return 1
        return 0
    finally:
        for _, process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGINT if process is processes[0][1] else signal.SIGTERM)
        for _, process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        receiver.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
