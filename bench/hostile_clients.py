"""Round 2's hostile clients (issues 20, 22, 24) against a running exporter, one attack at a time.

Each attack starts `python -m exporter run` from `EXPORTER_ROOT` (this checkout unless `bench/hostile.py
--exporter-root DIR` says otherwise) in its own process, attacks its port over loopback, and reports what
the attack achieved. Only the command line, the web-config format and HTTP are used, so an old checkout
runs under the same harness. Run through bench/hostile.py.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import os
import resource
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import bcrypt
import yaml

from bench import free_port, start_simulator
from tests.pki import issue, write
from tests.system.test_hostile_clients import GUESSER, raw_exchange

EXPORTER_ROOT = Path(__file__).resolve().parents[1]
USER, PASSWORD = "prometheus", "web-Passw0rd-for-scrapes"
VISITOR = "127.0.0.2"
PASSWORD_ENV = "EEMS_BENCH_PASSWORD"


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Exporter:
    """`exchange-eems-exporter run` of EXPORTER_ROOT with a web config, in its own process."""

    def __init__(self, directory: Path, web: dict | None, servers: list[dict] | None = None,
                 nofile: int | None = None, tls: bool = False, config: dict | None = None):
        self.directory = directory
        self.port = free_port()
        self.tls = tls
        self.ca = directory / "ca.crt"
        config = config or {
            "poll": {"interval": "300s", "timeout": "15s"},
            "modules": {"default": {"username": "EXCH\\svc", "password_env": PASSWORD_ENV, "scheme": "http",
                                    "operation_timeout": "5s", "read_timeout": "10s"}},
            "servers": servers or [{"name": "EX01", "address": "127.0.0.1", "port": free_port()}]}
        (directory / "config.yml").write_text(yaml.safe_dump(config))
        self.web_config = directory / "web.yml"
        command = [sys.executable, "-m", "exporter", "run", "--config.file", str(directory / "config.yml"),
                   "--web.listen-address", f"127.0.0.1:{self.port}"]
        if web is not None:
            self.web_config.write_text(yaml.safe_dump(web))
            command += ["--web.config.file", str(self.web_config)]
        self.log = open(directory / "exporter.log", "w+b")
        limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))) if nofile else None
        self.process = subprocess.Popen(command, cwd=EXPORTER_ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                        preexec_fn=limit, env={**os.environ, PASSWORD_ENV: "x", "MALLOC_ARENA_MAX": "2"})

    def __enter__(self) -> "Exporter":
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(self.output()[-2000:]) from None
                time.sleep(0.1)

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()

    def output(self) -> str:
        self.log.flush()
        return (self.directory / "exporter.log").read_text(errors="replace")

    def status(self, field: str) -> int:
        """A /proc/PID/status field in KiB (VmRSS, VmHWM)."""
        with open(f"/proc/{self.process.pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))

    def get(self, path: str, headers: dict | None = None, source: str = VISITOR,
            timeout: float = 60) -> tuple[int | str, bytes, float]:
        started = time.monotonic()
        if self.tls:
            context = ssl.create_default_context(cafile=str(self.ca))
            connection = http.client.HTTPSConnection("localhost", self.port, timeout=timeout, context=context,
                                                     source_address=(source, 0))
        else:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout,
                                                    source_address=(source, 0))
        try:
            connection.request("GET", path, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.read(), time.monotonic() - started
        except OSError as error:
            return type(error).__name__, b"", time.monotonic() - started
        finally:
            connection.close()


def _users(*costs: int) -> dict:
    return {"basic_auth_users": {USER if i == 0 else f"user{cost}": bcrypt.hashpw(
        (PASSWORD if i == 0 else "x").encode(), bcrypt.gensalt(cost)).decode() for i, cost in enumerate(costs)}}


def _pki(directory: Path) -> dict:
    ca, ca_key = issue("bench ca", None, None, ca=True)
    write(directory, "ca", ca, ca_key)
    write(directory, "server", *issue("exporter", ca_key, ca.subject, ca=False, server=True))
    return {"cert_file": str(directory / "server.crt"), "key_file": str(directory / "server.key")}


# ---------------------------------------------------------------- the attacks


def bcrypt_guessers(directory: Path) -> dict:
    """20.2: 60 keep-alive connections guess passwords (cost-10 bcrypt); Prometheus' credential is cached."""
    authorization = {"Authorization": _basic(USER, PASSWORD)}
    with Exporter(directory, _users(10)) as exporter:
        exporter.get("/metrics", authorization)
        guessers = subprocess.Popen([sys.executable, "-c", GUESSER, str(exporter.port), "60"],
                                    stdout=subprocess.PIPE, text=True)
        guessers.stdout.readline()
        time.sleep(2)
        times = [exporter.get("/metrics", authorization)[2] for _ in range(10)]
        guessers.kill()
        guessers.wait()
    return {"cached_scrape_seconds_median": round(statistics.median(times), 3),
            "cached_scrape_seconds_slowest": round(max(times), 3)}


