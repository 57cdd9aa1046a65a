"""Documentation that cannot drift from what it documents.

- Every exporter configuration in the repository (README blocks, examples/, deploy/) passes `check-config`.
- The demo's server count and addresses in README and docs/simulator.md are the demo scenario's.
- docs/alerts.md's table of demo alerts, and what it says Alertmanager delivers, are the sets that
  tests/system/test_integration.py sees fire in real Prometheus and arrive in real Alertmanager (that test runs
  the organization collector successfully; the shipped demo's fails with double_hop, as over NTLM).
- The /probe example's module and timeout agree with the README's configuration and docs/scaling.md.
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from exporter.config import load_config_text

from .. import pki
from ..conftest import demo_scenario, write_keytab
from ..system.test_integration import (DOUBLE_HOP_ALERTS, EXPECTED_PAGES, FIXED_ALERTS, FIXED_TICKETS,
                                       KNOB_SERVERS, ORGANIZATION_ALERTS)

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"
DEPLOY = ROOT / "deploy"
EXPORTER_KEYS = {"poll", "limits", "modules", "servers", "organization", "catalog_file", "shard"}


# ------------------------------------------------------------------ every exporter configuration passes check-config


def _yaml_blocks(path: Path) -> list[tuple[str, object]]:
    blocks = []
    text = path.read_text()
    for match in re.finditer(r"```ya?ml\n(.*?)```", text, re.S):
        line = text[:match.start()].count("\n") + 1
        try:
            data = yaml.safe_load(match.group(1))
        except yaml.YAMLError:
            # An illustration of another format (a scenario with "..." placeholders); an exporter config must parse.
            assert not re.search(r"^modules:", match.group(1), re.M), f"{path.name}:{line} is not YAML"
            continue
        blocks.append((f"{path.relative_to(ROOT)}:{line}", data))
    return blocks


def exporter_configs() -> list[tuple[str, dict]]:
    """Every exporter configuration the repository shows a user: full files and YAML blocks in the docs whose
    top-level keys are all the exporter's. A block that is only a fragment (no `modules`) must still be valid
    merged into the README's smallest configuration."""
    found: list[tuple[str, dict]] = []
    for path in [README, *sorted(DOCS.glob("*.md"))]:
        for where, data in _yaml_blocks(path):
            if isinstance(data, dict) and data and set(data) <= EXPORTER_KEYS:
                found.append((where, data))
    for path in sorted([*EXAMPLES.rglob("*.yml"), *EXAMPLES.rglob("*.yaml"), *DEPLOY.rglob("*.yml"),
                        *DEPLOY.rglob("*.yaml")]):
        for document in yaml.safe_load_all(path.read_text()):
            if isinstance(document, dict) and "modules" in document and set(document) <= EXPORTER_KEYS:
                found.append((str(path.relative_to(ROOT)), document))
            if isinstance(document, dict) and document.get("kind") == "ConfigMap":
                for name, text in document.get("data", {}).items():
                    config = yaml.safe_load(text)
                    if isinstance(config, dict) and "modules" in config:
                        found.append((f"{path.relative_to(ROOT)}:data.{name}", config))
    return found


def _smallest_readme_config() -> dict:
    return next(data for where, data in exporter_configs() if where.startswith("README.md") and "modules" in data)


def test_the_repository_has_exporter_configurations_to_check():
    places = {where.split(":")[0] for where, _ in exporter_configs()}
    assert {"README.md", "deploy/configmap.yaml"} <= places, places


@pytest.mark.parametrize("where, config", exporter_configs(), ids=[where for where, _ in exporter_configs()])
def test_every_exporter_configuration_passes_check_config(where, config, tmp_path):
    if "modules" not in config:
        config = {**_smallest_readme_config(), **config}
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXCHANGE_")}
    for module in config["modules"].values():
        # The secrets a user provides: the variable it names is set, the file it names exists.
        if "password_env" in module:
            env[module["password_env"]] = "a password"
        if "password_file" in module:
            secret = tmp_path / "password"
            secret.write_text("a password\n")
            module["password_file"] = str(secret)
        if "ca_file" in module:  # the user's internal CA
            module["ca_file"] = str(pki.write(tmp_path, "ca", *pki.issue("Contoso CA", None, None, ca=True))[0])
        if "keytab_file" in module:  # the account's keytab, as ktpass or ktutil would write it
            module["keytab_file"] = str(write_keytab(tmp_path / "account.keytab", module["username"]))
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "exporter", "check-config", "--config.file", str(path)],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, f"{where}: {result.stderr}"
    assert ": OK:" in result.stdout


