"""`exchange-eems-simulator simulate|demo`: run a simulated fleet that answers over WinRM.

`simulate` can write an exporter configuration that matches the fleet (`--write-config`), so a user can
point a real exporter (and their Prometheus and Alertmanager) at it. The password goes to a file beside
that configuration, never into it.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
from importlib import resources
from pathlib import Path

import yaml

from .scenario import Scenario, ScenarioError, load_scenario, scenario_from_dict
from .server import Fleet

DEMO_SCENARIO = "demo"  # the shipped scenario, by name


def _scenario_path(value: str) -> Path:
    if value == DEMO_SCENARIO:
        return Path(str(resources.files("simulator").joinpath("scenarios").joinpath("demo.yaml")))
    return Path(value)


def address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected host:port, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def interval_seconds(value: str) -> int:
    match = re.fullmatch(r"(\d+)([smh]?)", value.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected an interval like 30s, 5m or 1h, got {value!r}")
    return int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def _poll_timeout(interval: str) -> int:
    """Two thirds of the interval, between 5 and 20 seconds: the exporter requires timeout <= interval."""
    return max(5, min(20, interval_seconds(interval) * 2 // 3))


def exporter_config(scenario: Scenario, password_file: Path, ca_file: Path | None, interval: str,
                    kerberos: dict | None = None, psrp: bool = False) -> dict:
    """An exporter configuration that polls every host of the scenario with its first credential, or with
    the `kerberos` module settings (a keytab of the realm, `kerberos_demo.exporter_settings`); with `psrp`, over
    PowerShell remoting (the JEA endpoint, and Exchange's endpoint for the organization)."""
    username = next(iter(scenario.credentials))
    schemes = {host.scheme for host in scenario.hosts}
    modules = {}
    for scheme in sorted(schemes):
        module = {"transport": "ntlm", "username": username, "password_file": str(password_file), "scheme": scheme}
        if kerberos:
            module = {**kerberos, "scheme": scheme}
        if scheme == "https" and ca_file:
            module["ca_file"] = str(ca_file)
        modules[scheme] = module
    if psrp:  # PowerShell remoting to the exporter's JEA endpoint, the kept runspace pool by default
        for module in modules.values():
            module["protocol"] = "psrp"
    # One scheme (the demo): the module is `default`, the name README's configuration and examples/ use.
    names = {scheme: "default" if len(schemes) == 1 else scheme for scheme in schemes}
    modules = {names[scheme]: module for scheme, module in modules.items()}
    if psrp:  # the organization's cmdlets at Exchange's own endpoint: RBAC on the server, no double hop
        first = next(iter(modules.values()))
        modules["exchange"] = {**first, "configuration_name": "Microsoft.Exchange", "path": "PowerShell"}
    config = {
        # the endpoint check on, so every metric the rules and dashboards use has data
        "poll": {"interval": interval, "timeout": f"{_poll_timeout(interval)}s", "concurrency": 16, "check_endpoint": True},
        "modules": modules,
        "servers": [{"name": h.name, "address": h.address, "port": h.port, "module": names[h.scheme],
                     **({"spn_hostname": h.fqdn} if kerberos else {})}
                    for h in scenario.hosts],
    }
    organization = scenario.organization
    if organization.server:
        config["organization"] = {"name": organization.name, "server": organization.server}
        if psrp:
            config["organization"]["module"] = "exchange"
        elif kerberos:
            # Over WinRS the organization's cmdlets reach Active Directory only with a delegated ticket (the double
            # hop). As docs/security.md advises, only the organization's own module delegates: every other server
            # would otherwise receive a forwardable TGT of the monitoring account at each poll.
            first = next(iter(modules.values()))
            config["modules"]["organization"] = {**first, "kerberos_delegation": True}
            config["organization"]["module"] = "organization"
    return config


def load(args: argparse.Namespace, remoting: dict | None = None) -> Scenario:
    """The scenario; `remoting` replaces its `remoting` section (the PSRP demo)."""
    try:
        path = _scenario_path(args.scenario)
        if remoting is None:
            return load_scenario(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ScenarioError("", f"cannot read the scenario: {exc}", str(path)) from None
        return scenario_from_dict({**data, "remoting": remoting}, path.parent)
    except ScenarioError as err:
        print(f"exchange-eems-simulator: scenario error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def start_fleet(args: argparse.Namespace, scenario: Scenario | None = None,
                kerberos_keytab: Path | None = None) -> tuple[Scenario, Fleet]:
    scenario = scenario or load(args)
    fleet = Fleet(scenario.hosts, scenario.credentials, tls_dir=scenario.tls,
                  control_address=getattr(args, "control_address", None), kerberos_keytab=kerberos_keytab)
    try:
        fleet.start()
    except (OSError, ValueError) as err:
        print(f"exchange-eems-simulator: cannot start the simulated fleet: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    return scenario, fleet


def write_config(scenario: Scenario, fleet: Fleet, path: Path, interval: str, kerberos: dict | None = None,
                 psrp: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = path.with_name(path.stem + ".password")
    if kerberos is None:  # a Kerberos module has its keytab instead
        secret.write_text(next(iter(scenario.credentials.values())) + "\n", encoding="utf-8")
        os.chmod(secret, 0o600)
    config = exporter_config(scenario, secret, fleet.ca_file, interval, kerberos, psrp)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


def _wait_for_signal() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()


def cmd_simulate(args: argparse.Namespace) -> int:
    scenario, fleet = start_fleet(args)
    for host in scenario.hosts[:50]:
        print(f"{host.name:24} {host.scheme}://{host.address}:{host.port}/wsman", flush=True)
    if len(scenario.hosts) > 50:
        print(f"... and {len(scenario.hosts) - 50} more", flush=True)
    if fleet.control_port:
        print(f"control API: http://{args.control_address[0]}:{fleet.control_port}/state", flush=True)
    if args.write_config:
        write_config(scenario, fleet, args.write_config, args.interval)
        print(f"exporter configuration: {args.write_config}", flush=True)
    print(f"simulating {len(scenario.hosts)} servers; Ctrl-C stops", flush=True)
    _wait_for_signal()
    fleet.stop()
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .demo import add_demo_command  # demo.py builds on this module's fleet helpers

    parser = argparse.ArgumentParser(prog="exchange-eems-simulator", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    simulate = sub.add_parser("simulate", help="run a simulated Exchange fleet that answers over WinRM")
    simulate.add_argument("--scenario", required=True, help="scenario YAML (docs/simulator.md), or 'demo'")
    simulate.add_argument("--control-address", type=address, help="loopback host:port for the control API")
    simulate.add_argument("--write-config", type=Path, help="write a matching exporter configuration here")
    simulate.add_argument("--interval", default="60s", help="poll interval for --write-config (default 60s)")
    simulate.set_defaults(func=cmd_simulate)
    add_demo_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
