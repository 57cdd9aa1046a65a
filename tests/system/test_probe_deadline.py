"""Issue 25, item 6: in /probe mode a slow Exchange server comes back as `exchange_up 0` with reason `timeout`
before the scrape times out, never as a failed scrape (which would fire ExchangeExporterDown instead).

Debian's Prometheus scrapes `/probe?target=SLOW` of an exporter in probe-only mode (`poll.background: false`)
with a 5 s scrape timeout, for two slow servers:
- `slow_cleanup` (tests/system/hostile_server.py): authenticates and creates the shell at once, but its command
  never finishes and it takes 20 s to answer Signal and Delete. Before the fix the shell's cleanup ran after the
  poll's deadline with 9 s of its own, so every scrape failed; now the cleanup fits in the deadline or is left
  for the next poll;
- `every_answer_late`: the simulator answers every request 1.5 s late (handshake included).
Both are simply slow, so the reason is exactly `timeout`; `deadline_exceeded` is for an answer that trickles in
past the deadline (tests/system/test_hostile.py, the dripping servers)."""

from __future__ import annotations

import contextlib
import urllib.parse

import pytest
import yaml

from ..conftest import PASSWORD, PASSWORD_ENV, USERNAME, SimulatedFleet, free_port, relocate
from .hostile_server import HostileServer
from .test_integration import Program, exporter_command, get_json, prometheus_command, wait_until

SCRAPE_TIMEOUT_SECONDS = 5
LATE_SECONDS = 1.5  # every answer of `every_answer_late`: a poll needs at least 7 of them


@contextlib.contextmanager
def slow_server(kind: str):
    """(address, port) of a WinRM server slower than the scrape timeout."""
    if kind == "slow_cleanup":
        with HostileServer("slow_cleanup", {USERNAME: PASSWORD}) as server:
            yield server.address, server.port
    else:
        scenario = {"servers": [{"name": "SLOW", "address": "127.0.0.1", "build": "15.2.2562.53",
                                 "faults": {"latency": LATE_SECONDS}}]}
        with SimulatedFleet(relocate(scenario)) as fleet:
            yield fleet.hosts["SLOW"].address, fleet.hosts["SLOW"].port


@pytest.mark.parametrize("kind", ["slow_cleanup", "every_answer_late"])
def test_a_server_slower_than_the_scrape_timeout_is_down_not_a_failed_scrape(tmp_path, kind):
    with slow_server(kind) as (address, port):
        exporter_config = tmp_path / "exporter.yml"
        exporter_config.write_text(yaml.safe_dump({
            "poll": {"background": False, "interval": "60s", "timeout": "60s"},
            "modules": {"default": {"username": USERNAME, "password_env": PASSWORD_ENV, "scheme": "http",
                                    "operation_timeout": "3s", "read_timeout": "4s"}},
            "servers": [{"name": "SLOW", "address": address, "port": port}],
        }))
        exporter, prometheus = f"127.0.0.1:{free_port()}", free_port()
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "7s", "evaluation_interval": "7s"},
            "scrape_configs": [{"job_name": "exchange_probe", "metrics_path": "/probe",
                                "scrape_timeout": f"{SCRAPE_TIMEOUT_SECONDS}s", "params": {"target": ["SLOW"]},
                                "static_configs": [{"targets": [exporter]}]}],
        }))
        programs = [
            Program("exporter", exporter_command(exporter_config, exporter), tmp_path),
            Program("prometheus", prometheus_command(tmp_path, prometheus), tmp_path),
        ]

        def query(expression: str) -> list[dict]:
            url = f"http://127.0.0.1:{prometheus}/api/v1/query?query={urllib.parse.quote(expression)}"
            return get_json(url)["data"]["result"]

        def scrapes() -> int:
            count = query("count_over_time(up[5m])")
            return int(count[0]["value"][1]) if count else 0

        try:
            programs[0].wait_ready(f"http://{exporter}/-/healthy")
            programs[1].wait_ready(f"http://127.0.0.1:{prometheus}/-/ready")
            assert wait_until(lambda: scrapes() >= 3, 60, programs), "Prometheus did not scrape three times"
            failed_scrapes = query("count_over_time((up == 0)[5m:1s])")
            longest = float(query("max_over_time(scrape_duration_seconds[5m])")[0]["value"][1])
            down = query("exchange_up")
            reasons = {r["metric"]["reason"] for r in query("exchange_collector_error == 1")}
        finally:
            for program in programs:
                program.stop()
    assert not failed_scrapes, failed_scrapes
    assert longest < SCRAPE_TIMEOUT_SECONDS, longest
    assert [(r["metric"]["server"], r["value"][1]) for r in down] == [("SLOW", "0")]
    assert reasons == {"timeout"}, reasons
