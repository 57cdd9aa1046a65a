"""Kerberos against NTLM: CPU per poll, HTTP requests per poll and KDC requests per poll, one run.

One simulated server takes both NTLM and Kerberos (a real MIT KDC on loopback, `simulator/kdc.py`, in a
temporary folder); one thread polls it again and again with the exporter's own WinRM client
(`ServerConnection.run` of the server collection script, then parse and interpret), first with an NTLM
module, then with a Kerberos module using a keytab. `time.thread_time()` around each poll gives the polling
thread's CPU (the simulator runs in other threads of this process and is not counted). Two cases each:
`kept`, the connection kept across polls (polls closer together than HTTP.sys's idle timeout), and `fresh`,
a new connection and authentication per poll (the usual 5-minute interval, as HTTP.sys drops idle
connections after about two minutes). Requests per poll come from the simulator's request counter, KDC
requests from the KDC's log.

    python bench/kerberos.py [--polls 200] [--scheme http|https]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python bench/kerberos.py` from the checkout: its simulator and exporter

from bench import free_port  # noqa: E402
from exporter.config import load_config  # noqa: E402
from exporter.scripts import ServerScriptParameters, powershell_command, server_script  # noqa: E402
from exporter.winrm import ServerConnection  # noqa: E402
from simulator.kdc import Kdc  # noqa: E402
from simulator.scenario import scenario_from_dict  # noqa: E402
from simulator.server import Fleet  # noqa: E402

USER, PASSWORD, REALM = "EXCH\\svc_bench", "bench-only-password", "CONTOSO.TEST"
PASSWORD_ENV = "EEMS_BENCH_PASSWORD"
COMMAND = powershell_command(server_script(ServerScriptParameters(24, 200, 65536, False, 10, "")))


def kdc_requests(kdc: Kdc) -> int:
    """AS and TGS requests the KDC logged (pre-authentication makes an AS exchange two requests)."""
    return len(re.findall(r"\b(AS_REQ|TGS_REQ)\b", kdc.log_file.read_text(errors="replace")))


def measure(fleet: Fleet, kdc: Kdc, module, polls: int, fresh: bool) -> dict:
    host = fleet.hosts[0]
    connection = ServerConnection(f"{host.scheme}://{host.address}:{host.port}/wsman", module,
                                  max_response_bytes=4 << 20, max_poll_bytes=8 << 20, server_name=host.fqdn)
    connection.run(COMMAND, time.monotonic() + 30)  # warm: the first ticket, the first handshake
    if fresh:
        connection.close()
    requests, kdc_before = fleet.request_count(host.name), kdc_requests(kdc)
    cpu = []
    for _ in range(polls):
        started = time.thread_time()
        result = connection.run(COMMAND, time.monotonic() + 30)
        cpu.append(time.thread_time() - started)
        assert result.exit_code == 0, result
        if fresh:
            connection.close()  # the next poll connects and authenticates anew, as after HTTP.sys's idle timeout
    connection.close()
    cpu.sort()
    return {
        "cpu_ms_per_poll_median": round(1000 * cpu[len(cpu) // 2], 3),
        "cpu_ms_per_poll_mean": round(1000 * sum(cpu) / len(cpu), 3),
        "http_requests_per_poll": round((fleet.request_count(host.name) - requests) / polls, 2),
        "kdc_requests_per_poll": round((kdc_requests(kdc) - kdc_before) / polls, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=200)
    parser.add_argument("--scheme", choices=("http", "https"), default="http")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="eems-bench-kerberos-") as folder:
        workdir = Path(folder)
        kdc = Kdc(workdir / "kdc", realm=REALM)
        kdc.start()
        try:
            os.environ.update(kdc.environment())
            os.environ[PASSWORD_ENV] = PASSWORD
            principal = kdc.add_principal("svc_bench")
            keytab = kdc.keytab(workdir / "svc_bench.keytab", principal)
            scenario = scenario_from_dict({
                "credentials": [{"username": USER, "password": PASSWORD}],
                "defaults": {"scheme": args.scheme, "port": free_port(), "auth": ["ntlm", "kerberos"]},
                "organization": {"domain": REALM.lower()},
                "servers": [{"name": "EX01", "address": "127.0.0.1", "build": "15.2.1544.36"}],
            })
            fleet_keytab = kdc.service_keytab(workdir / "fleet.keytab", [h.fqdn for h in scenario.hosts])
            with Fleet(scenario.hosts, scenario.credentials, kerberos_keytab=fleet_keytab) as fleet:
                fleet.hosts = scenario.hosts
                common = {"scheme": args.scheme, **({"ca_file": str(fleet.ca_file)} if args.scheme == "https" else {})}
                config = {
                    "modules": {
                        "ntlm": {"transport": "ntlm", "username": USER, "password_env": PASSWORD_ENV, **common},
                        "kerberos": {"transport": "kerberos", "username": principal, "keytab_file": str(keytab),
                                     **common},
                    },
                    "servers": [{"name": "EX01", "module": "ntlm"}],
                }
                path = workdir / "exporter.yml"
                path.write_text(yaml.safe_dump(config), encoding="utf-8")
                modules = load_config(path).modules
                results = {
                    f"{name} {case}": measure(fleet, kdc, modules[name], args.polls, case == "fresh")
                    for case in ("kept", "fresh") for name in ("ntlm", "kerberos")
                }
        finally:
            kdc.stop()
    print(json.dumps({"polls": args.polls, "scheme": args.scheme, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
