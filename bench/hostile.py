"""What a compromised Exchange server or a hostile client costs the exporter (issue 10), one attack at a time.

The attacker runs in its own process (its own memory and descriptors); the exporter runs here, so this
process's peak RSS is the exporter's alone. For each server attack: one poll of the attacking server while
/metrics is scraped every 0.2 s. Prints one JSON object per attack: the poll's seconds and reason, the slowest
/metrics, the peak RSS growth, and how many MiB the attacker got the exporter to accept. `slowloris` opens
N trickling connections to the exporter's port (open-file limit 1024) while a visitor scrapes /metrics.

    python bench/hostile.py                    # every attack, about 2 minutes
    python bench/hostile.py nested_xml drip    # some of them

The client attacks of round 2 (issues 20, 22, 24; `python bench/hostile.py clients`, or one by name) run the
exporter as a separate `run` process of any checkout, so the same harness measures the code before and
after a fix:

    python bench/hostile.py clients                                  # this checkout
    python bench/hostile.py --exporter-root ../old-checkout clients  # another one (git archive of a commit)
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from exporter.catalog import Catalog  # noqa: E402
from exporter.config import load_config_text  # noqa: E402
from exporter.exporter import Exporter  # noqa: E402
from exporter.web import serve  # noqa: E402
from tests.system.hostile_server import HostileServer, Output  # noqa: E402

import hostile_clients as clients  # noqa: E402  (bench/hostile_clients.py)

USER, PASSWORD, PASSWORD_ENV = "EXCH\\svc_bench", "bench-Passw0rd-not-a-secret", "EEMS_BENCH_PASSWORD"
SERVER_ATTACKS = {  # name -> (attack, server options, limits)
    "quadratic_clixml": ("none", {"output": lambda _: Output(stderr=b"#< CLIXML\r\n" + b'<S S="Error">' * 16_000,
                                                            exit_code=1)}, {}),
    "drip": ("drip", {}, {}),
    "drip_receive": ("drip_receive", {"output": lambda _: Output(stdout=b'{"schema": 1}' + b" " * 200)}, {}),
    "huge_handshake_http": ("huge_handshake", {}, {}),
    "huge_handshake_https": ("huge_handshake", {"scheme": "https"}, {}),
    "nested_xml": ("nested_xml", {}, {"max_response_bytes": 4 << 20}),
    "bad_events": ("none", {"output": lambda _: Output(stdout=b'{"schema": 1, "events": [' + b"1," * 3_500_000
                                                       + b"1]}")}, {"max_response_bytes": 16 << 20}),
}
SLOWLORIS_CONNECTIONS = 1100
SLOWLORIS = r'''
import json, socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
socks, failed = [], 0
for _ in range(n):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
        s.settimeout(None)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        socks.append(s)
    except OSError:
        failed += 1
def held():
    count = 0
    for s in socks:
        try:
            count += s.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) != b""
        except BlockingIOError:
            count += 1
        except OSError:
            pass
    return count
started, report = time.monotonic(), {"opened": len(socks), "failed_to_open": failed}
while time.monotonic() - started < 14:
    for s in socks:
        try:
            s.send(b"X")
        except OSError:
            pass
    second = int(time.monotonic() - started)
    if second in (2, 12):
        report[f"held_after_{second}s"] = held()
    time.sleep(1)
print(json.dumps(report))
'''


def _rss_mib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) // 1024 for line in status if line.startswith("VmRSS:"))


def _attacker(name: str, ready, stop, sent) -> None:
    attack, options, _ = SERVER_ATTACKS[name]
    with HostileServer(attack, {USER: PASSWORD}, **options) as server:
        ready.put((server.port, server.scheme, str(server.ca_file) if server.ca_file else None))
        stop.wait()
        sent.put(server.bytes_sent)


def _scrape(port: int, source: str = "127.0.0.1") -> float:
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120, source_address=(source, 0))
    connection.request("GET", "/metrics")
    connection.getresponse().read()
    connection.close()
    return time.monotonic() - started


def server_attack(name: str) -> dict:
    context = multiprocessing.get_context("fork")  # before this process starts threads of its own
    ready, stop, sent = context.Queue(), context.Event(), context.Queue()
    child = context.Process(target=_attacker, args=(name, ready, stop, sent))
    child.start()
    port, scheme, ca_file = ready.get(timeout=30)
    module = {"username": USER, "password_env": PASSWORD_ENV, "scheme": scheme, "operation_timeout": "3s",
              "read_timeout": "4s", **({"ca_file": ca_file} if ca_file else {})}
    doc = {"poll": {"interval": "60s", "timeout": "5s"}, "modules": {"m": module},
           "servers": [{"name": "VICTIM", "address": "127.0.0.1", "port": port}]}
    if SERVER_ATTACKS[name][2]:
        doc["limits"] = SERVER_ATTACKS[name][2]
    exporter = Exporter(load_config_text(yaml.safe_dump(doc), Path(".")), Catalog.load())
    http_server = serve(exporter, "127.0.0.1", 0, None)
    before = _rss_mib()
    result: dict = {}

    def poll() -> None:
        started = time.monotonic()
        outcome = exporter.poller.poll_server("VICTIM").outcome
        result.update(poll_seconds=round(time.monotonic() - started, 1), reason=outcome.error_reason)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    slowest = 0.0
    while thread.is_alive():
        slowest = max(slowest, _scrape(http_server.server_address[1]))
        time.sleep(0.2)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    stop.set()
    accepted = sent.get(timeout=30)
    child.join(10)
    http_server.shutdown()
    http_server.server_close()
    return {"attack": name, **result, "slowest_metrics_seconds": round(slowest, 2),
            "peak_rss_growth_mib": peak - before, "attacker_bytes_accepted_mib": round(accepted / 2**20, 1)}


def slowloris() -> dict:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    exporter = Exporter(load_config_text(yaml.safe_dump({"modules": {"m": {"username": USER, "password_env":
                                                                         PASSWORD_ENV}}, "servers": ["ex01"]}),
                                         Path(".")), Catalog.load())
    http_server = serve(exporter, "127.0.0.1", 0, None)
    port = http_server.server_address[1]
    attacker = subprocess.Popen([sys.executable, "-c", SLOWLORIS, str(port), str(SLOWLORIS_CONNECTIONS)],
                                stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    slowest, failures, scrapes = 0.0, 0, 0
    while attacker.poll() is None:
        try:
            slowest = max(slowest, _scrape(port, source="127.0.0.2"))
        except OSError:
            failures += 1
        scrapes += 1
        time.sleep(0.2)
    report = json.loads(attacker.stdout.read())
    return {"attack": "slowloris", "connections": SLOWLORIS_CONNECTIONS, **report, "visitor_scrapes": scrapes,
            "visitor_failures": failures, "visitor_slowest_metrics_seconds": round(slowest, 2)}


def main() -> None:
    """Each attack in a fresh process: peak RSS is a high-water mark, so one attack must not inherit another's."""
    os.environ[PASSWORD_ENV] = PASSWORD
    args = sys.argv[1:]
    if args[:1] == ["--exporter-root"]:
        clients.EXPORTER_ROOT = Path(args[1]).resolve()
        args = args[2:]
    if args[:1] == ["--one"]:
        name = args[1]
        print(json.dumps(slowloris() if name == "slowloris" else server_attack(name)), flush=True)
        os._exit(0)  # the attacked poll's leftovers (a cleanup in flight) need not be waited for
    names = args or [*SERVER_ATTACKS, "slowloris", "clients"]
    for name in names:
        if name == "clients" or name in clients.ATTACKS:
            for client_attack in clients.ATTACKS if name == "clients" else [name]:
                print(json.dumps(clients.run(client_attack)), flush=True)
        else:
            subprocess.run([sys.executable, __file__, "--one", name], check=True, timeout=600)


if __name__ == "__main__":
    main()
