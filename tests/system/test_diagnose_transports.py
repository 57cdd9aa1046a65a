"""`diagnose` over the transports the exporter polls with, beyond the NTLM fleet of test_diagnose.py: Kerberos
with a real MIT KDC. With --redact-names the report names no account and no server the configuration knows,
also where a KDC's error text names them."""

from __future__ import annotations

from pathlib import Path

import yaml

from exporter.catalog import Catalog
from exporter.config import load_config
from exporter.diagnose import field_report

from ..conftest import PASSWORD_ENV
from ..unit.test_field_report import lines
from .test_kerberos import NAMED, domain  # noqa: F401  (domain: the fixture)


def _report(domain, tmp_path: Path, server: str = "ex01.contoso.test", servers=None, **module) -> str:  # noqa: F811
    path = tmp_path / "exporter.yml"
    path.write_text(yaml.safe_dump(domain.config(tmp_path, servers=servers, **module)), encoding="utf-8")
    return field_report(load_config(path), Catalog.load(), server, redact_names=True)


def _assert_no_name(report: str) -> None:
    for name in ("svc_monitor", "contoso", "ex01", "ex03", "exch-alias"):
        assert name not in report.lower(), (name, report)


def test_a_kerberos_report_and_its_failures_name_no_account_and_no_server(domain, tmp_path):  # noqa: F811
    report = _report(domain, tmp_path)
    got = lines(report)
    assert got["poll.outcome"] == "ok" and got["diagnose.outcome"] == "ok", report
    assert got["log.read.1.time_column"].startswith("iso ") and got["os.utc_offset"] == "0", report
    _assert_no_name(report)
    # an SPN the configuration names apart from the server: the KDC's text says it
    alias = [{"name": "EX03-ALIAS", "host": "EX03", "spn_hostname": "exch-alias.contoso.test"}, *NAMED]
    report = _report(domain, tmp_path, "EX03-ALIAS", servers=alias)
    assert lines(report)["poll.outcome"].startswith("failed: spn_unknown"), report
    _assert_no_name(report)
    domain.kdc.delete_principal(domain.principal)  # MIT's text names the client principal
    report = _report(domain, tmp_path, keytab_file=None, password_env=PASSWORD_ENV)
    assert "not found in Kerberos database" in lines(report)["poll.outcome"], report
    assert "Client '<user>@<host>'" in report
    _assert_no_name(report)
