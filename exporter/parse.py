"""Turn what the collection scripts printed into `RawServerFacts` / `RawOrganizationFacts`.

The scripts run under Windows PowerShell 5.1, whose `ConvertTo-Json` unwraps one-element arrays, writes
enums as integers and dates as `/Date(ms)/`, and whose output may arrive with a BOM, CRLF, CLIXML
fragments or cut short by a byte bound (docs/design.md sections 1-2). Everything is normalised here so
`interpret.py` sees one shape. A field of the wrong type is treated as missing and noted in `errors`
(`parse: ...`); only output that is not the expected JSON object at all raises `ParseError`.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timedelta, timezone
from html import unescape

from .addresses import SERVER_NAME, is_host, is_proxy_url, without_userinfo
from .json_prefix import is_json_prefix
from .model import (
    OrgServerInfo,
    RawComponentState,
    RawCulture,
    RawEndpoint,
    RawError,
    RawEvent,
    RawLog,
    RawOrganizationFacts,
    RawServerFacts,
)
from .terminal import paired_surrogates
from .windows_service import START_MODES, STATES

MAX_ERRORS = 50  # collection-error strings kept; a misbehaving script must not flood the metrics page
MAX_ERROR_CHARS = 500
MAX_EVENT_DATA = 16  # insertion strings kept per event; an EEMS event has a few
# Text from a server that becomes a label value: how many per list and what shape (a series each; a
# compromised server must not be able to mint series or smuggle arbitrary text into them).
MAX_MITIGATIONS_PER_LIST = 100
MITIGATION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# The years a server's date may have. .NET's DateTime.MinValue and MaxValue (years 1 and 9999) stand for "never" and
# are no instants, and interpret's tolerances of hours and days overflow next to them: a server sending one failed
# every poll as internal_error (OverflowError).
YEARS = range(1000, 9000)
_MS_DATE = re.compile(r"\\?/Date\((-?[0-9]{1,15})(?:[+-][0-9]{4})?\)\\?/")
_CLIXML_OPENER = re.compile(r"<S\s+S=\"[^\"<>]{0,64}\"\s*>")
_CLIXML_CLOSER = "</S>"
_CLIXML_ESCAPE = re.compile(r"_x([0-9A-Fa-f]{4})_")


class ParseError(Exception):
    """Output that is not the expected JSON; `reason` is the collector error label (design.md section 4)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


# ---------------------------------------------------------------- dates and stderr


def parse_ps_date(value) -> datetime | None:
    """A UTC datetime from any date form PowerShell 5.1 emits; None for anything else, and outside YEARS.

    `/Date(ms+hhmm)/` carries UTC milliseconds; the offset only says which zone the writer was in, so
    it does not move the instant. ISO strings without an offset are taken as UTC.
    """
    if isinstance(value, dict):
        return parse_ps_date(value.get("value"))
    if not isinstance(value, str) or len(value) > 64:
        return None
    text = value.strip()
    match = _MS_DATE.fullmatch(text)
    try:
        if match:
            parsed = _EPOCH + timedelta(0, 0, 0, int(match.group(1)))  # milliseconds, given by position: cheaper
        else:
            parsed = datetime.fromisoformat(text.replace("z", "Z"))
            parsed = parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        return None
    return parsed if parsed.year in YEARS else None


# powershell.exe writes stderr in the console's code page, which the exporter sets for the WinRS shell
# (WINRS_CODEPAGE=437, the OEM code page): decoded as UTF-8, a localized "für" became "f\ufffdr" (review R14).
# Every byte is a character of code page 437, so decoding cannot fail.
STDERR_CODEPAGE = "cp437"


def clixml_to_text(stderr: bytes) -> str:
    """The human-readable error text of a PowerShell stderr stream.

    CLIXML progress records are noise even in successful runs, so only `<S S="...">` stream records
    count; '' when there are none. Non-CLIXML text passes through stripped.
    """
    text = stderr.removeprefix(b"\xef\xbb\xbf").decode(STDERR_CODEPAGE).strip() if isinstance(stderr, bytes) else ""
    if not text.startswith("#< CLIXML"):
        return text
    lines = [unescape(body) for body in _clixml_records(text)]
    joined = paired_surrogates(_CLIXML_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), "".join(lines)))
    return joined.replace("\r\n", "\n").strip()


