"""The organization collector's list as the exporter uses it: which servers discovery adds, what a poll knows of its
server, and the organization's series of each server. Each test failed before its fix (a review of the
organization path); the docstrings say how."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from exporter.catalog import Catalog
from exporter.collectors import endpoint_proxy
from exporter.config import load_config_text
from exporter.exporter import Exporter
from exporter.model import CollectorOutcome, OrganizationResult, OrgServerInfo, ServerResult
from exporter.parse import parse_organization_output
from exporter.runtime import Targets
from exporter.web import alerts, pages
from exporter.web.handlers import SharedView

from ..conftest import PASSWORD_ENV, minimal_config
from .test_runtime import DISCOVERING, discovered, runtime_for, write

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- 1. reload drops discovered servers


def test_reload_changing_only_poll_interval_keeps_discovered_servers(tmp_path):
    """The organization section in the file is unchanged; only `poll.interval` changes. Its resolved
    OrganizationConfig.interval (None -> poll.interval) differed, so runtime.reload() took the organization
    as changed and dropped every discovered server (and Poller.follow then their results)."""
    runtime, path, password = runtime_for(tmp_path, DISCOVERING)
    organization = runtime.current().config.organization
    assert runtime.discovered(organization, (discovered("EX07", fqdn="ex07.contoso.com"),))
    assert runtime.current().targets.get("EX07") is not None
    write(path, password, extra=DISCOVERING + "poll: {interval: 10m}\n")
    assert runtime.reload() == (True, "configuration reloaded")
    assert runtime.current().targets.get("EX07") is not None, "discovered server dropped by a poll.interval change"


# ---------------------------------------------------------------- 2. duplicate series from the organization output


def _org_result(doc: dict) -> OrganizationResult:
    facts = parse_organization_output(json.dumps(doc).encode())
    now = datetime.now(timezone.utc)
    return OrganizationResult("default", outcome=CollectorOutcome("organization", True, 0.1, now), facts=facts,
                              last_success=now)


@pytest.mark.parametrize("second", ["ex02", "EX02"], ids=["names differing in case", "listed twice"])
def test_a_server_listed_twice_makes_one_series(second):
    """EX02 is configured and polled; Get-ExchangeServer's output lists it twice, or as "EX02" and "ex02". Both
    entries were labelled with the configured name, so /metrics carried the same series twice, with conflicting
    values (Prometheus keeps the first). The first entry is kept."""
    config = load_config_text(minimal_config("organization: {server: ex01.contoso.com}\n").replace(
        "  - ex01.contoso.com\n", "  - ex01.contoso.com\n  - EX02\n"), Path("."))
    exporter = Exporter(config, Catalog.load())
    try:
        now = datetime.now(timezone.utc)
        exporter.poller.store.record(ServerResult("EX02", outcome=CollectorOutcome("server", True, 0.1, now),
                                                  last_success=now))
        doc = {"schema": 1, "organization": {"mitigations_enabled": True}, "error": None, "servers": [
            {"name": "EX02", "mitigations_enabled": True},
            {"name": second, "mitigations_enabled": False},
        ]}
        exporter.poller.store.record_organization(_org_result(doc))
        body, _ = exporter.metrics_body("")
    finally:
        exporter.stop()
    lines = [line for line in body.decode().splitlines()
             if line.startswith('exchange_eems_mitigations_enabled{') and 'scope="server"' in line]
    assert len(lines) == 1 and lines[0].endswith(" 1.0"), lines


# ---------------------------------------------------------------- 3. proxy source label of a discovered server


def test_discovered_servers_internet_web_proxy_is_reported_as_internet_web_proxy_not_configured():
    """docs/metrics.md: source `configured` is servers[].endpoint_proxy; `internet_web_proxy` the server's
    InternetWebProxy from Active Directory. A discovered server's was copied into its target as if configured."""
    config = load_config_text(minimal_config("organization: {server: ex01.contoso.com, discover_servers: true}\n"),
                              Path("."))
    info = discovered("EX07", fqdn="ex07.contoso.com", proxy="http://proxy.contoso.com:8080/")
    target = Targets(config, (info,)).get("EX07")
    assert endpoint_proxy(target, info) == ("http://proxy.contoso.com:8080/", "internet_web_proxy")


