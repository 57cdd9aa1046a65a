"""Parsing of collect_server.ps1 / collect_organization.ps1 output in every variant design.md allows."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import pytest

from exporter.model import RawCulture
from exporter.parse import ParseError, clixml_to_text, parse_organization_output, parse_ps_date, parse_server_output

UTC = timezone.utc
NOW_MS = 1764158400000  # 2025-11-26T12:00:00Z
DESIGN_SAMPLE = (
    r'{"schema":1,"computer":"EX01","now":"\/Date(1764158400000)\/","culture":{"name":"de-DE","ui":"de-DE",'
    r'"date":"dd.MM.yyyy","time":"HH:mm:ss","am":"","pm":""},"exsetup_version":"15.02.1544.004",'
    r'"build_source":"exsetup","edge":false,"service_key":{"start":2},"service":{"status":"Running","start_type":"Automatic"},'
    r'"events":[{"id":1008,"time":"\/Date(1764154800000)\/","message":"An unexpected exception occurred. ..."}],'
    r'"log_folder":true,"logs":[{"name":"MitigationService_2026112612-1.LOG",'
    r'"last_write":"\/Date(1764158000000)\/","tail":"...text..."}],'
    r'"errors":[{"part":"events","id":"NoMatchingEventsFound,Microsoft.PowerShell.Commands.GetWinEventCommand",'
    r'"category":"ObjectNotFound","type":"System.Exception","message":"Es wurden keine Ereignisse gefunden."}],'
    r'"endpoints":[{"name":"GetExchangeMitigations","status":200,"ms":312,"web_status":null,"error":null,'
    r'"revocation_failed":false},{"name":"GetExchangeConfig","status":407,"ms":20,"web_status":"ProtocolError",'
    r'"error":"The remote server returned an error: (407) Proxy Authentication Required.","revocation_failed":false}]}'
)


def server(**fields) -> bytes:
    doc = {"schema": 1, "computer": "EX01", "now": f"/Date({NOW_MS})/"}
    doc.update(fields)
    return json.dumps(doc).encode()


def test_design_sample():
    facts = parse_server_output(DESIGN_SAMPLE.encode())
    assert facts.now == datetime(2025, 11, 26, 12, tzinfo=UTC)
    assert (facts.exsetup_version, facts.build_source, facts.edge) == ("15.02.1544.004", "exsetup", False)
    assert (facts.culture.date_pattern, facts.culture.time_pattern) == ("dd.MM.yyyy", "HH:mm:ss")
    assert (facts.service_queried, facts.service_status, facts.service_start_type) == (True, "Running", "Automatic")
    assert facts.service_key_start == 2
    assert [(e.id, e.time) for e in facts.events] == [(1008, datetime(2025, 11, 26, 11, tzinfo=UTC))]
    (log,) = facts.logs
    assert log.last_write == datetime(2025, 11, 26, 11, 53, 20, tzinfo=UTC)
    assert log.tail == "...text..." and facts.log_folder is True
    mitigations, config = facts.endpoints
    assert mitigations.status == 200 and mitigations.duration_seconds == pytest.approx(0.312)
    assert mitigations.web_status is None
    assert (config.name, config.status, config.web_status) == ("GetExchangeConfig", 407, "ProtocolError")
    (error,) = facts.errors
    assert (error.part, error.id.split(",")[0], error.category) == ("events", "NoMatchingEventsFound", "ObjectNotFound")


def test_bom_crlf_and_clixml_noise_around_the_json():
    noisy = (
        b"\xef\xbb\xbf#< CLIXML\r\n<Objs Version=\"1.1.0.1\"><Obj S=\"progress\"/></Objs>\r\n"
        + DESIGN_SAMPLE.encode() + b"\r\n\r\n"
    )
    assert parse_server_output(noisy).exsetup_version == "15.02.1544.004"



def test_bom_directly_before_the_json_and_noise_after_it():
    """Windows PowerShell's UTF-8 has a BOM, right before the object when nothing else was printed; a warning or a
    CLIXML record may follow the JSON line."""
    assert parse_server_output(b"\xef\xbb\xbf" + DESIGN_SAMPLE.encode()).exsetup_version == "15.02.1544.004"
    trailed = DESIGN_SAMPLE.encode() + b"\r\nWARNING: something the script did not mean to print\r\n"
    assert parse_server_output(trailed).exsetup_version == "15.02.1544.004"
    assert parse_server_output(b'{"schema":1}\n{"schema":2}').errors == ()  # the first line opening an object


def test_output_without_a_schema_is_schema_one():
    facts = parse_server_output(b'{"exsetup_version":"15.02.1544.004"}')
    assert facts.exsetup_version == "15.02.1544.004"
    with pytest.raises(ParseError, match="unsupported schema"):
        parse_server_output(b'{"schema":true}')

@pytest.mark.parametrize(
    "status, start, expected",
    [
        (4, 2, ("Running", "Automatic")),
        (1, 4, ("Stopped", "Disabled")),
        (2, 3, ("StartPending", "Manual")),
        (7, 0, ("Paused", "Boot")),
        (6, 1, ("PausePending", "System")),
        ("stoppending", "AUTOMATIC", ("StopPending", "Automatic")),
        ("ContinuePending", "Manual", ("ContinuePending", "Manual")),
        ("Stop Pending", "manual", ("StopPending", "Manual")),  # a display name, spaced
        (9, 7, (None, None)),
        (8, 5, (None, None)),  # one past the last name of each enum
        (0, -1, (None, None)),
        ("Exploded", True, (None, None)),
    ],
)
def test_service_enums_as_names_or_integers(status, start, expected):
    facts = parse_server_output(server(service={"status": status, "start_type": start}))
    assert facts.service_queried
    assert (facts.service_status, facts.service_start_type) == expected
    if expected == (None, None):
        assert any("service.status" in e.message for e in facts.errors)


def test_service_null_means_not_queried():
    facts = parse_server_output(server(service=None))
    assert (facts.service_queried, facts.service_status, facts.service_start_type) == (False, None, None)


def test_single_event_unwrapped_and_events_null_or_missing():
    one = parse_server_output(server(events={"id": 1005, "time": "2026-11-26T10:00:00Z", "message": "ok"}))
    assert [e.id for e in one.events] == [1005]
    assert parse_server_output(server(events=None)).events == ()
    assert parse_server_output(server()).events == ()
    wrapped = parse_server_output(server(events={"value": [{"id": 1006, "time": "/Date(0)/"}], "Count": 1}))
    assert [e.id for e in wrapped.events] == [1006] and wrapped.events[0].message == ""


def test_more_than_max_events_keeps_the_newest():
    events = [{"id": 1008, "time": f"/Date({NOW_MS - i * 3_600_000})/", "message": str(i)} for i in range(30)]
    facts = parse_server_output(server(events=list(reversed(events))), max_events=5)
    assert [e.message for e in facts.events] == ["0", "1", "2", "3", "4"]


def test_max_events_zero_or_less_keeps_no_event():
    events = [{"id": 1008, "time": f"/Date({NOW_MS})/"}]
    assert parse_server_output(server(events=events), max_events=0).events == ()
    assert parse_server_output(server(events=events), max_events=-5).events == ()


def test_events_without_id_or_time_are_skipped_with_a_note():
    facts = parse_server_output(server(events=[{"id": 1008}, {"time": "/Date(0)/"}, "junk", {"id": 1005, "time": "/Date(0)/"}]))
    assert [e.id for e in facts.events] == [1005]
    assert any("without id or time" in e.message for e in facts.errors)
    assert any("events: expected objects" in e.message for e in facts.errors)


def test_event_insertion_strings_are_kept_bounded():
    data = ["x" * 900] + [str(i) for i in range(40)]
    facts = parse_server_output(server(events=[{"id": 1008, "time": f"/Date({NOW_MS})/", "message": None, "data": data}]))
    (event,) = facts.events
    assert event.message == "" and len(event.data) == 16 and len(event.data[0]) == 500 and event.data[1] == "0"


def test_log_tail_longer_than_bound_keeps_the_last_bytes():
    tail = "é" * 10 + "x" * 100 + "END"
    facts = parse_server_output(server(logs=[{"name": "a.LOG", "last_write": None, "tail": tail}]), max_log_bytes=50)
    assert len(facts.logs[0].tail.encode()) <= 50
    assert facts.logs[0].tail.endswith("END") and tail.endswith(facts.logs[0].tail)
    cut = parse_server_output(server(logs={"name": "a.LOG", "tail": "é" * 10}), max_log_bytes=5)
    assert cut.logs[0].tail == "éé"  # the split character at the cut is dropped
    assert cut.logs[0].last_write is None
    lines = parse_server_output(server(logs={"name": "a.LOG", "tail": "first line\r\nsecond\r\nthird"}), max_log_bytes=12)
    assert lines.logs[0].tail == "third"  # whole lines from the script: the line the cut split is dropped


def test_a_tail_within_the_bound_keeps_its_first_line():
    """Only a tail the bound cut loses its (then partial) first line; one that fits is kept whole."""
    facts = parse_server_output(server(logs=[{"name": "a.LOG", "tail": "first line\r\nsecond"}]), max_log_bytes=100)
    assert facts.logs[0].tail == "first line\r\nsecond"
    none = parse_server_output(server(logs=[{"name": "a.LOG", "tail": "x"}]), max_log_bytes=0)
    assert none.logs[0].tail == ""


def test_the_log_bound_counts_bytes_not_characters():
    """A tail within the bound in characters but not in UTF-8 bytes is still cut to the byte bound."""
    facts = parse_server_output(server(logs=[{"name": "a.LOG", "tail": "é" * 30}]), max_log_bytes=40)
    assert facts.logs[0].tail == "é" * 20


def test_default_bounds_keep_200_events_and_a_mebibyte_of_log():
    events = [{"id": 1008, "time": f"/Date({NOW_MS - i * 1000})/"} for i in range(201)]
    facts = parse_server_output(server(events=events, logs=[{"name": "a.LOG", "tail": "x" * ((1 << 20) + 1)}]))
    assert len(facts.events) == 200 and len(facts.logs[0].tail) == 1 << 20


def test_at_most_four_endpoints_are_read():
    names = [f"Endpoint{i}" for i in range(6)]
    facts = parse_server_output(server(endpoints=[{"name": name, "status": 200} for name in names]))
    assert [e.name for e in facts.endpoints] == names[:4]


def test_the_log_bound_covers_all_files_newest_first():
    files = [{"name": f"MitigationService_20261126{h:02d}-1.LOG", "tail": "x" * 40} for h in (12, 11, 10)]
    facts = parse_server_output(server(logs=files), max_log_bytes=100)
    assert [len(log.tail) for log in facts.logs] == [40, 40, 20]


def test_logs_null_and_endpoints_absent():
    facts = parse_server_output(server(logs=None))
    assert facts.logs == () and facts.endpoints == () and facts.log_folder is None


def test_endpoint_without_response():
    facts = parse_server_output(server(endpoints=[{"name": "GetExchangeMitigations", "status": 0, "ms": 10000,
                                                   "web_status": "ConnectFailure",
                                                   "error": "Unable to connect to the remote server"}]))
    (endpoint,) = facts.endpoints
    assert (endpoint.status, endpoint.duration_seconds, endpoint.web_status) == (0, 10.0, "ConnectFailure")
    instant = parse_server_output(server(endpoints=[{"name": "GetExchangeMitigations", "status": 200, "ms": 0}]))
    assert instant.endpoints[0].duration_seconds == 0.0 and instant.errors == ()




def test_items_of_the_wrong_type_do_not_hide_the_items_after_them():
    """One bad entry in a list costs that entry (and a note), not the rest of the list."""
    facts = parse_server_output(server(
        logs=["junk", {"name": "a.LOG", "tail": "line"}],
        endpoints=["junk", {"name": "GetExchangeMitigations", "status": 200}, {"name": "GetExchangeMitigations"},
                   {"name": "GetExchangeConfig", "status": 407}]))
    assert [log.tail for log in facts.logs] == ["line"]
    assert [(e.name, e.status) for e in facts.endpoints] == [("GetExchangeMitigations", 200), ("GetExchangeConfig", 407)]
    assert sorted(e.message for e in facts.errors) == [
        "parse: endpoints: expected objects", "parse: endpoints: expected one entry per endpoint",
        "parse: logs: expected objects"]


@pytest.mark.parametrize(("value", "expected"), [(True, True), (0, False), (1, True), (2, None), (-1, None),
                                                  ("true", None), (1.0, None)])
def test_flags_are_booleans_or_zero_and_one(value, expected):
    facts = parse_server_output(server(log_folder=value))
    assert facts.log_folder is expected
    assert any(e.message == "parse: log_folder: expected true or false" for e in facts.errors) is (expected is None)


@pytest.mark.parametrize(("value", "expected"), [(1008, 1008), (1008.0, 1008), (1008.5, None), ("1008", None), (True, None)])
def test_integers_may_arrive_as_whole_floats(value, expected):
    facts = parse_server_output(server(events=[{"id": value, "time": f"/Date({NOW_MS})/"}]))
    assert [e.id for e in facts.events] == ([expected] if expected is not None else [])


def test_error_messages_are_clipped_at_500_characters():
    kept = parse_server_output(server(errors=[{"part": "log", "message": "m" * 500}, "log: " + "s" * 500]))
    assert [e.message for e in kept.errors] == ["m" * 500, "s" * 500]
    clipped = parse_server_output(server(errors=[{"part": "log", "message": "m" * 501}]))
    assert clipped.errors[0].message == "m" * 497 + "..."

@pytest.mark.parametrize(("proxy", "expected"), [
    ("http://proxy.contoso.com:8080/", "http://proxy.contoso.com:8080/"),
    ("http://svc:S3cret!@proxy.contoso.com:8080", "http://proxy.contoso.com:8080"),
    ("", ""),  # direct
    (None, None),  # not reported
])
def test_endpoint_proxy_label_is_the_plain_proxy_url(proxy, expected):
    """The proxy the server says its endpoint check used becomes the `proxy` label of exchange_eems_endpoint_proxy:
    a WinHTTP proxy with user info loses it (its password never reaches a label), "" is a direct connection."""
    facts = parse_server_output(server(endpoints=[{"name": "GetExchangeMitigations", "status": 200, "proxy": proxy,
                                                   "proxy_source": "winhttp"}]))
    (endpoint,) = facts.endpoints
    assert (endpoint.proxy, endpoint.proxy_source) == (expected, "winhttp")
    assert "S3cret" not in repr(facts)
    assert not [e for e in facts.errors if e.part == "parse"]


def test_endpoint_proxy_url_is_at_most_256_characters():
    host = "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "."
    for length, kept in ((256, True), (257, False)):
        url = "http://" + host + "d" * (length - len("http://" + host) - 1) + "/"
        assert len(url) == length
        facts = parse_server_output(server(endpoints=[{"name": "GetExchangeMitigations", "proxy": url}]))
        assert facts.endpoints[0].proxy == (url if kept else None)


@pytest.mark.parametrize("proxy", [
    "http://proxy.contoso.com:8080/path?x=1", "ftp://proxy.contoso.com/", 'http://proxy"} 1\n/', "not a url",
    "http://" + "p" * 250 + ".contoso.com/", 8080,
])
def test_endpoint_proxy_that_is_no_plain_proxy_url_is_refused_with_a_note(proxy):
    """Anything but `http(s)://host[:port][/]` (at most 256 characters) is no label value: None, and a parse note."""
    facts = parse_server_output(server(endpoints=[{"name": "GetExchangeMitigations", "status": 200, "proxy": proxy,
                                                   "proxy_source": "evil"}]))
    (endpoint,) = facts.endpoints
    assert (endpoint.proxy, endpoint.proxy_source) == (None, None)
    notes = [e.message for e in facts.errors if e.part == "parse"]
    assert any(n.startswith("parse: endpoints.proxy: expected") for n in notes), notes
    assert "parse: endpoints.proxy_source: expected parameter or winhttp or none" in notes


@pytest.mark.parametrize(("minutes", "kept"), [(-720, True), (840, True), (0, True), (330, True),
                                               (-721, False), (841, False), (10**9, False)])
def test_utc_offset_is_kept_only_within_the_real_zones(minutes, kept):
    """UTC offsets run from -12:00 to +14:00; another is refused with a note instead of skewing every local log
    time the interpreter reads."""
    facts = parse_server_output(server(utc_offset_minutes=minutes))
    assert facts.utc_offset_minutes == (minutes if kept else None)
    refused = any(e.message.startswith("parse: utc_offset_minutes: expected") for e in facts.errors)
    assert refused is not kept


def test_utc_offsets_are_the_offset_at_the_windows_start_and_each_change():
    """PowerShell 5.1 writes the instants as /Date(ms)/ and unwraps a one-element array; an entry repeating the
    offset before it changes nothing."""
    facts = parse_server_output(server(utc_offset_minutes=60, utc_offsets=[
        {"since": "/Date(1792800000000)/", "minutes": 120}, {"since": "/Date(1792803600000)/", "minutes": 120.0},
        {"since": "/Date(1792890000000)/", "minutes": 60}]))
    assert facts.utc_offsets == ((datetime(2026, 10, 24, 0, tzinfo=UTC), 120), (datetime(2026, 10, 25, 1, tzinfo=UTC), 60))
    assert not facts.errors
    one = parse_server_output(server(utc_offsets={"since": "/Date(1792800000000)/", "minutes": -300}))
    assert one.utc_offsets == ((datetime(2026, 10, 24, 0, tzinfo=UTC), -300),)
    assert parse_server_output(server()).utc_offsets == ()  # an older script: none


@pytest.mark.parametrize("value", [
    [{"since": "/Date(1792800000000)/", "minutes": 841}],
    [{"since": "/Date(1792800000000)/", "minutes": True}],
    [{"since": "/Date(1792800000000)/", "minutes": "60"}],
    [{"since": "yesterday", "minutes": 60}],
    [{"since": "/Date(-62135596800000)/", "minutes": 60}],
    [{"minutes": 60}],
    [{"since": "/Date(1792890000000)/", "minutes": 60}, {"since": "/Date(1792800000000)/", "minutes": 120}],
    [{"since": "/Date(1792800000000)/", "minutes": 60}, {"since": "/Date(1792800000000)/", "minutes": 120}],
    # out of order behind an entry that repeats the offset before it (merged, so not the last one kept)
    [{"since": "/Date(1792800000000)/", "minutes": 60}, {"since": "/Date(1792890000000)/", "minutes": 60},
     {"since": "/Date(1792803600000)/", "minutes": 120}],
    [{"since": f"/Date({1792800000000 + k * 3600000})/", "minutes": 60 * (k % 2)} for k in range(17)],
    [{"since": "/Date(1792800000000)/", "minutes": 60}, "x"],
    "60", 60,
])
def test_utc_offsets_of_the_wrong_shape_are_dropped_whole_with_a_note(value):
    """A compromised server sends anything: a list with one bad entry, instants out of order or more entries than
    a year's changes is dropped whole (a partial list reads lines with a wrong offset); the current offset stays."""
    facts = parse_server_output(server(utc_offset_minutes=60, utc_offsets=value))
    assert facts.utc_offsets == () and facts.utc_offset_minutes == 60
    assert any(e.message.startswith("parse: utc_offsets: expected") for e in facts.errors)


