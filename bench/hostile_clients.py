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

    def cpu_seconds(self) -> float:
        """The process's user and system CPU time so far (/proc/PID/stat)."""
        with open(f"/proc/{self.process.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

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


def _pki(directory: Path, rsa_bits: int | None = None) -> dict:
    ca, ca_key = issue("bench ca", None, None, ca=True)
    write(directory, "ca", ca, ca_key)
    write(directory, "server", *issue("exporter", ca_key, ca.subject, ca=False, server=True, rsa_bits=rsa_bits))
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


class _Prometheus:
    """Authenticated scrapes of /metrics over TLS, as Prometheus makes them (one kept connection), and every fourth
    one on a new connection too (a scrape after its kept connection was closed pays a handshake)."""

    def __init__(self, exporter: Exporter):
        self.exporter = exporter
        self.context = ssl.create_default_context(cafile=str(exporter.ca))
        self.headers = {"Authorization": _basic(USER, PASSWORD)}
        self.kept = self._connect()

    def _connect(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("localhost", self.exporter.port, timeout=60, context=self.context,
                                           source_address=(VISITOR, 0))

    def _scrape(self, connection: http.client.HTTPSConnection) -> tuple[float, bytes]:
        started = time.monotonic()
        connection.request("GET", "/metrics", headers=self.headers)
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"scrape answered {response.status}")
        return time.monotonic() - started, body

    def phase(self, seconds: float) -> dict:
        """Scrape for `seconds`; the latencies, the exporter's CPU, and its polls' durations at the end."""
        kept, new = [], []
        cpu = self.exporter.cpu_seconds()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                kept.append(self._scrape(self.kept)[0])
            except (OSError, http.client.HTTPException):  # cut (at the cap): connect again, as Prometheus does
                self.kept.close()
                self.kept = self._connect()
            if len(kept) % 4 == 0:
                connection = self._connect()
                try:
                    new.append(self._scrape(connection)[0])
                finally:
                    connection.close()
            time.sleep(0.25)
        body = self._scrape(self.kept)[1].decode()
        polls = [float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
                 if line.startswith("exchange_collector_duration_seconds{")]
        return {"kept_median": statistics.median(kept), "kept_max": max(kept), "new_median": statistics.median(new),
                "new_max": max(new), "poll_median": statistics.median(polls) if polls else None,
                "exporter_cores": (self.exporter.cpu_seconds() - cpu) / seconds}


def _ratios(quiet: dict, loud: dict) -> dict:
    """Each figure of the attacked phase, and its ratio to the same figure unattacked (the same run)."""
    result = {}
    for key, value in loud.items():
        result[key] = round(value, 4) if value is not None else None
        if key != "exporter_cores" and value is not None and quiet[key]:
            result[key + "_ratio"] = round(value / quiet[key], 1)
    result["unattacked"] = {key: round(value, 4) for key, value in quiet.items() if value is not None}
    return result


def tls_handshake_flood(directory: Path, clients: int = 48) -> dict:
    """Open item (a) of the TLS review: TLS handshakes run on the event loop. `clients` `openssl s_time -new`
    processes make full handshakes (RSA 2048, cert-manager's default key, whose signature is the server's cost) as
    fast as they can, without a password, while Prometheus scrapes with one and 20 simulated servers are polled every
    10 s. Every figure is against the same exporter unattacked in the same run (attackers and exporter share this
    machine's cores: on a real network, the attackers' CPU is their own). Also the exporter's peak RSS growth."""
    web = {"tls_server_config": _pki(directory, rsa_bits=2048), **_users(10)}
    with simulated_fleet(directory, 20) as config:
        config["poll"].update(interval="10s", timeout="5s")
        with Exporter(directory, web, config=config, tls=True) as exporter:
            prometheus = _Prometheus(exporter)
            prometheus.phase(12)  # the first polls, and the scrape's credential verified once (bcrypt)
            quiet = prometheus.phase(15)
            attackers = [subprocess.Popen(["openssl", "s_time", "-new", "-connect", f"127.0.0.1:{exporter.port}",
                                           "-time", "17"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                         for _ in range(clients)]
            rss = exporter.status("VmRSS")
            time.sleep(1)
            loud = prometheus.phase(15)
            grown = exporter.status("VmHWM") - rss
            handshakes = sum(int(line.split()[0]) for attacker in attackers
                             for line in attacker.communicate()[0].splitlines() if "real seconds" in line)
    return {"attackers": clients, "attacker_handshakes_per_second": round(handshakes / 17),
            "peak_rss_growth_mib": grown // 1024, **_ratios(quiet, loud)}


def tls_slow_handshakes(directory: Path) -> dict:
    """Open item (a), the slow kind: every connection slot (512: open-file limit 4096) taken by 8 client addresses
    that each send a ClientHello, read the server's answer and never finish the handshake, again as soon as the
    request deadline cuts them. The exporter's RSS growth, and Prometheus' scrapes against the same run unattacked."""
    web = {"tls_server_config": _pki(directory, rsa_bits=2048), **_users(10)}
    with Exporter(directory, web, tls=True, nofile=4096) as exporter:
        prometheus = _Prometheus(exporter)
        prometheus.phase(2)
        quiet = prometheus.phase(8)
        rss = exporter.status("VmRSS")
        stop = threading.Event()
        holders = [threading.Thread(target=_unfinished_handshakes, args=(exporter.port, f"127.0.7.{1 + i}", 64, stop))
                   for i in range(8)]
        for holder in holders:
            holder.start()
        time.sleep(5)
        loud = prometheus.phase(15)
        grown = exporter.status("VmRSS") - rss
        stop.set()
        for holder in holders:
            holder.join()
    return {"rss_growth_mib": grown // 1024, **_ratios(quiet, loud)}


def _unfinished_handshakes(port: int, source: str, connections: int, stop: threading.Event) -> None:
    """Keep `connections` from `source` each with a ClientHello sent and the server's answer read, and no more."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    held: list[socket.socket] = []
    while not stop.is_set():
        for sock in [s for s in held if _closed(s)]:
            held.remove(sock)
            sock.close()
        while len(held) < connections and not stop.is_set():
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
                outgoing = ssl.MemoryBIO()
                tls = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname="localhost")
                try:
                    tls.do_handshake()
                except ssl.SSLWantReadError:
                    pass
                sock.sendall(outgoing.read())
                sock.recv(65536)
                held.append(sock)
            except OSError:
                break
        stop.wait(0.5)
    for sock in held:
        sock.close()


def _closed(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(65536) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


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
    "tls_handshake_flood": tls_handshake_flood,
    "tls_slow_handshakes": tls_slow_handshakes,
}


def run(name: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="eems-hostile-") as directory:
        return {"attack": name, "exporter": str(EXPORTER_ROOT), **ATTACKS[name](Path(directory))}
