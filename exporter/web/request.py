"""One HTTP/1.1 request, read from the socket and parsed once, strictly (RFC 9112), with bounded size.

The head is read as bytes up to the blank line (at most `MAX_HEAD_BYTES`), parsed here into a `Request`,
and nothing reads it again: the route, the worker pool and the handler all use the same `path`.
Everything a lenient parser would guess at is refused, and the connection closed, since a client that
sends it is broken or probing: a bare LF or CR, whitespace before a header's colon, a folded line, two
different Content-Length values, a Transfer-Encoding (no chunked bodies here), a Content-Length of more
digits than any body we accept (refused before it is converted to a number).
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

MAX_HEAD_BYTES = 16 << 10
MAX_BODY_BYTES = 64 << 10
MAX_URL_LENGTH = 2048
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_METHOD = re.compile(r"[A-Z]{1,16}")
_VERSIONS = ("HTTP/1.1", "HTTP/1.0")


class Refused(Exception):
    """A request we will not read further: answered with `status` and the connection closed."""

    def __init__(self, status: int, text: str):
        super().__init__(text)
        self.status = status
        self.text = text


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # as sent, not decoded: "/probe", never "//probe" turned into "/probe"
    query: str
    headers: dict[str, str]  # lower-case names; repeated fields joined with ", "
    body: bytes
    keep_alive: bool
    received: float  # monotonic time the whole request had arrived

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name, default)


def parse_head(head: bytes) -> tuple[Request, int]:
    """The request of `head` (which ends with the blank line), still without its body, and the body's length."""
    lines = head[:-4].split(b"\r\n")
    if any(b"\n" in line or b"\r" in line for line in lines):
        raise Refused(400, "Bare LF or CR in the request head: lines end with CRLF\n")
    method, target, version = _request_line(lines[0])
    headers: dict[str, str] = {}
    lengths: set[bytes] = set()
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise Refused(400, "Malformed header line (no whitespace before the colon, no folded lines)\n")
        value = value.strip(b" \t")
        if not _FIELD_VALUE.fullmatch(value):
            raise Refused(400, "Control characters in a header value\n")
        key = name.decode("ascii").lower()
        if key == "transfer-encoding":
            raise Refused(411, "A Content-Length is required\n")
        if key == "content-length":
            lengths.update(part.strip(b" \t") for part in value.split(b","))
            continue
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    length = _content_length(lengths)
    path, query = _path_and_query(target)
    connection = {token.strip().lower() for token in headers.get("connection", "").split(",")}
    keep_alive = "close" not in connection and (version == "HTTP/1.1" or "keep-alive" in connection)
    return Request(method, path, query, headers, b"", keep_alive, 0.0), length


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """Head and body of one request, bounded in size; None when the client closed between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as error:
        if error.partial.strip():
            raise Refused(400, "Incomplete request\n") from None
        return None
    except asyncio.LimitOverrunError:
        raise Refused(431, "Request header fields too large\n") from None
    request, length = parse_head(head)
    body = await reader.readexactly(length) if length else b""
    return replace(request, body=body, received=time.monotonic())


def _request_line(line: bytes) -> tuple[str, str, str]:
    parts = line.split(b" ")
    if len(parts) != 3:
        raise Refused(400, "Malformed request line\n")
    method, target, version = (part.decode("latin-1") for part in parts)
    if not _METHOD.fullmatch(method) or not target:
        raise Refused(400, "Malformed request line\n")
    if len(target) > MAX_URL_LENGTH:
        raise Refused(414, "URL too long\n")
    if version not in _VERSIONS:
        raise Refused(505 if version.startswith("HTTP/") else 400, "HTTP/1.1 only\n")
    return method, target, version


def _content_length(values: set[bytes]) -> int:
    if not values:
        return 0
    if len(values) > 1:
        raise Refused(400, "Conflicting Content-Length values\n")
    value = next(iter(values))
    if not value.isdigit():
        raise Refused(400, "Invalid Content-Length\n")
    if len(value) > len(str(MAX_BODY_BYTES)) or int(value) > MAX_BODY_BYTES:  # int() only on a few digits
        raise Refused(413, "Request body too large\n")
    return int(value)


def _path_and_query(target: str) -> tuple[str, str]:
    """origin-form (`/path?query`) or absolute-form (`http://host/path?query`, which servers must accept)."""
    if target.startswith("/"):
        path, _, query = target.partition("?")
        return path, query
    if target[:7].lower() == "http://" or target[:8].lower() == "https://":
        url = urlsplit(target)
        return url.path or "/", url.query
    raise Refused(400, "Request target must be a path or an http(s) URL\n")