def test_culture_that_is_no_object_is_noted_not_fatal():
    facts = parse_server_output(server(culture="de-DE"))
    assert facts.culture is None
    assert any(e.message == "parse: culture: expected an object or null" for e in facts.errors)


def test_culture_patterns_are_bounded_and_missing_ones_empty():
    """The server's date/time patterns and AM/PM designators drive the log reader: bounded (40 and 20 characters),
    and a missing one is empty, not invented."""
    facts = parse_server_output(server(culture={"date": "d" * 100, "time": "H" * 100, "am": "a" * 30, "pm": "p" * 30}))
    assert facts.culture == RawCulture("d" * 40, "H" * 40, "a" * 20, "p" * 20)
    assert parse_server_output(server(culture={})).culture == RawCulture("", "", "", "")


def test_service_that_is_no_object_was_not_queried():
    facts = parse_server_output(server(service="Running"))
    assert (facts.service_queried, facts.service_status, facts.service_start_type) == (False, None, None)
    assert [e.message for e in facts.errors] == ["parse: service: expected an object or null"]


def test_log_without_a_tail_and_endpoint_names_are_bounded():
    facts = parse_server_output(server(logs=[{"name": "a.LOG", "last_write": f"/Date({NOW_MS})/"}],
                                       endpoints=[{"name": "E" * 100, "status": 200}]))
    assert facts.logs[0].tail == ""
    assert facts.endpoints[0].name == "E" * 64
    assert parse_server_output(server(endpoints=[{"status": 200}])).endpoints[0].name == ""


