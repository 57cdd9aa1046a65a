"""A shard that no replica runs: a StatefulSet pod stuck Pending has no address, so Prometheus has no target for it,
and `up == 0` (ExchangeExporterDown) never holds; with other replicas up, `absent(up)` does not either. Its servers
were polled by nothing, with no series, so no rule of ours fired. Now every replica says how many servers each
shard has and which shard it is, and ExchangeExporterShardMissing (evaluated by promtool over the replicas' own
/metrics) pages when a shard with servers has no replica."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from exporter.sharding import shard_of
from exporter.web import alerts

from ..conftest import PASSWORD_ENV, own_samples

ROOT = Path(__file__).resolve().parents[2]
SERVERS = [f"ex{n:02}.contoso.com" for n in range(1, 13)]
JOB = "exchange-eems"


def _replica_samples(shard: str) -> list[tuple[str, dict[str, str], float]]:
    return own_samples(f"shard: {shard}\n", SERVERS)


def test_every_replica_says_each_shards_servers_and_its_own_shard(monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "a password")
    expected = {str(k): sum(1 for s in SERVERS if shard_of(s, 3) == k) for k in range(3)}
    assert all(expected.values()), "the test's servers must fall on every shard"
    for index in range(3):
        samples = _replica_samples(f"{index}/3")
        assert {labels["shard"]: value for name, labels, value in samples
                if name == "exchange_exporter_shard_servers"} == expected
        assert [labels for name, labels, _ in samples if name == "exchange_exporter_shard_info"] == [
            {"shard": str(index), "shards": "3"}]


def test_the_exporters_own_pages_never_judge_a_missing_shard(monkeypatch):
    """Only Prometheus sees the other replicas: on one replica's samples every other shard looks missing."""
    monkeypatch.setenv(PASSWORD_ENV, "a password")
    firing = alerts.firing([(name, labels, value) for name, labels, value in _replica_samples("0/3")])
    assert "ExchangeExporterShardMissing" not in {f.alert for f in firing}


def _promtool_suite(replicas: list[str], tmp_path: Path, expected_shards: list[str]) -> subprocess.CompletedProcess:
    """`expected_shards`: the shards ("K/N", as the replicas running with N count them) that page."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found on PATH (Debian package 'prometheus'); the rule cannot be evaluated")
    rule_file = ROOT / "alerts" / "exchange-eems.rules.yml"
    rule = next(r for g in yaml.safe_load(rule_file.read_text())["groups"] for r in g["rules"]
                if r.get("alert") == "ExchangeExporterShardMissing")
    series, expected = [], []
    for number, shard in enumerate(replicas):
        instance = f"exchange-eems-{number}:10061"
        series.append(("up", {"job": JOB, "instance": instance}, 1))
        for name, labels, value in _replica_samples(shard):
            if name in ("exchange_exporter_shard_info", "exchange_exporter_shard_servers"):
                labels = {**labels, "job": JOB, "instance": instance}
                series.append((name, labels, value))
                counted_as = f"{labels['shard']}/{shard.split('/')[1]}"
                if name == "exchange_exporter_shard_servers" and counted_as in expected_shards:
                    values = {**labels, "value": f"{value:g}"}
                    expected.append({"exp_labels": {**labels, "severity": "critical"}, "exp_annotations": {
                        key: re.sub(r"\{\{ \$(?:labels\.)?(\w+) \}\}", lambda m: values[m[1]], text)
                        for key, text in rule["annotations"].items()}})
    suite = {"rule_files": [str(rule_file)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [{"series": name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}",
                          "values": f"{value:g}x30"} for name, labels, value in series],
        "alert_rule_test": [
            {"eval_time": "14m", "alertname": "ExchangeExporterShardMissing", "exp_alerts": []},
            {"eval_time": "15m", "alertname": "ExchangeExporterShardMissing", "exp_alerts": expected}]}]}
    path = tmp_path / "shards.test.yml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("replicas, missing", [
    (["0/3", "2/3"], ["1/3"]),  # pod 1 stuck Pending: no target
    (["0/2", "0/2"], ["1/2"]),  # two replicas given the same --shard
    # one instance left at the old N after a scale-up from 2 to 3: every shard number runs, but the servers shard 0
    # of 3 holds and shard 0 of 2 does not are polled by nothing, as are those of shard 1 of 2 not held by 1 or 2 of 3
    (["0/2", "1/3", "2/3"], ["1/2", "0/3"]),
    (["0/3", "1/3", "2/3"], []),
    (["0/1"], []),
], ids=["pending", "same shard twice", "another N", "all running", "unsharded"])
def test_a_shard_without_a_replica_pages(monkeypatch, tmp_path, replicas, missing):
    monkeypatch.setenv(PASSWORD_ENV, "a password")
    result = _promtool_suite(replicas, tmp_path, missing)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]
