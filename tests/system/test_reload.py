"""Configuration reload, as an operator triggers it: `POST /-/reload` on a running exporter, and SIGHUP to a
real `exchange-eems-exporter run` process. A valid file takes effect, a broken one is refused while the old
configuration keeps polling, and `exchange_exporter_config_last_reload_successful` tells which happened."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from exporter.catalog import Catalog
from exporter.config import load_config
from exporter.exporter import Exporter
from simulator.host import Faults

from ..conftest import (
    PASSWORD, PASSWORD_ENV, SimulatedFleet, free_port, poll_all, relocate, samples, serving, stop_process,
)

REPO = Path(__file__).resolve().parents[2]
RELOAD_OK = "exchange_exporter_config_last_reload_successful"
# Names whose first poll falls early in a 10 s interval (exporter.schedule.offset: 0.07 s and 0.13 s), so a real
# exporter process polls them right after it starts instead of most of an interval later.
SCENARIO = {
    "servers": [
        {"name": "EX47", "address": "127.0.0.1", "build": "15.2.2562.53"},
        {"name": "EX78", "address": "127.0.0.1", "build": "15.2.1544.36"},
    ],
}



def up(metrics: dict, server: str) -> float | None:
    return metrics.get(("exchange_up", frozenset({"server": server}.items())))


def reload_ok(metrics: dict) -> float:
    return metrics[(RELOAD_OK, frozenset())]


def scrape(base: str) -> dict:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
        return samples(response.read().decode())


def post_reload(base: str) -> tuple[int, str]:
    request = urllib.request.Request(base + "/-/reload", method="POST", data=b"")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def config_for(fleet: SimulatedFleet, servers: list[str], **poll) -> str:
    """The fleet's config narrowed to some of its servers."""
    raw = yaml.safe_load(fleet.config_text(**poll))
    raw["servers"] = [s for s in raw["servers"] if s["name"] in servers]
    return yaml.safe_dump(raw, sort_keys=False)


BROKEN = "modules: {http: {port: 99999}}\nservers: [EX47]\n"


@pytest.fixture(scope="module")
def fleet():
    with SimulatedFleet(relocate(SCENARIO)) as fleet:
        yield fleet


# ---------------------------------------------------------------- POST /-/reload


@contextlib.contextmanager
def served(path: Path):
    """An exporter loaded from `path`, served on a random loopback port: (exporter, base URL)."""
    exporter = Exporter(load_config(path), Catalog.load())
    with serving(exporter) as port:
        yield exporter, f"http://127.0.0.1:{port}"


def test_reload_over_http(fleet, tmp_path):
    path = tmp_path / "exporter.yml"
    path.write_text(config_for(fleet, ["EX47"]))
    with served(path) as (exporter, base):
        poll_all(exporter.poller)
        metrics = scrape(base)
        assert reload_ok(metrics) == 1
        assert up(metrics, "EX47") == 1 and up(metrics, "EX78") is None

        # invalid: refused with the reason, the running configuration stays
        path.write_text(BROKEN)
        status, body = post_reload(base)
        assert status == 500
        assert "modules.http.port" in body and "running configuration is kept" in body
        assert PASSWORD not in body
        current = exporter.runtime.current()
        assert current.config.servers[0].name == "EX47" and current.targets.get("EX47") is not None
        before = fleet.fleet.request_count("EX47")
        poll_all(exporter.poller)
        assert fleet.fleet.request_count("EX47") > before, "the old configuration stopped polling"
        metrics = scrape(base)
        assert reload_ok(metrics) == 0
        assert up(metrics, "EX47") == 1

        # valid again, with a second server
        path.write_text(config_for(fleet, ["EX47", "EX78"]))
        status, body = post_reload(base)
        assert (status, body) == (200, "configuration reloaded\n")
        assert reload_ok(scrape(base)) == 1
        assert exporter.runtime.current().targets.get("EX78") is not None
        poll_all(exporter.poller)
        metrics = scrape(base)
        assert up(metrics, "EX47") == 1 and up(metrics, "EX78") == 1

        # a server removed from the file leaves /metrics
        path.write_text(config_for(fleet, ["EX78"]))
        assert post_reload(base)[0] == 200
        metrics = scrape(base)
        assert up(metrics, "EX47") is None and up(metrics, "EX78") == 1
        with urllib.request.urlopen(base + "/probe?target=EX78", timeout=30) as response:
            assert response.status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base + "/probe?target=EX47", timeout=30)
        assert refused.value.code == 400  # no longer configured, so no longer probeable


def test_reload_when_the_file_disappeared(fleet, tmp_path):
    path = tmp_path / "exporter.yml"
    path.write_text(config_for(fleet, ["EX47"]))
    with served(path) as (exporter, base):
        path.unlink()
        status, body = post_reload(base)
        assert status == 500 and "does not exist" in body
        assert reload_ok(scrape(base)) == 0
        assert exporter.runtime.current().targets.get("EX47") is not None