def _clixml_records(text: str):
    """The bodies of `<S S="...">body</S>` records, in one pass: each opener is matched once and each
    search resumes after the closer it found (a lazy regex over the whole text was quadratic on a stream
    of openers without closers, and held the GIL while it ran)."""
    position = 0
    while (opener := _CLIXML_OPENER.search(text, position)) is not None:
        closer = text.find(_CLIXML_CLOSER, opener.end())
        if closer < 0:
            return
        yield text[opener.end():closer]
        position = closer + len(_CLIXML_CLOSER)


# ---------------------------------------------------------------- JSON extraction


# Where str.splitlines breaks a line. Each is a whitespace character, so strip() removes them at the ends.
_LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"


def _json_text(stdout: bytes) -> str:
    """The line holding the JSON object, ignoring a BOM, blank lines and CLIXML/other noise lines.

    Usually the output is that one line and blank ones around it: then it is the stripped output, found by
    a few memchr scans instead of splitting tens of KiB into lines."""
    if not isinstance(stdout, bytes):
        raise ParseError("bad_output", "output is not bytes")
    text = stdout.decode("utf-8", errors="replace").replace("\ufeff", "")
    stripped = text.strip()
    if stripped.startswith("{") and not any(brk in stripped for brk in _LINE_BREAKS):
        return stripped
    for line in text.splitlines():
        if line.lstrip().startswith("{"):
            return line.strip()
    if not text.strip():
        raise ParseError("bad_output", "output is empty")
    raise ParseError("bad_output", "output holds no JSON object")


def _load_object(stdout: bytes, what: str) -> dict:
    """The JSON object in `stdout`. Memory is bounded before parsing: a scalar costs json.loads at most some
    12 bytes per byte of text, but an object or array costs 60-70 bytes for its two or three characters. So
    the count of `{` and `[` (inside strings too: an upper bound) may be at most one per 16 bytes of output,
    far more than the script writes (an event object is some 200 bytes), and a parse costs at most a small
    multiple of the output's size, itself bounded by limits.max_poll_bytes."""
    text = _json_text(stdout)
    containers, allowed = text.count("{") + text.count("["), len(text) // 16 + 10_000
    if containers > allowed:
        raise ParseError("bad_output", f"{what} output holds {containers} JSON objects or arrays in "
                                             f"{len(text)} characters, more than the script writes ({allowed})")
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ParseError("bad_output", f"{what} output nests too deeply") from None
    except ValueError as e:
        if is_json_prefix(text):
            raise ParseError("truncated_output", f"{what} output ends inside the JSON document (cut short)") from None
        where = f" at character {e.pos}" if isinstance(e, json.JSONDecodeError) else ""
        raise ParseError("bad_output", f"{what} output is not valid JSON{where}") from None
    if not isinstance(doc, dict):
        raise ParseError("bad_output", f"{what} output is JSON but not an object")
    schema = doc.get("schema", 1)
    if schema != 1 or isinstance(schema, bool):
        raise ParseError("bad_output", f"{what} output has unsupported schema {str(schema)[:20]!r}")
    return doc


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


# ---------------------------------------------------------------- field helpers


def as_list(value) -> list:
    """A JSON value as a list: PowerShell 5.1 unwraps one-element arrays, writes none as null and sometimes wraps
    arrays as {"value": [...], "Count": n}. The poll and the field report (assumptions.py) read lists with it."""
    if value is None:
        return []
    if isinstance(value, list):
        return value
    if isinstance(value, dict) and set(value) == {"value", "Count"} and isinstance(value["value"], list):
        return value["value"]
    return [value]


