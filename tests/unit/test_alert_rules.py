"""`exchange-eems-exporter rules`: the selector scanner, the options and their errors.

The generated files themselves are checked with promtool in tests/artifacts/test_rules.py.
"""

from __future__ import annotations

import pytest
import yaml

from exporter import cli
from exporter.alert_rules import Options, RulesError, add_selector, render_prometheusrule, render_rules

SEL = 'job="x"'


@pytest.mark.parametrize("expr, expected", [
    ("up == 0", 'up{job="x"} == 0'),
    ('exchange_up{server="a"} == 0', 'exchange_up{server="a",job="x"} == 0'),
    ('exchange_up{server="a",} == 0', 'exchange_up{server="a",job="x"} == 0'),
    ("exchange_up{} == 0", 'exchange_up{job="x"} == 0'),
    ('{__name__=~"exchange_.*"}', '{__name__=~"exchange_.*",job="x"}'),
    # label lists after on/by/without/group_left are names, not series
    ("a and on(job, instance) b", 'a{job="x"} and on(job, instance) b{job="x"}'),
    ("a > on(job) group_left(server) b", 'a{job="x"} > on(job) group_left(server) b{job="x"}'),
    ("sum by (job) (a)", 'sum by (job) (a{job="x"})'),
    ("max without(mitigation) (a) == 1", 'max without(mitigation) (a{job="x"}) == 1'),
    ("sum(a) by (job)", 'sum(a{job="x"}) by (job)'),
    # functions, numbers, durations, strings and comments stay as they are
    ("time() - a > 30 * 86400", 'time() - a{job="x"} > 30 * 86400'),
    ("rate(a[5m]) > 1e3", 'rate(a{job="x"}[5m]) > 1e3'),
    ("a offset 5m", 'a{job="x"} offset 5m'),
    ('label_replace(a, "dst", "$1", "src", "(.*) b}")', 'label_replace(a{job="x"}, "dst", "$1", "src", "(.*) b}")'),
    ('a{name="}{"} == 1', 'a{name="}{",job="x"} == 1'),
    ("a # b is a comment\n  or c", 'a{job="x"} # b is a comment\n  or c{job="x"}'),
    ("server:exchange_age:age > 1", 'server:exchange_age:age{job="x"} > 1'),
    ("a > bool 1", 'a{job="x"} > bool 1'),
])
def test_add_selector(expr, expected):
    assert add_selector(expr, SEL) == expected


@pytest.mark.parametrize("expr", ['a{name="b}', "rate(a[5m)", 'a == "x'])
def test_add_selector_rejects_unbalanced_expressions(expr):
    with pytest.raises(RulesError):
        add_selector(expr, SEL)


def _alerts(text: str) -> list[dict]:
    return [rule for group in yaml.safe_load(text)["groups"] for rule in group["rules"] if "alert" in rule]


def test_options_reach_every_alert():
    options = Options(job_selector='job="mail", env!="lab"', runbook_base="https://wiki.example/rb",
                      labels=(("team", "messaging"),), severity_map=(("critical", "page"),),
                      alert_severity=(("ExchangeEEMSMitigationsDisabled", "critical"),))
    for alert in _alerts(render_rules(options)):
        assert alert["labels"]["team"] == "messaging"
        assert alert["labels"]["severity"] in {"page", "warning", "info"}
        assert alert["annotations"]["runbook_url"] == f"https://wiki.example/rb#{alert['alert'].lower()}"
        assert 'job="mail", env!="lab"' in alert["expr"]
    disabled = next(a for a in _alerts(render_rules(options)) if a["alert"] == "ExchangeEEMSMitigationsDisabled")
    assert disabled["labels"]["severity"] == "page"


