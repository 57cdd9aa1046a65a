"""The `diagnose` field report: how one real server looks next to the assumptions the exporter rests on.

The exporter was built against a simulator that prints what we believe Windows prints. Where a real server
differs (log naming, encoding, time format, event texts, culture, rights), the report shows it in `key: value`
lines whose keys do not change, so docs/field-report.md can say which line confirms or refutes each open
assumption. Everything here works on raw facts (the diagnose script sends log bytes, not decoded text) and
never needs the exporter's own parser to be right; where it shows what the parser makes of a line, it says so.
Secrets are always removed; with `redact_names`, host names and IP addresses too.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
import statistics
from collections import Counter
from dataclasses import fields, is_dataclass
from datetime import date, datetime
from typing import Any, Iterable

from . import __version__
from .assumptions import (ERRORS_SENT, MAX_EVENTS, Facts, ReadLog, check_times, duration, read_parts,
                          utc_offsets_shown, verdicts)
from .eems_log import parse_log_line
from .interpret import CHECK_SETTLE
from .component_state import local_state
from .model import RawComponentState, RawCulture
from .parse import MAX_COMPONENT_STATE_CHARS, MAX_COMPONENT_STATES, REQUESTER, as_list, parse_ps_date
from .terminal import printable
from .redact import MASK, Redactor
from .scripts import DiagnoseScriptParameters

FORMAT_VERSION = 1
DIAGNOSE_PARAMETERS = DiagnoseScriptParameters(
    lookback_hours=168, max_events=MAX_EVENTS, message_chars=2000, list_files=48, read_files=3,
    head_bytes=8192, tail_bytes=32768,
)
MAX_VALUE_CHARS = 400  # one report line; a full message is in the raw output section
MAX_RAW_CHARS = 300_000
FIRST_LINES = 8
MESSAGES_PER_LEVEL = 12
TEXTS_PER_EVENT_ID = 3
MAX_PROXY_NAMES = 64  # host names taken from the WinHTTP proxy setting (a hostile one may list thousands)
EVENT_LEVELS = {1: "Critical", 2: "Error", 3: "Warning", 4: "Information", 5: "Verbose"}
BOMS = ((b"\xef\xbb\xbf", "utf-8-sig", "utf-8 (BOM EF BB BF)"), (b"\xff\xfe", "utf-16-le", "utf-16-le (BOM FF FE)"),
        (b"\xfe\xff", "utf-16-be", "utf-16-be (BOM FE FF)"))
MICROSOFT_HOSTS = re.compile(r"(?:^|\.)microsoft\.com$", re.IGNORECASE)

_LEVEL = re.compile(r"S:LogLevel=([A-Za-z]+)")
_MESSAGE = re.compile(r"S:Message=(.*?)(?:'?;\s*'?S:[A-Za-z]+=|'?$)")
_ISO_TIME = re.compile(r"\s*\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
_CULTURE_TIME = re.compile(r"\s*\d{1,4}[./-]\d{1,2}[./-]\d{1,4}[ ,]+\d{1,2}[:.]\d{2}")
_LOG_NAME = re.compile(r"(?P<prefix>.*?)_?(?P<stamp>\d{6,12})(?:-(?P<seq>\d+))?\.log", re.IGNORECASE)
# user info, if any, goes too (with a password already redacted in it)
_URL_HOST = re.compile(rf"(?<=://)(?:(?:[^/@\s'\"<>]|{re.escape(MASK)})*@)?([^/:@\s'\"<>\]\[\\]+)")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\d.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\.?\d)")
_DOMAIN_SID = re.compile(r"S-1-5-21-\d+-\d+-\d+(?=-\d|\b)", re.IGNORECASE)
# a candidate only: `_ipv6` keeps what ipaddress takes for an address, written with `::` or all eight groups
# (a time such as 10:27:17 is neither), with a zone (`%12`) or an IPv4 tail (`::ffff:10.1.2.3`)
_IPV6 = re.compile(r"(?<![0-9A-Za-z:.%])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{0,4})"
                   r"(?:%[0-9A-Za-z]+)?(?![0-9A-Za-z:.])")


# ---------------------------------------------------------------- redaction


class NameScrubber:
    """Removes host names and addresses: the names we know (in plain and UTF-16 text read as bytes), any URL's
    host other than Microsoft's, and IPv4 and IPv6 addresses; and the monitoring account's user name (a KDC's error text
    names its principal). Microsoft's endpoints stay: they are what the report is about."""

    def __init__(self, names: Iterable[str], users: Iterable[str] = ()):
        # a known name with any domain after it is one host name
        self._names = _known(names, r"(?<![A-Za-z0-9-])", r"(?:\.[A-Za-z][A-Za-z0-9-]*)*(?![A-Za-z0-9-])")
        self._users = _known(users, r"(?<![\w.-])", r"(?![\w-])")

    def scrub(self, text: str) -> str:
        if self._users is not None:
            text = self._users.sub("<user>", text)
        if self._names is not None:
            text = self._names.sub("<host>", text)
        text = _URL_HOST.sub(lambda m: m.group(0) if MICROSOFT_HOSTS.search(m.group(1)) else "<host>", text)
        text = _DOMAIN_SID.sub(r"S-1-5-21-<domain>", text)  # a domain's (or a computer's) SID names it; the RID stays
        return _IPV4.sub("<address>", _IPV6.sub(_ipv6, text))


