"""The logging filter that scrubs configured secrets from every record (exporter/redact.py), through real logging
handlers. tests/system/test_secrets.py checks the whole exporter's output; this checks the filter's own rules."""

from __future__ import annotations

import io
import logging

import pytest

from exporter.redact import MASK, Redactor

from ..conftest import PASSWORD


@pytest.fixture
def root_output():
    """A handler on the root logger, as `exchange-eems-exporter run` sets one up; removed afterwards."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    previous = root.level
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(previous)


def test_every_occurrence_of_every_secret_is_masked():
    redactor = Redactor([PASSWORD, "second-secret"])
    assert redactor.scrub(f"{PASSWORD} and {PASSWORD}, second-secret") == f"{MASK} and {MASK}, {MASK}"


def test_a_secret_inside_a_longer_one_does_not_leave_the_rest_behind():
    redactor = Redactor(["abc"])
    redactor.add(["abcdef"])
    assert redactor.scrub("x abcdef y abc") == f"x {MASK} y {MASK}"


def test_empty_secrets_are_ignored():
    """An unset password_env gives an empty string; masking '' would garble every line."""
    assert Redactor(["", PASSWORD]).scrub("nothing secret here") == "nothing secret here"


def test_without_secrets_records_pass_unchanged():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "value %s", ("a",), None)
    assert Redactor().filter(record) and (record.msg, record.args) == ("value %s", ("a",))


def test_installed_filter_scrubs_arguments_from_any_library(root_output):
    redactor = Redactor([PASSWORD])
    redactor.install()
    try:
        logging.getLogger("urllib3.connectionpool").warning("POST %s failed: %r", "/wsman", {"password": PASSWORD})
    finally:
        for handler in logging.getLogger().handlers:
            handler.removeFilter(redactor)
    assert root_output.getvalue() == f"WARNING POST /wsman failed: {{'password': '{MASK}'}}\n"


def test_installed_filter_scrubs_exception_text(root_output):
    redactor = Redactor([PASSWORD])
    redactor.install()
    try:
        try:
            raise ValueError(f"bad credential {PASSWORD}")
        except ValueError:
            logging.getLogger("winrm").exception("poll failed")
    finally:
        for handler in logging.getLogger().handlers:
            handler.removeFilter(redactor)
    output = root_output.getvalue()
    assert PASSWORD not in output
    assert output.startswith("ERROR poll failed\nTraceback") and f"ValueError: bad credential {MASK}" in output
