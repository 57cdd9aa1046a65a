"""The field report's verdicts: per assumption the exporter rests on, what one server's facts say about it.

Each assumption has a stable id (docs/alerts.md and docs/field-report.md name them) and one function of the facts
the report already collects (`Facts`), in the table `ASSUMPTIONS`. A function returns a `Verdict`:

- CONFIRMS: this server shows the assumption holding;
- CONTRADICTS: this server shows it wrong;
- NOT SHOWN: the report holds the facts, but this server does not exercise the assumption (no failed check, the
  part could not be read, an English culture where a translation would show);
- NOT COLLECTED: the report does not hold the facts it would need (nothing is guessed instead).

with one line of evidence naming the report keys (and values) it was read from. Maintainers reading many reports
count the `assumption.ID` lines; a guess is confirmed by CONFIRMS from real servers and no CONTRADICTS.
Only Python judges here: the diagnose script prints raw facts (exporter/scripts/diagnose_server.ps1).
"""

from __future__ import annotations

import base64
import binascii
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from datetime import datetime, timedelta
from typing import Any, Callable, NamedTuple

from .eems_log import LogRecord, fetch_error_reason, is_fetch_problem, classify_fetch_error
from .interpret import CHECK_SETTLE, ERROR_EVENT, SUCCESS_EVENTS, local_times, log_offsets
from .parse import as_list, parse_utc_offsets

CONFIRMS, CONTRADICTS, NOT_SHOWN, NOT_COLLECTED = "CONFIRMS", "CONTRADICTS", "NOT SHOWN", "NOT COLLECTED"
SLACK = timedelta(minutes=5)  # a write time and the line it wrote, a check's start and the hour
SUCCESS_TEXT = "mitigations fetched successfully"  # the simulator's success line (ours; docs/simulator.md)
LEVELS = ("Information", "Warning", "Error")
TEXTS_LISTED = 3
# What the diagnose script sends at most, and so what the report and the verdicts read of its document (field_report
# imports them: its DIAGNOSE_PARAMETERS and error lists)
MAX_EVENTS, ERRORS_SENT = 200, 20
TEXT_CHARS = 160  # a listed text; the whole one is in events.id.1008.text.N or log.read.N.level.*
# Words that make an Information line read like a failure (docs/field-report.md: "an Information message that
# reads like a failure refutes it"); a flag for a human to read the listed texts, named in the evidence
_FAILURE_WORDS = re.compile(r"\b(?:fail\w*|error\w*|exception|denied|unable|could not|cannot|invalid|untrusted)\b",
                            re.IGNORECASE)
# the FullyQualifiedErrorIds the exporter decides on (interpret.py); all invariant, in every culture
DECIDING_IDS = ("NoServiceFoundForGivenName", "NoMatchingEventsFound", "PathNotFound", "DirUnauthorizedAccessError",
                "System.UnauthorizedAccessException", "LogInfoUnavailable", "NoMatchingLogsFound")
_ACE = re.compile(r"\(([^()]*)\)")
_DOMAIN_SID = re.compile(r"S-1-5-21-", re.IGNORECASE)


class Verdict(NamedTuple):
    status: str
    evidence: str


@dataclass
class ReadLog:
    """One log file as section 3 read it (`log.read.N`)."""

    key: str
    encoding: str | None  # None: the bytes were not read (Constrained Language Mode: the poll's text tail)
    length_differs: bool | None
    data_lines: int  # lines neither blank, nor a header
    read_times: int  # of them, the lines whose time the exporter reads
    parts: tuple[list[LogRecord], ...]  # the parsed lines of each part read (head, tail), in file order
    last_write: datetime | None  # the directory entry's
    file_last_write: datetime | None
    levels: dict[str, Counter] = field(default_factory=dict)  # level as written -> message counts
    unlevelled: int = 0  # data lines without S:LogLevel=

    @property
    def records(self) -> list[LogRecord]:
        return [r for part in self.parts for r in part]

    @property
    def timed(self) -> list[LogRecord]:
        return [r for r in self.records if r.time is not None]


@dataclass
class Facts:
    """What the report collected, for the verdicts: the diagnose document, the poll's interpretation (None when
    the poll failed), the log files read, and every report line as shown (scrubbed), for the evidence."""

    shown: dict[str, str]
    doc: dict | None
    interpretation: Any = None
    files: list[ReadLog] = field(default_factory=list)

    @cached_property
    def zone(self) -> tuple[str | None, str]:
        """`_zone`, worked out once: several verdicts and the report's check lines read it."""
        return _zone(self)

    @cached_property
    def times(self) -> list[list[datetime]]:
        """Each file's timed records' times (parallel to `ReadLog.timed`) as the report reads them: zoneless ones
        as the server's local time when the closed files say so (`zone`), else as written (UTC)."""
        if self.zone[0] == "local time":
            return _local(self)
        return [[r.time for r in f.timed] for f in self.files]


