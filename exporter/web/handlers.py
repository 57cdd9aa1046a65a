"""What each route answers: plain functions from a parsed `Request` and a read-only `View` to a `Response`.

No handler touches a socket, the web config or the exporter's internals. They validate the request, ask
the `View` (the `Exporter`'s narrow read interface) and say what to send. The transport (`transport.py`)
has already read the whole request, authenticated it, and chosen the worker pool from the same route
(`ROUTES`), so a route and its pool can never disagree.
`/probe` polls only servers the configuration names or the organization collector discovered: an unknown
target is refused (`Poller.probe`, on the configuration the poll would use) before anything connects.
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Protocol
from urllib.parse import parse_qs

from .. import __version__
from ..field_report import raw_text
from ..metrics import SelfStatus, choose_format, probe_body, server_families
from ..model import OrganizationResult, ServerResult
from ..parse import clixml_to_text
from ..poller import ProbeRefused
from ..redact import Redactor
from ..runtime import Target
from ..store import KeptOutput
from . import alerts, pages
from .fleet import FleetRows, samples_of

PROBE_TIMEOUT_OFFSET_SECONDS = 0.5
TEXT = "text/plain; charset=utf-8"
HTML = "text/html; charset=utf-8"
# Pages show servers' text: no script may run, and no browser may take them for anything but HTML
PAGE_HEADERS = (("Content-Security-Policy", pages.CSP), ("X-Content-Type-Options", "nosniff"))


class View(Protocol):
    """What the handlers may read from the running exporter (`Exporter` implements it), and the two things
    they may ask of it: a probe and a reload."""

    def snapshot(self) -> tuple[list[ServerResult], OrganizationResult | None]: ...
    def output(self, name: str) -> tuple[KeptOutput | None, bool]: ...
    def targets(self) -> tuple[Target, ...]: ...
    def ready(self) -> bool: ...
    def metrics_body(self, accept: str) -> tuple[bytes, str]: ...
    def probe(self, target: str, module: str | None, timeout: float | None) -> ServerResult: ...
    def reload(self) -> tuple[bool, str]: ...
    def scrub(self, text: str) -> str: ...
    def self_status(self) -> SelfStatus: ...
    redactor: Redactor


class SharedView:
    """A `View` that shares work between requests.

    Its /metrics body is made once for every request of the same format that arrives while it is being made:
    they all get that body, the same bytes object (as fresh as theirs would be, a few ms older). At 2,000 servers
    a body is several MiB and making it allocates a few times that; a burst of scrapes (or clients that ask and
    never read) would otherwise hold one body and its transients per request.
    The fleet's rows (`fleet()`) are kept between requests and made again only when what they show changes
    (fleet.py): at 2,000 servers `/` cost seconds of CPU per request when made whole each time.
    """

    def __init__(self, view: View):
        self._view = view
        self._lock = threading.Lock()
        self._making: dict[str, Future] = {}
        self._rows = FleetRows(view.self_status)

    def fleet(self) -> tuple[list[tuple[pages.Row, pages.RowHTML]], list[alerts.Firing]]:
        """Every server's row with the alerts that would fire for it now, and the alerts about no one server."""
        servers, organization = self._view.snapshot()
        return self._rows.rows(servers, organization, self._view.redactor.version, self._view.scrub)

    def __getattr__(self, name: str):
        return getattr(self._view, name)

    def metrics_body(self, accept: str) -> tuple[bytes, str]:
        key = choose_format(accept)[1]
        with self._lock:
            making = self._making.get(key)
            mine = making is None
            if mine:
                making = self._making[key] = Future()
        if not mine:
            return making.result()
        try:
            making.set_result(self._view.metrics_body(accept))
        except BaseException as error:
            making.set_exception(error)
        finally:
            with self._lock:
                del self._making[key]
        return making.result()


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


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = TEXT
    headers: tuple[tuple[str, str], ...] = ()
    compressible: bool = False  # a large body that may be sent gzipped when the client accepts it


def text(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, message.encode(), TEXT, headers)


Handler = Callable[[Request, View], Response]


@dataclass(frozen=True)
class Route:
    handler: Handler
    methods: tuple[str, ...] = ("GET", "HEAD")
    pool: str = "general"  # "probe" waits for a poll, "pages" costs about a second at 2,000 servers: neither
    # ever runs on the workers /metrics needs


# ------------------------------------------------------------ the routes


def _html(view: View, page: bytes) -> Response:
    """A page: its text scrubbed of every secret (servers' text is on it), and no script allowed to run."""
    return Response(200, view.scrub(page.decode()).encode(), HTML, PAGE_HEADERS, compressible=True)


def landing(request: Request, view: SharedView) -> Response:
    try:
        params = parse_qs(request.query, max_num_fields=10)
    except ValueError:
        params = {}
    state, page = params.get("state", [None])[0], params.get("page", ["1"])[0]
    if state is not None and state not in pages.STATES:
        return text(400, f"Unknown state; one of {', '.join(pages.STATES)}\n")
    if not (page.isascii() and page.isdigit() and 0 < len(page) <= 6 and int(page) > 0):
        return text(400, "'page' is a page number from 1\n")
    rows, exporter_level = view.fleet()
    targets, status = view.targets(), view.self_status()
    # the rows were scrubbed when made; the rest of the page now
    body = pages.fleet(rows, exporter_level, state, int(page), __version__, targets[0].name if targets else "SERVER",
                       view.scrub, status.shard, len(status.probe_targets))
    return Response(200, body, HTML, PAGE_HEADERS, compressible=True)


