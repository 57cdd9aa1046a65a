"""The shipped alert rules, dashboards and Alertmanager routing against the demo fleet, end to end.

One stack per module, all real programs on loopback: the simulated demo fleet (in process), the exporter
(`python -m exporter run`), Debian's Prometheus and Alertmanager, and a webhook served here that records
what Alertmanager delivers. Prometheus and Alertmanager are required: a missing binary fails the test.

The rules are loaded from a copy of alerts/exchange-eems.rules.yml whose `for:` durations are all `0s`:
the real 5m-1h waits cannot elapse in a test, and with `for` removed every alert fires on the first
evaluation that sees its condition. The expressions themselves are unchanged (checked below).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from contextlib import ExitStack
from datetime import date, datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from exporter.catalog import Catalog

from ..conftest import PASSWORD, PASSWORD_ENV, SimulatedFleet, demo_scenario, free_port, relocate, stop_process
from ..dashboard_queries import all_panel_queries

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "alerts" / "exchange-eems.rules.yml"
ALERTMANAGER_EXAMPLE = REPO / "examples" / "alertmanager.yml"
JOB = "exchange-eems"  # ExchangeExporterDown selects job=~"exchange-eems.*", as examples/prometheus.yml names it
SERVER_COUNT = 17  # the demo fleet's 15 and KNOB_SERVERS
STARTUP_TIMEOUT = 30
CONVERGE_TIMEOUT = 90
# Alertmanager waits this long before the first notification of a group. An inhibiting alert must reach it
# before that, or the alert it inhibits is delivered: the stack's Prometheus evaluates all rules as one group
# (`in_one_group`), so both arrive in the same batch. (In separate groups, evaluated at different moments of the
# interval, a cutoff alert reached Alertmanager an interval or more after the fetch-error alert it inhibits,
# and more than 6 s on a loaded machine.) With 3 s the pager still got ExchangeEEMSFetchErrors for EX16-CU22 once
# in about 25 full runs on a loaded 2-core machine. The likely cause, not confirmed: within Alertmanager the
# inhibitor and the dispatcher each read the batch in a goroutine of their own, and a group flushed before the
# inhibitor has read its source delivers the target. 10 s leaves that read more time (the example's is 1m).
GROUP_WAIT = "10s"

# Labels besides alertname, server and severity that tell two alerts of one server apart.
DETAIL_LABELS = ("cutoff", "part", "reason", "mitigation", "scope", "endpoint")

# The demo fleet's alerts that do not depend on today's date, from docs/alerts.md "What the demo fleet
# fires" and simulator/scenarios/demo.yaml. (alertname, server, severity, detail label).
# Every server answers with the simulator's realistic defaults or one of its knobs (docs/simulator.md):
# a healthy server raises nothing, an unhealthy one exactly these.
FIXED_ALERTS = {
    # EX19-CU14 runs 15.2.1544.36 (2019 CU14 Oct25SU): passes 2023-03, but the 2026-06 cutoff needs
    # 15.2.1544.41, so every EEMS check fails with an unknown issuer.
    ("ExchangeBuildBelowCertificateCutoff", "EX19-CU14", "critical", "cutoff=2026-06"),
    ("ExchangeEEMSFetchErrors", "EX19-CU14", "critical", "reason=unknown_issuer"),
    # EX19-CU12 runs 15.2.1118.25 (2019 CU12 Feb23SU): 2023-03 needs 15.2.1118.26, so it fails both
    # cutoffs and EEMS hits the retired certificate (untrusted endpoint).
    ("ExchangeBuildBelowCertificateCutoff", "EX19-CU12", "critical", "cutoff=2023-03"),
    ("ExchangeBuildBelowCertificateCutoff", "EX19-CU12", "critical", "cutoff=2026-06"),
    ("ExchangeEEMSFetchErrors", "EX19-CU12", "critical", "reason=untrusted_endpoint"),
    # EX16-CU23 runs 15.1.2507.23 (2016 CU23 Mar23SU): exactly the 2023-03 minimum, below the 2026-06
    # minimum 15.1.2507.69 -> unknown issuer.
    ("ExchangeBuildBelowCertificateCutoff", "EX16-CU23", "critical", "cutoff=2026-06"),
    ("ExchangeEEMSFetchErrors", "EX16-CU23", "critical", "reason=unknown_issuer"),
    # EX16-CU22 runs 15.1.2375.37 (2016 CU22 Nov22SU): CU22 has no compliant build for either cutoff
    # -> untrusted endpoint.
    ("ExchangeBuildBelowCertificateCutoff", "EX16-CU22", "critical", "cutoff=2023-03"),
    ("ExchangeBuildBelowCertificateCutoff", "EX16-CU22", "critical", "cutoff=2026-06"),
    ("ExchangeEEMSFetchErrors", "EX16-CU22", "critical", "reason=untrusted_endpoint"),
    # EX-SE02-STOPPED: MSExchangeMitigation stopped 6 hours ago, so its log folder is silent for 6 hours.
    ("ExchangeEEMSServiceNotRunning", "EX-SE02-STOPPED", "critical", ""),
    # a warning: it rests on unconfirmed facts (docs/alerts.md, "What each alert rests on")
    ("ExchangeEEMSNoActivity", "EX-SE02-STOPPED", "warning", ""),
    # EX-SE03-BLOCKED: an admin blocked M2.1.0 (reported by the organization collector via EX-SE01).
    ("ExchangeEEMSMitigationBlocked", "EX-SE03-BLOCKED", "warning", "mitigation=M2.1.0"),
    # EX-SE04-PROXY: an SSL-inspecting proxy makes every check fail TLS validation.
    ("ExchangeEEMSFetchErrors", "EX-SE04-PROXY", "critical", "reason=tls_validation"),
    # EX-SE05-NOWINRM refuses connections: exchange_up 0, so both CannotPoll twins (warning 15m, critical
    # 1h with real `for`) and nothing else.
    ("ExchangeExporterCannotPoll", "EX-SE05-NOWINRM", "warning", ""),
    ("ExchangeExporterCannotPoll", "EX-SE05-NOWINRM", "critical", ""),
    # EX-SE08-FR: the WinHTTP proxy answers the monitoring account 407 for both OCS endpoints.
    ("ExchangeEEMSEndpointUnreachable", "EX-SE08-FR", "warning", "endpoint=mitigations"),
    ("ExchangeEEMSEndpointUnreachable", "EX-SE08-FR", "warning", "endpoint=flighting"),
    # EX16-CU21 (2016 CU21 Mar22SU) predates EEMS: no provider, no log folder, no service; only this.
    ("ExchangeBuildWithoutEEMS", "EX16-CU21", "critical", ""),
    # EX-SE06-DE (German, least-privilege account: service state and event log unreadable, UTF-16 log with culture
    # times): no page, the state is unknown; but the exporter says it is blind there (issue 25.3).
    ("ExchangeCollectorBlind", "EX-SE06-DE", "warning", "part=service,reason=access_denied"),
    ("ExchangeCollectorBlind", "EX-SE06-DE", "warning", "part=events,reason=access_denied"),
    # No fixed alert: EX-SE01 and EX19-CU15ESU (defaults), EDGE01 (Edge, no EEMS), EX-SE07-JA (Japanese, daily
    # W3C log with culture times, non-fetch 1008s, an unformattable event: the other events were read).
}
# Knobs of docs/simulator.md the demo fleet does not show, added to it for this test only.
KNOB_SERVERS = [
    # a least-privilege account that may read neither the event log nor the log folder: it cannot see EEMS
    # at all, which is "unknown" (partial failures), never a page
    {"name": "KNOB-BLIND", "build": "15.2.2562.53", "account": "least_privilege", "unreadable": ["events", "log"]},
    # the CRL endpoints are blocked: the endpoint check fails with revocation checked, passes without
    {"name": "KNOB-CRL", "build": "15.2.2562.53", "endpoint_failure": "revocation"},
]
FIXED_ALERTS |= {
    ("ExchangeEEMSEndpointUnreachable", "KNOB-CRL", "warning", "endpoint=mitigations"),
    ("ExchangeEEMSEndpointUnreachable", "KNOB-CRL", "warning", "endpoint=flighting"),
    ("ExchangeCollectorBlind", "KNOB-BLIND", "warning", "part=service,reason=access_denied"),
    ("ExchangeCollectorBlind", "KNOB-BLIND", "warning", "part=events,reason=access_denied"),
    ("ExchangeCollectorBlind", "KNOB-BLIND", "warning", "part=log,reason=access_denied"),
}
# The shipped demo's organization collector fails with double_hop, as over NTLM in production (README, "Windows
# permissions"). This test turns organization.double_hop off, as the Kerberos and PSRP demos have it, so the
# organization's alerts and dashboard panels are covered end to end. What that changes against the shipped demo
# (docs/alerts.md's table is checked against FIXED_ALERTS with these two sets swapped):
ORGANIZATION_ALERTS = {("ExchangeEEMSMitigationBlocked", "EX-SE03-BLOCKED", "warning", "mitigation=M2.1.0")}
DOUBLE_HOP_ALERTS = {("ExchangeOrganizationCollectorFailing", "", "warning", "reason=double_hop")}
assert ORGANIZATION_ALERTS <= FIXED_ALERTS
UNPOLLABLE = {"EX-SE05-NOWINRM"}  # never polled: it has no facts, so only CannotPoll can fire for it

# What the pager (the receiver of severity="critical") gets after the example inhibitions, per
# docs/alerts.md: the cutoff alerts, the stopped service, the proxy server's failing fetches, the build
# without EEMS and the unpollable server. The other fetch errors are inhibited by their server's cutoff
# alert, the stopped server's silence by its service alert.
EXPECTED_PAGES = {
    ("ExchangeBuildBelowCertificateCutoff", "EX19-CU14", "critical", "cutoff=2026-06"),
    ("ExchangeBuildBelowCertificateCutoff", "EX19-CU12", "critical", "cutoff=2023-03"),
    ("ExchangeBuildBelowCertificateCutoff", "EX19-CU12", "critical", "cutoff=2026-06"),
    ("ExchangeBuildBelowCertificateCutoff", "EX16-CU23", "critical", "cutoff=2026-06"),
    ("ExchangeBuildBelowCertificateCutoff", "EX16-CU22", "critical", "cutoff=2023-03"),
    ("ExchangeBuildBelowCertificateCutoff", "EX16-CU22", "critical", "cutoff=2026-06"),
    ("ExchangeEEMSServiceNotRunning", "EX-SE02-STOPPED", "critical", ""),
    ("ExchangeEEMSFetchErrors", "EX-SE04-PROXY", "critical", "reason=tls_validation"),
    ("ExchangeExporterCannotPoll", "EX-SE05-NOWINRM", "critical", ""),
    ("ExchangeBuildWithoutEEMS", "EX16-CU21", "critical", ""),
}
# Fixed tickets (severity="warning" that nothing inhibits): the blocked mitigation and the endpoint check
# behind the 407 proxy. The date-dependent warnings (superseded, out of support, catalog stale) are tickets
# too; they are added from the catalog below.
FIXED_TICKETS = {
    ("ExchangeEEMSMitigationBlocked", "EX-SE03-BLOCKED", "warning", "mitigation=M2.1.0"),
    ("ExchangeEEMSEndpointUnreachable", "EX-SE08-FR", "warning", "endpoint=mitigations"),
    ("ExchangeEEMSEndpointUnreachable", "EX-SE08-FR", "warning", "endpoint=flighting"),
    ("ExchangeEEMSEndpointUnreachable", "KNOB-CRL", "warning", "endpoint=mitigations"),
    ("ExchangeEEMSEndpointUnreachable", "KNOB-CRL", "warning", "endpoint=flighting"),
    ("ExchangeCollectorBlind", "EX-SE06-DE", "warning", "part=service,reason=access_denied"),
    ("ExchangeCollectorBlind", "EX-SE06-DE", "warning", "part=events,reason=access_denied"),
    ("ExchangeCollectorBlind", "KNOB-BLIND", "warning", "part=service,reason=access_denied"),
    ("ExchangeCollectorBlind", "KNOB-BLIND", "warning", "part=events,reason=access_denied"),
    ("ExchangeCollectorBlind", "KNOB-BLIND", "warning", "part=log,reason=access_denied"),
}

# Thresholds of the date-dependent rules, as in alerts/exchange-eems.rules.yml (docs/alerts.md).
SUPERSEDED_GRACE_DAYS = 30
SUPPORT_WARNING_DAYS = 180
CATALOG_MAX_AGE_DAYS = 90

# Loopback only: never let a proxy from the environment see this test's requests.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))
PROXY_VARIABLES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


def scenario_under_test() -> dict:
    scenario = demo_scenario()
    scenario["organization"]["double_hop"] = False  # see ORGANIZATION_ALERTS
    scenario["servers"] += [{"address": "127.0.0.1", **server} for server in KNOB_SERVERS]
    return scenario


def _midnight(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp()


def dated_alerts(now: float) -> set[tuple[str, str, str, str]]:
    """The alerts that depend on today's date, decided from the catalog as the rules decide them.

    The exporter exports dates as midnight UTC; the rules compare them with time(). The product of an
    Exchange SE build has no support end, so SE servers never raise the support alerts.
    """
    catalog = Catalog.load()
    expected = set()
    for server in scenario_under_test()["servers"]:
        name = server["name"]
        if name in UNPOLLABLE:
            continue
        verdict = catalog.verdict(server["build"])
        path_since = verdict.update_path_since
        if (verdict.servicing == "serviced" and path_since
                and now - _midnight(path_since) > SUPERSEDED_GRACE_DAYS * 86400):
            expected.add(("ExchangeBuildSuperseded", name, "warning", ""))
        if verdict.servicing == "cu_not_serviced":
            expected.add(("ExchangeBuildCUNotServiced", name, "warning", ""))
        if verdict.product_support_end:
            left = _midnight(verdict.product_support_end) - now
            if left <= 0:
                expected.add(("ExchangeProductOutOfSupport", name, "warning", ""))
            elif left < SUPPORT_WARNING_DAYS * 86400:
                expected.add(("ExchangeProductSupportEndingSoon", name, "info", ""))
    if now - _midnight(catalog.checked) > CATALOG_MAX_AGE_DAYS * 86400:  # the rule reads the day it was last checked
        expected.add(("ExchangeCatalogStale", "", "warning", ""))
    return expected


def alert_key(labels: dict[str, str]) -> tuple[str, str, str, str]:
    detail = ",".join(f"{name}={labels[name]}" for name in DETAIL_LABELS if name in labels)
    return labels.get("alertname", ""), labels.get("server", ""), labels.get("severity", ""), detail


def show(keys) -> str:
    return "\n".join("  " + " ".join(part for part in key if part) for key in sorted(keys)) or "  (none)"


# ------------------------------------------------------------------ processes and HTTP


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (Debian packages prometheus and prometheus-alertmanager; "
                    "`make test` installs them): the integration test needs the real program", pytrace=False)
    return path


def prometheus_command(folder: Path, port: int) -> list[str]:
    """Debian's Prometheus with `folder`/prometheus.yml, its TSDB in `folder`, on 127.0.0.1:`port`."""
    return [binary("prometheus"), f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}"]