# ---------------------------------------------------------------- 4. servers configured by FQDN (README's recipe)
#
# README.md builds `servers:` from Get-ExchangeServer's Fqdn ("ex01.contoso.com"); Get-ExchangeServer's Name,
# which the organization collector keyed everything on, is "EX01". Nothing compared the Fqdn: the server was
# discovered and polled a second time, and what the organization said of it never reached its poll or its name.

FQDN_CONFIG = "organization: {server: ex01.contoso.com, discover_servers: true}\n"


def _ex01() -> OrgServerInfo:
    return discovered("EX01", fqdn="ex01.contoso.com")


def test_a_server_configured_by_fqdn_is_not_discovered_and_polled_a_second_time():
    config = load_config_text(minimal_config(FQDN_CONFIG), Path("."))
    targets = Targets(config, (_ex01(),))
    assert [(t.name, t.address, t.discovered) for t in targets.polled] == [
        ("ex01.contoso.com", "ex01.contoso.com", False)]


@pytest.mark.parametrize("entry", ["{name: MBX2, address: ex02.contoso.com}",
                                   "{name: mbx2, address: 10.0.0.2, spn_hostname: ex02.contoso.com}"])
def test_a_server_configured_by_its_address_or_spn_host_is_not_discovered_a_second_time(entry):
    """exchange_organization_server_polled matches a configured server by its Name, FQDN, address or SPN host, but
    discovery compared configured names only: EX02 configured as MBX2 at ex02.contoso.com was discovered and polled
    again as EX02, every alert of it twice, and with --shard its organization series came from two replicas (the
    one polling MBX2 and the one polling EX02)."""
    text = minimal_config(FQDN_CONFIG).replace("  - ex01.contoso.com\n", f"  - ex01.contoso.com\n  - {entry}\n")
    targets = Targets(load_config_text(text, Path(".")), (_ex01(), discovered("EX02", fqdn="ex02.contoso.com"),
                                                          discovered("EX03", fqdn="ex03.contoso.com")))
    assert sorted((t.name.lower(), t.discovered) for t in targets.polled) == [
        ("ex01.contoso.com", False), ("ex03", True), ("mbx2", False)]


def test_what_the_organization_says_about_a_server_configured_by_fqdn_reaches_its_poll():
    """store.known() feeds the AdminDisplayVersion build fallback and the InternetWebProxy of the endpoint check."""
    config = load_config_text(minimal_config("organization: {server: ex01.contoso.com}\n"), Path("."))
    exporter = Exporter(config, Catalog.load())
    try:
        doc = {"schema": 1, "organization": {"mitigations_enabled": True}, "error": None, "servers": [
            {"name": "EX01", "fqdn": "ex01.contoso.com", "admin_display_version": "Version 15.2 (Build 1544.4)",
             "mitigations_enabled": False}]}
        exporter.poller.store.record_organization(_org_result(doc))
        assert exporter.poller.store.known("ex01.contoso.com") is not None
    finally:
        exporter.stop()


def test_organization_series_of_a_server_configured_by_fqdn_carry_its_configured_name():
    """docs/metrics.md: `server` is the server's name as configured."""
    config = load_config_text(minimal_config("organization: {server: ex01.contoso.com}\n"), Path("."))
    exporter = Exporter(config, Catalog.load())
    try:
        now = datetime.now(timezone.utc)
        exporter.poller.store.record(ServerResult("ex01.contoso.com", outcome=CollectorOutcome("server", True, 0.1,
                                                                                              now), last_success=now))
        doc = {"schema": 1, "organization": {"mitigations_enabled": True}, "error": None, "servers": [
            {"name": "EX01", "fqdn": "ex01.contoso.com", "mitigations_enabled": False}]}
        exporter.poller.store.record_organization(_org_result(doc))
        body, _ = exporter.metrics_body("")
    finally:
        exporter.stop()
    servers = {s.labels["server"] for f in text_string_to_metric_families(body.decode()) for s in f.samples
               if s.name in ("exchange_up", "exchange_eems_mitigations_enabled") and "server" in s.labels}
    assert servers == {"ex01.contoso.com"}, servers


# ---------------------------------------------------------------- 5. a discovered FQDN is not checked as a host name


