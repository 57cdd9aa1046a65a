"""The exporter's own HTML pages: the fleet at `/`, one server at `/server?name=X`, and `/probe?debug=true`'s text.

Plain HTML with a little CSS and no JavaScript. Everything a server sent is hostile: every value goes through
`_e` (HTML escaping) and every link parameter through `quote`, and the pages are served with a
Content-Security-Policy that allows no script at all.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable
from urllib.parse import quote

from ..alert_rules import DEFAULT_RUNBOOK_BASE
from ..catalog import UNKNOWN
from ..field_report import MAX_RAW_CHARS
from ..model import ServerResult, ServerState
from ..store import KeptOutput
from ..winrm.errors import KERBEROS_MAX_CLOCK_SKEW_SECONDS
from .alerts import Firing

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; base-uri 'none'; form-action 'self'"
_SAME_FOR_A_ROW = {"server", "job", "instance", "collector"}  # labels an alert's row or the page already says
STATES = ("critical", "failed", "warning", "info", "ok", "pending")  # worst first: the order of the table
_STYLE = """body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;width:100%}th,td{border-bottom:1px solid #ddd;padding:4px 6px;text-align:left;
vertical-align:top}th{background:#f4f4f4;position:sticky;top:0}.state{font-weight:600;border-radius:3px;
padding:1px 6px;color:#fff}.critical{background:#b00020}.failed{background:#6a1b9a}.warning{background:#e65100}
.info{background:#1565c0}.ok{background:#2e7d32}.pending{background:#757575}.muted{color:#777}
nav a{margin-right:.8em}ul.plain{margin:0;padding-left:1.1em}code{font-size:90%}
pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#f6f6f6;padding:6px;font-size:85%}
tr.row-critical td:first-child{border-left:5px solid #b00020}tr.row-failed td:first-child{border-left:5px solid #6a1b9a}
tr.row-warning td:first-child{border-left:5px solid #e65100}tr.row-ok td:first-child{border-left:5px solid #2e7d32}"""


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _link(path: str, **params: str) -> str:
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
    return _e(f"{path}?{query}" if query else path)


class Ages:
    """The times a kept row shows as ages ("4m ago"): while a row is made, each becomes a marker `<@N>` (no escaped
    text can hold a `<`, and no HTML here holds `<@`), which `RowHTML` writes as an age at every request."""

    def __init__(self) -> None:
        self.times: list[datetime] = []

    def mark(self, value: datetime) -> str:
        self.times.append(value)
        return f"<@{len(self.times) - 1}>"


_MARK = re.compile(r"<@(\d+)>")


def _age(value: datetime, now: datetime) -> str:
    seconds = max(0, int((now - value).total_seconds()))
    return (f"{seconds // 86400}d" if seconds >= 86400 else f"{seconds // 3600}h" if seconds >= 3600
            else f"{seconds // 60}m" if seconds >= 60 else f"{seconds}s")


def _when(value: datetime | None, now: datetime | Ages) -> str:
    if value is None:
        return '<span class="muted">never</span>'
    age = now.mark(value) if isinstance(now, Ages) else _age(value, now)
    return f'<span title="{_e(value.isoformat())}">{age} ago</span>'


@dataclass(frozen=True)
class Row:
    result: ServerResult
    alerts: tuple[Firing, ...]

    @property
    def state(self) -> str:
        """The worst of: an alert's severity, a failed poll, no poll yet; ok otherwise."""
        severities = {a.severity for a in self.alerts}
        if "critical" in severities:
            return "critical"
        outcome = self.result.outcome
        if outcome is None:
            return "pending"
        if not outcome.success:
            return "failed"
        return next((s for s in ("warning", "info") if s in severities), "ok")


def _page(title: str, body: str) -> bytes:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_STYLE}</style></head>'
            f"<body>{body}</body></html>\n").encode()


def _alerts(alerts: tuple[Firing, ...] | list[Firing], said: set[str] = _SAME_FOR_A_ROW) -> str:
    """The alerts as a list, without the labels `said` (those the row or page around them already says)."""
    if not alerts:
        return ""
    items = []
    for alert in alerts:
        hold = f' <span class="muted">(after {_e(alert.hold)})</span>' if alert.hold else ""
        detail = ", ".join(f"{k} {v}" for k, v in sorted(alert.labels.items()) if k not in said)
        detail = f" {_e(detail)}" if detail else ""
        items.append(f'<li><a href="{_e(DEFAULT_RUNBOOK_BASE + "#" + alert.alert.lower())}">{_e(alert.alert)}</a>'
                     f'{detail} <span class="state {_e(alert.severity)}">{_e(alert.severity)}</span>{hold}</li>')
    return f'<ul class="plain">{"".join(items)}</ul>'


def _poll(result: ServerResult, now: datetime | Ages) -> str:
    outcome = result.outcome
    if outcome is None:
        return '<span class="muted">not polled yet</span>'
    text = "ok" if outcome.success else f"failed: <code>{_e(outcome.error_reason)}</code>"
    parts = ""
    if result.state and result.state.collection_errors:
        parts = "<br>partial: " + ", ".join(f"<code>{_e(f.part)}/{_e(f.reason)}</code>"
                                              for f in result.state.collection_errors)
    return f"{_when(outcome.finished, now)}, {text} ({outcome.duration_seconds:.1f} s){parts}"


def _build(result: ServerResult) -> str:
    build = result.state.build if result.state else None
    if build is None:
        return '<span class="muted">unknown</span>'
    if build.product == UNKNOWN:  # a version newer than every product the catalog knows: nothing else is judged
        return f'{_e(build.version)}<br><span class="muted">an Exchange version this exporter does not know</span>'
    name = " ".join(x for x in (build.product, build.cu, build.update) if x)
    next_build = build.next_build
    upgrade = (f"<br>next: {_e(next_build.version)} ({_e(' '.join(x for x in (next_build.cu, next_build.update) if x))})"
               if next_build else "")
    known = "" if build.known else ' <span class="muted">(not in the catalog)</span>'
    return f"{_e(build.version)}{known}<br>{_e(name)}<br>{_e(build.servicing.replace('_', ' '))}{upgrade}"


def _cutoffs(result: ServerResult) -> str:
    build = result.state.build if result.state else None
    if build is None or not build.cutoffs:
        return ""
    return "<br>".join(f"{_e(cutoff)}: {'compliant' if ok else '<b>below</b>'}"
                       for cutoff, ok in sorted(build.cutoffs.items()))


def _eems(result: ServerResult, now: datetime | Ages) -> str:
    state = result.state
    if state is None:
        return ""
    if state.eems_supported is False:
        return '<span class="muted">no EEMS (build or role)</span>'
    eems = state.eems
    failing = "<br><b>failing</b>" if eems.failing else ""
    return (f"service {_e(state.service_state or 'not installed' if state.service_installed is False else state.service_state or 'unknown')}"
            f" ({_e(state.service_start_mode or '?')})<br>last success {_when(eems.last_success, now)}"
            f"<br>last activity {_when(eems.last_activity, now)}{failing}")


@dataclass(frozen=True)
class RowHTML:
    """A server's row of the fleet table, made once per poll result and scrubbed then: its HTML in parts, with the
    index of a time (in `times`) between every two parts, written as an age at each request."""

    parts: tuple[str, ...]
    times: tuple[datetime, ...]

    def render(self, now: datetime) -> str:
        return "".join(part if i % 2 == 0 else _age(self.times[int(part)], now) for i, part in enumerate(self.parts))


def row_html(row: Row, scrub: Callable[[str], str]) -> RowHTML:
    """The fleet table's row of one server; `scrub` (the redactor) runs on each part of it (never across a time)."""
    ages, r = Ages(), row.result
    text = (f'<tr class="row-{row.state}"><td><a href="{_link("/server", name=r.name)}">{_e(r.name)}</a></td>'
            f'<td><span class="state {row.state}">{row.state}</span></td><td>{_poll(r, ages)}</td>'
            f"<td>{_build(r)}</td><td>{_cutoffs(r)}</td><td>{_eems(r, ages)}</td><td>{_alerts(row.alerts)}</td></tr>")
    parts = _MARK.split(text)
    return RowHTML(tuple(part if i % 2 else scrub(part) for i, part in enumerate(parts)), tuple(ages.times))


ROWS_PER_PAGE = 250  # a 2,000-server table is 2.8 MB, seconds for a browser to lay out; worst first, problems lead


def fleet(rows: list[tuple[Row, RowHTML]], exporter_alerts: list[Firing], state_filter: str | None, page: int,
          version: str, example: str, scrub: Callable[[str], str], shard: tuple[int, int] = (0, 1),
          probe_targets: int = 0) -> bytes:
    """`/`: the rows (already scrubbed) of `state_filter`'s state (None: all), worst first, ROWS_PER_PAGE a page;
    `scrub` runs on the rest of the page. `shard`: this instance's K/N; with N > 1 the page says the other
    shards' servers are on the other instances (an admin looking for a server here would not find it).
    `probe_targets`: in probe-only mode, how many servers only a /probe polls (the page has no row for them)."""
    now = datetime.now(timezone.utc)
    counts = {state: 0 for state in STATES}
    for row, _ in rows:
        counts[row.state] += 1
    shown = sorted((entry for entry in rows if state_filter in (None, entry[0].state)),
                   key=lambda entry: (STATES.index(entry[0].state), entry[0].result.name.lower()))
    pages = max(1, -(-len(shown) // ROWS_PER_PAGE))
    page = min(page, pages)
    first = (page - 1) * ROWS_PER_PAGE
    chosen = shown[first:first + ROWS_PER_PAGE]
    nav = [f'<a href="/">all ({len(rows)})</a>'] + [
        f'<a href="{_link("/", state=s)}"><span class="state {s}">{s}</span> {counts[s]}</a>' for s in STATES if counts[s]]
    # of no server, or of a server without a row here (one the organization lists and nothing polls): named by
    # `server`, which for a server this configuration does not poll is its organization `name` too
    exporter_section = (f"<h2>The exporter</h2>{_alerts(exporter_alerts, (_SAME_FOR_A_ROW - {'server'}) | {'name'})}"
                        if exporter_alerts else "")
    where = {"state": state_filter} if state_filter else {}
    paging = ""
    if pages > 1:
        previous = f'<a href="{_link("/", **where, page=str(page - 1))}">&lsaquo; previous</a> ' if page > 1 else ""
        following = f' <a href="{_link("/", **where, page=str(page + 1))}">next &rsaquo;</a>' if page < pages else ""
        paging = (f'<p class="paging">{previous}rows {first + 1:,}&ndash;{first + len(chosen):,} of {len(shown):,} '
                  f"(page {page} of {pages}){following}</p>")
    head = (f"<h1>Exchange EEMS exporter</h1><p>Can each on-premises Exchange server still receive Microsoft's "
            f"emergency mitigations? Version {_e(version)}. "
            f'<a href="/metrics">/metrics</a>, <a href="{_link("/probe", target=example)}">/probe?target={_e(example)}</a>'
            f' (add <code>&amp;debug=true</code> for the steps), <a href="/-/healthy">/-/healthy</a>, '
            f'<a href="/-/ready">/-/ready</a>. Alerts are the shipped rules evaluated on this exporter\'s samples now'
            f" (they fire once they have held for the time shown).</p>{exporter_section}"
            f"<h2>Servers ({len(shown):,} of {len(rows):,})</h2>{_shard(shard)}{_probe_only(probe_targets)}<nav>{' '.join(nav)}</nav>{paging}"
            f"<table><thead><tr><th>server</th><th>state</th><th>last poll</th><th>build</th><th>certificate cutoffs</th>"
            f"<th>EEMS</th><th>alerts that would fire</th></tr></thead><tbody>")
    table = "".join(html_row.render(now) for _, html_row in chosen)
    return _page("Exchange EEMS exporter", scrub(head) + table + f"</tbody></table>{paging}")


def _probe_only(targets: int) -> str:
    if not targets:
        return ""
    return (f'<p class="muted">Probe-only (<code>poll.background: false</code>): this instance polls each of its '
            f"{targets:,} server{'s' if targets != 1 else ''} only when Prometheus asks <code>/probe?target=</code> for it, and keeps no result, so "
            f"no row is here. A server missing from the /probe job's targets is never polled "
            f"(<code>ExchangeServerNotProbed</code>).</p>")


def _shard(shard: tuple[int, int]) -> str:
    index, count = shard
    if count == 1:
        return ""
    return (f'<p class="muted">This instance polls shard {index} of {count} (<code>--shard</code> or <code>shard:</code> '
            f"{index}/{count}): the servers of the other {count - 1} shards are on the pages of the other instances.</p>")


@dataclass(frozen=True)
class RawOutput:
    """The last poll's output for `/server?debug=true`: what was kept (None: nothing), whether it was dropped for
    the bound, and its stdout and stderr texts with every secret already masked."""

    kept: KeptOutput | None
    dropped: bool
    stdout: str
    stderr: str


def _raw(r: ServerResult, raw: RawOutput, now: datetime) -> str:
    kept = raw.kept
    head = "<h2>Raw output of the last poll</h2>"
    if kept is None:
        if r.outcome is None:
            why = "This server has not been polled yet."
        elif raw.dropped:
            why = ("Not kept: the outputs of all servers together stay within <code>limits.max_debug_output_bytes</code>, "
                   "and those of polls that went well go first.")
        else:
            why = (f"The last poll got no output: the script did not run (<code>{_e(r.outcome.error_reason)}</code>, "
                   "see the error above).")
        return f'{head}<p>{why} <code>exchange-eems-exporter diagnose {_e(r.name)}</code> polls it now.</p>'
    cut = f", the first {MAX_RAW_CHARS:,} shown" if kept.stdout_bytes > MAX_RAW_CHARS else ""
    stderr = _e(raw.stderr) or '<span class="muted">no error text</span>'
    return (f'{head}<p class="muted">What the collection script sent back {_when(kept.finished, now)}, as '
            f"<code>exchange-eems-exporter diagnose</code> shows it (its section 5), every secret masked; nothing was "
            f"polled for this page. Exit code {kept.exit_code}.</p>"
            f"<h3>stdout ({kept.stdout_bytes:,} bytes{cut})</h3><pre>{_e(raw.stdout)}</pre>"
            f"<h3>stderr ({kept.stderr_bytes:,} bytes; its error records as text)</h3>"
            f"<pre>{stderr}</pre>")


def _clock(state: ServerState) -> str:
    """The server's clock against the exporter's, in the last successful poll (exchange_server_clock_offset_seconds)."""
    offset = state.clock_offset_seconds
    if offset is None:
        return '<span class="muted">not said by the script</span>'
    text = (f"{abs(offset):,.1f} s {'behind' if offset < 0 else 'ahead of'} the exporter's clock "
            f"(&plusmn; {state.clock_uncertainty_seconds or 0:,.1f} s)")
    if abs(offset) <= KERBEROS_MAX_CLOCK_SKEW_SECONDS:
        return text
    return (f"<b>{text}</b>: its EEMS times are on this clock, so their ages here and in the alerts are off by as "
            f"much, and Kerberos fails beyond {KERBEROS_MAX_CLOCK_SKEW_SECONDS // 60} minutes")


def server(row: Row, timings: list[tuple[str, float]], raw: RawOutput | None = None) -> bytes:
    now = datetime.now(timezone.utc)
    r = row.result
    state = r.state
    facts: list[tuple[str, str]] = [("state", f'<span class="state {row.state}">{row.state}</span>'),
                                    ("last poll", _poll(r, now))]
    if r.outcome is not None and r.outcome.error_message:
        facts.append(("error", f"<code>{_e(r.outcome.error_message)}</code>"))
    facts.append(("last successful poll", _when(r.last_success, now)))
    if state is not None:
        facts += [("server clock", _clock(state)), ("build", _build(r)), ("build source", _e(state.build_source)), ("certificate cutoffs", _cutoffs(r)),
                  ("edge", "yes" if state.edge else "no"), ("EEMS", _eems(r, now)),
                  ("last EEMS check", _when(state.eems.last_check, now)),
                  ("last EEMS error", f"{_when(state.eems.last_error, now)} {_e(state.eems.last_error_reason or '')}"),
                  ("fetch errors (lookback)", _e(", ".join(f"{k} {v}" for k, v in sorted(state.eems.fetch_errors.items())
                                                             if v) or "none")),
                  ("endpoints", "<br>".join(f"{_e(e.endpoint)}: {'reachable' if e.reachable else 'unreachable'} "
                                            f"({_e(e.reason)})" for e in state.endpoints) or '<span class="muted">not checked</span>'),
                  ("partial failures", "<br>".join(f"<code>{_e(f.part)}/{_e(f.reason)}</code> {_e(f.message)}"
                                                   for f in state.collection_errors) or "none")]
    facts.append(("alerts that would fire", _alerts(row.alerts) or "none"))
    rows = "".join(f"<tr><th>{_e(name)}</th><td>{value}</td></tr>" for name, value in facts)
    timing_rows = "".join(f"<tr><td>{_e(stage)}</td><td>{seconds:.3f} s</td></tr>" for stage, seconds in timings)
    body = (f'<p><a href="/">&larr; all servers</a></p><h1>{_e(r.name)}</h1><table>{rows}</table>'
            f"<h2>Timings of the last poll</h2><table><tr><th>step</th><th>duration</th></tr>{timing_rows}</table>"
            + (_raw(r, raw, now) if raw is not None else
               f'<p><a href="{_link("/server", name=r.name, debug="true")}">Raw output of the last poll</a> (redacted, '
               f'not polled again); <code>exchange-eems-exporter diagnose {_e(r.name)}</code> polls it now and reads the '
               f"facts behind this interpretation.</p>"))
    return _page(f"{r.name}: Exchange EEMS exporter", body)


def timings(result: ServerResult) -> list[tuple[str, float]]:
    """The last poll's steps: the whole poll as the exporter timed it, then the script's stages on the server."""
    out = []
    if result.outcome is not None:
        out.append(("poll (exporter: connect, authenticate, run, read, clean up)", result.outcome.duration_seconds))
    if result.state is not None:
        out += [(f"script stage {stage} (on the server)", seconds) for stage, seconds in result.state.stage_seconds]
    return out


def probe_debug(result: ServerResult, row: Row, metrics: bytes) -> bytes:
    """`/probe?debug=true`: the poll's steps with their durations, its interpretation, then the metrics (text)."""
    lines = [f"Probe of {result.name}", "", "Steps:"]
    lines += [f"  {stage}: {seconds:.3f} s" for stage, seconds in timings(result)]
    outcome = result.outcome
    lines += ["", "Outcome:", f"  success: {bool(outcome and outcome.success)}"]
    if outcome is not None and not outcome.success:
        lines += [f"  reason: {outcome.error_reason}", f"  message: {outcome.error_message}"]
    state = result.state
    lines += ["", "Interpretation:"]
    if state is None:
        lines.append("  none (no successful poll)")
    else:
        build = state.build
        if build is not None:
            lines.append(f"  build: {build.version} {build.product} {build.cu} {build.update} ({build.servicing}, "
                         f"source {state.build_source})")
            lines += [f"  cutoff {cutoff}: {'compliant' if ok else 'BELOW'}" for cutoff, ok in sorted(build.cutoffs.items())]
        lines += [f"  EEMS supported: {state.eems_supported}",
                  f"  service: {state.service_state} ({state.service_start_mode})",
                  f"  last EEMS check / success / error: {state.eems.last_check} / {state.eems.last_success} / "
                  f"{state.eems.last_error} {state.eems.last_error_reason or ''}",
                  f"  last EEMS activity: {state.eems.last_activity}; failing: {state.eems.failing}"]
        lines += [f"  endpoint {e.endpoint}: reachable {e.reachable} ({e.reason})" for e in state.endpoints]
        lines += [f"  partial failure {f.part}/{f.reason}: {f.message}" for f in state.collection_errors]
    lines += ["", "Alerts that would fire now (the shipped rules on this probe's metrics):"]
    lines += [f"  {a.alert} ({a.severity}{', after ' + a.hold if a.hold else ''})" for a in row.alerts] or ["  none"]
    lines += ["", "Metrics that would have been returned:", ""]
    return "\n".join(lines).encode() + b"\n" + metrics
