"""Every demo server polled through the real exporter (WinRM over HTTP with NTLM and message encryption,
against the simulator), and the metrics checked against what the scenario says about each server."""

from __future__ import annotations

import subprocess
import urllib.request

import pytest

from exporter.exporter import Exporter


from ..conftest import SimulatedFleet, demo_scenario, poll_all, relocate, samples, serving



def value(metrics, metric, **labels):
    return metrics.get((metric, frozenset(labels.items())))


@pytest.fixture(scope="module")
def demo():
    """The demo fleet polled once by an exporter that serves /metrics on loopback. The organization collector
    succeeds here, as where the session can reach Active Directory (the shipped demo's double_hop is in
    test_demo.py)."""
    scenario = demo_scenario()
    scenario["organization"]["double_hop"] = False
    with SimulatedFleet(relocate(scenario)) as fleet:
        from exporter.catalog import Catalog

        exporter = Exporter(fleet.config(), Catalog.load())
        poll_all(exporter.poller)
        with serving(exporter) as port:
            url = f"http://127.0.0.1:{port}"
            with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
                text = response.read().decode()
            yield fleet, exporter, url, text


def test_every_demo_server_is_reported(demo):
    fleet, _, _, text = demo
    metrics = samples(text)
    for name in fleet.hosts:
        expected = 0 if name == "EX-SE05-NOWINRM" else 1
        assert value(metrics, "exchange_up", server=name) == expected, name


def test_cutoffs_match_the_scenario_builds(demo):
    metrics = samples(demo[3])
    expected = {
        "EX-SE01": (1, 1), "EX19-CU15ESU": (1, 1), "EX19-CU14": (1, 0), "EX19-CU12": (0, 0),
        "EX16-CU23": (1, 0), "EX16-CU22": (0, 0),
    }
    for server, (c2023, c2026) in expected.items():
        assert value(metrics, "exchange_eems_certificate_cutoff_compliant", server=server, cutoff="2023-03") == c2023
        assert value(metrics, "exchange_eems_certificate_cutoff_compliant", server=server, cutoff="2026-06") == c2026


def test_build_info_and_dates(demo):
    metrics = samples(demo[3])
    assert value(metrics, "exchange_build_info", server="EX19-CU14", product="Exchange2019", cu="CU14",
                 update="Oct25SU", version="15.2.1544.36", source="exsetup") == 1
    assert value(metrics, "exchange_build_release_timestamp_seconds", server="EX19-CU14") == 1760400000  # 2025-10-14
    assert value(metrics, "exchange_build_superseded_timestamp_seconds", server="EX19-CU14") is not None
    assert value(metrics, "exchange_product_support_end_timestamp_seconds", server="EX-SE01") is None
    assert value(metrics, "exchange_build_known", server="EX16-CU22") == 1


def test_update_path_matches_the_catalog(demo):
    """The servicing verdict and next build on /metrics are the catalog's for each demo server's build."""
    from exporter.catalog import Catalog, today_utc

    fleet, _, _, text = demo
    metrics = samples(text)
    catalog = Catalog.load()
    for name, host in fleet.hosts.items():
        if name == "EX-SE05-NOWINRM":
            continue
        verdict = catalog.verdict(host.run.server.build, today=today_utc())
        target = verdict.next_build
        assert value(metrics, "exchange_build_update_path_info", server=name, servicing=verdict.servicing,
                     next_product=target.product if target else "", next_cu=target.cu if target else "",
                     next_update=target.update if target else "", next_version=target.version if target else "") == 1


def test_eems_failures_carry_their_reason(demo):
    metrics = samples(demo[3])
    for server, reason in (("EX19-CU14", "unknown_issuer"), ("EX19-CU12", "untrusted_endpoint"),
                           ("EX16-CU22", "untrusted_endpoint"), ("EX-SE04-PROXY", "tls_validation")):
        assert value(metrics, "exchange_eems_last_error_info", server=server, reason=reason) == 1, server
        assert value(metrics, "exchange_eems_fetch_errors", server=server, reason=reason) >= 20, server
        assert value(metrics, "exchange_eems_fetch_errors", server=server, reason="other") == 0, server
        assert value(metrics, "exchange_eems_last_success_timestamp_seconds", server=server) is None, server
    for server in ("EX-SE01", "EX19-CU15ESU", "EX-SE03-BLOCKED"):
        assert value(metrics, "exchange_eems_last_success_timestamp_seconds", server=server) is not None, server
        assert sum(value(metrics, "exchange_eems_fetch_errors", server=server, reason=r)
                   for r in ("untrusted_endpoint", "unknown_issuer", "tls_validation", "signature_invalid", "other")) == 0


