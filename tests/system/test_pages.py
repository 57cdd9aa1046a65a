"""The exporter's own pages (issue 21) over real HTTP: the fleet at `/`, `/server?name=`, `/probe?debug=true`.

The demo fleet (simulator/scenarios/demo.yaml) gives servers in every state; a hostile server whose output
holds HTML, a script tag and the monitoring password shows that nothing a server sends reaches a page
unescaped or unscrubbed. The browser checks are in test_browser.py.
"""

from __future__ import annotations

import contextlib
import html
import http.client
import json
import re
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from exporter.catalog import Catalog
from exporter.config import load_config_text
from exporter.exporter import Exporter
from exporter.web import alerts, pages
from exporter.web.fleet import FleetRows
from exporter.web.pages import STATES

from ..conftest import (PASSWORD, PASSWORD_ENV, USERNAME, SimulatedFleet, demo_scenario, minimal_config, poll_all,
                        relocate, serving)
from .hostile_server import HostileServer, Output
from .test_secrets import assert_no_secret, leak_forms

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
EVIL = '<script>alert("owned")</script><img src=x onerror=alert(1)>'


def samples(body: bytes) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of a /metrics body, read back by prometheus_client's parser: what Prometheus would store."""
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(body.decode())
            for s in family.samples]


def get(port: int, path: str) -> tuple[int, dict, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def demo():
    """The demo fleet, polled once, served."""
    with SimulatedFleet(relocate(demo_scenario())) as fleet:
        exporter = Exporter(fleet.config(timeout="20s"), Catalog.load())
        poll_all(exporter.poller)
        with serving(exporter) as port:
            yield fleet, exporter, port


def rows(page: str) -> list[tuple[str, str]]:
    """(server, state) of each row of the fleet table, in page order."""
    return re.findall(r'<tr class="row-(\w+)"><td><a href="[^"]*">([^<]*)</a>', page)


def test_the_fleet_page_has_a_row_per_server_worst_first(demo):
    fleet, _, port = demo
    status, headers, page = get(port, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "script-src" not in headers["Content-Security-Policy"] and "default-src 'none'" in headers["Content-Security-Policy"]
    found = rows(page)
    assert sorted(html.unescape(name) for _, name in found) == sorted(fleet.hosts)
    order = [STATES.index(state) for state, _ in found]
    assert order == sorted(order), "worst first"
    states = {html.unescape(name): state for state, name in found}
    # what the demo scenario makes of each (simulator/scenarios/demo.yaml)
    assert states["EX-SE01"] == "ok"
    assert states["EX-SE05-NOWINRM"] in ("critical", "failed")
    assert "connection_refused" in page
    assert states["EX16-CU21"] == "critical" and "ExchangeBuildWithoutEEMS" in page
    assert "<script" not in page


def test_a_shards_page_says_where_the_other_servers_are(monkeypatch):
    """With --shard K/N each instance's `/` listed only its shard's servers and said nothing of the others: an admin
    looking for a server there found no row and no reason."""
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    for shard, note in (("1/3", "This instance polls shard 1 of 3"), ("0/1", None)):
        text = minimal_config(f"shard: {shard}\n")
        exporter = Exporter(load_config_text(text, Path(".")), Catalog.load())
        with serving(exporter) as port:
            page = get(port, "/")[2]
        if note is None:
            assert "shard" not in page
        else:
            assert note in page and "<code>shard:</code> 1/3)" in page and "other 2 shards" in page


def test_a_probe_only_page_says_why_it_has_no_row(monkeypatch):
    """With poll.background: false the page said "Servers (0 of 0)" and nothing more: an admin whose servers were
    missing from the /probe job's targets had no hint that nothing polls them (the admin walkthrough)."""
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    for background, note in (("false", "Probe-only (<code>poll.background: false</code>): this instance polls each "
                                       "of its 1 server only when"), ("true", None)):
        exporter = Exporter(load_config_text(minimal_config(f"poll: {{background: {background}}}\n"), Path(".")),
                            Catalog.load())
        with serving(exporter) as port:
            page = get(port, "/")[2]
        assert (note in page) if note else ("Probe-only" not in page), page[-600:]


def test_the_fleet_page_filters_by_state(demo):
    _, _, port = demo
    _, _, everything = get(port, "/")
    for state in {s for s, _ in rows(everything)}:
        status, _, page = get(port, f"/?state={state}")
        assert status == 200 and {s for s, _ in rows(page)} == {state}
    assert get(port, "/?state=bogus")[0] == 400


def test_alerts_on_the_page_are_the_shipped_rules_evaluated_now(demo):
    """One source of truth: the page's alerts are exporter/data/alert_rules.yml evaluated on /metrics."""
    _, exporter, port = demo
    body, _ = exporter.metrics_body("text/plain")
    expected = {(f.alert, f.labels["server"]) for f in alerts.firing(samples(body)) if "server" in f.labels}
    assert ("ExchangeEEMSServiceNotRunning", "EX-SE02-STOPPED") in expected
    _, _, page = get(port, "/")
    for alert, server in expected:
        row = page[page.index(f">{html.escape(server)}</a>"):]
        row = row[:row.index("</tr>")]
        assert f">{alert}</a>" in row, (alert, server)
        assert f"runbooks.md#{alert.lower()}" in row


def test_the_samples_no_rule_reads_change_no_alert(demo):
    """The pages evaluate only the samples some rule selects (fleet.py): leaving the others out changes nothing."""
    _, exporter, _ = demo
    body, _ = exporter.metrics_body("text/plain")
    everything = samples(body)
    read = alerts.read_by_rules(everything)
    assert 0 < len(read) < len(everything) * 0.7
    assert alerts.firing(read, now=1_796_000_000) == alerts.firing(everything, now=1_796_000_000)


def test_rows_are_made_once_per_poll_result_and_again_when_time_turns_a_rule(demo):
    """The fleet's rows are kept between requests: made again for a server with a new poll result, for all when the
    redactor learns a secret, and for those whose rules time turns (their last poll three intervals old)."""
    _, exporter, _ = demo
    now = [time.time()]
    rows = FleetRows(exporter.self_status, clock=lambda: now[0])
    servers, organization = exporter.snapshot()

    def made() -> dict[str, pages.RowHTML]:
        return {row.result.name: html_row for row, html_row in rows.rows(servers, organization, 1, exporter.scrub)[0]}

    first = made()
    assert len(first) == len(servers)
    again = made()
    assert all(again[name] is first[name] for name in first), "nothing changed: every row kept"
    organization = replace(organization)  # the organization polled again, with the same facts: rows kept
    assert all(html_row is first[name] for name, html_row in made().items())
    repolled = replace(servers[0])  # a new result object, as a poll makes
    servers = [repolled, *servers[1:]]
    after_poll = made()
    assert [name for name in first if after_poll[name] is not first[name]] == [repolled.name]
    assert all(html_row is not after_poll[name] for name, html_row in
               {row.result.name: h for row, h in rows.rows(servers, organization, 2, exporter.scrub)[0]}.items()), \
        "a new secret (a new redactor version) makes every row again"
    kept = made()
    now[0] += 60  # nothing turns in a minute: kept
    assert all(html_row is kept[name] for name, html_row in made().items())
    polled = {r.name: r.last_success.timestamp() for r in servers if r.last_success}
    now[0] = max(polled.values()) + 3 * exporter.self_status().poll_interval_seconds + 1  # every poll goes stale
    later = made()
    assert all(later[name] is not kept[name] for name in polled), "ExchangeExporterPollStale turned for them"


def test_the_fleet_page_comes_in_pages_worst_first(demo, monkeypatch):
    fleet, _, port = demo
    monkeypatch.setattr(pages, "ROWS_PER_PAGE", 5)
    _, _, whole = get(port, "/?page=1")
    found, number = [], 1
    while True:
        status, _, page = get(port, f"/?page={number}")
        assert status == 200
        found += rows(page)
        if "next &rsaquo;" not in page:
            break
        assert len(rows(page)) == 5 and f'href="/?page={number + 1}"' in page
        number += 1
    assert number == -(-len(fleet.hosts) // 5) and "&lsaquo; previous" in page
    assert sorted(html.unescape(name) for _, name in found) == sorted(fleet.hosts)
    order = [STATES.index(state) for state, _ in found]
    assert order == sorted(order), "worst first across the pages"
    assert rows(get(port, "/?page=99")[2]) == rows(page), "past the last page: the last page"
    state = found[-1][0]
    filtered = rows(get(port, f"/?state={state}&page=1")[2])
    assert filtered and {s for s, _ in filtered} == {state}
    for bad in ("0", "-1", "x", "1e3", "9999999"):
        assert get(port, f"/?page={bad}")[0] == 400, bad


def test_every_shipped_rule_is_understood_by_the_evaluator():
    names = [rule.name for rule in alerts.rules() if rule.alert]
    assert len(names) >= 20 and "ExchangeBuildBelowCertificateCutoff" in names


@pytest.mark.parametrize("expression", ["rate(x[5m]) > 0", "sum by (server) (x)", "x == bool 1", "absent(x)"])
def test_promql_outside_the_evaluated_part_is_an_error(expression):
    with pytest.raises(alerts.PromQLError):
        alerts.parse(expression)


def test_the_server_page_shows_the_interpretation_and_timings(demo):
    _, _, port = demo
    status, headers, page = get(port, "/server?name=ex-se01")
    assert status == 200 and "Content-Security-Policy" in headers
    assert "<h1>EX-SE01</h1>" in page and "15.2.2562.53" in page and "script stage events" in page
    assert get(port, "/server?name=NOPE")[0] == 404
    assert get(port, "/server")[0] == 400


def test_probe_debug_shows_the_steps_and_the_interpretation(demo):
    fleet, _, port = demo
    before = fleet.fleet.request_count("EX-SE01")
    status, headers, text = get(port, "/probe?target=EX-SE01&debug=true")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert text.startswith("Probe of EX-SE01")
    for part in ("Steps:", "poll (exporter", "Interpretation:", "cutoff 2026-06", "Alerts that would fire now",
                 'exchange_up{server="EX-SE01"} 1.0'):
        assert part in text, part
    assert fleet.fleet.request_count("EX-SE01") > before  # it polled now
    assert get(port, "/probe?target=EX-SE01&debug=yes")[0] == 400


@contextlib.contextmanager
def served_hostile(output: Output, commands: list | None = None):
    """A server EVIL01 that answers every command with `output` (each command also goes to `commands`), polled once
    by an exporter that serves its pages: the port."""
    def answer(command: str) -> Output:
        if commands is not None:
            commands.append(command)
        return output

    with HostileServer("none", {USERNAME: PASSWORD}, output=answer) as hostile:
        doc = {"modules": {"m": {"username": USERNAME, "password_env": PASSWORD_ENV, "scheme": "http"}},
               "servers": [{"name": "EVIL01", "address": "127.0.0.1", "port": hostile.port}]}
        exporter = Exporter(load_config_text(yaml.safe_dump(doc), Path(".")), Catalog.load())
        exporter.poller.poll_server("EVIL01")
        with serving(exporter) as port:
            yield port


@pytest.mark.parametrize("output", [
    Output(stderr=(EVIL + PASSWORD).encode(), exit_code=1),
    Output(stdout=b'{"schema": 1, "exsetup_version": "' + (EVIL.replace('"', "'") + PASSWORD).encode() + b'"}'),
], ids=["in the error", "in a partial failure"])
def test_no_secret_and_no_unescaped_byte_from_a_server_reaches_a_page(output):
    """HTML pages escape every byte a server sent; the plain-text debug output is never sniffed as HTML; the
    password is masked everywhere (a server can echo it: it was sent to it)."""
    with served_hostile(output) as port:
        answers = [get(port, path) for path in ("/", "/server?name=EVIL01", "/server?name=EVIL01&debug=true",
                                                "/probe?target=EVIL01&debug=true")]
    assert "owned" in answers[1][2], "the server's text is shown (escaped), else this test proves nothing"
    for _, headers, page in answers:
        if headers["Content-Type"].startswith("text/html"):
            assert "<script" not in page and "<img" not in page
        else:
            assert headers["Content-Type"].startswith("text/plain") and headers["X-Content-Type-Options"] == "nosniff"
        assert PASSWORD not in page and html.escape(PASSWORD) not in page


def _forms_of(secret: str) -> str:
    """The password in the forms a server's output can carry it: those test_secrets searches for, and JSON-escaped
    the way Python and Windows PowerShell write it."""
    forms = [form.decode("latin-1") for form in leak_forms(secret)]
    return " ".join([*forms, json.dumps(secret)[1:-1], json.dumps(secret)[1:-1].replace("&", "\\u0026")])


def _unescaped(page: str) -> str:
    """The page with its HTML escapes and JSON \\u escapes undone, so a form hiding behind either is found too."""
    text = html.unescape(page)
    return text + "\n" + re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m[1], 16)), text)


