"""Shared fixtures: a simulated fleet on loopback, and an exporter configuration that polls it.

Every fleet listens on its own random 127.x.y.0/24 block and a free port, so tests never collide with
each other or with a running `make demo`.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import itertools
import os
import random
import socket
import subprocess
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from exporter.catalog import Catalog
from exporter.config import Config, load_config_text
from exporter.web import serve
from simulator.host import Faults, SimulatedHost
from simulator.scenario import scenario_from_dict
from simulator.server import Fleet

PASSWORD = "Tr0ub4dor&3-eems-test"  # tests grep every output for this string
USERNAME = "EXCH\\svc_monitor"
PASSWORD_ENV = "EEMS_TEST_PASSWORD"


# The files that take longest, in seconds (`make test` on two cores with four workers, December 2026). They run
# first: `make test` and `make check` hand whole files to the workers in collection order (--dist loadfile
# --no-loadscope-reorder), so a long file never starts near the end and runs on alone while the other workers
# idle. xdist's own order, most tests first, started test_probe_deadline.py (58 s, 9 tests) at 194 s of 293.
LONG_FILES = {
    "tests/system/test_kerberos.py": 200,
    "tests/system/test_hostile.py": 71,
    "tests/artifacts/test_rules.py": 71,
    "tests/system/test_probe_deadline.py": 58,
    "tests/system/test_faults.py": 47,
    "tests/system/test_fleet_grouping.py": 33,
    "tests/system/test_hostile_clients.py": 28,
    "tests/system/test_demo_stack.py": 27,
    "tests/system/test_demo.py": 27,
    "tests/system/test_integration.py": 25,
    "tests/system/test_windows_realism.py": 24,
    "tests/system/test_secrets.py": 23,
    "tests/system/test_reload.py": 23,
    "tests/artifacts/test_packaging.py": 23,
    "tests/system/test_hostile_descriptors.py": 22,
    "tests/unit/test_winrm_client.py": 16,
    "tests/simulator/test_psrp.py": 16,
    "tests/system/test_credssp.py": 14,
    "tests/system/test_shards.py": 13,
    "tests/system/test_demo_psrp.py": 13,
    "tests/unit/test_cli.py": 12,
    "tests/unit/test_http_server.py": 11,
    "tests/unit/test_catalog_update.py": 10,
    "tests/unit/test_poller.py": 9,
    "tests/system/test_diagnose.py": 9,
    "tests/simulator/test_protocol.py": 9,
    "tests/unit/test_parse_fuzz.py": 8,
    "tests/system/test_probe_example.py": 8,
    "tests/system/test_pages.py": 8,
    "tests/system/test_diagnose_assumptions.py": 8,
    "tests/system/test_build_fallback.py": 8,
    "tests/unit/test_winrm_psrp.py": 7,
    "tests/system/test_browser.py": 7,
    "tests/system/test_servicemonitor.py": 6,
    "tests/unit/test_eems_log.py": 5,
    "tests/system/test_systemd_sandbox.py": 5,
    "tests/system/test_end_to_end.py": 5,
    "tests/system/test_diagnose_hostile.py": 5,
}


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    """Longest files first (LONG_FILES), each file's tests in their own order, the rest after as collected; only
    where whole files are handed out in that order (--no-loadscope-reorder, which only --dist loadfile and
    loadscope read; a worker sees no --dist). Under xdist's default `--dist load`, which hands out runs of tests,
    this order made tests/unit slower on two workers (about 68 s against 54 s)."""
    if not config.getoption("loadscopereorder", True):
        items.sort(key=lambda item: -LONG_FILES.get(item.nodeid.partition("::")[0], 0))


@pytest.fixture
def kdc_factory(tmp_path_factory):
    """Start real MIT KDCs (Debian's krb5kdc) on loopback, each in its own temporary folder:
    `kdc_factory(ticket_lifetime=60)` returns a started `simulator.kdc.Kdc` whose realm is CONTOSO.TEST.
    This process's Kerberos environment (KRB5_CONFIG, the replay cache folder) points at the newest one
    while the test runs, so nothing reads /etc/krb5.conf; every KDC is stopped by its PID afterwards."""
    from simulator.kdc import Kdc

    started: list[Kdc] = []
    with pytest.MonkeyPatch.context() as patch:
        def start(ticket_lifetime: int | None = None, realm: str = "CONTOSO.TEST", extra_env: dict | None = None) -> Kdc:
            kdc = Kdc(tmp_path_factory.mktemp("kdc"), realm=realm, ticket_lifetime=ticket_lifetime, extra_env=extra_env)
            started.append(kdc)
            kdc.start()
            for name, value in kdc.environment().items():
                patch.setenv(name, value)
            return kdc

        try:
            yield start
        finally:
            for kdc in started:
                kdc.stop()
            # A module's tickets are shared by every module with the same principal and credential while anything
            # holds them (kerberos.tickets_for), as in production. Tests use the same names with a new KDC each:
            # collect this test's pollers and connections now, so no later test is handed this KDC's tickets.
            gc.collect()


def wait_until(condition, seconds: float, what: str, *, every: float = 0.05):
    """Wait for `condition()` to hold and return its value; fail naming `what` after `seconds`. Tests wait on
    conditions like this (or on an injected clock, tests/clock.py), never for a fixed time."""
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out after {seconds:g}s waiting for {what}"
        time.sleep(every)
    return value


def stop_process(process: subprocess.Popen, timeout: float = 20) -> tuple:
    """SIGTERM, up to `timeout` seconds for the process to end, then SIGKILL: its (stdout, stderr), each None
    unless piped."""
    process.terminate()
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.communicate()


def listening(host: SimulatedHost) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((host.address, host.port)) == 0


def write_keytab(path: Path, principal: str, password: str = "keytab-test-only", kvno: int = 1) -> Path:
    """A keytab holding `principal@REALM`'s AES256 key derived from `password` with Active Directory's salt
    (REALM + user name), as `ktutil addent -password` or `ktpass` would write it; no KDC needed."""
    import krb5

    context = krb5.init_context()
    name, _, realm = principal.partition("@")
    key = krb5.c_string_to_key(context, 18, password.encode(), f"{realm}{name}".encode())
    keytab = krb5.kt_resolve(context, f"FILE:{path}".encode())
    krb5.kt_add_entry(context, keytab, krb5.parse_name_flags(context, principal.encode()), kvno, 0, key)
    return path


def _own_ports() -> Iterator[int]:
    """This process's share of the ports the kernel never picks by itself, from a random place in it.

    A port the kernel picked (bind to port 0) is free only until someone binds it, and the kernel hands the same
    range out for every outgoing connection: another worker's connection could take it before the program under
    test listened on it ("Address already in use"). The kernel never picks a port below its ephemeral range by
    itself; each xdist worker walks its own slice of them, so tests running at once never share one."""
    try:
        ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32768  # Linux's default; Windows' dynamic ports start higher, at 49152
    low, high = 10000, min(ephemeral, 32768) if ephemeral > 20000 else 32768  # an unusually low range: share it
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    size = (high - low) // workers
    share = range(low + worker * size, low + (worker + 1) * size)
    start = random.randrange(len(share))
    while True:
        yield from share[start:]
        yield from share[:start]


_PORTS = _own_ports()


def free_port() -> int:
    """A loopback port nothing listens on, and that no other test running now is given."""
    for port in itertools.islice(_PORTS, 2000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # in use (a program of an earlier test, or another process on this machine)
                continue
            return port
    raise RuntimeError("no free loopback port in 2,000 tries")


def demo_scenario() -> dict:
    text = resources.files("simulator").joinpath("scenarios").joinpath("demo.yaml").read_text()
    return yaml.safe_load(text)


def quick_organization(scenario: dict) -> dict:
    """`scenario` with the organization script as quick as a server's (the simulator runs a server script for
    0.3 s and the organization's for 2 s unless a server's `output_faults.script_runtime` says otherwise), for
    tests that poll the organization only to have its facts, not to time it."""
    scenario = copy.deepcopy(scenario)
    for server in scenario["servers"]:
        server.setdefault("output_faults", {}).setdefault("script_runtime", 0.3)
    return scenario


def relocate(scenario: dict) -> dict:
    """Move a scenario's servers onto a random loopback block and a free port, with the test credential."""
    scenario = copy.deepcopy(scenario)
    block = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}"
    port = free_port()
    scenario["credentials"] = [{"username": USERNAME, "password": PASSWORD}]
    scenario.setdefault("defaults", {})["port"] = port
    for index, server in enumerate(scenario["servers"], start=1):
        server["address"] = f"{block}.{index}"
        server.pop("port", None)
    return scenario


