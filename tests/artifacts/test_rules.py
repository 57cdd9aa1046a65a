"""The shipped rule file: valid for Prometheus, every alert unit-tested, documented and runbook-linked; the
output of `exchange-eems-exporter rules` with the defaults, and with a site's options still the same alerts.

promtool is the real Prometheus rule loader and evaluator; when it is missing the tests fail, because
without it nothing here is verified.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from exporter.alert_rules import Options, render_prometheusrule, render_rules
from exporter.winrm.errors import KERBEROS_MAX_CLOCK_SKEW_SECONDS

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "alerts" / "exchange-eems.rules.yml"
SOURCE = ROOT / "exporter" / "data" / "alert_rules.yml"
PROMETHEUSRULE = ROOT / "deploy" / "prometheusrule.yaml"
RULE_TESTS = sorted((ROOT / "alerts" / "tests").glob("*.yml"))
RUNBOOKS = ROOT / "docs" / "runbooks.md"
ALERTS_DOC = ROOT / "docs" / "alerts.md"
RUNBOOK_BASE = "https://github.com/exchange-eems-exporter/exchange-eems-exporter/blob/main/docs/runbooks.md#"
# absent(up): it fires because no series of the selected jobs exists, so it has no labels to template or keep.
NO_TARGET = "ExchangeExporterTargetMissing"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found on PATH (Debian package 'prometheus'); the rules cannot be checked")
    return path


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def alerts() -> list[dict]:
    return [rule for rule in rules() if "alert" in rule]


def alert_names() -> set[str]:
    return {rule["alert"] for rule in alerts()}


def github_anchor(heading: str) -> str:
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def test_promtool_check_rules_with_all_lints_fatal():
    result = subprocess.run(
        [promtool(), "check", "rules", "--lint=all", "--lint-fatal", str(RULES)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass():
    assert RULE_TESTS, "no promtool unit tests in alerts/tests"
    result = subprocess.run(
        [promtool(), "test", "rules", *map(str, RULE_TESTS)], capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_silent():
    firing: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    assert alert_names() - firing == set(), "alerts never tested as firing"
    # An alert without `for` fires at once, so it has no pending phase to test as silent.
    with_for = {rule["alert"] for rule in alerts() if "for" in rule}
    assert with_for - silent == set(), "alerts never tested as silent"


def test_alerts_follow_mixin_conventions():
    for rule in alerts():
        name = rule["alert"]
        assert re.fullmatch(r"Exchange[A-Z][A-Za-z]+", name), name
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        annotations = rule["annotations"]
        assert annotations["summary"].endswith("."), name
        assert "{{ $labels." in annotations["description"] or name == NO_TARGET, \
            f"{name}: description is not templated"
        assert annotations["runbook_url"] == RUNBOOK_BASE + name.lower(), name


def test_recording_rules_are_named_level_metric_operations():
    for rule in rules():
        if "record" in rule:
            assert re.fullmatch(r"[a-z_]+:[a-z_]+:[a-z_]+", rule["record"]), rule["record"]


def test_twins_differ_only_in_severity_thresholds_and_wording():
    """The Alertmanager inhibition rule pairs a critical alert with its warning twin by name and labels."""
    by_name: dict[str, list[dict]] = {}
    for rule in alerts():
        by_name.setdefault(rule["alert"], []).append(rule)
    twins = {name: group for name, group in by_name.items() if len(group) > 1}
    assert twins, "expected warning/critical twins"
    for name, group in twins.items():
        assert sorted(rule["labels"]["severity"] for rule in group) == ["critical", "warning"], name
        shapes = {re.sub(r"\d+", "N", rule["expr"]) for rule in group}
        assert len(shapes) == 1, f"{name}: twins must share one expression shape"
        assert len({tuple(sorted(rule["labels"])) for rule in group}) == 1, name


def test_facts_are_set_aside_when_cannot_poll_takes_over():
    """Per-server alerts set a server's facts aside once `exchange_up` has been 0 for as long as the warning
    ExchangeExporterCannotPoll waits (`cannot_poll_warning`), not at the first failed poll, which resolved every page
    of the server as if fixed. The window is written in each rule: all of them must move with that `for:`. Only
    ExchangeExporterPollStale looks at the last poll alone: a server whose last poll failed is not stale but failing."""
    windows = set(re.findall(r"max_over_time\(exchange_up\[(\w+)\]\)", SOURCE.read_text()))
    warning = next(rule["for"] for rule in alerts()
                   if rule["alert"] == "ExchangeExporterCannotPoll" and rule["labels"]["severity"] == "warning")
    assert windows == {warning}
    at_once = {rule["alert"] for rule in alerts() if re.search(r"\(exchange_up\{[^}]*\} == 0\)", rule["expr"])}
    assert at_once == {"ExchangeExporterPollStale"}


def test_every_alert_has_a_runbook_section():
    anchors = {github_anchor(line[3:]) for line in RUNBOOKS.read_text().splitlines() if line.startswith("## ")}
    missing = {name for name in alert_names() if name.lower() not in anchors}
    assert missing == set()


def test_every_alert_and_threshold_is_documented():
    doc = ALERTS_DOC.read_text()
    assert {name for name in alert_names() if name not in doc} == set()
    thresholds = re.findall(r"# THRESHOLD: (\w+)", SOURCE.read_text())
    assert thresholds, "thresholds must be marked in the rule file"
    assert {t for t in thresholds if f"`{t}`" not in doc} == set()


def test_the_clock_skew_alert_fires_where_kerberos_fails():
    """ExchangeServerClockSkew's threshold is Kerberos' default maximum clock skew, the figure the server page and
    the ticket purchase use: written in the rule file's PromQL, it is held to the one constant here."""
    rule = next(rule for rule in alerts() if rule["alert"] == "ExchangeServerClockSkew")
    bounds = re.findall(r"exchange_server_clock_offset_seconds(?:\{[^}]*\})? ([<>]) (-?\d+)", rule["expr"])
    assert bounds == [(">", str(KERBEROS_MAX_CLOCK_SKEW_SECONDS)), ("<", f"-{KERBEROS_MAX_CLOCK_SKEW_SECONDS}")]
    assert f"# THRESHOLD: clock_skew = {KERBEROS_MAX_CLOCK_SKEW_SECONDS // 60} minutes\n" in SOURCE.read_text()


