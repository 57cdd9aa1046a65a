"""`diagnose` against a compromised server (tests/system/hostile_server.py): whatever the scripts print, the
command writes a report, within its time, and prints nothing a terminal would obey."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import yaml

from exporter.scripts import DIAGNOSE_MARKER

from ..conftest import PASSWORD, PASSWORD_ENV, USERNAME
from ..unit.test_field_report import lines
from .hostile_server import HostileServer, Output
from .test_secrets import ROOT, exporter_env


def _diagnose(tmp_path, port: int, *extra: str) -> subprocess.CompletedProcess:
    config = {"modules": {"default": {"username": USERNAME, "password_env": PASSWORD_ENV, "scheme": "http",
                                      "operation_timeout": "3s", "read_timeout": "5s"}},
              "poll": {"timeout": "15s"}, "servers": [{"name": "EVIL01", "address": "127.0.0.1", "port": port}]}
    path = tmp_path / "exporter.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return subprocess.run([sys.executable, "-m", "exporter", "diagnose", "--config.file", str(path), "EVIL01", *extra],
                          cwd=ROOT, env=exporter_env(), capture_output=True, timeout=120)


@pytest.mark.parametrize("script", ["collect", "diagnose"])
def test_deeply_nested_json_still_gives_a_report(tmp_path, script):
    """A document nested 200,000 levels deep (400 KB): json.loads raises RecursionError, not the ValueError the
    report caught, and diagnose ended in a traceback with no report."""
    nested = b'{"schema":1,"computer":' + b"[" * 200_000 + b"]" * 200_000 + b"}"

    def output(command: str) -> Output:
        is_diagnose = command.startswith(DIAGNOSE_MARKER)
        return Output(stdout=nested if is_diagnose == (script == "diagnose") else b'{"schema":1}')

    with HostileServer("none", {USERNAME: PASSWORD}, output=output) as hostile:
        proc = _diagnose(tmp_path, hostile.port)
    assert proc.returncode == 0 and b"Traceback" not in proc.stderr, proc.stderr[-2000:]
    got = lines(proc.stdout.decode())
    expected = {"collect": ("poll.outcome", "output not understood"), "diagnose": ("diagnose.outcome", "failed: ")}
    key, start = expected[script]
    assert got[key].startswith(start), proc.stdout[:2000]


HUGE_LISTS = {  # what the diagnose script caps (DIAGNOSE_PARAMETERS, the first 20 errors), some 2 MB of it uncapped
    "events": {"events": [{"id": i} for i in range(150_000)]},
    "log_files": {"log_folder": {"exists": True}, "log_files": [{"error": 1} for _ in range(150_000)]},
    "errors": {"event_errors": [1] * 150_000, "errors": [1] * 150_000},
}


@pytest.mark.parametrize("part", HUGE_LISTS)
def test_a_diagnose_output_with_lists_beyond_the_scripts_caps_gives_a_bounded_report(tmp_path, part):
    """The script sends at most 200 events, 48 files (3 read) and 20 error records; the report made a line (or
    eight) of every item a server sent: 2 MB of events with distinct ids took 12 s and printed 31 MB."""
    stdout = json.dumps({"schema": 1, **HUGE_LISTS[part]}, separators=(",", ":")).encode()

    def output(command: str) -> Output:
        return Output(stdout=stdout if command.startswith(DIAGNOSE_MARKER) else b'{"schema":1}')

    with HostileServer("none", {USERNAME: PASSWORD}, output=output) as hostile:
        started = time.monotonic()
        proc = _diagnose(tmp_path, hostile.port)
        seconds = time.monotonic() - started
    assert proc.returncode == 0 and lines(proc.stdout.decode())["diagnose.outcome"] == "ok", proc.stderr[-2000:]
    assert len(proc.stdout) < 1_000_000 and seconds < 20, (len(proc.stdout), seconds)


def test_a_computer_name_of_megabytes_costs_no_minutes(tmp_path):
    """--redact-names adds the computer name the scripts print to the names it removes, spelled for UTF-16 too:
    a 2 MB name made a regular expression of 40 MB (100 KB took 3.3 s). A name longer than a host name can be
    (255 characters) is no name to remove."""
    stdout = json.dumps({"schema": 1, "computer": "a" * 2_000_000}).encode()
    with HostileServer("none", {USERNAME: PASSWORD}, output=lambda _: Output(stdout=stdout)) as hostile:
        started = time.monotonic()
        proc = _diagnose(tmp_path, hostile.port, "--redact-names")
        seconds = time.monotonic() - started
    assert proc.returncode == 0 and lines(proc.stdout.decode())["diagnose.outcome"] == "ok", proc.stderr[-2000:]
    assert seconds < 20, seconds
