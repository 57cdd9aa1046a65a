"""Judge one server's raw facts: build verdict, service state, and the EEMS check history.

EEMS leaves two independent traces, the Application-log events (1005/1006 success, 1008 failure) and
its own log files. Either may be missing (event log cleared, log folder empty, collection error), so the
history is built from whichever exists, and the log refines a generic 1008 text: the January 2025
certificate retirement logs only "Exception encountered while fetching mitigations." as the event, while
the log says "untrusted endpoint" (docs/reference/eems-facts.md section 3).

Log cycles: a cycle runs from one "Fetching mitigations from" line up to the next one. A cycle with a line
naming a known fetch failure, or an Error about fetching mitigations, is a failed check (its time is the first
such line); one without is a successful check (its time is the check-start line). Other Warning/Error lines
are counted apart. Fetch-failure lines before any check-start line are a failed check of their own. The newest
cycle counts as a success only once a line follows its check-start line and it is CHECK_SETTLE old, so a check
still in progress when the tail was read is not reported as a success.

Activity: the newest trace of the service at all (an EEMS event of any id, a log line, the newest write
into the log folder) needs no guessed text. With the absence of fetch errors since, it is the success
signal the alerts page on (docs/alerts.md "Three questions"); a confirmed success is reported but
only informs.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections import Counter
from datetime import date, datetime, timedelta
from functools import cache
from typing import NamedTuple

from .catalog import BuildVersionError, Catalog, parse_admin_display_version
from .component_state import local_states
from .eems_log import (FETCH_ERROR_REASONS, LogRecord, classify_fetch_error, fetch_error_reason,
                       is_fetch_problem, parse_log_lines)
from .model import (
    BuildVerdict,
    EemsHistory,
    EndpointState,
    PartialFailure,
    RawEndpoint,
    RawError,
    RawLog,
    RawServerFacts,
    ServerState,
)
from .windows_service import START_MODES, STATES, UNKNOWN_STATE

SUCCESS_EVENTS = (1005, 1006)
ERROR_EVENT = 1008
FUTURE_TOLERANCE = timedelta(days=1)  # clock skew we accept before calling a timestamp bogus
SAME_CHECK = timedelta(minutes=10)  # an event and a log cycle closer than this are one check
LOG_CLOCK_SLACK = timedelta(minutes=10)  # a log line may look this much newer than the server's now (clock steps)
CHECK_INTERVAL = timedelta(hours=1)  # EEMS checks every hour (Learn)
# "Failing now": the two newest checks failed, one after the other. A check that succeeds may leave no trace (no event
# is documented for it; the log may be unread), so where an hourly check fits between two failures, or after the
# newer, unseen, it is taken as a success: consecutive checks are at most one and a half intervals apart.
NEXT_CHECK = CHECK_INTERVAL * 3 / 2
# How long the newest check may still be fetching: a check logs its start, "Using Proxy" and its diagnostic-data line
# before the fetch fails (the GRANIKOS capture), so a newest check without a problem line is a success only once it
# is this old. A fetch taking longer (UNCONFIRMED: .NET's HttpClient gives up after 100 s by default) would
# still read as a success for a poll.
CHECK_SETTLE = timedelta(minutes=5)

ENDPOINTS = {"GetExchangeMitigations": "mitigations", "GetExchangeConfig": "flighting"}
# .NET's WebExceptionStatus names (TrustFailure aside: it depends on the revocation check) -> endpoint reason
WEB_STATUS_REASONS = {"Timeout": "timeout", "SecureChannelFailure": "tls_validation", "NameResolutionFailure": "dns",
                      "ProxyNameResolutionFailure": "dns", "ConnectFailure": "connect_failed"}
ACCESS_DENIED_TYPES = ("System.UnauthorizedAccessException", "System.Security.SecurityException")
EVENT_READER_EXCEPTIONS = "System.Diagnostics.Eventing.Reader."  # EventLogException, EventLogInvalidDataException, ...


class _Cycle(NamedTuple):
    start: datetime
    error_time: datetime | None  # first Warning/Error line, None for a clean cycle
    error_reason: str | None
    finished: bool  # a line followed the check-start line


def interpret_server(name: str, facts: RawServerFacts, catalog: Catalog, *, lookback: timedelta, now: datetime,
                     today: date | None = None, admin_display_version: str | None = None,
                     proxy_source: str | None = None) -> ServerState:
    """`now` is the server's clock (its event times are on it); `today`, the exporter's date, decides the
    servicing verdicts, so a server with a wrong clock cannot change them (default: `now`'s date).
    `admin_display_version` (organization collector) stands in when ExSetup.exe could not be read, as in
    HealthChecker; it names the CU only, so the verdict is CU-level (see catalog.py). `proxy_source` says where the
    proxy the exporter gave the endpoint check came from (configured | internet_web_proxy)."""
    failures: list[PartialFailure] = []
    today = today or now.date()
    build, source = _build(facts.exsetup_version, catalog, failures, today), facts.build_source
    if facts.exsetup_version is None and admin_display_version is not None:
        build, source = _build(admin_display_version, catalog, failures, today, cu_level=True), "admin_display_version"
    installed = _service_installed(facts)
    eems_build = _eems_supported(build, facts, installed)
    if facts.exsetup_version is None and not any(e.part == "build" for e in (*facts.errors, *failures)):
        failures.append(PartialFailure("build", "not_found", "the script reported no build and no error "
                                                             "(an empty ExSetup.exe FileVersion?)"))
    if facts.service_queried:
        state = STATES.get(facts.service_status or "", UNKNOWN_STATE)
        start_mode = START_MODES.get(facts.service_start_type or "")
    else:
        state = None if installed is False else UNKNOWN_STATE
        known_start = installed and facts.service_key_start is not None  # parse keeps only Start values 0-4
        start_mode = tuple(START_MODES.values())[facts.service_key_start] if known_start else None
    failures += _partial_failures(facts, eems_build=eems_build, installed=installed)
    eems = eems_history(facts, lookback=lookback, now=now, generic_reason=_generic_reason(build))
    return ServerState(
        name=name,
        build=build,
        build_source=source if build is not None else None,
        edge=facts.edge,
        eems_supported=eems_build,
        service_installed=installed,
        service_state=state,
        service_start_mode=start_mode,
        eems=eems,
        endpoints=tuple(_endpoint(e, proxy_source) for e in facts.endpoints
                        if e.name in ENDPOINTS and _endpoint_used(ENDPOINTS[e.name], build)),
        collection_errors=_unique(failures),
        stage_seconds=facts.stage_seconds,
        component_states=_component_states(facts),
    )


def _component_states(facts: RawServerFacts) -> tuple[tuple[str, str, str], ...] | None:
    """The registry's entries of ServerWideOffline, read (component_state.py); a key that does not exist has none
    (no requester ever wrote it locally), which is an answer, not a failure."""
    if facts.component_states is None and any(e.part == "component_state" and e.id.startswith("PathNotFound")
                                              for e in facts.errors):
        return ()
    return local_states(facts.component_states)


def _eems_supported(build: BuildVerdict | None, facts: RawServerFacts, installed: bool | None) -> bool | None:
    """Whether the server has EEMS: from its build, and where the build is unread or of an Exchange version the
    catalog cannot place, from what the server shows (its service, its log folder, an event of its source); with
    neither, unknown (None), never "no": an unread build must not say "predates EEMS" nor switch the EEMS alerts
    off (review R7)."""
    if facts.edge:
        return False
    if build is not None and build.eems_supported is not None:
        return build.eems_supported
    if installed or facts.log_folder or facts.events:
        return True
    return None


def _service_installed(facts: RawServerFacts) -> bool | None:
    """Windows PowerShell 5.1's Get-Service reports an access-denied OpenService as "no service found"
    (Service.cs AddIfValidService catches the InvalidOperationException), so only an absent registry key
    says "not installed"; a present key without a service answer is installed with an unknown state."""
    if facts.service_queried:
        return True
    if any(e.part == "service_key" and e.id.startswith("PathNotFound") for e in facts.errors):
        return False
    return True if facts.service_key_start is not None else None


def error_reason(error: RawError) -> str:
    """access_denied | not_found | unreadable | constrained_language | other, from the invariant parts of an error
    record (never its text). `unreadable`: an event Get-WinEvent could not read or format (an EventLog exception
    written while it went on with the others, GetEventCommand.cs ReadEvents, its id the exception's message): the
    part was read, that record not. One thrown out of the cmdlet (no reader: the Event Log service stopped) is
    named by its type instead (CmdletInvocationException) and read nothing."""
    if error.id == "ConstrainedLanguage":  # the script's own record: the endpoint check needs FullLanguage
        return "constrained_language"
    if (error.category == "PermissionDenied" or error.type in ACCESS_DENIED_TYPES or error.inner in ACCESS_DENIED_TYPES
            or "UnauthorizedAccess" in error.id):
        return "access_denied"
    if (error.part == "events" and error.type.startswith(EVENT_READER_EXCEPTIONS)
            and not error.id.startswith(error.type + ",")):
        return "unreadable"
    if error.category == "ObjectNotFound" or error.id.startswith(("PathNotFound", "NoMatching", "NoServiceFound")):
        return "not_found"
    return "other"


# The shape of a part's name. It becomes the `part` label, and the script's error records, which name the part,
# come from the server's own output: another name is `other`, decided here, so that two such records are one
# failure (as two labels of `other` they were two series of the same labels).
PART = re.compile(r"[a-z][a-z0-9_.]{0,31}")


def _partial_failures(facts: RawServerFacts, *, eems_build: bool | None, installed: bool | None) -> list[PartialFailure]:
    """What could not be read, leaving out what is an answer: no events in the window (NoMatchingEventsFound,
    in every display language), and on a server without EEMS the missing service and log folder. (The script
    asks for events with -LogName and -FilterXPath, which looks no provider up: an unregistered provider is
    "no events" there, and a NoMatchingProvidersFound would be a real failure.) A part whose records the script
    did not all send says how many it met: a reader that keeps failing writes its error again at every read."""
    expected_absent = eems_build is not True or installed is False
    met, sent = dict(facts.error_counts), Counter(error.part for error in facts.errors)
    # Get-WinEvent opens the log's configuration before it queries: where that fails (LogInfoUnavailable, around
    # the reason, e.g. access denied) it then says the name matched no log (NoMatchingLogsFound), which is no
    # missing log (GetEventCommand.cs FindLogNamesMatchingWildcards, PowerShell/PowerShell@4e4a07c5)
    config_failed = any(e.part == "events" and e.id.startswith("LogInfoUnavailable") for e in facts.errors)
    failures = []
    for error in facts.errors:
        reason = error_reason(error)
        if error.part == "events" and error.id.startswith("NoMatchingEventsFound"):
            continue
        if error.part == "events" and config_failed and error.id.startswith("NoMatchingLogsFound"):
            continue
        if error.part in ("service_key", "component_state") and error.id.startswith("PathNotFound"):
            continue
        if error.part == "service" and error.id.startswith("NoServiceFoundForGivenName"):
            if installed is False:
                continue
            reason = "access_denied"  # the key exists: 5.1 turned "access denied" into "not found"
        if error.part == "log" and reason == "not_found" and expected_absent:
            continue
        part = "service" if error.part == "service_key" else error.part
        message = error.message
        if met.get(error.part, 0) > sent[error.part]:
            message = (f"{message} (the script met {met[error.part]} error records reading {error.part} "
                       f"and sent the first {sent[error.part]})")
        failures.append(PartialFailure(part if PART.fullmatch(part) else "other", reason, message))
    if facts.log_folder is False and not expected_absent:
        failures.append(PartialFailure("log", "not_found", "the MitigationService log folder does not exist"))
    return failures


def _unique(failures: list[PartialFailure]) -> tuple[PartialFailure, ...]:
    seen: dict[tuple[str, str], PartialFailure] = {}
    for failure in failures:
        seen.setdefault((failure.part, failure.reason), failure)
    return tuple(seen.values())


def _endpoint_used(endpoint: str, build: BuildVerdict | None) -> bool:
    """Whether the server runs a service that fetches from the endpoint. `flighting` (GetExchangeConfig) is the
    Feature Flighting service's, which only Exchange 2019 CU15 and later and SE have (cutoffs.yaml): on an older
    build nothing uses it, and its failure raised ExchangeEEMSEndpointUnreachable, gated on EEMS alone, for a server
    HealthChecker shows no flighting for. A build unread or of an unknown product keeps it."""
    return endpoint != "flighting" or build is None or build.flighting_supported is not False


def _endpoint(raw: RawEndpoint, given_proxy_source: str | None) -> EndpointState:
    """The check's verdict, and which proxy it used: the exporter's ("parameter": configured or Active Directory's
    InternetWebProxy, as the exporter knows), the server's WinHTTP proxy, or none."""
    source = raw.proxy_source
    if source == "parameter":
        source = given_proxy_source or "configured"
    return EndpointState(ENDPOINTS[raw.name], raw.status == 200, _endpoint_reason(raw), raw.duration_seconds,
                         raw.proxy, source, raw.proxy_credentials)


def _endpoint_reason(raw: RawEndpoint) -> str:
    """Why the GET failed, from the HTTP status and .NET's WebExceptionStatus name (both invariant)."""
    if raw.status == 200:
        return "ok"
    if raw.status == 407:
        return "proxy_auth_required"
    if raw.web_status == "TrustFailure":
        return "revocation_unknown" if raw.revocation_failed else "tls_validation"
    return WEB_STATUS_REASONS.get(raw.web_status or "", "http_status" if raw.status else "other")


def _generic_reason(build: BuildVerdict | None) -> str:
    """A build below the 2023-03 cutoff logs the generic January 2025 error: the retired certificate."""
    if build is not None and build.eems_supported and not build.cutoffs.get("2023-03", True):
        return "untrusted_endpoint"
    return "other"


def _build(version: str | None, catalog: Catalog, failures: list[PartialFailure], today: date, *,
           cu_level: bool = False) -> BuildVerdict | None:
    """`cu_level`: `version` is an AdminDisplayVersion (organization collector), which names the CU only."""
    if version is None:
        return None
    try:
        if cu_level:
            version = parse_admin_display_version(version)
        return catalog.verdict(version, cu_level=cu_level, today=today)
    except BuildVersionError as e:
        failures.append(PartialFailure("build", "other", str(e)))
        return None


def _records(facts: RawServerFacts, latest: datetime, failed_events: list[datetime]) -> list[LogRecord]:
    """Timed records of every log file read, oldest file first; lines without a readable time are dropped, and
    so is a line later than `latest` (the server's own now plus LOG_CLOCK_SLACK), alone: the rest of its file
    stays. A file's write time bounds nothing here (Microsoft: it may not move until the writer closes the
    file); it only is evidence of activity, in `eems_history`.

    Culture-formatted times carry no zone: they are read as UTC or, when that fits the files and the times of
    the fetch-error 1008s (`failed_events`) better, as the server's local time (`_zone_reading`)."""
    files = []
    for log in reversed(facts.logs):
        timed = parse_log_lines(log.tail.splitlines(), facts.culture)
        files.append((log, [r for r in timed if r is not None and r.time is not None]))
    reading = _zone_reading(files, log_offsets(facts.utc_offset_minutes, facts.utc_offsets), latest, failed_events)
    records = []
    for index, (_, timed) in enumerate(files):
        for position, record in enumerate(timed):
            if reading is not None and not record.zoned:
                record = record._replace(time=reading[index][position])
            if record.time <= latest:
                records.append(record)
    return records


def log_offsets(utc_offset_minutes: int | None,
                utc_offsets: tuple[tuple[datetime, int], ...]) -> tuple[tuple[datetime | None, int], ...]:
    """The server's UTC offsets as (since, minutes), the first in force since ever (None): the changes over the
    lookback the script sends (parse.py `utc_offsets`), or, from a script that sends none (an endpoint installed
    before it did), the one current offset for every line. Empty: the server is on UTC. The poll and `diagnose`
    (assumptions.py) read log times with it."""
    if utc_offsets:
        return ((None, utc_offsets[0][1]), *utc_offsets[1:])
    return ((None, utc_offset_minutes),) if utc_offset_minutes else ()


def local_times(files: list[list[LogRecord]],
                offsets: tuple[tuple[datetime | None, int], ...]) -> list[list[datetime]]:
    """Each record's time (parallel to `files`: each file's timed records in order, the files oldest first) with
    its zoneless times read as the server's local time, each with the offset in force at that local time
    (`log_offsets`). The poll's reading (`_zone_reading`), and the field report's (assumptions.py).

    Around a change a local time may have no reading (the hour skipped in spring: a local clock never shows it;
    it is read with the offset before the change) or two (the hour repeated in autumn). Two are resolved by the
    order the lines were written in: the files oldest first (by write time), each file's lines in order, so the
    earliest reading not before the line before it; where the order leaves both open, the earlier one. A check
    logs several lines over seconds, so the step back where the local clock is set back shows in the lines'
    order, and with hourly files it shows across files (a line's file is no sign of its zone: file names do not
    say which of the two hours they cover). A quick check writes all its lines within one second, and the hourly
    timer puts the check of the second pass in the same second as the one of the first: its start line shows the
    local time of the line before it, and two checks never start at the same instant, so it is the later reading.
    Earlier, not later: a repeated hour whose second pass shows no line
    is a service that wrote nothing then, and reading its last lines an hour later would make it look active an
    hour longer than it was."""
    if len(offsets) <= 1:
        shift = timedelta(minutes=offsets[0][1] if offsets else 0)
        return [[r.time if r.zoned else r.time - shift for r in timed] for timed in files]
    periods = [(since, timedelta(minutes=minutes), following[0] if following else None)
               for (since, minutes), following in zip(offsets, [*offsets[1:], None])]
    result, previous, last_start = [], None, None
    for timed in files:
        times = []
        for record in timed:
            time = record.time
            if not record.zoned:
                readings = [time - shift for since, shift, until in periods
                            if (since is None or since <= time - shift) and (until is None or time - shift < until)]
                if not readings:  # skipped: the last period that had begun by the reading with its own offset
                    time = next(time - shift for since, shift, _ in reversed(periods)
                                if since is None or since <= time - shift)
                else:  # a check start is never at the instant of the one before (an hour later, same second)
                    start = len(readings) > 1 and record.is_check_start
                    time = next((t for t in readings if (previous is None or t >= previous)
                                 and not (start and t == last_start)), readings[-1])
                    if start:
                        last_start = time
            times.append(time)
            previous = time
        result.append(times)
    return result


def _zone_reading(files: list[tuple[RawLog, list[LogRecord]]], offsets: tuple[tuple[datetime | None, int], ...],
                  latest: datetime, failed_events: list[datetime]) -> list[list[datetime]] | None:
    """The records' times read as the server's local time (`local_times`) when that reading contradicts the files
    less than UTC does; None to read zoneless times as UTC. A reading is contradicted by a file with a line later
    than `latest`, a file whose newest line is older than its write time (the newest line is at least as new as
    any write), and a closed file (every file but the newest) whose newest line is newer than its write time
    (closing sets it); it is borne out by each fetch-error 1008 it puts beside a log line of a failed fetch (an
    event and the log of one check agree). As checks are hourly, a reading an hour off puts a failed cycle an hour
    from its 1008, beside another check: one failure read as two checks in a row."""
    if not any(minutes for _, minutes in offsets):
        return None
    if not any(not r.zoned for _, timed in files for r in timed):
        return None

    def contradictions(reading: list[list[datetime]]) -> int:
        count = 0
        for index, (log, timed) in enumerate(files):
            times = [t for r, t in zip(timed, reading[index]) if not r.zoned]
            if not times:
                continue
            newest, closed = max(times), index < len(files) - 1
            count += newest > latest
            if log.last_write is not None:
                count += newest < log.last_write - LOG_CLOCK_SLACK
                count += closed and newest > log.last_write + LOG_CLOCK_SLACK
        return count - _failed_fetches_met(failed_events, files, reading)

    utc = [[r.time for r in timed] for _, timed in files]
    local = local_times([timed for _, timed in files], offsets)
    return local if contradictions(local) < contradictions(utc) else None


def _failed_fetches_met(failed_events: list[datetime], files: list[tuple[RawLog, list[LogRecord]]],
                        reading: list[list[datetime]]) -> int:
    """How many fetch-error 1008s have a log line of a failed fetch within SAME_CHECK of them, the zoneless
    lines read as `reading` says."""
    failures = sorted(t for (_, timed), times in zip(files, reading) for r, t in zip(timed, times)
                      if not r.zoned and r.is_problem and is_fetch_problem(r.message, r.level))
    return sum(bisect_right(failures, failed_at + SAME_CHECK) > bisect_left(failures, failed_at - SAME_CHECK)
               for failed_at in failed_events)


def _cycles(records: list[LogRecord]) -> tuple[list[_Cycle], list[datetime]]:
    """The checks in the log, and the times of problem lines that are not about fetching mitigations.

    A Warning/Error line fails its check only when it is about fetching (`is_fetch_problem`), the rule 1008 events
    (Errors) follow: EEMS logs other errors too (Learn: 1008 is logged "for any encountered errors"), and one of
    those per hour must not read as a failing server.

    A fetch failure with no check-start line before it (the start text is GRANIKOS's, from one build; or the tail
    begins inside a check) is a failed check of its own, started at its first line: the failure texts are
    confirmed, the start text is not, and dropping them lost every failed fetch of such a log. Such lines within
    SAME_CHECK of the first are one check."""
    cycles: list[_Cycle] = []
    others: list[datetime] = []
    classify = cache(classify_fetch_error)  # a check fails the same way hour after hour: each text read once
    start: LogRecord | None = None
    problems: list[LogRecord] = []
    headless: list[LogRecord] = []  # fetch failures not after a check-start line
    followed = False

    def close_headless() -> None:
        if headless:
            reason = classify(" ".join([p.message for p in headless]))
            cycles.append(_Cycle(headless[0].time, headless[0].time, reason, True))
            headless.clear()

    def close() -> None:
        close_headless()
        if start is not None:
            reason = classify(" ".join([p.message for p in problems])) if problems else None
            cycles.append(_Cycle(start.time, problems[0].time if problems else None, reason, followed))

    for record in records:
        if record.is_check_start:
            close()
            start, problems, followed = record, [], False
            continue
        followed = start is not None
        if record.is_problem:
            if is_fetch_problem(record.message, record.level):
                if start is not None:
                    problems.append(record)
                else:
                    if headless and record.time - headless[0].time >= SAME_CHECK:
                        close_headless()
                    headless.append(record)
            else:
                others.append(record.time)
    close()
    return cycles, others


def eems_history(facts: RawServerFacts, *, lookback: timedelta, now: datetime,
                 generic_reason: str = "other") -> EemsHistory:
    latest = now + FUTURE_TOLERANCE
    all_events = [e for e in facts.events if e.time <= latest]
    # None for a success or a 1008 that is not about fetching mitigations; EEMS repeats its texts every hour
    read = cache(fetch_error_reason)
    fetch_reasons = [read(e.text) if e.id == ERROR_EVENT else None for e in all_events]
    events = [e for e, reason in zip(all_events, fetch_reasons) if reason is not None or e.id in SUCCESS_EVENTS]
    records = _records(facts, now + LOG_CLOCK_SLACK, [e.time for e, reason in zip(all_events, fetch_reasons)
                                                      if reason is not None])
    cycles, log_others = _cycles(records)
    failed = [c for c in cycles if c.error_time is not None]
    known = [c for c in failed if c.error_reason != "other"]
    by_time = sorted((c.error_time, i) for i, c in enumerate(known))
    known_times, known_order = [t for t, _ in by_time], [i for _, i in by_time]

    def reason_of(reason: str, when: datetime) -> str:
        """A generic 1008 (the January 2025 text has no detail) takes the reason of the nearest failed log
        cycle: close by it is the same check; further away it is the same persistent cause,
        because the log tail reaches back less far than the event log. Without any, `generic_reason`."""
        if reason != "other":
            return reason
        if not known:
            return generic_reason
        return known[_nearest(known_times, known_order, when)].error_reason

    event_errors = [(e.time, reason_of(reason, e.time)) for e, reason in zip(all_events, fetch_reasons)
                    if reason is not None]
    errors = event_errors + [(c.error_time, c.error_reason) for c in failed]
    successes = [e.time for e in events if e.id in SUCCESS_EVENTS]
    newest_cycle = cycles[-1] if cycles else None
    successes += [c.start for c in cycles if c.error_time is None
                  and (c is not newest_cycle or (c.finished and now - c.start >= CHECK_SETTLE))]
    checks = [e.time for e in events] + [c.start for c in cycles]
    activity = [e.time for e in all_events] + [r.time for r in records]
    activity += [log.last_write for log in facts.logs if log.last_write is not None and log.last_write <= latest]

    last_error = max(errors, key=lambda pair: pair[0], default=(None, None))
    failing = _two_newest_failed([t for t, _ in errors], successes, now)
    runs = _failure_runs([t for t, _ in errors], successes, now - lookback)
    counts = dict.fromkeys(FETCH_ERROR_REASONS, 0)
    for time, reason in event_errors:
        if now - lookback <= time:
            counts[reason] += 1
    other = sum(1 for e, reason in zip(all_events, fetch_reasons)
                if e.id == ERROR_EVENT and reason is None and now - lookback <= e.time)
    return EemsHistory(
        last_check=max(checks, default=None),
        last_success=max(successes, default=None),
        last_error=last_error[0],
        last_error_reason=last_error[1],
        fetch_errors=counts,
        other_errors=other,
        log_other_errors=sum(1 for time in log_others if now - lookback <= time),
        last_activity=max(activity, default=None),
        failing=failing,
        failure_runs=runs,
    )


def _nearest(times: list[datetime], order: list[int], when: datetime) -> int:
    """The index of the time nearest `when` in an unsorted list, the first of equally near ones (as `min` over
    the list picks), found by bisection: a generic 1008 per hour against the failed cycles of a full log tail
    was a hundred by a hundred distances. `times` is the list sorted, `order[k]` the index of `times[k]`,
    equal times in index order."""
    at = bisect_left(times, when)  # times[at]: the first of the times at or after `when`
    if at == 0:
        return order[at]
    before = order[bisect_left(times, times[at - 1])]  # the first of the times just before `when`
    if at == len(times):
        return before
    gap_before, gap_after = when - times[at - 1], times[at] - when
    if gap_before == gap_after:
        return min(before, order[at])
    return before if gap_before < gap_after else order[at]


def _failure_runs(errors: list[datetime], successes: list[datetime], since: datetime) -> int:
    """How many runs of failed checks reach into the window from `since`: checks failing one after the other (no
    success and no unseen hourly check between them, as in `_two_newest_failed`) are one run, however long. A fixed
    outage of a day is one run; failures among good checks are one each. With the error count alone, every outage
    once fixed read as errors recurring between successes for the rest of the window (ExchangeEEMSFetchErrorsRecurring)."""
    checks: list[tuple[datetime, bool]] = []
    for time, failed in sorted([(t, True) for t in errors] + [(t, False) for t in successes]):
        if checks and time - checks[-1][0] < SAME_CHECK:
            checks[-1] = (checks[-1][0], checks[-1][1] or failed)
        else:
            checks.append((time, failed))
    runs, counted, previous = 0, False, None
    for time, failed in checks:
        if failed and not (previous and previous[1] and time - previous[0] <= NEXT_CHECK):
            counted = False  # a new run starts
        if failed and time >= since and not counted:
            runs, counted = runs + 1, True
        previous = (time, failed)
    return runs


def _two_newest_failed(errors: list[datetime], successes: list[datetime], now: datetime) -> bool:
    """Whether the two newest checks failed, one after the other: a single failed check among good ones is
    noise, two in a row are an outage. An event and a log cycle of the same check count once, as failed if
    either says so. No hourly check may fit unseen between the two (NEXT_CHECK) or since the newer: with the
    log unread a success shows nowhere, and two 1008s hours apart are two failures among good checks."""
    attempts = sorted([(t, True) for t in errors] + [(t, False) for t in successes], reverse=True)
    checks: list[tuple[datetime, bool]] = []
    for time, failed in attempts:
        if checks and checks[-1][0] - time < SAME_CHECK:
            checks[-1] = (checks[-1][0], checks[-1][1] or failed)
        elif len(checks) == 2:
            break
        else:
            checks.append((time, failed))
    if len(checks) < 2 or not (checks[0][1] and checks[1][1]):
        return False
    return now - checks[0][0] <= NEXT_CHECK and checks[0][0] - checks[1][0] <= NEXT_CHECK