def test_the_debug_page_shows_the_last_output_escaped_and_masked_without_polling():
    """/server?name=X&debug=true: the last poll's stdout and stderr, as diagnose shows them, from what the store kept.
    The server's output holds HTML, a script tag and the password in several encodings, in both streams."""
    carried = EVIL + " " + _forms_of(PASSWORD)
    stdout = json.dumps({"schema": 1, "exsetup_version": carried, "computer": "EVIL01"}).encode()
    output = Output(stdout=stdout, stderr=carried.encode("latin-1"), exit_code=0)
    commands: list[str] = []
    with served_hostile(output, commands) as port:
        status, headers, page = get(port, "/server?name=evil01&debug=true")
        assert len(commands) == 1, "the page polled the server"
        plain = get(port, "/server?name=EVIL01")[2]
        assert get(port, "/server?name=EVIL01&debug=yes")[0] == 400
    assert status == 200 and "default-src 'none'" in headers["Content-Security-Policy"]
    assert "Raw output of the last poll" in page and "&quot;exsetup_version&quot;" in page  # stdout is shown
    streams = re.findall(r"<pre>(.*?)</pre>", page, re.S)
    assert len(streams) == 2 and all("&lt;script&gt;alert(" in text for text in streams), "both streams, escaped"
    assert page.count("&lt;redacted&gt;") >= 20  # the forms were found and masked, not merely missing
    assert "<script" not in page and "<img" not in page
    assert_no_secret({"debug page": page.encode(), "its text unescaped": _unescaped(page).encode()})
    assert 'href="/server?name=EVIL01&amp;debug=true"' in plain


