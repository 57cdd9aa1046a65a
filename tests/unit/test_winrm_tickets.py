"""exporter/winrm/tickets.py's table of Kerberos errors (exporter/data/kerberos_errors.tsv). The ticket cache
itself is tested against a real KDC in tests/system/test_kerberos.py."""

from __future__ import annotations

from pathlib import Path

from exporter.winrm.tickets import explain, meanings, signed

ROOT = Path(__file__).resolve().parents[2]
REASONS = {"kdc_unreachable", "spn_unknown", "auth_failed", "clock_skew", "keytab_unreadable"}


def test_every_code_has_a_documented_reason():
    table = meanings()
    assert len(table) >= 20 and {m.reason for m in table.values()} == REASONS
    troubleshooting = (ROOT / "docs" / "kerberos.md").read_text(encoding="utf-8")
    metrics = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    for reason in REASONS:
        assert f"| `{reason}` |" in troubleshooting and f"`{reason}`" in metrics, reason


def test_a_gss_minor_status_and_a_krb5_code_are_the_same_error():
    assert signed(2529638919) == -1765328377
    gss, krb5 = explain(2529638919, "Server HTTP/x@R not found in Kerberos database"), explain(-1765328377, "same")
    assert gss.reason == krb5.reason == "spn_unknown" and gss.code == krb5.code == -1765328377
    assert gss.message.startswith("no account in the domain holds the server's SPN")
    assert gss.message.endswith("(Server HTTP/x@R not found in Kerberos database)")


def test_an_unknown_code_is_auth_failed_with_mits_text():
    failure = explain(-1765328999, "Something new")
    assert (failure.reason, failure.message) == ("auth_failed", "Kerberos failed: Something new")
    assert explain(None, "  no\ncode ").message == "Kerberos failed: no code"