def _ipv6(match: re.Match) -> str:
    text = match.group(0)
    address = text.partition("%")[0]
    if "::" not in address and address.count(":") != 7:
        return text
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        return text
    return "<address>"


def _known(names: Iterable[str], before: str, after: str) -> re.Pattern | None:
    # a DNS name has at most 255 characters: a longer "name" a compromised server prints is none (one of 2 MB made a
    # 40 MB expression, a minute to compile and match)
    known = sorted({n for n in names if n and 1 < len(n) <= 255}, key=len, reverse=True)
    # between letters: nothing, a NUL (UTF-16 text read as UTF-8) or its JSON escape
    spelled = ["(?:\x00|\\\\u0000)?".join(re.escape(c) for c in name) for name in known]
    return re.compile("|".join(f"{before}{s}{after}" for s in spelled), re.IGNORECASE) if spelled else None


def names_of(*values: str | None) -> set[str]:
    """A server's names as they may appear: as given, the first label of an FQDN, and the domain after it."""
    found: set[str] = set()
    for value in values:
        if not value or _IPV4.fullmatch(value):
            continue
        found.add(value)
        label, dot, domain = value.partition(".")
        if dot and not label.isdigit():
            found.update((label, domain))
    return found


def account_names(username: str | None) -> tuple[set[str], set[str]]:
    """(user names, domain names) in a configured user name: `DOMAIN\\user`, `user@realm` (the realm and its first
    label, which is usually the NetBIOS domain) or `user`."""
    if not username:
        return set(), set()
    domain, _, user = username.rpartition("\\")
    user, _, realm = user.partition("@")
    domains = {d for d in (domain, realm, realm.partition(".")[0]) if d}
    return {user} - {""}, domains


# ---------------------------------------------------------------- report lines


class Report:
    """`key: value` lines; every line passes the secret redactor and then the name scrubber, whatever part of the
    server it came from. Secrets go first, before any other rewriting: a name cut out of a password, a control
    character made visible or a line cut short would leave the rest of it unrecognisable, and printed."""

    def __init__(self, secrets: Redactor, scrub_names) -> None:
        self.lines: list[str] = []
        self.values: dict[str, str] = {}  # key -> value as shown: the evidence the Assumptions section quotes
        self.files: list[ReadLog] = []  # the log files section 3 read, for the Assumptions section
        self._scrub = lambda text: scrub_names(secrets.scrub(text))

    def heading(self, text: str) -> None:
        self.lines += ["", f"## {text}"]

    def add(self, key: str, value: Any) -> None:
        if value is not None and not isinstance(value, (str, bool, int, float, datetime, date)):
            value = str(value)  # a list or an object a server sent: scrubbed as the text it is shown as
        text = _show(self._scrub(value) if isinstance(value, str) else value)
        if len(text) > MAX_VALUE_CHARS:
            text = text[: MAX_VALUE_CHARS - 3] + "..."
        key = printable(self._scrub(key))  # a key may hold server text (an event id)
        self.values[key] = text
        self.lines.append(f"{key}: {text}")

    def block(self, text: str) -> None:
        """A script's output as it came, line by line, each line's controls (ESC, CR) shown, not obeyed."""
        self.lines += ["```", *(printable(line) for line in self._scrub(text).split("\n")), "```"]


def _show(value: Any) -> str:
    """One line: controls (CR, LF, ESC, NUL of a mis-decoded UTF-16 text) and lone surrogates made visible."""
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return printable(str(value))


def _flatten(prefix: str, value: Any, report: Report) -> None:
    if is_dataclass(value):
        for f in fields(value):
            _flatten(f"{prefix}.{f.name}", getattr(value, f.name), report)
    elif isinstance(value, dict) and value:
        for key, item in value.items():
            _flatten(f"{prefix}.{key}", item, report)
    elif isinstance(value, (list, tuple)) and value:
        for index, item in enumerate(value, start=1):
            _flatten(f"{prefix}.{index}", item, report)
    else:
        report.add(prefix, "(empty)" if isinstance(value, (list, tuple, dict)) else value)


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        return f"{error.get('id') or '?'} ({error.get('type') or '?'}): {error.get('message') or ''}"
    return str(error)


