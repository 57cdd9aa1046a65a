"""Kerberos as a Windows domain runs it, against a real MIT KDC started by the tests (no mock of GSSAPI).

The KDC (`kdc_factory` in conftest, `simulator/kdc.py`) runs Debian's krb5kdc on loopback in a temporary
folder; the simulated fleet accepts Kerberos with its own keytab through MIT's acceptor.
"""

from __future__ import annotations

import os
import socket

import krb5
import pytest


def _tgt_from_keytab(kdc, principal: str, keytab) -> krb5.Creds:
    context = krb5.init_context()
    options = krb5.get_init_creds_opt_alloc(context)
    return krb5.get_init_creds_keytab(context, krb5.parse_name_flags(context, principal.encode()), options,
                                      keytab=krb5.kt_resolve(context, f"FILE:{keytab}".encode()))


def test_kdc_issues_tickets_from_a_keytab_capped_at_the_realm_lifetime(kdc_factory):
    kdc = kdc_factory(ticket_lifetime=60)
    principal = kdc.add_principal("svc-monitor")
    keytab = kdc.keytab(kdc.directory / "keytabs" / "client.keytab", principal)
    assert kdc.kvno(principal) == 1  # the keytab holds the key as created: no extra kvno from ktadd

    creds = _tgt_from_keytab(kdc, principal, keytab)

    assert creds.server.name == f"krbtgt/{kdc.realm}@{kdc.realm}".encode()
    assert creds.times.endtime - creds.times.starttime == 60


def test_kdc_stops_by_its_pid_and_resumes_its_database(kdc_factory):
    kdc = kdc_factory()
    principal = kdc.add_principal("svc-monitor")
    keytab = kdc.keytab(kdc.directory / "keytabs" / "client.keytab", principal)
    pid, port = kdc.pid, kdc.port

    kdc.stop()

    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(krb5.Krb5Error, match="Cannot contact any KDC"):
        _tgt_from_keytab(kdc, principal, keytab)
    with pytest.raises(OSError):
        socket.create_connection((kdc.address, port), timeout=2).close()

    kdc.start()
    assert kdc.port == port and kdc.pid != pid
    assert _tgt_from_keytab(kdc, principal, keytab).times.endtime > 0