class _Notes:
    """Collects `parse:` notes about fields of the wrong type instead of failing the whole poll."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.dropped_labels = 0  # server-provided values refused as label values (count or shape)

    def add(self, note: str) -> None:
        """Only MAX_ERRORS notes are ever kept, so keep no more: one bad item in millions costs nothing."""
        if len(self.items) < MAX_ERRORS:
            self.items.append(note)

    def wrong(self, field: str, expected: str) -> None:
        self.add(f"parse: {field}: expected {expected}")

    def section(self, value, field: str) -> dict | None:
        """`value` when it is an object; None for null, and for anything else with a note."""
        if value is None or isinstance(value, dict):
            return value
        self.wrong(field, "an object or null")
        return None

    def text(self, obj: dict, key: str, field: str) -> str | None:
        value = obj.get(key)
        if value is None or isinstance(value, str):
            return value if value is None else _clean(value)
        self.wrong(field, "a string")
        return None

    def choice(self, obj: dict, key: str, field: str, choices: tuple[str, ...]) -> str | None:
        """One of `choices` (a label value), or None, with a note for anything else."""
        value = self.text(obj, key, field)
        if value is None or value in choices:
            return value
        self.wrong(field, " or ".join(choices))
        return None

    def flag(self, obj: dict, key: str, field: str) -> bool | None:
        value = obj.get(key)
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        self.wrong(field, "true or false")
        return None

    def integer(self, obj: dict, key: str, field: str) -> int | None:
        value = obj.get(key)
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        self.wrong(field, "an integer")
        return None

    def date(self, obj: dict, key: str, field: str) -> datetime | None:
        value = obj.get(key)
        parsed = parse_ps_date(value)
        if value is not None and parsed is None:
            self.wrong(field, "a date")
        return parsed

    def strings(self, value, field: str) -> tuple[str, ...]:
        """`@($null)` (an empty MultiValuedProperty in 5.1) arrives as [null]: no item, and no note."""
        items = [item for item in as_list(value) if item is not None]
        kept = tuple(_clean(item) for item in items if isinstance(item, str))
        if len(kept) != len(items):
            self.wrong(field, "strings")
        return kept


    def label_values(self, value, field: str) -> tuple[str, ...]:
        """Mitigation IDs: strings of the ID shape, each once (listed twice, an ID made two series of the same
        labels, which OpenMetrics parsers refuse), at most MAX_MITIGATIONS_PER_LIST; the refused are counted."""
        items = [item for item in as_list(value) if item is not None]  # [null]: an empty list, as in strings()
        valid = [item for item in items if isinstance(item, str) and MITIGATION_ID.fullmatch(item)]
        if any(not isinstance(item, str) for item in items):
            self.wrong(field, "strings")
        unique = list(dict.fromkeys(valid))
        self.dropped_labels += len(items) - len(valid) + max(0, len(unique) - MAX_MITIGATIONS_PER_LIST)
        return tuple(unique[:MAX_MITIGATIONS_PER_LIST])


def _enum_name(value, names: tuple[str, ...], base: int) -> str | None:
    """.NET enum name from a name (any case) or its integer; None when it is neither."""
    if isinstance(value, str):
        folded = value.replace(" ", "").lower()
        return next((n for n in names if n.lower() == folded), None)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value - base < len(names):
        return names[value - base]
    return None


def _tail(text: str, max_bytes: int) -> str:
    """The last `max_bytes` bytes of `text`, dropping a character the cut split in two."""
    text = _clean(text)
    if _utf8_size(text) <= max_bytes:
        return text
    data = text.encode("utf-8")
    return data[len(data) - max_bytes :].decode("utf-8", errors="ignore")


def _utf8_size(text: str) -> int:
    """Bytes of `text` in UTF-8, without encoding it when it is ASCII (`isascii` costs nothing: str knows)."""
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _clip(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def _clean(text: str) -> str:
    """JSON may carry lone surrogates (`\\ud800`), which would break UTF-8 output later; replace them."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", errors="replace").decode("utf-8")


# ---------------------------------------------------------------- server output


def _events(value, notes: _Notes, max_events: int) -> tuple[RawEvent, ...]:
    events = []
    for item in as_list(value):
        if not isinstance(item, dict):
            notes.wrong("events", "objects")
            continue
        event_id, time = notes.integer(item, "id", "events.id"), notes.date(item, "time", "events.time")
        if event_id is None or time is None:
            notes.add("parse: events: an event without id or time was skipped")
            continue
        message = notes.text(item, "message", "events.message") or ""
        data = tuple(_clip(text) for text in notes.strings(item.get("data"), "events.data")[:MAX_EVENT_DATA])
        events.append(RawEvent(event_id, time, message, data))
    events.sort(key=lambda e: e.time, reverse=True)
    return tuple(events[: max(max_events, 0)])


