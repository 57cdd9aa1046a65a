"""The EEMS texts the exporter recognises: fetch-error classes of 1008 events, organization-collector errors, and
the shapes of an EEMS log line (verbatim texts from docs/reference/eems-facts.md, shared with test_interpret)."""

from __future__ import annotations

import pytest

from exporter.eems_log import FETCH_ERROR_REASONS, classify_fetch_error, classify_organization_error, parse_log_line

from .test_interpret import (
    FETCH_LINE,
    GRANIKOS_CYCLE,
    GRANIKOS_SIGNING,
    JAN_2025_1008,
    JUNE_2026_1008,
    NOW,
    SIGNING_1008,
    TLS_1008,
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