# ---------------------------------------------------------------- SIGHUP to a running process


def wait_for(condition, what: str, seconds: float = 25.0):
    """Poll `condition` until it returns something truthy; fail naming `what` when time runs out."""
    deadline = time.monotonic() + seconds
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except (OSError, KeyError) as err:  # not listening yet, or the metric not there yet
            last_error = err
        time.sleep(0.25)
    pytest.fail(f"timed out waiting for {what} (last error: {last_error!r})")


def start_exporter(path: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "exporter", "run", "--config.file", str(path), "--web.listen-address",
         f"127.0.0.1:{port}"],
        cwd=REPO, env={**os.environ, PASSWORD_ENV: PASSWORD}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )


def test_reload_on_sighup(fleet, tmp_path):
    path = tmp_path / "exporter.yml"
    path.write_text(config_for(fleet, ["EX47"], interval="10s", timeout="5s"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = start_exporter(path, port)
    try:
        wait_for(lambda: up(scrape(base), "EX47") == 1, "the first poll of EX47")
        assert reload_ok(scrape(base)) == 1

        path.write_text(BROKEN)
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: reload_ok(scrape(base)) == 0, "the failed reload to show in /metrics")
        assert process.poll() is None, "a bad reload must not stop the exporter"
        assert up(scrape(base), "EX47") == 1

        path.write_text(config_for(fleet, ["EX47", "EX78"], interval="10s", timeout="5s"))
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: reload_ok(scrape(base)) == 1, "the good reload to show in /metrics")
        wait_for(lambda: up(scrape(base), "EX78") == 1, "the first poll of the added server EX78")
    finally:
        stderr = stop_process(process, 15)[1]
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if "level=ERROR" in line]
    assert len(errors) == 1 and "modules.http.port" in errors[0], stderr
    assert "configuration reloaded from" in stderr
    assert PASSWORD not in stderr


def test_sighup_as_soon_as_the_port_opens(tmp_path):
    """A config-reloader sidecar may signal the moment the exporter answers: that must not kill it."""
    path = tmp_path / "exporter.yml"
    path.write_text("modules: {default: {username: u, password_env: %s, scheme: http}}\n"
                    "servers: [{name: EX47, address: 127.0.0.1, port: %d}]\n" % (PASSWORD_ENV, free_port()))
    port = free_port()
    process = start_exporter(path, port)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.002)
        signalled = time.time()  # the initial load happened before the port opened, so before this
        process.send_signal(signal.SIGHUP)
        reloaded = RELOAD_OK.replace("successful", "success_timestamp_seconds")
        wait_for(lambda: process.poll() is not None
                 or scrape(f"http://127.0.0.1:{port}")[(reloaded, frozenset())] >= signalled, "the reload")
        assert process.poll() is None, f"SIGHUP killed the exporter: {process.returncode}"
    finally:
        stderr = stop_process(process, 15)[1]
    assert process.returncode == 0, stderr
    assert "configuration reloaded from" in stderr


# ---------------------------------------------------------------- issue 10: stale results, failing reloads


def test_a_re_added_server_shows_no_stale_result(fleet, tmp_path):
    """Removing a server drops its result; adding it back must not resurrect `exchange_up 1` before a poll."""
    path = tmp_path / "exporter.yml"
    path.write_text(config_for(fleet, ["EX47", "EX78"]))
    exporter = Exporter(load_config(path), Catalog.load())
    poll_all(exporter.poller)
    path.write_text(config_for(fleet, ["EX47"]))
    assert exporter.reload()[0]
    fleet.hosts["EX78"].faults.refuse_connections = True  # it went away; its old result must not come back
    try:
        path.write_text(config_for(fleet, ["EX47", "EX78"]))
        assert exporter.reload()[0]
        body, _ = exporter.metrics_body("")
        assert up(samples(body.decode()), "EX78") is None
    finally:
        fleet.hosts["EX78"].faults.refuse_connections = False
        exporter.stop()


BOMB = """modules:
  x:
    port:
      - &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
      - &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
      - &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
      - &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
      - &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
      - &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
      - &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
      - &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
servers: [EX47]
"""


def test_a_yaml_alias_bomb_is_a_short_failed_reload(fleet, tmp_path):
    path = tmp_path / "exporter.yml"
    path.write_text(config_for(fleet, ["EX47"]))
    with served(path) as (_, base):
        for bomb in (BOMB, BOMB.replace("    port:", "    username:")):
            path.write_text(bomb)
            started = time.monotonic()
            status, body = post_reload(base)
            assert status == 500 and len(body) < 1000, body[:200]
            assert time.monotonic() - started < 5
            assert reload_ok(scrape(base)) == 0


