"""Hostile-but-plausible server and organization outputs through the whole path (parse -> interpret -> metrics text
in both formats, and the HTML pages): no poll ends as internal_error, every body parses, no series appears twice,
every page encodes. The property tests mutate real captures (tests/fixtures/real) and the demo scenario's shapes;
the plain tests below them are the failures they found, minimised (each failed before its fix)."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families as prom_parse

from exporter.catalog import Catalog
from exporter.collectors import _attempt, interpret_output
from exporter.config import PollConfig
from exporter.metrics import OPENMETRICS, SelfStatus, _encode, _format, organization_families, probe_body
from exporter.model import CollectorOutcome, OrganizationResult, OrgServerInfo, ServerResult
from exporter.parse import ParseError, parse_organization_output
from exporter.runtime import Target
from exporter.web import pages

from .test_hostile_output import server_output

UTC = timezone.utc
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
FIXTURES = Path(__file__).parent.parent / "fixtures" / "real"
SETTINGS = PollConfig(background=True, interval=300, timeout=60, concurrency=4, jitter=0, failing_share=0.5,
                      lookback=86400, max_events=50, log_tail_bytes=64 << 10, check_endpoint=True,
                      endpoint_timeout=10, endpoint_proxy_default_credentials=False)
TARGET = Target("EX01", "127.0.0.1", 5985, "http", "default", "", False, "ex01.contoso.com")
OM = "application/openmetrics-text; version=1.0.0; charset=utf-8"

_CATALOG = Catalog.load()


def _seeds(collector: str) -> list[dict]:
    docs = []
    for path in sorted(FIXTURES.glob("*.yaml")):
        fixture = yaml.safe_load(path.read_text(encoding="utf-8"))
        if fixture.get("collector") == collector:
            docs.append(json.loads(fixture["output"].strip()))
    return docs


SERVER_SEEDS = _seeds("server") + [{
    # the demo scenario's shape (simulator/windows.py), trimmed: a log with a check, events, endpoints, stages
    "schema": 1, "computer": "EX-SE01", "now": "\\/Date(1796646896836)\\/", "utc_offset_minutes": 0, "utc_offsets": [
        {"since": "/Date(1796560496836)/", "minutes": 0}],
    "culture": {"name": "en-US", "ui": "en-US", "date": "M/d/yyyy", "time": "h:mm:ss tt", "am": "AM", "pm": "PM"},
    "exsetup_version": "15.02.2562.053", "build_source": "exsetup", "edge": False, "service_key": {"start": 2},
    "service": {"status": "Running", "start_type": "Automatic"},
    "events": [{"id": 1008, "time": "/Date(1796640000000)/",
                "message": "Exception encountered while fetching mitigations.", "data": ["x"]},
               {"id": 1005, "time": "/Date(1796630000000)/", "message": "ok"}],
    "log_folder": True,
    "logs": [{"name": "MitigationService_2026120712-1.LOG", "last_write": "/Date(1796646523299)/",
              "tail": "DateTime,EventName,CustomData\r\n#Software: Microsoft Exchange Server\r\n"
                      "2026-12-07T12:28:41.619Z,FetchMitigation,S:LogLevel=Information;S:Message=Fetching mitigations"
                      " from https://officeclient.microsoft.com/getexchangemitigations\r\n"
                      "2026-12-07T12:28:42.877Z,FetchMitigation,S:LogLevel=Warning;S:Message=Connection attempted "
                      "against untrusted endpoint\r\n12/7/2026 1:00:00 PM,FetchMitigation,S:LogLevel=Error;"
                      "S:Message=Exception encountered while fetching mitigations"}],
    "endpoints": [{"name": "GetExchangeMitigations", "status": 200, "ms": 120, "proxy": "", "proxy_source": "none"},
                  {"name": "GetExchangeConfig", "status": 0, "ms": 3, "web_status": "TrustFailure",
                   "revocation_failed": True, "proxy": "http://proxy.contoso.com:8080", "proxy_source": "winhttp"}],
    "stages": {"build": 0.1, "service": 0.2, "events": 0.3, "log": 0.1, "endpoint": 1.5},
    "error_counts": {"events": 3},
    "errors": [{"part": "events", "id": "NoMatchingEventsFound,x", "category": "ObjectNotFound",
                "type": "System.Exception", "message": "none"}],
}]
ORG_SEEDS = _seeds("organization")

# ---------------------------------------------------------------- hostile values

nasty_chars = st.sampled_from(["\x00", "\n", "\r", "\u2028", "\u2029", "\u202e", "\u200f", "\ud800", "\udfff",
                               "\ufeff", "\\", '"', "'", "<", "&", "{", "}", "=", ",", ";", "#", " ", "\t", "é",
                               "\U0001F600", "İ", "\x85", "S:", "_x0041_", "\x1b[31m", "\u0130", "ß"])
nasty_text = st.lists(nasty_chars | st.text(max_size=8), max_size=12).map("".join)
numbers = st.sampled_from([0, -1, 1, 2**31, 2**63, -(2**63), 10**30, 1e308, -1e308, 0.5, -0.0, 1e-300, 4, 200,
                           407, 1005, 1006, 1008, 86400, 86401, 840, -720, 841])
dates = st.sampled_from(["/Date(-62135596800000)/", "/Date(253402300799999)/", "/Date(999999999999999)/",
                         "/Date(-999999999999999)/", "\\/Date(1764158400000+0100)\\/", "/Date(0)/",
                         "0001-01-01T00:00:00", "9999-12-31T23:59:59.9999999Z", "1000-01-01T00:00:00Z",
                         "8999-12-31T23:59:59Z", "2026-11-26T12:00:00+14:00", "2026-11-26T12:00:00-12:00",
                         "1000-01-01T00:00:00+14:00", "8999-12-31T23:59:59-12:00", "2026-02-30T00:00:00Z",
                         "1970-01-01T00:00:00Z", {"value": "/Date(1764158400000)/", "DateTime": "x"}])
scalars = st.none() | st.booleans() | numbers | st.integers() | st.floats(allow_nan=False) | nasty_text | dates
hostile = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(nasty_text | st.sampled_from(
    ["value", "Count", "name", "id", "time", "tail", "status", "start"]), c, max_size=4), max_leaves=12)

culture = st.fixed_dictionaries({
    "date": st.sampled_from(["M/d/yyyy", "dd.MM.yyyy", "yyyy-MM-dd", "d/M/yy", "yy/M/d", "dd/MM/yyyy tt",
                             "'year' yyyy M d", "yyyy'年'M'月'd'日'", "M/d/yyyy H", "d", ""]) | nasty_text,
    "time": st.sampled_from(["h:mm:ss tt", "HH:mm:ss", "tt h:mm:ss", "H.mm.ss", "hh:mm:ss t", "H:mm", "mm:ss"])
    | nasty_text,
    "am": st.sampled_from(["AM", "", "午前", "vorm.", "AM|PM", "(", "a.m."]) | nasty_text,
    "pm": st.sampled_from(["PM", "", "午後", "nachm.", "AM", ")", "p.m."]) | nasty_text,
})
log_line = st.sampled_from([
    "2026-11-26T10:00:00.000Z,FetchMitigation,S:LogLevel=Information;S:Message=Fetching mitigations from https://x",
    "2026-11-26T10:00:01Z,FetchMitigation,S:LogLevel=Warning;S:Message=Connection attempted against untrusted endpoint",
    "11/26/2026 10:00:02 AM,FetchMitigation,S:LogLevel=Error;'S:Message=fetching mitigations: xml''s signing cert is "
    "invalid or not from microsoft'",
    "26.11.2026 10:00:03,FetchMitigation,\"S:LogLevel=Error;S:Message=\"\"TLS certificate or its chain validation failed\"\"\"",
    "0001-01-01T00:00:00Z,X,S:LogLevel=Error;S:Message=fetching mitigations",
    "9999-12-31T23:59:59Z,X,S:LogLevel=Error;S:Message=fetching mitigations",
    "1/1/0001 12:00:00 AM,X,S:LogLevel=Error;S:Message=fetching mitigations",
    "12/31/9999 11:59:59 PM,X,S:LogLevel=Warning;S:Message=fetching mitigations",
    "#Fields: DateTime,EventName,CustomData", "DateTime,EventName,CustomData", "", ",,,", "S:", "S:LogLevel=",
]) | nasty_text
log_tail = st.lists(log_line, max_size=8).flatmap(
    lambda lines: st.sampled_from(["\n", "\r\n", "\r", "\u2028", "\x1c"]).map(lambda sep: sep.join(lines)))
event = st.fixed_dictionaries({"id": st.sampled_from([1005, 1006, 1008, 1008.0, 0, -1, 2**64]) | scalars,
                               "time": dates | scalars,
                               "message": st.sampled_from(["Exception encountered while fetching mitigations.",
                                                           "untrusted endpoint fetching mitigations"]) | scalars},
                              optional={"data": st.lists(nasty_text | scalars, max_size=20) | hostile})

FIELD_VALUES = {
    "now": dates | hostile,
    "culture": culture | hostile,
    "exsetup_version": st.sampled_from(["15.02.2562.053", "15.1.2507.6", "15.0.1497.2", "15.2.999999999.999999999",
                                        "15.2.0.0", "15.01.2375.007", " 15.2.1544.4\n", "16.0.1.1", "15.2.1544"])
    | nasty_text | hostile,
    "build_source": st.sampled_from(["exsetup", "registry"]) | hostile,
    "edge": hostile,
    "service_key": st.fixed_dictionaries({"start": numbers | hostile}) | hostile,
    "service": st.fixed_dictionaries({"status": st.sampled_from(["Running", "stop pending", 1, 7, 8, 0]) | hostile,
                                      "start_type": st.sampled_from(["Automatic", 4, 5, -1]) | hostile}) | hostile,
    "events": st.lists(event, max_size=10) | event | hostile,
    "log_folder": hostile,
    "logs": st.lists(st.fixed_dictionaries({"tail": log_tail | hostile, "last_write": dates | hostile}), max_size=4)
    | hostile,
    "endpoints": st.lists(st.fixed_dictionaries({
        "name": st.sampled_from(["GetExchangeMitigations", "GetExchangeConfig"]) | nasty_text,
        "status": numbers | hostile, "ms": numbers | hostile,
        "web_status": st.sampled_from(["TrustFailure", "Timeout", "ConnectFailure"]) | hostile,
        "revocation_failed": hostile,
        "proxy": st.sampled_from(["", "http://p:8080", "http://u:p@p:8080", "https://[::1]:443/", "http://p:0"])
        | hostile,
        "proxy_source": st.sampled_from(["parameter", "winhttp", "none"]) | hostile,
        "proxy_credentials": hostile}), max_size=5) | hostile,
    "errors": st.lists(st.fixed_dictionaries({}, optional={
        "part": st.sampled_from(["build", "service", "service_key", "events", "log", "winhttp", "parse", "Log",
                                 "a" * 40]) | nasty_text,
        "id": st.sampled_from(["PathNotFound,x", "NoMatchingEventsFound", "ConstrainedLanguage", "NoServiceFound"])
        | nasty_text,
        "category": st.sampled_from(["PermissionDenied", "ObjectNotFound"]) | nasty_text,
        "type": st.sampled_from(["System.UnauthorizedAccessException", "System.Diagnostics.Eventing.Reader.X"])
        | nasty_text,
        "message": nasty_text}) | nasty_text | hostile, max_size=8) | hostile,
    "utc_offset_minutes": numbers | hostile,
    "utc_offsets": st.lists(st.fixed_dictionaries({"since": dates | hostile, "minutes": numbers | hostile}),
                            max_size=20) | hostile,
    "stages": st.dictionaries(st.sampled_from(["build", "service", "events", "log", "endpoint", "x"]),
                              numbers | hostile) | hostile,
    "error_counts": st.dictionaries(st.sampled_from(["build", "service_key", "service", "events", "log", "winhttp"]),
                                    numbers | hostile) | hostile,
    "schema": st.sampled_from([1, 1.0, True, "1", 2]),
}


@st.composite
def server_doc(draw):
    doc = dict(draw(st.sampled_from(SERVER_SEEDS)))
    for key in draw(st.lists(st.sampled_from(sorted(FIELD_VALUES)), max_size=6, unique=True)):
        if draw(st.booleans()) or key not in doc:
            doc[key] = draw(FIELD_VALUES[key])
        else:
            del doc[key]
    return doc


def _dump(doc, draw_ascii: bool) -> bytes:
    text = json.dumps(doc, ensure_ascii=True) if draw_ascii else json.dumps(doc, ensure_ascii=False)
    return text.encode("utf-8", "surrogatepass")


def check_text(body: bytes, openmetrics: bool) -> None:
    text = body.decode("utf-8")  # strict
    families = list(om_parse(text) if openmetrics else prom_parse(text))
    keys = Counter((s.name, tuple(sorted(s.labels.items()))) for f in families for s in f.samples)
    dupes = [k for k, n in keys.items() if n > 1]
    assert not dupes, dupes


def check_server_result(result: ServerResult) -> None:
    for accept, om in (("text/plain", False), (OM, True)):
        body, ctype = probe_body(result, accept)
        assert ctype.startswith(OPENMETRICS) == om
        check_text(body, om)
    row = pages.Row(result, ())
    pages.server(row, pages.timings(result)).decode("utf-8")
    pages.row_html(row, lambda s: s).render(NOW).encode("utf-8")
    pages.probe_debug(result, row, b"").decode("utf-8")


def run_server(stdout: bytes, known: OrgServerInfo | None = None) -> ServerResult:
    started = time.monotonic()
    state, outcome = _attempt("server", "poll", started,
                              lambda: interpret_output(TARGET, stdout, SETTINGS, _CATALOG, known)[1], lambda: [])
    assert outcome.error_reason != "internal_error", outcome
    assert time.monotonic() - started < 5
    return ServerResult("EX01", outcome=outcome, state=state, last_success=outcome.finished if state else None)


FUZZ = settings(max_examples=100, deadline=None,
                database=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(server_doc(), st.booleans(),
       st.none() | st.sampled_from(["Version 15.2 (Build 1544.36)", "Version 15.1 (Build 999999999.1)", "x" * 5000,
                                    "Version 16.0 (Build 1.1)", "\ud800"]) | nasty_text)
def test_property_server_output_through_the_whole_path(doc, ascii_json, admin_display_version):
    known = None if admin_display_version is None else OrgServerInfo(
        "EX01", None, True, admin_display_version, None, (), (), None, None, None)
    check_server_result(run_server(_dump(doc, ascii_json), known))


@st.composite
def org_doc(draw):
    doc = json.loads(json.dumps(draw(st.sampled_from(ORG_SEEDS))))
    servers = doc.get("servers")
    servers = servers if isinstance(servers, list) else [servers] if servers else []
    for _ in range(draw(st.integers(0, 3))):
        servers.append(dict(draw(st.sampled_from(servers))) if servers and draw(st.booleans()) else {"name": "EX09"})
    for server in servers:
        for key in draw(st.lists(st.sampled_from(["name", "fqdn", "admin_display_version", "mitigations_enabled",
                                                  "mitigations_applied", "mitigations_blocked",
                                                  "mitigations_applied_time", "data_collection_enabled",
                                                  "internet_web_proxy"]), max_size=3, unique=True)):
            server[key] = draw(st.sampled_from(["EX01", "ex01", "EX01.contoso.com", "PING1.1", "M1.1", ["M1", "M1"],
                                                ["M1", "m1"], ["EX1", None], [None]]) | hostile)
    doc["servers"] = servers
    if draw(st.booleans()):
        doc["organization"] = draw(hostile)
    return doc


@FUZZ
@given(org_doc(), st.sampled_from([{}, {"ex01": "EX01"}, {"ex01.contoso.com": "ex01.contoso.com", "ex01": "EX01"}]))
def test_property_organization_output_through_the_whole_path(doc, server_names):
    try:
        parse_organization_output(json.dumps(doc).encode(), max_servers=100)
    except ParseError:
        return
    for accept, om in (("text/plain", False), (OM, True)):
        check_text(_org_body(doc, accept, server_names), om)


# ---------------------------------------------------------------- minimised findings


def _org_body(doc: dict, accept: str = "text/plain", server_names: dict[str, str] | None = None) -> bytes:
    """The organization's series, as /metrics encodes them, for the organization output `doc`."""
    facts = parse_organization_output(json.dumps(doc).encode(), max_servers=100)
    org = OrganizationResult("Contoso", outcome=CollectorOutcome("organization", True, 1.0, NOW), facts=facts,
                             last_success=NOW)
    names = server_names or {}
    status = SelfStatus(NOW.date(), 300, True, 0, server_names=frozenset(names), shard_server_names=names)
    return _encode([_format(organization_families(org, status))], None, accept)[0]


