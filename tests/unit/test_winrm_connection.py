"""One HTTP/1.1 connection to a WinRM listener (exporter/winrm/connection.py): every framing HTTP allows is
read, every answer is bounded in bytes and in time, and a bad answer ends the connection with a reason.

Against a scripted HTTP server on loopback: a real socket, answers written byte by byte as the test says."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from exporter.winrm.connection import MAX_HEAD_BYTES, Connection, Endpoint
from exporter.winrm.errors import classify

LIMIT = 4096
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/soap+xml\r\nContent-Length: 5\r\n\r\nhello"


class ScriptedServer:
    """Accepts connections on loopback; answers the n-th request of the server's life with `answers[n]`
    (bytes, or a callable given the socket) and records every request as received."""

    def __init__(self, answers: list, host: str = "127.0.0.1"):
        self.answers = list(answers)
        self.requests: list[bytes] = []
        self.connections = 0
        self._listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self._listener.bind((host, 0))
        self._listener.listen()
        self.endpoint = Endpoint("http", host, self._listener.getsockname()[1], "/wsman")
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
                try:
                    if callable(answer):
                        answer(client)
                        return
                    client.sendall(answer)
                except OSError:  # the client already hung up, as it should after a refused answer
                    return

    def connect(self, *, limit: int = LIMIT) -> Connection:
        return Connection.open(self.endpoint, None, deadline=time.monotonic() + 10, timeout=5,
                               max_response_bytes=limit, user_agent="test")


def post(connection: Connection, body: bytes = b"x", deadline: float | None = None):
    return connection.post(body, "Content-Type: text/plain\r\n", deadline=deadline or time.monotonic() + 10,
                           timeout=5)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_the_request_carries_host_length_and_identity(host):
    server = ScriptedServer([OK], host)
    post(server.connect(), b"<x/>")
    head, body = server.requests[0].split(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    authority = f"[{host}]" if ":" in host else host
    assert lines[0] == b"POST /wsman HTTP/1.1"
    assert f"Host: {authority}:{server.endpoint.port}".encode() in lines
    assert b"Accept-Encoding: identity" in lines and b"Content-Length: 4" in lines and body == b"<x/>"


@pytest.mark.parametrize("answer, content", [
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: x\r\n\r\n", b"abcde"),
    (b"HTTP/1.1 100 Continue\r\n\r\n" + OK, b"hello"),
    (b"HTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n" + OK, b"hello"),
    (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nContent-Length: 5\r\n\r\nhello", b"hello"),
    (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
])
def test_every_framing_http_allows_is_read(answer, content):
    server = ScriptedServer([answer, OK])
    connection = server.connect()
    assert post(connection).body == content
    assert post(connection).body == b"hello"  # and the connection stays usable
    assert server.connections == 1


def test_an_answer_delimited_by_the_end_of_the_connection_is_read_and_the_connection_given_up():
    server = ScriptedServer([lambda client: client.sendall(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")])
    connection = server.connect()
    assert post(connection).body == b"until the end"
    assert connection.closed


def test_connection_close_ends_the_connection():
    server = ScriptedServer([b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"])
    connection = server.connect()
    assert post(connection).body == b"ok"
    assert connection.closed


@pytest.mark.parametrize("answer, reason", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n", "output_too_large"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"900\r\n" + b"a" * 2304 + b"\r\n"
     + b"900\r\n" + b"a" * 2304 + b"\r\n0\r\n\r\n", "output_too_large"),
    (b"HTTP/1.1 200 OK\r\n\r\n" + b"a" * (LIMIT + 1), "output_too_large"),
    (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 5\r\n\r\nhello", "wsman_fault"),
    (b"ICY 200 OK\r\n\r\n", "wsman_fault"),
    (b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", "wsman_fault"),
    (b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * (70 << 10), "wsman_fault"),
    (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "wsman_fault"),
    (b"HTTP/1.1 102 Processing\r\n\r\n" * 20 + OK, "wsman_fault"),
    (b"HTTP/1.1 100 Continue\r\n\r\n" * (MAX_HEAD_BYTES // 20), "wsman_fault"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nonly this", "connection_error"),
    (b"", "connection_error"),
])
def test_a_bad_answer_is_refused_with_its_reason_and_ends_the_connection(answer, reason):
    server = ScriptedServer([lambda client: (client.sendall(answer), client.shutdown(socket.SHUT_WR),
                                             _quietly(client.recv, 1))])
    connection = server.connect()
    with pytest.raises(Exception) as raised:
        post(connection)
    assert classify(raised.value).reason == reason, raised.value
    assert connection.closed


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
    started = time.monotonic()
    with pytest.raises(Exception) as raised:
        post(server.connect(), deadline=started + 0.5)  # each read is quick: only the deadline can stop it
    assert classify(raised.value).reason == "deadline_exceeded"
    assert time.monotonic() - started < 1.0


def test_no_answer_at_all_by_the_deadline_is_a_timeout():
    server = ScriptedServer([lambda client: client.recv(1)])
    started = time.monotonic()
    with pytest.raises(Exception) as raised:
        post(server.connect(), deadline=started + 0.5)
    assert classify(raised.value).reason == "timeout"
    assert time.monotonic() - started < 1.0


def test_a_connection_the_server_closed_while_idle_is_seen_before_sending():
    server = ScriptedServer([OK])
    connection = server.connect()
    assert post(connection).body == b"hello"
    deadline = time.monotonic() + 5
    while not connection.dropped():  # the server's thread has no more answers and closes the connection
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert len(server.requests) == 1


def _quietly(read, size: int) -> None:
    """Wait for the client to hang up; a reset is how it may well do so."""
    try:
        read(size)
    except OSError:
        pass