def test_edge_and_service_states(demo):
    metrics = samples(demo[3])
    assert value(metrics, "exchange_eems_supported", server="EDGE01") == 0
    assert value(metrics, "exchange_service_state", server="EDGE01", name="MSExchangeMitigation", state="running") is None
    running = dict(server="EX-SE01", name="MSExchangeMitigation")
    assert value(metrics, "exchange_service_state", **running, state="running") == 1
    assert value(metrics, "exchange_service_start_mode", **running, start_mode="auto") == 1
    stopped = dict(server="EX-SE02-STOPPED", name="MSExchangeMitigation")
    assert value(metrics, "exchange_service_state", **stopped, state="stopped") == 1
    assert value(metrics, "exchange_service_state", **stopped, state="running") == 0
    # the stopped service has made no check for about six hours
    last_check = value(metrics, "exchange_eems_last_check_timestamp_seconds", server="EX-SE02-STOPPED")
    healthy_check = value(metrics, "exchange_eems_last_check_timestamp_seconds", server="EX-SE01")
    assert healthy_check - last_check > 4 * 3600


def test_organization_collector(demo):
    metrics = samples(demo[3])
    assert value(metrics, "exchange_collector_success", collector="organization", organization="Contoso") == 1
    assert value(metrics, "exchange_eems_mitigations_enabled", scope="organization", organization="Contoso") == 1
    assert value(metrics, "exchange_eems_mitigation_blocked", server="EX-SE03-BLOCKED", mitigation="M2.1.0") == 1
    assert value(metrics, "exchange_eems_mitigation_applied", server="EX-SE03-BLOCKED", mitigation="PING1") == 1
    assert value(metrics, "exchange_eems_mitigations_enabled", scope="server", server="EX-SE01") == 1
    # the script's ServerRole reaches the exporter: every Mailbox server is listed and polled; Edge has no EEMS
    polled = {dict(labels)["server"]: v for (name, labels), v in metrics.items()
              if name == "exchange_organization_server_polled"}
    assert set(polled.values()) == {1} and "EDGE01" not in polled and "EX-SE01" in polled, polled


def test_unreachable_server_has_a_reason(demo):
    metrics = samples(demo[3])
    assert value(metrics, "exchange_collector_error", collector="server", server="EX-SE05-NOWINRM",
                 reason="connection_refused") == 1
    assert value(metrics, "exchange_collector_success", collector="server", server="EX-SE05-NOWINRM") == 0


def test_no_shell_is_left_open(demo):
    fleet = demo[0]
    assert fleet.fleet.open_shells() == 0


def test_promtool_accepts_the_real_output(demo):
    result = subprocess.run(["promtool", "check", "metrics"], input=demo[3].encode(), capture_output=True,
                            timeout=30)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_openmetrics_is_negotiated(demo):
    request = urllib.request.Request(demo[2] + "/metrics", headers={"Accept": "application/openmetrics-text"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        assert response.read().decode().rstrip().endswith("# EOF")


def test_probe_polls_one_server_now(demo):
    fleet, _, url, _ = demo
    before = fleet.fleet.request_count("EX19-CU12")
    with urllib.request.urlopen(url + "/probe?target=EX19-CU12", timeout=30) as response:
        metrics = samples(response.read().decode())
    assert value(metrics, "exchange_up", server="EX19-CU12") == 1
    assert value(metrics, "exchange_eems_certificate_cutoff_compliant", server="EX19-CU12", cutoff="2023-03") == 0
    assert not any(name.startswith("exchange_exporter_") for name, _ in metrics)  # self metrics stay on /metrics
    assert fleet.fleet.request_count("EX19-CU12") > before


def test_steady_poll_reuses_the_connection(demo):
    """The second poll of a server needs no new NTLM handshake: five WinRS requests."""
    fleet, exporter, _, _ = demo
    exporter.poller.poll_server("EX-SE01")
    before = fleet.fleet.request_count("EX-SE01")
    exporter.poller.poll_server("EX-SE01")
    assert fleet.fleet.request_count("EX-SE01") - before == 5