def probe_spellings(directory: Path) -> dict:
    """20.3: six probes of a server that never answers, spelled `//probe` or in absolute form, then /metrics."""
    hanging = socket.socket()
    hanging.bind(("127.0.0.1", 0))
    hanging.listen(64)  # connections complete in the kernel, nothing ever answers
    servers = [{"name": "HANG1", "address": "127.0.0.1", "port": hanging.getsockname()[1]}]
    result = {}
    with Exporter(directory, None, servers) as exporter:
        for name, path in (("double_slash", "//probe?target=HANG1"), ("absolute_form", "http://x/probe?target=HANG1")):
            probes = [threading.Thread(target=exporter.get, args=(path, {"X-Prometheus-Scrape-Timeout-Seconds": "6"}),
                                       daemon=True) for _ in range(6)]
            for probe in probes:
                probe.start()
            time.sleep(0.5)
            status, _, seconds = exporter.get("/metrics")
            result[f"{name}_metrics_seconds"] = round(seconds, 2)
            for probe in probes:
                probe.join()
    hanging.close()
    return result


def web_config_truncated(directory: Path) -> dict:
    """20.4: TLS and basic auth, then the web config is cut to nothing; what does the port serve now?"""
    web = {"tls_server_config": _pki(directory), **_users(4)}
    with Exporter(directory, web, tls=True) as exporter:
        exporter.web_config.write_text("")
        time.sleep(2.5)  # the watcher checks once a second
        exporter.tls = False
        plain = exporter.get("/metrics")[0]
        exporter.tls = True
        secured = exporter.get("/metrics", {"Authorization": _basic(USER, PASSWORD)})
        failures = [line for line in secured[1].decode().splitlines()
                    if line.startswith("exchange_exporter_web_config_reload_failures_total")]
        logged = "keeping the previous web config" in exporter.output()
    return {"plain_http_without_password": plain, "https_with_password": secured[0],
            "failed_reload_metric": failures[0] if failures else None, "logged": logged}


def keepalive_slots(directory: Path) -> dict:
    """20.5: open-file limit 1024 (256 slots); 4 addresses x 64 connections, each asks once without a password
    (401) and then holds its connection; then Prometheus scrapes with the password."""
    with Exporter(directory, _users(4), nofile=1024) as exporter:
        attackers = []
        for i in range(256):
            try:
                sock = socket.create_connection(("127.0.0.1", exporter.port), timeout=2,
                                                source_address=(f"127.0.3.{1 + i % 4}", 0))
                sock.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
                attackers.append(sock)
            except OSError:
                pass
        time.sleep(1)
        held = 0
        for sock in attackers:
            try:
                sock.setblocking(False)
                while sock.recv(65536):
                    pass
                held += 0  # closed by the server
            except BlockingIOError:
                held += 1
            except OSError:
                pass
        status = exporter.get("/metrics", {"Authorization": _basic(USER, PASSWORD)}, timeout=10)[0]
        for sock in attackers:
            sock.close()
    return {"attacker_connections_held_after_401": held, "prometheus_scrape": status}


@contextmanager
def simulated_fleet(directory: Path, servers: int):
    """bench/bench.py's generated fleet (this checkout's simulator), polled by the exporter: its config."""
    options = argparse.Namespace(servers=servers, address_base="127.1.0.1", latency=0.0, runtime=0.0,
                                 simulator_python=sys.executable)
    simulator, config_file, _ = start_simulator(options, directory)
    try:
        config = yaml.safe_load(config_file.read_text())
        config["poll"] = {"interval": "300s", "timeout": "60s", "concurrency": 100}
        config.pop("organization", None)
        yield config
    finally:
        simulator.terminate()
        simulator.wait()