def test_unknown_service_start_type_is_noted():
    facts = parse_server_output(server(service={"status": "Running", "start_type": "Sometimes"}))
    assert (facts.service_status, facts.service_start_type) == ("Running", None)
    assert [e.message for e in facts.errors] == ["parse: service.start_type: expected a ServiceStartMode"]


def test_event_insertion_strings_that_are_not_strings_are_dropped_with_a_note():
    facts = parse_server_output(server(events=[{"id": 1008, "time": f"/Date({NOW_MS})/", "data": ["a", 7, {"x": 1}, "b"]}]))
    assert facts.events[0].data == ("a", "b")
    assert [e.message for e in facts.errors] == ["parse: events.data: expected strings"]


def test_collection_errors_are_capped_at_fifty():
    """A misbehaving script must not flood the metrics page or the server page: at most 50 errors, the script's
    own first, then the parser's notes."""
    facts = parse_server_output(server(errors=[f"events: failure {i}" for i in range(80)]))
    assert len(facts.errors) == 50 and facts.errors[-1].message == "failure 49"
    mixed = parse_server_output(server(errors=[f"log: e{i}" for i in range(45)], logs=["junk"] * 20))
    assert len(mixed.errors) == 50
    assert [e.part for e in mixed.errors[45:]] == ["parse"] * 5