def alertmanager_command(folder: Path, port: int) -> list[str]:
    """Debian's Alertmanager with `folder`/alertmanager.yml, alone (no cluster), on 127.0.0.1:`port`."""
    return [binary("prometheus-alertmanager"), f"--config.file={folder / 'alertmanager.yml'}",
            f"--storage.path={folder / 'alertmanager'}", "--cluster.listen-address=",
            f"--web.listen-address=127.0.0.1:{port}"]


def exporter_command(config: Path, listen: str) -> list[str]:
    """The exporter of this checkout, `run` with `config` on `listen` (host:port)."""
    return [sys.executable, "-m", "exporter", "run", "--config.file", str(config), "--web.listen-address", listen]


def get_json(url: str, timeout: float = 5) -> dict:
    with HTTP.open(url, timeout=timeout) as response:
        return json.loads(response.read())


def responds(url: str) -> bool:
    try:
        with HTTP.open(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


class Program:
    """A subprocess whose output goes to a log file, quoted when something about it fails."""

    def __init__(self, name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None):
        self.name = name
        self.log = log_dir / f"{name}.log"
        clean_env = {k: v for k, v in (env or os.environ).items() if k.lower() not in PROXY_VARIABLES}
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            cwd=REPO, env=clean_env)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def check_running(self) -> None:
        if self.process.poll() is not None:
            pytest.fail(f"{self.name} exited with code {self.process.returncode}; last log lines:\n{self.log_tail()}",
                        pytrace=False)

    def wait_ready(self, url: str) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            self.check_running()
            if responds(url):
                return
            time.sleep(0.2)
        pytest.fail(f"{self.name} did not answer {url} within {STARTUP_TIMEOUT}s; last log lines:\n{self.log_tail()}",
                    pytrace=False)

    def stop(self) -> None:
        if self.process.poll() is None:
            stop_process(self.process, 10)


