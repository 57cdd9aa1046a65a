"""The steady-state requests of a poll, written straight onto the kept, authenticated connection.

A steady poll is five POSTs on one kept connection. Through requests, urllib3 and http.client each of them
cost about 0.75 ms of CPU (docs/scaling.md section 3.1): session and adapter plumbing, cookie jars, header
dictionaries, the email package parsing the answer's headers; the exchange itself costs the kernel about
0.03 ms. So requests keeps everything that needs a full HTTP client: opening the connection, TLS,
authentication (NTLM's handshake, with channel binding over HTTPS) and any request on a connection not yet
proven. Once a request has succeeded, the connection is authenticated (NTLM authenticates the connection,
Basic and certificate authentication send the same credential with every request), and `KeptConnection`
sends the next ones itself on the same socket: the same request head requests sent (built once, checked
byte for byte against urllib3's in tests/unit/test_kept_connection.py), one `sendall`, and a strict
HTTP/1.1 answer reader.

Every read is bounded as in `bounded_http`: the head to MAX_HEAD_BYTES and MAX_HEADERS lines, the body to
`max_response_bytes` (refused before reading when Content-Length declares more), compressed answers
refused, each socket read to the request's timeout, and the whole poll to its deadline by the same watchdog
(the socket was registered with the adapter when requests opened it). Failures raise what requests would
have raised for the same event (ConnectionError, ReadTimeout) or bounded_http's own errors, so the caller
classifies them as before.
"""

from __future__ import annotations

import select
import socket
import time
from typing import NamedTuple

import requests

from .bounded_http import BoundedAdapter, DeadlineExceeded, ResponseTooLarge, UnexpectedResponse

MAX_HEAD_BYTES = 64 << 10
MAX_HEADERS = 100  # as http.client
_READ_SIZE = 64 << 10


class Answer(NamedTuple):
    status: int
    headers: dict[str, str]  # names lower-cased; a repeated header keeps its last value
    content: bytes