@pytest.mark.parametrize("fqdn", ["svc@evil.example/x?y", "evil.example:443"])
def test_a_discovered_fqdn_that_is_not_a_host_name_never_becomes_a_poll_address(fqdn):
    """exporter/addresses.py: one rule for host names "wherever the value comes from (the configuration, or Active
    Directory through the organization collector)". Get-ExchangeServer's Fqdn reached Target.address unchecked;
    `evil.example:443` was bracketed as an IPv6 address, and the poll raised ValueError and left no result."""
    from exporter.addresses import is_host
    doc = {"schema": 1, "error": None, "servers": [{"name": "EX07", "fqdn": fqdn}]}
    facts = parse_organization_output(json.dumps(doc).encode())
    assert facts.servers[0].fqdn is None
    config = load_config_text(minimal_config("organization: {server: ex01.contoso.com, discover_servers: true}\n"),
                              Path("."))
    target = Targets(config, facts.servers).get("EX07")
    assert is_host(target.address) and target.endpoint == "https://EX07:5986/wsman"


def test_an_unexpected_error_before_a_poll_connects_is_its_internal_error(monkeypatch):
    """An error other than a PollFailure raised in Connections.lease (Endpoint.parse's ValueError for the FQDN
    above) escaped Poller._poll: poll_server raised, nothing was recorded, the server never got exchange_up 0 and
    /-/ready never turned ready."""
    def refuse(*args, **kwargs):
        raise ValueError("not an endpoint")

    monkeypatch.setattr("exporter.connections.connect", refuse)
    exporter = Exporter(load_config_text(minimal_config(), Path(".")), Catalog.load())
    try:
        result = exporter.poller.poll_server("ex01.contoso.com")
    finally:
        exporter.stop()
    assert (result.outcome.success, result.outcome.error_reason) == (False, "internal_error")


# ---------------------------------------------------------------- 6. an exporter that knows no server


def _body_samples(exporter: Exporter) -> list[tuple[str, dict[str, str], float]]:
    body, _ = exporter.metrics_body("text/plain")
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(body.decode())
            for s in family.samples]


def test_an_exporter_that_knows_no_server_pages(monkeypatch):
    """Discovery only (no `servers:`, which check-config accepts) and the organization collector failing (double_hop:
    WinRS over NTLM, the default) or listing nothing: the exporter polls no server, so no exchange_up, no per-server
    alert, `up` 1. Before, only ExchangeOrganizationCollectorFailing, a warning ticket, said anything while the whole
    fleet went unwatched; no critical alert held on the exporter's /metrics."""
    monkeypatch.setenv(PASSWORD_ENV, "a password")
    text = minimal_config().replace("servers:\n  - ex01.contoso.com\n", "") + \
        "organization: {server: ex01.contoso.com, discover_servers: true}\n"
    exporter = Exporter(load_config_text(text, Path(".")), Catalog.load())
    assert exporter.targets() == ()
    critical = {f.alert for f in alerts.firing(_body_samples(exporter)) if f.severity == "critical"}
    assert critical, "nothing would page"

    organization = exporter.runtime.current().config.organization
    assert exporter.runtime.discovered(organization, (discovered("EX07", fqdn="ex07.contoso.com"),))
    assert {f.alert for f in alerts.firing(_body_samples(exporter)) if f.severity == "critical"} == set()


def test_discovered_servers_left_out_by_max_servers_are_logged(tmp_path, caplog):
    """Configured plus discovered servers beyond limits.max_servers were dropped without a word (a `break`): the
    admin saw fewer servers and no reason. Now a warning says how many, once per new list."""
    runtime, _, _ = runtime_for(tmp_path, DISCOVERING + "limits: {max_servers: 2}\n")
    organization = runtime.current().config.organization
    listed = tuple(discovered(f"EX{n:02}", fqdn=f"ex{n:02}.contoso.com") for n in range(2, 6))
    with caplog.at_level("WARNING", logger="exporter.runtime"):
        assert runtime.discovered(organization, listed)
        assert not runtime.discovered(organization, listed)  # the same list again: adopted already, no new warning
    assert runtime.current().targets.known == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["3 discovered servers are not polled: limits.max_servers (2) is reached"], warnings


# ---------------------------------------------------------------- 7. a Mailbox server of the organization nothing polls