def test_runbook_pattern_and_resource_labels():
    options = Options(runbook_base="https://wiki.example/Exchange/%s/view",
                      resource_labels=(("release", "kube-prometheus-stack"),))
    manifest = yaml.safe_load(render_prometheusrule(options))
    assert manifest["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    urls = {r["annotations"]["runbook_url"] for g in manifest["spec"]["groups"] for r in g["rules"] if "alert" in r}
    assert "https://wiki.example/Exchange/exchangeexporterdown/view" in urls


def test_keep_firing_for_reaches_every_alert_and_no_recording_rule():
    text = render_rules(Options(keep_firing_for="1h30m"))
    assert text.splitlines()[1] == "#   exchange-eems-exporter rules --keep-firing-for 1h30m"
    rules = [r for g in yaml.safe_load(text)["groups"] for r in g["rules"]]
    assert {r.get("keep_firing_for") for r in rules if "alert" in r} == {"1h30m"}
    assert all("keep_firing_for" not in r for r in rules if "record" in r)
    assert "keep_firing_for" not in render_rules(Options())


def test_header_says_how_to_regenerate():
    options = Options(labels=(("team", "mail ops"),), resource_labels=(("release", "kps"),))
    rules_header = render_rules(options).splitlines()[1]
    assert rules_header == "#   exchange-eems-exporter rules --label 'team=mail ops'"
    manifest_header = render_prometheusrule(options).splitlines()[1]
    assert manifest_header == ("#   exchange-eems-exporter rules --format prometheusrule --label 'team=mail ops' "
                               "--resource-label release=kps")


def test_label_values_are_yaml_safe():
    for value in ("yes", "123", "a: b", "#x", 'quote"d', "ünïcode"):
        options = Options(labels=(("team", value),))
        assert {a["labels"]["team"] for a in _alerts(render_rules(options))} == {value}


@pytest.mark.parametrize("options, message", [
    (Options(job_selector=""), "must not be empty"),
    (Options(job_selector="job=exchange"), "label matchers"),
    (Options(job_selector='job="a"} or vector(1) or up{x="y"'), "label matchers"),
    (Options(runbook_base="wiki/runbooks"), "absolute URL"),
    (Options(runbook_base="https://w/%s/%s"), "at most one %s"),
    (Options(runbook_base="https://w/%d"), "at most one %s"),
    (Options(labels=(("severity", "x"),)), "reserved"),
    (Options(labels=(("team-name", "x"),)), "not a label name"),
    (Options(labels=(("team", ""),)), "empty"),
    (Options(labels=(("team", "a"), ("team", "b"))), "twice"),
    (Options(severity_map=(("sev1", "page"),)), "no alert has severity"),
    (Options(alert_severity=(("NoSuchAlert", "critical"),)), "no alert"),
    (Options(alert_severity=(("ExchangeExporterCannotPoll", "critical"),)), "twin"),
    (Options(keep_firing_for="10"), "Prometheus duration"),
    (Options(keep_firing_for="0s"), "Prometheus duration"),
    (Options(keep_firing_for="5m10m"), "Prometheus duration"),
    (Options(keep_firing_for="99999999999999999999y"), "Prometheus duration"),  # over int64 ns: promtool refuses
    (Options(keep_firing_for="293y"), "Prometheus duration"),  # promtool: "duration out of range"
])
def test_bad_options_are_refused_with_the_reason(options, message):
    with pytest.raises(RulesError, match=message):
        render_rules(options)


def test_source_with_a_runbook_url_or_without_severity_is_refused():
    source = "groups:\n  - name: g\n    rules:\n      - alert: ExchangeX\n        expr: up == 0\n"
    with pytest.raises(RulesError, match="severity"):
        render_rules(Options(), source)
    with pytest.raises(RulesError, match="runbook_url"):
        render_rules(Options(), source + "        labels:\n          severity: warning\n"
                                         "        annotations:\n          runbook_url: x\n")


def test_source_layout_the_text_rewrite_does_not_follow_is_an_error_not_a_wrong_file():
    source = ("groups:\n  - name: g\n    rules:\n      - {alert: ExchangeX, expr: up == 0,"
              " labels: {severity: warning}, annotations: {summary: s.}}\n")
    with pytest.raises(RulesError, match="does not understand this layout"):
        render_rules(Options(), source)


def test_cli_writes_the_file_and_fails_with_exit_2_on_a_bad_option(tmp_path, capsys):
    out = tmp_path / "rules.yml"
    assert cli.main(["rules", "--label", "team=messaging", "--output", str(out)]) == 0
    assert all(a["labels"]["team"] == "messaging" for a in _alerts(out.read_text()))
    assert cli.main(["rules", "--label", "team"]) == 2
    assert "expected NAME=VALUE" in capsys.readouterr().err
    assert cli.main(["rules", "--job-selector", "job=x"]) == 2
