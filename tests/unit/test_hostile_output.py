"""What a hostile (or unusual) Exchange server's output must not do: raise out of the parser or the interpreter
(the poll would fail as internal_error, every time), reach a label unchecked, count as refused when nothing was,
or make two series of the same labels. Each test failed before its fix; its docstring says how. The cost of such
output is measured by tests/system/test_hostile.py and `python bench/hostile.py`.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest

from exporter.catalog import Catalog
from exporter.eems_log import parse_log_line
from exporter.interpret import interpret_server
from exporter.metrics import server_families
from exporter.model import CollectorOutcome, RawCulture, ServerResult
from exporter.parse import clixml_to_text, parse_organization_output, parse_ps_date, parse_server_output

UTC = timezone.utc
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
LOOKBACK = timedelta(hours=24)
FETCH_LINE = ("FetchMitigation,S:LogLevel=Information;S:Message=Fetching mitigations from "
              "https://officeclient.microsoft.com/getexchangemitigations")


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


def server_output(**fields) -> bytes:
    doc = {"schema": 1, "computer": "EX01", "now": f"/Date({NOW_MS})/", "exsetup_version": "15.02.2562.043",
           "build_source": "exsetup", "service": {"status": "Running", "start_type": "Automatic"},
           "log_folder": True}
    doc.update(fields)
    return json.dumps(doc).encode()


def poll(stdout: bytes, catalog: Catalog, **parse_args):
    """What collectors.interpret_output does with a server's stdout."""
    facts = parse_server_output(stdout, **parse_args)
    return interpret_server("EX01", facts, catalog, lookback=LOOKBACK, now=facts.now or NOW, today=NOW.date())


def samples(state) -> list:
    outcome = CollectorOutcome("server", True, 1.0, NOW)
    result = ServerResult("EX01", outcome=outcome, state=state, last_success=NOW)
    return [s for family in server_families(result) for s in family.samples]


# ---------------------------------------------------------------- 1. label values straight from the server


@pytest.mark.parametrize("claimed", ["x" * 100_000 + "\n\u2028", "admin_display_version", "ExSetup"])
def test_build_source_is_one_of_two_words(catalog, claimed):
    """`build_source` is server text; it became exchange_build_info's `source` label unchecked and unbounded
    (docs/security.md: "Other text reaches metrics only as reason classes"), and "admin_display_version" (the
    exporter's own word for a build read from Active Directory) passed for it."""
    facts = parse_server_output(server_output(build_source=claimed))
    assert facts.build_source is None
    assert any(e.message == "parse: build_source: expected exsetup or registry" for e in facts.errors)
    (info,) = [s for s in samples(poll(server_output(build_source=claimed), catalog)) if s.name == "exchange_build_info"]
    assert info.labels["source"] == "unknown"
    assert parse_server_output(server_output(build_source="registry")).build_source == "registry"


# ---------------------------------------------------------------- 2. unexpected exceptions: the poll is internal_error


@pytest.mark.parametrize("culture, line", [
    # a field in both patterns: re.error (redefinition of group name 'year')
    ({"date": "M/d/yyyy", "time": "yyyy H:mm:ss", "am": "", "pm": ""}, "DateTime,Operation,CustomData"),
    # tt in both patterns: re.error (redefinition of group name 'ampm')
    ({"date": "M/d/yyyy tt", "time": "h:mm:ss tt", "am": "AM", "pm": "PM"}, "DateTime,Operation,CustomData"),
    # no year: KeyError 'year2' in to_datetime, outside its try
    ({"date": "M/d", "time": "H:mm:ss", "am": "", "pm": ""}, "11/26 9:00:00," + FETCH_LINE),
    # no hour: KeyError 'hour12' in to_datetime, outside its try
    ({"date": "M/d/yyyy", "time": "mm:ss", "am": "", "pm": ""}, "11/26/2026 00:00," + FETCH_LINE),
])
def test_server_culture_patterns_never_make_the_log_reader_raise(catalog, culture, line):
    """parse_log_line "Never raises", but a field in both patterns raised re.error, and a pattern without a year
    or an hour a KeyError: a culture whose patterns it cannot read gives no time (as its other refusals do)."""
    record = parse_log_line(line, RawCulture(culture["date"], culture["time"], culture["am"], culture["pm"]))
    assert record is None or record.time is None


@pytest.mark.parametrize("culture, line", [
    ({"date": "M/d/yyyy", "time": "yyyy H:mm:ss", "am": "", "pm": ""}, "DateTime,Operation,CustomData"),
    ({"date": "M/d", "time": "H:mm:ss", "am": "", "pm": ""}, "11/26 9:00:00," + FETCH_LINE),
])
def test_server_culture_patterns_do_not_fail_the_poll(catalog, culture, line):
    assert poll(server_output(culture=culture, logs=[{"tail": line + "\n"}]), catalog).eems is not None


