"""A hostile client on the exporter's port (issue 10): slowloris, /probe misuse, timing, pasted secrets.

Each test failed before its fix; the figures in the assertions are what the attack achieved then.
"""

from __future__ import annotations

import base64
import http.client
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bcrypt
import pytest
import yaml

from exporter.catalog import Catalog
from exporter.config import ConfigError, load_config_text
from exporter.exporter import Exporter
from exporter.http_server import REQUEST_DEADLINE_SECONDS, serve
from exporter.webconfig import WebConfig, WebConfigError

from ..conftest import PASSWORD, PASSWORD_ENV, USERNAME, SimulatedFleet, minimal_config, relocate, wait_until

ATTACKER, VISITOR = "127.0.0.1", "127.0.0.2"


@pytest.fixture
def exporter_port():
    exporter = Exporter(load_config_text(minimal_config(), Path(".")), Catalog.load())
    server = serve(exporter, "127.0.0.1", 0, None)
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _get(port: int, path: str, source: str = VISITOR, headers: dict | None = None) -> tuple[int, bytes, float]:
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read(), time.monotonic() - started
    finally:
        connection.close()


# ---------------------------------------------------------------- finding 5: slowloris


def _open(sock: socket.socket) -> bool:
    """Whether the server still holds this connection (it has neither closed nor reset it)."""
    try:
        return sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def test_trickling_connections_are_capped_and_cut_at_the_request_deadline(exporter_port):
    attackers = []
    for _ in range(200):
        sock = socket.create_connection(("127.0.0.1", exporter_port), source_address=(ATTACKER, 0))
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: exporter\r\n")
        attackers.append(sock)
    stop = threading.Event()

    def trickle() -> None:  # one byte a second per connection: no per-read timeout ever fires
        while not stop.wait(1.0):
            for sock in attackers:
                try:
                    sock.send(b"X")
                except OSError:
                    pass

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        def held() -> int:
            return sum(_open(sock) for sock in attackers)

        wait_until(lambda: held() <= 64, 5, "the per-address cap to close the connections over it")
        status, _, seconds = _get(exporter_port, "/metrics")
        assert status == 200 and seconds < 1.0, seconds
        wait_until(lambda: held() == 0, REQUEST_DEADLINE_SECONDS + 3,
                   "the request deadline to cut every trickling connection")
    finally:
        stop.set()
        trickler.join()
        for sock in attackers:
            sock.close()


# ---------------------------------------------------------------- finding 6 and 10: /probe


def test_probe_refuses_a_module_whose_credentials_the_target_would_expose(tmp_path):
    """`secure` sends Basic credentials and is only allowed over https; EDGE01 listens on plain http."""
    with socket.socket() as bait:
        bait.bind(("127.0.0.1", 0))
        bait.listen(8)
        bait.setblocking(False)
        text = yaml.safe_dump({
            "modules": {
                "default": {"username": USERNAME, "password_env": PASSWORD_ENV, "scheme": "http"},
                "secure": {"transport": "basic", "username": USERNAME, "password_env": PASSWORD_ENV},
            },
            "servers": [{"name": "EDGE01", "address": "127.0.0.1", "port": bait.getsockname()[1]}],
        })
        exporter = Exporter(load_config_text(text, tmp_path), Catalog.load())
        server = serve(exporter, "127.0.0.1", 0, None)
        try:
            status, body, _ = _get(server.server_address[1], "/probe?target=EDGE01&module=secure",
                                   headers={"X-Prometheus-Scrape-Timeout-Seconds": "2"})
        finally:
            server.shutdown()
            server.server_close()
        assert status == 400, body
        assert b"clear text" in body
        with pytest.raises(BlockingIOError):
            bait.accept()  # no connection was attempted


def test_probe_with_many_query_parameters_is_400(exporter_port):
    query = "&".join(f"p{i}=1" for i in range(20))
    status, body, _ = _get(exporter_port, f"/probe?target=ex01.contoso.com&{query}")
    assert status == 400 and b"Traceback" not in body