def test_wrong_types_become_missing_with_parse_notes():
    facts = parse_server_output(
        server(exsetup_version=15.2, edge="yes", now="tomorrow", logs=["x"],
               endpoints={"status": "200", "ms": -1}, errors=[7], service_key="x")
    )
    assert (facts.exsetup_version, facts.edge, facts.now, facts.logs) == (None, False, None, ())
    assert facts.endpoints[0].status == 0 and facts.endpoints[0].duration_seconds is None
    for field in ("exsetup_version", "edge", "now", "logs", "endpoints.status", "endpoints.ms", "errors",
                  "service_key"):
        assert any(e.part == "parse" and e.message.startswith(f"parse: {field}: expected") for e in facts.errors), field


def test_wrong_types_inside_list_items_are_noted_by_their_field():
    """The note names the field an admin would look at in the script's output."""
    facts = parse_server_output(server(events=[{"id": "1008", "time": f"/Date({NOW_MS})/"},
                                               {"id": 1008, "time": "tomorrow"},
                                               {"id": 1008, "time": f"/Date({NOW_MS})/", "message": 5}],
                                       logs=[{"tail": 5, "last_write": "never"}],
                                       endpoints=[{"name": 5, "ms": "fast", "web_status": 3}]))
    notes = {e.message for e in facts.errors}
    assert notes == {"parse: events.id: expected an integer", "parse: events.time: expected a date",
                     "parse: events: an event without id or time was skipped", "parse: events.message: expected a string",
                     "parse: logs.tail: expected a string", "parse: logs.last_write: expected a date",
                     "parse: endpoints.name: expected a string", "parse: endpoints.ms: expected a non-negative number",
                     "parse: endpoints.web_status: expected a string"}