# ---------------------------------------------------------------- log bytes


def decode_log(raw: bytes) -> tuple[str, str]:
    """(encoding label, text): by BOM, else UTF-8 if valid, else UTF-16-LE if every other byte is NUL."""
    for bom, codec, label in BOMS:
        if raw.startswith(bom):
            return label, raw.decode(codec, errors="replace")
    # before UTF-8: UTF-16 text without a BOM is valid UTF-8 too (ASCII and NULs), and was labelled so
    if raw and raw.count(0) * 3 >= len(raw):
        return "utf-16-le (no BOM)", raw.decode("utf-16-le", errors="replace")
    try:
        return "utf-8 (no BOM)", raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    return "unknown (not UTF-8; shown with replacement characters)", raw.decode("utf-8", errors="replace")


def _b64(value: Any) -> bytes:
    try:
        return base64.b64decode(value or "", validate=True)
    except (binascii.Error, ValueError, TypeError):
        return b""


def _time_form(line: str) -> str:
    if _ISO_TIME.match(line):
        return "iso"
    if _CULTURE_TIME.match(line):
        return "culture"
    return "none"


def _log_naming(names: list[str]) -> str:
    stamps = [_LOG_NAME.fullmatch(n) for n in names]
    if not names:
        return "no files"
    if not all(stamps):
        odd = [n for n, m in zip(names, stamps) if not m][:3]
        return f"{sum(1 for m in stamps if m)} of {len(names)} names have a date stamp; others: {', '.join(odd)}"
    widths = Counter(len(m.group("stamp")) for m in stamps)
    kinds = {8: "yyyyMMdd (daily)", 10: "yyyyMMddHH (hourly)"}
    shapes = ", ".join(f"{count} x {kinds.get(width, f'{width} digits')}" for width, count in widths.most_common())
    prefixes = sorted({m.group("prefix") for m in stamps})
    return f"prefix {', '.join(prefixes)}; stamp {shapes}; sequence suffix on {sum(1 for m in stamps if m.group('seq'))}"


def _log_file(report: Report, key: str, entry: dict, culture: RawCulture | None) -> int | None:
    """The file's lines, and where its check lines go (`_log_lines`); None when it was not read."""
    length, stream_length = entry.get("length"), entry.get("stream_length")
    report.add(f"{key}.name", entry.get("name"))
    report.add(f"{key}.length", f"stream {stream_length}, directory entry {length}"
               + (" (differ)" if stream_length is not None and stream_length != length else ""))
    if entry.get("error"):
        report.add(f"{key}.error", _error_text(entry["error"]))
        return None
    head, tail = _file_bytes(_b64(entry.get("head")), _b64(entry.get("tail")), stream_length)
    encoding, head_text = decode_log(head)
    report.add(f"{key}.encoding", encoding)
    report.add(f"{key}.first_bytes", head[:4].hex(" ") or "(empty)")
    report.add(f"{key}.read", "the whole file" if not tail else f"first {len(head)} and last {len(tail)} bytes")
    head_lines = head_text.lstrip("\ufeff").splitlines()
    tail_lines: list[str] = []
    if tail:  # the cuts split a line each: drop the head's last and the tail's first line
        tail_start = stream_length - len(tail)
        if encoding.startswith("utf-16"):
            codec = "utf-16-be" if "be" in encoding else "utf-16-le"
            tail_text = tail[tail_start % 2 :].decode(codec, errors="replace")
        else:
            tail_text = decode_log(tail)[1]
        head_lines, tail_lines = head_lines[:-1], tail_text.splitlines()[1:]
    return _log_lines(report, key, head_lines, tail_lines, parse_ps_date(entry.get("last_write")), culture,
                      encoding=encoding, length_differs=stream_length is not None and stream_length != length,
                      file_last_write=parse_ps_date(entry.get("file_last_write")))


def _collected_log_file(report: Report, key: str, entry: dict, culture: RawCulture | None) -> int:
    """A log file as the collection script read it: its tail as text (Get-Content, in any language mode)."""
    report.add(f"{key}.source", "the collection script's tail (the diagnose script reads bytes in FullLanguage "
                                "only); last write is the file's own")
    report.add(f"{key}.name", entry.get("name"))
    report.add(f"{key}.encoding", "not read (decoded by Get-Content)")
    tail = entry.get("tail")
    return _log_lines(report, key, [], tail.splitlines() if isinstance(tail, str) else [],
                      parse_ps_date(entry.get("last_write")), culture)