# ------------------------------------------------------------------ generated from one source, with options


def test_shipped_files_are_the_generators_default_output():
    assert RULES.read_text() == render_rules(Options()), "alerts/exchange-eems.rules.yml is stale: run make rules"
    assert PROMETHEUSRULE.read_text() == render_prometheusrule(Options()), \
        "deploy/prometheusrule.yaml is stale: run make rules"


def test_generated_file_keeps_the_sources_comments():
    comments = [line.strip() for line in SOURCE.read_text().splitlines() if line.strip().startswith("#")]
    generated = {line.strip() for line in RULES.read_text().splitlines()}
    assert [c for c in comments if c not in generated] == []


SITE = Options(
    job_selector='job=~"mail-eems.*"',
    runbook_base="https://wiki.example.internal/Exchange/Runbooks/%s",
    labels=(("team", "messaging"), ("service", "exchange")),
    severity_map=(("critical", "page"), ("warning", "ticket")),
    alert_severity=(("ExchangeEEMSMitigationsDisabled", "critical"),),
)


def _site_severity(alertname: str, severity: str) -> str:
    severity = dict(SITE.alert_severity).get(alertname, severity)
    return dict(SITE.severity_map).get(severity, severity)


def _rule_tests(tmp_path: Path, rule_file: Path, series, expected, skip: frozenset = frozenset()) -> list[Path]:
    """Copies of alerts/tests/*.yml against `rule_file`, each series string passed through `series` and each
    expected alert through `expected(alertname, alert)`; an expected alert turned into None is dropped, and the
    checks of the alerts in `skip` too."""
    copies = []
    for path in RULE_TESTS:
        suite = yaml.safe_load(path.read_text())
        suite["rule_files"] = [str(rule_file)]
        for case in suite["tests"]:
            for item in case.get("input_series", []):
                item["series"] = series(item["series"])
            case["alert_rule_test"] = [check for check in case.get("alert_rule_test", [])
                                       if check["alertname"] not in skip]
            for check in case["alert_rule_test"]:
                alerts = [expected(check["alertname"], alert) for alert in check.get("exp_alerts") or []]
                check["exp_alerts"] = [alert for alert in alerts if alert is not None]
        copy = tmp_path / path.name
        copy.write_text(yaml.safe_dump(suite, sort_keys=False))
        copies.append(copy)
    return copies