class KeptConnection:
    """One server's authenticated connection, used by one poll at a time."""

    def __init__(self, connection, head: bytes, adapter: BoundedAdapter):
        """`connection` is the urllib3 connection requests authenticated; `head` the request line and the
        headers every request carries, up to (not including) Content-Type and Content-Length."""
        self._connection = connection
        self._sock: socket.socket = connection.sock
        self._head = head
        self._adapter = adapter
        self._buffer = bytearray()  # bytes read past the end of the last answer (none, from a sane server)

    @property
    def open(self) -> bool:
        return self._connection.sock is self._sock and self._sock is not None

    def close(self) -> None:
        """Close the socket (through urllib3's connection, so requests' pool never hands it out again)."""
        self._connection.close()

    def dropped(self) -> bool:
        """Whether the server closed the connection while it sat idle (HTTP.sys does after about two
        minutes): an idle HTTP connection has nothing to read, so anything readable means it is over.
        Asked before each poll (between a poll's requests the connection is never idle for long)."""
        if not self.open or self._buffer:
            return True
        if hasattr(self._sock, "pending") and self._sock.pending():
            return True
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        return bool(poller.poll(0))

    def exchange(self, body: bytes, content_type: str, timeout: float) -> Answer:
        """Send one POST and read its answer."""
        adapter = self._adapter
        if adapter.expired or time.monotonic() >= adapter.deadline:
            raise DeadlineExceeded("the poll deadline passed before the request was sent")
        request = b"%sContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s" % (
            self._head, content_type.encode("latin-1"), len(body), body)
        try:
            if timeout != self._sock.gettimeout():
                self._sock.settimeout(timeout)
            self._sock.sendall(request)
            answer, keep = self._read_answer()
        except BaseException as error:
            self.close()
            if adapter.expired:
                raise DeadlineExceeded("the poll deadline passed while waiting for the answer") from None
            if isinstance(error, requests.exceptions.RequestException):
                raise
            if isinstance(error, TimeoutError):
                raise requests.exceptions.ReadTimeout(f"no answer within {timeout:g} s") from None
            if isinstance(error, OSError):
                raise requests.exceptions.ConnectionError(f"the connection failed: {error.strerror or error}") from None
            raise
        if not keep:
            self.close()
        return answer

    # ------------------------------------------------------------ reading

    def _fill(self) -> None:
        """Read what the socket has (at least one byte) into the buffer; EOF is a closed connection."""
        data = self._sock.recv(_READ_SIZE)
        if self._adapter.expired:
            raise DeadlineExceeded("the poll deadline passed while reading the answer")
        if not data:
            raise requests.exceptions.ConnectionError("the server closed the connection before its answer was complete")
        self._buffer += data

    def _read_answer(self) -> tuple[Answer, bool]:
        while True:
            status, version, headers = self._read_head()
            if status >= 200:
                break
            if status == 101:
                raise UnexpectedResponse("the server switched protocols (HTTP 101)")
            # 1xx: an interim answer, the real one follows (RFC 9110 section 15.2)
        limit = self._adapter.max_response_bytes
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise UnexpectedResponse(f"a compressed answer (Content-Encoding {encoding[:20]!r}) though none was asked for")
        keep = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
        transfer = headers.get("transfer-encoding", "").strip().lower()
        if status in (204, 304):
            content = b""
        elif transfer == "chunked":
            content = self._read_chunked(limit)
        elif transfer:
            raise UnexpectedResponse(f"an answer in an unknown transfer coding ({transfer[:20]!r})")
        elif "content-length" in headers:
            length = headers["content-length"].strip()
            if not length.isdigit() or len(length) > 15:
                raise UnexpectedResponse(f"an invalid Content-Length ({length[:20]!r})")
            if int(length) > limit:
                raise ResponseTooLarge(f"WinRM response of {length} bytes exceeds limits.max_response_bytes ({limit})")
            content = self._read_exactly(int(length))
        else:  # delimited by the end of the connection
            content = self._read_to_close(limit)
            keep = False
        return Answer(status, headers, content), keep

    def _read_head(self) -> tuple[int, str, dict[str, str]]:
        start = 0
        while (end := self._buffer.find(b"\r\n\r\n", start)) < 0:
            if len(self._buffer) > MAX_HEAD_BYTES:
                raise UnexpectedResponse(f"an answer whose headers exceed {MAX_HEAD_BYTES} bytes")
            start = max(0, len(self._buffer) - 3)
            self._fill()
        if end > MAX_HEAD_BYTES:
            raise UnexpectedResponse(f"an answer whose headers exceed {MAX_HEAD_BYTES} bytes")
        lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        del self._buffer[: end + 4]
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or parts[0] not in ("HTTP/1.1", "HTTP/1.0") or not (len(parts[1]) == 3 and parts[1].isdigit()):
            raise UnexpectedResponse(f"not an HTTP/1.x status line: {lines[0][:40]!r}")
        if len(lines) - 1 > MAX_HEADERS:
            raise UnexpectedResponse(f"an answer with more than {MAX_HEADERS} headers")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise UnexpectedResponse(f"a malformed header line: {line[:40]!r}")
            key, value = name.lower(), value.strip()
            if key == "content-length" and key in headers and headers[key] != value:
                raise UnexpectedResponse("an answer with two different Content-Length headers")
            headers[key] = value
        return int(parts[1]), parts[0], headers

    def _read_exactly(self, length: int) -> bytes:
        if len(self._buffer) >= length:
            content = bytes(self._buffer[:length])
            del self._buffer[:length]
            return content
        body = bytearray(length)
        view = memoryview(body)
        have = len(self._buffer)
        view[:have] = self._buffer
        self._buffer.clear()
        while have < length:
            size = self._sock.recv_into(view[have:])
            if self._adapter.expired:
                raise DeadlineExceeded("the poll deadline passed while reading the answer")
            if not size:
                raise requests.exceptions.ConnectionError(
                    f"the server closed the connection after {have} of {length} bytes")
            have += size
        return bytes(body)

    def _read_line(self, what: str) -> bytes:
        start = 0
        while (end := self._buffer.find(b"\r\n", start)) < 0:
            if len(self._buffer) > 4096:
                raise UnexpectedResponse(f"an over-long {what} line")
            start = max(0, len(self._buffer) - 1)
            self._fill()
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        return line

    def _read_chunked(self, limit: int) -> bytes:
        content = bytearray()
        while True:
            size_text = self._read_line("chunk size").split(b";", 1)[0].strip()
            if not size_text or len(size_text) > 15 or size_text.strip(b"0123456789abcdefABCDEF"):
                raise UnexpectedResponse(f"an invalid chunk size ({size_text[:20]!r})")
            size = int(size_text, 16)
            if size == 0:
                break
            if len(content) + size > limit:
                raise ResponseTooLarge(f"WinRM response exceeds limits.max_response_bytes ({limit})")
            content += self._read_exactly(size)
            if self._read_line("chunk end"):
                raise UnexpectedResponse("a chunk longer than its size")
        for _ in range(MAX_HEADERS + 1):  # trailer fields, ended by an empty line
            if not self._read_line("trailer"):
                return bytes(content)
        raise UnexpectedResponse(f"an answer with more than {MAX_HEADERS} trailer fields")

    def _read_to_close(self, limit: int) -> bytes:
        while True:
            if len(self._buffer) > limit:
                raise ResponseTooLarge(f"WinRM response exceeds limits.max_response_bytes ({limit})")
            try:
                self._fill()
            except requests.exceptions.ConnectionError:  # the end of the connection is the end of the body
                content = bytes(self._buffer)
                self._buffer.clear()
                return content


def request_head(connection, path: str, headers) -> bytes:
    """The request line and headers as urllib3 writes them for `connection` (Host first, then `headers` in
    order), without Content-Type and Content-Length, which change with every message."""
    host = connection.host
    if ":" in host:
        host = f"[{host}]"
    if connection.port != connection.default_port:
        host = f"{host}:{connection.port}"
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers.items()
              if name.lower() not in ("content-type", "content-length", "host")]
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")
