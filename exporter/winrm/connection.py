"""One HTTP/1.1 connection to a WinRM listener: every byte under the poll's deadline and a size bound.

The exporter owns the socket. A request is written by hand (its few headers never change within a
connection) in one `sendall`; its answer is read by the standard library's `http.client.HTTPResponse`
(status line, headers, Content-Length, chunked or close-delimited bodies, `100 Continue`) from a reader
that this module puts under it, `_Incoming`, through which every byte passes, whoever asks for it:
- each socket read waits at most the request's read timeout and never past the poll's deadline, so a
  server that drips one byte a second fails at the deadline, not at its own pace. A deadline reached with
  no byte of the answer is `NoAnswer` (reason `timeout`), one reached while an answer trickles in is
  `DeadlineExceeded` (reason `deadline_exceeded`);
- everything before an answer's body (interim 1xx answers included) fits in MAX_HEAD_BYTES, so a server
  that streams `100 Continue` for ever is refused after a few kilobytes, as a malformed answer;
- the body fits in `limits.max_response_bytes` (refused unread when its Content-Length says more), and a
  compressed body is refused (we ask for `identity`; WinRM never compresses), since counting wire bytes
  would not bound what it inflates to.
Connecting (TCP, then TLS) is held to the same deadline. Nothing here knows about authentication or
WS-Management: `session.py` builds on `post`.
"""

from __future__ import annotations

import http.client
import io
import math
import select
import socket
import ssl
import time
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import urlsplit

from .errors import DeadlineExceeded, MalformedAnswer, NoAnswer, ResponseTooLarge

MAX_HEAD_BYTES = 64 << 10  # status lines and headers of one answer, interim answers included
MAX_INTERIM_ANSWERS = 8  # 1xx answers other than 100 Continue (which http.client skips within MAX_HEAD_BYTES)
_READ_AHEAD = 8 << 10  # io.BufferedReader's buffer: what the head may have read of the body


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> "Endpoint":
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (5986 if parts.scheme == "https" else 5985)
        return cls(parts.scheme, parts.hostname, port, (parts.path or "/") + (f"?{parts.query}" if parts.query else ""))

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class Answer(NamedTuple):
    status: int
    headers: http.client.HTTPMessage  # case-insensitive get(); get_all() for repeated headers
    body: bytes


class _Incoming(io.RawIOBase):
    """The socket's incoming bytes, each read under the deadline and within the current budget."""

    def __init__(self, sock: socket.socket):
        super().__init__()
        self.sock = sock
        self.deadline = math.inf
        self.timeout = 30.0
        self.budget = 0
        self.too_much: type[Exception] = ResponseTooLarge
        self.received = 0  # bytes of the current answer so far
        self._socket_timeout: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise self._late()
        timeout = min(self.timeout, remaining)
        if timeout != self._socket_timeout:
            self.sock.settimeout(timeout)
            self._socket_timeout = timeout
        view = memoryview(buffer).cast("B")
        try:
            size = self.sock.recv_into(view[: max(1, min(len(view), self.budget + 1))])
        except TimeoutError:
            if timeout < self.timeout:  # cut short by the deadline
                raise self._late() from None
            raise
        self.received += size
        self.budget -= size
        if self.budget < 0:
            raise self.too_much(self._too_much_text())
        return size

    def _late(self) -> Exception:
        if self.received == 0:
            return NoAnswer("no answer from the WinRM service before the poll deadline")
        return DeadlineExceeded("the poll deadline passed while reading the answer")

    def _too_much_text(self) -> str:
        if self.too_much is ResponseTooLarge:
            return "WinRM response exceeds limits.max_response_bytes"
        return f"an answer whose status lines and headers exceed {MAX_HEAD_BYTES} bytes"


class _Reader(io.BufferedReader):
    """The connection's one buffered reader: http.client closes its file after each complete body, but
    bytes read ahead (past an interim answer, say) belong to the next answer, and the socket to the
    Connection."""

    def close(self) -> None:
        pass

    def read(self, size: int | None = -1) -> bytes:
        """http.client reads a chunk of the size the server declares in one call, and io.BufferedReader makes a
        buffer of that size before reading: a declared petabyte was a MemoryError (internal_error). More than the
        budget, plus what is buffered already, cannot arrive within it anyway."""
        if size is not None and size > self.raw.budget + _READ_AHEAD:
            raise self.raw.too_much(self.raw._too_much_text())
        return super().read(size)