def _log_lines(report: Report, key: str, head_lines: list[str], tail_lines: list[str], last_write: datetime | None,
               culture: RawCulture | None, *, encoding: str | None = None, length_differs: bool | None = None,
               file_last_write: datetime | None = None) -> int:
    """The file's lines and its `ReadLog`; returns where its check lines go (`_log_section` adds them once every
    file is read: their times are read in the zone all the files tell)."""
    for index, line in enumerate(head_lines[:FIRST_LINES], start=1):
        report.add(f"{key}.first_lines.{index}", line)
    fields_lines = {ln.strip()[len("#Fields:") :].strip() for ln in head_lines + tail_lines if ln.strip().startswith("#Fields:")}
    data_lines = [line for line in head_lines + tail_lines   # a bare CSV header line repeats the #Fields value
                  if line.strip() and not line.lstrip().startswith("#") and line.strip() not in fields_lines]
    forms = Counter(_time_form(line) for line in data_lines)
    report.add(f"{key}.time_column", ", ".join(f"{form} {forms[form]}" for form in ("iso", "culture", "none")))
    times = [r.time for r in (parse_log_line(line, culture) for line in data_lines) if r is not None and r.time is not None]
    report.add(f"{key}.exporter_reads_time", f"{len(times)} of {len(data_lines)} lines")
    if times and last_write is not None:  # about 0 when the lines are in UTC; whole hours when in local time
        offset = (last_write - max(times)).total_seconds()
        report.add(f"{key}.last_write_minus_newest_line", f"{'-' if offset < 0 else '+'}{duration(abs(offset))}")
    parts = tuple([r for r in (parse_log_line(line, culture) for line in lines) if r is not None]
                  for lines in (head_lines, tail_lines))
    check_lines_at = len(report.lines)
    levels: dict[str, list[str]] = {}
    messages: dict[str, Counter] = {}
    for line in head_lines + tail_lines:
        match = _LEVEL.search(line)
        if match:
            levels.setdefault(match.group(1), []).append(line)
            message = _MESSAGE.search(line)
            messages.setdefault(match.group(1), Counter())[message.group(1).strip() if message else line] += 1
    report.files.append(ReadLog(key, encoding, length_differs, len(data_lines), len(times), parts, last_write,
                                file_last_write, messages, sum(1 for line in data_lines if not _LEVEL.search(line))))
    if not levels:
        report.add(f"{key}.levels", "no S:LogLevel= in the lines read")
    for level, lines in sorted(levels.items()):
        report.add(f"{key}.level.{level}.first", lines[0])
        report.add(f"{key}.level.{level}.last", lines[-1])
        for index, (message, count) in enumerate(messages[level].most_common(MESSAGES_PER_LEVEL), start=1):
            report.add(f"{key}.level.{level}.message.{index}", f"{count} x {message}")
    return check_lines_at


def _check_lines(report: Report, key: str, *parts: list) -> None:
    """The times the check guesses rest on: starts per hour (EEMS checks hourly, the no-activity page) and, per check,
    from its start line to its last line and to its first Warning/Error line (interpret.CHECK_SETTLE: a check
    without a problem line is a success only once it is 5 minutes old). Each part (head, tail) on its own: the
    bytes between them are unread."""
    starts, spans, problems, _ = check_times(list(parts))
    if not starts:
        report.add(f"{key}.check_starts", "none in the lines read")
        return
    ordered = sorted(starts)
    gaps = [(b - a).total_seconds() for a, b in zip(ordered, ordered[1:])]
    report.add(f"{key}.check_starts", f"{len(starts)} in the lines read, {duration((ordered[-1] - ordered[0]).total_seconds())} "
               f"from the first to the last" + (f"; median {duration(statistics.median(gaps))} between starts" if gaps else ""))
    settle = CHECK_SETTLE.total_seconds()
    late = sum(1 for seconds in problems if seconds > settle)
    report.add(f"{key}.check_span", f"{len(spans)} checks: start line to the check's last line median "
               f"{_seconds(statistics.median(spans))}, max {_seconds(max(spans))}")
    report.add(f"{key}.check_problem_after", "not seen (no Warning/Error line after a start line)" if not problems else
               f"{len(problems)} checks with a Warning/Error line, the first at most {_seconds(max(problems))} after "
               f"the start; {late} later than 5 minutes: "
               + ("contradicts the 5-minute settle" if late else "consistent with the 5-minute settle"))