def jea_scenario(folder: Path) -> dict:
    """One server, EX01, whose PowerShell remoting offers the exporter's JEA endpoint as `windows-endpoint` writes it
    (into `folder`), beside its WinRS shell."""
    from exporter import windows_endpoint

    windows_endpoint.write(folder, "CONTOSO\\EEMS Monitoring")
    role = folder / "ExchangeEemsExporter" / "RoleCapabilities" / "ExchangeEemsReader.psrc"
    return relocate({"servers": [{"name": "EX01", "address": "127.0.0.1", "build": "15.2.1544.4"}],
                     "remoting": {"jea": {"role_capability": str(role)}}})


class SimulatedFleet:
    def __init__(self, scenario_dict: dict, kerberos_keytab: Path | None = None):
        self.scenario = scenario_from_dict(scenario_dict)
        self.fleet = Fleet(self.scenario.hosts, self.scenario.credentials, tls_dir=self.scenario.tls,
                           kerberos_keytab=kerberos_keytab)
        self.hosts = {h.name: h for h in self.scenario.hosts}

    def __enter__(self) -> "SimulatedFleet":
        self.fleet.start()
        return self

    def __exit__(self, *exc) -> None:
        self.fleet.stop()

    def set_faults(self, name: str, faults: Faults | None = None) -> None:
        """Give host `name` these protocol faults (None: healthy again) and return once its listener is as they
        ask: the simulator opens or closes it for `refuse_connections` from a watcher, a moment later, and a poll
        in between would meet the other state."""
        host = self.hosts[name]
        host.faults = faults or Faults()
        wait_until(lambda: listening(host) != host.faults.refuse_connections, 5,
                   f"{name}'s listener to follow refuse_connections")

    def config_text(self, **poll) -> str:
        """An exporter config for this fleet (YAML), poll settings overridable."""
        poll_settings = {"interval": "60s", "timeout": "15s", "concurrency": 8, **poll}
        schemes = sorted({h.scheme for h in self.scenario.hosts})
        modules = {}
        for scheme in schemes:
            module = {"username": USERNAME, "password_env": PASSWORD_ENV, "scheme": scheme,
                      "operation_timeout": "3s", "read_timeout": "5s"}
            if scheme == "https":
                module["ca_file"] = str(self.fleet.ca_file)
            modules[scheme] = module
        config = {
            "poll": poll_settings,
            "modules": modules,
            "servers": [{"name": h.name, "address": h.address, "port": h.port, "module": h.scheme}
                        for h in self.scenario.hosts],
        }
        organization = self.scenario.organization
        if organization.server:
            config["organization"] = {"name": organization.name, "server": organization.server}
        return yaml.safe_dump(config, sort_keys=False)

    def config(self, **poll) -> Config:
        return load_config_text(self.config_text(**poll), Path("."))


