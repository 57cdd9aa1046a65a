"""Read a time written with a .NET culture's short-date + long-time pattern, e.g. "6/30/2021 10:03:57 AM".

Some Exchange 2016+ logs write `DateTime.ToString()` (the server culture's ShortDatePattern, a space,
LongTimePattern) instead of ISO 8601. The script reports the culture's patterns, so any culture is read
from its own definition instead of a table of cultures we would have to guess. The time zone of such a
time is not written; it is taken as UTC like the ISO times of the same log framework (a guess, listed in
docs/alerts.md "What the exporter assumes").
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from functools import lru_cache

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
            name = re.search(r"\?P<(\w+)>", _TOKENS[token]).group(1)
            if f"(?P<{name}>" in "".join(out):
                return None  # a pattern naming a field twice cannot be read
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
    return re.compile(rf"\s*{date_part}\s+{time_part}\s*,")


def to_datetime(match: re.Match, am: str, pm: str) -> datetime | None:
    """The UTC time of a match of `leading_time_pattern`; None for an impossible date."""
    groups = match.groupdict()
    year = int(groups["year"]) if groups.get("year") else 2000 + int(groups["year2"])
    if groups.get("hour") is not None:
        hour = int(groups["hour"])
    else:
        hour = int(groups["hour12"]) % 12
        if groups.get("ampm") and groups["ampm"] == pm and pm != am:
            hour += 12
    try:
        return datetime(year, int(groups["month"]), int(groups["day"]), hour, int(groups["minute"]),
                        int(groups.get("second") or 0), tzinfo=timezone.utc)
    except (ValueError, TypeError, KeyError):
        return None