def _service(value, notes: _Notes) -> tuple[bool, str | None, str | None]:
    value = notes.section(value, "service")
    if value is None:
        return False, None, None
    status = _enum_name(value.get("status"), tuple(STATES), base=1)
    start = _enum_name(value.get("start_type"), tuple(START_MODES), base=0)
    if value.get("status") is not None and status is None:
        notes.wrong("service.status", "a ServiceControllerStatus")
    if value.get("start_type") is not None and start is None:
        notes.wrong("service.start_type", "a ServiceStartMode")
    return True, status, start


def _service_key_start(value, notes: _Notes) -> int | None:
    """The registry key's Start value (0-4, as ServiceStartMode); None when the key was not read."""
    value = notes.section(value, "service_key")
    if value is None:
        return None
    start = notes.integer(value, "start", "service_key.start")
    return start if start is not None and 0 <= start < len(START_MODES) else None


def _culture(value, notes: _Notes) -> RawCulture | None:
    value = notes.section(value, "culture")
    if value is None:
        return None
    texts = {key: notes.text(value, key, f"culture.{key}") or "" for key in ("date", "time", "am", "pm")}
    return RawCulture(texts["date"][:40], texts["time"][:40], texts["am"][:20], texts["pm"][:20])


SCRIPT_STAGES = ("build", "service", "events", "log", "endpoint")


def _per_key(value, notes: _Notes, field: str, keys: tuple[str, ...], valid,
             kind: str) -> tuple[tuple[str, int | float], ...]:
    """`field`'s numbers for the known `keys` only (they become label values), each one `valid`; a wrong one is
    noted as not `kind` and left out."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        notes.wrong(field, "an object")
        return ()
    found = []
    for key in keys:
        number = value.get(key)
        if number is None:
            continue
        if isinstance(number, bool) or not valid(number):
            notes.wrong(f"{field}.{key}", kind)
            continue
        found.append((key, number))
    return tuple(found)


def _stages(value, notes: _Notes) -> tuple[tuple[str, float], ...]:
    """The script's Measure-Command seconds per stage, each a finite number from 0 to a day."""
    found = _per_key(value, notes, "stages", SCRIPT_STAGES,
                     lambda s: isinstance(s, (int, float)) and 0 <= s <= 86400, "seconds")
    return tuple((stage, float(seconds)) for stage, seconds in found)


# The parts the collection script's Fail records errors for, and the most it can meet in one poll.
ERROR_PARTS = ("build", "component_state", "service_key", "service", "events", "log", "winhttp")
MAX_ERROR_COUNT = 1 << 31


def _error_counts(value, notes: _Notes) -> tuple[tuple[str, int], ...]:
    """How many error records the script met per part (it sends the first few of each: review R11)."""
    return _per_key(value, notes, "error_counts", ERROR_PARTS,
                    lambda n: isinstance(n, int) and 0 <= n <= MAX_ERROR_COUNT, "a count")


UTC_OFFSET_MINUTES = range(-12 * 60, 14 * 60 + 1)  # UTC offsets run from -12:00 to +14:00
# A zone changes its offset twice a year, a few (Morocco's Ramadan) four times; the lookback is at most 8760 hours
# (config.MAX_LOOKBACK_HOURS).
MAX_UTC_OFFSETS = 16


def _utc_offsets(value, notes: _Notes) -> tuple[tuple[datetime, int], ...]:
    """The server's UTC offsets over the lookback: the offset at the window's start, then each change with the
    offset after it, as {since: date, minutes: int} objects. All or nothing: a list with an entry of the wrong
    shape, an offset outside -12:00..+14:00, instants not strictly ascending or more than MAX_UTC_OFFSETS entries
    is dropped whole, with a note (a partial list would read lines with a wrong offset); the single current
    offset (utc_offset_minutes) stands in. An entry repeating the offset before it changes nothing and is merged."""
    if value is None:
        return ()
    items = as_list(value)
    if len(items) > MAX_UTC_OFFSETS:
        notes.wrong("utc_offsets", f"at most {MAX_UTC_OFFSETS} offsets")
        return ()
    found: list[tuple[datetime, int]] = []
    last = None  # the instant of the entry before, kept or merged: each must follow it
    for item in items:
        since = parse_ps_date(item.get("since")) if isinstance(item, dict) else None
        minutes = item.get("minutes") if isinstance(item, dict) else None
        if isinstance(minutes, float) and minutes.is_integer():
            minutes = int(minutes)
        if (since is None or not isinstance(minutes, int) or isinstance(minutes, bool)
                or minutes not in UTC_OFFSET_MINUTES or (last is not None and since <= last)):
            notes.wrong("utc_offsets", "{since: date, minutes: -720 to 840} objects, since ascending")
            return ()
        if not found or found[-1][1] != minutes:
            found.append((since, minutes))
        last = since
    return tuple(found)


