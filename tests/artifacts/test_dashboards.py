"""The shipped Grafana dashboards: importable and provisionable structure, linter conventions, valid PromQL.

The conventions are grafana/dashboard-linter's rules (datasource variable, job variable, panel title,
description, unit and datasource). PromQL validity is checked by Prometheus's own parser via promtool,
which fails loudly when missing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import date
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.utils import floatToGoString

from exporter.component_state import STATES as COMPONENT_STATES
from exporter.windows_service import START_MODES, STATE_LABELS
from tests.dashboard_queries import all_panel_queries, dashboard_files, panels, substitute
from tests.grafana_display import GREENS, REDS, column_config, shown

DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}
# Changing a uid breaks every bookmark and link to the dashboard: these are part of the public interface.
STABLE_UIDS = {"fleet-overview.json": "exchange-eems-fleet", "server-detail.json": "exchange-eems-server"}


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def dashboards() -> list[tuple[str, dict]]:
    return [(path.name, load(path)) for path in dashboard_files()]


def variables(dashboard: dict) -> dict[str, dict]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def test_the_two_dashboards_exist_with_stable_uids():
    assert {name: d["uid"] for name, d in dashboards()} == STABLE_UIDS


@pytest.mark.parametrize("name", sorted(STABLE_UIDS))
def test_dashboard_metadata(name):
    dashboard = load(dashboard_files()[0].parent / name)
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert "exchange-eems-exporter" in dashboard["tags"]
    assert dashboard["title"].startswith("Exchange EEMS / ")
    assert dashboard["description"]
    # Provisioned dashboards do not resolve __inputs placeholders (grafana/grafana#10786).
    text = json.dumps(dashboard)
    assert "__inputs" not in dashboard and "${DS_" not in text


@pytest.mark.parametrize("name", sorted(STABLE_UIDS))
def test_template_variables(name):
    found = variables(load(dashboard_files()[0].parent / name))
    datasource_vars = [v for v in found.values() if v["type"] == "datasource"]
    assert len(datasource_vars) == 1
    ds = found["datasource"]
    assert (ds["type"], ds["query"], ds["label"]) == ("datasource", "prometheus", "Data Source")
    for var in ("job", "server"):
        assert found[var]["type"] == "query"
        assert found[var]["datasource"] == DATASOURCE_REF
        assert "exchange_up" in found[var]["query"]["query"]
    assert found["job"]["multi"] and found["job"]["includeAll"] and found["job"]["allValue"] == ".+"
    assert '$job' in found["server"]["query"]["query"]


def test_every_panel_has_title_description_unit_and_datasource():
    for name, dashboard in dashboards():
        ids = []
        for panel in panels(dashboard):
            ids.append(panel["id"])
            assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, (name, panel["title"])
            if panel["type"] == "row":
                assert panel["title"]
                continue
            where = (name, panel.get("title"))
            assert panel["title"] and panel["description"], where
            assert panel["fieldConfig"]["defaults"]["unit"], where
            assert panel["datasource"] == DATASOURCE_REF, where
            assert panel["targets"], where
            for target in panel["targets"]:
                assert target["datasource"] == DATASOURCE_REF, where
                # `$job|`: also the series of no job (the alerts table's ExchangeExporterTargetMissing)
                assert re.search(r'job=~"\$job\|?"', target["expr"]), f"{where}: query ignores the job variable"
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"


def test_fleet_overview_has_the_fleet_counts_and_the_server_table():
    fleet = load(dashboard_files()[0].parent / "fleet-overview.json")
    stats = {p["title"] for p in panels(fleet) if p["type"] == "stat"}
    assert {"Servers", "Failing the 2023-03 cutoff", "Failing the 2026-06 cutoff", "Without EEMS (Mailbox)",
            "EEMS service not running", "EEMS silent or failing", "Exporter cannot poll", "Never polled"} <= stats
    table = next(p for p in panels(fleet) if p["title"] == "Server list")
    columns = set(next(t for t in table["transformations"] if t["id"] == "organize")["options"]["renameByName"].values())
    assert {"Server", "Product", "CU", "Update", "Version", "Build age", "Cutoff 2023-03", "Cutoff 2026-06",
            "EEMS service", "Last successful check", "Last error reason", "Applied", "Blocked"} <= columns


def test_table_overrides_name_existing_columns():
    for name, dashboard in dashboards():
        for panel in panels(dashboard):
            if panel["type"] != "table":
                continue
            organize = next(t for t in panel["transformations"] if t["id"] == "organize")["options"]
            columns = set(organize["renameByName"].values())
            for override in panel["fieldConfig"]["overrides"]:
                assert override["matcher"]["options"] in columns, (name, panel["title"], override["matcher"])


def test_count_stats_return_a_sample_even_when_the_count_is_zero():
    for name, dashboard in dashboards():
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                if target["expr"].startswith("count(") and panel["type"] == "stat":
                    assert target["expr"].endswith("or vector(0)"), (name, panel["title"])


def test_every_query_parses_as_promql(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found on PATH (Debian package 'prometheus'); PromQL cannot be checked")
    queries = all_panel_queries()
    assert queries
    rules = [{"record": f"dashboard:query_{i}:check", "expr": expr} for i, (_, _, expr) in enumerate(queries)]
    rule_file = tmp_path / "dashboard-queries.rules.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(rule_file)], capture_output=True, text=True, timeout=60)
    where = "\n".join(f"{i}: {d} / {t}" for i, (d, t, _) in enumerate(queries))
    assert result.returncode == 0, result.stdout + result.stderr + "\n" + where


# ------------------------------------------------------------------ dashboards that lead somewhere


def _override_links(panel: dict, column: str) -> list[dict]:
    for override in panel["fieldConfig"]["overrides"]:
        if override["matcher"] == {"id": "byName", "options": column}:
            return next(p["value"] for p in override["properties"] if p["id"] == "links")
    return []


def test_each_server_in_the_fleet_table_links_to_its_detail_keeping_the_time_range():
    directory = dashboard_files()[0].parent
    fleet, detail = load(directory / "fleet-overview.json"), load(directory / "server-detail.json")
    for title in ("Server list", "Exchange alerts firing now"):
        table = next(p for p in panels(fleet) if p["title"] == title)
        (link,) = _override_links(table, "Server")
        url = link["url"]
        assert url.startswith(f"/d/{detail['uid']}/"), url
        assert "${__url_time_range}" in url, "the time range is not kept"
        assert "var-server=${__value.raw" in url and "${datasource:queryparam}" in url, url
        # Every variable the link sets exists on the detail dashboard, and the column it reads exists in the table.
        assert {"server", "job", "datasource"} <= set(variables(detail))
        columns = set(next(t for t in table["transformations"] if t["id"] == "organize")["options"]["renameByName"]
                      .values())
        assert {"Server", "Job"} <= columns and "${__data.fields.Job" in url


def test_firing_alerts_panel_links_every_alert_to_its_runbook():
    fleet = load(dashboard_files()[0].parent / "fleet-overview.json")
    panel = next(p for p in panels(fleet) if p["title"] == "Exchange alerts firing now")
    (target,) = panel["targets"]
    assert 'ALERTS{alertstate="firing",alertname=~"Exchange.+"' in target["expr"]
    (link,) = _override_links(panel, "Runbook")
    assert link["url"] == "${runbooks}#${__value.text}"
    override = next(o for o in panel["fieldConfig"]["overrides"] if o["matcher"]["options"] == "Runbook")
    anchors = next(p["value"] for p in override["properties"] if p["id"] == "mappings")[0]["options"]
    base = variables(fleet)["runbooks"]["query"]
    rules = yaml.safe_load((Path(__file__).resolve().parents[2] / "alerts" / "exchange-eems.rules.yml").read_text())
    urls = {r["alert"]: r["annotations"]["runbook_url"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert {name: f"{base}#{anchor['text']}" for name, anchor in anchors.items()} == urls


def test_firing_alerts_panel_shows_alerts_without_a_job_label(tmp_path):
    """ExchangeExporterTargetMissing (`absent(up{...})`) has no `job` label: it fires when no target exists. The
    alerts table must still list it with the Job variable at All (and at any selection: with no target, the
    variable has no values), run here by Prometheus' own engine (promtool) next to an alert that has a job."""
    fleet = load(dashboard_files()[0].parent / "fleet-overview.json")
    panel = next(p for p in panels(fleet) if p["title"] == "Exchange alerts firing now")
    (target,) = panel["targets"]
    all_value = variables(fleet)["job"]["allValue"]
    missing = 'ALERTS{alertname="ExchangeExporterTargetMissing",alertstate="firing",severity="critical"}'
    fetch = ('ALERTS{alertname="ExchangeEEMSFetchErrors",alertstate="firing",instance="x:10061",job="exchange-eems",'
             'reason="tls_validation",server="EX01",severity="critical"}')
    other_job = fetch.replace('job="exchange-eems"', 'job="other"')
    cases = []
    for job, expected in ((all_value, [missing, fetch, other_job]), ("(exchange-eems)", [missing, fetch])):
        expr = target["expr"].replace("$job", job)
        cases.append({"expr": f'count by (alertname, job) ({expr})', "eval_time": "1m",
                      "exp_samples": [{"labels": _count_labels(series), "value": 1} for series in expected]})
    _promql_test(tmp_path, {s: "1x5" for s in (missing, fetch, other_job)}, cases)