@pytest.mark.parametrize("fields", [
    {"now": "9999-12-31T23:00:00Z"},
    {"now": "0001-01-01T00:00:00Z"},
    {"utc_offset_minutes": 600, "culture": {"date": "M/d/yyyy", "time": "h:mm:ss tt", "am": "AM", "pm": "PM"},
     "logs": [{"tail": "1/1/0001 1:00:00 AM," + FETCH_LINE + "\n"}]},
    {"utc_offset_minutes": 600, "culture": {"date": "M/d/yyyy", "time": "h:mm:ss tt", "am": "AM", "pm": "PM"},
     "logs": [{"last_write": "/Date(-62135596800000)/", "tail": "11/26/2026 9:00:00 AM," + FETCH_LINE + "\n"}]},
])
def test_dates_parse_accepts_do_not_overflow_in_interpretation(catalog, fields):
    """parse_ps_date accepted years 1 and 9999 (.NET's DateTime.MinValue and MaxValue), and the log reader a
    culture time of year 1; interpret then added or subtracted its tolerances and raised OverflowError."""
    assert poll(server_output(**fields), catalog).eems is not None


@pytest.mark.parametrize("value", ["/Date(-62135596800000)/", "0001-01-01T00:00:00", "9999-12-31T23:59:59Z",
                                   "0999-12-31T00:00:00Z", "9000-01-01T00:00:00Z"])
def test_dates_outside_the_plausible_years_are_no_dates(value):
    assert parse_ps_date(value) is None


def test_the_plausible_years_are_dates():
    assert parse_ps_date("1000-01-01T00:00:00Z") == datetime(1000, 1, 1, tzinfo=UTC)
    assert parse_ps_date("8999-12-31T23:59:59Z") == datetime(8999, 12, 31, 23, 59, 59, tzinfo=UTC)


# ---------------------------------------------------------------- 3. invalid UTF-8 on the exporter's pages


def test_clixml_error_text_has_no_lone_surrogates():
    """`_xD800_` in a CLIXML record decoded to a lone surrogate; it reached outcome.error_message and the
    /server page's `.encode()` raised UnicodeEncodeError. A pair of escapes is still one character."""
    stderr = b'#< CLIXML\r\n<Objs Version="1.1.0.1"><S S="Error">boom _xD800_ here</S></Objs>'
    assert clixml_to_text(stderr) == "boom \ufffd here"
    pair = b'#< CLIXML\r\n<Objs Version="1.1.0.1"><S S="Error">_xD83D__xDE00_</S></Objs>'
    assert clixml_to_text(pair) == "\U0001F600"


def test_server_page_renders_after_a_script_failure_with_an_escaped_surrogate():
    from exporter.collectors import failed, script_failure
    from exporter.web import pages

    failure = script_failure(1, b'#< CLIXML\r\n<Objs><S S="Error">boom _xD800_ here</S></Objs>')
    result = ServerResult("EX01", outcome=failed("server", time.monotonic(), failure))
    pages.server(pages.Row(result, ()), pages.timings(result))


# ---------------------------------------------------------------- 4. a false signal on a healthy organization


def test_empty_mitigation_lists_are_not_dropped_label_values():
    """5.1 writes an empty MultiValuedProperty as [null] (test_parse's real empty shapes): nothing was refused,
    yet each list counted one dropped label value in exchange_collector_dropped_label_values."""
    doc = {"schema": 1, "organization": {"mitigations_enabled": True},
           "servers": [{"name": "EX01", "mitigations_applied": [None], "mitigations_blocked": [None]}]}
    assert parse_organization_output(json.dumps(doc).encode()).dropped_label_values == 0


# ---------------------------------------------------------------- 5. duplicate series


def test_one_series_per_endpoint(catalog):
    """Two entries for the same endpoint gave two samples of one series with conflicting values; the first is
    kept, and the second is a parse note."""
    endpoints = [{"name": "GetExchangeMitigations", "status": 200, "ms": 1},
                 {"name": "GetExchangeMitigations", "status": 0, "ms": 1, "web_status": "ConnectFailure"}]
    facts = parse_server_output(server_output(endpoints=endpoints))
    assert [e.status for e in facts.endpoints] == [200]
    assert any(e.message == "parse: endpoints: expected one entry per endpoint" for e in facts.errors)
    state = poll(server_output(endpoints=endpoints), catalog)
    keys = [(s.name, tuple(sorted(s.labels.items()))) for s in samples(state)]
    assert len(keys) == len(set(keys)), [k for k in keys if keys.count(k) > 1]
