"""Times written with a .NET culture's short-date + long-time pattern (exporter/eems_log.py), read from the
patterns the script reports (the values are those of en-US, de-DE, ja-JP and fr-FR in Windows)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from exporter.eems_log import leading_time_pattern, to_datetime

CULTURES = {  # name -> (ShortDatePattern, LongTimePattern, AMDesignator, PMDesignator)
    "en-US": ("M/d/yyyy", "h:mm:ss tt", "AM", "PM"),
    "de-DE": ("dd.MM.yyyy", "HH:mm:ss", "", ""),
    "ja-JP": ("yyyy/MM/dd", "H:mm:ss", "\u5348\u524d", "\u5348\u5f8c"),
    "fr-FR": ("dd/MM/yyyy", "HH:mm:ss", "", ""),
}


def read(culture: str, line: str) -> datetime | None:
    date_pattern, time_pattern, am, pm = CULTURES[culture]
    pattern = leading_time_pattern(date_pattern, time_pattern, am, pm)
    match = pattern.match(line)
    return to_datetime(match, am, pm) if match else None


@pytest.mark.parametrize(("culture", "line"), [
    ("en-US", "11/26/2026 2:05:09 PM,FetchMitigation,S:LogLevel=Information"),
    ("de-DE", "26.11.2026 14:05:09,FetchMitigation,S:LogLevel=Information"),
    ("ja-JP", "2026/11/26 14:05:09,FetchMitigation,S:LogLevel=Information"),
    ("fr-FR", "26/11/2026 14:05:09,FetchMitigation,S:LogLevel=Information"),
])
def test_each_culture_reads_its_own_time_as_utc(culture, line):
    assert read(culture, line) == datetime(2026, 11, 26, 14, 5, 9, tzinfo=timezone.utc)


def test_a_two_digit_year_is_of_this_century():
    """en-GB style short dates with "yy" (a ShortDatePattern an admin may set) read 26 as 2026."""
    pattern = leading_time_pattern("dd/MM/yy", "HH:mm:ss", "", "")
    match = pattern.match("26/11/26 14:05:09,FetchMitigation,S:LogLevel=Information")
    assert to_datetime(match, "", "") == datetime(2026, 11, 26, 14, 5, 9, tzinfo=timezone.utc)


def test_a_time_pattern_without_seconds_reads_second_zero():
    pattern = leading_time_pattern("M/d/yyyy", "h:mm tt", "AM", "PM")
    match = pattern.match("11/26/2026 2:05 PM,FetchMitigation,S:LogLevel=Information")
    assert to_datetime(match, "AM", "PM") == datetime(2026, 11, 26, 14, 5, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(("clock", "hour"), [("12:00:00 AM", 0), ("12:30:00 PM", 12), ("1:00:00 AM", 1), ("11:59:59 PM", 23)])
def test_twelve_hour_clock_around_midnight_and_noon(clock, hour):
    assert read("en-US", f"1/2/2026 {clock},x").hour == hour


def test_a_line_in_another_shape_does_not_match():
    assert read("de-DE", "2026-11-26T14:05:09.000Z,FetchMitigation") is None
    assert read("en-US", "26.11.2026 14:05:09,FetchMitigation") is None


def test_an_impossible_date_is_none_not_an_error():
    assert read("de-DE", "31.02.2026 14:05:09,x") is None


@pytest.mark.parametrize(("date_pattern", "time_pattern", "am", "pm"), [
    ("dddd, MMMM d, yyyy", "HH:mm:ss", "", ""),  # day and month names: not a number to read
    ("M/d/yyyy", "h:mm:ss tt", "", ""),  # a 12-hour clock without designators
    ("d/d/yyyy", "HH:mm:ss", "", ""),  # one field twice
])
def test_patterns_that_cannot_be_read_give_none(date_pattern, time_pattern, am, pm):
    assert leading_time_pattern(date_pattern, time_pattern, am, pm) is None
