"""A poll's failure message never carries the module's password, in any form, whoever reads it.

A failed script's message repeats the server's error text, and a fault can quote our request: a server that
echoes the password (a careless script, a compromised host: it was sent the password) would put it into the
WARNING log line, the result the pages show and anything a library user does with it. The Redactor that `cli`
installs on the log handlers is not there in library use or in tests, so the secrets are masked where the
failure is made, in every form the redactor knows, before the message is cut to its 300 characters.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from exporter.catalog import Catalog
from exporter.config import load_config_text
from exporter.exporter import Exporter
from exporter.winrm import PollFailure
from exporter.winrm.client import without_secrets

from .hostile_server import HostileServer, Output
from .test_hostile import LEAKY_PASSWORD, LEAKY_PASSWORD_ENV, LEAKY_USER, _leaky_forms, assert_password_absent

FORMS = _leaky_forms(LEAKY_PASSWORD)
PREFIX = "PowerShell exited with code 1: "
START = LEAKY_PASSWORD[:4]  # what a cut through the password would leave at the end of a message


def _config_text(port: int) -> str:
    return yaml.safe_dump({
        "modules": {"m": {"username": LEAKY_USER, "password_env": LEAKY_PASSWORD_ENV, "scheme": "http"}},
        "servers": [{"name": "EVIL01", "address": "127.0.0.1", "port": port}]})


def _config(port: int):
    return load_config_text(_config_text(port), Path("."))


def _failed_poll(stderr: str, monkeypatch, caplog):
    """Poll a server whose script fails with `stderr` (the Redactor not installed); its outcome and the log."""
    monkeypatch.setenv(LEAKY_PASSWORD_ENV, LEAKY_PASSWORD)
    output = Output(stderr=stderr.encode("latin-1"), exit_code=1)
    with HostileServer("none", {LEAKY_USER: LEAKY_PASSWORD}, output=lambda _: output) as hostile:
        exporter = Exporter(_config(hostile.port), Catalog.load())
        try:
            with caplog.at_level(logging.WARNING):
                result = exporter.poller.poll_server("EVIL01")
        finally:
            exporter.stop()
    return result.outcome, caplog.text


@pytest.mark.parametrize("form", list(FORMS))
def test_a_failed_script_echoing_the_password_does_not_put_it_in_the_message_or_the_log(form, monkeypatch, caplog):
    outcome, log = _failed_poll(f"Set-Proxy : cannot reach proxy {FORMS[form]} (407)", monkeypatch, caplog)
    assert outcome.error_reason == "script_failed"
    assert "<redacted>" in outcome.error_message, outcome.error_message  # found and masked, not merely absent
    assert "failed: script_failed" in log  # the WARNING line is there
    assert_password_absent(outcome.error_message, LEAKY_PASSWORD)
    assert_password_absent(log, LEAKY_PASSWORD)


def test_the_password_is_masked_before_the_message_is_cut(monkeypatch, caplog):
    """A password across the 300th character: cut first, its start would stay, and nothing could know it."""
    stderr = "x" * (300 - len(PREFIX) - len(START)) + LEAKY_PASSWORD + " and more"
    outcome, log = _failed_poll(stderr, monkeypatch, caplog)
    assert outcome.error_reason == "script_failed" and len(outcome.error_message) == 300
    assert START not in outcome.error_message and START not in log


@pytest.mark.parametrize("form", list(FORMS))
def test_an_organization_error_echoing_the_password_is_masked(form, monkeypatch, caplog):
    """The organization script reports its cmdlets' errors in its JSON (the script itself succeeds): that text is
    the server's too, and is masked like a failed script's."""
    monkeypatch.setenv(LEAKY_PASSWORD_ENV, LEAKY_PASSWORD)
    doc = {"error": {"stage": "Get-ExchangeServer", "message": f"the proxy refused {FORMS[form]} (407)"}}
    output = Output(stdout=json.dumps(doc).encode())
    with HostileServer("none", {LEAKY_USER: LEAKY_PASSWORD}, output=lambda _: output) as hostile:
        config = yaml.safe_load(_config_text(hostile.port))
        config["organization"] = {"server": "EVIL01"}
        exporter = Exporter(load_config_text(yaml.safe_dump(config), Path(".")), Catalog.load())
        try:
            with caplog.at_level(logging.WARNING):
                outcome = exporter.poller.poll_organization().outcome
        finally:
            exporter.stop()
    assert outcome.error_reason == "script_failed"
    assert "<redacted>" in outcome.error_message, outcome.error_message
    assert_password_absent(outcome.error_message, LEAKY_PASSWORD)
    assert_password_absent(caplog.text, LEAKY_PASSWORD)


@pytest.mark.parametrize("form", list(FORMS))
def test_a_fault_quoting_the_password_in_any_form_is_masked(form, monkeypatch):
    """The WinRM layer's failures (a fault's text, a PSRP error record) pass `without_secrets` on their way out."""
    monkeypatch.setenv(LEAKY_PASSWORD_ENV, LEAKY_PASSWORD)
    module = _config(5985).modules["m"]
    failure = without_secrets(module, PollFailure("wsman_fault", f"WS-Management fault 1: the request {FORMS[form]}"))
    assert "<redacted>" in failure.message
    assert_password_absent(failure.message, LEAKY_PASSWORD)


def test_a_fault_is_masked_before_its_message_was_cut(monkeypatch):
    monkeypatch.setenv(LEAKY_PASSWORD_ENV, LEAKY_PASSWORD)
    failure = PollFailure("wsman_fault", "y" * (300 - len(START)) + LEAKY_PASSWORD)
    assert failure.message.endswith(START)  # made where the module is not known: cut with the password's start
    assert START not in without_secrets(_config(5985).modules["m"], failure).message