def _seconds(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds < 60 else f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def _log_section(report: Report, doc: dict, culture: RawCulture | None, collected: dict | None) -> None:
    folder = doc.get("log_folder") or {}
    if folder.get("error"):
        report.add("log.folder", f"not readable: {_error_text(folder['error'])}")
        return
    report.add("log.folder", f"{folder.get('path')} ({'exists' if folder.get('exists') else 'does not exist'}"
               + (f", {folder.get('file_count')} files)" if folder.get("exists") else ")"))
    files = [f for f in as_list(doc.get("log_files"))[: DIAGNOSE_PARAMETERS.list_files] if isinstance(f, dict)]
    for index, entry in enumerate(files, start=1):
        report.add(f"log.files.{index}", f"{entry.get('name')}  {entry.get('length')} bytes  "
                   f"last write {_show(parse_ps_date(entry.get('last_write')))} (directory entry), "
                   f"{_show(parse_ps_date(entry.get('file_last_write')))} (the file)")
    report.add("log.naming", _log_naming([str(f.get("name")) for f in files]))
    writes = sorted(t for t in (parse_ps_date(f.get("last_write")) for f in files) if t is not None)
    gaps = [(b - a).total_seconds() for a, b in zip(writes, writes[1:])]
    report.add("log.rotation", f"median {duration(statistics.median(gaps))} between the last writes of "
               f"consecutive files" if gaps else "fewer than two files")
    read = [f for f in files if "head" in f or "error" in f][: DIAGNOSE_PARAMETERS.read_files]
    places = [_log_file(report, f"log.read.{index}", entry, culture) for index, entry in enumerate(read, start=1)]
    if not read and collected:  # Constrained Language Mode: the poll's tails still show the lines
        tails = [f for f in as_list(collected.get("logs")) if isinstance(f, dict) and f.get("tail")]
        places = [_collected_log_file(report, f"log.read.{index}", entry, culture)
                  for index, entry in enumerate(tails[: DIAGNOSE_PARAMETERS.read_files], start=1)]
    # Each file's check lines, in its place, with the times as the poll reads them: zoneless ones in local time
    # (each with the offset then in force) when the closed files say the lines are local (assumptions.Facts.times)
    parts = read_parts(Facts(dict(report.values), doc, None, report.files))
    for file, file_parts, at in reversed(list(zip(report.files, parts, [p for p in places if p is not None]))):
        rest, report.lines = report.lines[at:], report.lines[:at]
        _check_lines(report, file.key, *file_parts)
        report.lines += rest


# ---------------------------------------------------------------- events


def _events_section(report: Report, doc: dict) -> None:
    errors = as_list(doc.get("event_errors"))[:ERRORS_SENT]
    count = doc.get("event_error_count")
    count = count if isinstance(count, int) and not isinstance(count, bool) and count > len(errors) else len(errors)
    report.add("events.read_errors", "none" if not count else
               count if count == len(errors) else f"{count} (the first {len(errors)} below)")
    for index, error in enumerate(errors, start=1):
        report.add(f"events.read_error.{index}", _error_text(error))
    by_id: dict[Any, list[dict]] = {}
    for event in as_list(doc.get("events"))[: DIAGNOSE_PARAMETERS.max_events]:
        if isinstance(event, dict):
            by_id.setdefault(event.get("id"), []).append(event)
    report.add("events.ids", ", ".join(f"{i} x {len(e)}" for i, e in sorted(by_id.items(), key=lambda p: str(p[0])))
               or "no events")
    for event_id, events in sorted(by_id.items(), key=lambda p: str(p[0])):
        key = f"events.id.{event_id}"
        times = sorted(t for t in (parse_ps_date(e.get("time")) for e in events) if t is not None)
        report.add(f"{key}.count", len(events))
        report.add(f"{key}.oldest", times[0] if times else None)
        report.add(f"{key}.newest", times[-1] if times else None)
        gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:])]
        report.add(f"{key}.interval", f"median {duration(statistics.median(gaps))}, "
                   f"min {duration(min(gaps))}, max {duration(max(gaps))}" if gaps else "one event")
        report.add(f"{key}.levels", ", ".join(sorted({EVENT_LEVELS.get(e.get("level"), str(e.get("level")))
                                                       for e in events})))
        texts = Counter(e.get("message") or None for e in events)
        report.add(f"{key}.without_text", texts.pop(None, 0))
        for index, (text, count) in enumerate(texts.most_common(TEXTS_PER_EVENT_ID), start=1):
            report.add(f"{key}.text.{index}", f"{count} x {text}")
        data = Counter(" | ".join(map(str, as_list(e.get("data")))) for e in events if e.get("data") is not None)
        for index, (strings, count) in enumerate(data.most_common(TEXTS_PER_EVENT_ID), start=1):
            report.add(f"{key}.data.{index}", f"{count} x {strings}")


