"""A shard whose replica never started, seen by Debian's Prometheus with the shipped rules (`for:` set to 0s): two
replicas of three run (`--shard 0/3` and `2/3`, as a StatefulSet whose pod 1 is stuck Pending), so Prometheus has no
target for shard 1 and `up == 0` cannot fire. ExchangeExporterShardMissing fires for shard 1, from both running
replicas' counts, and resolves once replica 1 is scraped too. Real programs on loopback, as in test_integration.py.
"""

from __future__ import annotations

import os
import urllib.request
from contextlib import ExitStack

import yaml

from exporter.sharding import shard_of

from ..conftest import PASSWORD, PASSWORD_ENV, SimulatedFleet, free_port, relocate
from .test_integration import (HTTP, JOB, RULES, Program, exporter_command, get_json, prometheus_command,
                               rules_without_for, wait_until)

SHARDS = 3
NAMES = [f"EXSHARD{i:02d}" for i in range(1, 10)]


def test_a_shard_without_a_running_replica_pages_until_it_runs(tmp_path):
    assert {shard_of(name, SHARDS) for name in NAMES} == set(range(SHARDS)), "every shard must have servers"
    scenario = {"servers": [{"name": name, "address": "127.0.0.1", "build": "15.2.2562.53"} for name in NAMES]}
    with ExitStack() as cleanup:
        fleet = cleanup.enter_context(SimulatedFleet(relocate(scenario)))
        (tmp_path / "exporter.yml").write_text(fleet.config_text(interval="60s", timeout="8s"))
        ports = [free_port() for _ in range(SHARDS)]
        prometheus_port = free_port()
        rule_file = tmp_path / "rules.yml"
        rule_file.write_text(rules_without_for(RULES.read_text()))
        targets = [f"127.0.0.1:{port}" for port in ports]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "2s", "scrape_timeout": "2s", "evaluation_interval": "2s"},
            "rule_files": [str(rule_file)],
            # no target for replica 1 at first: under Kubernetes a Pending pod has none (a listed target that refused
            # connections would be `up == 0`, ExchangeExporterDown's case); it joins once it runs
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [targets[0], targets[2]]}]}],
        }, sort_keys=False))

        def start(name: str, args: list[str], env: dict[str, str] | None = None) -> Program:
            program = Program(name, args, tmp_path, env)
            cleanup.callback(program.stop)
            return program

        env = {**os.environ, PASSWORD_ENV: PASSWORD}
        programs = [start(f"exporter{k}", exporter_command(tmp_path / "exporter.yml", targets[k])
                          + ["--shard", f"{k}/{SHARDS}"], env=env) for k in (0, 2)]
        prometheus = start("prometheus", prometheus_command(tmp_path, prometheus_port) + ["--web.enable-lifecycle"])
        programs.append(prometheus)
        prometheus.wait_ready(f"http://127.0.0.1:{prometheus_port}/-/ready")

        def missing() -> set[tuple[str, str]]:
            alerts = get_json(f"http://127.0.0.1:{prometheus_port}/api/v1/alerts")["data"]["alerts"]
            return {(a["labels"]["shard"], a["labels"]["instance"]) for a in alerts
                    if a["labels"]["alertname"] == "ExchangeExporterShardMissing" and a["state"] == "firing"}

        expected = {("1", targets[0]), ("1", targets[2])}
        assert wait_until(lambda: missing() == expected, 60, programs), \
            f"firing: {missing()}; {programs[0].log_tail()}"

        programs.append(start("exporter1", exporter_command(tmp_path / "exporter.yml", targets[1])
                              + ["--shard", f"1/{SHARDS}"], env=env))
        config = yaml.safe_load((tmp_path / "prometheus.yml").read_text())
        config["scrape_configs"][0]["static_configs"][0]["targets"] = targets
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        HTTP.open(urllib.request.Request(f"http://127.0.0.1:{prometheus_port}/-/reload", method="POST"),
                  timeout=10).close()
        assert wait_until(lambda: not missing(), 60, programs), f"still firing: {missing()}"