def test_the_evaluator_agrees_with_promtool(demo, tmp_path):
    """The page's alerts against Prometheus' own rule engine (promtool test rules) on the same samples: the
    demo's /metrics, constant for two hours, timestamps moved so that promtool's time() is now, every `for:`
    passed. Each alert must fire for the same label sets in both."""
    _, exporter, _ = demo
    body, _ = exporter.metrics_body("text/plain")
    now, eval_seconds = time.time(), 7200
    shifted = [(name, labels, value - now + eval_seconds if name.endswith("_timestamp_seconds") else value)
               for name, labels, value in samples(body) if name.startswith("exchange_")]
    ours: dict[str, list[dict]] = {}
    for firing in alerts.firing(shifted, now=eval_seconds):
        ours.setdefault(firing.alert, []).append({**firing.labels, "severity": firing.severity})
    assert ours, "the demo fires alerts, else this compares nothing"
    rules = yaml.safe_load(Path("alerts/exchange-eems.rules.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)  # compared: labels (what fires for what), not the texts
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))

    def series(name: str, labels: dict) -> str:
        rendered = ",".join(f'{k}="{v}"' for k, v in sorted({**labels, "job": alerts.JOB,
                                                               "instance": alerts.INSTANCE}.items()))
        return f"{name}{{{rendered}}}"

    names = sorted({rule.name for rule in alerts.rules() if rule.alert})
    test = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        # `up` of the scrape these samples come from, as Prometheus records it
        "input_series": [{"series": series(n, l), "values": f"{v!r}x{eval_seconds // 60 + 10}"}
                         for n, l, v in [*shifted, ("up", {}, 1.0)]],
        "alert_rule_test": [{"eval_time": f"{eval_seconds}s", "alertname": name,
                             "exp_alerts": [{"exp_labels": labels} for labels in ours.get(name, [])]}
                            for name in names]}]}
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test))
    result = subprocess.run([PROMTOOL, "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_absent_up_gives_nothing_on_the_page():
    """Whether Prometheus has a target of this exporter at all (ExchangeExporterTargetMissing) cannot be told from
    the exporter's own samples: a page it serves never shows that alert."""
    node = alerts.parse('absent(up{job=~"exchange-eems.*"})')
    assert alerts.evaluate(node, alerts._Instant(alerts._Samples([]), 0.0)) == {}
    assert "ExchangeExporterTargetMissing" not in {firing.alert for firing in alerts.firing([], now=0.0)}
