"""The logging filter that scrubs configured secrets from every record (exporter/redact.py), through real logging
handlers. tests/system/test_secrets.py checks the whole exporter's output; this checks the filter's own rules."""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from urllib.parse import quote, quote_plus

import pytest

from exporter.redact import MASK, TOKEN_LOGGERS, Redactor, md4, nt_hash, quiet_token_loggers

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


@pytest.fixture
def install(root_output):
    """Install a Redactor as the CLI does; afterwards take its filters off the root handlers and reset the levels."""
    installed = []

    def install_one(redactor: Redactor) -> None:
        installed.append(redactor)
        redactor.install()

    yield install_one
    for handler in logging.getLogger().handlers:
        for redactor in installed:
            handler.removeFilter(redactor)
        handler.removeFilter(quiet_token_loggers)
    for name in (*TOKEN_LOGGERS, "pypsrp.negotiate"):
        logging.getLogger(name).setLevel(logging.NOTSET)


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


def test_installed_filter_scrubs_arguments_from_any_library(root_output, install):
    install(Redactor([PASSWORD]))
    logging.getLogger("urllib3.connectionpool").warning("POST %s failed: %r", "/wsman", {"password": PASSWORD})
    assert root_output.getvalue() == f"WARNING POST /wsman failed: {{'password': '{MASK}'}}\n"


def test_installed_filter_scrubs_exception_text(root_output, install):
    install(Redactor([PASSWORD]))
    try:
        raise ValueError(f"bad credential {PASSWORD}")
    except ValueError:
        logging.getLogger("winrm").exception("poll failed")
    output = root_output.getvalue()
    assert PASSWORD not in output
    assert output.startswith("ERROR poll failed\nTraceback") and f"ValueError: bad credential {MASK}" in output


# ---------------------------------------------------------------- the forms a secret can take (issue 20, finding 6)


def test_md4_and_the_nt_hash_match_their_published_values():
    """RFC 1320 appendix A.5, and the NT hash of "password" as every NTLM reference gives it."""
    suite = {b"": "31d6cfe0d16ae931b73c59d7e0c089c0", b"a": "bde52cb31de33e46245e05fbdbd6fb24",
             b"abc": "a448017aaf21d8525fc10ae87aa6729d", b"message digest": "d9130a8164549fe818874806e1c7014b",
             b"abcdefghijklmnopqrstuvwxyz": "d79e1c308aa5bbcdeea8ed63df412da9",
             b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789": "043f8582f241db351ce627e153e7f0e4",
             b"1234567890" * 8: "e33b4ddc9c38f2199c3e7b164fcc0536"}
    assert {m: md4(m).hex() for m in suite} == suite
    assert nt_hash("password").hex() == "8846f7eaee8fb117ad06bdd830b7586c"


SECRET = 'p"w\\<&\'>ä-9'


@pytest.mark.parametrize("form", [
    SECRET,
    json.dumps(SECRET)[1:-1],  # Python: \" \\ \u00e4
    json.dumps(SECRET, ensure_ascii=False)[1:-1],
    json.dumps(SECRET)[1:-1].replace("&", "\\u0026").replace("<", "\\u003c").replace("'", "\\u0027"),  # PowerShell
    json.dumps(json.dumps(SECRET)[1:-1])[1:-1],  # a JSON log line inside JSON output
    quote(SECRET, safe=""), quote(SECRET, safe="").lower(), quote_plus(SECRET), quote(SECRET),
    html.escape(SECRET),
    SECRET.encode("utf-16-le").decode("latin-1"),  # UTF-16 text read as single bytes
    json.dumps(SECRET.encode("utf-16-le").decode("latin-1"))[1:-1],
    base64.b64encode(SECRET.encode()).decode(), base64.b64encode(SECRET.encode()).decode().rstrip("="),
    base64.urlsafe_b64encode(SECRET.encode()).decode(), base64.b64encode(SECRET.encode("utf-16-le")).decode(),
    base64.b64encode(b"ab" + SECRET.encode() + b"cd").decode()[4:-4],  # inside longer base64
    nt_hash(SECRET).hex(), nt_hash(SECRET).hex().upper(),
], ids=lambda form: repr(form)[:30])
def test_every_form_of_a_secret_is_masked(form):
    scrubbed = Redactor([SECRET]).scrub(f"before {form} after")
    assert scrubbed.startswith(f"before {MASK}") and scrubbed.endswith(" after"), scrubbed


def test_near_misses_are_kept():
    text = "p\"w\\<&'>a-9 " + quote("p\"w\\<&'>", safe="") + " " + nt_hash("other").hex()
    assert Redactor([SECRET]).scrub(text) == text


# ---------------------------------------------------------------- authentication tokens (issue 22, finding 13)

CHALLENGE = "TlRMTVNTUAACAAAABAAEADgAAAA1goriKnEZeYKmRjoAAAAAAAAAADoAOgA8AAAAAAwEAAAAAA9WAE0AAQAEAFYATQA="


@pytest.mark.parametrize("text, expected", [
    (f"NTLM step input: {CHALLENGE}", f"NTLM step input: {MASK}"),
    (f"Authorization: Negotiate {CHALLENGE[:40]}", f"Authorization: Negotiate {MASK}"),
    ("WWW-Authenticate: Kerberos YIIBhwYJKoZIhvcSAQICAQBuggF2MIIBcqADAgEFoQMCAQ6iBwMFAC", f"WWW-Authenticate: Kerberos {MASK}"),
    ("message b'NTLMSSP\\x00\\x03\\x00\\x00' sent", f"message b'{MASK} sent"),
    ("raw 4E544C4D5353500003000000180018 end", f"raw {MASK} end"),
    ("Negotiate authentication over http", "Negotiate authentication over http"),  # a scheme name alone stays
])
def test_token_shapes_are_masked_without_any_secret_configured(text, expected):
    assert Redactor().scrub(text) == expected


def test_token_libraries_log_nothing_below_info_whatever_the_root_level(root_output, install):
    logging.getLogger().setLevel(logging.DEBUG)
    install(Redactor())
    logging.getLogger("spnego._ntlm").debug("NTLM step output: %s", "AAAA")
    logging.getLogger("pypsrp.negotiate").setLevel(logging.DEBUG)  # a library that sets its own level later
    logging.getLogger("pypsrp.negotiate").debug("new auth token")
    logging.getLogger("urllib3.connectionpool").info("connection pool is full")
    logging.getLogger("spnegoish").debug("not a token library")  # only the libraries and what is below them
    logging.getLogger("exporter.poller").debug("poll of EX01 took 0.2 s")
    assert root_output.getvalue().splitlines() == [
        "INFO connection pool is full", "DEBUG not a token library", "DEBUG poll of EX01 took 0.2 s"]


def test_a_quieter_root_level_is_kept_for_token_libraries(root_output, install):
    logging.getLogger().setLevel(logging.WARNING)
    install(Redactor())
    assert logging.getLogger("spnego").getEffectiveLevel() == logging.WARNING
