"""Kerberos as a Windows domain runs it, against a real MIT KDC started by the tests (no mock of GSSAPI).

The KDC (`kdc_factory` in conftest, `simulator/kdc.py`) runs Debian's krb5kdc on loopback in a temporary
folder; the simulated fleet accepts Kerberos with its own keytab through MIT's acceptor.
"""

from __future__ import annotations

import base64
import http.client
import os
import random
import socket

import krb5
import pytest
import spnego
import spnego.exceptions
from pypsrp.exceptions import AuthenticationError
from pypsrp.shell import Process, WinRS
from pypsrp.wsman import WSMan

from simulator.host import CommandOutput, SimulatedHost, current_logon
from simulator.server import Fleet


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


# ---------------------------------------------------------------- the simulator's listener, judged by pypsrp

USER = "EXCH\\svc_monitor"
PASSWORD = "S3cret!Pass-kerberos"


def whoami(line: str) -> CommandOutput:
    """A host that answers with the logon its command runs in."""
    logon = current_logon()
    return CommandOutput([f"{logon.principal} delegated={logon.delegated}".encode()])


def _host(name: str, scheme: str = "http", **kwargs) -> SimulatedHost:
    address = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}.{random.randint(1, 250)}"
    return SimulatedHost(name=name, address=address, port=0, scheme=scheme, run=whoami,
                         fqdn=f"{name.lower()}.contoso.test", **kwargs)


@pytest.fixture
def realm(kdc_factory):
    kdc = kdc_factory()
    kdc.user = kdc.add_principal("svc_monitor")
    kdc.client_keytab = kdc.keytab(kdc.directory / "keytabs" / "client.keytab", kdc.user)
    return kdc


@pytest.fixture
def listeners(realm):
    """Listeners as a domain runs them: Kerberos only (over http and https, relaxed and strict channel binding
    hardening), and one that still takes NTLM too."""
    hosts = [
        _host("KONLY", auth=("kerberos",)),
        _host("BOTH", auth=("ntlm", "kerberos")),
        _host("TLS", "https", auth=("kerberos",)),
        _host("STRICT", "https", auth=("kerberos",), cbt_hardening="strict"),
    ]
    keytab = realm.service_keytab(realm.directory / "keytabs" / "listeners.keytab", [h.fqdn for h in hosts])
    with Fleet(hosts, {USER: PASSWORD}, kerberos_keytab=keytab) as fleet:
        fleet.hosts = {h.name: h for h in hosts}
        yield fleet


def ticket_cache(monkeypatch, kdc, forwardable: bool = False) -> str:
    """The client's TGT in a MEMORY ccache made the default (KRB5CCNAME) for pypsrp, which takes no keytab."""
    context = krb5.init_context()
    options = krb5.get_init_creds_opt_alloc(context)
    krb5.get_init_creds_opt_set_forwardable(options, forwardable)
    principal = krb5.parse_name_flags(context, kdc.user.encode())
    creds = krb5.get_init_creds_keytab(context, principal, options,
                                       keytab=krb5.kt_resolve(context, f"FILE:{kdc.client_keytab}".encode()))
    ccache = krb5.cc_new_unique(context, b"MEMORY")
    krb5.cc_initialize(context, ccache, creds.client)
    krb5.cc_store_cred(context, ccache, creds)
    name = f"MEMORY:{ccache.name.decode()}"
    monkeypatch.setenv("KRB5CCNAME", name)
    monkeypatch.ccache = ccache  # the MEMORY cache lives as long as a handle to it
    return name


def pypsrp_whoami(fleet, name: str, auth: str = "kerberos", **kwargs) -> bytes:
    host = fleet.hosts[name]
    secure = host.scheme == "https"
    kwargs.setdefault("username", "svc_monitor@CONTOSO.TEST")
    kwargs.setdefault("negotiate_service", "HTTP")
    wsman = WSMan(host.address, port=host.port, ssl=secure, auth=auth, encryption="auto" if secure else "always",
                  cert_validation=str(fleet.ca_file) if secure else False,
                  negotiate_hostname_override=host.fqdn, **kwargs)
    with wsman, WinRS(wsman) as shell:
        process = Process(shell, "whoami")
        process.invoke()
    return process.stdout


@pytest.mark.parametrize("service", ["HTTP", "WSMAN"])
@pytest.mark.parametrize("auth", ["kerberos", "negotiate"])  # a raw Kerberos token, and one inside SPNEGO
def test_listener_takes_kerberos_with_message_encryption_over_http(listeners, realm, monkeypatch, service, auth):
    ticket_cache(monkeypatch, realm)
    assert pypsrp_whoami(listeners, "KONLY", auth, negotiate_service=service) == b"EXCH\\svc_monitor delegated=False"


def test_kerberos_only_listener_refuses_ntlm_that_the_mixed_one_takes(listeners, realm, monkeypatch):
    with pytest.raises(AuthenticationError):
        pypsrp_whoami(listeners, "KONLY", "ntlm", username=USER, password=PASSWORD)
    assert pypsrp_whoami(listeners, "BOTH", "ntlm", username=USER, password=PASSWORD) == b"EXCH\\svc_monitor delegated=False"
    ticket_cache(monkeypatch, realm)
    assert pypsrp_whoami(listeners, "BOTH") == b"EXCH\\svc_monitor delegated=False"


def test_channel_binding_over_https_is_required_by_strict_hardening_only(listeners, realm, monkeypatch):
    ticket_cache(monkeypatch, realm)
    assert pypsrp_whoami(listeners, "STRICT") == b"EXCH\\svc_monitor delegated=False"
    assert pypsrp_whoami(listeners, "TLS", negotiate_send_cbt=False) == b"EXCH\\svc_monitor delegated=False"
    with pytest.raises(AuthenticationError):
        pypsrp_whoami(listeners, "STRICT", negotiate_send_cbt=False)


def test_a_delegated_ticket_reaches_the_shells_logon(listeners, realm, monkeypatch):
    ticket_cache(monkeypatch, realm, forwardable=True)
    assert pypsrp_whoami(listeners, "KONLY", negotiate_delegate=True) == b"EXCH\\svc_monitor delegated=True"
    assert pypsrp_whoami(listeners, "KONLY") == b"EXCH\\svc_monitor delegated=False"


def test_a_rejected_ticket_gets_401_with_the_acceptors_krb_error(listeners, realm, monkeypatch):
    """The listener's keys are out of date (the computer account's password changed after its keytab was
    made): MIT's KRB-ERROR comes back in the 401, and the client's context reads the reason from it."""
    ticket_cache(monkeypatch, realm)
    realm.new_key("HTTP/konly.contoso.test")
    host = listeners.hosts["KONLY"]
    client = spnego.client(hostname=host.fqdn, service="HTTP", protocol="kerberos")
    connection = http.client.HTTPConnection(host.address, host.port, timeout=10)
    connection.request("POST", "/wsman", b"", {"Authorization": f"Kerberos {base64.b64encode(client.step()).decode()}"})
    response = connection.getresponse()
    connection.close()
    assert response.status == 401 and response.getheader("Connection") == "close"
    scheme, _, token = response.getheader("WWW-Authenticate").partition(" ")
    assert scheme == "Kerberos"
    with pytest.raises(spnego.exceptions.SpnegoError, match="Key version is not available"):
        client.step(base64.b64decode(token))