def _promql_test(tmp_path: Path, series: dict[str, str], cases: list[dict]) -> None:
    """Run PromQL `cases` (promtool's promql_expr_test items) over `series` (series -> values) with Prometheus' own
    engine, no rules loaded."""
    from .test_rules import promtool

    (tmp_path / "empty.rules.yml").write_text("groups: []\n")
    (tmp_path / "test.yml").write_text(yaml.safe_dump({
        "rule_files": ["empty.rules.yml"], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": [{"series": s, "values": v} for s, v in series.items()],
                   "promql_expr_test": cases}]}))
    result = subprocess.run([promtool(), "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _count_labels(series: str) -> str:
    labels = dict(part.split("=", 1) for part in series[series.index("{") + 1:-1].split(","))
    kept = {k: v for k, v in labels.items() if k in ("alertname", "job")}
    return "{" + ",".join(f"{k}={v}" for k, v in kept.items()) + "}"


def test_the_update_path_panel_says_newest_only_of_a_build_the_catalog_places(tmp_path):
    """"Newer build on the update path for" shows 0 ("newest", green) for a build without an update-path time: the
    newest of its path. A build of an Exchange version newer than every product the catalog knows has none either,
    because nothing is judged of it (servicing "unknown"): it read as "newest", green, an unknown shown as up to
    date. It has no value there (run by Prometheus' own engine, promtool)."""
    detail = load(dashboard_files()[0].parent / "server-detail.json")
    panel = next(p for p in panels(detail) if p["title"] == "Newer build on the update path for")
    (target,) = panel["targets"]
    expr = target["expr"].replace("$job", ".+").replace("$server", ".+")
    labels = 'job="exchange-eems",instance="x:10061",server="{}"'
    path = 'exchange_build_update_path_info{{{},servicing="{}",next_product="",next_cu="",next_update="",next_version=""}}'
    series = {
        f"exchange_build_known{{{labels.format('NEWEST')}}}": "1x5",
        path.format(labels.format("NEWEST"), "serviced"): "1x5",
        f"exchange_build_known{{{labels.format('OLD')}}}": "1x5",
        path.format(labels.format("OLD"), "serviced"): "1x5",
        f"exchange_build_update_path_timestamp_seconds{{{labels.format('OLD')}}}": "0x5",
        f"exchange_build_known{{{labels.format('NEXT')}}}": "0x5",
        path.format(labels.format("NEXT"), "unknown"): "1x5",
    }
    _promql_test(tmp_path, series, [{"expr": expr, "eval_time": "5m", "exp_samples": [
        {"labels": "{" + labels.format("NEWEST") + "}", "value": 0},
        {"labels": "{" + labels.format("OLD") + "}", "value": 300}]}])


# ------------------------------------------------------------------ no data is never "fine"

SERVER = 'job="exchange-eems",instance="x:10061",server="{}"'
# A healthy neighbour: the panels select EX01, so what they return for it comes from EX01's series alone.
NEIGHBOUR = {f"{metric}{{{SERVER.format('EX02')}{extra}}}": value for metric, extra, value in (
    ("exchange_up", "", "1x5"), ("exchange_build_known", "", "1x5"),
    ("exchange_build_release_timestamp_seconds", "", "0x5"), ("exchange_eems_supported", "", "1x5"),
    ("exchange_service_state", ',name="MSExchangeMitigation",state="running"', "1x5"),
    ("exchange_eems_last_activity_timestamp_seconds", "", "0x5"),
    ("exchange_eems_last_success_timestamp_seconds", "", "0x5"),
    ("exchange_build_update_path_info", ',servicing="serviced",next_product="",next_cu="",next_update="",'
                                         'next_version=""', "1x5"))}
EX01 = SERVER.format("EX01")


def _maintenance(server: str, **states: str) -> dict[str, str]:
    """ServerWideOffline's state-set per requester (every state, 1 for the one given), as the exporter writes it."""
    return {f'exchange_server_component_local_state{{{server},component="ServerWideOffline",requester="{requester}",'
            f'state="{s}"}}': "1x5" if s == state else "0x5"
            for requester, state in states.items() for s in COMPONENT_STATES}


def _service(server: str, state: str, start_mode: str | None = None) -> dict[str, str]:
    """MSExchangeMitigation's state-set (every state, 1 for `state`) and start modes, as the exporter writes them."""
    name = f'{server},name="MSExchangeMitigation"'
    series = {f'exchange_service_state{{{name},state="{s}"}}': "1x5" if s == state else "0x5" for s in STATE_LABELS}
    series.update({f'exchange_service_start_mode{{{name},start_mode="{m}"}}': "1x5" if m == start_mode else "0x5"
                   for m in START_MODES.values() if start_mode})
    return series
# server state -> (EX01's series, {stat panel: what its query returns for EX01, None for no series}, colours the
# panels named must not show it in). `*`: every stat panel. Unknown or failed is never green; fine is never red.
STATES = {
    "never polled, removed from the configuration, or its shard down": ({}, {"*": None}, GREENS),
    "every poll failed since the exporter started (here: its credential paused)": (
        {f"exchange_up{{{EX01}}}": "0x5",
         f'exchange_collector_error{{{EX01},collector="server",reason="credential_paused"}}': "1x5"},
        {"*": None, "Last poll": 0}, GREENS),
    "a build of an Exchange version newer than the catalog knows": (
        {f"exchange_up{{{EX01}}}": "1x5", f"exchange_build_known{{{EX01}}}": "0x5",
         f'exchange_build_info{{{EX01},product="unknown",cu="unknown",update="unknown",version="15.3.100.1",'
         f'source="exsetup"}}': "1x5",
         f'exchange_build_update_path_info{{{EX01},servicing="unknown",next_product="",next_cu="",next_update="",'
         f'next_version=""}}': "1x5"},
        {"Build age": None, "Newer build on the update path for": None}, GREENS),
    "EEMS left no trace in the lookback window (ExchangeEEMSNoActivity)": (
        {f"exchange_up{{{EX01}}}": "1x5", f"exchange_eems_supported{{{EX01}}}": "1x5",
         f'exchange_service_state{{{EX01},name="MSExchangeMitigation",state="running"}}': "1x5"},
        {"Last activity": None, "Last successful check": None}, GREENS),
    "MSExchangeMitigation stopped and disabled (ExchangeEEMSServiceNotRunning, ExchangeEEMSServiceNotAutomatic)": (
        {f"exchange_up{{{EX01}}}": "1x5", f"exchange_eems_supported{{{EX01}}}": "1x5",
         **_service(EX01, "stopped", "disabled")},
        {"MSExchangeMitigation/A": 0, "MSExchangeMitigation/B": 3}, GREENS | {"blue"}),
    "MSExchangeMitigation of a state the account may not read (no alert: unknown is not bad)": (
        {f"exchange_up{{{EX01}}}": "1x5", f"exchange_eems_supported{{{EX01}}}": "1x5", **_service(EX01, "unknown")},
        {"MSExchangeMitigation/A": 2}, REDS | GREENS),
    "in maintenance mode by an admin, Setup's entry active (ExchangeServerInMaintenance, info)": (
        {f"exchange_up{{{EX01}}}": "1x5", **_maintenance(EX01, Maintenance="inactive", Functional="active")},
        {"Maintenance mode (registry)": 1}, GREENS | REDS),
    "out of maintenance: every requester's entry active": (
        {f"exchange_up{{{EX01}}}": "1x5", **_maintenance(EX01, Maintenance="active", Functional="active")},
        {"Maintenance mode (registry)": 0}, REDS | {"blue"}),
    "a registry value the exporter cannot read (no alert: not read is not in maintenance)": (
        {f"exchange_up{{{EX01}}}": "1x5", **_maintenance(EX01, Maintenance="unrecognised")},
        {"Maintenance mode (registry)": 2}, GREENS | REDS),
    "ServerWideOffline draining (no alert; it showed as active, in green)": (
        {f"exchange_up{{{EX01}}}": "1x5", **_maintenance(EX01, Maintenance="draining")},
        {"Maintenance mode (registry)": 3}, GREENS | REDS),
    "EEMS checks and never failed in the lookback window": (
        {f"exchange_up{{{EX01}}}": "1x5", f"exchange_eems_supported{{{EX01}}}": "1x5",
         f"exchange_eems_last_activity_timestamp_seconds{{{EX01}}}": "0x5",
         f"exchange_eems_last_success_timestamp_seconds{{{EX01}}}": "0x5", **_service(EX01, "running", "auto")},
        {"Last poll": 1, "Last error": None, "Last error reason": None, "MSExchangeMitigation": 1}, REDS),
}


def _stats_shown(tmp_path: Path, dashboard: str, series: dict[str, str], expected: dict[str, float | None],
                 **selected: str) -> dict[str, tuple[str | None, str]]:
    """What the stat panels named in `expected` show (text, colour), after promtool (Prometheus' own engine) has
    confirmed that their queries return `expected` over `series`: None for no series, else one sample, of the
    selected server or of an aggregation. A key is a panel title (each of its queries: shown as "title/refId" when
    there are several) or "title/refId" (that one); `*` stands for every stat panel."""
    stats = {p["title"]: p for p in panels(load(dashboard_files()[0].parent / dashboard)) if p["type"] == "stat"}
    if "*" in expected:
        expected = {**{title: expected["*"] for title in stats}, **expected}
        del expected["*"]
    queries = {}
    for key, value in expected.items():
        title, _, ref_id = key.partition("/")
        assert title in stats, key
        targets = stats[title]["targets"]
        queries.update({key if ref_id or len(targets) == 1 else f"{title}/{target['refId']}":
                        (stats[title], target["expr"], value) for target in targets
                        if target["refId"] == ref_id or not ref_id})
    labels = f"{{{EX01}}}" if "server" in selected else "{}"
    cases = [{"expr": f"sum by (job, instance, server) ({substitute(expr, **selected)})", "eval_time": "5m",
              "exp_samples": [] if value is None else [{"labels": labels, "value": value}]}
             for _, expr, value in queries.values()]
    _promql_test(tmp_path, series, cases)
    return {key: shown(panel["fieldConfig"]["defaults"], value) for key, (panel, _, value) in queries.items()}


@pytest.mark.parametrize("state", sorted(STATES))
def test_a_server_detail_stat_shows_each_server_state_in_a_colour_that_fits_it(tmp_path, state):
    """Grafana shows a stat whose query returns nothing in its base threshold colour (tests/grafana_display.py):
    a green base showed "No data" in green for a server with no build age or no EEMS trace, the very states
    ExchangeBuildUnknown and ExchangeEEMSNoActivity warn of, and for a server with no data at all; a red base
    showed a server that never failed a check with last error reason "none" in red. Prometheus' own engine
    (promtool) says what each panel's query returns for a server in that state; the panel must not show it in
    the colour of the opposite."""
    series, expected, forbidden = STATES[state]
    displayed = _stats_shown(tmp_path, "server-detail.json", {**NEIGHBOUR, **series}, expected, server="EX01")
    assert {title: text_colour for title, text_colour in displayed.items() if text_colour[1] in forbidden} == {}


def test_every_query_of_a_stat_named_by_its_title_is_checked(tmp_path):
    """A title stands for each of the panel's queries. _stats_shown keyed them all by the title, so only the last
    survived: of "MSExchangeMitigation" (A: state, B: start mode) only B ran, and a stopped service started
    automatically passed as 1 (running) on both."""
    series = {**NEIGHBOUR, f"exchange_up{{{EX01}}}": "1x5", f"exchange_eems_supported{{{EX01}}}": "1x5",
              **_service(EX01, "stopped", "auto")}
    with pytest.raises(AssertionError, match="FAILED"):
        _stats_shown(tmp_path, "server-detail.json", series, {"MSExchangeMitigation": 1}, server="EX01")
    assert set(_stats_shown(tmp_path, "server-detail.json", series, {"MSExchangeMitigation/B": 1}, server="EX01")) == {
        "MSExchangeMitigation/B"}


EXPORTER = 'job="exchange-eems",instance="{}"'
# What the fleet's stats show when an exporter is not there to report its servers: those servers have no series,
# so every count of theirs is 0. state -> (series, {stat panel: value}); none may be green, nor blue (neutral).
# Another job's target down (the Job variable's All, `.+`, matches it too) is no exporter down.
OTHER_JOB = {'up{job="node",instance="n:9100"}': "0x5"}
EXPORTER_A = EXPORTER.format("a:10061")
EX01_ON_A = SERVER.format("EX01").replace("x:10061", "a:10061")
EXPORTER_STATES = {
    "the only exporter target down (ExchangeExporterDown)": (
        {f"up{{{EXPORTER_A}}}": "0x5", f'exchange_exporter_build_info{{{EXPORTER_A},version="0.1.0"}}': "1 _x4"},
        {"Servers": 0, "Build catalog age": None, "Exporter down or shard missing": 1}),
    "one replica of two down: its shard's servers gone (ExchangeExporterDown)": (
        {f"up{{{EXPORTER_A}}}": "1x5", f"up{{{EXPORTER.format('b:10061')}}}": "0x5",
         f"exchange_up{{{EX01_ON_A}}}": "1x5"},
        {"Exporter down or shard missing": 1}),
    "shard 1 of 2 run by no replica (ExchangeExporterShardMissing)": (
        {f"up{{{EXPORTER_A}}}": "1x5", f"exchange_up{{{EX01_ON_A}}}": "1x5",
         f'exchange_exporter_shard_info{{{EXPORTER_A},shard="0",shards="2"}}': "1x5",
         **{f'exchange_exporter_shard_servers{{{EXPORTER_A},shard="{k}",shards="2"}}': "1x5" for k in (0, 1)}},
        {"Exporter down or shard missing": 1}),
}


@pytest.mark.parametrize("state", sorted(EXPORTER_STATES))
def test_the_fleet_stats_say_when_an_exporter_is_not_there(tmp_path, state):
    """An exporter target that is down, or a shard no replica runs, takes its servers' series with it: every count
    of the fleet overview read 0 in green for them and "Build catalog age" said "No data" in green. A stat counts
    them as ExchangeExporterDown and ExchangeExporterShardMissing do, "Servers" at 0 is red, and the catalog age
    of no exporter is unknown (run by promtool, coloured as Grafana does)."""
    series, expected = EXPORTER_STATES[state]
    displayed = _stats_shown(tmp_path, "fleet-overview.json", {**OTHER_JOB, **series}, expected)
    assert {title: text_colour for title, text_colour in displayed.items()
            if text_colour[1] in GREENS | {"blue"}} == {}


def test_the_fleet_history_panels_draw_a_line_per_group_not_per_server(tmp_path):
    """A fleet time series with one line per server is 2,000 lines at 2,000 servers, every refresh: "Time since
    last successful mitigation check" returned 1,442,000 points (28.6 MB of JSON) for 24 hours at a 2-minute step
    (docs/scaling.md). Each fleet history query must aggregate the servers away, here three of them: Prometheus'
    own engine (promtool) finds no `server` label in its result."""
    fleet = load(dashboard_files()[0].parent / "fleet-overview.json")
    series = {}
    for name in ("EX01", "EX02", "EX03"):
        labels = SERVER.format(name)
        series.update({f"exchange_eems_supported{{{labels}}}": "1x5",
                       f"exchange_eems_last_success_timestamp_seconds{{{labels}}}": "0x5",
                       f'exchange_eems_fetch_errors{{{labels},reason="tls_validation"}}': "2x5",
                       f'exchange_collector_error{{{labels},collector="server",reason="timeout"}}': "1x5",
                       **{f'exchange_eems_certificate_cutoff_compliant{{{labels},cutoff="{c}"}}': "0x5"
                          for c in ("2023-03", "2026-06")}})
    cases = [{"expr": f"count(count by (server) ({substitute(target['expr'])}))", "eval_time": "5m",
              "exp_samples": [{"labels": "{}", "value": 1}]}
             for panel in panels(fleet) if panel["type"] == "timeseries" for target in panel["targets"]]
    assert len(cases) >= 4
    _promql_test(tmp_path, series, cases)


# The label a table column shows, and the query (refId) it comes from; a "Value #X" column is query X's value.
TABLE_LABELS = {"Server list": {"state": "F", "reason": "H"}}


def _cells_shown(tmp_path: Path, dashboard: str, title: str, series: dict[str, str],
                 expected: dict[str, float | str | None]) -> dict[str, tuple[str | None, str]]:
    """What EX01's row of table `title` shows (text, colour) in the columns named in `expected`, after promtool
    (Prometheus' own engine) has confirmed that the column's query returns `expected` for EX01: its value, the
    label's value for a label column, None for no series (an empty cell)."""
    table = next(p for p in panels(load(dashboard_files()[0].parent / dashboard)) if p["title"] == title)
    names = {shown_as: field for field, shown_as in
             next(t for t in table["transformations"] if t["id"] == "organize")["options"]["renameByName"].items()}
    exprs = {t["refId"]: substitute(t["expr"], server="EX01") for t in table["targets"]}
    cases = []
    for column, value in expected.items():
        field = names[column]
        if field.startswith("Value #"):
            expr, labels = f"sum by (job, instance, server) ({exprs[field[len('Value #'):]]})", EX01
        else:
            expr = f"count by (job, instance, server, {field}) ({exprs[TABLE_LABELS[title][field]]})"
            labels, value = f'{EX01},{field}="{value}"', None if value is None else 1
        cases.append({"expr": expr, "eval_time": "5m",
                      "exp_samples": [] if expected[column] is None else [{"labels": f"{{{labels}}}", "value": value}]})
    _promql_test(tmp_path, series, cases)
    return {column: shown(column_config(table, column), value) for column, value in expected.items()}


# server state -> (EX01's series, {"Server list" column: EX01's cell}, colours those cells must not show).
TABLE_STATES = {
    "MSExchangeMitigation running": (
        {f"exchange_up{{{EX01}}}": "1x5", f"exchange_eems_supported{{{EX01}}}": "1x5", **_service(EX01, "running")},
        {"EEMS service": "running"}, REDS | {"orange", "blue"}),
    "MSExchangeMitigation of a state the account may not read (no alert: unknown is not bad)": (
        {f"exchange_up{{{EX01}}}": "1x5", f"exchange_eems_supported{{{EX01}}}": "1x5", **_service(EX01, "unknown")},
        {"EEMS service": "unknown"}, REDS | GREENS),
    "MSExchangeMitigation stopped (ExchangeEEMSServiceNotRunning, critical)": (
        {f"exchange_up{{{EX01}}}": "1x5", f"exchange_eems_supported{{{EX01}}}": "1x5", **_service(EX01, "stopped")},
        {"EEMS service": "stopped"}, GREENS | {"orange", "blue"}),
    "MSExchangeMitigation not installed on a server with EEMS (ExchangeEEMSServiceNotRunning, critical)": (
        {f"exchange_up{{{EX01}}}": "1x5", f"exchange_eems_supported{{{EX01}}}": "1x5"},
        {"EEMS service": "not installed"}, GREENS | {"orange", "blue"}),
    "EEMS active, not failing, no success recognised (ExchangeEEMSSuccessNotConfirmed, info)": (
        {f"exchange_up{{{EX01}}}": "1x5", f"exchange_eems_supported{{{EX01}}}": "1x5",
         f"exchange_eems_last_activity_timestamp_seconds{{{EX01}}}": "0x5", **_service(EX01, "running")},
        {"Last successful check": None}, REDS | GREENS | {"orange"}),
    "an Edge server: no EEMS, no service (no alert)": (
        {f"exchange_up{{{EX01}}}": "1x5", f"exchange_eems_supported{{{EX01}}}": "0x5",
         f"exchange_server_edge{{{EX01}}}": "1x5"},
        {"EEMS service": None}, REDS | GREENS),
}


@pytest.mark.parametrize("state", sorted(TABLE_STATES))
def test_the_fleet_server_list_shows_each_server_state_in_a_colour_that_fits_it(tmp_path, state):
    """The fleet table's "EEMS service" column painted every state but running red (a catch-all regex), unknown
    too, which no alert fires for and the server dashboard shows blue; and a server with EEMS whose service is not
    installed, which pages (ExchangeEEMSServiceNotRunning), had no state series, so its cell was empty in the base
    colour, green. The column's query now says "not installed" there (run by promtool), and each cell is coloured
    as Grafana colours it: running green, unknown blue, any other red, no service on a server without EEMS not
    red or green. No successful check recognised was an empty cell in green: it is ExchangeEEMSSuccessNotConfirmed's
    state (info), blue."""
    series, expected, forbidden = TABLE_STATES[state]
    displayed = _cells_shown(tmp_path, "fleet-overview.json", "Server list", {**NEIGHBOUR, **series}, expected)
    assert {column: text_colour for column, text_colour in displayed.items() if text_colour[1] in forbidden} == {}


# Grafana's colours of the alert severities on these dashboards (docs/alerts.md): a colour never says more than the
# alert that fires at that age.
SEVERITY_COLOURS = {"info": "blue", "warning": "orange", "critical": "red"}
# (dashboard, panel, table column or None for a stat, the alert the age is judged by, the timestamp it is the age of)
AGES = (
    ("server-detail.json", "Last successful check", None, "ExchangeEEMSSuccessNotConfirmed",
     "exchange_eems_last_success_timestamp_seconds"),
    ("fleet-overview.json", "Server list", "Last successful check", "ExchangeEEMSSuccessNotConfirmed",
     "exchange_eems_last_success_timestamp_seconds"),
    ("server-detail.json", "Last activity", None, "ExchangeEEMSNoActivity",
     "exchange_eems_last_activity_timestamp_seconds"),
)


def _alert_threshold(name: str) -> tuple[float, str]:
    """An age alert's threshold in seconds (`...:age > H * 3600` in its expression, job selector aside) and its
    severity."""
    from .test_rules import alerts

    (rule,) = [r for r in alerts() if r["alert"] == name]
    (hours,) = re.findall(r":age(?:{[^}]*})? > (\d+) \* 3600", rule["expr"])
    return int(hours) * 3600, rule["labels"]["severity"]


@pytest.mark.parametrize("dashboard, title, column, alert, metric", AGES, ids=[f"{a[0]}/{a[2] or a[1]}" for a in AGES])
def test_an_age_is_coloured_as_the_alert_that_fires_at_it(tmp_path, dashboard, title, column, alert, metric):
    """"Last successful check" turned red at 3 hours, though the only alert at that age is info
    (ExchangeEEMSSuccessNotConfirmed), and orange at 2 hours, where no alert fires; "Last activity" turned red at
    3 hours, though its alert (ExchangeEEMSNoActivity) is a warning from 2 hours on, whatever the age. Each age a
    minute below the alert's threshold is green, a minute above and two days above in the colour of the alert's
    severity (promtool runs the panel query, Grafana's display colours it)."""
    threshold, severity = _alert_threshold(alert)
    base = {f"exchange_up{{{EX01}}}": "1x5", f"exchange_eems_supported{{{EX01}}}": "1x5",
            f"exchange_eems_last_activity_timestamp_seconds{{{EX01}}}": "0x5",
            f"exchange_eems_last_success_timestamp_seconds{{{EX01}}}": "0x5", **_service(EX01, "running", "auto")}
    displayed = {}
    for age in (threshold - 60, threshold + 60, threshold + 2 * 86400):
        series = {**NEIGHBOUR, **base, f"{metric}{{{EX01}}}": f"{300 - age}x5"}  # evaluated at 5m: `age` old
        if column is None:
            (shown_as,) = _stats_shown(tmp_path, dashboard, series, {title: age}, server="EX01").values()
        else:
            (shown_as,) = _cells_shown(tmp_path, dashboard, title, series, {column: age}).values()
        displayed[age] = shown_as[1]
    assert displayed == {threshold - 60: "green", threshold + 60: SEVERITY_COLOURS[severity],
                         threshold + 2 * 86400: SEVERITY_COLOURS[severity]}


def _build(product: str, cu: str, version: str) -> dict[str, str]:
    """A polled server's build as the exporter writes it; product and CU "unknown": a build the catalog cannot place."""
    return {f"exchange_up{{{EX01}}}": "1x5", f"exchange_build_known{{{EX01}}}": "0x5" if product == "unknown" else "1x5",
            f'exchange_build_info{{{EX01},product="{product}",cu="{cu}",update="",version="{version}",'
            f'source="exsetup"}}': "1x5"}


# server state -> (EX01's series, what "Product support ends" returns for it, the (text, colour) it shows)
SUPPORT_ENDS = {
    "never polled": ({}, None, ("unknown", "orange")),
    "a build of an Exchange version newer than the catalog knows": (
        _build("unknown", "unknown", "15.3.100.1"), None, ("unknown", "orange")),
    "Exchange SE (Modern Lifecycle Policy: no fixed end)": (
        _build("ExchangeSE", "RTM", "15.2.2562.17"), 0, ("no fixed end (SE)", "blue")),
    "Exchange 2019 (extended support ended 2025-10-14)": (
        {**_build("Exchange2019", "CU15", "15.2.1748.10"),
         f"exchange_product_support_end_timestamp_seconds{{{EX01}}}": "1760400000x5"}, 1760400000000, (None, "blue")),
}


@pytest.mark.parametrize("state", sorted(SUPPORT_ENDS))
def test_product_support_end_says_unknown_where_the_product_is_not_known(tmp_path, state):
    """"Product support ends" said "no fixed end (SE)" whenever its query returned nothing: for a server never
    polled and for a build the catalog cannot place, whose product, and so its end, is unknown. The query tells
    a placed product without an end (0) from no product at all (run by promtool), and Grafana shows the first as
    "no fixed end (SE)", the second as "unknown"."""
    series, value, expected = SUPPORT_ENDS[state]
    (displayed,) = _stats_shown(tmp_path, "server-detail.json", {**NEIGHBOUR, **series}, {"Product support ends": value},
                                server="EX01").values()
    assert displayed == expected


EXPORTER_B = EXPORTER.format("b:10061")
PROBE_JOB = 'job="exchange-probe",instance="ex02.contoso.com",server="EX02"'


def _polled(exporter: str, *names: str) -> dict[str, str]:
    """`exchange_up` of each server `exporter` has polled in the background (its /metrics)."""
    return {f'exchange_up{{{exporter},server="{name}"}}': "1x5" for name in names}


def _shards(exporter: str, shard: int, servers: tuple[int, ...]) -> dict[str, str]:
    """What an instance running shard `shard` of len(`servers`) says of the shards (exchange_exporter_shard_*)."""
    count = len(servers)
    return {f'exchange_exporter_shard_info{{{exporter},shard="{shard}",shards="{count}"}}': "1x5",
            **{f'exchange_exporter_shard_servers{{{exporter},shard="{k}",shards="{count}"}}': f"{n}x5"
               for k, n in enumerate(servers)}}


# setup -> (series, servers of the configuration no poll has reported yet)
NEVER_POLLED = {
    "every configured server polled": ({**_shards(EXPORTER_A, 0, (2,)), **_polled(EXPORTER_A, "EX01", "EX02")}, 0),
    "three configured, two polled so far (first poll round under way)": (
        {**_shards(EXPORTER_A, 0, (3,)), **_polled(EXPORTER_A, "EX01", "EX02")}, 1),
    "just started: nothing polled yet": ({**_shards(EXPORTER_A, 0, (2,))}, 2),
    "two shards, each of two servers, one server of shard 1 not polled yet": (
        {**_shards(EXPORTER_A, 0, (2, 2)), **_shards(EXPORTER_B, 1, (2, 2)),
         **_polled(EXPORTER_A, "EX01", "EX03"), **_polled(EXPORTER_B, "EX02")}, 1),
    "probe-only: of two probe targets one has a probe result (ExchangeServerNotProbed for the other)": (
        {**_shards(EXPORTER_A, 0, (2,)), f"exchange_exporter_probe_target{{{EX01_ON_A}}}": "1x5",
         f"exchange_exporter_probe_target{{{EX01_ON_A.replace('EX01', 'EX02')}}}": "1x5",
         f"exchange_up{{{PROBE_JOB}}}": "1x5"}, 1),
}


@pytest.mark.parametrize("setup", sorted(NEVER_POLLED))
def test_the_fleet_overview_counts_configured_servers_never_polled(tmp_path, setup):
    """A configured server has no series until its first poll (docs/metrics.md), so the fleet overview counted
    only the servers polled: one never polled was invisible. The exporter says how many servers each shard polls
    (exchange_exporter_shard_servers) and, probe-only, which servers a probe would poll
    (exchange_exporter_probe_target): "Never polled" counts those without exchange_up yet (run by promtool), and
    is not green when there are some."""
    series, never_polled = NEVER_POLLED[setup]
    (displayed,) = _stats_shown(tmp_path, "fleet-overview.json", {**OTHER_JOB, **series},
                                {"Never polled": never_polled}).values()
    assert (displayed[1] == "green") == (never_polled == 0), displayed


def test_the_fleet_server_list_lists_a_probe_target_never_probed(tmp_path):
    """Probe-only, the exporter names each server a /probe would poll; one no probe has asked for has no other
    series, and was missing from the Server list. Its row now says "never" (orange: ExchangeServerNotProbed, a
    warning) in the Polled column (run by promtool)."""
    series = {**_shards(EXPORTER.format("x:10061"), 0, (2,)), f"exchange_exporter_probe_target{{{EX01}}}": "1x5",
              f"exchange_exporter_probe_target{{{EX01.replace('EX01', 'EX02')}}}": "1x5", f"exchange_up{{{PROBE_JOB}}}": "1x5"}
    assert _cells_shown(tmp_path, "fleet-overview.json", "Server list", series, {"Polled": -1}) == {
        "Polled": ("never", "orange")}


def _scraped(body: bytes, target: str) -> dict[str, str]:
    """An exposition body as promtool input series: each sample with the `target` labels Prometheus adds."""
    from prometheus_client.parser import text_string_to_metric_families

    series = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            labels = ",".join([target, *(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))])
            series[f"{sample.name}{{{labels}}}"] = f"{floatToGoString(sample.value)}x5"
    return series


@pytest.mark.parametrize("background", [True, False], ids=["background", "probe-only"])
def test_never_polled_reads_the_series_the_exporter_writes(tmp_path, background):
    """The "Never polled" count joins the exporter's own series (shard, shard servers, probe targets) with
    exchange_up; a label it joins on that the exporter does not write would make it 0 forever. Here the bodies
    come from the exporter's own encoder: three servers, one (EX03) not polled yet, promtool counts 1."""
    from exporter.metrics import CachedExposition, SelfStatus, probe_body
    from exporter.model import ServerResult

    status = SelfStatus(catalog_newest_release=date(2025, 1, 1), poll_interval_seconds=300.0,
                        last_reload_successful=True, last_reload_timestamp=0.0, servers=3, shard_servers=(3,),
                        probe_targets=() if background else ("EX01", "EX02", "EX03"))
    polled = [ServerResult("EX01"), ServerResult("EX02")]
    body, _ = CachedExposition().body(polled if background else [], None, status, CollectorRegistry(), "")
    series = _scraped(body, EXPORTER_A)
    for result in [] if background else polled:
        series.update(_scraped(probe_body(result, "")[0], f'job="exchange-probe",instance="{result.name.lower()}"'))
    assert _stats_shown(tmp_path, "fleet-overview.json", series, {"Never polled": 1}) == {"Never polled": (None, "orange")}