def _not_polled(exporter: Exporter) -> dict[str, float]:
    return {labels["server"]: value for name, labels, value in _body_samples(exporter)
            if name == "exchange_organization_server_polled"}


def test_a_mailbox_server_the_organization_lists_and_no_configuration_names_raises_a_ticket(monkeypatch):
    """A Mailbox server added to the organization after the exporter was set up, and never added to `servers:`,
    was watched by nothing and said by nothing: its series came from the organization only, and no alert read
    them. A server is matched by its Name, FQDN or address, in any shard; an Edge server (no EEMS) is left out.
    Of two shards, one says each server: the configured ones fall to shard 1, EX03 and EX04 to shard 0."""
    monkeypatch.setenv(PASSWORD_ENV, "a password")
    doc = {"schema": 1, "error": None, "servers": [
        {"name": "EX01", "fqdn": "ex01.contoso.com", "roles": "Mailbox"},  # configured by its FQDN
        {"name": "EX02", "fqdn": "ex02.contoso.com", "roles": "Mailbox"},  # by its address
        {"name": "EX08", "fqdn": "ex08.contoso.com", "roles": "Mailbox, ClientAccess"},  # by its SPN host
        {"name": "EX03", "fqdn": "ex03.contoso.com", "roles": "Mailbox"},
        {"name": "EX04", "fqdn": "ex04.contoso.com"},  # no role said: counted as a Mailbox server
        {"name": "EDGE01", "fqdn": "edge01.contoso.com", "roles": "Edge"},
    ]}
    said = {}
    # a polled server's series carry the name it is polled by, as its exchange_up does
    for shard, expected in (("1/2", {"ex01.contoso.com": 1, "MBX2": 1, "site2-mbx": 1}), ("0/2", {"EX03": 0, "EX04": 0})):
        text = minimal_config(f"organization: {{server: ex01.contoso.com}}\nshard: {shard}\n").replace(
            "  - ex01.contoso.com\n", "  - ex01.contoso.com\n  - {name: MBX2, address: ex02.contoso.com}\n"
            "  - {name: site2-mbx, address: 127.0.0.10, spn_hostname: ex08.contoso.com}\n")
        exporter = Exporter(load_config_text(text, Path(".")), Catalog.load())
        try:
            exporter.poller.store.record_organization(_org_result(doc))
            said[shard] = _not_polled(exporter)
            assert said[shard] == expected
            firing = [f for f in alerts.firing(_body_samples(exporter)) if f.alert == "ExchangeServerNotPolled"]
            assert sorted((f.labels["server"], f.severity, f.hold) for f in firing) == [
                (name, "warning", "1h") for name, value in sorted(expected.items()) if value == 0]
            # the fleet page shows them among the alerts of no row (this instance polls no row of theirs)
            rows, exporter_level = SharedView(exporter).fleet()
            assert sorted(f.labels["server"] for f in exporter_level if f.alert == "ExchangeServerNotPolled") == [
                f.labels["server"] for f in sorted(firing, key=lambda f: f.labels["server"])]
            page = pages.fleet(rows, exporter_level, None, 1, "0", "EX01", lambda text: text).decode()
            assert all(f"ExchangeServerNotPolled</a> server {f.labels['server']} " in page for f in firing)
        finally:
            exporter.stop()
    assert said["0/2"].keys().isdisjoint(said["1/2"])


def test_a_discovered_server_is_polled_unless_max_servers_left_it_out(tmp_path):
    runtime, _, _ = runtime_for(tmp_path, DISCOVERING + "limits: {max_servers: 2}\n")
    organization = runtime.current().config.organization
    assert runtime.discovered(organization, tuple(discovered(f"EX{n:02}", fqdn=f"ex{n:02}.contoso.com")
                                                  for n in range(2, 5)))
    names = runtime.current().targets.names
    assert [any(key in names for key in (f"ex{n:02}", f"ex{n:02}.contoso.com")) for n in range(2, 5)] == [
        True, False, False]


