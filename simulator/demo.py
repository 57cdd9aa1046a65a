"""`demo`: the shipped simulated fleet plus the exporter polling it, for a first look before production.

The exporter runs as its own process (`python -m exporter run`), started from this one: the simulator imports
nothing from the exporter, and the exporter under demonstration is the real program a user deploys. Ctrl-C
and SIGTERM go to the exporter first; the fleet stops only after the exporter has exited, so the polls still
running finish against it.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
from importlib.util import find_spec
from pathlib import Path

from . import kerberos_demo
from .cli import DEMO_SCENARIO, address, load, start_fleet, write_config
from .kdc import KdcError


def cmd_demo(args: argparse.Namespace) -> int:
    if find_spec("exporter") is None:
        print("exchange-eems-simulator: the demo runs the exporter, which is not installed: "
              "pip install . in its source folder (make demo does it)", file=sys.stderr)
        return 2
    # The exporter's configuration, the demo password's file and, with --kerberos, the realm's database and keytabs:
    # removed at the end, as any temporary folder (every demo used to leave one behind).
    workdir = Path(tempfile.mkdtemp(prefix="eems-demo-"))
    try:
        return _demo(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _demo(args: argparse.Namespace, workdir: Path) -> int:
    scenario = load(args, _psrp_endpoint(workdir) if args.psrp else None)
    realm = _start_realm(args, scenario, workdir) if args.kerberos else None
    try:
        scenario, fleet = start_fleet(args, scenario, realm.fleet_keytab if realm else None)
    except BaseException:
        if realm:
            realm.stop()
        raise
    try:
        config_path = workdir / "exchange-eems-exporter.yml"
        write_config(scenario, fleet, config_path, args.interval,
                     kerberos_demo.exporter_settings(realm) if realm else None, psrp=args.psrp)
        host, port = args.listen
        shown = "localhost" if host in ("0.0.0.0", "127.0.0.1") else host
        print(f"Simulated fleet: {len(scenario.hosts)} Exchange servers on 127.0.0.x (scenario {args.scenario})")
        if realm:
            life = args.ticket_lifetime or "10h"
            print(f"Kerberos realm:  {realm.realm}, MIT KDC on {realm.kdc.address}:{realm.kdc.port} (PID {realm.kdc.pid}), "
                  f"tickets live {life}; the fleet takes Kerberos only; keytab {realm.client_keytab}")
        if args.psrp:
            organization = ("the organization collector runs its cmdlets there over Kerberos, with no delegation"
                            if realm else "that endpoint takes Kerberos only, so over this demo's NTLM the organization "
                            "collector reports auth_failed and says why (add --kerberos)")
            print("Protocol:        PowerShell remoting: the exporter's JEA endpoint (written by windows-endpoint, "
                  "installed on every server) and Exchange's /PowerShell; no WinRS shell is served; "
                  f"{organization}")
        print(f"Exporter config: {config_path}")
        print(f"Metrics:         http://{shown}:{port}/metrics")
        print(f"Landing page:    http://{shown}:{port}/")
        example = scenario.hosts[0].name
        print(f"Probe a server:  http://{shown}:{port}/probe?target={example}")
        print("Every server is polled within the first interval "
              f"({args.interval}); Ctrl-C stops.", flush=True)
        return _run_exporter(["run", "--config.file", str(config_path), "--web.listen-address", f"{host}:{port}",
                              "--log.level", args.log_level])
    finally:
        fleet.stop()
        if realm:
            realm.stop()


def _psrp_endpoint(workdir: Path) -> dict:
    """Write the JEA endpoint with the exporter's own command (as an admin would) and install it on every server:
    the scenario's `remoting` section for a PSRP-only fleet."""
    output = workdir / "windows-endpoint"
    written = subprocess.run([sys.executable, "-m", "exporter", "windows-endpoint", "--output", str(output),
                              "--group", "CONTOSO\\EEMS Monitoring"], capture_output=True, text=True, timeout=120)
    if written.returncode != 0:
        print(f"exchange-eems-simulator: windows-endpoint failed: {written.stderr.strip()}", file=sys.stderr)
        raise SystemExit(2)
    role = output / "ExchangeEemsExporter" / "RoleCapabilities" / "ExchangeEemsReader.psrc"
    return {"winrs": False, "jea": {"role_capability": str(role)}}


def _start_realm(args: argparse.Namespace, scenario, workdir: Path) -> kerberos_demo.DemoRealm:
    problem = kerberos_demo.check_python_side()
    try:
        if problem:
            raise KdcError(problem)
        lifetime = kerberos_demo.lifetime_seconds(args.ticket_lifetime)
        return kerberos_demo.start_realm(scenario, workdir / "kerberos", lifetime)
    except (KdcError, argparse.ArgumentTypeError) as err:
        print(f"exchange-eems-simulator: cannot set up the Kerberos realm: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _run_exporter(arguments: list[str]) -> int:
    """The exporter's exit code; a stop signal sent to the demo is passed on to the exporter."""
    received: list[int] = []
    exporter: subprocess.Popen | None = None

    def pass_on(signum, _frame) -> None:
        received.append(signum)
        if exporter is not None:
            exporter.send_signal(signum)

    signal.signal(signal.SIGINT, pass_on)
    signal.signal(signal.SIGTERM, pass_on)
    exporter = subprocess.Popen([sys.executable, "-m", "exporter", *arguments])
    if received:  # a signal that came before the exporter existed
        exporter.send_signal(received[0])
    return exporter.wait()


def add_demo_command(sub) -> None:
    demo = sub.add_parser("demo", help="the demo: the simulated fleet plus the exporter polling it")
    demo.add_argument("--scenario", default=DEMO_SCENARIO, help="scenario YAML, default: the shipped demo fleet")
    demo.add_argument("--listen", type=address, default=("127.0.0.1", 10061),
                      help="where the exporter listens (default 127.0.0.1:10061)")
    demo.add_argument("--interval", default="30s", help="poll interval (default 30s)")
    demo.add_argument("--log.level", dest="log_level", default="info", choices=["debug", "info", "warning", "error"])
    demo.add_argument("--kerberos", action="store_true",
                      help="run a real MIT KDC on loopback (Debian's krb5-kdc, installed if missing); the fleet takes "
                           "Kerberos only and the exporter uses a keytab")
    demo.add_argument("--psrp", action="store_true",
                      help="PowerShell remoting only: the exporter's JEA endpoint and Exchange's /PowerShell (which "
                           "takes Kerberos only: add --kerberos for the organization collector)")
    demo.add_argument("--ticket-lifetime", dest="ticket_lifetime", default=None,
                      help="with --kerberos: every ticket's lifetime, e.g. 1m (default 10h, as Active Directory)")
    demo.set_defaults(func=cmd_demo)
