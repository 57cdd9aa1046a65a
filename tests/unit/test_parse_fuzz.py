"""Property tests: arbitrary remote output never escapes the parsers as anything but ParseError, and bounds hold."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.eems_log import LogRecord, classify_fetch_error, parse_log_line
from exporter.parse import (
    ParseError,
    _json_text,
    clixml_to_text,
    parse_organization_output,
    parse_ps_date,
    parse_server_output,
)

FUZZ = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
MAX_EVENTS, MAX_LOG_BYTES = 3, 64

scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=40)
json_like = st.recursive(
    scalars | st.sampled_from(["/Date(1764158400000)/", "\\/Date(-5+0100)\\/", "2026-11-26T10:00:00Z", "Running", 4]),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=25,
)
FIELDS = ("schema", "computer", "now", "culture", "exsetup_version", "build_source", "edge", "service_key", "service",
          "events", "log_folder", "logs", "endpoints", "errors", "organization", "servers", "error")
event = st.fixed_dictionaries({}, optional={"id": json_like | st.sampled_from([1005, 1006, 1008]),
                                            "time": json_like, "message": json_like})
organization_servers = st.lists(st.dictionaries(st.sampled_from(
    ["name", "fqdn", "roles", "mitigations_applied", "mitigations_applied_time", "internet_web_proxy",
     "mitigations_enabled", "mitigations_blocked", "admin_display_version", "data_collection_enabled"]), json_like),
    max_size=4) | json_like
server_shaped = st.fixed_dictionaries(
    {"schema": st.just(1)},
    optional={
        **{f: json_like for f in FIELDS[1:]},
        "events": st.lists(event, max_size=8) | event | json_like,
        "logs": st.lists(st.fixed_dictionaries({}, optional={"name": json_like, "length": json_like,
                                                             "last_write": json_like, "encoding": json_like,
                                                             "tail": st.text(max_size=300) | json_like}), max_size=4)
        | json_like,
        "errors": st.lists(st.fixed_dictionaries({}, optional={k: json_like for k in ("part", "id", "category", "type",
                                                                                        "message")}), max_size=4)
        | json_like,
        "endpoints": st.lists(st.fixed_dictionaries({}, optional={k: json_like for k in (
            "name", "status", "ms", "web_status", "error", "revocation_failed")}), max_size=3) | json_like,
        "service": st.fixed_dictionaries({}, optional={"status": json_like, "start_type": json_like}) | json_like,
        "servers": organization_servers,
    },
)

# The organization script's document: its own fields (a server's would only cost draws the parser never reads), plus
# one it does not know.
organization_shaped = st.fixed_dictionaries(
    {"schema": st.just(1)},
    optional={
        "organization": st.fixed_dictionaries({}, optional={"mitigations_enabled": json_like}) | json_like,
        "servers": organization_servers,
        "error": st.fixed_dictionaries({}, optional={"stage": json_like, "message": json_like}) | json_like,
        "computer": json_like,
    },
)


def _encoded(doc: dict, cut: int | None) -> bytes:
    data = json.dumps(doc).encode()
    return data if cut is None else data[: cut % (len(data) + 1)]


def _check_server(stdout: bytes) -> None:
    try:
        facts = parse_server_output(stdout, max_events=MAX_EVENTS, max_log_bytes=MAX_LOG_BYTES)
    except ParseError as e:
        assert e.reason in ("bad_output", "truncated_output") and str(e)
        return
    assert len(facts.events) <= MAX_EVENTS
    assert sum(len(log.tail.encode("utf-8")) for log in facts.logs) <= MAX_LOG_BYTES
    assert all(isinstance(e.message, str) and isinstance(e.id, str) for e in facts.errors) and len(facts.errors) <= 50
    texts = [*(e.message for e in facts.errors), *(e.id for e in facts.errors), facts.exsetup_version or "",
             *(e.message for e in facts.events), *(log.tail for log in facts.logs)]
    for text in texts:
        text.encode("utf-8")  # strict: no lone surrogates reach the metrics page


def _check_organization(stdout: bytes) -> None:
    try:
        facts = parse_organization_output(stdout, max_servers=3)
    except ParseError as e:
        assert e.reason in ("bad_output", "truncated_output") and str(e)
        return
    assert len(facts.servers) <= 3
    assert all(isinstance(s.name, str) and s.name for s in facts.servers)
    for s in facts.servers:
        "".join([s.name, s.fqdn or "", s.internet_web_proxy or "", *s.mitigations_applied]).encode("utf-8")


@FUZZ
@given(st.binary(max_size=400))
def test_server_output_arbitrary_bytes(stdout):
    _check_server(stdout)


@FUZZ
@given(server_shaped, st.none() | st.integers(0, 10_000))
def test_server_output_json_like(doc, cut):
    _check_server(_encoded(doc, cut))


@FUZZ
@given(st.binary(max_size=400))
def test_organization_output_arbitrary_bytes(stdout):
    _check_organization(stdout)


@FUZZ
@given(organization_shaped, st.none() | st.integers(0, 10_000))
def test_organization_output_json_like(doc, cut):
    _check_organization(_encoded(doc, cut))


@FUZZ
@given(json_like | st.from_regex(r"\\?/Date\(-?[0-9]{0,18}([+-][0-9]{4})?\)\\?/", fullmatch=True)
       | st.from_regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]{0,15}(Z|[+-][0-9]{2}:[0-9]{2})?", fullmatch=True))
def test_parse_ps_date_never_raises(value):
    result = parse_ps_date(value)
    assert result is None or (isinstance(result, datetime) and result.utcoffset().total_seconds() == 0)


@FUZZ
@given(st.binary(max_size=400) | st.text(max_size=300).map(lambda t: ("#< CLIXML\r\n<Objs><S S=\"Error\">" + t).encode()))
def test_clixml_to_text_never_raises(stderr):
    text = clixml_to_text(stderr)
    assert isinstance(text, str) and len(text) <= len(stderr)


log_text = st.text(alphabet=st.sampled_from(list("S:LogLevel=Warning;Message'\",-2026-11-26T10:00:00Z#é \t")), max_size=120)


@FUZZ
@given(st.text(max_size=200) | log_text)
def test_log_line_parser_never_raises(line):
    record = parse_log_line(line)
    assert record is None or isinstance(record, LogRecord)
    if record is not None:
        assert isinstance(record.message, str) and len(record.message) <= len(line)
        assert record.is_check_start in (True, False) and record.is_problem in (True, False)
        assert classify_fetch_error(record.message) in ("untrusted_endpoint", "unknown_issuer", "tls_validation",
                                                        "signature_invalid", "other")


def _first_object_line(stdout: bytes) -> str | None:
    """The reference for _json_text: the first of all the lines whose text opens an object, stripped."""
    text = stdout.decode("utf-8", errors="replace").replace("\ufeff", "")
    return next((line.strip() for line in text.splitlines() if line.lstrip().startswith("{")), None)


_output_pieces = st.sampled_from(["", " ", "\t", "{", "}", '{"schema":1}', "#< CLIXML", "noise", "\ufeff", "é", "\u00a0",
                                  "\r\n", "\n", "\r", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"])


@FUZZ
@given(st.lists(_output_pieces, max_size=12).map(lambda pieces: "".join(pieces).encode()) | st.binary(max_size=60))
def test_json_text_is_the_first_line_opening_an_object(stdout):
    expected = _first_object_line(stdout)
    if expected is None:
        with pytest.raises(ParseError):
            _json_text(stdout)
    else:
        assert _json_text(stdout) == expected
