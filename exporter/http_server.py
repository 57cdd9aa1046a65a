"""The exporter's HTTP endpoint: `/`, `/metrics`, `/probe`, `/-/healthy`, `/-/ready`, `/-/reload`.

HTTP stays at the edge: handlers only validate the request, ask the `Exporter` for data and encode it.
TLS and basic auth come from the web-config file, re-read when it changes, so certificates rotate
without a restart. `/probe` polls only servers the configuration names or the organization collector
discovered: an unknown target is refused before any connection is attempted.
"""

from __future__ import annotations

import asyncio
import gzip
import html
import io
import logging
import math
import socket
import ssl
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

try:
    import resource  # POSIX only; the exporter also runs on Windows management servers
except ImportError:
    resource = None


from . import __version__
from .config import scheme_problem
from .exporter import Exporter
from .webconfig import WebConfigWatcher

log = logging.getLogger(__name__)

PROBE_TIMEOUT_OFFSET_SECONDS = 0.5
MAX_URL_LENGTH = 2048
REQUEST_DEADLINE_SECONDS = 10.0  # TLS handshake, head and body of one request, from when we wait for it
WRITE_DEADLINE_SECONDS = 30.0
MAX_HEAD_BYTES = 16 << 10
MAX_BODY_BYTES = 64 << 10
MAX_CONNECTIONS = 512
MAX_CONNECTIONS_PER_CLIENT = 64
LISTEN_BACKLOG = 128
WORKERS = 4  # /metrics and the rest answer from memory in milliseconds
PROBE_WORKERS = 16  # a probe waits for a poll
_LANDING = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Exchange EEMS exporter</title></head>
<body><h1>Exchange EEMS exporter</h1>
<p>Can each on-premises Exchange server still receive Microsoft's emergency mitigations? Version {version}.</p>
<ul><li><a href="/metrics">/metrics</a>: every server from the background poller, plus the exporter's own metrics</li>
<li><a href="/probe?target={example}">/probe?target={example}</a>: poll one configured server now (multi-target pattern; add <code>&amp;module=NAME</code> to choose credentials)</li>
<li><a href="/-/healthy">/-/healthy</a>, <a href="/-/ready">/-/ready</a>; <code>POST /-/reload</code> re-reads the configuration</li></ul>
<h2>Servers ({count})</h2><table><tr><th>server</th><th>up</th><th>build</th><th>servicing</th><th>next build</th><th>last error</th></tr>{rows}</table>
</body></html>
"""


def _descriptor_limit() -> int:
    """The process's open-file limit (POSIX); on Windows, where there is none of that kind, 4 * MAX_CONNECTIONS."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0] if resource is not None else 4 * MAX_CONNECTIONS