# ---------------------------------------------------------------- WinHTTP proxy


_DOTTED_NAME = re.compile(r"[A-Za-z0-9*-]+(?:\.[A-Za-z0-9-]+)+")


def winhttp_proxy(value: Any) -> tuple[str, str] | str:
    """(proxy, bypass list) from the raw WinHttpSettings value, read with the layout the collection script
    assumes (flags at byte 8, bit 2 = proxy; then length-prefixed proxy and bypass strings); or why not."""
    if isinstance(value, dict):
        return f"not readable: {_error_text(value.get('error'))}"
    data = _b64(value)
    if len(data) < 16:
        return f"unexpected value of {len(data)} bytes"
    if not data[8] & 2:
        return "direct access (no WinHTTP proxy)"
    length = int.from_bytes(data[12:16], "little")
    proxy = data[16 : 16 + length].decode("ascii", errors="replace")
    rest = data[16 + length :]
    bypass_length = int.from_bytes(rest[:4], "little") if len(rest) >= 4 else 0
    return proxy, rest[4 : 4 + bypass_length].decode("ascii", errors="replace")


def winhttp_layout(value: Any) -> str | None:
    """The raw value's size and its first 16 bytes (no names in them): what the layout guess rests on."""
    if not isinstance(value, str):
        return None
    data = _b64(value)
    return f"{len(data)} bytes; header {data[:16].hex(' ')} (size, counter, flags, proxy length)"


def _winhttp_names(doc: dict | None) -> list[str]:
    """Host names in the WinHTTP proxy settings (they are not URLs, so the URL rule does not see them)."""
    found = winhttp_proxy(doc.get("winhttp_settings")) if doc else ""
    names = _DOTTED_NAME.findall(" ".join(found)) if isinstance(found, tuple) else []
    return [name for name in names if not _IPV4.fullmatch(name)][:MAX_PROXY_NAMES]  # addresses have their own rule


# ---------------------------------------------------------------- rights and culture


def _rights_section(report: Report, doc: dict) -> None:
    report.add("account.is_admin", doc.get("is_admin"))
    service, key = doc.get("service") or {}, doc.get("service_key") or {}
    key_error = (key.get("error") or {}).get("id", "") if isinstance(key.get("error"), dict) else ""
    if not service.get("error"):
        report.add("rights.service_query", f"ok: {service.get('status')}, {service.get('start_type')}")
    elif "NoServiceFoundForGivenName" in _error_text(service["error"]) and not key.get("error"):
        report.add("rights.service_query", "DENIED: Get-Service finds no service, but its registry key exists "
                   "(Windows PowerShell 5.1 reports access denied as not found)")
    elif key_error.startswith("PathNotFound"):
        report.add("rights.service_query", "not installed: no service and no registry key")
    else:
        report.add("rights.service_query", f"failed: {_error_text(service['error'])}")
    if key.get("error"):
        report.add("rights.service_key", f"{'absent' if key_error.startswith('PathNotFound') else 'failed'}: "
                   f"{_error_text(key['error'])}")
    else:
        report.add("rights.service_key", f"ok: Start={key.get('start')}, account {key.get('account')}")
    errors = [e for e in as_list(doc.get("event_errors"))[:ERRORS_SENT] if isinstance(e, dict)]
    # thrown, or (Windows PowerShell 5.1, a log whose configuration the account may not open) inside LogInfoUnavailable
    denied = [e for e in errors if "UnauthorizedAccess" in f"{e.get('id')} {e.get('type')} {e.get('inner')}"]
    report.add("rights.event_log", f"DENIED: {_error_text(denied[0])}" if denied else "ok")
    folder = doc.get("log_folder") or {}
    file_errors = [f["error"] for f in as_list(doc.get("log_files"))[: DIAGNOSE_PARAMETERS.list_files]
                   if isinstance(f, dict) and f.get("error")]
    if folder.get("error"):
        report.add("rights.log_folder", f"failed: {_error_text(folder['error'])}")  # denied, or no install path
    elif file_errors:
        report.add("rights.log_folder", f"{len(file_errors)} files not readable: {_error_text(file_errors[0])}")
    else:
        report.add("rights.log_folder", "ok" if folder.get("exists") else "folder absent")
    # the descriptors docs/windows-setup.md guesses at (F5, F9), as SDDL
    sddl = doc.get("service_sddl")
    if isinstance(sddl, dict):
        report.add("rights.service_sddl", f"failed: {_error_text(sddl['error'])}" if sddl.get("error") else
                   f"exit {sddl.get('exit')}: {sddl.get('output')}")
    acl = folder.get("sddl")
    if acl is not None:
        report.add("rights.log_folder_sddl", f"failed: {_error_text(acl.get('error'))}" if isinstance(acl, dict) else acl)
    for index, error in enumerate(as_list(doc.get("errors"))[:ERRORS_SENT], start=1):
        report.add(f"diagnose.error.{index}", _error_text(error))