# ------------------------------------------------------------------ the demo's numbers


def _demo_servers() -> list[dict]:
    return demo_scenario()["servers"]


def test_demo_server_count_and_addresses_are_the_scenarios():
    servers = _demo_servers()
    addresses = sorted(ipaddress.ip_address(s["address"]) for s in servers)
    first, last = str(addresses[0]).rsplit(".", 1)[1], str(addresses[-1]).rsplit(".", 1)[1]
    readme = README.read_text()
    assert re.search(rf"a simulated fleet of {len(servers)} Exchange servers", readme)
    assert re.search(rf"on 127\.0\.0\.{first}-{last}\b", readme)
    assert not re.search(r"127\.0\.0\.\d+-(?!" + last + r"\b)\d+", readme), "another demo address range in README"
    simulator = (DOCS / "simulator.md").read_text()
    assert f"{len(servers)} servers listen on `127.0.0.{first}` ... `127.0.0.{last}`" in simulator
    assert f"starts {len(servers)} simulated servers" in (DOCS / "alerts.md").read_text()


def _table_rows(text: str, heading: str) -> list[list[str]]:
    section = text[text.index(heading):]
    rows = []
    for line in section.splitlines()[1:]:
        if line.startswith("## "):
            break
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows[1:]  # without the header row


def test_simulator_doc_lists_every_demo_server_with_its_build():
    rows = _table_rows((DOCS / "simulator.md").read_text(), "## Running the demo")
    documented = {row[0]: row[1].split()[0] for row in rows}
    assert documented == {s["name"]: s["build"] for s in _demo_servers()}


# ------------------------------------------------------------------ docs/alerts.md's demo alerts


def _alert_key(token: str, server: str) -> tuple[str, str, str]:
    match = re.fullmatch(r'(Exchange\w+)(?:\{((?:\w+="[^"]+",?)+)\})?', token)
    assert match, token
    name, labels = match.groups()
    return name, server, ",".join(f"{k}={v}" for k, v in re.findall(r'(\w+)="([^"]+)"', labels or ""))


def _shipped_demo(alerts: set) -> set[tuple[str, str, str]]:
    """The integration test's alerts turned into the shipped demo's: without the knob servers, with the
    organization collector failing as over NTLM; severity left out (twins are one row)."""
    knobs = {server["name"] for server in KNOB_SERVERS}
    shipped = {a for a in alerts if a[1] not in knobs} - ORGANIZATION_ALERTS
    if alerts is FIXED_ALERTS or alerts is FIXED_TICKETS:
        shipped |= DOUBLE_HOP_ALERTS
    return {(name, server, detail) for name, server, _, detail in shipped}


def test_demo_alert_table_is_what_fires():
    rows = _table_rows((DOCS / "alerts.md").read_text(), "## What the demo fleet fires")
    documented = set()
    names = []
    for row in rows:
        first = row[0].split()
        server = "" if first[0] == "organization" else first[0].strip("`")
        names.append(server or "organization")
        documented |= {_alert_key(token, server) for token in re.findall(r"`(Exchange[^`]*)`", row[2])
                       if not row[2].startswith("none")}
    assert sorted(n for n in names if n != "organization") == sorted(s["name"] for s in _demo_servers())
    assert documented == _shipped_demo(FIXED_ALERTS)


def _delivered(line_start: str) -> set[tuple[str, str]]:
    text = (DOCS / "alerts.md").read_text()
    line = re.search(rf"^- {line_start}: (.*?)(?:;|\.)$", text, re.M | re.S).group(1)
    pairs = set()
    for name, servers in re.findall(r"`(Exchange\w+)` \(([^)]*)\)", line):
        pairs |= {(name, server.strip()) for server in servers.split(",")}
    return pairs


def test_documented_pages_and_tickets_are_what_alertmanager_delivers():
    pages = {(name, server) for name, server, _ in _shipped_demo(EXPECTED_PAGES)}
    assert _delivered("pages") == pages
    tickets = {(name, server or "Contoso") for name, server, _ in _shipped_demo(FIXED_TICKETS)}
    assert _delivered("tickets") == tickets