class CheckTimes(NamedTuple):
    starts: list[datetime]
    spans: list[float]  # seconds from each check's start line to its last line
    problems: list[float]  # seconds from a check's start line to its first Warning/Error line
    clean: int = 0  # checks with lines after the start and no Warning/Error line


def check_times(parts: list[list[LogRecord]]) -> CheckTimes:
    """Per check (a start line and the lines up to the next): its start, span and first problem line. Each part on
    its own: the bytes between a file's head and tail are unread."""
    starts: list[datetime] = []
    spans: list[float] = []
    problems: list[float] = []
    clean = 0
    for records in parts:
        check: tuple[datetime, datetime, datetime | None, int] | None = None  # start, last line, first problem, lines
        for record in [*(r for r in records if r is not None and r.time is not None), None]:
            if record is None or record.is_check_start:
                if check is not None:
                    spans.append((check[1] - check[0]).total_seconds())
                    if check[2] is not None:
                        problems.append((check[2] - check[0]).total_seconds())
                    clean += check[2] is None and check[3] > 1
                if record is not None:
                    starts.append(record.time)
                    check = (record.time, record.time, None, 1)
            elif check is not None:
                problem = check[2] or (record.time if record.is_problem else None)
                check = (check[0], max(check[1], record.time), problem, check[3] + 1)
    return CheckTimes(starts, spans, problems, clean)


# ---------------------------------------------------------------- helpers


def _ev(facts: Facts, *keys: str) -> str:
    """`key: value` of report lines, as the report shows them."""
    return "; ".join(f"{key}: {facts.shown.get(key, '(not in the report)')}" for key in keys)


def duration(seconds: float) -> str:
    """`-1h05m`: whole minutes, signed (the report's lines and the verdicts' evidence read alike)."""
    minutes = round(abs(seconds) / 60)
    return f"{'-' if seconds < 0 else ''}{minutes // 60}h{minutes % 60:02d}m"


def _offset_minutes(facts: Facts) -> int:
    value = (facts.doc or {}).get("utc_offset_minutes")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _service_state(facts: Facts) -> str | None:
    return getattr(facts.interpretation, "service_state", None)


def _offsets(facts: Facts) -> tuple[tuple[datetime | None, int], ...]:
    """The server's UTC offsets as the poll reads them (interpret.log_offsets), from the diagnose document."""
    minutes, offsets, _ = parse_utc_offsets(facts.doc or {})
    return log_offsets(minutes, offsets)


def utc_offsets_shown(doc: dict) -> str:
    """The report's `os.utc_offsets`: the offsets over the diagnose script's lookback, as the poll reads them."""
    minutes, offsets, notes = parse_utc_offsets(doc)
    if offsets:
        return ", ".join(f"{m:+d} from {since.isoformat()}" for since, m in offsets)
    why = "; ".join(notes) or ("not sent" if doc.get("utc_offsets") is None else "none")
    return f"({why}: every zoneless time is read with os.utc_offset)"


def _local(facts: Facts) -> list[list[datetime]]:
    """Each file's timed records' times (parallel to `ReadLog.timed`), zoneless ones read as the server's local
    time by the poll's own reading (interpret.local_times: the offset in force when the line was written, the
    files oldest first)."""
    return local_times([f.timed for f in reversed(facts.files)], _offsets(facts))[::-1]


def _zone(facts: Facts) -> tuple[str | None, str]:
    """Whether the lines' times are "UTC" or "local time" (None: not told), and why. Zoned times (ISO with Z or an
    offset) are UTC; zoneless ones (culture form) are told by the closed files: every file read but the newest,
    whose write time is its newest line's (closing sets it). UTC when that fits, else the server's local time
    (each line with the offset in force when it was written, `_local`) when that fits."""
    timed = [r for f in facts.files for r in f.timed]
    if not timed:
        return None, "no log line time read"
    if all(r.zoned for r in timed):
        return "UTC", "every time read carries its zone"
    closed = [(index, f) for index, f in enumerate(facts.files)
              if index and f.last_write is not None and any(not r.zoned for r in f.timed)]
    if not closed:
        return None, "no closed file (one but the newest) with zoneless times was read"

    def lags(reading: list[list[datetime]]) -> list[float]:
        return [(f.last_write - max(t for r, t in zip(f.timed, reading[index]) if not r.zoned)).total_seconds()
                for index, f in closed]

    diffs = lags([[r.time for r in f.timed] for f in facts.files])
    shown = ", ".join(f"{f.key} {duration(d)}" for (_, f), d in zip(closed, diffs))
    offsets = _offsets(facts)
    text = f"last write minus newest line on the closed files: {shown}; os.utc_offset: {_offset_minutes(facts)}"
    if len(offsets) > 1:
        text += f"; {_ev(facts, 'os.utc_offsets')}"
    if all(abs(d) <= SLACK.total_seconds() for d in diffs):
        return "UTC", text
    if any(m for _, m in offsets) and all(abs(d) <= SLACK.total_seconds() for d in lags(_local(facts))):
        return "local time", text
    return None, text


