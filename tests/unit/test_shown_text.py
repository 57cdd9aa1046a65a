"""What the pages and `diagnose` show of a server's text: no secret, not even its first characters where the text
was cut before it was masked, nor a form escaped twice; no terminal control obeyed; nothing that cannot be written
as UTF-8. Each test failed before its fix (a review of the pages and the text outputs); the docstrings say how."""

from __future__ import annotations

import html
import json
import re
from datetime import datetime, timezone

from exporter.field_report import MAX_RAW_CHARS, build_report
from exporter.model import CollectorOutcome, ServerResult
from exporter.redact import MASK, Redactor
from exporter.store import KeptOutputs
from exporter.web import handlers, pages

from ..conftest import PASSWORD
from .test_hostile_output import NOW, poll, server_output

REPORT_TIME = datetime(2026, 11, 29, tzinfo=timezone.utc)
ESC_OR_CR = re.compile(r"[\x1b\r\x9b\x9d]")


class _View:
    """What handlers._html and handlers._raw_output read: the running exporter's redactor, and its kept output."""

    def __init__(self, kept=None):
        self.redactor = Redactor([PASSWORD])
        self._kept = kept

    def scrub(self, text: str) -> str:
        return self.redactor.scrub(text)

    def output(self, name: str):
        return self._kept.get(name), False


def _server_page(stdout: bytes, catalog) -> str:
    """/server?name=EX01 as the handler serves it (pages.server, then handlers._html's scrub)."""
    result = ServerResult("EX01", outcome=CollectorOutcome("server", True, 1.0, NOW), state=poll(stdout, catalog),
                          last_success=NOW)
    response = handlers._html(_View(), pages.server(pages.Row(result, ()), pages.timings(result)))
    return response.body.decode()


def _diagnose_doc(**fields) -> bytes:
    doc = {"schema": 1, "computer": "EX01", "culture": "de-DE", "ui_culture": "de-DE", "is_admin": False,
           "exsetup_version": "15.02.1544.004", "service": None, "service_key": None, "log_folder": None,
           "log_files": [], "events": [], "event_errors": [], "errors": []}
    return json.dumps({**doc, **fields}).encode()


def _report(collect, diagnose=b"not json") -> str:
    return build_report(server="EX01", created=REPORT_TIME, collect=collect, interpretation=None, diagnose=diagnose,
                        secrets=Redactor([PASSWORD]), redact_names=None)


# ---------------------------------------------------------------- secrets


def test_server_page_does_not_show_most_of_the_password_cut_by_the_500_char_clip(catalog):
    """A partial failure's message is clipped to 500 chars (parse._clip) long before the page scrubs it: the
    password straddling the cut was no longer the whole password, so its first 20 characters were shown."""
    message = "y" * 477 + PASSWORD + "z" * 10  # 508 chars: cut to 497 + "...", mid-password
    page = _server_page(server_output(errors=[{"part": "events", "id": "X", "message": message}]), catalog)
    assert "yyyy" in page, "the message is on the page"
    assert PASSWORD[:-1] not in html.unescape(page)


def test_raw_output_on_the_debug_page_does_not_show_most_of_the_password_cut_at_max_raw_chars():
    """/server?debug=true: stdout is cut at MAX_RAW_CHARS (store and raw_text) before it is scrubbed."""
    kept = KeptOutputs()

    class Script:
        stdout = b"x" * (MAX_RAW_CHARS - (len(PASSWORD) - 1)) + PASSWORD.encode()
        stderr = b""
        exit_code = 0

    kept.keep("EX01", Script(), NOW, troubled=False, budget=1 << 24)
    raw = handlers._raw_output(_View(kept), "EX01")
    assert PASSWORD[:-1] not in raw.stdout


def test_diagnose_report_does_not_show_most_of_the_password_cut_at_max_raw_chars():
    """diagnose section 5: raw_text cuts at MAX_RAW_CHARS, then Report.block scrubs what is left."""
    report = _report(b"x" * (MAX_RAW_CHARS - (len(PASSWORD) - 1)) + PASSWORD.encode())
    assert PASSWORD[:-1] not in report


def test_server_page_does_not_show_the_html_escaped_password_a_server_sent(catalog):
    """The redactor masks the HTML-escaped form, but pages escape first and scrub after: the server's
    `Tr0ub4dor&amp;3...` becomes `&amp;amp;`, which the page scrub does not match, and the browser showed
    the HTML-escaped password (the form docs/redact.py say is masked)."""
    escaped = html.escape(PASSWORD)
    assert Redactor([PASSWORD]).scrub(escaped) == MASK
    page = _server_page(server_output(errors=[{"part": "events", "id": "X", "message": "echo " + escaped}]), catalog)
    assert "echo" in page
    assert escaped not in html.unescape(page)


# ---------------------------------------------------------------- terminal


def test_diagnose_raw_section_makes_terminal_controls_visible():
    """Section 5 (Report.block) printed the collection script's stdout with ESC/CR as they came."""
    hostile = b'{"schema": 1}\n\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\\x1b[2J\rFAKE'
    report = _report(hostile)
    assert not ESC_OR_CR.search(report), repr(ESC_OR_CR.search(report))


def test_diagnose_report_keys_make_terminal_controls_visible():
    """An event id is server text that becomes part of a report line's key, which _show never saw."""
    event = {"id": "1\x1b]8;;https://evil.example/\x1b\\", "level": 2, "message": "m", "time": None}
    report = _report(b"not run", _diagnose_doc(events=[event]))
    assert "\x1b" not in report


def test_diagnose_report_with_a_lone_surrogate_can_be_written_as_utf8():
    """The diagnose JSON is json.loads'ed as is: "\\ud800" stays a lone surrogate in report lines, and
    cmd_diagnose's sys.stdout.write raised UnicodeEncodeError (a traceback instead of a report)."""
    report = _report(b"not run", _diagnose_doc(culture="de-DE\ud800"))
    report.encode("utf-8")


def test_poll_failure_log_line_makes_terminal_controls_visible(caplog):
    """`poll`/`run` log a failed poll's message to stderr (collectors._attempt); the server's text kept its ESC."""
    import logging
    import time

    from exporter.collectors import _attempt
    from exporter.winrm import PollFailure

    def hostile():
        raise PollFailure("script_failed", "PowerShell: \x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\")

    with caplog.at_level(logging.WARNING, logger="exporter"):
        _attempt("server", "poll of EX01", time.monotonic(), hostile, lambda: [PASSWORD])
    assert "click" in caplog.text
    assert "\x1b" not in caplog.text


def test_html_pages_with_server_text_are_sent_nosniff():
    """/probe?debug=true sends X-Content-Type-Options: nosniff; /server and / (the server's texts, as HTML) did not."""
    headers = dict(handlers._html(_View(), b"<p>server text</p>").headers)
    assert headers.get("X-Content-Type-Options") == "nosniff"