# ------------------------------------------------------------------ the /probe example


def _probe_job() -> dict:
    jobs = yaml.safe_load((EXAMPLES / "prometheus-probe.yml").read_text())["scrape_configs"]
    return next(job for job in jobs if job.get("metrics_path") == "/probe")


def _seconds(duration: str) -> int:
    return int(duration[:-1]) * {"s": 1, "m": 60}[duration[-1]]


def test_probe_example_module_is_the_readme_configurations():
    assert _probe_job()["params"]["module"] == list(_smallest_readme_config()["modules"])


def test_probe_timeout_is_one_advice_above_the_poll_timeout(monkeypatch):
    readme = _smallest_readme_config()
    for module in readme["modules"].values():
        monkeypatch.setenv(module["password_env"], "a password")
    default_poll_timeout = load_config_text(yaml.safe_dump(readme), ROOT).poll.timeout
    example = _seconds(_probe_job()["scrape_timeout"])
    scaling = {_seconds(t) for t in re.findall(r"scrape_timeout: (\d+[sm])", (DOCS / "scaling.md").read_text())}
    assert scaling == {example}, "examples/prometheus-probe.yml and docs/scaling.md advise different timeouts"
    assert example > default_poll_timeout


def _probe_jobs() -> list[tuple[str, dict]]:
    """Every /probe scrape job a user is shown: examples/prometheus-probe.yml and the YAML blocks of the docs."""
    found = [("examples/prometheus-probe.yml", _probe_job())]
    for path in [README, *sorted(DOCS.glob("*.md"))]:
        for where, data in _yaml_blocks(path):
            if isinstance(data, dict):
                found += [(where, job) for job in data.get("scrape_configs") or []
                          if job.get("metrics_path") == "/probe"]
    return found


PROMETHEUS_LOOKBACK_DELTA = 300  # seconds: Prometheus' --query.lookback-delta default (5m)


@pytest.mark.parametrize("where, job", _probe_jobs(), ids=[where for where, _ in _probe_jobs()])
def test_probe_samples_never_drop_out_of_prometheus_lookback(where, job):
    """A /probe scrape is a live WinRM poll: its samples are stored when it ends, stamped when it began. At
    scrape_interval: 5m the previous sample is 5 minutes old when the next scrape starts, so every rule evaluation
    while the poll runs sees no series: each `for:` restarts and a firing alert resolves (ExchangeExporterCannotPoll's
    `for: 1h` then rarely fires at all). The newest stored sample may be scrape_interval + scrape_timeout old; it
    must stay inside the lookback."""
    interval = _seconds(job.get("scrape_interval", "60s"))
    timeout = _seconds(job.get("scrape_timeout", "10s"))
    assert interval + timeout < PROMETHEUS_LOOKBACK_DELTA, (
        f"{where}: job {job['job_name']}: scrape_interval {interval}s + scrape_timeout {timeout}s reach Prometheus' "
        f"{PROMETHEUS_LOOKBACK_DELTA}s lookback")


def test_the_alerts_doc_gives_the_support_end_the_alert_uses():
    """docs/alerts.md said the demo's ExchangeProductOutOfSupport came from support that ended 2026-10-31; the alert
    reads exchange_product_support_end_timestamp_seconds, the extended support end of lifecycle.tsv (2025-10-14)."""
    stated = re.search(r"ExchangeProductOutOfSupport` \(support ended (\d{4}-\d{2}-\d{2})",
                       (ROOT / "docs" / "alerts.md").read_text())
    lifecycle = {line.split("\t")[0]: line.split("\t")[3].strip()
                 for line in (ROOT / "exporter" / "data" / "lifecycle.tsv").read_text().splitlines()
                 if line.startswith("Exchange20")}
    assert stated and {lifecycle["Exchange2016"], lifecycle["Exchange2019"]} == {stated.group(1)}


