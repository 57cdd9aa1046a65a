"""The exporter's HTTP endpoint: `/`, `/metrics`, `/probe`, `/-/healthy`, `/-/ready`, `/-/reload`.

HTTP stays at the edge: handlers only validate the request, ask the `Exporter` for data and encode it.
TLS and basic auth come from the web-config file, re-read when it changes, so certificates rotate
without a restart. `/probe` polls only servers the configuration names or the organization collector
discovered: an unknown target is refused before any connection is attempted.
"""

from __future__ import annotations

import gzip
import html
import logging
import math
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from . import __version__
from .exporter import Exporter
from .webconfig import WebConfigWatcher

log = logging.getLogger(__name__)

PROBE_TIMEOUT_OFFSET_SECONDS = 0.5
MAX_URL_LENGTH = 2048
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


class _Handler(BaseHTTPRequestHandler):
    server_version = f"exchange-eems-exporter/{__version__}"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 30  # a client that stalls cannot hold a thread for ever

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

    def _metrics_response(self, registry: CollectorRegistry) -> None:
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        self._send(200, encoder(registry), content_type)

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
        servers, _ = self.exporter.poller.snapshot()
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
        targets = self.exporter.poller.targets.mine()
        example = html.escape(targets[0].name if targets else "SERVER", quote=True)
        page = _LANDING.format(version=__version__, example=example, count=len(servers), rows="".join(rows))
        self._send(200, page.encode(), "text/html; charset=utf-8")

    def _probe(self, query: str) -> None:
        params = parse_qs(query, keep_blank_values=True, max_num_fields=10)
        targets = params.get("target", [])
        modules = params.get("module", [])
        if len(targets) != 1 or not targets[0]:
            self._send(400, b"Exactly one 'target' parameter is required\n")
            return
        if len(modules) > 1:
            self._send(400, b"At most one 'module' parameter is allowed\n")
            return
        target, module = targets[0], (modules[0] if modules else None)
        config = self.exporter.config
        if module is not None and module not in config.modules:
            self._send(400, f"Unknown module {module[:64]!r}\n".encode())
            return
        if self.exporter.poller.targets.get(target) is None:
            self._send(400, f"Unknown target {target[:256]!r}: only configured or discovered servers "
                            f"can be probed\n".encode())
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
            timeout = max(1.0, seconds - PROBE_TIMEOUT_OFFSET_SECONDS)
        self._metrics_response(self.exporter.probe_registry(target, module, timeout))


class ExporterHTTPServer(ThreadingHTTPServer):
    """Thread per request; TLS per connection from the current web config (handshake in the worker thread)."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], exporter: Exporter, watcher: WebConfigWatcher | None):
        handler = type("Handler", (_Handler,), {"exporter": exporter, "watcher": watcher})
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._watcher = watcher
        super().__init__(address, handler)

    def get_request(self):
        sock, address = self.socket.accept()
        context = self._watcher.current().ssl_context() if self._watcher else None
        if context is not None:
            sock = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def finish_request(self, request, client_address) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.settimeout(10)
                request.do_handshake()
            except (ssl.SSLError, OSError) as err:
                log.debug("TLS handshake with %s failed: %s", client_address[0], err)
                return
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address) -> None:
        log.debug("connection from %s ended with an error", client_address[0], exc_info=True)


def serve(exporter: Exporter, host: str, port: int, watcher: WebConfigWatcher | None) -> ExporterHTTPServer:
    """Bind and serve in a background thread; returns the server (its `server_address` has the real port)."""
    server = ExporterHTTPServer((host, port), exporter, watcher)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