def _zone(doc: dict, notes: _Notes) -> dict:
    """`utc_offset_minutes` and `utc_offsets` of a script's document (the collection and the diagnose script send
    both)."""
    minutes = notes.integer(doc, "utc_offset_minutes", "utc_offset_minutes")
    if minutes is not None and minutes not in UTC_OFFSET_MINUTES:
        notes.wrong("utc_offset_minutes", "minutes between -720 and 840")
        minutes = None
    return dict(utc_offset_minutes=minutes, utc_offsets=_utc_offsets(doc.get("utc_offsets"), notes))


def parse_utc_offsets(doc: dict) -> tuple[int | None, tuple[tuple[datetime, int], ...], tuple[str, ...]]:
    """(utc_offset_minutes, utc_offsets, `parse:` notes) of a script's JSON document, read as a poll reads them:
    for the diagnose script's, whose log times the field report reads as the poll does (interpret.log_offsets)."""
    notes = _Notes()
    zone = _zone(doc, notes)
    return zone["utc_offset_minutes"], zone["utc_offsets"], tuple(notes.items)


def _logs(value, notes: _Notes, max_log_bytes: int) -> tuple[RawLog, ...]:
    """The newest files first; the tails together keep at most `max_log_bytes` (the newest bytes win). The script
    sends whole lines within that budget; a tail cut here loses its then partial first line."""
    logs, budget = [], max(max_log_bytes, 0)
    for item in as_list(value):
        if not isinstance(item, dict):
            notes.wrong("logs", "objects")
            continue
        text = notes.text(item, "tail", "logs.tail") or ""
        tail = _tail(text, budget)
        if len(tail) < len(text) and "\n" in tail:
            tail = tail[tail.index("\n") + 1 :]
        budget -= _utf8_size(tail)
        logs.append(RawLog(last_write=notes.date(item, "last_write", "logs.last_write"), tail=tail))
    return tuple(logs)


def _endpoints(value, notes: _Notes) -> tuple[RawEndpoint, ...]:
    endpoints = []
    for item in as_list(value)[:4]:
        if not isinstance(item, dict):
            notes.wrong("endpoints", "objects")
            continue
        name = (notes.text(item, "name", "endpoints.name") or "")[:64]
        if any(endpoint.name == name for endpoint in endpoints):  # a second series of the same labels
            notes.wrong("endpoints", "one entry per endpoint")
            continue
        ms = item.get("ms")
        if ms is not None and not (isinstance(ms, (int, float)) and not isinstance(ms, bool) and math.isfinite(ms) and ms >= 0):
            notes.wrong("endpoints.ms", "a non-negative number")
            ms = None
        status = notes.integer(item, "status", "endpoints.status")
        web_status = notes.text(item, "web_status", "endpoints.web_status")
        endpoints.append(RawEndpoint(
            name=name,
            status=status if status is not None and 0 <= status <= 999 else 0,
            duration_seconds=ms / 1000 if ms is not None else None,
            web_status=web_status[:64] if web_status else None,
            revocation_failed=bool(notes.flag(item, "revocation_failed", "endpoints.revocation_failed")),
            proxy=_endpoint_proxy(notes.text(item, "proxy", "endpoints.proxy"), notes),
            proxy_source=notes.choice(item, "proxy_source", "endpoints.proxy_source", PROXY_SOURCES),
            proxy_credentials=bool(notes.flag(item, "proxy_credentials", "endpoints.proxy_credentials")),
        ))
    return tuple(endpoints)


PROXY_SOURCES = ("parameter", "winhttp", "none")


def _endpoint_proxy(value: str | None, notes: _Notes) -> str | None:
    """The proxy the server says its endpoint check used: it becomes a label value, and the WinHTTP proxy is the
    server's to choose, so only a plain proxy URL (no user info) passes; "" is "direct"."""
    if value is None or value == "":
        return value
    url = without_userinfo(value)
    if len(url) > 256 or not is_proxy_url(url):
        notes.wrong("endpoints.proxy", "a proxy URL")
        return None
    return url


