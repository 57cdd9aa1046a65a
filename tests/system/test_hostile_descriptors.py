"""Issue 22, finding 10: file descriptors grow with the fleet. With the common soft limit of 1,024 open files,
a fleet of about a thousand servers reached EMFILE with no client at all: every server's kept WinRM
connection held a descriptor between polls, polls failed with `connection_error` and /metrics could not
be accepted.

The exporter now raises its soft limit to the hard limit at start (as Go's runtime does for Go exporters),
and keeps a connection between polls only when the next poll comes before HTTP.sys would close it
(tests/unit/test_winrm_client.py checks that part with a fake clock). Here: 1,100 simulated servers (the
simulator in its own process), the exporter started with a soft limit of 1,024, two full poll cycles
10 s apart (so the second keeps every connection).
"""

from __future__ import annotations

import random
import re
import resource
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from ..conftest import PASSWORD, USERNAME, free_port

SERVERS = 1_100
SOFT_LIMIT = 1_024
ROOT = Path(__file__).resolve().parents[2]


def _simulator(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    scenario = {
        "credentials": [{"username": USERNAME, "password": PASSWORD}],
        "defaults": {"scheme": "http", "port": free_port()},
        "servers": [],
        "generate": {"count": SERVERS, "address_base": f"127.{random.randint(100, 250)}.0.1", "name_prefix": "EXFD",
                     "template": {"build": "15.2.1544.36"}},
    }
    (tmp_path / "scenario.yaml").write_text(yaml.safe_dump(scenario))
    config = tmp_path / "exporter.yml"
    process = subprocess.Popen(
        [sys.executable, "-m", "simulator", "simulate", "--scenario", str(tmp_path / "scenario.yaml"),
         "--control-address", f"127.0.0.1:{free_port()}", "--write-config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith("exporter configuration:"):
            return process, config
        assert line or process.poll() is None, f"the simulator exited with {process.returncode}"
    raise AssertionError("the simulator did not start within 120 s")


def _soft_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT_LIMIT, hard))


def _metrics(port: int) -> dict[str, list[tuple[str, float]]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    found: dict[str, list[tuple[str, float]]] = {}
    for name, labels, value in re.findall(r"^([a-z_]+)(\{[^}]*\})? (\S+)$", text, flags=re.M):
        found.setdefault(name, []).append((labels, float(value)))
    return found


def _open_fds(metrics: dict) -> float:
    return metrics["process_open_fds"][0][1]


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def test_a_fleet_of_1100_servers_is_polled_with_a_soft_limit_of_1024_open_files(tmp_path):
    simulator, config_file = _simulator(tmp_path)
    exporter = None
    try:
        config = yaml.safe_load(config_file.read_text())
        config["poll"] = {"interval": "10s", "timeout": "10s", "concurrency": 64}
        config.pop("organization", None)
        config_file.write_text(yaml.safe_dump(config))
        port = free_port()
        log = (tmp_path / "exporter.log").open("w")
        exporter = subprocess.Popen(
            [sys.executable, "-m", "exporter", "run", "--config.file", str(config_file),
             "--web.listen-address", f"127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, preexec_fn=_soft_limit)
        deadline = time.monotonic() + 240
        while not _ready(port):  # every server polled once
            assert exporter.poll() is None, (tmp_path / "exporter.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the first cycle did not end within 240 s"
            time.sleep(0.5)
        deadline = time.monotonic() + 90
        while _open_fds(metrics := _metrics(port)) <= SOFT_LIMIT:  # the second cycle keeps its connections
            assert time.monotonic() < deadline, f"still {_open_fds(metrics):g} descriptors after 90 s"
            time.sleep(0.5)
    finally:
        if exporter is not None:
            exporter.terminate()
            exporter.wait(timeout=30)
        simulator.terminate()
        simulator.wait(timeout=30)
    up = [value for _, value in metrics["exchange_up"]]
    assert len(up) == SERVERS and sum(up) == SERVERS, f"{sum(up):g} of {len(up)} up"
    (max_fds,) = [value for _, value in metrics["process_max_fds"]]
    assert max_fds == resource.getrlimit(resource.RLIMIT_NOFILE)[1] > SOFT_LIMIT, max_fds
    assert "Too many open files" not in (tmp_path / "exporter.log").read_text()
