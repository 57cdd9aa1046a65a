"""The example Prometheus and Alertmanager configurations load in the real tools and route as documented.

promtool and amtool are the configuration loaders of Prometheus and Alertmanager; when they are missing
the tests fail, because nothing would be verified.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import date
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter.metrics import SelfStatus, _encode, _format, self_families
from exporter.web import alerts

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
RULES = ROOT / "alerts" / "exchange-eems.rules.yml"
ALERTMANAGER = EXAMPLES / "alertmanager.yml"
ROUTE = EXAMPLES / "alertmanager-route.yml"


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


def routed_to(config: Path, *labels: str) -> str:
    result = run(tool("amtool"), "config", "routes", "test", f"--config.file={config}", *labels)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


@pytest.mark.parametrize("severity, receiver",
                         [("critical", "exchange-pager"), ("warning", "exchange-ticket"), ("info", "exchange-null")])
def test_alertmanager_routes_by_severity(severity, receiver):
    assert routed_to(ALERTMANAGER, "alertname=ExchangeEEMSFetchErrors", "server=EX01", f"severity={severity}") \
        == receiver


def test_alertmanager_inhibits_a_warning_while_its_critical_twin_fires():
    rules = yaml.safe_load(ALERTMANAGER.read_text())["inhibit_rules"]
    twin = next(r for r in rules if 'severity="critical"' in r["source_matchers"])
    assert 'severity="warning"' in twin["target_matchers"]
    assert {"alertname", "server", "instance", "job"} <= set(twin["equal"])


def test_root_example_is_the_route_to_paste():
    fragment, root = yaml.safe_load(ROUTE.read_text()), yaml.safe_load(ALERTMANAGER.read_text())
    assert root["route"]["routes"] == [fragment["route"]]
    assert root["receivers"] == fragment["receivers"]
    assert root["inhibit_rules"] == fragment["inhibit_rules"]


def test_grouping_never_splits_a_cause_by_server():
    group_by = yaml.safe_load(ROUTE.read_text())["route"]["group_by"]
    assert "alertname" in group_by and not {"server", "instance", "job"} & set(group_by)
    # Every label that tells two causes of one alert apart is a grouping label (the rules' detail labels).
    rules = yaml.safe_load(RULES.read_text())["groups"]
    detail = set()
    for rule in (r for g in rules for r in g["rules"] if "alert" in r):
        detail |= set(re.findall(r"\$labels\.(cutoff|reason|endpoint|mitigation|scope)\b",
                                 rule["annotations"]["description"]))
    assert detail <= set(group_by), detail - set(group_by)


# An Alertmanager someone already runs: their own receivers, a team route, and a catch-all.
EXISTING = {
    "route": {"receiver": "ops-default", "group_by": ["alertname"],
              "routes": [{"matchers": ['team="linux"'], "receiver": "linux-oncall"}]},
    "receivers": [{"name": "ops-default"}, {"name": "linux-oncall"}],
    "inhibit_rules": [{"source_matchers": ['severity="critical"'], "target_matchers": ['severity="warning"'],
                       "equal": ["alertname", "cluster"]}],
}


def merged_into(existing: dict, fragment: dict) -> dict:
    """What docs/alerts.md tells a user to do with examples/alertmanager-route.yml."""
    merged = yaml.safe_load(yaml.safe_dump(existing))
    merged["route"].setdefault("routes", []).insert(0, fragment["route"])
    merged["receivers"] += fragment["receivers"]
    merged.setdefault("inhibit_rules", []).extend(fragment["inhibit_rules"])
    return merged


def test_route_merged_into_an_existing_tree_takes_exchange_alerts_only(tmp_path):
    config = tmp_path / "alertmanager.yml"
    config.write_text(yaml.safe_dump(merged_into(EXISTING, yaml.safe_load(ROUTE.read_text()))))
    result = run(tool("amtool"), "check-config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert routed_to(config, "alertname=ExchangeEEMSFetchErrors", "severity=critical") == "exchange-pager"
    assert routed_to(config, "alertname=ExchangeProductOutOfSupport", "severity=warning") == "exchange-ticket"
    assert routed_to(config, "alertname=NodeDown", "team=linux", "severity=critical") == "linux-oncall"
    assert routed_to(config, "alertname=DiskFull", "severity=warning") == "ops-default"


def test_the_probe_examples_self_job_keeps_every_organization_metric():
    """The exchange-eems-self job says it keeps the exporter's own metrics and the organization collector's; its
    keep regex dropped exchange_eems_mitigations_applied_timestamp_seconds (docs/metrics.md lists it there)."""
    job = next(j for j in yaml.safe_load((EXAMPLES / "prometheus-probe.yml").read_text())["scrape_configs"]
               if j["job_name"] == "exchange-eems-self")
    regex = job["metric_relabel_configs"][0]["regex"]
    section = (ROOT / "docs" / "metrics.md").read_text().split("## Organization collector", 1)[1].split("\n## ", 1)[0]
    names = sorted(set(re.findall(r"^\| `(exchange_[a-z_]+)`", section, flags=re.MULTILINE)))
    assert names and not [n for n in names if not re.fullmatch(regex, f"{n};")]


def test_the_probe_examples_self_job_keeps_every_series_of_its_metrics_a_rule_reads():
    """A probe-only exporter's /metrics is its own metrics after prometheus_client's process ones; whatever of it a
    rule reads must pass the exchange-eems-self job's keep regex. ExchangeExporterRestarting read
    process_start_time_seconds, which it drops, so a crash loop paged no one in this setup, even on Linux."""
    job = next(j for j in yaml.safe_load((EXAMPLES / "prometheus-probe.yml").read_text())["scrape_configs"]
               if j["job_name"] == "exchange-eems-self")
    regex = job["metric_relabel_configs"][0]["regex"]
    registry = CollectorRegistry(auto_describe=False)
    for collector in (ProcessCollector, PlatformCollector, GCCollector):  # as Exporter registers them
        collector(registry=registry)
    status = SelfStatus(date(2026, 6, 9), 300.0, True, 1764158400.0, start_time=1764158000.0, servers=2,
                        shard_servers=(2,), probe_targets=("EX01", "EX02"))
    body, _ = _encode([_format(self_families(status))], registry, "")
    samples = [(s.name, s.labels, s.value) for f in parse_text(body.decode()) for s in f.samples]
    read = alerts.read_by_rules(samples)
    assert read and [name for name, labels, _ in read
                     if not re.fullmatch(regex, f"{name};{labels.get('collector', '')}")] == []


def test_routing_on_a_target_label_says_which_alert_lacks_it(tmp_path):
    """docs/alerts.md offers a `team` label on the scrape target, then `matchers: ['team="messaging"']` in place of the
    alertname matcher. ExchangeExporterTargetMissing fires when there is no target, so it has no target label: such
    a route never takes it, and the page that says nothing is watched goes to whatever the tree's root receiver is.
    The docs said the label reaches every alert; they must name the exception and what to do about it."""
    from .test_rules import NO_TARGET

    route = yaml.safe_load(ROUTE.read_text())["route"]
    route["matchers"] = ['team="messaging"']
    config = {"route": {"receiver": "default", "routes": [route]},
              "receivers": [{"name": "default"}, *yaml.safe_load(ROUTE.read_text())["receivers"]]}
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    routed = run(tool("amtool"), "config", "routes", "test", f"--config.file={path}", f"alertname={NO_TARGET}",
                 "severity=critical")
    assert routed.stdout.strip() == "default", routed.stdout + routed.stderr  # Alertmanager's part of the story
    text = (ROOT / "docs" / "alerts.md").read_text()
    option = text.split("- On the scrape target in Prometheus:", 1)[1].split("\n- ", 1)[0]
    assert NO_TARGET in option, "the target-label option must say that this alert does not carry the label"


def test_the_probe_example_says_its_module_replaces_each_servers_own():
    """/probe?module= polls the target with that module, whatever module the server is configured with
    (exporter/poller.py, Poller.probe): copied into a configuration with several modules, the example's
    `module: [default]` polled every server with the default module's credential and transport, unsaid."""
    text = (EXAMPLES / "prometheus-probe.yml").read_text()
    assert "servers[].module" in text and "leave `params` out" in text
