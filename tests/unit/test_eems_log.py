"""The EEMS texts the exporter recognises: fetch-error classes of 1008 events, organization-collector errors, and
the shapes of an EEMS log line (verbatim texts from docs/reference/eems-facts.md, shared with test_interpret)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter import eems_log
from exporter.eems_log import (
    CHECK_START,
    FETCH_ERROR_REASONS,
    LogRecord,
    classify_fetch_error,
    classify_organization_error,
    parse_log_line,
)

from .test_interpret import (
    EN_US,
    FETCH_LINE,
    GRANIKOS_CYCLE,
    GRANIKOS_SIGNING,
    JAN_2025_1008,
    JUNE_2026_1008,
    NOW,
    SIGNING_1008,
    TLS_1008,
    UNTRUSTED_LINE,
    stamp,
)


@pytest.mark.parametrize(
    "text, reason",
    [
        (JAN_2025_1008, "other"),
        (TLS_1008, "tls_validation"),
        (JUNE_2026_1008, "unknown_issuer"),
        (SIGNING_1008, "signature_invalid"),
        ("Connection attempted against untrusted endpoint", "untrusted_endpoint"),
        ("TLS certificate or its chain validation failed", "tls_validation"),
        ("", "other"),
        # two known phrases: the reason listed first wins, wherever its phrase stands in the text
        ("The remote certificate is invalid: Connection attempted against untrusted endpoint", "untrusted_endpoint"),
        ("signing cert is invalid or not from microsoft; TLS certificate or its chain validation failed", "tls_validation"),
    ],
)
def test_classify_fetch_error(text, reason):
    assert classify_fetch_error(text) == reason


def test_fetch_error_reasons_order():
    assert FETCH_ERROR_REASONS == ("untrusted_endpoint", "unknown_issuer", "tls_validation", "signature_invalid", "other")


@pytest.mark.parametrize(
    "message, reason",
    [
        ("Active Directory operation failed on dc01.contoso.com. The supplied credential is invalid.", "double_hop"),
        ("Could not find any available Domain Controller.", "double_hop"),
        ("The LDAP server is unavailable.", "double_hop"),
        ("A local error occurred.", "double_hop"),
        ("Kerberos delegation is not configured", "double_hop"),
        ("No snap-ins have been registered for Windows PowerShell version 5.", "script_failed"),
        ("The term 'Get-OrganizationConfig' is not recognized", "script_failed"),
    ],
)
def test_classify_organization_error(message, reason):
    assert classify_organization_error(message) == reason


def test_log_line_shapes():
    quoted = parse_log_line(GRANIKOS_SIGNING)
    assert (quoted.operation, quoted.level, quoted.time) == ("FetchMitigation", "Error", None)
    assert quoted.message.endswith("Response xml's signing cert is invalid or not from microsoft")
    timed = parse_log_line(stamp(NOW, FETCH_LINE))
    assert timed.time == NOW and timed.is_check_start and not timed.is_problem
    error = parse_log_line(GRANIKOS_CYCLE[-1])
    assert error.is_problem and error.message == "Exception encountered while fetching mitigations : One or more errors occurred."
    csv_quoted = parse_log_line('2026-11-26T10:00:00Z,FetchMitigation,"S:LogLevel=Warning;S:Message=a, ""b"""')
    assert (csv_quoted.level, csv_quoted.message) == ("Warning", 'a, "b"')
    assert parse_log_line("#Fields: DateTime,Operation,CustomData") is None
    assert parse_log_line("   ") is None
    assert parse_log_line("partial line without shape").time is None


def test_a_message_keeps_its_semicolons_and_loses_its_quotes():
    """A value runs on over ';' until the next `S:Key=`; a value quoted on its own is unquoted; a quoted pair may
    end with ';'. What the classification reads is the whole message."""
    head = "2026-11-26T10:00:00Z,FetchMitigation,S:LogLevel=Warning;"
    run_on = parse_log_line(head + "S:Message=Proxy failed;Connection attempted against untrusted endpoint;S:Source=X")
    assert run_on.message == "Proxy failed;Connection attempted against untrusted endpoint"
    quoted_value = parse_log_line(head + "S:Message='TLS certificate or its chain validation failed';S:Source=X")
    assert quoted_value.message == "TLS certificate or its chain validation failed"
    ends_in_semicolon = parse_log_line(head + "'S:Message=Mitigation M1; applied;';S:Source=X")
    assert ends_in_semicolon.message == "Mitigation M1; applied;"
    quoted_first = parse_log_line("2026-11-26T10:00:00Z,FetchMitigation,'S:Message=Connection attempted against "
                                  "untrusted endpoint';S:LogLevel=Warning")
    assert (quoted_first.level, quoted_first.message) == ("Warning", "Connection attempted against untrusted endpoint")
    assert parse_log_line(head + "S:Message=''").message == ""
    assert parse_log_line(head + "S:Message='").message == "'"


def test_an_iso_time_without_a_zone_is_zoneless_and_a_bom_before_a_space_is_skipped():
    """Zoneless ISO times are placed by interpret (UTC or the server's zone), as culture times are."""
    local = parse_log_line("2026-11-26T10:00:00,FetchMitigation,S:LogLevel=Information;S:Message=x")
    assert local.time == NOW.replace(hour=10) and local.zoned is False
    assert parse_log_line("2026-11-26T10:00:00Z,FetchMitigation,S:LogLevel=Information;S:Message=x").zoned is True
    assert parse_log_line("\ufeff 2026-11-26T10:00:00Z,FetchMitigation,S:Message=x").time == NOW.replace(hour=10)