class _Handler(BaseHTTPRequestHandler):
    server_version = f"exchange-eems-exporter/{__version__}"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    received: float  # monotonic time the whole request had arrived (set by ExporterHTTPServer)

    exporter: Exporter
    watcher: WebConfigWatcher | None

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - BaseHTTPRequestHandler's signature
        log.debug("%s %s", self.address_string(), format % args)

    # ------------------------------------------------------------ plumbing

    def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
              extra: dict[str, str] | None = None) -> None:
        if "gzip" in self.headers.get("Accept-Encoding", "") and len(body) > 1024 and status == 200:
            body = gzip.compress(body, compresslevel=1)
            extra = {**(extra or {}), "Content-Encoding": "gzip"}
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        if self.watcher is not None:
            for name, value in self.watcher.current().headers.items():
                self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _authorized(self) -> bool:
        if self.watcher is None or self.watcher.current().check_basic_auth(self.headers.get("Authorization")):
            return True
        self._send(401, b"Unauthorized\n", extra={"WWW-Authenticate": 'Basic realm="exchange-eems-exporter"'})
        return False

    # ------------------------------------------------------------ routes

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if len(self.path) > MAX_URL_LENGTH:
            self._send(414, b"URL too long\n")
            return
        if not self._authorized():
            return
        url = urlsplit(self.path)
        route = {
            "/": self._landing,
            "/metrics": self._metrics,
            "/probe": self._probe,
            "/-/healthy": lambda _: self._send(200, b"Healthy\n"),
            "/-/ready": self._ready,
        }.get(url.path)
        if route is None:
            self._send(404, b"Not found. Try /metrics or /probe?target=SERVER\n")
            return
        try:
            route(url.query)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            raise
        except Exception:  # a bug answers 500 for this request; the exporter keeps serving
            log.exception("error serving %s", url.path)
            self._send(500, b"Internal error; see the exporter log\n")

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802
        if not self._authorized():
            return
        length = self.headers.get("Content-Length", "0")
        if length.isdigit() and 0 < int(length) <= 65536:
            self.rfile.read(int(length))
        if urlsplit(self.path).path != "/-/reload":
            self._send(405, b"Method not allowed\n", extra={"Allow": "GET, HEAD"})
            return
        ok, message = self.exporter.reload()
        self._send(200 if ok else 500, (message + "\n").encode())

    def _metrics(self, _query: str) -> None:
        body, content_type = self.exporter.metrics_body(self.headers.get("Accept", ""))
        self._send(200, body, content_type)

    def _ready(self, _query: str) -> None:
        if self.exporter.ready():
            self._send(200, b"Ready\n")
        else:
            self._send(503, b"Not ready: the first poll of every server has not finished yet\n")

    def _landing(self, _query: str) -> None:
        servers, _ = self.exporter.snapshot()
        rows = []
        for result in servers:
            up = "yes" if result.outcome and result.outcome.success else "no"
            verdict = result.state.build if result.state else None
            build = verdict.version if verdict else ""
            servicing = verdict.servicing.replace("_", " ") if verdict else ""
            target = verdict.next_build if verdict else None
            next_build = " ".join((target.version, target.product, target.cu, target.update)).strip() if target else ""
            error = result.outcome.error_reason if result.outcome and not result.outcome.success else ""
            rows.append("<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>".format(
                *(html.escape(str(v)) for v in (result.name, up, build, servicing, next_build, error or ""))))
        targets = self.exporter.targets()
        example = html.escape(targets[0].name if targets else "SERVER", quote=True)
        page = _LANDING.format(version=__version__, example=example, count=len(servers), rows="".join(rows))
        self._send(200, page.encode(), "text/html; charset=utf-8")

    def _probe(self, query: str) -> None:
        try:
            params = parse_qs(query, keep_blank_values=True, max_num_fields=10)
        except ValueError:
            self._send(400, b"Too many query parameters: /probe takes 'target' and 'module'\n")
            return
        targets = params.get("target", [])
        modules = params.get("module", [])
        if len(targets) != 1 or not targets[0]:
            self._send(400, b"Exactly one 'target' parameter is required\n")
            return
        if len(modules) > 1:
            self._send(400, b"At most one 'module' parameter is allowed\n")
            return
        target, module = targets[0], (modules[0] if modules else None)
        chosen = self.exporter.module(module) if module is not None else None
        if module is not None and chosen is None:
            self._send(400, f"Unknown module {module[:64]!r}\n".encode())
            return
        known = self.exporter.target(target)
        if known is None:
            self._send(400, f"Unknown target {target[:256]!r}: only configured or discovered servers "
                            f"can be probed\n".encode())
            return
        problem = chosen and scheme_problem(chosen.transport, known.scheme, chosen.allow_basic_over_http)
        if problem:
            self._send(400, f"Module {module!r} cannot be used with target {known.name!r} ({known.scheme}): "
                            f"{problem}\n".encode())
            return
        timeout = None
        header = self.headers.get("X-Prometheus-Scrape-Timeout-Seconds")
        if header:
            try:
                seconds = float(header)
            except ValueError:
                seconds = math.nan
            if not (math.isfinite(seconds) and seconds > 0):  # nan would become a deadline that has passed
                self._send(400, b"Invalid X-Prometheus-Scrape-Timeout-Seconds header: expected seconds > 0\n")
                return
            # the scrape timeout runs from when the request arrived: time queued for a worker counts
            timeout = max(1.0, seconds - PROBE_TIMEOUT_OFFSET_SECONDS - (time.monotonic() - self.received))
        body, content_type = self.exporter.probe_body(target, module, timeout, self.headers.get("Accept", ""))
        self._send(200, body, content_type)