def _promtool_test(files: list[Path]) -> None:
    result = subprocess.run([promtool(), "test", "rules", *map(str, files)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_site_options_give_the_same_alerts_with_the_sites_labels_severities_and_links(tmp_path):
    rule_file = tmp_path / "site.rules.yml"
    rule_file.write_text(render_rules(SITE))
    check = subprocess.run([promtool(), "check", "rules", "--lint=all", "--lint-fatal", str(rule_file)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr

    def expected(alertname: str, alert: dict) -> dict:
        labels = alert.setdefault("exp_labels", {})
        if "job" in labels:
            labels["job"] = labels["job"].replace("exchange-eems", "mail-eems")
        labels["severity"] = _site_severity(alertname, labels["severity"])
        labels.update(SITE.labels)
        annotations = alert.get("exp_annotations", {})
        for key, text in annotations.items():
            annotations[key] = text.replace("job exchange-eems", "job mail-eems")
        if "runbook_url" in annotations:
            annotations["runbook_url"] = f"https://wiki.example.internal/Exchange/Runbooks/{alertname.lower()}"
        return alert

    _promtool_test(_rule_tests(tmp_path, rule_file, lambda s: s.replace('job="exchange-eems', 'job="mail-eems'),
                               expected))


def test_job_selector_reaches_every_alert(tmp_path):
    """The same unit tests' series under job names the site's selector excludes: no alert may fire, but the one
    that says so (test_prometheus_without_a_target_of_the_exporters_jobs_pages)."""
    rule_file = tmp_path / "site.rules.yml"
    rule_file.write_text(render_rules(SITE))
    _promtool_test(_rule_tests(tmp_path, rule_file, lambda s: s, lambda alertname, alert: None,
                               skip=frozenset({NO_TARGET})))


def test_target_labels_flow_through_every_alert(tmp_path):
    """A `team` label set on the scrape target (static_configs labels) is on every series of that target; every
    alert built from them must keep it, so Alertmanager can route on it (docs/alerts.md, "Routing")."""
    def series(text: str) -> str:
        name, brace, rest = text.partition("{")
        return f'{name}{{team="messaging",{rest}' if brace else f'{name}{{team="messaging"}}'

    def expected(alertname: str, alert: dict) -> dict:
        if alertname != NO_TARGET:  # fires when the target is missing, so there is no target label to keep
            alert.setdefault("exp_labels", {})["team"] = "messaging"
        return alert

    _promtool_test(_rule_tests(tmp_path, RULES, series, expected))


@pytest.mark.parametrize("up_series", [
    [],                                                                       # the scrape config was never added
    ['up{job="exchange",instance="ex-monitor:10061"}'],                       # a job the selector does not match
    ['up{job="prometheus",instance="localhost:9090"}'],                       # Prometheus scrapes only itself
], ids=["no-scrape-config", "job-renamed", "other-jobs-only"])
def test_prometheus_without_a_target_of_the_exporters_jobs_pages(up_series, tmp_path):
    """Rules loaded, but no target of a job the selector matches: `up == 0` has no series to compare, so
    ExchangeExporterDown cannot fire, and no other rule has a series either. Something must page, or a typo in a
    job name keeps the whole fleet unwatched without a word."""
    rule = next(rule for rule in alerts() if rule["alert"] == NO_TARGET)
    suite = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": series, "values": "1x30"} for series in up_series],
            "alert_rule_test": [
                {"eval_time": "14m", "alertname": "ExchangeExporterTargetMissing", "exp_alerts": []},
                {"eval_time": "15m", "alertname": "ExchangeExporterTargetMissing",
                 "exp_alerts": [{"exp_labels": {"severity": "critical"}, "exp_annotations": rule["annotations"]}]},
            ],
        }],
    }
    path = tmp_path / "missing.test.yml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    _promtool_test([path])


@pytest.mark.parametrize("keep_firing_for", ["", "10m"])
def test_a_restart_of_the_exporter_resolves_a_page_unless_alerts_keep_firing(keep_firing_for, tmp_path):
    """The exporter keeps no state: after a restart a server has no series until its first poll, up to a poll
    interval later, and Prometheus resolves an alert whose series are gone. ExchangeExporterCannotPoll's critical
    twin then resolved mid-incident and came back only after its `for: 1h` had run again. With
    `rules --keep-firing-for 10m` a gap shorter than that neither resolves it nor restarts its wait."""
    rule_file = tmp_path / "site.rules.yml"
    rule_file.write_text(render_rules(Options(keep_firing_for=keep_firing_for)))
    check = subprocess.run([promtool(), "check", "rules", "--lint=all", "--lint-fatal", str(rule_file)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    labels = 'job="exchange-eems",instance="x:10061",server="EX03"'
    path = tmp_path / "restart.test.yml"

    def firing(eval_time: str) -> set[str]:
        """The severities of ExchangeExporterCannotPoll for EX03 at `eval_time`: promtool, asked to expect none,
        lists the alerts it got."""
        path.write_text(yaml.safe_dump({
            "rule_files": [str(rule_file)],
            "evaluation_interval": "1m",
            "tests": [{
                "interval": "1m",
                # failing for 2 h; the exporter restarts at 2h: its series go stale, and come back at its first poll
                "input_series": [
                    {"series": f"exchange_up{{{labels}}}", "values": "0x120 stale _x2 0x60"},
                    {"series": f'exchange_collector_error{{{labels},collector="server",reason="timeout"}}',
                     "values": "1x120 stale _x2 1x60"},
                ],
                "alert_rule_test": [{"eval_time": eval_time, "alertname": "ExchangeExporterCannotPoll",
                                     "exp_alerts": []}],
            }],
        }, sort_keys=False))
        result = subprocess.run([promtool(), "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
        got = result.stdout + result.stderr
        assert result.returncode == 0 or "got:" in got, got
        return set(re.findall(r'severity="(\w+)"', got.partition("got:")[2]))

    assert firing("119m") == {"warning", "critical"}
    assert firing("130m") == ({"warning", "critical"} if keep_firing_for else set())
