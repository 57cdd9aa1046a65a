"""Issue 25, item 6: in /probe mode a slow Exchange server comes back as `exchange_up 0` with a timeout reason
before the scrape times out, never as a failed scrape (which would fire ExchangeExporterDown instead).

Debian's Prometheus scrapes `/probe?target=SLOW` of an exporter in probe-only mode (`poll.background: false`)
with a 5 s scrape timeout. The server (tests/system/hostile_server.py, `slow_cleanup`) authenticates and
creates the shell at once, but its command never finishes and it takes 20 s to answer Signal and Delete.
Before the fix the shell's cleanup ran after the poll's deadline with 9 s of its own, so every scrape failed;
now the cleanup fits in the deadline or is left for the next poll."""

from __future__ import annotations

import sys
import urllib.parse

import yaml

from ..conftest import PASSWORD, PASSWORD_ENV, USERNAME, free_port
from .hostile_server import HostileServer
from .test_integration import Program, binary, get_json, wait_until

SCRAPE_TIMEOUT_SECONDS = 5


def test_a_server_slower_than_the_scrape_timeout_is_down_not_a_failed_scrape(tmp_path):
    prometheus_bin = binary("prometheus")
    with HostileServer("slow_cleanup", {USERNAME: PASSWORD}) as slow:
        exporter_config = tmp_path / "exporter.yml"
        exporter_config.write_text(yaml.safe_dump({
            "poll": {"background": False, "interval": "60s", "timeout": "60s"},
            "modules": {"default": {"username": USERNAME, "password_env": PASSWORD_ENV, "scheme": "http",
                                    "operation_timeout": "3s", "read_timeout": "4s"}},
            "servers": [{"name": "SLOW", "address": slow.address, "port": slow.port}],
        }))
        exporter, prometheus = f"127.0.0.1:{free_port()}", free_port()
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "7s", "evaluation_interval": "7s"},
            "scrape_configs": [{"job_name": "exchange_probe", "metrics_path": "/probe",
                                "scrape_timeout": f"{SCRAPE_TIMEOUT_SECONDS}s", "params": {"target": ["SLOW"]},
                                "static_configs": [{"targets": [exporter]}]}],
        }))
        programs = [
            Program("exporter", [sys.executable, "-m", "exporter", "run", "--config.file", str(exporter_config),
                                 "--web.listen-address", exporter], tmp_path),
            Program("prometheus", [prometheus_bin, f"--config.file={tmp_path / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                   f"--web.listen-address=127.0.0.1:{prometheus}"], tmp_path),
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
    assert reasons and reasons <= {"timeout", "deadline_exceeded"}, reasons