def read_parts(facts: Facts) -> list[tuple[list[LogRecord], ...]]:
    """Each file's parts (`ReadLog.parts`) with their times as the report reads them (`Facts.times`)."""
    result = []
    for file, times in zip(facts.files, facts.times):
        found = iter(times)
        result.append(tuple([r._replace(time=next(found)) if r.time is not None else r for r in part]
                            for part in file.parts))
    return result


def _ace_rights(sddl: str, part: str = "D:") -> list[tuple[str, str, str, str]]:
    """(type, flags, rights, trustee) of each ACE of an SDDL's DACL."""
    dacl = sddl.partition(part)[2].partition("S:")[0]
    aces = []
    for ace in _ACE.findall(dacl):
        fields_ = ace.split(";")
        if len(fields_) >= 6:
            aces.append((fields_[0].upper(), fields_[1].upper(), fields_[2].upper(), fields_[5]))
    return aces


def _has_right(rights: str, names: tuple[str, ...], mask: int) -> bool:
    if rights.startswith("0X"):
        try:
            return bool(int(rights, 16) & mask)
        except ValueError:
            return False
    return any(rights[i : i + 2] in names for i in range(0, len(rights), 2))


def _text(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= TEXT_CHARS else text[: TEXT_CHARS - 3] + "..."


# ---------------------------------------------------------------- the log


def log_folder(f: Facts) -> Verdict:
    folder = (f.doc or {}).get("log_folder") or {}
    key = (f.doc or {}).get("service_key") or {}
    if folder.get("error"):
        return Verdict(NOT_SHOWN, _ev(f, "log.folder"))
    if folder.get("exists"):
        return Verdict(CONFIRMS, _ev(f, "log.folder"))
    if isinstance(key, dict) and key and not key.get("error"):
        return Verdict(CONTRADICTS, _ev(f, "log.folder", "rights.service_key"))  # installed, no folder
    return Verdict(NOT_SHOWN, _ev(f, "log.folder", "rights.service_key"))


def log_every_check(f: Facts) -> Verdict:
    starts = sorted(s for parts in read_parts(f) for s in check_times(list(parts)).starts)
    gaps = [(b - a).total_seconds() for a, b in zip(starts, starts[1:])]
    if not gaps:
        return Verdict(NOT_SHOWN, f"{len(starts)} check start lines in the files read (log.read.N.check_starts)")
    median = statistics.median(gaps)
    text = (f"{len(starts)} check start lines in the files read, median {duration(median)} between starts "
            f"(log.read.N.check_starts)")
    if median <= (timedelta(hours=1) + SLACK).total_seconds():
        return Verdict(CONFIRMS, text)
    if _service_state(f) == "running" and median > 1.5 * 3600:
        return Verdict(CONTRADICTS, f"{text}; {_ev(f, 'interpretation.service_state')}")
    return Verdict(NOT_SHOWN, f"{text}; the service may not have run throughout")


def log_write_time_moves(f: Facts) -> Verdict:
    if not f.files or not f.files[0].timed:
        return Verdict(NOT_SHOWN, "the newest file's line times were not read (log.read.1)")
    if _service_state(f) not in (None, "running", "unknown"):
        return Verdict(NOT_SHOWN, f"the newest file is closed: {_ev(f, 'interpretation.service_state')}")
    newest = f.files[0]
    zone, why = f.zone
    if zone is None and not all(r.zoned for r in newest.timed) and any(m for _, m in _offsets(f)):
        return Verdict(NOT_SHOWN, f"the zone of the times is not told ({why})")
    times = f.times[0]
    first, last = min(times), max(times)
    if last - first < 2 * SLACK:
        return Verdict(NOT_SHOWN, f"{newest.key}'s lines span {duration((last - first).total_seconds())}: a write "
                                  "time stuck at the first line would not show")
    writes = [w for w in (newest.last_write, newest.file_last_write) if w is not None]
    if not writes:
        return Verdict(NOT_SHOWN, f"no write time: {_ev(f, 'log.files.1')}")
    lag = min((w - last).total_seconds() for w in writes)
    text = (f"{newest.key}: lines from {first.isoformat()} to {last.isoformat()}, write times (directory entry, "
            f"the file) minus the newest line at least {duration(lag)}")
    return Verdict(CONFIRMS if lag >= -SLACK.total_seconds() else CONTRADICTS, text)


def log_time_column(f: Facts) -> Verdict:
    files = [file for file in f.files if file.data_lines]
    if not files:
        return Verdict(NOT_SHOWN, "no log line read (log.read.N)")
    short = [file for file in files if file.read_times < file.data_lines]
    keys = [k for file in (short or files) for k in (f"{file.key}.time_column", f"{file.key}.exporter_reads_time")]
    return Verdict(CONTRADICTS if short else CONFIRMS, _ev(f, *keys[:4]))


def log_time_zone(f: Facts) -> Verdict:
    zone, why = f.zone
    if not any(file.timed for file in f.files):
        return Verdict(NOT_SHOWN, why)
    if all(r.zoned for file in f.files for r in file.timed):
        return Verdict(CONFIRMS, f"UTC: {why}")
    if "no closed file" in why:
        return Verdict(NOT_SHOWN, why)
    if zone is None:
        return Verdict(CONTRADICTS, f"neither UTC nor local time: {why}")
    return Verdict(CONFIRMS, f"{zone}: {why}")


def log_newest_files_newest_lines(f: Facts) -> Verdict:
    files = [(file, times) for file, times in zip(f.files, f.times) if times]
    if len(files) < 2:
        return Verdict(NOT_SHOWN, f"{len(files)} file(s) read with line times (log.read.N)")
    newest = [max(times) for _, times in files]
    files = [file for file, _ in files]
    text = ", ".join(f"{file.key} {t.isoformat()}" for file, t in zip(files, newest))
    later = [b for a, b in zip(newest, newest[1:]) if b > a + SLACK]
    return Verdict(CONTRADICTS if later else CONFIRMS, f"newest line per file, newest write time first: {text}")


def log_encoding(f: Facts) -> Verdict:
    read = [file for file in f.files if file.encoding]
    if not read:
        return Verdict(NOT_SHOWN, "no log bytes read (log.read.N.encoding)")
    odd = [file for file in read if not file.encoding.startswith(("utf-8", "utf-16-le (BOM"))]
    return Verdict(CONTRADICTS if odd else CONFIRMS, _ev(f, *(f"{file.key}.encoding" for file in (odd or read)[:3])))


def log_rotation(f: Facts) -> Verdict:
    shown = f.shown.get("log.rotation", "")
    match = re.match(r"median (\d+)h(\d\d)m", shown)
    if not match:
        return Verdict(NOT_SHOWN, _ev(f, "log.rotation"))
    minutes = int(match[1]) * 60 + int(match[2])
    hourly, daily = abs(minutes - 60) <= 10, abs(minutes - 1440) <= 120
    return Verdict(CONFIRMS if hourly or daily else CONTRADICTS, _ev(f, "log.rotation", "log.naming"))


def log_dir_entry_length(f: Facts) -> Verdict:
    if not f.files or f.files[0].length_differs is None:
        return Verdict(NOT_SHOWN, "the newest file's stream was not opened (log.read.1.length)")
    return Verdict(CONTRADICTS if f.files[0].length_differs else CONFIRMS, _ev(f, "log.read.1.length"))


def log_custom_data(f: Facts) -> Verdict:
    files = [file for file in f.files if file.data_lines]
    if not files:
        return Verdict(NOT_SHOWN, "no log line read (log.read.N)")
    levels = sum((Counter({lv: sum(c.values())}) for file in files for lv, c in file.levels.items()), Counter())
    unlevelled = sum(file.unlevelled for file in files)
    other = sorted(set(levels) - set(LEVELS))
    text = (", ".join(f"{level} {count}" for level, count in sorted(levels.items())) or "no S:LogLevel=") + \
        f"; {unlevelled} lines without S:LogLevel= (log.read.N.level.*, log.read.N.levels)"
    return Verdict(CONTRADICTS if other or unlevelled else CONFIRMS, text)


def check_start_text(f: Facts) -> Verdict:
    records = [r for file in f.files for r in file.records if r is not None]
    if not any(r.level for r in records):
        return Verdict(NOT_SHOWN, "no log line with a level read (log.read.N)")
    starts = sum(1 for r in records if r.is_check_start)
    key = next((f"{file.key}.level.{level}.first" for file in f.files for level in file.levels), "log.read.1")
    return Verdict(CONFIRMS if starts else CONTRADICTS,
                   f"{starts} lines 'Fetching mitigations from ...'" + ("" if starts else f"; {_ev(f, key)}"))


def check_settle_5m(f: Facts) -> Verdict:
    problems = [p for parts in read_parts(f) for p in check_times(list(parts)).problems]
    keys = [f"{file.key}.check_problem_after" for file in f.files if f"{file.key}.check_problem_after" in f.shown]
    if not problems:
        return Verdict(NOT_SHOWN, _ev(f, *keys[:1]) if keys else "no check start line read")
    late = sum(1 for p in problems if p > CHECK_SETTLE.total_seconds())
    key = next((k for k in keys if "contradicts" in f.shown[k]), None) if late else \
        next((k for k in keys if "consistent" in f.shown[k]), None)
    return Verdict(CONTRADICTS if late else CONFIRMS, _ev(f, key) if key else f"{late} of {len(problems)} late")


def success_log_text(f: Facts) -> Verdict:
    messages = Counter()
    for file in f.files:
        messages.update(file.levels.get("Information", Counter()))
    seen = [m for m in messages if SUCCESS_TEXT in m.lower()]
    if seen:
        return Verdict(CONFIRMS, f"{messages[seen[0]]} x {_text(seen[0])} (log.read.N.level.Information.message.N)")
    clean = sum(check_times(list(file.parts)).clean for file in f.files)
    if not clean:
        return Verdict(NOT_SHOWN, "no check read with lines after its start and no Warning/Error line")
    top = "; ".join(f"{c} x {_text(m)}" for m, c in messages.most_common(2))
    return Verdict(CONTRADICTS, f"{clean} checks without a Warning/Error line, no success line; Information: {top}")


def success_event(f: Facts) -> Verdict:
    ids = [i for i in SUCCESS_EVENTS if f"events.id.{i}.count" in f.shown]
    if ids:
        return Verdict(CONFIRMS, _ev(f, *(f"events.id.{i}.interval" for i in ids)))
    return Verdict(NOT_SHOWN, f"{_ev(f, 'events.ids')} (Learn ties 1005/1006 to actions such as applying a mitigation)")


# ---------------------------------------------------------------- texts the classifier reads


def _events(f: Facts, event_id: int) -> list[dict]:
    return [e for e in as_list((f.doc or {}).get("events"))[:MAX_EVENTS] if isinstance(e, dict) and e.get("id") == event_id]


def _event_text(event: dict) -> str:
    data = event.get("data")
    strings = [str(s) for s in (data if isinstance(data, list) else [data] if data is not None else [])]
    return "\n".join([str(event.get("message") or ""), *strings]).strip()


def event_1008_recognised(f: Facts) -> Verdict:
    events = _events(f, ERROR_EVENT)
    if not events:
        return Verdict(NOT_SHOWN, _ev(f, "events.ids"))
    unread = Counter(_text(str(e.get("message") or _event_text(e))) or "(no text, no insertion strings)" for e in events
                     if fetch_error_reason(_event_text(e)) is None)
    if not unread:
        return Verdict(CONFIRMS, f"{len(events)} of {len(events)} 1008s read as a failed fetch (events.id.1008.text.N)")
    listed = " | ".join(f"{count} x {text}" for text, count in unread.most_common(TEXTS_LISTED))
    return Verdict(CONTRADICTS, f"{sum(unread.values())} of {len(events)} 1008s not read as a failed fetch "
                                f"(counted in exchange_eems_other_errors): {listed}")


def event_1008_data_names_fetch(f: Facts) -> Verdict:
    textless = [e for e in _events(f, ERROR_EVENT) if not e.get("message")]
    if not textless:
        return Verdict(NOT_SHOWN, _ev(f, "events.id.1008.without_text") if "events.id.1008.count" in f.shown
                       else _ev(f, "events.ids"))
    named = sum(1 for e in textless if fetch_error_reason(_event_text(e)) is not None)
    return Verdict(CONFIRMS if named else CONTRADICTS,
                   f"{named} of {len(textless)} 1008s without text name the fetch in their insertion strings "
                   f"(events.id.1008.data.N)")


def events_format(f: Facts) -> Verdict:
    events = [e for e in as_list((f.doc or {}).get("events"))[:MAX_EVENTS] if isinstance(e, dict)]
    errors = [e for e in as_list((f.doc or {}).get("event_errors"))[:ERRORS_SENT] if isinstance(e, dict)]
    failed = [e for e in errors if "EventLogException" in str(e.get("type"))]
    textless = sum(1 for e in events if not e.get("message"))
    if not events:
        return Verdict(NOT_SHOWN, _ev(f, "events.ids"))
    text = f"{textless} of {len(events)} events without text, {len(failed)} format errors (events.id.ID.without_text" \
           f", events.read_error.N)"
    return Verdict(CONTRADICTS if textless or failed else CONFIRMS, text)


def log_problem_lines_recognised(f: Facts) -> Verdict:
    lines = Counter()
    for file in f.files:
        for level, messages in file.levels.items():
            if level.lower() in ("warning", "error"):
                lines.update({(level, m): c for m, c in messages.items()})
    if not lines:
        return Verdict(NOT_SHOWN, "no Warning/Error line read (log.read.N.level.*)")
    apart = Counter({k: c for k, c in lines.items() if not is_fetch_problem(k[1], k[0])})
    if not apart:
        reasons = sorted({classify_fetch_error(m) for _, m in lines})
        return Verdict(CONFIRMS, f"{sum(lines.values())} Warning/Error lines, every one a failed fetch "
                                 f"({', '.join(reasons)})")
    listed = " | ".join(f"{c} x {lv}: {_text(m)}" for (lv, m), c in apart.most_common(TEXTS_LISTED))
    return Verdict(CONTRADICTS, f"{sum(apart.values())} of {sum(lines.values())} Warning/Error lines not read as a "
                                f"failed fetch (exchange_eems_log_other_errors): {listed}")


def information_not_problem(f: Facts) -> Verdict:
    messages = Counter()
    for file in f.files:
        messages.update(file.levels.get("Information", Counter()))
    if not messages:
        return Verdict(NOT_SHOWN, "no Information line read (log.read.N.level.Information.*)")
    alarming = [m for m in messages if _FAILURE_WORDS.search(m)]
    if not alarming:
        return Verdict(CONFIRMS, f"{len(messages)} Information texts, none with a failure word "
                                 "(fail, error, exception, denied, unable, could not, cannot, invalid, untrusted)")
    listed = " | ".join(f"{messages[m]} x {_text(m)}" for m in alarming[:TEXTS_LISTED])
    return Verdict(CONTRADICTS, f"{len(alarming)} Information texts read like a failure (read them): {listed}")


# ---------------------------------------------------------------- Windows, service and rights


def service_key_means_installed(f: Facts) -> Verdict:
    query, key = f.shown.get("rights.service_query", ""), f.shown.get("rights.service_key", "")
    evidence = _ev(f, "rights.service_query", "rights.service_key", "account.is_admin")
    sent = [(f.doc or {}).get(part) for part in ("service", "service_key")]
    if not all(isinstance(part, dict) and part for part in sent) or query.startswith("failed") \
            or key.startswith("failed"):
        return Verdict(NOT_SHOWN, evidence)
    found, has_key = query.startswith("ok"), key.startswith("ok")
    if found == has_key or query.startswith("not installed"):
        return Verdict(CONFIRMS, evidence)
    if not found and (f.doc or {}).get("is_admin") is True:  # an administrator may query every service
        return Verdict(CONTRADICTS, evidence)
    return Verdict(CONTRADICTS if found else NOT_SHOWN, evidence)


def service_account_localsystem(f: Facts) -> Verdict:
    key = (f.doc or {}).get("service_key")
    if not isinstance(key, dict) or key.get("error") or not key.get("account"):
        return Verdict(NOT_SHOWN, _ev(f, "rights.service_key"))
    return Verdict(CONFIRMS if str(key["account"]).lower() in ("localsystem", "nt authority\\system")
                   else CONTRADICTS, _ev(f, "rights.service_key"))


def event_log_denied_raises(f: Facts) -> Verdict:
    if f.shown.get("rights.event_log", "").startswith("DENIED"):
        return Verdict(CONFIRMS, _ev(f, "rights.event_log"))
    return Verdict(NOT_SHOWN, f"{_ev(f, 'rights.event_log')} (whether the account is in Event Log Readers is not "
                              "collected: a silent denial would look like no events)")


def error_ids_invariant(f: Facts) -> Verdict:
    culture = str((f.doc or {}).get("culture") or "")
    if not culture or culture.lower().startswith("en"):
        return Verdict(NOT_SHOWN, f"{_ev(f, 'os.culture')} (a translated id would not show)")
    doc = f.doc or {}
    records = [*as_list(doc.get("errors"))[:ERRORS_SENT], *as_list(doc.get("event_errors"))[:ERRORS_SENT]]
    records += [part["error"] for part in (doc.get("service"), doc.get("service_key"), doc.get("log_folder"))
                if isinstance(part, dict) and isinstance(part.get("error"), dict)]
    ids = sorted({str(r.get("id")).split(",")[0] for r in records if isinstance(r, dict)
                  and str(r.get("id")).startswith(DECIDING_IDS)})
    if not ids:
        return Verdict(NOT_SHOWN, f"{_ev(f, 'os.culture')}; no error record of an id the exporter decides on")
    return Verdict(CONFIRMS, f"{_ev(f, 'os.culture')}; untranslated ids: {', '.join(ids)}")


def service_default_sddl(f: Facts) -> Verdict:
    """docs/windows-setup.md F5: the default lets SYSTEM, Administrators, interactive and service logons query
    the service (SERVICE_QUERY_STATUS, `LC`), not a network logon. ACEs for a domain's SIDs are step 1.2's, set
    apart."""
    sddl = (f.doc or {}).get("service_sddl")
    if not isinstance(sddl, dict) or sddl.get("error") or sddl.get("exit") != 0 or "D:" not in str(sddl.get("output")):
        return Verdict(NOT_SHOWN, _ev(f, "rights.service_sddl"))
    aces = _ace_rights(str(sddl["output"]))
    added = [a for a in aces if _DOMAIN_SID.match(a[3])]
    query = {a[3].upper() for a in aces if a[0] == "A" and a not in added
             and _has_right(a[2], ("LC", "GA", "GR"), 0x4)}
    missing = sorted({"SY", "BA", "IU", "SU"} - query)
    network = sorted(query & {"NU", "AU", "WD", "BU", "DU"})
    text = (f"query (LC) allowed to {', '.join(sorted(query)) or 'none'}"
            + (f"; {len(added)} ACEs for a domain's SIDs set apart (step 1.2)" if added else "") + " (rights.service_sddl)")
    return Verdict(CONTRADICTS if missing or network else CONFIRMS, text)


def log_folder_acl_needs_grant(f: Facts) -> Verdict:
    """docs/windows-setup.md F9 and step 1.3: the folder's default ACL gives a non-administrator no read access.
    Read access (`FR`, `FA`, `GR`, `GA`, or FILE_READ_DATA in a mask) to a group a network logon of any domain user
    has (Users, Authenticated Users, Everyone, Network) contradicts it; explicit ACEs for a domain's SIDs are step
    1.3's, set apart."""
    acl = ((f.doc or {}).get("log_folder") or {}).get("sddl")
    if not isinstance(acl, str) or "D:" not in acl:
        return Verdict(NOT_SHOWN, _ev(f, "rights.log_folder_sddl"))
    aces = _ace_rights(acl)
    added = [a for a in aces if _DOMAIN_SID.match(a[3]) and "ID" not in a[1]]
    readers = sorted({a[3].upper() for a in aces if a[0] == "A" and a not in added
                      and _has_right(a[2], ("FR", "FA", "GR", "GA"), 0x1)})
    everyone = sorted(set(readers) & {"BU", "AU", "WD", "NU", "DU"})
    text = (f"read allowed to {', '.join(readers) or 'none'}"
            + (f"; {len(added)} explicit ACEs for a domain's SIDs set apart (step 1.3)" if added else "")
            + f" (rights.log_folder_sddl); {_ev(f, 'rights.log_folder', 'account.is_admin')}")
    return Verdict(CONTRADICTS if everyone else CONFIRMS, text)


def winhttp_layout(f: Facts) -> Verdict:
    """The layout the collection script reads: DWORD size, counter, flags (2 = proxy), proxy length, proxy, bypass
    length, bypass. Lengths that fit the value exactly (zero padding after them allowed) with printable strings
    confirm it; a length beyond the value, or a proxy flag with an empty proxy, contradicts it."""
    value = (f.doc or {}).get("winhttp_settings")
    evidence = _ev(f, "os.winhttp_settings_layout")
    if not isinstance(value, str):
        return Verdict(NOT_SHOWN, _ev(f, "os.winhttp_proxy") if value is not None else
                       f"not read ({_ev(f, 'os.language_mode')})")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return Verdict(NOT_SHOWN, evidence)
    if len(data) < 16:
        return Verdict(CONTRADICTS, evidence)
    proxy_length = int.from_bytes(data[12:16], "little")
    rest = data[16 + proxy_length :]
    if 16 + proxy_length + 4 > len(data):
        return Verdict(CONTRADICTS, f"{evidence}; the proxy length runs past the value")
    bypass_length = int.from_bytes(rest[:4], "little")
    strings = data[16 : 16 + proxy_length] + rest[4 : 4 + bypass_length]
    padding = rest[4 + bypass_length :]
    if 4 + bypass_length > len(rest) or any(padding) or not all(32 <= b < 127 for b in strings):
        return Verdict(CONTRADICTS, f"{evidence}; the bypass length or the strings do not fit")
    if bool(data[8] & 2) != bool(proxy_length):
        return Verdict(CONTRADICTS, f"{evidence}; the proxy flag and the proxy length disagree")
    return Verdict(CONFIRMS, f"{evidence}; the lengths fit the value (compare `netsh winhttp show proxy`)")


def endpoint_check_as_eems(f: Facts) -> Verdict:
    state = f.interpretation
    endpoints = [e for e in getattr(state, "endpoints", ()) if e.endpoint == "mitigations"]
    if not endpoints:
        return Verdict(NOT_SHOWN, "the endpoint check is off (poll.check_endpoint) or did not run "
                                  "(interpretation.endpoints)")
    endpoint, eems = endpoints[0], state.eems
    if eems.last_check is None:
        return Verdict(NOT_SHOWN, "no EEMS check seen (interpretation.eems.last_check)")
    network_failure = eems.failing and eems.last_error_reason == "tls_validation"
    agree = endpoint.reachable != network_failure
    return Verdict(CONFIRMS if agree else CONTRADICTS,
                   f"interpretation.endpoints mitigations reachable: {'yes' if endpoint.reachable else 'no'} "
                   f"({endpoint.reason}); interpretation.eems.failing: {'yes' if eems.failing else 'no'} "
                   f"({eems.last_error_reason or 'no error'})")


def component_state_format(f: Facts) -> Verdict:
    """The registry's ServerWideOffline values, read by the guessed format, against Exchange's own LocalStates
    (Get-ServerComponentState): the same state per requester confirms the reading, another refutes it."""
    local = {key.rsplit(".", 1)[1].lower(): value.split(" at ", 1)[0].strip().lower()
             for key, value in f.shown.items() if key.startswith("maintenance.exchange.local.")}
    read = {key.rsplit(".", 1)[1].lower(): value.rsplit("(read as ", 1)[-1].rstrip(")")
            for key, value in f.shown.items() if key.startswith("maintenance.registry.")}
    if "maintenance.exchange.state" not in f.shown:
        return Verdict(NOT_COLLECTED, _ev(f, "maintenance.exchange"))
    both = sorted(set(local) & set(read))
    if not both:
        return Verdict(NOT_SHOWN, "no requester both in the registry and in LocalStates; "
                                  + _ev(f, "maintenance.registry"))
    evidence = "; ".join(f"{r}: registry read as {read[r]}, LocalStates {local[r]}" for r in both)
    return Verdict(CONTRADICTS if any(read[r] != local[r] for r in both) else CONFIRMS, evidence)


def _not_collected(why: str) -> Callable[[Facts], Verdict]:
    return lambda facts: Verdict(NOT_COLLECTED, why)


# id -> (what is assumed, the verdict). The ids are stable: docs/alerts.md and docs/field-report.md name them.
ASSUMPTIONS: dict[str, tuple[str, Callable[[Facts], Verdict]]] = {
    "log_folder": ("the log folder is $env:ExchangeInstallPath\\Logging\\MitigationService", log_folder),
    "log_every_check": ("EEMS writes its log at every hourly check", log_every_check),
    "log_write_time_moves": ("the open newest file's write time moves with its lines", log_write_time_moves),
    "log_time_column": ("every log line starts with a time the exporter reads", log_time_column),
    "log_time_zone": ("log times are UTC, or culture times the server's local time", log_time_zone),
    "log_newest_files_newest_lines": ("the newest files by write time hold the newest lines",
                                      log_newest_files_newest_lines),
    "log_rotation": ("log files roll hourly or daily", log_rotation),
    "log_encoding": ("the log is UTF-8, or UTF-16-LE with a BOM", log_encoding),
    "log_dir_entry_length": ("the directory entry's size is the open file's", log_dir_entry_length),
    "log_custom_data": ("lines carry S:LogLevel= (Information, Warning, Error) and S:Message=", log_custom_data),
    "check_start_text": ("'Fetching mitigations from ...' starts every check", check_start_text),
    "check_settle_5m": ("a failing check's first problem line comes within 5 minutes of its start", check_settle_5m),
    "success_log_text": ("a successful check logs 'Mitigations fetched successfully ...'", success_log_text),
    "success_event": ("event 1005/1006 marks a success", success_event),
    "event_1008_recognised": ("every 1008 is read as a failed fetch by exporter/eems_log.py", event_1008_recognised),
    "event_1008_data_names_fetch": ("a 1008 without text names the fetch in its insertion strings",
                                    event_1008_data_names_fetch),
    "events_format": ("Get-WinEvent formats every EEMS event", events_format),
    "log_problem_lines_recognised": ("every Warning/Error log line is read as a failed fetch",
                                     log_problem_lines_recognised),
    "information_not_problem": ("Information lines never mean a failed check", information_not_problem),
    "service_key_means_installed": ("the service's registry key exists exactly when it is installed",
                                    service_key_means_installed),
    "service_account_localsystem": ("EEMS runs as LocalSystem", service_account_localsystem),
    "event_log_denied_raises": ("a denied Application log is reported as denied (LogInfoUnavailable around an "
                                "UnauthorizedAccessException)", event_log_denied_raises),
    "error_ids_invariant": ("FullyQualifiedErrorIds are not translated", error_ids_invariant),
    "service_default_sddl": ("the service's default descriptor lets SY, BA, IU, SU query it, not a network logon "
                             "(windows-setup F5)", service_default_sddl),
    "log_folder_acl_needs_grant": ("the log folder's default ACL gives a non-administrator no read (windows-setup "
                                   "F9, step 1.3)", log_folder_acl_needs_grant),
    "winhttp_layout": ("WinHttpSettings: flags at byte 8, length-prefixed proxy and bypass", winhttp_layout),
    "component_state_format": ("a ServerWideOffline registry value is <field>:<state>:<ticks> (component_state.py)",
                               component_state_format),
    "endpoint_check_as_eems": ("the endpoint check sees the network as EEMS does", endpoint_check_as_eems),
    "winrs_gxgr_enough": ("GXGR on RootSDDL is enough for WinRS (windows-setup F3)",
                          _not_collected("the WinRM RootSDDL and the account's entry in it are not read")),
    "restricted_groups_localized": ("Restricted Groups work with localized group names (windows-setup F11)",
                                    _not_collected("Group Policy is not read")),
    "listener_keeps_thumbprint": ("an HTTPS listener keeps its thumbprint after renewal (windows-setup F16)",
                                  _not_collected("the listeners and certificates are not read")),
    "gpo_startup_script": ("a GPO startup script runs as the computer at start-up (windows-setup F20)",
                           _not_collected("Group Policy is not read")),
    "organization_double_hop": ("Active Directory errors of Exchange cmdlets mean the double hop (eems_log)",
                                _not_collected("the organization collector does not run in diagnose")),
}


def verdicts(facts: Facts) -> list[tuple[str, Verdict]]:
    """(id, verdict) of every assumption, in the table's order. A verdict function that fails on odd facts is a
    NOT SHOWN with the error's type, never a report without its section."""
    out = []
    for key, (_, judge) in ASSUMPTIONS.items():
        try:
            out.append((key, judge(facts)))
        except Exception as error:  # noqa: BLE001 - a hostile server's document must not stop the report
            out.append((key, Verdict(NOT_SHOWN, f"not judged: {type(error).__name__}")))
    return out
