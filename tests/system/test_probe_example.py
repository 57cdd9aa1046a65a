"""examples/prometheus-probe.yml, run by Debian's Prometheus against the demo, answers 200 with its own params.

Only what a test cannot keep is changed: the targets become demo servers, the exporter's address the test's, and
the 5 minute interval a few seconds. The params, the metrics path and the relabelling are the example's. The exporter
runs the demo's configuration in probe-only mode, as the example says to pair it: with background polls, a probe
that arrives while the exporter polls the same server (the organization collector starts on EX-SE01 at once, and
every server comes up within the interval) waits for that poll, and inside the test's 3 s scrape timeout it then
fails with `timeout`.
"""

from __future__ import annotations

import urllib.parse

import yaml

from simulator.cli import write_config

from ..conftest import SimulatedFleet, demo_scenario, free_port, relocate
from .test_integration import REPO, Program, exporter_command, get_json, prometheus_command, wait_until

EXAMPLE = REPO / "examples" / "prometheus-probe.yml"


def prometheus_config(exporter: str) -> tuple[str, dict]:
    config = yaml.safe_load(EXAMPLE.read_text())
    config.pop("rule_files", None)
    config.pop("alerting", None)
    config["global"].update(scrape_interval="3s", evaluation_interval="3s")
    probe = next(job for job in config["scrape_configs"] if job.get("metrics_path") == "/probe")
    probe.update(scrape_interval="3s", scrape_timeout="3s")
    probe["static_configs"] = [{"targets": ["EX-SE01", "ex19-cu14"]}]  # names as a user writes them: any case
    probe["relabel_configs"][-1]["replacement"] = exporter
    for job in config["scrape_configs"]:
        if job is not probe:
            job["static_configs"] = [{"targets": [exporter]}]
    return yaml.safe_dump(config, sort_keys=False), probe


def test_probe_example_answers_200_against_the_demo(tmp_path):
    with SimulatedFleet(relocate(demo_scenario())) as fleet:
        exporter_config = tmp_path / "exchange-eems-exporter.yml"
        write_config(fleet.scenario, fleet.fleet, exporter_config, "30s")  # the demo's configuration
        config = yaml.safe_load(exporter_config.read_text())
        config["poll"]["background"] = False  # probe-only, as the example's header says
        exporter_config.write_text(yaml.safe_dump(config, sort_keys=False))
        exporter_port, prometheus_port = free_port(), free_port()
        exporter = f"127.0.0.1:{exporter_port}"
        text, probe = prometheus_config(exporter)
        (tmp_path / "prometheus.yml").write_text(text)
        programs = [
            Program("exporter", exporter_command(exporter_config, exporter), tmp_path),
            Program("prometheus", prometheus_command(tmp_path, prometheus_port), tmp_path),
        ]
        try:
            programs[0].wait_ready(f"http://{exporter}/-/healthy")
            programs[1].wait_ready(f"http://127.0.0.1:{prometheus_port}/-/ready")

            def probe_targets() -> list[dict]:
                targets = get_json(f"http://127.0.0.1:{prometheus_port}/api/v1/targets")["data"]["activeTargets"]
                return [t for t in targets if t["labels"]["job"] == probe["job_name"]]

            assert wait_until(lambda: len(probe_targets()) == 2 and all(t["health"] == "up" for t in probe_targets()),
                              60, programs), [(t["scrapeUrl"], t["health"], t["lastError"]) for t in probe_targets()]
            for target in probe_targets():
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(target["scrapeUrl"]).query)
                assert query["module"] == probe["params"]["module"]
            up = get_json(f"http://127.0.0.1:{prometheus_port}/api/v1/query?query=exchange_up")["data"]["result"]
            failed = get_json(f"http://127.0.0.1:{prometheus_port}/api/v1/query?query="
                              + urllib.parse.quote("exchange_collector_error == 1"))
            assert {(r["metric"]["instance"], r["value"][1]) for r in up} == {("EX-SE01", "1"), ("ex19-cu14", "1")}, \
                [(r["metric"]["instance"], r["metric"]["reason"]) for r in failed["data"]["result"]]
        finally:
            for program in programs:
                program.stop()
