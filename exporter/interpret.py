"""Judge one server's raw facts: build verdict, service state, and the EEMS check history.

EEMS leaves two independent traces, the Application-log events (1005/1006 success, 1008 failure) and
its own log files. Either may be missing (event log cleared, log folder empty, collection error), so the
history is built from whichever exists, and the log refines a generic 1008 text: the January 2025
certificate retirement logs only "Exception encountered while fetching mitigations." as the event, while
the log says "untrusted endpoint" (docs/reference/eems-facts.md section 3).

Log cycles: a cycle runs from one "Fetching mitigations from" line up to the next one. A cycle with a
Warning/Error line is a failed check (its time is the first such line); one without is a successful
check (its time is the check-start line). The newest cycle counts as a success only once a line follows
its check-start line, so a check still in progress when the tail was read is not reported as a success.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from exporter.catalog import BuildVersionError, Catalog, parse_admin_display_version
from exporter.eems_patterns import FETCH_ERROR_REASONS, LogRecord, classify_fetch_error, parse_log_line
from exporter.model import BuildVerdict, EemsHistory, RawLog, RawServerFacts, ServerState

SUCCESS_EVENTS = (1005, 1006)
ERROR_EVENT = 1008
FUTURE_TOLERANCE = timedelta(days=1)  # clock skew we accept before calling a timestamp bogus

SERVICE_STATES = {
    "Running": "running",
    "Stopped": "stopped",
    "StartPending": "start pending",
    "StopPending": "stop pending",
    "ContinuePending": "continue pending",
    "PausePending": "pause pending",
    "Paused": "paused",
}
START_MODES = {"Automatic": "auto", "Manual": "manual", "Disabled": "disabled", "Boot": "boot", "System": "system"}


@dataclass(frozen=True)
class _Cycle:
    start: datetime
    error_time: datetime | None  # first Warning/Error line, None for a clean cycle
    error_reason: str | None
    finished: bool  # a line followed the check-start line


def interpret_server(name: str, facts: RawServerFacts, catalog: Catalog, *, lookback: timedelta, now: datetime,
                     today: date | None = None, admin_display_version: str | None = None) -> ServerState:
    """`now` is the server's clock (its event times are on it); `today`, the exporter's date, decides the
    servicing verdicts, so a server with a wrong clock cannot change them (default: `now`'s date).
    `admin_display_version` (organization collector) stands in when ExSetup.exe could not be read, as in
    HealthChecker; it names the CU only, so the verdict is CU-level (see catalog.py)."""
    notes: list[str] = []
    today = today or now.date()
    build, source = _build(facts.exsetup_version, catalog, notes, today), facts.build_source
    if facts.exsetup_version is None and admin_display_version is not None:
        build, source = _cu_level_build(admin_display_version, catalog, notes, today), "admin_display_version"
    endpoint = facts.endpoint
    return ServerState(
        name=name,
        build=build,
        build_source=source if build is not None else None,
        edge=facts.edge,
        eems_supported=bool(build and build.eems_supported) and not facts.edge,
        service_installed=facts.service_installed,
        service_state=SERVICE_STATES.get(facts.service_status or "", "unknown") if facts.service_installed else None,
        service_start_mode=START_MODES.get(facts.service_start_type or "") if facts.service_installed else None,
        eems=eems_history(facts, lookback=lookback, now=now, generic_reason=_generic_reason(build)),
        endpoint_reachable=None if endpoint is None else endpoint.status == 200,
        endpoint_duration_seconds=None if endpoint is None else endpoint.duration_seconds,
        collection_errors=facts.errors + tuple(notes),
    )


def _generic_reason(build: BuildVerdict | None) -> str:
    """A build below the 2023-03 cutoff logs the generic January 2025 error: the retired certificate."""
    if build is not None and build.eems_supported and not build.cutoffs.get("2023-03", True):
        return "untrusted_endpoint"
    return "other"


def _build(version: str | None, catalog: Catalog, notes: list[str], today: date) -> BuildVerdict | None:
    if version is None:
        return None
    try:
        return catalog.verdict(version, today=today)
    except BuildVersionError as e:
        notes.append(f"build: {e}")
        return None


def _cu_level_build(admin_display_version: str, catalog: Catalog, notes: list[str], today: date) -> BuildVerdict | None:
    try:
        return catalog.verdict(parse_admin_display_version(admin_display_version), cu_level=True, today=today)
    except BuildVersionError as e:
        notes.append(f"build: {e}")
        return None


def _cycles(log: RawLog | None, latest: datetime) -> list[_Cycle]:
    if log is None:
        return []
    lines = log.tail.splitlines()
    if lines and (log.length is None or log.length > len(log.tail.encode("utf-8"))):
        lines = lines[1:]  # the tail starts mid-file, so its first line may be partial
    records = [r for r in map(parse_log_line, lines) if r is not None and (r.time is None or r.time <= latest)]
    cycles: list[_Cycle] = []
    start: LogRecord | None = None
    problems: list[LogRecord] = []
    followed = False

    def close() -> None:
        if start is not None and start.time is not None:
            first = next((p.time for p in problems if p.time is not None), start.time)
            reason = classify_fetch_error(" ".join(p.message for p in problems)) if problems else None
            cycles.append(_Cycle(start.time, first if problems else None, reason, followed))

    for record in records:
        if record.is_check_start:
            close()
            start, problems, followed = record, [], False
        elif start is not None:
            followed = True
            if record.is_problem:
                problems.append(record)
    close()
    return cycles


def eems_history(facts: RawServerFacts, *, lookback: timedelta, now: datetime,
                 generic_reason: str = "other") -> EemsHistory:
    latest = now + FUTURE_TOLERANCE
    events = [e for e in facts.events if e.time <= latest and e.id in (*SUCCESS_EVENTS, ERROR_EVENT)]
    cycles = _cycles(facts.log, latest)
    failed = [c for c in cycles if c.error_time is not None]

    def reason_of(message: str, when: datetime) -> str:
        """A generic 1008 (the January 2025 text has no detail) takes the reason of the nearest failed log
        cycle: close by it is the same check; further away it is the same persistent cause,
        because the log tail reaches back less far than the event log. Without any, `generic_reason`."""
        reason = classify_fetch_error(message)
        if reason != "other":
            return reason
        known = [c for c in failed if c.error_reason != "other"]
        if not known:
            return generic_reason
        return min(known, key=lambda c: abs(c.error_time - when)).error_reason

    event_errors = [(e.time, reason_of(e.message, e.time)) for e in events if e.id == ERROR_EVENT]
    errors = event_errors + [(c.error_time, c.error_reason) for c in failed]
    successes = [e.time for e in events if e.id in SUCCESS_EVENTS]
    newest_cycle = cycles[-1] if cycles else None
    successes += [c.start for c in cycles if c.error_time is None and (c.finished or c is not newest_cycle)]
    checks = [e.time for e in events] + [c.start for c in cycles]

    last_error = max(errors, key=lambda pair: pair[0], default=(None, None))
    counts = dict.fromkeys(FETCH_ERROR_REASONS, 0)
    for time, reason in event_errors:
        if now - lookback <= time:
            counts[reason] += 1
    return EemsHistory(
        last_check=max(checks, default=None),
        last_success=max(successes, default=None),
        last_error=last_error[0],
        last_error_reason=last_error[1],
        fetch_errors=counts,
    )