class Webhook:
    """Records every notification Alertmanager POSTs, by URL path (one path per receiver)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.notifications: list[tuple[str, dict]] = []
        self.errors: list[str] = []
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with webhook.lock:
                    try:
                        webhook.notifications.append((self.path, json.loads(body)))
                    except ValueError as e:
                        webhook.errors.append(f"{self.path}: body is not JSON ({e}): {body[:200]!r}")
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def delivered(self, path: str | None, status: str = "firing") -> set[tuple[str, str, str, str]]:
        """Every alert that arrived with `status` at `path` (None: at any path)."""
        with self.lock:
            assert not self.errors, "\n".join(self.errors)
            return {alert_key(alert["labels"]) for p, payload in self.notifications if path in (None, p)
                    for alert in payload["alerts"] if alert["status"] == status}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------ configuration


# `up` is absent until Prometheus' first scrape: without its `for:` this alert would fire at every start-up.
KEEPS_FOR = "ExchangeExporterTargetMissing"


def rules_without_for(text: str) -> str:
    """The rule file with every `for:` set to 0s but KEEPS_FOR's; fails if the expressions would change."""
    lines, alert, count = [], None, 0
    for line in text.splitlines(keepends=True):
        if match := re.match(r"\s+- alert: (\S+)", line):
            alert = match.group(1)
        elif alert != KEEPS_FOR and re.fullmatch(r"(\s+)for:[ \t]*\S+[ \t]*\n?", line):
            line, count = re.sub(r"for:.*", "for: 0s", line), count + 1
        lines.append(line)
    rewritten = "".join(lines)
    original, copy = yaml.safe_load(text), yaml.safe_load(rewritten)
    with_for = [rule for group in original["groups"] for rule in group["rules"]
                if "for" in rule and rule.get("alert") != KEEPS_FOR]
    assert count == len(with_for) > 0, f"rewrote {count} `for:` lines, the rule file has {len(with_for)} rules with for"
    for group in copy["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                assert rule["for"] == "0s" or rule["alert"] == KEEPS_FOR, rule
                del rule["for"]
    for group in original["groups"]:
        for rule in group["rules"]:
            rule.pop("for", None)
    assert copy == original, "rewriting `for:` changed something else in the rule file"
    return rewritten


def in_one_group(text: str) -> str:
    """The rules of every group in one group, in file order (a recording rule still comes before the alerts that
    use it): Prometheus evaluates one group's rules together and sends their alerts in one batch."""
    groups = yaml.safe_load(text)["groups"]
    return yaml.safe_dump({"groups": [{"name": "exchange-eems", "rules": [r for g in groups for r in g["rules"]]}]},
                          sort_keys=False)


def prometheus_config(exporter_port: int, alertmanager_port: int, rule_file: Path) -> str:
    return yaml.safe_dump({
        "global": {"scrape_interval": "2s", "scrape_timeout": "2s", "evaluation_interval": "2s"},
        "rule_files": [str(rule_file)],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}]},
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}],
    }, sort_keys=False)


