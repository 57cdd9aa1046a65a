"""HTTP/1.1 with bounded resources, whoever connects: the exporter's asyncio front end.

One asyncio loop reads and writes every connection; a worker thread only ever sees a request that has fully
arrived, parsed once (`read_request`), and hands back a whole `Response`. What each resource is bounded by:

- a thread: a client that trickles bytes (slowloris) holds a few kilobytes and one descriptor, never a
  thread, and is cut off once `REQUEST_DEADLINE_SECONDS` pass without a whole request (TLS handshake, head
  and body together; also the longest a connection may wait idle between requests);
- a slot: connections are capped in total (a quarter of the open-file limit, so polls keep their
  descriptors) and per client address. At the cap a new connection takes the slot of the connection that
  has gone longest without an authorised request (an idle or never-authorised one first); one whose answer
  is being made is never cut, one still waiting for a worker, or for its client to read the answer, may be. A
  401 closes its connection, so a client without the password holds nothing;
- a worker: the route table (`handlers.ROUTES`) names the pool, from the same parsed path as the handler:
  /probe, which waits for a poll, and the HTML pages, which cost CPU, have their own workers, and a spelling
  such as `//probe` is just not found;
- bcrypt: a credential verified before is checked on the loop in microseconds, so Prometheus never queues
  behind password guessers. A new one goes to the bcrypt thread, at most `BCRYPT_PENDING_PER_CLIENT` per
  client address and `BCRYPT_PENDING` in all; beyond that the answer is 429 at once;
- memory: a response body is written straight from the handler's bytes (no copy per connection), a chunk at
  a time as the client reads it. The bodies held for clients that have not read them yet are bounded in
  all (`MAX_PINNED_BYTES`); beyond it the connection that has held its body longest is cut.
Every answer over TLS that closes the connection ends with close_notify, right after the last byte. A
connection opened under an earlier web config is closed at its next request, unanswered: the handshake is the
only check of a client certificate, so a client CA removed by a reload would not end a kept connection's access.

A request is read and parsed once, strictly (RFC 9112), with bounded size: the head is read as bytes up to the
blank line (at most `MAX_HEAD_BYTES`), parsed into a `handlers.Request`, and nothing reads it again: the route,
the worker pool and the handler all use the same `path`. Everything a lenient parser would guess at is refused,
and the connection closed, since a client that sends it is broken or probing: a bare LF or CR, whitespace before
a header's colon, a folded line, a control character in the request target or a header value, two different
Content-Length values, a Transfer-Encoding (no chunked bodies here), a Content-Length of more digits than any
body we accept (refused before it is converted to a number).
"""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import logging
import re
import socket
import ssl
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from http import HTTPStatus
from urllib.parse import urlsplit

from prometheus_client.exposition import gzip_accepted

try:
    import resource  # POSIX only; the exporter also runs on Windows management servers
except ImportError:
    resource = None

from ..webconfig import WebConfig, WebConfigWatcher
from . import handlers
from .handlers import Request, Response, View

log = logging.getLogger(__name__)

REQUEST_DEADLINE_SECONDS = 10.0  # TLS handshake, head and body of one request, from when we wait for it
WRITE_DEADLINE_SECONDS = 30.0
CLOSE_SECONDS = 2.0  # after our close_notify, how long the peer's may take before the socket is dropped
MAX_CONNECTIONS = 512
MAX_CONNECTIONS_PER_CLIENT = 64
LISTEN_BACKLOG = 128
WORKERS = 4  # /metrics and the rest answer from memory in milliseconds
PROBE_WORKERS = 16  # a probe waits for a poll
PAGE_WORKERS = 2  # the HTML pages evaluate the alert rules over the whole fleet: about a second at 2,000 servers
BCRYPT_PENDING = 8  # uncached credential checks queued or running, in all
BCRYPT_PENDING_PER_CLIENT = 1
MAX_PINNED_BYTES = 64 << 20  # response bodies held for clients that have not read them yet, in all
WRITE_CHUNK_BYTES = 64 << 10  # also what the transport copies into its buffer per connection
GZIP_MIN_BYTES = 1024
UNAUTHORIZED = Response(401, b"Unauthorized\n", headers=(("WWW-Authenticate", 'Basic realm="exchange-eems-exporter"'),))
TOO_MANY_GUESSES = Response(429, b"Too many password checks in progress; try again\n", headers=(("Retry-After", "1"),))
# A request (read_request)
MAX_HEAD_BYTES = 16 << 10
MAX_BODY_BYTES = 64 << 10
MAX_URL_LENGTH = 2048
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_METHOD = re.compile(r"[A-Z]{1,16}")
_TARGET = re.compile(r"[^\x00-\x20\x7f]+")  # no control characters (they would reach the log) and no space
_VERSIONS = ("HTTP/1.1", "HTTP/1.0")