def test_the_runbooks_silence_names_a_server_as_the_readme_configures_it():
    """The `server` label is the configured name, matched exactly by Alertmanager. The runbook silenced
    `server=EX01` before a CU install while the README lists servers by FQDN (`ex01.contoso.com`): the silence
    matched no alert, and ExchangeEEMSServiceNotRunning paged during the install anyway."""
    silences = re.findall(r"silence add server=(\S+)", (DOCS / "runbooks.md").read_text())
    assert silences
    names = {s if isinstance(s, str) else s["name"] for s in _smallest_readme_config()["servers"]}
    for value in silences:
        assert value in names, f"silence on server={value}: the README's configuration names {sorted(names)}"


def test_poll_and_diagnose_commands_name_a_server_as_the_configuration_lists_it():
    """`poll` and `diagnose` find a server by its configured name. README, docs/field-report.md and
    docs/windows-setup.md ran `poll EX01` while the README's configuration (and deploy/systemd/config.yml, the
    file windows-setup.md's check reads) lists `ex01.contoso.com`: the command an admin copied answered
    "server 'EX01' is not in ..." instead of polling."""
    systemd = yaml.safe_load((DEPLOY / "systemd" / "config.yml").read_text())
    configured = {s if isinstance(s, str) else s["name"] for s in _smallest_readme_config()["servers"]}
    configured &= {s if isinstance(s, str) else s["name"] for s in systemd["servers"]}
    found = []
    for path in [README, *sorted(DOCS.glob("*.md"))]:
        for block in re.findall(r"```[a-z]*\n(.*?)```", path.read_text(), re.S):
            found += [(path.name, name) for name in
                      re.findall(r"^exchange-eems-exporter (?:poll|diagnose) (\S+)", block, re.M)]
    assert found
    for where, name in found:
        assert name in configured, f"{where}: `{name}` is not a server the configuration lists ({sorted(configured)})"


def test_the_security_page_says_what_the_winrm_certificate_is_checked_against():
    """docs/security.md said the WinRM server's certificate was checked "against the system store or ca_file";
    exporter/winrm/tls.py uses ca_file or certifi's bundle, never the system store (README says so). An admin who
    installed the internal CA in the host's store, as the page implied was enough, got tls_error on every poll."""
    trusts = (DOCS / "security.md").read_text().partition("## What the exporter trusts")[2].partition("\n## ")[0]
    assert "certifi" in trusts and "ca_file" in trusts
    assert "against the system store" not in " ".join(trusts.split())


def test_the_jea_pages_say_what_the_endpoint_runs_as_and_what_registering_it_changes():
    """What a security team asks of the JEA endpoint, answered truthfully where they read it:
    - README's permissions table said "no other right on the server (the function runs as a virtual account)" and
      never that this virtual account is a member of the local Administrators group unless the endpoint is written
      with --virtual-account-group, nor that it reaches the network as the server's computer account (Microsoft
      Learn, "JEA Security Considerations", Run-As account: table of local and network user context).
    - docs/security.md called it "local Administrator on that server only": over the network it is the computer
      account, an Exchange server's, with whatever that account may do in Active Directory.
    - Registering a session configuration with RunAsVirtualAccount moves the WinRM service into its own process
      running as LocalSystem with SeTcbPrivilege (CustomShellCommands.cs MoveWinRmToIsolatedServiceHost,
      PowerShell/PowerShell), which nothing said, and -Remove does not undo.
    - The CLI help said that with 'Event Log Readers' the service state "then reads as unknown", which
      docs/security.md marks UNCONFIRMED."""
    readme = (ROOT / "README.md").read_text()
    table = readme.partition("## Windows permissions")[2].partition("\n## ")[0]
    row = next(line for line in table.splitlines() if line.startswith("| the account needs |"))
    jea = row.split(" | ")[2]
    assert "local Administrators" in jea and "--virtual-account-group" in jea and "computer account" in jea, jea
    security = (DOCS / "security.md").read_text()
    jea_section = security.partition("## PowerShell remoting: the JEA endpoint")[2].partition("\n## ")[0]
    runs_as = next(line for line in jea_section.splitlines() if line.startswith("| what the function or cmdlet runs as"))
    assert "on that server only" not in runs_as and "computer account" in runs_as, runs_as
    flat = " ".join(jea_section.split())
    for fact in ("sc.exe config winrm type= own", "SeTcbPrivilege", "LocalSystem", "MoveWinRmToIsolatedServiceHost"):
        assert fact in flat, fact
    assert "`-Remove` does not undo" in flat
    from exporter import cli
    helps = " ".join(" ".join(a.help.split()) for a in cli.build_parser()._subparsers._group_actions[0]
                     .choices["windows-endpoint"]._actions if a.help)
    assert "then reads as unknown" not in helps and "UNCONFIRMED" in helps


