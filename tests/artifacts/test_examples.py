"""The example Prometheus and Alertmanager configurations load in the real tools and route as documented.

promtool and amtool are the configuration loaders of Prometheus and Alertmanager; when they are missing
the tests fail, because nothing would be verified.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
RULES = ROOT / "alerts" / "exchange-eems.rules.yml"
ALERTMANAGER = EXAMPLES / "alertmanager.yml"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found on PATH; the examples cannot be checked")
    return path


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name", ["prometheus.yml", "prometheus-probe.yml"])
def test_prometheus_example_is_valid_with_the_rule_file(name, tmp_path):
    config = tmp_path / name
    shutil.copy(EXAMPLES / name, config)
    shutil.copy(RULES, tmp_path / RULES.name)  # rule_files resolve relative to the config
    result = run(tool("promtool"), "check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_prometheus_examples_scrape_the_default_port_with_job_names_the_rules_select():
    down_rule = next(r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]
                     if r.get("alert") == "ExchangeExporterDown")
    job_regex = re.search(r'job=~"([^"]+)"', down_rule["expr"]).group(1)
    for name in ("prometheus.yml", "prometheus-probe.yml"):
        for job in yaml.safe_load((EXAMPLES / name).read_text())["scrape_configs"]:
            assert re.fullmatch(job_regex, job["job_name"]), (name, job["job_name"])
            assert "10061" in yaml.safe_dump(job), (name, job["job_name"])


def test_probe_example_uses_the_multi_target_relabelling():
    jobs = yaml.safe_load((EXAMPLES / "prometheus-probe.yml").read_text())["scrape_configs"]
    job = next(j for j in jobs if j.get("metrics_path") == "/probe")
    assert job["params"]["module"]
    steps = [(tuple(r.get("source_labels", [])), r["target_label"]) for r in job["relabel_configs"]]
    assert steps[:2] == [(("__address__",), "__param_target"), (("__param_target",), "instance")]
    assert steps[2][1] == "__address__" and job["relabel_configs"][2]["replacement"].endswith(":10061")


def test_alertmanager_example_is_valid():
    result = run(tool("amtool"), "check-config", str(ALERTMANAGER))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("severity, receiver", [("critical", "pager"), ("warning", "ticket"), ("info", "null")])
def test_alertmanager_routes_by_severity(severity, receiver):
    result = run(tool("amtool"), "config", "routes", "test", f"--config.file={ALERTMANAGER}",
                 "alertname=ExchangeEEMSFetchErrors", "server=EX01", f"severity={severity}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


def test_alertmanager_inhibits_a_warning_while_its_critical_twin_fires():
    rules = yaml.safe_load(ALERTMANAGER.read_text())["inhibit_rules"]
    twin = next(r for r in rules if r["source_matchers"] == ['severity="critical"'])
    assert twin["target_matchers"] == ['severity="warning"']
    assert {"alertname", "server", "instance", "job"} <= set(twin["equal"])