def _errors(value, notes: _Notes) -> list[RawError]:
    """Error records; a plain "part: message" string (older scripts) is kept with empty ids."""
    errors = []
    for item in as_list(value)[:MAX_ERRORS]:
        if isinstance(item, str):
            part, _, message = item.partition(":")
            errors.append(RawError(_clean(part.strip()[:32]), "", "", "", _clip(_clean(message.strip()))))
        elif isinstance(item, dict):
            fields = {key: item.get(key) if isinstance(item.get(key), str) else ""
                      for key in ("part", "id", "category", "type", "message", "inner")}
            errors.append(RawError(_clean(fields["part"])[:32], _clip(_clean(fields["id"])), _clean(fields["category"])[:64],
                                   _clean(fields["type"])[:200], _clip(_clean(fields["message"])),
                                   _clean(fields["inner"])[:200]))
        else:
            notes.wrong("errors", "error records")
    return errors


COMPONENTS = ("ServerWideOffline",)  # the components whose registry entries the script sends: the label `component`
REQUESTER = re.compile(r"[A-Za-z][A-Za-z0-9]{0,31}")  # a registry value's name: it becomes the label `requester`
MAX_COMPONENT_STATES = 16  # five requesters are documented (Set-ServerComponentState -Requester)
MAX_COMPONENT_STATE_CHARS = 128


def _component_states(value, notes: _Notes) -> tuple[RawComponentState, ...] | None:
    """The registry entries of the components in COMPONENTS, per requester, raw; None when not read. An entry of
    another shape is left out with a note (its requester would be a label value)."""
    if value is None:
        return None
    found = []
    for item in as_list(value)[:MAX_COMPONENT_STATES]:
        if not isinstance(item, dict):
            notes.wrong("component_states", "objects")
            continue
        component = notes.choice(item, "component", "component_states.component", COMPONENTS)
        requester = notes.text(item, "requester", "component_states.requester")
        text = notes.text(item, "value", "component_states.value")
        if requester is not None and not REQUESTER.fullmatch(requester):
            notes.wrong("component_states.requester", "a requester name")
            requester = None
        if component and requester and text is not None:
            found.append(RawComponentState(component, requester, text[:MAX_COMPONENT_STATE_CHARS]))
    return tuple(found)


BUILD_SOURCES = ("exsetup", "registry")  # where collect_server.ps1 read ExSetup.exe's version: the label `source`


def parse_server_output(stdout: bytes, *, max_events: int = 200, max_log_bytes: int = 1 << 20) -> RawServerFacts:
    """Facts from collect_server.ps1's stdout; keeps the newest `max_events` events and the logs' last bytes."""
    doc = _load_object(stdout, "server")
    notes = _Notes()
    script_errors = _errors(doc.get("errors"), notes)
    queried, status, start = _service(doc.get("service"), notes)
    version = notes.text(doc, "exsetup_version", "exsetup_version")
    folder = notes.flag(doc, "log_folder", "log_folder")
    facts = dict(
        now=notes.date(doc, "now", "now"),
        culture=_culture(doc.get("culture"), notes),
        exsetup_version=version.strip() if version else None,
        build_source=notes.choice(doc, "build_source", "build_source", BUILD_SOURCES),
        edge=bool(notes.flag(doc, "edge", "edge")),
        service_key_start=_service_key_start(doc.get("service_key"), notes),
        service_queried=queried,
        service_status=status,
        service_start_type=start,
        events=_events(doc.get("events"), notes, max_events),
        log_folder=folder,
        logs=_logs(doc.get("logs"), notes, max_log_bytes),
        endpoints=_endpoints(doc.get("endpoints"), notes),
        **_zone(doc, notes),
        stage_seconds=_stages(doc.get("stages"), notes),
        error_counts=_error_counts(doc.get("error_counts"), notes),
        component_states=_component_states(doc.get("component_states"), notes),
    )
    parse_errors = [RawError("parse", "", "", "", _clip(item)) for item in notes.items]
    return RawServerFacts(**facts, errors=tuple((*script_errors, *parse_errors)[:MAX_ERRORS]))


# ---------------------------------------------------------------- organization output