def test_exchanges_endpoint_is_documented_where_iis_serves_it(tmp_path, monkeypatch):
    """Exchange's own PowerShell endpoint (`configuration_name: Microsoft.Exchange`) is IIS's, at
    http://SERVER/PowerShell/ on port 80. README's recipe gave the module no scheme or port, so it took the WinRM
    listener's https:5986, where there is no /PowerShell (a 404, http_error): the organization collector could never
    reach it. Every documented configuration with such a module must reach the organization's server at IIS, and the
    README's recipe must say so."""
    from exporter.runtime import Targets

    recipe = re.search(r"`(modules: \{exchange: \{[^`]*\}\})`", README.read_text())
    assert recipe, "README's Windows permissions table gives the Exchange endpoint's module"
    module = yaml.safe_load(recipe.group(1).replace(", ...", ""))["modules"]["exchange"]
    assert (module.get("scheme"), module.get("port")) == ("http", 80), recipe.group(1)
    checked = []
    for where, config in exporter_configs():
        organization = config.get("organization") or {}
        modules = config.get("modules") or {}
        if modules.get(organization.get("module"), {}).get("configuration_name") != "Microsoft.Exchange":
            continue
        for name, settings in modules.items():
            settings.pop("password_file", None)
            settings.pop("password_env", None)
            if "keytab_file" in settings:
                settings["keytab_file"] = str(write_keytab(tmp_path / f"{name}.keytab", settings["username"]))
            else:
                settings["password_env"] = "EXCHANGE_TEST_PASSWORD"
        monkeypatch.setenv("EXCHANGE_TEST_PASSWORD", "a password")
        target = Targets(load_config_text(yaml.safe_dump(config), tmp_path)).for_organization()
        assert (target.scheme, target.port) in (("http", 80), ("https", 443)), f"{where}: {target}"
        checked.append(where)
    assert checked, "no documented configuration shows the organization collector at Exchange's endpoint"


def test_the_runbooks_send_an_admin_where_a_partial_failures_message_is():
    """docs/runbooks.md (ExchangeCollectorBlind) said `exchange_collector_partial_failure` carries the message, and
    that its message "(and the exporter's log)" says what failed for reason `other`. The series has only `part` and
    `reason`, and nothing logs a partial failure: the admin looked in Prometheus and the log and found no text. The
    message is on the server's page (/server?name=SERVER) and in `poll`'s collection_errors."""
    from dataclasses import replace

    from exporter.model import PartialFailure

    from ..unit.test_metrics import STATE, series
    message = "Attempted to perform an unauthorized operation."
    rendered = series(replace(STATE, collection_errors=(PartialFailure("events", "other", message),)))
    labels = [dict(labels) for name, labels in rendered if name == "exchange_collector_partial_failure"]
    assert labels and not any(message in value for found in labels for value in found.values())
    section = " ".join((DOCS / "runbooks.md").read_text().partition("## ExchangeCollectorBlind")[2]
                       .partition("\n## ")[0].split())
    assert "/server?name=" in section and "collection_errors" in section
    assert not re.search(r"`exchange_collector_partial_failure` carries|message of `exchange_collector_partial_failure`"
                         r"|exporter's log\) says", section), "the series has no message, and nothing logs it"


def test_every_table_row_has_its_headers_cells():
    """GitHub drops the cells of a row beyond its table's header. docs/metrics.md gave
    `exchange_eems_script_stage_seconds` a fourth cell, its source, in a three-column table: the source never
    showed. Pipes split cells even inside backticks unless escaped (`\\|`)."""
    wrong = []
    for path in [README, *sorted(DOCS.rglob("*.md"))]:
        header, fenced = None, False
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if line.startswith("```"):
                fenced = not fenced
            if fenced or not line.startswith("|"):
                header = None
                continue
            cells = len(re.split(r"(?<!\\)\|", line.strip())) - 2
            if header is None:
                header = cells
            elif cells != header:
                wrong.append(f"{path.relative_to(ROOT)}:{number}: {cells} cells, the header has {header}")
    assert wrong == []
