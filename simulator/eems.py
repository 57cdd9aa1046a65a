"""What the Exchange Emergency Mitigation service did on one simulated server: its hourly checks.

The history is a pure function of the build, the service's running interval and the clock, so a test at a
pinned clock always sees the same log lines and events, and nothing has to be stored per server. The
texts come from docs/reference/eems-facts.md (sections 3, 4, 6, 6b); lines marked UNCONFIRMED there
are our assumption and are listed in docs/simulator.md.

This module models Microsoft's service, not the exporter: it carries its own small table of the builds that
decide how EEMS behaves and never imports the exporter's catalog.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from .timezones import Zone, fixed

Build = tuple[int, int, int, int]

# ---------------------------------------------------------------- Microsoft's facts (data)

# First builds with EEMS: 2016 CU22 and 2019 CU11 (September 2021); every SE build (15.2.2562+).
EEMS_FIRST_BUILD = {(15, 1): (15, 1, 2375, 7), (15, 2): (15, 2, 986, 5)}

# Minimum build per CU for each certificate cutoff. A CU newer than every CU listed for its version passes;
# an older or unlisted CU fails. (docs/reference/eems-facts.md 6 and 6b)
CUTOFF_MINIMUMS: dict[str, tuple[Build, ...]] = {
    "2023-03": ((15, 1, 2507, 23), (15, 2, 986, 42), (15, 2, 1118, 26)),
    "2026-06": ((15, 1, 2507, 69), (15, 2, 1544, 41), (15, 2, 1748, 46), (15, 2, 2562, 43)),
}

# From when OCS stopped serving what an old build can validate.
CUTOFF_EFFECTIVE = {
    "2023-03": datetime(2025, 1, 24, tzinfo=timezone.utc),  # Exchange Team blog, Jan 24 2025
    "2026-06": datetime(2026, 7, 1, tzinfo=timezone.utc),  # "configuration files released in July 2026"
}

PROVIDER = "MSExchange Mitigation Service"
OCS_URL = "https://officeclient.microsoft.com/getexchangemitigations"
ENGINE = "Microsoft.Exchange.Mitigation.Service.Mitigations.MitigationEngine"
EVENT_SUCCESS = 1006
EVENT_ERROR = 1008
START_DELAY = timedelta(minutes=10)  # "Ten minutes after restarting, the EM service runs its check"
CHECK_INTERVAL = timedelta(hours=1)

_EXCEPTION_PREFIX = "An unexpected exception occurred.\r\nDiagnostic information: "

# Per outcome: (log lines after the "Fetching" line as (level, message, with_source), 1008 message).
_FAILURE_TEXT: dict[str, tuple[tuple[tuple[str, str, bool], ...], str]] = {
    "untrusted_endpoint": (
        (("Warning", "Connection attempted against untrusted endpoint", False),),
        _EXCEPTION_PREFIX + "Exception encountered while fetching mitigations.",
    ),
    "unknown_issuer": (
        (
            (
                "Error",
                "Exception encountered while fetching mitigations : This XML is not deemed safe to consume since"
                " Response xml's leaf certificate is from unknown issuer or has EKU mismatch",
                True,
            ),
        ),
        _EXCEPTION_PREFIX + "Exception encountered while fetching mitigations: This XML is not deemed safe to"
        " consume since Response xml's leaf certificate is from unknown issuer or has EKU mismatch",
    ),
    "tls_validation": (
        (
            ("Warning", "TLS certificate or its chain validation failed", False),
            ("Error", "Exception encountered while fetching mitigations : One or more errors occurred.", True),
        ),
        _EXCEPTION_PREFIX + "Exception encountered while fetching mitigations : System.AggregateException: One or"
        " more errors occurred. ---> System.Net.Http.HttpRequestException: An error occurred while sending the"
        " request. ---> System.Net.WebException: The underlying connection was closed: Could not establish trust"
        " relationship for the SSL/TLS secure channel. ---> System.Security.Authentication.AuthenticationException:"
        " The remote certificate is invalid according to the validation procedure.\r\n"
        "   at Microsoft.Exchange.Mitigation.Service.MitigationCloudServiceV2.FetchMitigations()\r\n"
        "   at Microsoft.Exchange.Mitigation.Service.Mitigations.MitigationEngine.FetchAndApplyMitigation()",
    ),
    "signature_invalid": (
        (
            (
                "Error",
                "Exception encountered while fetching mitigations : This XML is not deemed safe to consume since"
                " Response xml's signing cert is invalid or not from microsoft",
                True,
            ),
        ),
        _EXCEPTION_PREFIX + "Exception encountered while fetching mitigations : This XML is not deemed safe to"
        " consume since Response xml's signing cert is invalid or not from microsoft",
    ),
}

# UNCONFIRMED in the facts: the text of a successful check and of event 1006 (see docs/simulator.md).
SUCCESS_LOG = "Mitigations fetched successfully from the Office Config Service"
SUCCESS_EVENT = "Mitigation service successfully fetched mitigations. Applied mitigations: {applied}"
# Invented: a 1008 that is not about fetching (Learn: 1008 is logged "for any encountered errors").
NON_FETCH_ERROR = _EXCEPTION_PREFIX + "Exception encountered while sending diagnostic data : The remote name could not be resolved"
NON_FETCH_EVERY = 6  # every sixth check logs one
# Invented: log lines that are problems but not about fetching (`log_other_errors`), one per check, alternating.
# Learn names blocked mitigations and the diagnostic-data upload among what EEMS does; the texts are ours.
LOG_OTHER_ERRORS = (
    ("ApplyMitigation", "Warning", "Mitigation M2.1.0 is blocked and was not applied"),
    ("DiagnosticData", "Error", "Exception encountered while sending diagnostic data : The remote name could not be resolved"),
)

# The log file layout is UNCONFIRMED for EEMS; these are the forms other Exchange 2016+ logs of the same
# framework use (docs/simulator.md "Log files").
LOG_ROTATIONS = ("hourly", "daily")
LOG_ENCODINGS = ("utf-8", "utf-16")
LOG_HEADERS = ("csv_first", "w3c")
# What a file's last write time shows while EEMS holds it open: at_write, every write moves it; at_open, it stays at
# the file's first line until the file is closed. Microsoft: "the last write time is not fully updated until all
# handles that are used for writing are closed" (MicrosoftDocs/win32 desktop-src/SysInfo/file-times.md).
LOG_LAST_WRITES = ("at_write", "at_open")
FIELDS = "DateTime,EventName,CustomData"


# ---------------------------------------------------------------- builds


def parse_build(text: str) -> Build:
    parts = text.split(".")
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        raise ValueError(f"expected a four-part build like 15.2.1544.36, got {text!r}")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def has_eems(build: Build) -> bool:
    first = EEMS_FIRST_BUILD.get(build[:2])
    return first is not None and build >= first


def passes_cutoff(build: Build, cutoff: str) -> bool:
    same_version = [m for m in CUTOFF_MINIMUMS[cutoff] if m[:2] == build[:2]]
    same_cu = [m for m in same_version if m[2] == build[2]]
    if same_cu:
        return build >= same_cu[0]
    return bool(same_version) and build[2] > max(m[2] for m in same_version)


# ---------------------------------------------------------------- history


@dataclass(frozen=True)
class EemsSetup:
    """The inputs that decide one server's EEMS history."""

    server: str
    build: Build
    data_version: str  # the version string Exchange writes in log headers
    running_from: datetime  # when the service (last) started
    running_until: datetime | None  # when it stopped; None while it runs
    forced_failure: str | None  # None = derived from build; "none" = always succeeds; else "tls_validation" | "signature_invalid"
    proxy: str | None
    data_collection_enabled: bool
    success_events: bool
    applied: tuple[str, ...]
    non_fetch_errors: bool = False  # every NON_FETCH_EVERY-th check also logs a 1008 that is not a fetch error
    log_other_errors: bool = False  # every check also logs a Warning/Error line that is not about fetching
    log_rotation: str = "hourly"
    log_encoding: str = "utf-8"
    log_header: str = "csv_first"
    log_time: tuple[str, str, str, str] | None = None  # .NET (date, time, am, pm) patterns; None = ISO 8601
    log_time_zone: Zone = fixed(timedelta(0))  # culture-formatted times are written in the server's zone
    log_last_write: str = "at_write"  # at_open: the file held open keeps the write time of its first line