def _org_doc(servers: list[dict]) -> dict:
    return {"schema": 1, "organization": {"mitigations_enabled": True}, "servers": servers}


@pytest.mark.parametrize("field", ["mitigations_applied", "mitigations_blocked"])
def test_a_mitigation_id_listed_twice_makes_one_series(field):
    """A server listing one mitigation ID twice (`["M1", "M1"]`) got two samples of
    exchange_eems_mitigation_applied{mitigation="M1",server="EX01"}: a duplicate series."""
    check_text(_org_body(_org_doc([{"name": "EX01", field: ["M1", "M1"]}])), openmetrics=False)


def test_two_error_records_of_parts_not_shaped_like_a_part_make_one_series():
    """Error records whose parts are not of a part's shape ("X", "Y": the server's text) were two partial failures
    for interpret (`_unique` keyed on the raw part), but metrics wrote both as part="other": two samples of
    exchange_collector_partial_failure{collector="server",part="other",reason="other",server="EX01"}."""
    result = run_server(server_output(errors=["X: a", "Y: b"]))
    check_text(probe_body(result, "text/plain")[0], openmetrics=False)


def test_a_lone_surrogate_in_a_plain_error_records_part_does_not_break_the_pages():
    """An error record written as a plain string ("part: message") kept its part unclean (parse._errors cleaned
    the message only): `"\\ud800"` became a partial failure of part "\\ud800", and the /server page, the fleet
    page `/` (every server's row) and /probe?debug=true raised UnicodeEncodeError when encoding it."""
    result = run_server(server_output(errors=["\ud800: boom"]))
    assert result.outcome.success
    row = pages.Row(result, ())
    pages.server(row, pages.timings(result))
    pages.fleet([(row, pages.row_html(row, lambda s: s))], [], None, 1, "0", "EX01", lambda s: s)
    pages.probe_debug(result, row, b"")


def test_openmetrics_body_parses_with_a_repeated_mitigation_id():
    """The same duplicate, not adjacent (["M1", "M2", "M1"]): the OpenMetrics parser refused the whole body
    ("Invalid metric grouping")."""
    check_text(_org_body(_org_doc([{"name": "EX01", "mitigations_applied": ["M1", "M2", "M1"]}]), OM),
               openmetrics=True)


def test_openmetrics_body_parses_with_two_parts_not_shaped_like_a_part():
    """["X: a", "build: b", "Y: c"]: part="other" twice, not adjacent; the OpenMetrics parser refused the whole
    /probe body ("Invalid metric grouping")."""
    result = run_server(server_output(errors=["X: a", "build: b", "Y: c"]))
    check_text(probe_body(result, OM)[0], openmetrics=True)