def test_error_counts_are_kept_per_known_part():
    """How many error records the script met per part (it sends the first five: review R11)."""
    facts = parse_server_output(server(error_counts={"events": 1000000, "log": 2, "shell": 9, "service": -1,
                                                      "build": "7", "winhttp": True}))
    assert facts.error_counts == (("events", 1000000), ("log", 2))
    assert {e.message.split(":")[1].strip() for e in facts.errors if e.part == "parse"} == {
        "error_counts.build", "error_counts.service", "error_counts.winhttp"}
    assert parse_server_output(server(error_counts={})).error_counts == ()
    assert parse_server_output(server(error_counts=[3])).errors[0].message.startswith("parse: error_counts: expected")




def test_error_counts_cover_every_part_and_are_bounded():
    """Every part the script's Fail records (the six of ERROR_PARTS), each a count up to 2**31; a larger number is no
    count the script can meet in one poll."""
    parts = ("build", "service_key", "service", "events", "log", "winhttp")
    counts = {part: index for index, part in enumerate(parts)}
    assert parse_server_output(server(error_counts=counts)).error_counts == tuple(counts.items())
    assert parse_server_output(server(error_counts={"log": 2**31})).error_counts == (("log", 2**31),)
    over = parse_server_output(server(error_counts={"log": 2**31 + 1}))
    assert over.error_counts == () and over.errors[0].message == "parse: error_counts.log: expected a count"

def test_stage_seconds_are_kept_per_known_stage():
    """exchange_eems_script_stage_seconds: the five stages the script measures, each from 0 to a day; another stage
    is no label value, and a negative, huge or non-numeric time is noted and left out."""
    stages = {"build": 0.1, "service": 0, "events": 3, "log": 86400, "endpoint": 1.5, "shell": 2}
    assert parse_server_output(server(stages=stages)).stage_seconds == (
        ("build", 0.1), ("service", 0.0), ("events", 3.0), ("log", 86400.0), ("endpoint", 1.5))
    facts = parse_server_output(server(stages={"build": -0.5, "service": 86400.5, "events": "3", "log": True,
                                               "endpoint": None}))
    assert facts.stage_seconds == ()
    assert sorted(e.message for e in facts.errors) == [f"parse: stages.{stage}: expected seconds"
                                                       for stage in ("build", "events", "log", "service")]
    assert parse_server_output(server(stages=[1])).errors[0].message == "parse: stages: expected an object"


@pytest.mark.parametrize(("start", "expected"), [(0, 0), (4, 4), (5, None), (-1, None), (2.0, 2)])
def test_service_key_start_is_a_service_start_mode(start, expected):
    """The registry Start value of the service's key is 0-4 (Boot..Disabled); another is not a start mode."""
    assert parse_server_output(server(service_key={"start": start})).service_key_start == expected
    noted = parse_server_output(server(service_key={"start": "2"}))
    assert noted.service_key_start is None
    assert [e.message for e in noted.errors] == ["parse: service_key.start: expected an integer"]

def test_error_record_fields_are_bounded_and_missing_ones_empty():
    facts = parse_server_output(server(errors=[{"part": "p" * 40, "id": "i" * 600, "category": "c" * 70, "type": "t" * 250,
                                                "message": "m"}, {"part": "log"}]))
    long, bare = facts.errors
    assert (long.part, long.id, long.category, long.type) == ("p" * 32, "i" * 497 + "...", "c" * 64, "t" * 200)
    assert (bare.part, bare.id, bare.category, bare.type, bare.message, bare.inner) == ("log", "", "", "", "", "")
    (wrapped,) = parse_server_output(server(errors=[{"part": "events", "inner": "x" * 250}])).errors
    assert wrapped.inner == "x" * 200  # the InnerException's type (LogInfoUnavailable wraps the access denial)
    (plain,) = parse_server_output(server(errors="p" * 40 + ": it failed")).errors
    assert (plain.part, plain.message) == ("p" * 32, "it failed")


@pytest.mark.parametrize(("status", "expected"), [(999, 999), (0, 0), (1000, 0), (-1, 0)])
def test_endpoint_http_status_is_0_to_999(status, expected):
    """An HTTP status has three digits; another number is no answer (0)."""
    facts = parse_server_output(server(endpoints=[{"name": "GetExchangeMitigations", "status": status}]))
    assert facts.endpoints[0].status == expected


def test_endpoint_flags_and_web_status():
    facts = parse_server_output(server(endpoints=[
        {"name": "GetExchangeMitigations", "status": 0, "web_status": "W" * 100, "revocation_failed": True,
         "proxy": "http://proxy.contoso.com:8080", "proxy_source": "parameter", "proxy_credentials": True},
        {"name": "GetExchangeConfig", "status": 200, "revocation_failed": "yes", "proxy_credentials": "yes"}]))
    said, wrong = facts.endpoints
    assert (said.web_status, said.revocation_failed, said.proxy_credentials) == ("W" * 64, True, True)
    assert (wrong.revocation_failed, wrong.proxy_credentials) == (False, False)
    assert sorted(e.message for e in facts.errors) == ["parse: endpoints.proxy_credentials: expected true or false",
                                                       "parse: endpoints.revocation_failed: expected true or false"]


def test_errors_as_single_string_and_missing_fields():
    facts = parse_server_output(b'{"schema":1,"errors":"build: ExSetup.exe not found"}')
    assert [(e.part, e.id, e.message) for e in facts.errors] == [("build", "", "ExSetup.exe not found")]
    assert facts.exsetup_version is None and not facts.service_queried
    assert parse_server_output(server(edge=1)).edge is True


