"""`demo`: the shipped simulated fleet plus the exporter polling it, for a first look before production."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from .cli import DEMO_SCENARIO, address, start_fleet, write_config


def cmd_demo(args: argparse.Namespace, run_exporter) -> int:
    scenario, fleet = start_fleet(args)
    workdir = Path(tempfile.mkdtemp(prefix="eems-demo-"))
    config_path = workdir / "exchange-eems-exporter.yml"
    write_config(scenario, fleet, config_path, args.interval)
    host, port = args.listen
    shown = "localhost" if host in ("0.0.0.0", "127.0.0.1") else host
    print(f"Simulated fleet: {len(scenario.hosts)} Exchange servers on 127.0.0.x (scenario {args.scenario})")
    print(f"Exporter config: {config_path}")
    print(f"Metrics:         http://{shown}:{port}/metrics")
    print(f"Landing page:    http://{shown}:{port}/")
    example = scenario.hosts[0].name
    print(f"Probe a server:  http://{shown}:{port}/probe?target={example}")
    print("Every server is polled within the first interval "
          f"({args.interval}); Ctrl-C stops.", flush=True)
    try:
        return run_exporter(["run", "--config.file", str(config_path),
                              "--web.listen-address", f"{host}:{port}", "--log.level", args.log_level])
    finally:
        fleet.stop()



def add_demo_command(sub, run_exporter) -> None:
    demo = sub.add_parser("demo", help="the demo: the simulated fleet plus the exporter polling it")
    demo.add_argument("--scenario", default=DEMO_SCENARIO, help="scenario YAML, default: the shipped demo fleet")
    demo.add_argument("--listen", type=address, default=("127.0.0.1", 10061),
                      help="where the exporter listens (default 127.0.0.1:10061)")
    demo.add_argument("--interval", default="30s", help="poll interval (default 30s)")
    demo.add_argument("--log.level", dest="log_level", default="info", choices=["debug", "info", "warning", "error"])
    demo.set_defaults(func=lambda args: cmd_demo(args, run_exporter))