class Connection:
    """One open connection, used by one poll at a time."""

    def __init__(self, sock: socket.socket, endpoint: Endpoint, max_response_bytes: int, user_agent: str):
        self._sock: socket.socket | None = sock
        self.endpoint = endpoint
        self.max_response_bytes = max_response_bytes
        self._incoming = _Incoming(sock)
        self._reader = _Reader(self._incoming, _READ_AHEAD)
        self._head = (f"POST {endpoint.path} HTTP/1.1\r\nHost: {endpoint.authority}\r\n"
                      f"User-Agent: {user_agent}\r\nAccept-Encoding: identity\r\n").encode("latin-1")
        self.requests = 0
        self.last_used = time.monotonic()

    @classmethod
    def open(cls, endpoint: Endpoint, tls: ssl.SSLContext | None, *, deadline: float, timeout: float,
             max_response_bytes: int, user_agent: str) -> "Connection":
        """Connect (and for https, complete the TLS handshake) before `deadline`."""
        sock = socket.create_connection((endpoint.host, endpoint.port), timeout=_within(deadline, timeout))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # one sendall per request: send it now
            if tls is not None:
                sock = tls.wrap_socket(sock, server_hostname=endpoint.host, do_handshake_on_connect=False)
                sock.settimeout(_within(deadline, timeout))
                sock.do_handshake()  # CPython bounds the whole handshake by the socket timeout
        except BaseException:
            sock.close()
            raise
        return cls(sock, endpoint, max_response_bytes, user_agent)

    def makefile(self, *_args, **_kwargs) -> io.BufferedReader:
        """What http.client.HTTPResponse needs of a socket: the connection's one reader, `_Reader`."""
        return self._reader

    @property
    def closed(self) -> bool:
        return self._sock is None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def certificate(self) -> bytes | None:
        """The server's certificate (DER) on a TLS connection, for channel binding."""
        if isinstance(self._sock, ssl.SSLSocket):
            return self._sock.getpeercert(binary_form=True)
        return None

    def dropped(self) -> bool:
        """Whether the server closed the connection while it sat idle (HTTP.sys does after about two minutes):
        an idle HTTP connection has nothing to read, so anything readable means it is over."""
        sock = self._sock
        if sock is None:
            return True
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        if hasattr(select, "poll"):  # select() cannot watch descriptors above 1023
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0))
        return bool(select.select([sock], [], [], 0)[0])

    def post(self, body: bytes, headers: str, *, deadline: float, timeout: float) -> Answer:
        """Send one POST (`headers`: further header lines, each ending in CRLF) and read its whole answer.
        Any failure closes the connection: what is left on it is unknown."""
        if self._sock is None:
            raise ConnectionError("the connection is closed")
        request = b"%s%sContent-Length: %d\r\n\r\n%s" % (self._head, headers.encode("latin-1"), len(body), body)
        try:
            self._send(request, deadline, timeout)
            answer, keep = self._read(deadline, timeout)
        except BaseException:
            self.close()
            raise
        self.requests += 1
        self.last_used = time.monotonic()
        if not keep:
            self.close()
        return answer

    def _send(self, request: bytes, deadline: float, timeout: float) -> None:
        limit = _within(deadline, timeout)
        self._sock.settimeout(limit)
        self._incoming._socket_timeout = limit
        try:
            self._sock.sendall(request)  # the timeout bounds the whole call (Python 3.5+)
        except TimeoutError:
            if limit < timeout:
                raise DeadlineExceeded("the poll deadline passed while sending the request") from None
            raise

    def _read(self, deadline: float, timeout: float) -> tuple[Answer, bool]:
        incoming = self._incoming
        incoming.deadline, incoming.timeout, incoming.received = deadline, timeout, 0
        incoming.budget, incoming.too_much = MAX_HEAD_BYTES + _READ_AHEAD, MalformedAnswer
        for _ in range(MAX_INTERIM_ANSWERS + 1):
            response = http.client.HTTPResponse(self, method="POST")
            response.begin()
            if response.status >= 200:
                break
            if response.status == 101:
                raise MalformedAnswer("the server switched protocols (HTTP 101)")
        else:
            raise MalformedAnswer(f"more than {MAX_INTERIM_ANSWERS} interim (1xx) answers")
        limit = self.max_response_bytes
        encoding = (response.getheader("Content-Encoding") or "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise MalformedAnswer(f"a compressed answer (Content-Encoding {encoding[:20]!r}) though none was asked for")
        if response.length is not None and response.length > limit:
            raise ResponseTooLarge(f"WinRM response of {response.length} bytes exceeds limits.max_response_bytes ({limit})")
        incoming.budget, incoming.too_much = limit, ResponseTooLarge
        try:
            body = response.read()
        except http.client.IncompleteRead as error:
            raise ConnectionResetError(f"the server closed the connection after {len(error.partial)} bytes of "
                                       "the answer") from None
        if len(body) > limit:  # what the head read ahead of the body was counted against the head's bound
            raise ResponseTooLarge(f"WinRM response exceeds limits.max_response_bytes ({limit})")
        return Answer(response.status, response.headers, body), not response.will_close


def _within(deadline: float, timeout: float) -> float:
    """A socket timeout for one step: `timeout`, or less when the deadline comes first."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:  # nothing of this request is on the wire yet: the server's earlier answers took the time
        raise NoAnswer("the poll deadline passed before the request was sent")
    return min(timeout, remaining)