def test_an_unterminated_quote_runs_to_the_end_of_the_line():
    """A tail may end inside a quoted value (the file was read while EEMS wrote the line): the rest is the value."""
    for line in ["2026-11-26T10:00:00Z,FetchMitigation,S:LogLevel=Warning;'S:Message=Connection attempted against "
                 "untrusted endpoint", '2026-11-26T10:00:00Z,FetchMitigation,"S:LogLevel=Warning;S:Message=Connection '
                 "attempted against untrusted endpoint"]:
        record = parse_log_line(line)
        assert (record.level, record.message) == ("Warning", "Connection attempted against untrusted endpoint")


# ---------------------------------------------------------------- the fast path agrees with the general parser

# Characters that change how a line reads: separators, both quotes, whitespace str.strip() removes (also the
# non-ASCII ones), a BOM, and letters whose lowercase differs in length or script; and pieces of custom data.
_TRICKY = [*";,'\" \t\u00a0\u2003\x1c\ufeff\u0130\u212a\u00e9:=#", "S:", "S:Message=", ";S:Message=", ";S:Source=",
           "''", '""']


def _text(letters: str, max_size: int):
    return st.lists(st.sampled_from([*_TRICKY, *letters]), max_size=max_size).map("".join)


_word = _text("abcXYZ09.-_", 6)
_value = _text("abcXYZ09 .-_/", 20) | st.sampled_from(
    ["Fetching mitigations from https://officeclient.microsoft.com/getexchangemitigations",
     "Exception encountered while fetching mitigations : Response xml's leaf certificate is from unknown issuer"])
_time = st.sampled_from([
    "2026-11-26T10:00:00Z", "2026-11-26T10:00:00.1234567Z", "2026-11-26T10:00:00.123Z", "2026-11-26 10:00:00Z",
    "2026-11-26T10:00:00+02:00", "2026-11-26T10:00:00.5-0130", "2026-11-26T10:00:00", "2026-11-26T10:00:00z",
    "2026-13-26T10:00:00Z", "2026-02-30T10:00:00.000Z", "0000-01-01T00:00:00Z", "9999-12-31T23:59:59.9999999Z",
    "11/26/2026 10:00:00 AM", "26.11.2026 22:00:00", "", "DateTime",
]) | st.from_regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,8})?Z?", fullmatch=True)
_pair = st.builds(lambda key, value, quote: f"{quote}S:{key}={value}{quote}",
                  st.sampled_from(["LogLevel", "Message", "Source", "message", "Other", "Log Level"]),
                  _value, st.sampled_from(["", "", "'", '"']))
_custom = st.lists(_pair, max_size=4).map(";".join) | _value


def _csv_quoted(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


_shaped = st.builds(
    lambda prefix, time, operation, custom, csv, suffix: (
        f"{prefix}{time},{operation},{_csv_quoted(custom) if csv else custom}{suffix}"),
    st.sampled_from(["", "", " ", "\ufeff", "\ufeff "]), _time,
    st.sampled_from(["FetchMitigation", "DiagnosticData", "Service", "S", "9x", ""]) | _word,
    _custom, st.booleans(), st.sampled_from(["", "", " ", "\t", ";", ",x"]))
# Lines of exactly the fast path's shape, then the same with a piece inserted anywhere or a pair appended.
_common = st.from_regex(eems_log._COMMON_LINE, fullmatch=True) | st.builds(
    lambda when, line: when.isoformat(timespec="seconds")[:19] + line[19:],  # a possible date, mostly
    st.datetimes(), st.from_regex(eems_log._COMMON_LINE, fullmatch=True))
_near_common = st.builds(lambda line, at, piece: line[:at] + piece + line[at:],
                         _common, st.integers(0, 200), st.sampled_from(_TRICKY)) | st.builds(
                         lambda line, pair: f"{line};{pair}", _common, _pair)
_culture = st.none() | st.just(EN_US)


@settings(max_examples=1000, deadline=None, database=None)
@given(_shaped | _common | _near_common | st.text(max_size=80), _culture)
def test_fast_path_reads_a_line_as_the_general_parser_does(line, culture):
    fast, general = parse_log_line(line, culture), eems_log._parse_any_line(line, culture)
    assert fast == general and repr(fast) == repr(general)  # repr: the time's zone object too


def test_eems_lines_take_the_fast_path():
    """The equivalence above is only worth its cost if EEMS's own lines are of the fast shape."""
    for body in [FETCH_LINE, UNTRUSTED_LINE, "FetchMitigation," + GRANIKOS_CYCLE[-1]]:
        assert eems_log._COMMON_LINE.fullmatch(stamp(NOW, body))


@given(_text("fetching mitigations from FETCH\u0130NG", 20)
       .map(lambda tail: "Fetching mitigations from"[: len(tail) % 26] + tail))
def test_check_start_reads_the_lowered_message(message):
    record = LogRecord(None, None, None, message)
    assert record.is_check_start == message.lower().startswith(CHECK_START)
