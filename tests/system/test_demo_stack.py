"""`make demo-stack` (tools/demo_stack.py --fast) runs the demo fleet, the exporter, Debian's Prometheus and
Alertmanager with the repository's files, to a page at its webhook; Ctrl-C stops every program it started."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import yaml

from ..conftest import PASSWORD_ENV, demo_scenario, free_port, relocate
from .test_integration import REPO, binary

PAGE_TIMEOUT = 150
# The path the example's pager receiver posts to; the stack keeps it and points the host at its webhook.
PAGER = next("/" + hook["url"].split("/", 3)[3]
             for receiver in yaml.safe_load((REPO / "examples" / "alertmanager.yml").read_text())["receivers"]
             if receiver["name"] == "exchange-pager" for hook in receiver["webhook_configs"])


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_demo_stack_pages_at_its_webhook_and_stops_cleanly(tmp_path, monkeypatch):
    binary("prometheus"), binary("prometheus-alertmanager")
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    scenario = tmp_path / "demo.yaml"
    scenario.write_text(yaml.safe_dump(relocate(demo_scenario())))
    ports = {name: free_port() for name in ("exporter", "prometheus", "alertmanager", "webhook")}
    workdir = tmp_path / "stack"
    process = subprocess.Popen(
        [sys.executable, str(REPO / "tools" / "demo_stack.py"), "--fast", "--scenario", str(scenario),
         "--workdir", str(workdir), *[f"--{name}-port={port}" for name, port in ports.items()]],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    pages: list[dict] = []
    try:
        deadline = time.monotonic() + PAGE_TIMEOUT
        log = workdir / "notifications.jsonl"
        while time.monotonic() < deadline and not pages and process.poll() is None:
            time.sleep(1)
            if log.exists():
                pages = [n["payload"] for n in map(json.loads, log.read_text().splitlines())
                         if n["path"] == PAGER]
    finally:
        process.send_signal(signal.SIGINT)
        try:
            output, _ = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
    assert pages, f"no page within {PAGE_TIMEOUT}s; output:\n{output}"
    assert process.returncode == 0, output
    assert PAGER.strip("/").upper() in output, output
    names = {alert["labels"]["alertname"] for page in pages for alert in page["alerts"]}
    assert names <= {"ExchangeBuildBelowCertificateCutoff", "ExchangeEEMSServiceNotRunning", "ExchangeEEMSFetchErrors",
                     "ExchangeBuildWithoutEEMS", "ExchangeExporterCannotPoll"}, names
    assert not [name for name, port in ports.items() if listening(port)], "a program of the stack still listens"


def test_notifications_arriving_together_print_whole_lines(tmp_path, monkeypatch):
    """Alertmanager posts a page and a ticket at once; the webhook's threads printed them as
    `...endpoint=mitigations: EX-SE08-FRPAGER  firing ...`, two notifications on one line."""
    import importlib.util
    import threading

    spec = importlib.util.spec_from_file_location("demo_stack", REPO / "tools" / "demo_stack.py")
    demo_stack = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo_stack)

    class Console:  # records each write: a line written in pieces (print's text, then its newline) can interleave
        def __init__(self):
            self.writes: list[str] = []

        def write(self, text: str) -> int:
            self.writes.append(text)
            return len(text)

        def flush(self) -> None:
            pass

    console = Console()
    monkeypatch.setattr(sys, "stdout", console)
    receiver = demo_stack.Receiver.__new__(demo_stack.Receiver)
    receiver.log, receiver.lock = tmp_path / "notifications.jsonl", threading.Lock()
    bodies = [json.dumps({"status": "firing", "groupLabels": {"alertname": f"A{n}"},
                          "alerts": [{"status": "firing", "labels": {"server": f"EX{n}"}}]}).encode()
              for n in range(8)]
    threads = [threading.Thread(target=receiver.record, args=("/pager", body)) for body in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # each notification is one whole line in one write (made under the lock): no other thread can split it
    assert len(console.writes) == 8 and all(w.endswith("\n") and w.count("\n") == 1 for w in console.writes), console.writes
    lines = "".join(console.writes).splitlines()
    assert all(line.startswith("PAGER") and line.count("firing") == 1 for line in lines), lines


def test_a_program_that_cannot_start_says_why_though_its_log_folder_is_removed(tmp_path, monkeypatch):
    """`make demo-stack` after `make demo` was left running (or beside another Alertmanager): a program of the stack
    cannot bind its port and exits. The stack said only `Alertmanager exited with code 1` and removed its temporary
    folder, log included, so nothing said why; it now prints the end of that program's log."""
    binary("prometheus"), binary("prometheus-alertmanager")
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    scenario = tmp_path / "demo.yaml"
    scenario.write_text(yaml.safe_dump(relocate(demo_scenario())))
    ports = {name: free_port() for name in ("exporter", "prometheus", "alertmanager", "webhook")}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports["alertmanager"]))
        taken.listen()
        process = subprocess.run(
            [sys.executable, str(REPO / "tools" / "demo_stack.py"), "--scenario", str(scenario),
             *[f"--{name}-port={port}" for name, port in ports.items()]],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    assert process.returncode != 0, process.stdout
    assert "Alertmanager exited" in process.stdout, process.stdout
    assert "address already in use" in process.stdout, process.stdout
    assert not [name for name, port in ports.items() if name != "alertmanager" and listening(port)], \
        "a program of the stack still listens"


def test_every_option_the_readme_gives_the_stack_exists():
    """The README's `make demo-stack` paragraph passes options through DEMO_ARGS (`--fast`, the ports to move
    beside a Prometheus or Alertmanager of one's own); each must be one tools/demo_stack.py takes."""
    import importlib.util
    import re

    spec = importlib.util.spec_from_file_location("demo_stack", REPO / "tools" / "demo_stack.py")
    demo_stack = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo_stack)
    readme = (REPO / "README.md").read_text()
    paragraph = readme[readme.index("`make demo-stack` (tools/demo_stack.py"):]
    given = set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", paragraph[:paragraph.index("\n\n")]))
    assert {"--fast", "--prometheus-port", "--alertmanager-port"} <= given
    taken = set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", demo_stack.build_parser().format_help()))  # every option
    assert given - taken == set()