def test_two_sites_polling_each_others_servers_by_fqdn_raise_no_ticket(monkeypatch, tmp_path):
    """Two exporters, one per site, each with the organization collector and a `servers:` list built by FQDN (the
    README's command): each lists the other site's Mailbox servers as not polled, under Get-ExchangeServer's Name
    (EX06), while the exporter that polls it says exchange_up{server="ex06.contoso.com"}. `unless on(server)
    exchange_up` never matched the two, so every server of the other site raised ExchangeServerNotPolled after an
    hour; only EX07, which neither site polls, may. Evaluated by promtool over the two exporters' own series."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found on PATH (Debian package 'prometheus'); the rule cannot be evaluated")
    monkeypatch.setenv(PASSWORD_ENV, "a password")
    doc = {"schema": 1, "error": None, "servers": [
        {"name": name, "fqdn": f"{name.lower()}.contoso.com", "roles": "Mailbox"} for name in ("EX01", "EX06", "EX07")]}
    series = []
    for job, fqdn in (("exchange-eems-site1", "ex01.contoso.com"), ("exchange-eems-site2", "ex06.contoso.com")):
        text = minimal_config("organization: {server: %s}\n" % fqdn).replace("ex01.contoso.com", fqdn)
        exporter = Exporter(load_config_text(text, Path(".")), Catalog.load())
        try:
            exporter.poller.store.record_organization(_org_result(doc))
            for name, labels, value in _body_samples(exporter):
                if name == "exchange_organization_server_polled":
                    series.append((name, {**labels, "job": job, "instance": f"{job}:10061"}, value))
        finally:
            exporter.stop()
        series.append(("exchange_up", {"job": job, "instance": f"{job}:10061", "server": fqdn}, 1))
    rule_file = ROOT / "alerts" / "exchange-eems.rules.yml"
    rule = next(r for g in yaml.safe_load(rule_file.read_text())["groups"] for r in g["rules"]
                if r.get("alert") == "ExchangeServerNotPolled")
    suite = {"rule_files": [str(rule_file)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [{"series": name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}",
                          "values": f"{value:g}x150"} for name, labels, value in series],
        "alert_rule_test": [{"eval_time": "2h", "alertname": "ExchangeServerNotPolled", "exp_alerts": [
            {"exp_labels": {**labels, "severity": "warning"},
             "exp_annotations": {key: re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m[1]], text)
                                 for key, text in rule["annotations"].items()}}
            for name, labels, value in series
            if name == "exchange_organization_server_polled" and labels["server"] == "EX07"]}]}]}
    assert len(suite["tests"][0]["alert_rule_test"][0]["exp_alerts"]) == 2, series
    path = tmp_path / "two_sites.test.yml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    result = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]


def test_each_organization_series_comes_from_one_shard(monkeypatch):
    """Three replicas (--shard K/3) of one configuration each run the organization collector, and each wrote every
    server's organization series and the organization's own setting: Prometheus held each three times (one per
    instance), so ExchangeEEMSMitigationBlocked, ExchangeServerNotPolled or a disabled organization setting fired
    three alerts for one server, and the fleet dashboard counted each blocked mitigation three times. Now a server's
    series come from the instance that polls it (by the name it polls it by), a server nothing polls from the shard
    its Name falls to, and the organization's setting from shard 0."""
    monkeypatch.setenv(PASSWORD_ENV, "a password")
    configured = [f"ex{n:02}.contoso.com" for n in range(1, 7)]
    listed = [f"EX{n:02}" for n in range(1, 13)]  # EX07-EX12: no configuration names them
    doc = {"schema": 1, "organization": {"mitigations_enabled": False}, "error": None, "servers": [
        {"name": name, "fqdn": f"{name.lower()}.contoso.com", "roles": "Mailbox", "mitigations_enabled": True,
         "mitigations_blocked": ["M1"]} for name in listed]}
    said: dict[tuple, list[str]] = {}
    for index in range(3):
        text = minimal_config(f"shard: {index}/3\norganization: {{server: ex01.contoso.com}}\n").replace(
            "  - ex01.contoso.com\n", "".join(f"  - {name}\n" for name in configured))
        exporter = Exporter(load_config_text(text, Path(".")), Catalog.load())
        try:
            now = datetime.now(timezone.utc)
            polled = [target.name for target in exporter.targets()]
            for name in polled[:-1]:  # the last of its shard not polled yet: its series are still this shard's
                exporter.poller.store.record(ServerResult(name, outcome=CollectorOutcome("server", True, 0.1, now),
                                                          last_success=now))
            exporter.poller.store.record_organization(_org_result(doc))
            for name, labels, value in _body_samples(exporter):
                if name.startswith(("exchange_eems_", "exchange_organization_")):
                    server = labels.get("server", "").lower().split(".")[0]  # EX05 or ex05.contoso.com: one server
                    key = (name, server, tuple(sorted((k, v) for k, v in labels.items() if k != "server")))
                    said.setdefault(key, []).append(index)
        finally:
            exporter.stop()
    assert {key: who for key, who in said.items() if len(who) != 1} == {}
    assert sorted(server for name, server, _ in said if name == "exchange_eems_mitigation_blocked") == [
        name.lower() for name in listed], "every listed server, once"
    assert sorted(server for name, server, _ in said if name == "exchange_organization_server_polled") == [
        name.lower() for name in listed]
    assert [who for (name, _, labels), who in said.items()
            if name == "exchange_eems_mitigations_enabled" and ("scope", "organization") in labels] == [[0]]


