"""What one poll costs on the wire: WinRS against PowerShell remoting with a kept runspace pool, same fleet.

Each protocol polls the same simulated servers (NTLM with message encryption over HTTP, the exporter's own
clients, `poll.check_endpoint` on) once to warm up (connections, authentication, the runspace pool), then
POLLS more times; the simulator counts the HTTP requests and bytes each server saw. Prints one JSON line per
protocol, and the PSRP/WinRS ratios. The server-side trade-off is not on the wire: a kept pool holds one
wsmprovhost.exe per exporter on each server, where WinRS starts one powershell.exe per poll.

    python bench/psrp_cost.py              # 5 servers, 10 polls each
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from bench import free_port  # noqa: E402
from exporter import windows_endpoint  # noqa: E402
from exporter.config import load_config_text  # noqa: E402
from exporter.scripts import ServerScriptParameters, powershell_command, server_script  # noqa: E402
from exporter.winrm import connect  # noqa: E402
from simulator.scenario import scenario_from_dict  # noqa: E402
from simulator.server import Fleet  # noqa: E402

USER, PASSWORD = "EXCH\\bench", "B3nch!psrp-cost"
COMMAND = powershell_command(server_script(ServerScriptParameters(24, 200, 65536, True, 10, "")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=5)
    parser.add_argument("--polls", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="psrp-cost-") as work:
        windows_endpoint.write(Path(work), "CONTOSO\\EEMS Monitoring")
        role = Path(work) / "ExchangeEemsExporter" / "RoleCapabilities" / "ExchangeEemsReader.psrc"
        port = free_port()
        block = random.randint(100, 250)
        servers = [{"name": f"EX{i:02d}", "address": f"127.{block}.7.{i + 1}", "build": "15.2.2562.53"}
                   for i in range(args.servers)]
        scenario = scenario_from_dict({"credentials": [{"username": USER, "password": PASSWORD}],
                                       "defaults": {"port": port, "scheme": "http"}, "servers": servers,
                                       "remoting": {"jea": {"role_capability": str(role)}}})
        os.environ["PSRP_COST_PASSWORD"] = PASSWORD
        config = load_config_text(yaml.safe_dump({
            "modules": {"default": {"username": USER, "password_env": "PSRP_COST_PASSWORD", "scheme": "http"}},
            "servers": [{"name": s["name"], "address": s["address"], "port": port} for s in servers]}), Path(work))
        results = {}
        with Fleet(scenario.hosts, scenario.credentials) as fleet:
            for protocol in ("winrs", "psrp"):
                module = dataclasses.replace(config.modules["default"], protocol=protocol)
                connections = {s.name: connect(f"http://{s.address}:{port}/wsman", module,
                                               max_response_bytes=config.limits.max_response_bytes,
                                               max_poll_bytes=config.limits.max_poll_bytes, server_name=s.name)
                               for s in config.servers}
                for name, conn in connections.items():  # warm-up: connection, authentication, pool
                    conn.run(COMMAND, time.monotonic() + 30)
                before = {name: fleet.traffic(name) for name in connections}
                started = time.perf_counter()
                for _ in range(args.polls):
                    for conn in connections.values():
                        conn.run(COMMAND, time.monotonic() + 30)
                seconds = time.perf_counter() - started
                polls = args.polls * len(connections)
                totals = [sum(fleet.traffic(n)[i] - before[n][i] for n in connections) for i in range(3)]
                for conn in connections.values():
                    conn.close()
                results[protocol] = {"protocol": protocol, "kept_runspace": protocol == "psrp", "polls": polls,
                                     "requests_per_poll": round(totals[0] / polls, 2),
                                     "bytes_sent_per_poll": round(totals[1] / polls),
                                     "bytes_received_per_poll": round(totals[2] / polls),
                                     "seconds_per_poll": round(seconds / polls, 4)}
                print(json.dumps(results[protocol]), flush=True)
        winrs, psrp = results["winrs"], results["psrp"]
        print(json.dumps({"psrp_over_winrs": {key: round(psrp[key] / winrs[key], 3) for key in (
            "requests_per_poll", "bytes_sent_per_poll", "bytes_received_per_poll", "seconds_per_poll")}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
