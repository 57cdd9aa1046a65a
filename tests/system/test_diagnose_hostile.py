"""`diagnose` against a compromised server (tests/system/hostile_server.py): whatever the scripts print, the
command writes a report, within its time, and prints nothing a terminal would obey."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from exporter.scripts import DIAGNOSE_MARKER

from ..conftest import PASSWORD, PASSWORD_ENV, USERNAME
from ..unit.test_field_report import lines
from .hostile_server import HostileServer, Output
from .test_secrets import ROOT, exporter_env


def _diagnose(tmp_path, port: int) -> subprocess.CompletedProcess:
    config = {"modules": {"default": {"username": USERNAME, "password_env": PASSWORD_ENV, "scheme": "http",
                                      "operation_timeout": "3s", "read_timeout": "5s"}},
              "poll": {"timeout": "15s"}, "servers": [{"name": "EVIL01", "address": "127.0.0.1", "port": port}]}
    path = tmp_path / "exporter.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return subprocess.run([sys.executable, "-m", "exporter", "diagnose", "--config.file", str(path), "EVIL01"],
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
