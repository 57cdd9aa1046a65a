"""A fleet-wide cause is ONE notification: 40 simulated servers behind the same TLS-inspecting proxy, every one of
them failing its EEMS fetches the same way, page once.

Real programs on loopback, as in test_integration.py: the simulated fleet, the exporter, Debian's Prometheus with
the shipped rules (`for:` set to 0s) and Alertmanager with examples/alertmanager-route.yml merged into someone's
existing tree as docs/alerts.md says. Only Alertmanager's timing is shortened; its grouping is the shipped one.
Before the sub-route, examples/alertmanager.yml grouped by [alertname, job, server]: 40 pages.
"""

from __future__ import annotations

import os
from contextlib import ExitStack

import yaml

from ..artifacts.test_examples import EXISTING, ROUTE, merged_into
from ..conftest import PASSWORD, PASSWORD_ENV, SimulatedFleet, free_port, relocate
from .test_integration import (JOB, RULES, Program, Webhook, alertmanager_command, exporter_command, get_json,
                               prometheus_command, prometheus_config, rules_without_for, wait_until, with_test_timing)

SERVERS = 40
# Longer than the time all 40 first polls take to reach Alertmanager (one 10 s poll interval, a 2 s scrape and a
# 2 s evaluation), as the shipped 1m is longer than a typical spread of failures.
GROUP_WAIT = "25s"


def fleet_behind_one_proxy() -> dict:
    return {
        "organization": {"name": "Contoso", "double_hop": False},
        "servers": [{"name": f"EXFLEET{i:02d}", "address": "127.0.0.1", "build": "15.2.2562.53",
                     "eems_failure": "tls_validation", "internet_web_proxy": "http://proxy.contoso.com:8080/"}
                    for i in range(1, SERVERS + 1)],
    }


def test_forty_servers_failing_the_same_way_page_once(tmp_path):
    with ExitStack() as cleanup:
        fleet = cleanup.enter_context(SimulatedFleet(relocate(fleet_behind_one_proxy())))
        webhook = Webhook()
        cleanup.callback(webhook.stop)
        exporter_port, prometheus_port, alertmanager_port = free_port(), free_port(), free_port()
        (tmp_path / "exporter.yml").write_text(fleet.config_text(interval="10s", timeout="8s", concurrency=16))
        rule_file = tmp_path / "rules.yml"
        rule_file.write_text(rules_without_for(RULES.read_text()))
        (tmp_path / "prometheus.yml").write_text(prometheus_config(exporter_port, alertmanager_port, rule_file))

        config = merged_into(EXISTING, yaml.safe_load(ROUTE.read_text()))
        exchange_route = config["route"]["routes"][0]
        with_test_timing(exchange_route, GROUP_WAIT)
        for receiver in config["receivers"]:
            for hook in receiver.get("webhook_configs", []):
                hook["url"] = f"{webhook.url}/{receiver['name']}"
        (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config))

        def start(name: str, args: list[str], env: dict[str, str] | None = None) -> Program:
            program = Program(name, args, tmp_path, env)
            cleanup.callback(program.stop)
            return program

        programs = [
            start("alertmanager", alertmanager_command(tmp_path, alertmanager_port)),
            start("exporter", exporter_command(tmp_path / "exporter.yml", f"127.0.0.1:{exporter_port}"),
                  env={**os.environ, PASSWORD_ENV: PASSWORD}),
            start("prometheus", prometheus_command(tmp_path, prometheus_port)),
        ]
        programs[0].wait_ready(f"http://127.0.0.1:{alertmanager_port}/-/ready")
        programs[2].wait_ready(f"http://127.0.0.1:{prometheus_port}/-/ready")

        def pages() -> list[dict]:
            with webhook.lock:
                return [payload for path, payload in webhook.notifications if path == "/exchange-pager"]

        def firing_in_prometheus() -> int:
            alerts = get_json(f"http://127.0.0.1:{prometheus_port}/api/v1/alerts")["data"]["alerts"]
            return sum(1 for a in alerts if a["labels"]["alertname"] == "ExchangeEEMSFetchErrors"
                       and a["state"] == "firing" and a["labels"]["job"] == JOB)

        assert wait_until(lambda: bool(pages()), 120, programs), \
            f"no page within 120 s; {firing_in_prometheus()} alerts firing; exporter log:\n{programs[1].log_tail()}"
        assert firing_in_prometheus() == SERVERS

        def settled() -> bool:
            """Alertmanager holds every firing alert, and the pages so far name them all: no alert is left to join
            the group and cause a second notification (after group_interval)."""
            held = {a["labels"]["server"] for a in get_json(f"http://127.0.0.1:{alertmanager_port}/api/v2/alerts")
                    if a["labels"]["alertname"] == "ExchangeEEMSFetchErrors"}
            paged = {a["labels"]["server"] for p in pages() for a in p["alerts"] if a["status"] == "firing"}
            return len(held) == SERVERS and held <= paged

        assert wait_until(settled, 60, programs), "Alertmanager did not page for every firing alert"
        delivered = pages()
        assert len(delivered) == 1, [(p["groupLabels"], len(p["alerts"])) for p in delivered]
        page = delivered[0]
        assert page["groupLabels"] == {"alertname": "ExchangeEEMSFetchErrors", "reason": "tls_validation"}
        assert {a["labels"]["server"] for a in page["alerts"] if a["status"] == "firing"} == \
            {f"EXFLEET{i:02d}" for i in range(1, SERVERS + 1)}