def test_concurrent_probes_of_a_hanging_server_each_keep_the_scrape_timeout():
    scenario = {"servers": [{"name": "HANG1", "address": "127.0.0.1", "build": "15.2.2562.53"}]}
    with SimulatedFleet(relocate(scenario)) as fleet:
        fleet.hosts["HANG1"].faults.hang = True
        exporter = Exporter(fleet.config(timeout="15s"), Catalog.load())
        server = serve(exporter, "127.0.0.1", 0, None)
        try:
            with ThreadPoolExecutor(6) as pool:
                answers = list(pool.map(
                    lambda _: _get(server.server_address[1], "/probe?target=HANG1",
                                   headers={"X-Prometheus-Scrape-Timeout-Seconds": "3"}), range(6)))
        finally:
            server.shutdown()
            server.server_close()
            exporter.stop()
    slowest = max(seconds for _, _, seconds in answers)
    assert all(status == 200 for status, _, _ in answers)
    assert slowest < 3.5, f"the slowest of six probes answered after {slowest:.1f}s with a 3 s scrape timeout"


# ---------------------------------------------------------------- finding 10: secrets and timing


def test_a_password_pasted_into_password_env_is_not_echoed(monkeypatch):
    pasted = "Summer2026Secret"  # looks like a variable name, so it passes the name check
    monkeypatch.delenv(pasted, raising=False)
    text = minimal_config().replace(f"password_env: {PASSWORD_ENV}", f"password_env: {pasted}")
    with pytest.raises(ConfigError) as error:
        load_config_text(text, Path("."))
    assert "password_env" in str(error.value) and pasted not in str(error.value)


def test_basic_auth_timing_does_not_single_out_existing_users(tmp_path):
    """Users with different bcrypt costs: unknown names must not all take one time that no real user takes
    (before: every unknown name paid the highest cost, so a fast answer meant 'this user exists')."""
    fast, slow = bcrypt.hashpw(b"a", bcrypt.gensalt(4)), bcrypt.hashpw(b"b", bcrypt.gensalt(11))
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump({"basic_auth_users": {"alice": fast.decode(), "bob": slow.decode()}}))
    config = WebConfig.load(path)

    def seconds(user: str) -> float:
        header = "Basic " + base64.b64encode(f"{user}:wrong".encode()).decode()
        started = time.monotonic()
        assert not config.check_basic_auth(header)
        return time.monotonic() - started

    threshold = (seconds("alice") + seconds("bob")) / 2
    unknown = [seconds(f"nobody{i}") for i in range(16)]
    assert any(t < threshold for t in unknown) and any(t > threshold for t in unknown), (threshold, unknown)



def test_a_large_response_reaches_a_slow_reader_whole():
    """The asyncio front end hands whole responses to the kernel before it closes; nothing is cut off."""
    body = b"# a large page\n" * (1 << 19)  # 7.5 MiB

    class LargeMetrics(Exporter):
        def metrics_body(self, accept: str) -> tuple[bytes, str]:
            return body, "text/plain; version=0.0.4; charset=utf-8"

    exporter = LargeMetrics(load_config_text(minimal_config(), Path(".")), Catalog.load())
    server = serve(exporter, "127.0.0.1", 0, None)
    try:
        with socket.create_connection(server.server_address) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: exporter\r\nConnection: close\r\n\r\n")
            received = bytearray()
            while chunk := sock.recv(1 << 20):
                received += chunk
                time.sleep(0.01)
    finally:
        server.shutdown()
        server.server_close()
    assert received.endswith(body) and f"Content-Length: {len(body)}".encode() in received


def test_a_yaml_alias_bomb_in_the_web_config_is_a_short_error(tmp_path):
    levels = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    levels += [f"{b}: &{b} [{','.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefg", "bcdefgh")]
    path = tmp_path / "web.yml"
    path.write_text("tls_server_config:\n  min_version:\n" + "".join(f"    - {line.split(': ', 1)[1]}\n" for line in levels))
    started = time.monotonic()
    with pytest.raises(WebConfigError) as error:  # before: TypeError (a list is unhashable)
        WebConfig.load(path)
    assert len(str(error.value)) < 1000 and time.monotonic() - started < 5