def test_any_reload_failure_is_a_failed_reload(fleet, tmp_path):
    """Not only ConfigError: whatever goes wrong while loading leaves the old configuration and says so."""
    path = tmp_path / "exporter.yml"
    path.write_text(config_for(fleet, ["EX47"]))
    exporter = Exporter(load_config(path), Catalog.load())
    path.write_bytes(b"poll: " + b"[" * 100_000)  # deeper than the YAML parser's recursion
    ok, message = exporter.reload()
    assert not ok and exporter.runtime.last_reload_successful is False
    assert len(message) < 1000 and "running configuration is kept" in message


# ---------------------------------------------------------------- issue 19: a frozen runtime


DISCOVERY = {
    "organization": {"name": "Contoso", "domain": "contoso.com", "server": "EX47"},
    "servers": [{"name": name, "address": "127.0.0.1", "build": "15.2.2562.53"} for name in ("EX47", "EX78", "EX03")],
}


@pytest.fixture(scope="module")
def organization_fleet():
    scenario = relocate(DISCOVERY)
    for server in scenario["servers"]:
        server["fqdn"] = server["address"]  # Get-ExchangeServer's FQDN is how a discovered server is reached
    with SimulatedFleet(scenario) as fleet:
        yield fleet


def discovery_config(fleet: SimulatedFleet, *, discover: bool = True, timeout: str = "15s") -> str:
    """EX47 listed, the others left to discovery through the organization collector on EX47."""
    raw = yaml.safe_load(fleet.config_text(timeout=timeout))
    raw["servers"] = [s for s in raw["servers"] if s["name"] == "EX47"]
    raw["modules"]["http"]["port"] = raw["servers"][0]["port"]
    raw["organization"] = {"name": "Contoso", "server": "EX47", "discover_servers": discover}
    return yaml.safe_dump(raw, sort_keys=False)


def test_an_unchanged_reload_changes_nothing_and_discovered_servers_outlive_a_reload(organization_fleet, tmp_path):
    """Before: every reload built the targets afresh, so the discovered servers and their series vanished from
    /metrics until the next organization poll (an `absent()` alert would fire on a plain SIGHUP)."""
    path = tmp_path / "exporter.yml"
    path.write_text(discovery_config(organization_fleet))
    exporter = Exporter(load_config(path), Catalog.load())
    try:
        poll_all(exporter.poller)
        before = exporter.runtime.current()
        metrics = exchange_samples(exporter)
        assert [up(metrics, name) for name in ("EX47", "EX78", "EX03")] == [1, 1, 1]

        assert exporter.reload() == (True, "configuration unchanged")
        assert exporter.runtime.current() is before
        assert exchange_samples(exporter) == {**metrics, **reload_time(exporter)}

        path.write_text(discovery_config(organization_fleet, timeout="14s"))  # the organization section stays
        assert exporter.reload() == (True, "configuration reloaded")
        current = exporter.runtime.current()
        assert current is not before and current.config.poll.timeout == 14
        assert current.targets.get("EX78").discovered
        metrics = samples(exporter.metrics_body("")[0].decode())
        assert [up(metrics, name) for name in ("EX47", "EX78", "EX03")] == [1, 1, 1]

        path.write_text(discovery_config(organization_fleet, discover=False))
        assert exporter.reload()[0]
        metrics = samples(exporter.metrics_body("")[0].decode())
        assert [up(metrics, name) for name in ("EX47", "EX78", "EX03")] == [1, None, None]
    finally:
        exporter.stop()


def exchange_samples(exporter: Exporter) -> dict:
    """/metrics without the process's own families (memory, CPU, GC), which move on by themselves."""
    return {key: value for key, value in samples(exporter.metrics_body("")[0].decode()).items()
            if key[0].startswith("exchange_")}


def reload_time(exporter: Exporter) -> dict:
    """The one sample an unchanged reload moves: when the configuration was last loaded successfully."""
    key = (RELOAD_OK.replace("successful", "success_timestamp_seconds"), frozenset())
    return {key: exporter.runtime.last_reload_timestamp}


def test_a_probe_leaves_the_background_result_alone(fleet, tmp_path):
    """/probe answers with its own poll and keeps nothing, as blackbox does: before, a failed probe turned the
    server's background series to `exchange_up 0`."""
    path = tmp_path / "exporter.yml"
    path.write_text(config_for(fleet, ["EX47", "EX78"]))
    with served(path) as (exporter, base):
        poll_all(exporter.poller)
        fleet.set_faults("EX47", Faults(refuse_connections=True))
        try:
            with urllib.request.urlopen(base + "/probe?target=EX47", timeout=30) as response:
                assert up(samples(response.read().decode()), "EX47") == 0
        finally:
            fleet.set_faults("EX47")
        assert up(scrape(base), "EX47") == 1