def wait_ready(exporter: Exporter, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while exporter.get("/-/ready")[0] != 200:
        if time.monotonic() > deadline:
            raise RuntimeError("the exporter did not poll every server in time")
        time.sleep(1)


def slow_readers(directory: Path) -> dict:
    """20.7: 2,000 simulated servers polled once; 100 clients ask for /metrics and never read it; the
    exporter's peak RSS growth, and whether a visitor still gets its scrape."""
    with simulated_fleet(directory, 2000) as config, Exporter(directory, None, config=config) as exporter:
        wait_ready(exporter)
        body = exporter.get("/metrics")[1]
        before = exporter.status("VmHWM")
        readers = []
        for i in range(100):
            sock = socket.create_connection(("127.0.0.1", exporter.port), source_address=(f"127.0.4.{1 + i % 8}", 0))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            readers.append(sock)
        time.sleep(10)
        peak = exporter.status("VmHWM")
        visitor = exporter.get("/metrics", timeout=30)
        for sock in readers:
            sock.close()
    return {"metrics_body_mib": round(len(body) / 2**20, 2), "peak_rss_growth_mib": (peak - before) // 1024,
            "visitor_scrape": visitor[0], "visitor_seconds": round(visitor[2], 2)}


def tls_close(directory: Path) -> dict:
    """22.11: over TLS, `Connection: close`: how long until the connection closes, and with close_notify?"""
    with Exporter(directory, {"tls_server_config": _pki(directory)}, tls=True) as exporter:
        context = ssl.create_default_context(cafile=str(exporter.ca))
        with socket.create_connection(("127.0.0.1", exporter.port), timeout=60) as raw:
            with context.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False) as tls:
                started = time.monotonic()
                tls.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                ending = "close_notify"
                try:
                    while tls.recv(65536):
                        pass
                except ssl.SSLEOFError:
                    ending = "no close_notify"
                except OSError as error:
                    ending = type(error).__name__
                seconds = time.monotonic() - started
    return {"seconds_to_close": round(seconds, 2), "ending": ending}


def decoy_prediction(directory: Path) -> dict:
    """22.12: users at bcrypt cost 4 and 13; for 24 unknown names, does the answer time follow sha256(name)?"""
    costs = (4, 13)
    with Exporter(directory, {"basic_auth_users": {f"user{c}": bcrypt.hashpw(b"x", bcrypt.gensalt(c)).decode()
                                                   for c in costs}}) as exporter:
        def seconds(user: str) -> float:  # the least of two tries: load on the machine only adds
            return min(exporter.get("/-/healthy", {"Authorization": _basic(user, "wrong")})[2] for _ in range(2))

        threshold = (seconds("user4") + seconds("user13")) / 2
        names = [f"nobody{i}" for i in range(24)]
        predicted = sum(costs[int.from_bytes(hashlib.sha256(n.encode()).digest()[:8], "big") % 2]
                        == costs[seconds(n) > threshold] for n in names)
    return {"names_at_the_predicted_cost": f"{predicted}/{len(names)}"}


def malformed_heads(directory: Path) -> dict:
    """24.15: 200 requests with a 5,000-digit Content-Length, then the RFC 9112 cases; answers and ERROR lines."""
    heads = {
        "two_content_lengths": b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nab",
        "space_before_colon": b"GET /metrics HTTP/1.1\r\nHost : x\r\n\r\n",
        "bare_lf": b"GET /metrics HTTP/1.1\nHost: x\r\n\r\n",
    }
    with Exporter(directory, None) as exporter:
        huge = b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n"
        answers = [raw_exchange(exporter.port, huge, timeout=2)[:12] for _ in range(200)]
        result = {"huge_content_length_answered": sum(a.startswith(b"HTTP/1.1 413") for a in answers)}
        for name, head in heads.items():
            answer = raw_exchange(exporter.port, head, timeout=2)
            result[name] = answer[9:12].decode() or "no answer"
        time.sleep(0.5)
        log = exporter.output()
    result["error_lines_in_log"] = sum("ERROR" in line or "level=error" in line for line in log.splitlines())
    result["log_kib"] = len(log) // 1024
    return result


def client_cert_without_ca(directory: Path) -> dict:
    """24.20: client_auth_type RequireAndVerifyClientCert without client_ca_file: does the exporter start?"""
    web = {"tls_server_config": {**_pki(directory), "client_auth_type": "RequireAndVerifyClientCert"}}
    exporter = Exporter(directory, web, tls=True)
    try:
        with exporter:
            return {"starts": True}
    except RuntimeError as error:
        lines = [line for line in str(error).splitlines() if "client_ca_file" in line]
        return {"starts": False, "message": lines[0][lines[0].index("client_ca_file"):][:200] if lines else str(error)[-200:]}


ATTACKS = {
    "bcrypt_guessers": bcrypt_guessers,
    "probe_spellings": probe_spellings,
    "web_config_truncated": web_config_truncated,
    "keepalive_slots": keepalive_slots,
    "slow_readers": slow_readers,
    "tls_close": tls_close,
    "decoy_prediction": decoy_prediction,
    "malformed_heads": malformed_heads,
    "client_cert_without_ca": client_cert_without_ca,
}


def run(name: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="eems-hostile-") as directory:
        return {"attack": name, "exporter": str(EXPORTER_ROOT), **ATTACKS[name](Path(directory))}