def server(request: Request, view: SharedView) -> Response:
    try:
        params = parse_qs(request.query, max_num_fields=10)
    except ValueError:
        params = {}
    names, debug = params.get("name", []), params.get("debug", ["false"])
    if len(names) != 1:
        return text(400, "Exactly one 'name' parameter is required\n")
    if debug not in (["true"], ["false"]):
        return text(400, "'debug' is true or false\n")
    rows, _ = view.fleet()
    chosen = [row for row, _ in rows if row.result.name.lower() == names[0].lower()]
    if not chosen:
        return text(404, f"No server {names[0][:256]!r} is polled by this exporter\n")
    raw = _raw_output(view, chosen[0].result.name) if debug == ["true"] else None
    return _html(view, pages.server(chosen[0], pages.timings(chosen[0].result), raw))


def _raw_output(view: View, name: str) -> pages.RawOutput:
    """The last poll's output as `diagnose` shows it, every secret masked before it is escaped (an escaped form of
    a secret is not what the redactor looks for). Nothing is polled."""
    kept, dropped = view.output(name)
    if kept is None:
        return pages.RawOutput(None, dropped, "", "")
    return pages.RawOutput(kept, dropped, view.scrub(raw_text(kept.stdout())),
                           view.scrub(clixml_to_text(kept.stderr())))


def metrics(request: Request, view: View) -> Response:
    body, content_type = view.metrics_body(request.header("accept"))
    return Response(200, body, content_type, compressible=True)


def healthy(request: Request, view: View) -> Response:
    return text(200, "Healthy\n")


def ready(request: Request, view: View) -> Response:
    if view.ready():
        return text(200, "Ready\n")
    return text(503, "Not ready: the first poll of every server has not finished yet\n")


def reload(request: Request, view: View) -> Response:
    ok, message = view.reload()
    return text(200 if ok else 500, message + "\n")


def probe(request: Request, view: View) -> Response:
    try:
        params = parse_qs(request.query, keep_blank_values=True, max_num_fields=10)
    except ValueError:
        return text(400, "Too many query parameters: /probe takes 'target' and 'module'\n")
    targets = params.get("target", [])
    modules = params.get("module", [])
    debug = params.get("debug", ["false"])
    if len(targets) != 1 or not targets[0]:
        return text(400, "Exactly one 'target' parameter is required\n")
    if len(modules) > 1:
        return text(400, "At most one 'module' parameter is allowed\n")
    if debug not in (["true"], ["false"]):
        return text(400, "'debug' is true or false\n")
    name, module_name = targets[0], (modules[0] if modules else None)
    timeout = None
    header = request.header("x-prometheus-scrape-timeout-seconds")
    if header:
        try:
            seconds = float(header)
        except ValueError:
            seconds = math.nan
        if not (math.isfinite(seconds) and seconds > 0):  # nan would become a deadline that has passed
            return text(400, "Invalid X-Prometheus-Scrape-Timeout-Seconds header: expected seconds > 0\n")
        # the scrape timeout runs from when the request arrived: time queued for a worker counts
        timeout = max(1.0, seconds - PROBE_TIMEOUT_OFFSET_SECONDS - (time.monotonic() - request.received))
    try:
        result = view.probe(name, module_name, timeout)
    except ProbeRefused as refused:  # an unknown module or target, or credentials the target's scheme must not carry
        return text(400, f"{refused}\n")
    if debug == ["true"]:  # blackbox_exporter's debug output: the steps and what they found, as text
        metrics, _ = probe_body(result, "text/plain")
        firing = tuple(alerts.firing(samples_of(server_families(result))))
        page = pages.probe_debug(result, pages.Row(result, firing), metrics).decode()
        return Response(200, view.scrub(page).encode(), TEXT, (("X-Content-Type-Options", "nosniff"),),
                        compressible=True)  # server text as plain text, never sniffed as HTML
    # the server's metrics only: the exporter's own stay on /metrics, as blackbox_exporter's do
    body, content_type = probe_body(result, request.header("accept"))
    return Response(200, body, content_type, compressible=True)


ROUTES: dict[str, Route] = {
    "/": Route(landing, pool="pages"),
    "/server": Route(server, pool="pages"),
    "/metrics": Route(metrics),
    "/probe": Route(probe, pool="probe"),
    "/-/healthy": Route(healthy),
    "/-/ready": Route(ready),
    "/-/reload": Route(reload, methods=("POST",)),
}
KNOWN_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"}


def route(request: Request) -> Route | Response:
    """The route for this request, or the answer when there is none (404, 405, 501)."""
    chosen = ROUTES.get(request.path)
    if request.method not in KNOWN_METHODS:
        return text(501, "Unsupported method\n")
    if chosen is None:
        return text(404, "Not found. Try /metrics or /probe?target=SERVER\n")
    if request.method not in chosen.methods:
        return text(405, "Method not allowed\n", (("Allow", ", ".join(chosen.methods)),))
    return chosen