@pytest.fixture(scope="session", autouse=True)
def password_env():
    """The shared test password in the environment for the whole session, so module-scoped fleets and
    exporters find it when they load their configuration (a function-scoped fixture runs too late for them)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(PASSWORD_ENV, PASSWORD)
        yield


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return Catalog.load()


def minimal_config(extra: str = "") -> str:
    return textwrap.dedent(f"""
        modules:
          default:
            username: 'EXCH\\svc_monitor'
            password_env: {PASSWORD_ENV}
        servers:
          - ex01.contoso.com
        """) + textwrap.dedent(extra)


def own_samples(extra: str, servers: list[str]) -> list[tuple[str, dict[str, str], float]]:
    """The samples of the /metrics of an exporter configured with `minimal_config(extra)` and `servers`, which is
    never started: its own series (what it says of its configuration), no poll's."""
    from prometheus_client.parser import text_string_to_metric_families

    from exporter.catalog import Catalog
    from exporter.config import load_config_text
    from exporter.exporter import Exporter

    text = minimal_config(extra).replace("  - ex01.contoso.com\n", "".join(f"  - {s}\n" for s in servers))
    exporter = Exporter(load_config_text(text, Path(".")), Catalog.load())
    try:
        body, _ = exporter.metrics_body("text/plain")
    finally:
        exporter.stop()
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(body.decode())
            for s in family.samples]


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a /metrics body, keyed by (name, frozenset of labels)."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def poll_all(poller) -> None:
    """One cycle by hand, as a test needs it: the organization, then every server of the shard once,
    concurrently within the limit, through the public poll path (no background thread, no timing)."""
    poller.poll_organization()
    with ThreadPoolExecutor(poller.runtime.current().config.poll.concurrency) as pool:
        list(pool.map(lambda t: poller.poll_server(t.name), poller.runtime.current().targets.polled))


def polled_samples(config: Config) -> dict[tuple[str, frozenset], float]:
    """The samples of the /metrics of an exporter configured with `config`, after one `poll_all`; the exporter is
    stopped afterwards."""
    from exporter.exporter import Exporter

    exporter = Exporter(config, Catalog.load())
    try:
        poll_all(exporter.poller)
        return samples(exporter.metrics_body("text/plain")[0].decode())
    finally:
        exporter.stop()


@contextlib.contextmanager
def serving(exporter, web_config=None) -> Iterator[int]:
    """`exporter` served on a random loopback port (the port); afterwards the server is shut down, its socket
    closed and the exporter stopped, however the block ends."""
    server = serve(exporter, "127.0.0.1", 0, web_config)
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        exporter.stop()
