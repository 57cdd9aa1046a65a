"""The exporter configuration the Kerberos demos write: an example admins read (its path is printed), so it
delegates no more than docs/security.md advises. It used to set `kerberos_delegation: true` on every module, so
every server received a forwardable TGT of the monitoring account, and `demo --psrp --kerberos`, which the README
says succeeds "with no delegation", delegated to all fifteen servers."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from simulator import kerberos_demo
from simulator.cli import DEMO_SCENARIO, _scenario_path, exporter_config, load_scenario

# what demo.py passes: the module settings of the demo realm
KERBEROS = kerberos_demo.exporter_settings(SimpleNamespace(principal="svc_monitor@CONTOSO.COM",
                                                           client_keytab=Path("/k/svc_monitor.keytab")))


def _config(psrp: bool) -> dict:
    scenario = load_scenario(_scenario_path(DEMO_SCENARIO))
    return exporter_config(scenario, Path("/p"), None, "30s", kerberos=dict(KERBEROS), psrp=psrp)


def _delegating(config: dict) -> set[str]:
    return {name for name, module in config["modules"].items() if module.get("kerberos_delegation")}


def test_over_winrs_only_the_organizations_module_delegates():
    config = _config(psrp=False)
    assert _delegating(config) == {config["organization"]["module"]}
    servers_modules = {server["module"] for server in config["servers"]}
    assert config["organization"]["module"] not in servers_modules


def test_over_powershell_remoting_nothing_delegates():
    assert _delegating(_config(psrp=True)) == set()