def _proxy(value, notes: _Notes) -> str | None:
    if isinstance(value, dict):  # a System.Uri serialised with its properties
        value = value.get("AbsoluteUri") or value.get("OriginalString")
    if value is not None and not isinstance(value, str):
        notes.wrong("internet_web_proxy", "a string")
        return None
    return without_userinfo(_clean(value) if value else None)  # [string]$null is "" when unset


def _org_server(item: dict, notes: _Notes) -> OrgServerInfo | None:
    name = notes.text(item, "name", "servers.name")
    if not name:
        return None
    if not SERVER_NAME.fullmatch(name):  # it becomes the `server` label and, when discovered, a poll target
        notes.dropped_labels += 1
        return None
    fqdn = notes.text(item, "fqdn", "servers.fqdn")
    if fqdn is not None and not is_host(fqdn):  # a discovered server's address and the host name of its SPN
        notes.wrong("servers.fqdn", "a host name")
        fqdn = None
    roles = notes.text(item, "roles", "servers.roles")
    return OrgServerInfo(
        name=name,
        fqdn=fqdn,
        # ServerRole is a flags enum: [string] of it is "Mailbox", "Edge", "Mailbox, ClientAccess" (Exchange 2013)
        # [string]$null is "": a role not said, as None is
        mailbox_role=None if not (roles or "").strip() else "mailbox" in (r.strip().lower() for r in roles.split(",")),
        admin_display_version=notes.text(item, "admin_display_version", "servers.admin_display_version"),
        mitigations_enabled=notes.flag(item, "mitigations_enabled", "servers.mitigations_enabled"),
        mitigations_applied=notes.label_values(item.get("mitigations_applied"), "servers.mitigations_applied"),
        mitigations_blocked=notes.label_values(item.get("mitigations_blocked"), "servers.mitigations_blocked"),
        mitigations_applied_time=notes.date(item, "mitigations_applied_time", "servers.mitigations_applied_time"),
        data_collection_enabled=notes.flag(item, "data_collection_enabled", "servers.data_collection_enabled"),
        internet_web_proxy=_proxy(item.get("internet_web_proxy"), notes),
    )


def parse_organization_output(stdout: bytes, *, max_servers: int = 10000) -> RawOrganizationFacts:
    """Facts from collect_organization.ps1's stdout; a server entry without a name, or one named (or of an FQDN)
    as an earlier one, is dropped: each would make a second series of the same labels."""
    doc = _load_object(stdout, "organization")
    notes = _Notes()
    items = as_list(doc.get("servers"))
    if len(items) > max_servers:
        raise ParseError("bad_output", f"organization output lists {len(items)} servers, more than the limit {max_servers}")
    servers, seen = [], set()
    for server in (_org_server(i, notes) for i in items if isinstance(i, dict)):
        if server is None:
            continue
        if seen.intersection(server.keys()):  # listed twice (names differ in case only, or one FQDN for two)
            notes.dropped_labels += 1
            continue
        seen.update(server.keys())
        servers.append(server)
    organization = doc.get("organization")
    if organization is not None and not isinstance(organization, dict):
        notes.wrong("organization", "an object")
    enabled = notes.flag(organization, "mitigations_enabled", "organization.mitigations_enabled") if isinstance(organization, dict) else None
    # sent, but of the wrong type: unknown, and said once, by the note just taken (not also as a setting missing)
    unreadable = organization is not None and (not isinstance(organization, dict) or
                                               enabled is None and organization.get("mitigations_enabled") is not None)
    stage, message = _org_error(doc.get("error"))
    return RawOrganizationFacts(mitigations_enabled=enabled, servers=tuple(servers), error_stage=stage, error_message=message,
                                dropped_label_values=notes.dropped_labels, parse_notes=tuple(notes.items),
                                mitigations_enabled_unreadable=unreadable)


def _org_error(value) -> tuple[str | None, str | None]:
    if value is None:
        return None, None
    if isinstance(value, str):
        return None, _clip(_clean(value))
    if isinstance(value, dict):
        stage, message = value.get("stage"), value.get("message")
        return (
            _clean(stage) if isinstance(stage, str) else None,
            _clip(_clean(message)) if isinstance(message, str) else "organization script reported an error without a message",
        )
    return None, "organization script reported an error of an unexpected shape"
