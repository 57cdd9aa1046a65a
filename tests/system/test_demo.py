"""`exchange-eems-simulator demo` (what `make demo` runs): every demo server is on /metrics within one interval,
and the organization collector fails with double_hop as it does over NTLM in production.
`exchange-eems-exporter demo` hands over to it when the simulator is installed, and says how to get it when not.
"""

from __future__ import annotations

import os
import signal
import re
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import yaml

from ..conftest import PASSWORD_ENV, demo_scenario, free_port, relocate, stop_process

INTERVAL_SECONDS = 10


def test_demo_serves_every_server_within_one_interval(tmp_path):
    scenario = tmp_path / "demo.yaml"
    scenario.write_text(yaml.safe_dump(relocate(demo_scenario())), encoding="utf-8")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != PASSWORD_ENV}
    process = subprocess.Popen(
        [sys.executable, "-m", "simulator", "demo", "--scenario", str(scenario), "--listen", f"127.0.0.1:{port}",
         "--interval", f"{INTERVAL_SECONDS}s"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    try:
        up: dict[str, str] = {}
        organization: list[str] = []
        started = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (len(up) < 15 or not organization):
            time.sleep(0.5)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                    text = response.read().decode()
            except OSError:
                continue
            started = started or time.monotonic()
            up = dict(re.findall(r'^exchange_up\{server="([^"]+)"\} (\S+)$', text, re.MULTILINE))
            organization = re.findall(r'^exchange_collector_error\{collector="organization",[^}]*reason="(\w+)"\} 1',
                                      text, re.MULTILINE)
        assert len(up) == 15, f"only {sorted(up)} after 60 s"
        # Honest: over NTLM the organization's cmdlets cannot reach Active Directory, in the demo as in production.
        assert organization == ["double_hop"], organization
        assert time.monotonic() - started <= INTERVAL_SECONDS + 5, "not every server within one poll interval"
        assert up.pop("EX-SE05-NOWINRM") == "0.0"
        assert set(up.values()) == {"1.0"}, up
    finally:
        output, _ = stop_process(process)
    assert f"http://localhost:{port}/metrics" in output
    assert "Traceback" not in output, output


def test_ctrl_c_stops_polling_before_the_fleet_goes_away(tmp_path):
    """Polls still running at Ctrl-C finish against the fleet; none fails, no shell is left to delete. Started as
    `exchange-eems-exporter demo`: the alias becomes the simulator's demo, so the signal reaches it."""
    demo = relocate(demo_scenario())
    for server in demo["servers"]:
        server.setdefault("output_faults", {})["script_runtime"] = 3.0  # a third of each interval in flight
    scenario = tmp_path / "demo.yaml"
    scenario.write_text(yaml.safe_dump(demo), encoding="utf-8")
    port = free_port()
    temporary = tmp_path / "tmp"  # where the demo makes its folder (TMPDIR), to see that it removes it
    temporary.mkdir()
    env = {**{k: v for k, v in os.environ.items() if k != PASSWORD_ENV}, "TMPDIR": str(temporary)}
    process = subprocess.Popen(
        [sys.executable, "-m", "exporter", "demo", "--scenario", str(scenario), "--listen", f"127.0.0.1:{port}",
         "--interval", "10s"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    try:
        deadline = time.monotonic() + 60
        polled = 0
        while time.monotonic() < deadline and polled < len(demo["servers"]):
            time.sleep(0.5)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                    polled = len(re.findall(r"^exchange_up\{", response.read().decode(), re.MULTILINE))
            except OSError:
                continue
        # every server polled once: its polls are spread over the interval, 3 s of each 10 s in flight, so about
        # a third of the fleet (five servers) is being polled now
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, output
    stray = [line for line in output.splitlines()
             if ("poll of" in line and "EX-SE05-NOWINRM" not in line) or "could not delete WinRM shell" in line
             or "Traceback" in line]
    assert not stray, "\n".join(stray)
    # The demo's folder held the exporter's configuration and the demo password's file; it used to stay behind.
    assert list(temporary.iterdir()) == [], "the demo left its temporary folder behind"


def test_the_exporter_without_the_simulator_says_how_to_get_the_demo(tmp_path):
    """As in the image: the exporter package and its dependencies, no simulator (and no .pth file that would
    find the one in this checkout)."""
    (tmp_path / "exporter").symlink_to(Path(__file__).resolve().parents[2] / "exporter")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), sysconfig.get_paths()["purelib"]])}
    result = subprocess.run([sys.executable, "-S", "-m", "exporter", "demo"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result
    assert result.stderr.startswith("exchange-eems-exporter: the demo needs the simulator, which is not installed"), \
        result.stderr
    assert "make demo" in result.stderr and "Traceback" not in result.stderr