class ExporterHTTPServer:
    """HTTP/1.1 with bounded resources, whoever connects.

    One asyncio loop reads and writes every connection; a worker thread only ever sees a request that has
    fully arrived, and hands back a whole response. So a client that trickles bytes (slowloris) holds a
    few kilobytes and one descriptor, never a thread, and is cut off once `REQUEST_DEADLINE_SECONDS` pass
    without a whole request (TLS handshake, head and body together). Connections are capped in total
    (a quarter of the open-file limit, so polls keep their descriptors) and per client address.
    /probe, which waits for a poll, has its own workers so that it can never delay /metrics.
    """

    def __init__(self, address: tuple[str, int], exporter: Exporter, watcher: WebConfigWatcher | None):
        self._handler = type("Handler", (_Handler,), {"exporter": exporter, "watcher": watcher})
        self._watcher = watcher
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(address)
        self._socket.listen(LISTEN_BACKLOG)
        self._socket.setblocking(False)
        self.server_address = self._socket.getsockname()
        self.max_connections = max(16, min(MAX_CONNECTIONS, _descriptor_limit() // 4))
        self.connections = 0
        self._per_client: Counter[str] = Counter()
        self._writers: set[asyncio.StreamWriter] = set()
        self._workers = ThreadPoolExecutor(WORKERS, thread_name_prefix="http")
        self._probe_workers = ThreadPoolExecutor(PROBE_WORKERS, thread_name_prefix="probe")
        self._loop = asyncio.new_event_loop()
        self._stopped = threading.Event()

    # ------------------------------------------------------------ lifecycle

    def serve_forever(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(asyncio.start_server(self._connection, sock=self._socket,
                                                           limit=MAX_HEAD_BYTES))
        self._loop.run_forever()
        self._stopped.set()

    def shutdown(self) -> None:
        if not self._loop.is_running():
            return

        def stop() -> None:
            for writer in list(self._writers):
                writer.transport.abort()
            self._loop.stop()

        self._loop.call_soon_threadsafe(stop)
        self._stopped.wait(10)

    def server_close(self) -> None:
        self._socket.close()
        self._workers.shutdown(wait=False, cancel_futures=True)
        self._probe_workers.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------ one connection

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = (writer.get_extra_info("peername") or ("", 0))[:2]
        if self.connections >= self.max_connections or self._per_client[client[0]] >= MAX_CONNECTIONS_PER_CLIENT:
            log.debug("refusing a connection from %s: %d connections open", client[0], self.connections)
            writer.transport.abort()
            return
        self.connections += 1
        self._per_client[client[0]] += 1
        self._writers.add(writer)
        graceful = False
        try:
            context = self._watcher.current().ssl_context() if self._watcher else None
            if context is not None:
                async with asyncio.timeout(REQUEST_DEADLINE_SECONDS):
                    await writer.start_tls(context)
            writer.transport.set_write_buffer_limits(high=0)  # drain() returns once the kernel has every byte
            while True:
                try:
                    async with asyncio.timeout(REQUEST_DEADLINE_SECONDS):
                        request = await _read_request(reader)
                except _Refused as refused:
                    writer.write(_plain_response(refused.status, refused.text))
                    async with asyncio.timeout(WRITE_DEADLINE_SECONDS):
                        await writer.drain()
                    graceful = True
                    return
                if request is None:
                    graceful = True
                    return
                received = time.monotonic()
                workers = self._probe_workers if request.startswith((b"GET /probe", b"HEAD /probe")) else self._workers
                response, keep_alive = await self._loop.run_in_executor(workers, self._respond, request, client,
                                                                        received)
                writer.write(response)
                async with asyncio.timeout(WRITE_DEADLINE_SECONDS):
                    await writer.drain()
                if not keep_alive:
                    graceful = True
                    return
        except (TimeoutError, ConnectionError, OSError, ssl.SSLError, asyncio.IncompleteReadError):
            log.debug("connection from %s ended: deadline passed or connection broken", client[0])
        finally:
            self._writers.discard(writer)
            self.connections -= 1
            self._per_client[client[0]] -= 1
            if not self._per_client[client[0]]:
                del self._per_client[client[0]]
            if graceful:
                writer.close()
            else:
                writer.transport.abort()

    def _respond(self, request: bytes, client: tuple[str, int], received: float) -> tuple[bytes, bool]:
        """Run the handler on a request that has fully arrived; returns (response bytes, keep the connection)."""
        handler = self._handler.__new__(self._handler)
        handler.client_address, handler.server, handler.request = client, self, None
        handler.rfile, handler.wfile = io.BytesIO(request), io.BytesIO()
        handler.received = received
        handler.close_connection = True
        try:
            handler.handle_one_request()
        except Exception:  # a bug answers 500 for this request; the exporter keeps serving
            log.exception("error serving a request from %s", client[0])
            return _plain_response(500, "Internal error; see the exporter log\n"), False
        return handler.wfile.getvalue(), not handler.close_connection


class _Refused(Exception):
    """A request we will not read further: answered with `status` and the connection closed."""

    def __init__(self, status: int, text: str):
        super().__init__(text)
        self.status = status
        self.text = text


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    """Head and body of one request, bounded in size; None when the client closed between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as error:
        if error.partial.strip():
            raise _Refused(400, "Incomplete request\n") from None
        return None
    except asyncio.LimitOverrunError:
        raise _Refused(431, "Request header fields too large\n") from None
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"transfer-encoding":
            raise _Refused(411, "A Content-Length is required\n")
        if name == b"content-length":
            if not value.strip().isdigit():
                raise _Refused(400, "Invalid Content-Length\n")
            length = int(value.strip())
    if length > MAX_BODY_BYTES:
        raise _Refused(413, "Request body too large\n")
    return head + (await reader.readexactly(length) if length else b"")


def _plain_response(status: int, text: str) -> bytes:
    body = text.encode()
    return (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


def serve(exporter: Exporter, host: str, port: int, watcher: WebConfigWatcher | None) -> ExporterHTTPServer:
    """Bind and serve in a background thread; returns the server (its `server_address` has the real port)."""
    server = ExporterHTTPServer((host, port), exporter, watcher)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