class _Connection:
    """One client connection's bookkeeping, for the cap and the eviction order."""

    def __init__(self, client: str, writer: asyncio.StreamWriter, now: float):
        self.client = client
        self.writer = writer
        self.tls: ssl.SSLContext | None = None  # the web config's context it was opened with
        self.opened = now
        self.authorized_at: float | None = None  # when its last authorised request arrived
        self.busy = False  # its answer is being made (not waiting for a worker or for the client to read it)
        self.task = asyncio.current_task()  # the task serving it: a cut during its TLS handshake cancels it
        self.handshaking = False
        self.cut = False  # `end()` ended it: its cancellation is ours, not the loop's

    def end(self) -> None:
        """End the connection. During its TLS handshake, by cancelling the handshake: aborting the socket under it
        made asyncio's start_tls return no transport (python/cpython#105993) and leave the writer without one, so
        closing it raised AttributeError, which asyncio logged as an ERROR with a traceback (a client at the cap
        could cause one per connection). A cancelled start_tls keeps the socket's transport, aborted after."""
        self.cut = True
        if self.handshaking:
            self.task.cancel()
        else:
            self.writer.transport.abort()

    def eviction_order(self) -> tuple[bool, float]:
        """Sorts first the connection to cut: never authorised, then the longest without an authorised request."""
        return (self.authorized_at is not None, self.authorized_at or self.opened)