@pytest.mark.parametrize("field, value", [
    ("mitigations_blocked", [{"Id": "M1"}]),  # objects where IDs are expected: its blocked list is unknown
    ("mitigations_enabled", "yes"),
    ("fqdn", 42),
])
def test_a_field_of_the_wrong_type_in_the_organization_output_is_said(monkeypatch, field, value):
    """In a server's output a field of the wrong type is a partial failure (part "parse"); in the organization
    output it was left out silently, so a server's MitigationsBlocked read as "none blocked" with nothing to say
    that it had not been read."""
    monkeypatch.setenv(PASSWORD_ENV, "a password")
    exporter = Exporter(load_config_text(minimal_config("organization: {server: ex01.contoso.com}\n"), Path(".")),
                        Catalog.load())
    try:
        partial = {"collector": "organization", "organization": "default", "part": "parse", "reason": "other"}
        organization = {"mitigations_enabled": True}  # without it, part "settings" is said too
        for doc, said in (({"schema": 1, "error": None, "organization": organization,
                            "servers": [{"name": "EX01", field: value}]}, True),
                          ({"schema": 1, "error": None, "organization": organization, "servers": [{"name": "EX01"}]},
                           False)):
            exporter.poller.store.record_organization(_org_result(doc))
            samples = [(name, labels) for name, labels, _ in _body_samples(exporter)
                       if name == "exchange_collector_partial_failure"]
            assert samples == ([("exchange_collector_partial_failure", partial)] if said else [])
    finally:
        exporter.stop()


@pytest.mark.parametrize("value", ["yes", "True", 2, 1.0, [True], {"value": True}])
def test_the_organizations_mitigations_enabled_of_the_wrong_type_is_said_once_and_unknown(monkeypatch, value):
    """Get-OrganizationConfig's MitigationsEnabled of the wrong type ("yes", 2) was said twice: by parse (part "parse",
    reason "other") and as missing (part "settings", reason "not_found"), whose alert text blames a build without
    EEMS. One bad field is one partial failure, the parse one; the setting is unknown (no
    exchange_eems_mitigations_enabled), never read as enabled or disabled. Absent or null, it is still "settings"."""
    monkeypatch.setenv(PASSWORD_ENV, "a password")
    exporter = Exporter(load_config_text(minimal_config("organization: {server: ex01.contoso.com}\n"), Path(".")),
                        Catalog.load())
    try:
        org = {"collector": "organization", "organization": "default"}
        cases = [({"mitigations_enabled": value}, "parse", "other"), ({"mitigations_enabled": None}, "settings",
                 "not_found"), ({}, "settings", "not_found")]
        if not isinstance(value, dict):  # the organization object itself of the wrong type
            cases.append((value, "parse", "other"))
        for organization, part, reason in cases:
            exporter.poller.store.record_organization(_org_result(
                {"schema": 1, "error": None, "organization": organization, "servers": [{"name": "EX01"}]}))
            samples = _body_samples(exporter)
            assert [labels for name, labels, _ in samples if name == "exchange_collector_partial_failure"] == [
                {**org, "part": part, "reason": reason}], organization
            assert not [labels for name, labels, _ in samples if name == "exchange_eems_mitigations_enabled"]
    finally:
        exporter.stop()