def _maintenance_lines(report: Report, doc: dict) -> None:
    """ServerWideOffline twice: the registry's values as the poll reads them (component_state.py, its format a
    guess), and Get-ServerComponentState's own State, LocalStates and RemoteStates (verdict component_state_format)."""
    registry = doc.get("component_states")
    if isinstance(registry, dict) and "error" in registry:
        error = _error_text(registry["error"])
        report.add("maintenance.registry", f"{'absent' if error.startswith('PathNotFound') else 'failed'}: {error}")
    for entry in _requester_entries(registry):
        value = str(entry.get("value"))[:MAX_COMPONENT_STATE_CHARS]
        read = local_state(RawComponentState("ServerWideOffline", entry["requester"], value))
        report.add(f"maintenance.registry.{entry['requester']}", f"{value} (read as {read})")
    exchange = doc.get("server_component_state")
    if not isinstance(exchange, dict):
        return
    if exchange.get("error"):
        report.add("maintenance.exchange", f"failed: {_error_text(exchange['error'])}")
        return
    report.add("maintenance.exchange.state", exchange.get("state"))
    for side in ("local", "remote"):
        for entry in _requester_entries(exchange.get(side)):
            report.add(f"maintenance.exchange.{side}.{entry['requester']}",
                       f"{entry.get('state')} at {parse_ps_date(entry.get('time'))}")


def _requester_entries(value: Any) -> list[dict]:
    """The entries of a list (as the poll reads one: parse.as_list) whose requester may name a report line; an error
    object has no requester."""
    return [entry for entry in as_list(value)[:MAX_COMPONENT_STATES] if isinstance(entry, dict)
            and isinstance(entry.get("requester"), str) and REQUESTER.fullmatch(entry["requester"])]


# ---------------------------------------------------------------- the verdicts


def _assumptions_section(report: Report, at: int, facts: Facts) -> None:
    """`assumption.ID: VERDICT: evidence` per assumption (exporter/assumptions.py), placed at `at` (after the
    header), through the same scrubbers as every other line: the evidence quotes server text."""
    rest, report.lines = report.lines[at:], report.lines[:at]
    report.heading("Assumptions (judged from sections 1 to 4; docs/field-report.md says how to read them)")
    for key, verdict in verdicts(facts):
        report.add(f"assumption.{key}", f"{verdict.status}: {verdict.evidence}")
    report.lines += rest


# ---------------------------------------------------------------- the whole report


def raw_text(output: bytes) -> str:
    """A script's stdout as the report's raw section shows it (and /server?debug=true): UTF-8, byte order marks
    dropped, cut at MAX_RAW_CHARS. Not yet scrubbed."""
    return output.decode("utf-8", errors="replace").replace("\ufeff", "")[:MAX_RAW_CHARS]


def _document(output: bytes | str) -> tuple[dict | None, str]:
    """A script's JSON document (None when it did not run or printed something else) and its text as received."""
    if isinstance(output, str):
        return None, output
    text = output.decode("utf-8", errors="replace").replace("\ufeff", "")
    line = next((ln for ln in text.splitlines() if ln.lstrip().startswith("{")), None)
    try:
        doc = json.loads(line) if line else None
    except (ValueError, RecursionError):  # RecursionError: a hostile server's document nested thousands deep
        doc = None
    return (doc if isinstance(doc, dict) else None), raw_text(output)


def _file_bytes(head: bytes, tail: bytes, length: int | None) -> tuple[bytes, bytes]:
    """(start, end) of a log file without overlap; end is b"" when start is the whole file."""
    if length is not None and len(head) + len(tail) >= length:
        return head + tail[len(head) + len(tail) - length :], b""
    return head, tail