@pytest.mark.parametrize(
    "stdout, reason, fragment",
    [
        (DESIGN_SAMPLE[:120].encode(), "truncated_output", "cut short"),
        (DESIGN_SAMPLE[:-1].encode(), "truncated_output", "cut short"),
        (b'{"schema":1,"events":[{"id":1008,"message":"An unexp', "truncated_output", "cut short"),
        (b'{"schema":1,"computer":"EX01"}}', "bad_output", "not valid JSON"),
        (b'{"schema":1,"computer":EX01}', "bad_output", "not valid JSON"),
        (b'{"schema":1,"edge":NaN}', "bad_output", "not valid JSON"),
        (b"", "bad_output", "empty"),
        (b"\r\n  \r\n", "bad_output", "empty"),
        (b"Add-PSSnapin : The term is not recognized", "bad_output", "no JSON object"),
        (b'["not","an","object"]', "bad_output", "no JSON object"),
        (b'{"schema":2}', "bad_output", "unsupported schema"),
        # padded so that it passes the count of objects and arrays below and reaches the JSON parser
        (b'{"schema":1,"pad":"' + b"x" * 2_000_000 + b'","x":' + b"[" * 100000 + b"]" * 100000 + b"}", "bad_output",
         "nests too deeply"),
        (b'{"schema":1,"x":[' + b"{}," * 100000 + b"{}]}", "bad_output", "JSON objects or arrays"),
        (b'{"schema":1,"x":[' + b"[]," * 100000 + b"[]]}", "bad_output", "JSON objects or arrays"),
        (b'{"schema":1,"x":' + b"9" * 5000 + b"}", "bad_output", "not valid JSON"),
    ],
)
def test_bad_and_truncated_output(stdout, reason, fragment):
    with pytest.raises(ParseError) as info:
        parse_server_output(stdout)
    assert info.value.reason == reason
    assert fragment in str(info.value)
    assert len(str(info.value)) < 120



def _with_containers_over_the_bound(excess: int) -> bytes:
    """Output holding (one per 16 characters + 10,000) + `excess` JSON objects and arrays, padded to the length."""
    arrays = 13_000
    head, tail = b'{"schema":1,"x":[' + b"[]," * (arrays - 1) + b'[]],"pad":"', b'"}'
    containers = 1 + 1 + arrays
    pad = next(p for p in range(40_000) if (len(head) + p + len(tail)) // 16 + 10_000 == containers - excess)
    return head + b"x" * pad + tail


def test_the_container_bound_is_one_per_16_characters_plus_10000():
    """json.loads costs 60-70 bytes per object or array: their count is bounded before parsing, exactly."""
    assert parse_server_output(_with_containers_over_the_bound(0)).errors == ()
    with pytest.raises(ParseError, match="JSON objects or arrays") as info:
        parse_server_output(_with_containers_over_the_bound(1))
    assert info.value.reason == "bad_output"


# ---------------------------------------------------------------- dates


@pytest.mark.parametrize(
    "value, expected",
    [
        ("/Date(1764158400000)/", datetime(2025, 11, 26, 12, tzinfo=UTC)),
        ("\\/Date(1764158400000)\\/", datetime(2025, 11, 26, 12, tzinfo=UTC)),
        ("/Date(1764158400000+0100)/", datetime(2025, 11, 26, 12, tzinfo=UTC)),
        ("/Date(1764158400000-0500)/", datetime(2025, 11, 26, 12, tzinfo=UTC)),
        ("/Date(-1000)/", datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC)),
        ("2023-01-05T12:08:37.6177687Z", datetime(2023, 1, 5, 12, 8, 37, 617768, tzinfo=UTC)),
        ("2026-11-26T11:00:00+01:00", datetime(2026, 11, 26, 10, tzinfo=UTC)),
        ("2026-11-26T10:00:00", datetime(2026, 11, 26, 10, tzinfo=UTC)),
        ("2026-11-26T10:00:00z", datetime(2026, 11, 26, 10, tzinfo=UTC)),
        ({"value": "/Date(1764158400000)/", "DisplayHint": 2, "DateTime": "Wednesday, 26 November 2025 12:00:00"},
         datetime(2025, 11, 26, 12, tzinfo=UTC)),
        (None, None),
        ("", None),
        ("tomorrow", None),
        ("/Date(abc)/", None),
        ("/Date(99999999999999999)/", None),
        ("0001-01-01T00:00:00+01:00", None),
        (1764158400000, None),
        (True, None),
        ({"DateTime": "Sunday 14 July 2024 02:13:02"}, None),
        (["/Date(0)/"], None),
    ],
)
def test_parse_ps_date(value, expected):
    assert parse_ps_date(value) == expected


