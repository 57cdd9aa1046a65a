"""The kept connection (exporter/kept_connection.py): what it writes is what urllib3 wrote, what it reads is
bounded like every other answer, and a poll sends its steady requests through it, not through requests.

The request and answer tests run against a scripted HTTP server on loopback (a real socket, answers written
byte by byte as the test says); the poll tests against the simulator with NTLM and message encryption."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import requests
import urllib3

from exporter.bounded_http import BoundedAdapter, DeadlineExceeded, ResponseTooLarge, UnexpectedResponse
from exporter.kept_connection import MAX_HEADERS, KeptConnection, request_head
from exporter.winrm_client import classify

from ..conftest import wait_until
from .test_winrm_client import COMMAND, connection, fleet  # noqa: F401  (fixture)

LIMIT = 4096
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/soap+xml\r\nContent-Length: 5\r\n\r\nhello"


class ScriptedServer:
    """Accepts connections on loopback; answers the n-th request of the server's life with `answers[n]`
    (bytes, or a callable given the socket) and records every request as received."""

    def __init__(self, answers: list, host: str = "127.0.0.1"):
        self.answers = list(answers)
        self.requests: list[bytes] = []
        self.connections = 0
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family)
        self._listener.bind((host, 0))
        self._listener.listen()
        self.port = self._listener.getsockname()[1]
        self.host = host
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._connection, args=(client,), daemon=True).start()

    def _connection(self, client: socket.socket) -> None:
        with client:
            data = b""
            while self.answers:
                while b"\r\n\r\n" not in data:
                    chunk = client.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, rest = data.partition(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                while len(rest) < length:
                    rest += client.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + rest[:length])
                data = rest[length:]
                answer = self.answers.pop(0)
                if callable(answer):
                    answer(client)
                    return
                client.sendall(answer)

    def close(self) -> None:
        self._listener.close()


def kept(server: ScriptedServer, *, limit: int = LIMIT) -> tuple[KeptConnection, BoundedAdapter]:
    adapter = BoundedAdapter(limit)
    conn = urllib3.connection.HTTPConnection(server.host, server.port)
    conn.connect()
    adapter.sockets.add(conn.sock)
    return KeptConnection(conn, request_head(conn, "/wsman", {"User-Agent": "test"}), adapter), adapter


def test_the_request_is_the_one_urllib3_writes():
    """The same message through requests (the first request of a connection) and through the kept
    connection arrives with the same request line, the same headers and the same body."""
    for host in ("127.0.0.1", "::1"):
        server = ScriptedServer([OK, OK], host=host)
        session = requests.Session()
        adapter = BoundedAdapter(LIMIT)
        session.mount("http://", adapter)
        session.headers.update({"Content-Type": "application/soap+xml;charset=UTF-8", "User-Agent": "Python WinRM client"})
        url = f"http://{'[::1]' if host == '::1' else host}:{server.port}/wsman"
        body = b"<env:Envelope>message</env:Envelope>"
        prepared = session.prepare_request(requests.Request("POST", url, data=body))
        assert session.send(prepared).content == b"hello"
        template = dict(session.prepare_request(requests.Request("POST", url)).headers)
        template["Accept-Encoding"] = "identity"
        channel = KeptConnection(adapter.last_connection, request_head(adapter.last_connection, "/wsman", template), adapter)
        assert channel.exchange(body, "application/soap+xml;charset=UTF-8", 5).content == b"hello"
        server.close()
        first, second = (request.split(b"\r\n\r\n", 1) for request in server.requests)
        first_lines, second_lines = first[0].split(b"\r\n"), second[0].split(b"\r\n")
        assert first_lines[:2] == second_lines[:2]  # request line, then Host
        assert sorted(first_lines) == sorted(second_lines)
        assert first[1] == second[1] == body
        assert server.connections == 1


@pytest.mark.parametrize("answer, content", [
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: x\r\n\r\n", b"abcde"),
    (b"HTTP/1.1 100 Continue\r\n\r\n" + OK, b"hello"),
    (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nContent-Length: 5\r\n\r\nhello", b"hello"),
    (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
])
def test_every_framing_http_allows_is_read(answer, content):
    server = ScriptedServer([answer, OK])
    channel, _ = kept(server)
    assert channel.exchange(b"x", "text/plain", 5).content == content
    assert channel.exchange(b"y", "text/plain", 5).content == b"hello"  # and the connection stays usable
    assert server.connections == 1


def test_an_answer_delimited_by_the_end_of_the_connection_is_read_and_the_connection_given_up():
    server = ScriptedServer([lambda client: client.sendall(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")])
    channel, _ = kept(server)
    assert channel.exchange(b"x", "text/plain", 5).content == b"until the end"
    assert not channel.open


def test_connection_close_ends_the_kept_connection():
    server = ScriptedServer([b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"])
    channel, _ = kept(server)
    assert channel.exchange(b"x", "text/plain", 5).content == b"ok"
    assert not channel.open


@pytest.mark.parametrize("answer, error, reason", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n", ResponseTooLarge, "output_too_large"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"900\r\n" + b"a" * 2304 + b"\r\n"
     + b"900\r\n" + b"a" * 2304 + b"\r\n0\r\n\r\n", ResponseTooLarge, "output_too_large"),
    (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 5\r\n\r\nhello", UnexpectedResponse, "wsman_fault"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", UnexpectedResponse, "wsman_fault"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n", UnexpectedResponse, "wsman_fault"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", UnexpectedResponse, "wsman_fault"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", UnexpectedResponse, "wsman_fault"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"0" * 5000, UnexpectedResponse, "wsman_fault"),
    (b"ICY 200 OK\r\n\r\n", UnexpectedResponse, "wsman_fault"),
    (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", UnexpectedResponse, "wsman_fault"),
    (b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * (MAX_HEADERS + 1) + b"\r\n", UnexpectedResponse, "wsman_fault"),
    (b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * (70 << 10), UnexpectedResponse, "wsman_fault"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nonly this", requests.exceptions.ConnectionError, "connection_error"),
    (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", UnexpectedResponse, "wsman_fault"),
])
def test_a_bad_answer_is_refused_and_ends_the_connection(answer, error, reason):
    server = ScriptedServer([lambda client: (client.sendall(answer), client.shutdown(socket.SHUT_WR),
                                             time.sleep(0.5))])
    channel, _ = kept(server)
    with pytest.raises(error) as raised:
        channel.exchange(b"x", "text/plain", 5)
    assert classify(raised.value).reason == reason
    assert not channel.open


def test_a_dripping_answer_stops_at_the_deadline():
    def drip(client: socket.socket) -> None:
        client.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        try:
            for _ in range(100):
                client.sendall(b"a")
                time.sleep(0.1)
        except OSError:
            pass

    server = ScriptedServer([drip])
    channel, adapter = kept(server)
    started = time.monotonic()
    adapter.guard(started + 1)
    with pytest.raises(DeadlineExceeded):
        channel.exchange(b"x", "text/plain", 5)  # each read is quick: only the deadline can stop it
    adapter.release()
    assert time.monotonic() - started < 3


def test_a_connection_the_server_closed_while_idle_is_seen_before_sending():
    server = ScriptedServer([OK])
    channel, _ = kept(server)
    assert channel.exchange(b"x", "text/plain", 5).content == b"hello"
    wait_until(channel.dropped, 5, "the server's thread, out of answers, to close the connection")
    with pytest.raises(requests.exceptions.ConnectionError):
        channel.exchange(b"y", "text/plain", 5)
    assert len(server.requests) == 1


def test_steady_requests_do_not_go_through_requests(fleet, monkeypatch):  # noqa: F811
    sends = []
    original = requests.Session.send
    monkeypatch.setattr(requests.Session, "send", lambda self, *a, **k: sends.append(1) or original(self, *a, **k))
    conn = connection(fleet, "EX02")
    conn.run(COMMAND, time.monotonic() + 20)
    first = len(sends)
    conn.run(COMMAND, time.monotonic() + 20)
    conn.close()
    assert first >= 1 and len(sends) == first, (first, len(sends))


def test_an_idle_connection_the_server_dropped_is_replaced_without_a_failed_request(fleet, monkeypatch):  # noqa: F811
    """HTTP.sys closes a connection idle for about two minutes, shorter than any poll interval: the next poll
    sees it closed and authenticates anew, at the cost of the handshake only (8 requests, not more)."""
    import simulator.server

    monkeypatch.setattr(simulator.server, "KEEPALIVE_IDLE_SECONDS", 0.5)
    conn = connection(fleet, "EX03")
    before = fleet.fleet.request_count("EX03")
    conn.run(COMMAND, time.monotonic() + 20)
    first = fleet.fleet.request_count("EX03") - before
    time.sleep(1.5)
    result = conn.run(COMMAND, time.monotonic() + 20)
    second = fleet.fleet.request_count("EX03") - before - first
    conn.close()
    assert result.exit_code == 0
    assert second == first == 8, (first, second)