def build_report(*, server: str, created: datetime, collect: bytes | str, interpretation: Any,
                 diagnose: bytes | str, secrets: Redactor, redact_names: Iterable[str] | None,
                 culture: RawCulture | None = None, usernames: Iterable[str | None] = (),
                 diagnose_module: str | None = None) -> str:
    """The report text. `collect` and `diagnose` are a script's stdout, or the failure text when it did not run;
    `interpretation` is the exporter's ServerState for the collect output, or None; `culture` the one the
    poll reported (the exporter reads culture-formatted log times with it). `redact_names`: the names
    the configuration knows for the server (None: keep names); the computer names the scripts print are added,
    and the monitoring accounts' `usernames` (their users, domains or realms). `diagnose_module`: the module the
    diagnose script ran through, when not the server's.
    Every line of the report passes the secret redactor and then the name scrubber; the whole text the redactor again."""
    collect_doc, collect_text = _document(collect)
    diagnose_doc, diagnose_text = _document(diagnose)
    scrub = lambda text: text  # noqa: E731
    if redact_names is not None:
        computers = [d.get("computer") for d in (collect_doc, diagnose_doc) if d and isinstance(d.get("computer"), str)]
        proxies = [n.lstrip("*.") for n in _winhttp_names(diagnose_doc)]
        users, domains = set(), set()
        for username in usernames:
            user, domain = account_names(username)
            users, domains = users | user, domains | domain
        scrub = NameScrubber(names_of(*redact_names, *computers) | set(proxies) | domains, users).scrub
    report = Report(secrets, scrub)
    report.lines.append("# exchange-eems-exporter field report")
    report.add("report.format", FORMAT_VERSION)
    report.add("report.exporter_version", __version__)
    report.add("report.created", created)
    report.add("report.server", server)
    report.add("report.names_redacted", redact_names is not None)
    if diagnose_module is not None:
        report.add("report.diagnose_module", diagnose_module)
    header_end = len(report.lines)

    report.heading("1. What the exporter concludes (the `poll` of this server)")
    if collect_doc is None:
        report.add("poll.outcome", f"failed: {collect_text}" if isinstance(collect, str) else "output not understood")
    else:
        report.add("poll.outcome", "ok" if interpretation is not None else "output not understood")
        report.add("poll.exsetup_version_raw", collect_doc.get("exsetup_version"))
    if interpretation is not None:
        _flatten("interpretation", interpretation, report)

    report.heading("2. Windows, account and rights (the `diagnose` script)")
    if diagnose_doc is None:
        report.add("diagnose.outcome", f"failed: {diagnose_text}")
    else:
        report.add("diagnose.outcome", "ok")
        report.add("os.culture", diagnose_doc.get("culture"))
        report.add("os.ui_culture", diagnose_doc.get("ui_culture"))
        report.add("os.language_mode", diagnose_doc.get("language_mode"))
        report.add("os.powershell", diagnose_doc.get("powershell"))
        report.add("os.utc_offset", diagnose_doc.get("utc_offset_minutes"))
        report.add("os.utc_offsets", utc_offsets_shown(diagnose_doc))
        if culture is not None:
            report.add("os.culture_patterns", f"date {culture.date_pattern}, time {culture.time_pattern}, "
                       f"AM {culture.am!r}, PM {culture.pm!r} (the poll's account)")
        report.add("server.exsetup_version_raw", diagnose_doc.get("exsetup_version"))
        proxy = winhttp_proxy(diagnose_doc.get("winhttp_settings"))
        report.add("os.winhttp_proxy", f"{proxy[0]} (bypass: {proxy[1] or 'none'})" if isinstance(proxy, tuple) else proxy)
        report.add("os.winhttp_settings_layout", winhttp_layout(diagnose_doc.get("winhttp_settings")))
        _rights_section(report, diagnose_doc)
        _maintenance_lines(report, diagnose_doc)
        report.heading("3. EEMS log files")
        _log_section(report, diagnose_doc, culture, collect_doc)
        report.heading("4. EEMS events in the Application log")
        report.add("events.window", f"{DIAGNOSE_PARAMETERS.lookback_hours} h, at most {DIAGNOSE_PARAMETERS.max_events}")
        report.add("events.query_seconds", diagnose_doc.get("event_query_seconds"))
        _events_section(report, diagnose_doc)
    _assumptions_section(report, header_end, Facts(dict(report.values), diagnose_doc, interpretation, report.files))

    report.heading("5. Raw output of the collection script (what the exporter parsed)")
    report.block(collect_text)
    if diagnose_doc is not None:
        report.heading("6. Raw output of the diagnose script (log bytes shown decoded in section 3)")
        for entry in as_list(diagnose_doc.get("log_files")):
            for part in ("head", "tail"):
                if isinstance(entry, dict) and part in entry:
                    entry[part] = f"<{len(_b64(entry[part]))} bytes>"
        if redact_names is not None and isinstance(diagnose_doc.get("winhttp_settings"), str):
            # base64 hides the proxy's and the bypass list's names from the scrubber: shown decoded above
            diagnose_doc["winhttp_settings"] = f"<{len(_b64(diagnose_doc['winhttp_settings']))} bytes>"
        report.block(json.dumps(diagnose_doc, indent=1)[:MAX_RAW_CHARS])
    return secrets.scrub("\n".join(report.lines) + "\n")