def receiver_for(config: Path, severity: str) -> str:
    """The receiver Alertmanager's own routing (amtool) picks for an Exchange alert of this severity."""
    result = subprocess.run([binary("amtool"), "config", "routes", "test", f"--config.file={config}",
                             "alertname=ExchangeEEMSFetchErrors", f"severity={severity}"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


def with_test_timing(route: dict, group_wait: str) -> None:
    """Every route of the tree that sets its own timing gets the test's (timing only, never the grouping)."""
    route.update(group_wait=group_wait, group_interval="2s")
    for child in route.get("routes", []):
        if "group_wait" in child or "group_interval" in child:
            with_test_timing(child, group_wait)


def alertmanager_config(webhook_url: str, tmp: Path, group_wait: str = GROUP_WAIT,
                        example: Path = ALERTMANAGER_EXAMPLE) -> tuple[str, dict[str, str]]:
    """examples/alertmanager.yml with its routing tree and inhibitions, every webhook pointed at the test.

    Returns the YAML and, per severity, the webhook path its receiver posts to.
    """
    config = yaml.safe_load(example.read_text())
    with_test_timing(config["route"], group_wait)
    for receiver in config["receivers"]:
        for webhook in receiver.get("webhook_configs", []):
            webhook["url"] = f"{webhook_url}/{receiver['name']}"
    (tmp / "routes.yml").write_text(yaml.safe_dump(config))
    paths = {severity: "/" + receiver_for(tmp / "routes.yml", severity) for severity in ("critical", "warning")}
    assert paths["critical"] != paths["warning"], "examples/alertmanager.yml routes critical and warning alike"
    return yaml.safe_dump(config, sort_keys=False), paths


# ------------------------------------------------------------------ the stack


class Stack:
    def __init__(self, prometheus_url: str, alertmanager_url: str, webhook: Webhook, paths: dict[str, str],
                 expected: set, programs: list[Program]):
        self.prometheus_url = prometheus_url
        self.alertmanager_url = alertmanager_url
        self.webhook = webhook
        self.paths = paths
        self.expected = expected
        self.programs = programs

    def query(self, expr: str) -> list[dict]:
        url = f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        answer = get_json(url)
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def rule_groups(self) -> list[dict]:
        return get_json(f"{self.prometheus_url}/api/v1/rules")["data"]["groups"]

    def active_alerts(self) -> list[dict]:
        return get_json(f"{self.prometheus_url}/api/v1/alerts")["data"]["alerts"]


def evaluated_after(group: dict, moment: datetime) -> bool:
    last = group.get("lastEvaluation", "")
    return not last.startswith("0001-") and datetime.fromisoformat(last) > moment


def wait_until(condition, timeout: float, programs: list[Program]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for program in programs:
            program.check_running()
        if condition():
            return True
        time.sleep(0.25)  # a condition poll: each look is a few local HTTP queries
    return False


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("integration")
    with ExitStack() as cleanup:
        fleet = cleanup.enter_context(SimulatedFleet(relocate(scenario_under_test())))
        webhook = Webhook()
        cleanup.callback(webhook.stop)

        exporter_port, prometheus_port, alertmanager_port = free_port(), free_port(), free_port()
        (tmp / "exporter.yml").write_text(fleet.config_text(interval="10s", timeout="8s", check_endpoint=True))
        rule_file = tmp / "exchange-eems.rules.yml"
        rule_file.write_text(in_one_group(rules_without_for(RULES.read_text())))
        (tmp / "prometheus.yml").write_text(prometheus_config(exporter_port, alertmanager_port, rule_file))
        am_config, paths = alertmanager_config(webhook.url, tmp)
        (tmp / "alertmanager.yml").write_text(am_config)

        def start(name: str, args: list[str], env: dict[str, str] | None = None) -> Program:
            program = Program(name, args, tmp, env)
            cleanup.callback(program.stop)
            return program

        alertmanager = start("alertmanager", alertmanager_command(tmp, alertmanager_port))
        exporter = start("exporter", exporter_command(tmp / "exporter.yml", f"127.0.0.1:{exporter_port}"),
                         env={**os.environ, PASSWORD_ENV: PASSWORD})
        prometheus = start("prometheus", prometheus_command(tmp, prometheus_port))
        programs = [alertmanager, exporter, prometheus]
        prometheus_url = f"http://127.0.0.1:{prometheus_port}"
        alertmanager_url = f"http://127.0.0.1:{alertmanager_port}"
        alertmanager.wait_ready(f"{alertmanager_url}/-/ready")
        exporter.wait_ready(f"http://127.0.0.1:{exporter_port}/-/healthy")
        prometheus.wait_ready(f"{prometheus_url}/-/ready")

        expected = FIXED_ALERTS | dated_alerts(time.time())
        result = Stack(prometheus_url, alertmanager_url, webhook, paths, expected, programs)

        def scraped_everything() -> bool:
            up = result.query(f'count(exchange_up{{job="{JOB}"}})')
            blocked = result.query(f'exchange_eems_mitigation_blocked{{job="{JOB}"}}')  # organization poll done
            return bool(up) and float(up[0]["value"][1]) == SERVER_COUNT and bool(blocked)

        if not wait_until(scraped_everything, CONVERGE_TIMEOUT, programs):
            pytest.fail(f"Prometheus did not see all {SERVER_COUNT} demo servers and the organization within "
                        f"{CONVERGE_TIMEOUT}s; exporter log:\n{exporter.log_tail()}", pytrace=False)
        complete = datetime.now(timezone.utc)
        if not wait_until(lambda: all(evaluated_after(group, complete) for group in result.rule_groups()),
                          STARTUP_TIMEOUT, programs):
            pytest.fail(f"Prometheus did not evaluate every rule group after the data was complete; "
                        f"log:\n{prometheus.log_tail()}", pytrace=False)
        yield result


# ------------------------------------------------------------------ tests


def test_prometheus_loaded_every_rule(stack):
    groups = stack.rule_groups()
    loaded = sum(len(group["rules"]) for group in groups)
    in_file = sum(len(group["rules"]) for group in yaml.safe_load(RULES.read_text())["groups"])
    assert loaded == in_file
    failing = [(rule["name"], rule.get("lastError")) for group in groups for rule in group["rules"]
               if rule.get("health") != "ok"]
    assert not failing, f"rules that do not evaluate cleanly: {failing}"


def test_exporter_target_is_up(stack):
    targets = get_json(f"{stack.prometheus_url}/api/v1/targets")["data"]["activeTargets"]
    assert [(t["labels"]["job"], t["health"]) for t in targets] == [(JOB, "up")], targets


def test_every_dashboard_query_returns_data(stack):
    empty = []
    for dashboard, panel, expr in all_panel_queries():
        try:
            if not stack.query(expr):
                empty.append(f"{dashboard} / {panel}: no data: {expr}")
        except (OSError, AssertionError) as e:
            empty.append(f"{dashboard} / {panel}: query failed ({e}): {expr}")
    assert not empty, f"{len(empty)} dashboard queries return nothing for the demo fleet:\n" + "\n".join(empty)


# The fleet overview's stat panels, counted by hand from the demo scenario. `or vector(0)` keeps a zero count
# visible, so "returns data" alone cannot fail for these panels; their values can.
DEMO_COUNTS = {
    "Servers": 17,  # the demo fleet and KNOB_SERVERS
    "Failing the 2023-03 cutoff": 2,  # EX19-CU12 (Feb23SU), EX16-CU22 (Nov22SU)
    "Failing the 2026-06 cutoff": 4,  # EX19-CU14, EX19-CU12, EX16-CU23, EX16-CU22 (EX-SE05 never answered)
    "Without EEMS (Mailbox)": 1,  # EX16-CU21; EDGE01 has no EEMS but is an Edge server
    "EEMS service not running": 1,  # EX-SE02-STOPPED
    # failing: unknown issuer (EX19-CU14, EX16-CU23), untrusted endpoint (EX19-CU12, EX16-CU22), proxy TLS
    # failure (EX-SE04-PROXY); silent: service stopped 6 h ago (EX-SE02-STOPPED)
    "EEMS silent or failing": 6,
    "Exporter cannot poll": 1,  # EX-SE05-NOWINRM
    "Mitigations blocked": 1,  # EX-SE03-BLOCKED: M2.1.0
    "Collector blind to a part": 2,  # EX-SE06-DE (service, events), KNOB-BLIND (service, events, log)
    "Exporter down or shard missing": 0,  # one unsharded exporter, scraped
    "Never polled": 0,  # every configured server has a poll result (its shard count less its exchange_up)
}


def test_fleet_overview_counts_match_the_demo(stack):
    counts = {panel: [float(r["value"][1]) for r in stack.query(expr)]
              for dashboard, panel, expr in all_panel_queries()
              if dashboard == "fleet-overview.json" and panel in DEMO_COUNTS}
    assert set(counts) == set(DEMO_COUNTS), sorted(counts)
    assert {panel: values[0] if len(values) == 1 else values for panel, values in counts.items()} == DEMO_COUNTS


def test_exactly_the_demo_alerts_fire(stack):
    def firing() -> tuple[set, list]:
        alerts = stack.active_alerts()
        return ({alert_key(a["labels"]) for a in alerts},
                [alert_key(a["labels"]) for a in alerts if a["state"] != "firing"])

    wait_until(lambda: firing()[0] == stack.expected, 30, stack.programs)
    active, not_firing = firing()
    missing, unexpected = stack.expected - active, active - stack.expected
    assert not (missing or unexpected or not_firing), (
        f"missing alerts:\n{show(missing)}\nunexpected alerts:\n{show(unexpected)}\n"
        f"active but not firing (every `for` is 0s):\n{show(not_firing)}"
    )


def _delivered_exactly(stack, path: str, expected: set) -> None:
    """Wait until the expected alerts arrived and nothing more is on its way, then compare. Nothing more is on
    its way once Alertmanager holds every alert Prometheus fires (so every inhibitor is in place) and has
    delivered every alert it would notify this receiver of (active: neither inhibited nor silenced)."""
    receiver = urllib.parse.quote(path.lstrip("/"))
    alertmanager = f"{stack.alertmanager_url}/api/v2/alerts"

    def settled() -> bool:
        firing = {alert_key(a["labels"]) for a in stack.active_alerts() if a["state"] == "firing"}
        held = {alert_key(a["labels"]) for a in get_json(alertmanager)}
        to_notify = {alert_key(a["labels"]) for a in get_json(
            f"{alertmanager}?receiver=^{receiver}$&active=true&inhibited=false&silenced=false")}
        delivered = stack.webhook.delivered(path)
        return expected <= delivered and firing <= held and to_notify <= delivered

    wait_until(settled, 60, stack.programs)
    delivered = stack.webhook.delivered(path)
    missing, unexpected = expected - delivered, delivered - expected
    assert not (missing or unexpected), (
        f"{path}: not delivered:\n{show(missing)}\ndelivered although not expected (inhibited or misrouted):\n"
        f"{show(unexpected)}"
    )


def test_pager_gets_the_cutoff_alerts_and_no_inhibited_alert(stack):
    _delivered_exactly(stack, stack.paths["critical"], EXPECTED_PAGES)


def test_tickets_are_the_uninhibited_warnings(stack):
    dated = {key for key in stack.expected - FIXED_ALERTS if key[2] == "warning"}
    _delivered_exactly(stack, stack.paths["warning"], FIXED_TICKETS | dated)


def test_alertmanager_suppresses_exactly_the_inhibited_alerts(stack):
    """Every firing alert is either notified, routed to the null receiver (info) or inhibited."""
    info = {key for key in stack.expected if key[2] == "info"}
    tickets = FIXED_TICKETS | {key for key in stack.expected - FIXED_ALERTS if key[2] == "warning"}
    inhibited = stack.expected - EXPECTED_PAGES - tickets - info
    assert ("ExchangeEEMSFetchErrors", "EX19-CU14", "critical", "reason=unknown_issuer") in inhibited
    assert ("ExchangeEEMSNoActivity", "EX-SE02-STOPPED", "warning", "") in inhibited

    def suppressed() -> set:
        alerts = get_json(f"{stack.alertmanager_url}/api/v2/alerts")
        return {alert_key(a["labels"]) for a in alerts
                if a["status"]["state"] == "suppressed" and a["status"]["inhibitedBy"]}

    wait_until(lambda: suppressed() == inhibited, 30, stack.programs)
    found = suppressed()
    assert found == inhibited, (
        f"should be inhibited but is not:\n{show(inhibited - found)}\n"
        f"inhibited unexpectedly:\n{show(found - inhibited)}"
    )


def test_no_alert_flaps(stack):
    """Nothing fires on partial data at startup and then resolves: that would be a false page or ticket."""
    resolved = stack.webhook.delivered(None, status="resolved")
    assert not resolved, f"alerts that fired and resolved while the demo fleet did not change:\n{show(resolved)}"


def runbook_silence_command(alertmanager_url: str, server: str) -> list[str]:
    """The amtool line docs/runbooks.md gives for a server being updated, pointed at this stack and server."""
    text = (REPO / "docs" / "runbooks.md").read_text()
    section = text[text.index("**During updates.**"):]
    line = " ".join(re.search(r"`(amtool [^`]+)`", section, re.S).group(1).split())
    words = [word.replace("http://alertmanager:9093", alertmanager_url) for word in shlex.split(line)]
    assert "server=ex01.contoso.com" in words, words  # the name as servers: lists it (the README's are FQDNs)
    return [binary("amtool"), *[f"server={server}" if word == "server=ex01.contoso.com" else word
                                for word in words[1:]]]


def test_the_runbooks_silence_for_an_update_silences_every_alert_of_that_server(stack):
    """docs/runbooks.md: a CU install stops and disables the services; the amtool line it gives, run as written
    against this Alertmanager, silences all of that server's alerts and no other server's. Last in the module:
    the silence is expired at the end, but no test after it should have to know."""
    server = "EX-SE02-STOPPED"

    def alerts_of(name: str) -> list[dict]:
        return [a for a in get_json(f"{stack.alertmanager_url}/api/v2/alerts") if a["labels"].get("server") == name]

    wait_until(lambda: any(a["labels"]["alertname"] == "ExchangeEEMSServiceNotRunning" for a in alerts_of(server)),
               30, stack.programs)
    added = subprocess.run(runbook_silence_command(stack.alertmanager_url, server), capture_output=True, text=True,
                           timeout=30)
    assert added.returncode == 0, added.stderr
    silence = added.stdout.strip()
    try:
        wait_until(lambda: all(silence in a["status"]["silencedBy"] for a in alerts_of(server)), 30, stack.programs)
        assert all(silence in a["status"]["silencedBy"] for a in alerts_of(server)), alerts_of(server)
        others = [a for a in get_json(f"{stack.alertmanager_url}/api/v2/alerts") if silence in a["status"]["silencedBy"]
                  and a["labels"].get("server") != server]
        assert not others, others
    finally:
        subprocess.run([binary("amtool"), f"--alertmanager.url={stack.alertmanager_url}", "silence", "expire",
                        silence], capture_output=True, timeout=30, check=True)
