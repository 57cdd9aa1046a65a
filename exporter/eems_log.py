"""Reading what EEMS logs: its log-file lines (`parse_log_line`) and the texts of its fetch errors, in the log
and in 1008 events (`classify_fetch_error`, `fetch_error_reason`).

Microsoft does not document these texts; when Exchange changes a message, this module (and its tests)
is the only thing to update. It also holds the one unconfirmed text the exporter reads that is not EEMS's,
the organization cmdlets' Active Directory errors (`classify_organization_error`), so that every guessed
text has one home. Sources are the keys of docs/reference/eems-facts.md.

Confirmed (quoted from a source):
- 1008 "untrusted endpoint": log line `FetchMitigation,S:LogLevel=Warning;S:Message=Connection attempted
  against untrusted endpoint` [BLOG-2025-01]; the matching 1008 event text is only the generic
  "Exception encountered while fetching mitigations." [BLOG-2025-01].
- "leaf certificate is from unknown issuer or has EKU mismatch" (June 2026 cutoff) [EIGHTWONE-2026-06].
- "Could not establish trust relationship for the SSL/TLS secure channel", "The remote certificate is
  invalid according to the validation procedure" [QA-1052271] and the log line "TLS certificate or its
  chain validation failed" [GRANIKOS] (proxy, SSL inspection, firewall).
- "signing cert is invalid or not from microsoft" [GRANIKOS].
- Log custom data `S:LogLevel=...;S:Message=...;S:Source=...`, including the variant where a whole pair
  is single-quoted with '' for a quote (`'S:Message=... xml''s ...'`) [GRANIKOS], and the check-start
  message "Fetching mitigations from https://officeclient.microsoft.com/getexchangemitigations" [GRANIKOS].

Assumptions (UNCONFIRMED; docs/alerts.md "What the exporter assumes" lists what each one can break):
- The log line shape `<time>,<operation>,<custom data>` (docs/design.md section 1), where the time is ISO
  8601 or, as some other Exchange 2016+ logs write it, the server culture's `DateTime.ToString()` form
  ("6/30/2021 10:03:57 AM"), taken as UTC; lines without a readable leading time are ignored for
  timing, so an unreadable time format yields "no confirmed success", never a wrong one. A bare CSV
  header line before `#Software` (other Exchange logs) is such a line. A CSV-quoted custom-data field
  ("...", "" for a quote) is accepted too.
- Learn: event 1008 is logged "for any encountered errors". Only a 1008 whose text mentions fetching
  mitigations ("Exception encountered while fetching mitigations", every fetch failure quoted in a
  source) counts as a failed check; any other 1008 is counted apart and never marks a check failed.
- Levels other than Warning and Error (e.g. Information) are not problems. A Warning/Error line fails its
  check only when it names a known fetch failure, or is an Error about fetching mitigations (`is_fetch_problem`);
  others are counted apart.
- The organization collector meets the Kerberos double hop when Exchange cmdlets cannot reach Active
  Directory: messages mentioning Active Directory, a domain controller, LDAP, Kerberos, delegation or the
  ADTopology service, and LDAP's "A local error occurred" / "The server is not operational", are
  classified `double_hop`; anything else is `script_failed`.

Times in the culture's form: the script reports the server culture's ShortDatePattern, LongTimePattern and
AM/PM designators, so any culture is read from its own definition (`leading_time_pattern`, `to_datetime`)
instead of a table of cultures we would have to guess. The zone of such a time is not written (interpret.py
decides between UTC and the server's offset).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from functools import lru_cache
from typing import Iterable, NamedTuple

from .model import RawCulture
from .parse import YEARS, parse_ps_date

FETCH_ERROR_REASONS = ("untrusted_endpoint", "unknown_issuer", "tls_validation", "signature_invalid", "other")

_FETCH_ERROR_TEXTS: dict[str, tuple[str, ...]] = {
    "untrusted_endpoint": ("untrusted endpoint",),
    "unknown_issuer": ("unknown issuer or has eku mismatch",),
    "tls_validation": (
        "tls certificate or its chain validation failed",
        "could not establish trust relationship",
        "remote certificate is invalid",
    ),
    "signature_invalid": ("signing cert is invalid or not from microsoft",),
}

CHECK_START = "fetching mitigations from"
FETCH_ERROR_TEXT = "fetching mitigations"  # in every quoted 1008 about a failed fetch [BLOG-2025-01, QA-1052271, EIGHTWONE]
PROBLEM_LEVELS = ("warning", "error")

_DOUBLE_HOP = re.compile(
    r"active directory|domain controller|\bldap\b|kerberos|delegat|adtopology|topology service"
    r"|a local error occurred|the server is not operational",
    re.IGNORECASE,
)
_LEADING_TIME = re.compile(r"\s*([0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,7})?(Z|[+-][0-9]{2}:?[0-9]{2})?)\s*,")
_CUSTOM_START = re.compile(r"(?:^|,)\s*(?=[\"']?S:)")
_PAIR = re.compile(r"S:([A-Za-z]+)=(.*)", re.DOTALL)
_OPERATION = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
# The shape EEMS writes nearly every line in: ISO time in UTC, operation, then level, message and an optional
# source with nothing quoted (a message neither starts with a quote nor holds ';', nor is padded). A line of
# exactly this shape reads the same through `_parse_any_line`, at a fraction of the cost; anything else
# goes there (tests/unit/test_eems_log.py proves the two agree on lines of many shapes), a year outside
# parse.YEARS (1000 to 8999) too.
_COMMON_LINE = re.compile(
    r"([1-8][0-9]{3}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,7})?Z)"
    r",([A-Za-z][A-Za-z0-9_.-]*)"
    r",S:LogLevel=([A-Za-z]+)"
    r";S:Message=((?:[^\s;'\"](?:[^;]*[^\s;])?)?)"
    r"(?:;S:Source=[^;]*)?"
)


# (phrase, reason) in the order of FETCH_ERROR_REASONS: the first reason with a phrase in a text wins.
_FETCH_ERROR_PHRASES = tuple((phrase, reason) for reason in FETCH_ERROR_REASONS[:-1]
                             for phrase in _FETCH_ERROR_TEXTS[reason])


def classify_fetch_error(text: str) -> str:
    """The reason label for an EEMS fetch failure text; `other` when no known phrase is in it."""
    return _reason(text.lower())


def fetch_error_reason(message: str) -> str | None:
    """The reason of a 1008 about fetching mitigations (a failed check); None for another EEMS error."""
    folded = message.lower()
    return _reason(folded) if FETCH_ERROR_TEXT in folded else None


def is_fetch_problem(message: str, level: str | None) -> bool:
    """Whether a Warning/Error log line fails its check: it names a known fetch failure (the Warning "Connection
    attempted against untrusted endpoint" or "TLS certificate or its chain validation failed"), or it is an Error
    about fetching mitigations ("Exception encountered while fetching mitigations"), as every published failed check
    shows [BLOG-2025-01, GRANIKOS]. A Warning that only mentions fetching (no such text is published) is not known to
    end its check in failure; it and other problem lines (a blocked mitigation, the diagnostic-data upload) fail no
    check."""
    folded = message.lower()
    if _reason(folded) != "other":
        return True
    return FETCH_ERROR_TEXT in folded and (level or "").lower() == "error"


def _reason(folded: str) -> str:
    for phrase, reason in _FETCH_ERROR_PHRASES:
        if phrase in folded:
            return reason
    return "other"


def classify_organization_error(message: str) -> str:
    """`double_hop` when Exchange cmdlets could not reach Active Directory, else `script_failed`."""
    return "double_hop" if _DOUBLE_HOP.search(message) else "script_failed"


class LogRecord(NamedTuple):
    """A named tuple rather than a dataclass: one is made per log line on every poll, at half the cost."""

    time: datetime | None  # UTC; None when the line has no leading timestamp
    operation: str | None
    level: str | None  # as written, e.g. "Warning"
    message: str  # S:Message, or the line's text when it has no custom data
    zoned: bool = True  # False: the time was written without a zone (culture form), read as UTC; it may be local

    @property
    def is_check_start(self) -> bool:
        """Lowering only the first len(CHECK_START) characters decides the same and costs less on long messages:
        the one character that lowers to two ('İ' to 'i' and a combining dot) cannot be part of a check start."""
        return self.message[: len(CHECK_START)].lower().startswith(CHECK_START)

    @property
    def is_problem(self) -> bool:
        return (self.level or "").lower() in PROBLEM_LEVELS


def _read_quoted(text: str, pos: int) -> tuple[str, int]:
    """A quoted run starting at text[pos] (the quote), doubled quotes escaped; returns (content, end)."""
    quote, out, i = text[pos], [], pos + 1
    while i < len(text):
        if text[i] == quote:
            if text[i + 1 : i + 2] == quote:
                out.append(quote)
                i += 2
                continue
            return "".join(out), i + 1
        out.append(text[i])
        i += 1
    return "".join(out), i  # unterminated: take the rest


def _custom_data(text: str) -> dict[str, str]:
    """`S:Key=Value` pairs separated by ';'; a pair may be quoted whole, a ';' inside a value is kept."""
    text = text.strip()
    if text.startswith('"'):
        text = _read_quoted(text, 0)[0]
    pairs: dict[str, list[str]] = {}  # each key's value and the items it runs on into, joined once at the end
    last: str | None = None
    pos = 0
    while pos < len(text):
        while pos < len(text) and text[pos] in " \t;":
            pos += 1
        if pos >= len(text):
            break
        if text[pos] in "'\"":
            item, pos = _read_quoted(text, pos)
            semicolon = text.find(";", pos)
            pos = len(text) if semicolon < 0 else semicolon
        else:
            semicolon = text.find(";", pos)
            end = len(text) if semicolon < 0 else semicolon
            item, pos = text[pos:end], end
        match = _PAIR.match(item.strip())
        if match:
            last = match.group(1).lower()
            value = match.group(2).strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = _read_quoted(value, 0)[0]
            pairs[last] = [value]
        elif last is not None:  # appended, not `+=` on the string: that copied the value at every item, quadratic
            pairs[last].append(item)
    return {key: ";".join(parts) for key, parts in pairs.items()}


def parse_log_line(line: str, culture: RawCulture | None = None) -> LogRecord | None:
    """One EEMS log line; None for blank lines and '#' headers. Never raises.

    `culture` (the server's) lets a culture-formatted leading time be read when the time is not ISO.
    """
    return parse_log_lines((line,), culture)[0]


def parse_log_lines(lines: Iterable[str], culture: RawCulture | None = None) -> list[LogRecord | None]:
    """`parse_log_line` of each line, in one loop: a poll reads hundreds of lines, and a call per line costs
    a fifth of the fast path's time."""
    records: list[LogRecord | None] = []
    fullmatch, from_iso, new = _COMMON_LINE.fullmatch, datetime.fromisoformat, tuple.__new__
    for line in lines:
        if line.startswith("#"):  # a header (most lines of a small file): no need to try the shapes
            records.append(None)
            continue
        common = fullmatch(line)
        if common is None:
            records.append(_parse_any_line(line, culture))
            continue
        time, operation, level, message = common.groups()
        try:  # tuple.__new__: LogRecord's own __new__ is Python code, twice the cost
            records.append(new(LogRecord, (from_iso(time), operation, level, message, True)))  # "Z": timezone.utc
        except ValueError:  # an impossible date, as parse_ps_date reads it
            records.append(LogRecord(None, operation, level, message))
    return records


def _parse_any_line(line: str, culture: RawCulture | None) -> LogRecord | None:
    """`parse_log_line` for a line of any shape."""
    text = line.strip().lstrip("\ufeff")
    if not text or text.startswith("#"):
        return None
    time, zoned = None, True
    match = _LEADING_TIME.match(text) if text[0].isdigit() or text[0].isspace() else None  # what it starts with
    if match:
        time = parse_ps_date(match.group(1))
        zoned = match.group(2) is not None
        text = text[match.end() :]
    elif culture is not None:
        pattern = leading_time_pattern(culture.date_pattern, culture.time_pattern, culture.am, culture.pm)
        local = pattern.match(text) if pattern else None
        if local:
            time, zoned = to_datetime(local, culture.am, culture.pm), False
            text = text[local.end() :]
    start = _CUSTOM_START.search(text) if "S:" in text else None  # the search is slow to fail: one at every comma
    if start is None:
        head, _, rest = text.partition(",")
        operation = head.strip() if rest and _OPERATION.fullmatch(head.strip()) else None
        return LogRecord(time, operation, None, rest.strip() if operation else text, zoned)
    fields = [f.strip() for f in text[: start.start()].split(",")]
    operation = fields[-1] if fields and _OPERATION.fullmatch(fields[-1]) else None
    pairs = _custom_data(text[start.end() :])
    return LogRecord(time, operation, pairs.get("loglevel"), pairs.get("message", ""), zoned)


# ---------------------------------------------------------------- times in the server culture's form

_TOKENS = {
    "yyyy": r"(?P<year>[0-9]{4})", "yy": r"(?P<year2>[0-9]{2})",
    "MM": r"(?P<month>[0-9]{2})", "M": r"(?P<month>[0-9]{1,2})",
    "dd": r"(?P<day>[0-9]{2})", "d": r"(?P<day>[0-9]{1,2})",
    "HH": r"(?P<hour>[0-9]{2})", "H": r"(?P<hour>[0-9]{1,2})",
    "hh": r"(?P<hour12>[0-9]{2})", "h": r"(?P<hour12>[0-9]{1,2})",
    "mm": r"(?P<minute>[0-9]{2})", "m": r"(?P<minute>[0-9]{1,2})",
    "ss": r"(?P<second>[0-9]{2})", "s": r"(?P<second>[0-9]{1,2})",
}
_PATTERN_TOKEN = re.compile(r"yyyy|yy|MM|M|dd|d|HH|H|hh|h|mm|m|ss|s|tt|t|'[^']*'|.", re.DOTALL)


def _regex(pattern: str, am: str, pm: str) -> str | None:
    out = []
    for token in _PATTERN_TOKEN.findall(pattern):
        if token in _TOKENS:
            out.append(_TOKENS[token])
        elif token in ("tt", "t"):
            designators = "|".join(re.escape(d) for d in (am, pm) if d)
            if not designators:
                return None
            out.append(f"(?P<ampm>{designators})")
        elif token.startswith("'"):
            out.append(re.escape(token.strip("'")))
        elif token in "dMyHhmsft":
            return None  # a token we do not know (e.g. ddd, MMMM via repeats, fractions)
        else:
            out.append(re.escape(token))
    return "".join(out)


@lru_cache(maxsize=64)
def leading_time_pattern(date_pattern: str, time_pattern: str, am: str, pm: str) -> re.Pattern | None:
    """A regex matching "<date> <time>," at the start of a log line; None when the patterns cannot be read."""
    date_part, time_part = _regex(date_pattern, am, pm), _regex(time_pattern, am, pm)
    if not date_part or not time_part:
        return None
    try:
        pattern = re.compile(rf"\s*{date_part}\s+{time_part}\s*,")
    except re.error:  # a field named twice, in one pattern or across both (its group defined twice)
        return None
    fields = set(pattern.groupindex)
    if not ({"month", "day", "minute"} <= fields and fields & {"year", "year2"} and fields & {"hour", "hour12"}):
        return None  # a time without a year or an hour is no instant (and to_datetime reads both)
    return pattern


def to_datetime(match: re.Match, am: str, pm: str) -> datetime | None:
    """The UTC time of a match of `leading_time_pattern`; None for an impossible date or one outside YEARS."""
    groups = match.groupdict()
    year = int(groups["year"]) if groups.get("year") else 2000 + int(groups["year2"])
    if year not in YEARS:
        return None
    if groups.get("hour") is not None:
        hour = int(groups["hour"])
    else:
        hour = int(groups["hour12"]) % 12
        if groups.get("ampm") and groups["ampm"] == pm and pm != am:
            hour += 12
    try:
        return datetime(year, int(groups["month"]), int(groups["day"]), hour, int(groups["minute"]),
                        int(groups.get("second") or 0), tzinfo=timezone.utc)
    except ValueError:
        return None