@pytest.mark.parametrize("configured", ["{name: MBX2, address: ex02.contoso.com}",
                                        "{name: MBX2, address: 127.0.0.10, spn_hostname: ex02.contoso.com}"])
def test_organization_series_carry_the_name_the_server_is_polled_by_whichever_name_matched(monkeypatch, configured):
    """The organization lists EX02 (ex02.contoso.com), configured as MBX2 by its address or SPN host. Its
    organization series were labelled server="EX02" while its exchange_up said server="MBX2" (the label came from
    the poll results' names only, which a name matched, an address or SPN host never), and before its first poll
    even a server matched by name took the organization's Name."""
    monkeypatch.setenv(PASSWORD_ENV, "a password")
    text = minimal_config("organization: {server: ex01.contoso.com}\n").replace(
        "  - ex01.contoso.com\n", f"  - ex01.contoso.com\n  - {configured}\n")
    exporter = Exporter(load_config_text(text, Path(".")), Catalog.load())
    try:
        doc = {"schema": 1, "error": None, "servers": [
            {"name": "EX01", "fqdn": "ex01.contoso.com", "roles": "Mailbox", "mitigations_blocked": ["M1"]},
            {"name": "EX02", "fqdn": "ex02.contoso.com", "roles": "Mailbox", "mitigations_blocked": ["M1"]}]}
        exporter.poller.store.record_organization(_org_result(doc))
        blocked = sorted(labels["server"] for name, labels, _ in _body_samples(exporter)
                         if name == "exchange_eems_mitigation_blocked")
        assert blocked == ["MBX2", "ex01.contoso.com"]
    finally:
        exporter.stop()


@pytest.mark.parametrize("roles", ["Edge", "ClientAccess"])
def test_discovery_leaves_out_a_server_without_the_mailbox_role(tmp_path, roles):
    """Get-ExchangeServer lists subscribed Edge Transport servers (ServerRole "Edge") and, in an Exchange 2013
    organization, Client Access servers; neither runs EEMS, and an Edge server is outside the domain. Discovery
    adopted every server listed: the Edge server was polled by FQDN with the organization's domain credential, was
    refused or unreachable, and raised ExchangeExporterCannotPoll (critical after an hour) while its refusals counted
    towards pausing the credential. A Mailbox server, and one whose role is not said, are still adopted."""
    doc = {"schema": 1, "organization": {"mitigations_enabled": True}, "error": None, "servers": [
        {"name": "EX02", "fqdn": "ex02.contoso.com", "roles": "Mailbox"},
        {"name": "EX03", "fqdn": "ex03.contoso.com", "roles": "Mailbox, ClientAccess"},
        {"name": "EX04", "fqdn": "ex04.contoso.com", "roles": ""},
        {"name": "EDGE01", "fqdn": "edge01.perimeter.contoso.com", "roles": roles},
    ]}
    facts = parse_organization_output(json.dumps(doc).encode())
    runtime, _, _ = runtime_for(tmp_path, DISCOVERING)
    assert runtime.discovered(runtime.current().config.organization, facts.servers)
    targets = runtime.current().targets
    assert [t.name for t in targets.polled if t.discovered] == ["EX02", "EX03", "EX04"]
    assert targets.get("EDGE01") is None and "edge01.perimeter.contoso.com" not in targets.names


