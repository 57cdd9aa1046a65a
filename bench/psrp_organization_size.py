"""What Get-ExchangeServer costs over Exchange's remote PowerShell endpoint, against the exporter's output bounds.

The simulator's /PowerShell answers with objects built from a real captured Get-ExchangeServer (Exchange 2019,
adapted properties, SerializationData), so the bytes are realistic. For N servers, one runspace pool, and:
- `full`: `Get-ExchangeServer`, every property of every server;
- `selected`: `Get-ExchangeServer | Select-Object -Property <the ten the organization collector reads>`.
Prints one JSON line per case: objects, Receive answers, bytes of SOAP the client read, and the ratio to the
default `limits.max_poll_bytes` (8 MiB) and `limits.max_response_bytes` (4 MiB, per answer).

    python bench/psrp_organization_size.py            # 200 servers
    python bench/psrp_organization_size.py --servers 50
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import free_port  # noqa: E402
from pypsrp.powershell import PowerShell, RunspacePool  # noqa: E402
from pypsrp.wsman import WSMan  # noqa: E402

from simulator.scenario import scenario_from_dict  # noqa: E402
from simulator.server import Fleet  # noqa: E402

MAX_POLL_BYTES, MAX_RESPONSE_BYTES = 8 << 20, 4 << 20  # exporter/config.py defaults
PROPERTIES = ["Name", "Fqdn", "ServerRole", "AdminDisplayVersion", "MitigationsEnabled", "MitigationsApplied",
              "MitigationsBlocked", "MitigationsAppliedTime", "DataCollectionEnabled", "InternetWebProxy"]
USER, PASSWORD = "bench", "B3nch!psrp"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=200)
    args = parser.parse_args()
    port = free_port()
    block = random.randint(100, 250)
    servers = [{"name": f"EX{i:04d}", "address": f"127.{block}.{i // 250}.{i % 250 + 1}", "build": "15.2.1544.4"}
               for i in range(args.servers)]
    scenario = scenario_from_dict({"clock": "2026-12-06T12:00:00Z", "credentials": [{"username": USER, "password": PASSWORD}],
                                   "defaults": {"port": port}, "servers": servers,
                                   "remoting": {"exchange": {"kerberos_only": False}}})  # Basic: bytes, not auth
    with Fleet(scenario.hosts[:1], scenario.credentials):  # one server answers for the organization
        host = scenario.hosts[0]
        wsman = WSMan(host.address, port=host.port, path="PowerShell", ssl=False, auth="basic", encryption="never",
                      username=USER, password=PASSWORD, no_proxy=True, operation_timeout=20, read_timeout=120)
        sizes: list[int] = []
        send = wsman.transport.send

        def counted(message, **kwargs):
            answer = send(message, **kwargs)
            sizes.append(len(answer))
            return answer

        wsman.transport.send = counted
        with RunspacePool(wsman, configuration_name="Microsoft.Exchange") as pool:
            for case in ("full", "selected"):
                ps = PowerShell(pool)
                ps.add_cmdlet("Get-ExchangeServer")
                if case == "selected":
                    ps.add_cmdlet("Select-Object").add_parameter("Property", PROPERTIES)
                sizes.clear()
                started = time.perf_counter()
                output = ps.invoke()
                print(json.dumps({
                    "case": case, "servers": args.servers, "objects": len(output), "had_errors": ps.had_errors,
                    "receives": len(sizes) - 1, "bytes": sum(sizes), "largest_answer": max(sizes),
                    "of_max_poll_bytes": round(sum(sizes) / MAX_POLL_BYTES, 3),
                    "of_max_response_bytes": round(max(sizes) / MAX_RESPONSE_BYTES, 3),
                    "seconds": round(time.perf_counter() - started, 2),
                }), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