@dataclass(frozen=True)
class LogLine:
    time: datetime
    text: str  # without line ending


@dataclass(frozen=True)
class Event:
    id: int
    time: datetime
    message: str

    @property
    def data(self) -> tuple[str, ...]:
        """The event's insertion strings (EventRecord.Properties), what its message is formatted from. UNCONFIRMED:
        we assume one string, the text after "Diagnostic information: " (the whole text when there is none)."""
        _, marker, detail = self.message.partition("Diagnostic information: ")
        return (detail if marker else self.message,)


@dataclass(frozen=True)
class LogFile:
    name: str
    content: bytes
    last_write: datetime


def check_times(setup: EemsSetup, lo: datetime, hi: datetime) -> list[datetime]:
    """Check start times in [lo, hi]: 10 minutes after start, then hourly, none after the service stopped."""
    first = setup.running_from + START_DELAY
    end = hi if setup.running_until is None else min(hi, setup.running_until)
    if end < first:
        return []
    k = max(0, -(-(lo - first) // CHECK_INTERVAL))  # ceil division: first check not before lo
    times = []
    t = first + k * CHECK_INTERVAL
    while t <= end:
        times.append(t)
        t += CHECK_INTERVAL
    return times


def outcome(setup: EemsSetup, at: datetime) -> str | None:
    """None for a successful check, else the failure name."""
    if setup.forced_failure == "none":
        return None
    if setup.forced_failure is not None:
        return setup.forced_failure
    if not passes_cutoff(setup.build, "2023-03") and at >= CUTOFF_EFFECTIVE["2023-03"]:
        return "untrusted_endpoint"
    if not passes_cutoff(setup.build, "2026-06") and at >= CUTOFF_EFFECTIVE["2026-06"]:
        return "unknown_issuer"
    return None


def _jitter_ms(setup: EemsSetup, at: datetime, salt: int) -> int:
    return zlib.crc32(f"{setup.server}|{at.isoformat()}|{salt}".encode()) % 900


def _check_lines(setup: EemsSetup, at: datetime) -> list[LogLine]:
    def line(step: int, operation: str, level: str, message: str, source: bool = False) -> LogLine:
        t = at + timedelta(milliseconds=step * 1000 + _jitter_ms(setup, at, step))
        data = f"S:LogLevel={level};S:Message={message}"
        if source:
            data += f";S:Source={ENGINE}"
        return LogLine(t, f"{_stamp(t)},{operation},{data}")

    lines = [line(0, "FetchMitigation", "Information", f"Fetching mitigations from {OCS_URL}")]
    if setup.proxy:
        lines.append(line(0, "FetchMitigation", "Information", f"Using Proxy {setup.proxy} To Fetch Configurations"))
    failure = outcome(setup, at)
    if failure is None:
        lines.append(line(1, "FetchMitigation", "Information", SUCCESS_LOG))
    else:
        for level, message, source in _FAILURE_TEXT[failure][0]:
            lines.append(line(1, "FetchMitigation", level, message, source))
    diagnostic = "Diagnostic data sent" if setup.data_collection_enabled else "No diagnostic data sent. DataCollectionEnabled is false"
    lines.append(line(2, "DiagnosticData", "Information", diagnostic))
    if setup.log_other_errors:
        operation, level, message = LOG_OTHER_ERRORS[int(at.timestamp() // 3600) % len(LOG_OTHER_ERRORS)]
        lines.append(line(2, operation, level, message))
    return lines


def _check_events(setup: EemsSetup, at: datetime) -> list[Event]:
    """Newest first, like Get-WinEvent."""
    t = at + timedelta(milliseconds=1000 + _jitter_ms(setup, at, 1) + 5)
    found = []
    if setup.non_fetch_errors and int(at.timestamp() // 3600) % NON_FETCH_EVERY == 0:
        found.append(Event(EVENT_ERROR, t + timedelta(seconds=1), NON_FETCH_ERROR))
    failure = outcome(setup, at)
    if failure is not None:
        found.append(Event(EVENT_ERROR, t, _FAILURE_TEXT[failure][1]))
    elif setup.success_events:
        found.append(Event(EVENT_SUCCESS, t, SUCCESS_EVENT.format(applied=", ".join(setup.applied) or "none")))
    return found


def events(setup: EemsSetup, now: datetime, lookback: timedelta, max_events: int) -> list[Event]:
    """Events of the lookback window, newest first, at most max_events (like Get-WinEvent -MaxEvents)."""
    lo = now - lookback
    found = []
    for at in reversed(check_times(setup, lo - timedelta(seconds=5), now)):
        for event in _check_events(setup, at):
            if lo <= event.time <= now:
                found.append(event)
                if len(found) >= max_events:
                    return found
    return found


def log_files(setup: EemsSetup, now: datetime, since: datetime, limit: int = 64) -> list[LogFile]:
    """The log files as they stand at `now`, newest first: every file with lines from `since` on, plus the
    one before (what the script reads to cover its lookback); at most `limit`."""
    end = now if setup.running_until is None else min(now, setup.running_until)
    step = timedelta(hours=1) if setup.log_rotation == "hourly" else timedelta(days=1)
    period = datetime(end.year, end.month, end.day, end.hour if step < timedelta(days=1) else 0, tzinfo=timezone.utc)
    files: list[LogFile] = []
    while period + step > setup.running_from and len(files) < limit:
        lines = _day_lines(setup, period, min(end, period + step - timedelta(microseconds=1)))
        if lines:
            held_open = not files and setup.running_until is None and setup.log_last_write == "at_open"
            files.append(_log_file(setup, period, lines, held_open))
            if lines[-1].time < since:
                break
        period -= step
    return files


def _log_file(setup: EemsSetup, period: datetime, lines: list[LogLine], held_open: bool = False) -> LogFile:
    """The file of one period; `held_open` (the newest file of a running service, with `log_last_write: at_open`)
    shows the write time of its first line."""
    header = (
        "#Software: Microsoft Exchange Server",
        f"#Version: {setup.data_version}",
        "#Log-type: Mitigation Service Log",
        f"#Date: {_stamp(lines[0].time)}",
        f"#Fields: {FIELDS}",
    )
    if setup.log_header == "csv_first":
        header = (FIELDS, *header)
    rows = [*header, *(_restamp(setup, line) for line in lines)]
    text = "".join(f"{row}\r\n" for row in rows)
    data = b"\xff\xfe" + text.encode("utf-16-le") if setup.log_encoding == "utf-16" else text.encode("utf-8")
    stamp = f"{period:%Y%m%d%H}" if setup.log_rotation == "hourly" else f"{period:%Y%m%d}"
    return LogFile(f"MitigationService_{stamp}-1.LOG", data, lines[0].time if held_open else lines[-1].time)


def _restamp(setup: EemsSetup, line: LogLine) -> str:
    """The line with its time in the configured form (ISO 8601, or the culture's DateTime.ToString())."""
    if setup.log_time is None:
        return line.text
    return format_culture_time(setup.log_time_zone.local(line.time), *setup.log_time) + line.text[line.text.index(","):]


def format_culture_time(t: datetime, date_pattern: str, time_pattern: str, am: str, pm: str) -> str:
    """`DateTime.ToString()` with a culture's ShortDatePattern and LongTimePattern."""
    t = t.astimezone(timezone.utc)
    values = {
        "yyyy": f"{t.year:04d}", "MM": f"{t.month:02d}", "M": str(t.month), "dd": f"{t.day:02d}", "d": str(t.day),
        "HH": f"{t.hour:02d}", "H": str(t.hour), "hh": f"{(t.hour % 12) or 12:02d}", "h": str((t.hour % 12) or 12),
        "mm": f"{t.minute:02d}", "ss": f"{t.second:02d}", "tt": am if t.hour < 12 else pm,
    }
    tokens = re.findall(r"yyyy|MM|M|dd|d|HH|H|hh|h|mm|ss|tt|.", f"{date_pattern} {time_pattern}")
    return "".join(values.get(token, token) for token in tokens).strip()


def _day_lines(setup: EemsSetup, day: datetime, end: datetime) -> list[LogLine]:
    lines: list[LogLine] = []
    if day <= setup.running_from <= end:
        started = f"{_stamp(setup.running_from)},Service,S:LogLevel=Information;S:Message=Started MSExchangeMitigation"
        lines.append(LogLine(setup.running_from, started))
    for at in check_times(setup, day, end):
        lines.extend(line for line in _check_lines(setup, at) if line.time <= end)
    return lines


def last_success(setup: EemsSetup, now: datetime) -> datetime | None:
    """The newest successful check (what Exchange may store as MitigationsAppliedTime, UNCONFIRMED)."""
    if setup.forced_failure not in (None, "none"):
        return None
    limit = now if setup.running_until is None else min(now, setup.running_until)
    if setup.forced_failure is None:
        for cutoff, effective in CUTOFF_EFFECTIVE.items():
            if not passes_cutoff(setup.build, cutoff):
                limit = min(limit, effective - timedelta(microseconds=1))
    first = setup.running_from + START_DELAY
    if limit < first:
        return None
    return first + ((limit - first) // CHECK_INTERVAL) * CHECK_INTERVAL


def _stamp(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"