def test_discovery_and_the_organizations_series_leave_out_exchange_2010(tmp_path, monkeypatch):
    """Exchange 2010 (AdminDisplayVersion 14.x) shares an organization with 2016: a Mailbox server that never has
    EEMS and whose PowerShell 2.0 runs no collection script. Discovered, it raised ExchangeExporterCannotPoll;
    left out of discovery only, it would be ExchangeServerNotPolled forever. 2013 (15.0) and a version not said or
    not read are kept."""
    doc = {"schema": 1, "organization": {"mitigations_enabled": True}, "error": None, "servers": [
        {"name": "EX2010", "fqdn": "ex2010.contoso.com", "roles": "Mailbox", "admin_display_version":
            "Version 14.3 (Build 123.4)"},
        {"name": "EX2013", "fqdn": "ex2013.contoso.com", "roles": "Mailbox", "admin_display_version":
            "Version 15.0 (Build 1497.2)"},
        {"name": "EX02", "fqdn": "ex02.contoso.com", "roles": "Mailbox"},
        {"name": "EX03", "fqdn": "ex03.contoso.com", "roles": "Mailbox", "admin_display_version": "unreadable"},
    ]}
    facts = parse_organization_output(json.dumps(doc).encode())
    runtime, _, _ = runtime_for(tmp_path, DISCOVERING)
    assert runtime.discovered(runtime.current().config.organization, facts.servers)
    assert sorted(t.name for t in runtime.current().targets.polled if t.discovered) == ["EX02", "EX03", "EX2013"]
    monkeypatch.setenv(PASSWORD_ENV, "a password")
    exporter = Exporter(load_config_text(minimal_config("organization: {server: ex01.contoso.com}\n"), Path(".")),
                        Catalog.load())
    try:
        exporter.poller.store.record_organization(_org_result(doc))
        listed = sorted(labels["name"] for name, labels, _ in _body_samples(exporter)
                        if name == "exchange_organization_server_polled")
        assert listed == ["EX02", "EX03", "EX2013"]
    finally:
        exporter.stop()


def test_a_version_of_thousands_of_digits_is_a_version_not_read(tmp_path, monkeypatch):
    """AdminDisplayVersion is text from the organization server's output, of any length. A major version of
    thousands of digits made int() raise (Python's 4,300-digit limit): every scrape of /metrics and the discovery
    failed for as long as the organization said it. A version that no Exchange has is one not read: kept."""
    doc = {"schema": 1, "organization": {"mitigations_enabled": True}, "error": None, "servers": [
        {"name": "EX02", "fqdn": "ex02.contoso.com", "roles": "Mailbox",
         "admin_display_version": "Version " + "1" * 5000 + ".2 (Build 1544.36)"}]}
    facts = parse_organization_output(json.dumps(doc).encode())
    runtime, _, _ = runtime_for(tmp_path, DISCOVERING)
    assert runtime.discovered(runtime.current().config.organization, facts.servers)
    assert [t.name for t in runtime.current().targets.polled if t.discovered] == ["EX02"]
    monkeypatch.setenv(PASSWORD_ENV, "a password")
    exporter = Exporter(load_config_text(minimal_config("organization: {server: ex01.contoso.com}\n"), Path(".")),
                        Catalog.load())
    try:
        exporter.poller.store.record_organization(_org_result(doc))
        listed = [labels["name"] for name, labels, _ in _body_samples(exporter)
                  if name == "exchange_organization_server_polled"]
        assert listed == ["EX02"]
    finally:
        exporter.stop()


def test_no_eems_series_for_a_server_without_the_mailbox_role(monkeypatch):
    """EEMS never runs on an Edge Transport server (HealthChecker reads Mitigations* only where IsEdgeServer is
    false). The organization's series of an Edge server were said all the same: its AD object's MitigationsEnabled
    false raised ExchangeEEMSMitigationsDisabled, a blocked ID ExchangeEEMSMitigationBlocked, for a server that has
    no EEMS to disable. A Mailbox server's series are unchanged."""
    monkeypatch.setenv(PASSWORD_ENV, "a password")
    exporter = Exporter(load_config_text(minimal_config("organization: {server: ex01.contoso.com}\n"), Path(".")),
                        Catalog.load())
    try:
        entry = {"mitigations_enabled": False, "mitigations_blocked": ["M1"], "mitigations_applied": ["PING1"],
                 "data_collection_enabled": False}
        doc = {"schema": 1, "organization": {"mitigations_enabled": True}, "error": None, "servers": [
            {"name": "EX01", "fqdn": "ex01.contoso.com", "roles": "Mailbox", **entry},
            {"name": "EDGE01", "fqdn": "edge01.perimeter.contoso.com", "roles": "Edge", **entry}]}
        exporter.poller.store.record_organization(_org_result(doc))
        servers = {labels.get("server") for name, labels, _ in _body_samples(exporter)
                   if name.startswith("exchange_eems_") or name == "exchange_organization_server_polled"}
    finally:
        exporter.stop()
    assert servers == {None, "ex01.contoso.com"}  # None: the organization's own MitigationsEnabled