def test_an_iso_date_without_an_offset_is_utc_whatever_the_exporters_zone(monkeypatch):
    """Taken as local time, a server's naive ISO date moved by the exporter host's UTC offset."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert parse_ps_date("2026-11-26T10:00:00") == datetime(2026, 11, 26, 10, tzinfo=UTC)
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_date_string_is_at_most_64_characters():
    assert parse_ps_date("/Date(1764158400000)/".ljust(64)) == datetime(2025, 11, 26, 12, tzinfo=UTC)
    assert parse_ps_date("/Date(1764158400000)/".ljust(65)) is None


# ---------------------------------------------------------------- CLIXML


CLIXML_ERROR = (
    b'#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
    b'<S S="Error">Add-PSSnapin : No snap-ins have been registered for Windows PowerShell version 5._x000D__x000A_</S>'
    b'<S S="Error">At line:1 char:1 &lt;here&gt;_x000D__x000A_</S></Objs>'
)
CLIXML_PROGRESS = (
    b'#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
    b'<Obj S="progress" RefId="0"><TN RefId="0"><T>System.Management.Automation.PSCustomObject</T><T>System.Object</T></TN>'
    b'<MS><I64 N="SourceId">1</I64><PR N="Record"><AV>Preparing modules for first use.</AV><AI>0</AI><Nil />'
    b"<PI>-1</PI><PC>-1</PC><T>Completed</T><SR>-1</SR><SD> </SD></PR></MS></Obj></Objs>"
)


def test_clixml_error_text():
    assert clixml_to_text(CLIXML_ERROR) == (
        "Add-PSSnapin : No snap-ins have been registered for Windows PowerShell version 5.\nAt line:1 char:1 <here>"
    )


def test_clixml_stderr_is_read_in_the_shells_code_page():
    """R14: powershell.exe writes stderr in the console's code page, 437 as the exporter asks WinRS for; decoded
    as UTF-8, a German error lost its umlauts."""
    german = "Die Methode kann nicht aufgerufen werden. Methodenaufrufe werden nur für Kerntypen unterstützt."
    stderr = ('#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
              f'<S S="Error">{german}_x000D__x000A_</S></Objs>').encode("cp437")
    assert clixml_to_text(stderr) == german


def test_clixml_progress_only_is_empty():
    assert clixml_to_text(CLIXML_PROGRESS) == ""


def test_clixml_with_bom_and_plain_text():
    assert clixml_to_text(b"\xef\xbb\xbf" + CLIXML_ERROR).startswith("Add-PSSnapin")
    assert clixml_to_text(b"The command line is too long.\r\n") == "The command line is too long."
    assert clixml_to_text(b"") == ""
    assert clixml_to_text(b"#< CLIXML\r\n<Objs><S S=\"Error\">unterminated") == ""
    assert clixml_to_text(b"f\x81r") == "für"  # code page 437: 0x81 is ü (review R14)


# ---------------------------------------------------------------- organization


ORG_SAMPLE = (
    r'{"schema":1,"organization":{"mitigations_enabled":true},"servers":[{"name":"EX01","fqdn":"ex01.contoso.com",'
    r'"roles":"Mailbox","admin_display_version":"Version 15.2 (Build 1544.4)","mitigations_enabled":true,'
    r'"mitigations_applied":["PING1","M2.1.0"],"mitigations_blocked":null,"mitigations_applied_time":"\/Date(1764154800000)\/",'
    r'"data_collection_enabled":false,"internet_web_proxy":null}],"error":null}'
)


def test_organization_design_sample():
    facts = parse_organization_output(ORG_SAMPLE.encode())
    assert facts.mitigations_enabled is True and facts.error_stage is None and facts.error_message is None
    (ex01,) = facts.servers
    assert (ex01.name, ex01.fqdn) == ("EX01", "ex01.contoso.com")
    assert ex01.admin_display_version == "Version 15.2 (Build 1544.4)"
    assert (ex01.mitigations_applied, ex01.mitigations_blocked) == (("PING1", "M2.1.0"), ())
    assert ex01.mitigations_applied_time == datetime(2025, 11, 26, 11, tzinfo=UTC)
    assert (ex01.mitigations_enabled, ex01.data_collection_enabled, ex01.internet_web_proxy) == (True, False, None)


def test_organization_real_empty_shapes_null_array_and_empty_proxy():
    """5.1 serializes `@($null)` as [null] and `[string]$null` as "" (review of collect_organization.ps1)."""
    doc = {"schema": 1, "organization": {"mitigations_enabled": True},
           "servers": [{"name": "EX01", "mitigations_applied": [None], "mitigations_blocked": [None],
                        "mitigations_applied_time": None, "internet_web_proxy": ""}], "error": None}
    (ex01,) = parse_organization_output(json.dumps(doc).encode()).servers
    assert (ex01.mitigations_applied, ex01.mitigations_blocked, ex01.internet_web_proxy) == ((), (), None)


def test_organization_unwrapped_server_and_string_mitigations():
    doc = {"schema": 1, "organization": {"mitigations_enabled": False},
           "servers": {"name": "EX02", "roles": "Edge", "mitigations_applied": "PING1", "mitigations_blocked": "M1"},
           "error": None}
    facts = parse_organization_output(json.dumps(doc).encode())
    (ex02,) = facts.servers
    assert (ex02.mitigations_applied, ex02.mitigations_blocked) == (("PING1",), ("M1",))
    assert ex02.mitigations_applied_time is None and ex02.fqdn is None
    assert facts.mitigations_enabled is False


@pytest.mark.parametrize(("roles", "mailbox"), [
    ("Mailbox", True), ("Mailbox, ClientAccess", True), ("ClientAccess, Mailbox", True), ("Edge", False),
    ("ClientAccess", False), ("MailboxServer", False), (None, None), (15, None),
    ("", None), (" ", None)])
def test_a_servers_mailbox_role_is_read_from_its_serverrole_flags(roles, mailbox):
    """ServerRole is a flags enum: `[string]` of it joins the roles with ", " (Exchange 2013 "Mailbox, ClientAccess");
    Microsoft's docs pick Mailbox servers with `$_.ServerRole -Like '*Mailbox*'`. A ServerRole not said is `[string]$null`,
    "", from collect_organization.ps1 (None from the psrp path): not a server without the Mailbox role."""
    doc = {"schema": 1, "servers": [{"name": "EX01", "roles": roles}]}
    facts = parse_organization_output(json.dumps(doc).encode())
    assert facts.servers[0].mailbox_role is mailbox
    assert (facts.dropped_label_values, facts.error_stage) == (0, None)


def test_organization_proxy_credentials_are_removed():
    doc = {"schema": 1, "servers": [
        {"name": "EX01", "internet_web_proxy": "http://svc:S3cret!@proxy.contoso.com:8080/"},
        {"name": "EX02", "internet_web_proxy": {"AbsoluteUri": "http://proxy2:3128/"}},
        {"name": "EX03", "internet_web_proxy": {"AbsoluteUri": None, "OriginalString": "http://proxy3:3128"}},
    ]}
    ex01, ex02, ex03 = parse_organization_output(json.dumps(doc).encode()).servers
    assert ex03.internet_web_proxy == "http://proxy3:3128"
    assert ex01.internet_web_proxy == "http://proxy.contoso.com:8080/"
    assert "S3cret" not in repr(ex01)
    assert ex02.internet_web_proxy == "http://proxy2:3128/"


def test_organization_error_and_partial_data():
    doc = {"schema": 1, "organization": None, "servers": None,
           "error": {"stage": "servers", "message": "Active Directory operation failed on dc01.contoso.com."}}
    facts = parse_organization_output(json.dumps(doc).encode())
    assert (facts.mitigations_enabled, facts.servers) == (None, ())
    assert facts.error_stage == "servers" and facts.error_message.startswith("Active Directory operation failed")
    as_string = parse_organization_output(b'{"schema":1,"error":"snap-in missing"}')
    assert (as_string.error_stage, as_string.error_message) == (None, "snap-in missing")


def test_organization_servers_without_name_are_dropped():
    doc = {"schema": 1, "servers": [{"fqdn": "x"}, {"name": ""}, "junk", {"name": "EX03"}]}
    assert [s.name for s in parse_organization_output(json.dumps(doc).encode()).servers] == ["EX03"]



def test_organization_server_listed_twice_is_dropped_and_the_servers_after_it_kept():
    """A second entry of a name (in any case) or of an FQDN already seen would be a second series of the same labels:
    it is dropped and counted; the servers listed after it are still read."""
    doc = {"schema": 1, "servers": [{"name": "EX01", "fqdn": "ex01.contoso.com"}, {"name": "ex01"},
                                    {"name": "EX09", "fqdn": "EX01.contoso.com"}, {"name": "EX02"}]}
    facts = parse_organization_output(json.dumps(doc).encode())
    assert [s.name for s in facts.servers] == ["EX01", "EX02"]
    assert facts.dropped_label_values == 2

def test_organization_server_bound():
    doc = {"schema": 1, "servers": [{"name": f"EX{i}"} for i in range(11)]}
    with pytest.raises(ParseError) as info:
        parse_organization_output(json.dumps(doc).encode(), max_servers=10)
    assert info.value.reason == "bad_output" and "more than the limit 10" in str(info.value)
    assert len(parse_organization_output(json.dumps(doc).encode(), max_servers=11).servers) == 11
    many = {"schema": 1, "servers": [{"name": f"EX{i}"} for i in range(10_001)]}
    with pytest.raises(ParseError, match="more than the limit 10000"):
        parse_organization_output(json.dumps(many).encode())



@pytest.mark.parametrize("name", ['EX01"} 1', "EX01\nEX02", "-EX01", "EX 01", "x" * 256, "ÉX01"])
def test_organization_server_name_not_shaped_like_a_server_name_is_dropped_and_counted(name):
    """A server's Name becomes the `server` label and, when discovered, a poll target: a name that is no server name
    is dropped and counted in exchange_collector_dropped_label_values."""
    doc = {"schema": 1, "servers": [{"name": name}, {"name": "EX02"}]}
    facts = parse_organization_output(json.dumps(doc).encode())
    assert [s.name for s in facts.servers] == ["EX02"]
    assert facts.dropped_label_values == 1


def test_mitigation_ids_are_capped_per_list_and_the_rest_counted():
    """At most 100 mitigation IDs per list become series; each one over the cap and each malformed one is counted as
    a dropped label value, never silently lost. A duplicate is one series, not a refused value."""
    applied = [f"M{i}" for i in range(130)] + ["M0", 'bad"id', ""]
    doc = {"schema": 1, "servers": [{"name": "EX01", "mitigations_applied": applied,
                                     "mitigations_blocked": [f"B{i}" for i in range(100)]}]}
    facts = parse_organization_output(json.dumps(doc).encode())
    (ex01,) = facts.servers
    assert ex01.mitigations_applied == tuple(f"M{i}" for i in range(100))
    assert len(ex01.mitigations_blocked) == 100
    assert facts.dropped_label_values == 30 + 2  # over the cap, the two malformed


def test_mitigation_ids_that_are_not_strings_are_noted():
    doc = {"schema": 1, "servers": [{"name": "EX01", "mitigations_applied": ["PING1", 3], "mitigations_blocked": []}]}
    facts = parse_organization_output(json.dumps(doc).encode())
    assert facts.servers[0].mitigations_applied == ("PING1",)
    assert facts.dropped_label_values == 1


@pytest.mark.parametrize(("error", "expected"), [
    ({"stage": 3, "message": "Active Directory operation failed."}, (None, "Active Directory operation failed.")),
    ({"stage": "servers"}, ("servers", "organization script reported an error without a message")),
    ({"stage": "servers", "message": ["x"]}, ("servers", "organization script reported an error without a message")),
])
def test_organization_error_fields_of_the_wrong_type(error, expected):
    """A stage or message that is no string is left out; the error itself is still reported."""
    facts = parse_organization_output(json.dumps({"schema": 1, "error": error}).encode())
    assert (facts.error_stage, facts.error_message) == expected


@pytest.mark.parametrize("error", [["stage", "message"], 42, True])
def test_organization_error_of_an_unexpected_shape_is_still_an_error(error):
    """The script's `error` is a string or {stage, message}; anything else still says the script failed."""
    facts = parse_organization_output(json.dumps({"schema": 1, "error": error}).encode())
    assert (facts.error_stage, facts.error_message) == (None, "organization script reported an error of an unexpected shape")

def test_organization_truncated():
    with pytest.raises(ParseError) as info:
        parse_organization_output(ORG_SAMPLE[:200].encode())
    assert info.value.reason == "truncated_output"


def test_lone_surrogates_are_replaced():
    facts = parse_server_output(
        b'{"schema":1,"exsetup_version":"15.2\\ud800","events":{"id":1008,"time":"/Date(0)/","message":"bad \\udc00"},'
        b'"logs":{"name":"a","tail":"x\\ud800y"}}'
    )
    for text in (facts.exsetup_version, facts.events[0].message, facts.logs[0].tail):
        text.encode("utf-8")
    assert facts.exsetup_version == "15.2?"