class ExporterHTTPServer:
    def __init__(self, address: tuple[str, int], view: View, watcher: WebConfigWatcher | None):
        self._view = handlers.SharedView(view)
        self._watcher = watcher
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(address)
        self._socket.listen(LISTEN_BACKLOG)
        self._socket.setblocking(False)
        self.server_address = self._socket.getsockname()
        # a quarter of the open-file limit, so polls keep their descriptors (Windows has no limit of that kind)
        descriptors = resource.getrlimit(resource.RLIMIT_NOFILE)[0] if resource is not None else 4 * MAX_CONNECTIONS
        self.max_connections = max(16, min(MAX_CONNECTIONS, descriptors // 4))
        self._open: set[_Connection] = set()
        self._per_client: Counter[str] = Counter()
        self._bcrypt_pending: Counter[str] = Counter()
        self._loop = asyncio.new_event_loop()
        self.pinned = _PinnedBodies(MAX_PINNED_BYTES, self._loop)
        pools = {"general": (WORKERS, "http"), "probe": (PROBE_WORKERS, "probe"), "pages": (PAGE_WORKERS, "pages")}
        self._pools = {pool: ThreadPoolExecutor(size, thread_name_prefix=name) for pool, (size, name) in pools.items()}
        # A request waits for a worker here, on the loop, not in the pool's queue: so no more bodies exist
        # than there are workers, besides those being written (which `pinned` bounds).
        self._free_workers = {pool: asyncio.Semaphore(size) for pool, (size, _) in pools.items()}
        self._bcrypt = ThreadPoolExecutor(1, thread_name_prefix="bcrypt")
        self._watch = ThreadPoolExecutor(1, thread_name_prefix="web-config")
        self._checking: asyncio.Future | None = None  # the check of the web config's files under way
        self._stopped = threading.Event()

    @property
    def connections(self) -> int:
        return len(self._open)

    # ------------------------------------------------------------ lifecycle

    def serve_forever(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(asyncio.start_server(self._connection, sock=self._socket,
                                                           limit=MAX_HEAD_BYTES))
        self._loop.run_forever()
        # Stopped, every transport aborted: let each connection's task see that and end (not cancelled:
        # asyncio's streams log a cancelled connection task as an error), so none is left pending for the
        # garbage collector to report ("Task was destroyed but it is pending!", an ERROR) in whatever runs next.
        # One still waiting for a worker would never see it (server_close drops the queued work): its connection
        # was ended (`end()` marks it cut), so it is cancelled, which `_connection` takes quietly.
        pending = asyncio.all_tasks(self._loop)
        if pending:
            self._loop.run_until_complete(asyncio.wait(pending, timeout=CLOSE_SECONDS))
        waiting = [c.task for c in list(self._open) if c.cut and not c.task.done()]
        for task in waiting:
            task.cancel()
        if waiting:
            self._loop.run_until_complete(asyncio.wait(waiting, timeout=CLOSE_SECONDS))
        if all(task.done() for task in pending):
            self._loop.close()
        self._stopped.set()

    def shutdown(self) -> None:
        if not self._loop.is_running():
            return

        def stop() -> None:
            for connection in list(self._open):
                connection.end()
            self._loop.stop()

        self._loop.call_soon_threadsafe(stop)
        self._stopped.wait(10)

    def server_close(self) -> None:
        self._socket.close()
        for pool in (*self._pools.values(), self._bcrypt, self._watch):
            pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------ the web config

    async def _web_config(self, *, settled: bool = False) -> WebConfig | None:
        """The web config in force. When its files are due to be looked at, that is done on a thread of its own:
        reading and parsing them on the loop (YAML of up to 1 MiB, the certificates) held every connection meanwhile,
        and a refused file of 1 MiB was parsed again at every check: 5 s per request for as long as it stayed.
        `settled`: wait for a check under way (a new connection, so that its handshake is under what it reads); a
        request on a kept connection does not wait, and the requests after the check see what it read."""
        if self._watcher is None:
            return None
        if self._watcher.due() and (self._checking is None or self._checking.done()):
            self._checking = self._loop.run_in_executor(self._watch, self._check_web_config)
        if settled and self._checking is not None and not self._checking.done():
            await asyncio.shield(self._checking)
        return self._watcher.in_force()

    def _check_web_config(self) -> None:
        try:
            self._watcher.current()
        except Exception:  # a bug in the check: the config in force stays, as for a refused file
            log.exception("checking the web config failed; the one in force stays")

    # ------------------------------------------------------------ one connection

    def _admit(self, client: str, writer: asyncio.StreamWriter) -> _Connection | None:
        if self._per_client[client] >= MAX_CONNECTIONS_PER_CLIENT:
            return None
        if len(self._open) >= self.max_connections:
            idle = [c for c in self._open if not c.busy]
            if not idle:
                return None
            victim = min(idle, key=_Connection.eviction_order)
            log.debug("at %d connections: closing one from %s to admit %s", len(self._open), victim.client, client)
            self._forget(victim)
            victim.end()
        connection = _Connection(client, writer, time.monotonic())
        self._open.add(connection)
        self._per_client[client] += 1
        return connection

    def _forget(self, connection: _Connection) -> None:
        if connection not in self._open:
            return
        self._open.discard(connection)
        self.pinned.release(connection)
        self._per_client[connection.client] -= 1
        if not self._per_client[connection.client]:
            del self._per_client[connection.client]

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = (writer.get_extra_info("peername") or ("", 0))[0]
        connection = self._admit(client, writer)
        if connection is None:
            log.debug("refusing a connection from %s: %d connections open", client, len(self._open))
            writer.transport.abort()
            return
        graceful = False
        try:
            deadline = self._loop.time() + REQUEST_DEADLINE_SECONDS  # the handshake counts against the first request
            # Nothing is read while a check of the web config is waited for: bytes the plain stream read meanwhile
            # (the ClientHello) would be lost to the TLS handshake. start_tls reads again; so does plain HTTP below.
            writer.transport.pause_reading()
            async with asyncio.timeout_at(deadline):
                config = await self._web_config(settled=True)
            context = connection.tls = config.ssl_context() if config else None
            if context is not None:
                connection.handshaking = True
                try:
                    async with asyncio.timeout_at(deadline):
                        await writer.start_tls(context)
                finally:
                    connection.handshaking = False
            else:
                writer.transport.resume_reading()
                writer.transport.set_write_buffer_limits(high=0)  # drain() returns once the kernel has every byte
            graceful = await self._serve(connection, reader, writer, deadline)
        except Exception as error:  # a broken or hostile client ends its own connection, nothing else
            log.debug("connection from %s ended: %s", client, type(error).__name__)
        except asyncio.CancelledError:
            if not connection.cut:
                raise
            log.debug("connection from %s ended: cut during its TLS handshake", client)
        finally:
            try:
                if graceful:  # over TLS: close_notify now, then the peer's, for at most CLOSE_SECONDS
                    writer.close()
                    async with asyncio.timeout(CLOSE_SECONDS):
                        await writer.wait_closed()
            except Exception:
                graceful = False
            finally:
                if not graceful:
                    writer.transport.abort()
                self._forget(connection)  # the slot is free only once the socket is

    async def _serve(self, connection: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     deadline: float) -> bool:
        """Answer requests until one ends the connection; True when it ends in order (close, not abort).
        `deadline`: the loop's time by which the first request must have arrived."""
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    request = await read_request(reader, writer)
            except Refused as refused:
                await self._send(connection, *_encode(Response(refused.status, refused.text.encode()),
                                                      None, False, False))
                return True
            if request is None:
                return True
            connection.busy = True
            config = await self._web_config()
            if (config.ssl_context() if config else None) is not connection.tls:
                # The web config changed since the handshake (a client CA removed, TLS turned on): the client
                # connects again under the new one. Closed unanswered, as an idle connection would be.
                return True
            verdict = await self._authenticate(config, request, connection.client)
            if verdict is not True:
                response = verdict or UNAUTHORIZED
                await self._send(connection, *_encode(response, config, False, request.method == "HEAD"))
                return True
            connection.authorized_at = time.monotonic()
            chosen = handlers.route(request)
            if isinstance(chosen, Response):
                head, body = _encode(chosen, config, request.keep_alive, request.method == "HEAD")
            else:
                # Queued for a worker, the connection may be cut for another client, and its request is then not
                # answered: counted as answered while it waited, requests queued behind a hanging server's probes
                # held every slot, and Prometheus was refused at the cap.
                connection.busy = False
                async with self._free_workers[chosen.pool]:
                    if connection not in self._open:
                        return False
                    connection.busy = True
                    head, body = await self._loop.run_in_executor(self._pools[chosen.pool], self._answer,
                                                                  connection, chosen, request, config)
            await self._send(connection, head, body)
            log.debug("%s %s %s: %s", connection.client, request.method, request.path, head[9:12].decode())
            if not request.keep_alive:
                return True
            deadline = self._loop.time() + REQUEST_DEADLINE_SECONDS

    async def _authenticate(self, config: WebConfig | None, request: Request, client: str) -> bool | Response:
        """True to go on; False for a 401; a Response (429) when too many bcrypt checks are pending."""
        if config is None:
            return True
        header = request.header("authorization") or None
        verdict = config.cached_verdict(header)
        if verdict is not None:
            return verdict
        if self._bcrypt_pending[client] >= BCRYPT_PENDING_PER_CLIENT or sum(self._bcrypt_pending.values()) >= BCRYPT_PENDING:
            return TOO_MANY_GUESSES
        self._bcrypt_pending[client] += 1
        try:
            return await self._loop.run_in_executor(self._bcrypt, config.check_basic_auth, header)
        finally:
            self._bcrypt_pending[client] -= 1
            if not self._bcrypt_pending[client]:
                del self._bcrypt_pending[client]

    # ------------------------------------------------------------ writing

    async def _send(self, connection: _Connection, head: bytes, body: bytes) -> None:
        """Write head and body under the write deadline, the body a chunk at a time as the client reads it.

        Meanwhile the connection may be cut for another client: the answer is made, only its client's reading is
        awaited, and a client that does not read would otherwise keep its slot for the whole write deadline."""
        connection.busy = False
        writer = connection.writer
        self.pinned.writing(connection)
        try:
            async with asyncio.timeout(WRITE_DEADLINE_SECONDS):
                writer.write(head)
                view = memoryview(body)
                for start in range(0, len(body), WRITE_CHUNK_BYTES):
                    await writer.drain()
                    writer.write(view[start:start + WRITE_CHUNK_BYTES])
                await writer.drain()
        finally:
            self.pinned.release(connection)

    def _answer(self, connection: _Connection, route: handlers.Route, request: Request,
                config: WebConfig | None) -> tuple[bytes, bytes]:
        """In a worker thread: the handler's response, encoded (and compressed) for the wire, its body
        counted as held for this connection from now until it is sent."""
        try:
            response = route.handler(request, self._view)
        except Exception:  # a bug answers 500 for this request; the exporter keeps serving
            log.exception("error serving %s", request.path)
            response = Response(500, b"Internal error; see the exporter log\n")
        head, body = _encode(response, config, request.keep_alive, request.method == "HEAD",
                             gzip_accepted(request.header("accept-encoding")))
        self.pinned.hold(connection, body)
        return head, body


class _PinnedBodies:
    """The response bodies held for connections until their clients have read them, bounded in all.

    Counted from the moment a worker has the body (not when the loop starts writing it), and once per body
    however many connections send it. Past the limit, the connections that have held theirs longest are cut
    (a scraper reads its body in well under a second, a client that does not read keeps it). Only bodies
    already being written are cut, and the worker that cut them waits until the loop has let go of them, so
    rendering cannot outrun the clean-up.
    """

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop):
        self._limit = limit
        self._loop = loop
        self._changed = threading.Condition()
        self._held: dict[_Connection, tuple[bytes, float]] = {}
        self._writing: set[_Connection] = set()
        self._users: dict[int, int] = {}  # id(body) -> connections holding it
        self._cut: set[_Connection] = set()  # cut for holding too long, and not let go by the loop yet
        self.bytes = 0

    def hold(self, connection: _Connection, body: bytes) -> None:
        """In the worker that made `body`."""
        if len(body) < WRITE_CHUNK_BYTES:
            return  # a small answer goes out at once; bounding it is not worth the bookkeeping
        with self._changed:
            self._held[connection] = (body, time.monotonic())
            self._users[id(body)] = self._users.get(id(body), 0) + 1
            if self._users[id(body)] == 1:
                self.bytes += len(body)
            cut = set()
            while self.bytes > self._limit and self._writing:
                victim = min(self._writing, key=lambda c: self._held[c][1])
                log.debug("%d bytes held for clients that do not read: cutting %s's", self.bytes, victim.client)
                self._drop(victim)
                cut.add(victim)
                self._loop.call_soon_threadsafe(victim.writer.transport.abort)
            self._cut |= cut
            self._changed.wait_for(lambda: not cut & self._cut, timeout=WRITE_DEADLINE_SECONDS)

    def writing(self, connection: _Connection) -> None:
        """On the loop: the connection's body is being written (from now on it may be cut)."""
        with self._changed:
            if connection in self._held:
                self._writing.add(connection)

    def release(self, connection: _Connection) -> None:
        """On the loop: the connection's body is sent, or the connection is gone."""
        with self._changed:
            self._drop(connection)
            self._cut.discard(connection)
            self._changed.notify_all()

    def _drop(self, connection: _Connection) -> None:
        self._writing.discard(connection)
        held = self._held.pop(connection, None)
        if held is None:
            return
        body = held[0]
        self._users[id(body)] -= 1
        if not self._users[id(body)]:
            del self._users[id(body)]
            self.bytes -= len(body)


def _encode(response: Response, config: WebConfig | None, keep_alive: bool, head_only: bool,
            gzip_ok: bool = False) -> tuple[bytes, bytes]:
    """The status line and headers, and the body to send after them (empty for HEAD)."""
    body = response.body
    # No Server header, as node_exporter: it told the version to any client, one without the password included.
    headers = [("Date", email.utils.formatdate(usegmt=True)), ("Content-Type", response.content_type)]
    if response.compressible and gzip_ok and response.status == 200 and len(body) > GZIP_MIN_BYTES:
        body = gzip.compress(body, compresslevel=1)
        headers.append(("Content-Encoding", "gzip"))
    headers.append(("Content-Length", str(len(body))))
    headers.extend(response.headers)
    if config is not None:
        headers.extend(config.headers.items())
    # Every answer, not only the pages: a 400 or 404 repeats what the client sent (`/server?name=<script>...`), and
    # a browser that sniffed it as HTML would run it
    if not any(name.lower() == "x-content-type-options" for name, _ in headers):
        headers.append(("X-Content-Type-Options", "nosniff"))
    if not keep_alive:
        headers.append(("Connection", "close"))
    lines = [f"HTTP/1.1 {response.status} {HTTPStatus(response.status).phrase}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), b"" if head_only else body


def serve(view: View, host: str, port: int, watcher: WebConfigWatcher | None) -> ExporterHTTPServer:
    """Bind and serve in a background thread; returns the server (its `server_address` has the real port)."""
    server = ExporterHTTPServer((host, port), view, watcher)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server


class Refused(Exception):
    """A request we will not read further: answered with `status` and the connection closed."""

    def __init__(self, status: int, text: str):
        super().__init__(text)
        self.status = status
        self.text = text


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
        if key == "host" and key in headers:  # RFC 9112 3.2: a server MUST answer 400
            raise Refused(400, "More than one Host header\n")
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    if version == "HTTP/1.1" and "host" not in headers:  # RFC 9112 3.2, the same
        raise Refused(400, "A Host header is required\n")
    if version == "HTTP/1.0":  # RFC 9110 10.1.1: an HTTP/1.0 client may not know 100 (Continue); ignore it
        headers.pop("expect", None)
    length = _content_length(lengths)
    path, query = _path_and_query(target)
    connection = {token.strip().lower() for token in headers.get("connection", "").split(",")}
    keep_alive = "close" not in connection and (version == "HTTP/1.1" or "keep-alive" in connection)
    return Request(method, path, query, headers, b"", keep_alive, 0.0), length


async def read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Request | None:
    """Head and body of one request, bounded in size; None when the client closed between requests. A client
    that expects 100 (Continue) gets it before its body is read: it may wait for it before sending the body."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as error:
        if error.partial.strip():
            raise Refused(400, "Incomplete request\n") from None
        return None
    except asyncio.LimitOverrunError:
        raise Refused(431, "Request header fields too large\n") from None
    request, length = parse_head(head)
    if length and request.header("expect").lower() == "100-continue":
        writer.write(CONTINUE)
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
    if not _TARGET.fullmatch(target):
        raise Refused(400, "Control characters in the request target\n")
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
        try:
            url = urlsplit(target)
        except ValueError:  # such as an unclosed IPv6 bracket: `http://[::1/metrics`
            raise Refused(400, "Request target is not a valid URL\n") from None
        return url.path or "/", url.query
    raise Refused(400, "Request target must be a path or an http(s) URL\n")
