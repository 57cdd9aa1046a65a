"""Kerberos as a Windows domain runs it, against a real MIT KDC started by the tests (no mock of GSSAPI).

The KDC (`kdc_factory` in conftest, `simulator/kdc.py`) runs Debian's krb5kdc on loopback in a temporary
folder; the simulated fleet accepts Kerberos with its own keytab through MIT's acceptor.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

from pathlib import Path

import krb5
import pytest
import spnego
import spnego.exceptions
import yaml
from pypsrp.exceptions import AuthenticationError
from pypsrp.shell import Process, WinRS
from pypsrp.wsman import WSMan

from exporter.catalog import Catalog
from exporter.config import load_config
from exporter.poller import Poller
from exporter.runtime import SafeRuntime
from exporter.winrm import tickets
from exporter.winrm.tickets import TicketCache, TicketError
from simulator.host import CommandOutput, SimulatedHost, current_logon
from simulator.scenario import scenario_from_dict
from simulator.server import Fleet

from ..conftest import (
    PASSWORD, PASSWORD_ENV, SimulatedFleet, demo_scenario, free_port, relocate, stop_process,
)


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
LISTENER_PASSWORD = "S3cret!Pass-kerberos"


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
    with Fleet(hosts, {USER: LISTENER_PASSWORD}, kerberos_keytab=keytab) as fleet:
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
        pypsrp_whoami(listeners, "KONLY", "ntlm", username=USER, password=LISTENER_PASSWORD)
    assert pypsrp_whoami(listeners, "BOTH", "ntlm", username=USER, password=LISTENER_PASSWORD) == b"EXCH\\svc_monitor delegated=False"
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


# ---------------------------------------------------------------- the exporter's Kerberos module

REALM = "CONTOSO.TEST"
SERVERS = [  # fqdn <name>.contoso.test, the SPNs registered for them
    {"name": "EX01", "build": "15.2.2562.53"},
    {"name": "EX02", "build": "15.2.1748.49", "scheme": "https", "cbt_hardening": "strict"},
    {"name": "EX03", "build": "15.2.2562.53"},
]
# How the exporter's configuration names them: EX01 and EX02 by their FQDN, EX03 by its NetBIOS name with
# spn_hostname. `host` says which simulated server an entry is (its address and port come from there).
NAMED = [{"name": "ex01.contoso.test", "host": "EX01"}, {"name": "ex02.contoso.test", "host": "EX02"},
         {"name": "EX03", "spn_hostname": "ex03.contoso.test"}]


class Domain:
    """A realm's KDC, the monitoring account with its keytab, and a Kerberos-only fleet registered in it."""

    def __init__(self, kdc, fleet: SimulatedFleet, keytab: Path):
        self.kdc, self.fleet, self.keytab = kdc, fleet, keytab
        self.principal = f"svc_monitor@{kdc.realm}"

    def config(self, tmp_path: Path, *, servers=None, organization: bool = False, **module) -> dict:
        """An exporter configuration: one module per scheme (keytab unless told otherwise), every server
        named as configured here, never by its address."""
        modules = {}
        for scheme in ("http", "https"):
            settings = {"transport": "kerberos", "username": self.principal, "keytab_file": str(self.keytab),
                        "scheme": scheme, "operation_timeout": "3s", "read_timeout": "5s"}
            if scheme == "https":
                settings["ca_file"] = str(self.fleet.fleet.ca_file)
            settings.update(module)
            modules[scheme] = {k: v for k, v in settings.items() if v is not None}
        entries = servers or NAMED
        by_name = {h.name.lower(): h for h in self.fleet.scenario.hosts}
        config = {"poll": {"interval": "60s", "timeout": "15s"}, "modules": modules, "servers": []}
        for entry in entries:
            host = by_name[entry.get("host", entry["name"]).lower()]
            server = {k: v for k, v in entry.items() if k != "host"}
            config["servers"].append({**server, "address": host.address, "port": host.port, "module": host.scheme})
        if organization:
            config["organization"] = {"server": "ex01.contoso.test", "module": "http"}  # EX01
        return config

    def poller(self, tmp_path: Path, config: dict) -> Poller:
        path = tmp_path / "exporter.yml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        return Poller(SafeRuntime(load_config(path), Catalog.load()))


@pytest.fixture
def domain(kdc_factory, tmp_path):
    yield from _domain(kdc_factory, tmp_path)


def _domain(kdc_factory, tmp_path, lifetime: int | None = None, scenario_changes: dict | None = None,
            kdc_env: dict | None = None):
    kdc = kdc_factory(ticket_lifetime=lifetime, extra_env=kdc_env)
    principal = kdc.add_principal("svc_monitor", password=PASSWORD)
    keytab = kdc.keytab(tmp_path / "svc_monitor.keytab", principal)
    scenario = relocate({"defaults": {"auth": "kerberos"}, "organization": {"domain": "contoso.test"},
                         "servers": [dict(s) for s in SERVERS], **(scenario_changes or {})})
    hosts = scenario_from_dict(scenario).hosts
    fleet_keytab = kdc.service_keytab(tmp_path / "fleet.keytab", [h.fqdn for h in hosts])
    with SimulatedFleet(scenario, kerberos_keytab=fleet_keytab) as fleet:
        yield Domain(kdc, fleet, keytab)


def tgts_issued(kdc) -> int:
    """How many TGTs the KDC has issued (its log's successful AS exchanges)."""
    return len(re.findall(r"AS_REQ .*ISSUE", kdc.log_file.read_text(errors="replace")))


def polled(poller: Poller, *names: str) -> dict[str, str]:
    """Each server's outcome: "ok" or its failure reason."""
    outcomes = {}
    for name in names:
        outcome = poller.poll_server(name).outcome
        outcomes[name] = "ok" if outcome.success else outcome.error_reason
    return outcomes


ALL = ("ex01.contoso.test", "ex02.contoso.test", "EX03")


def test_a_keytab_polls_a_kerberos_only_fleet_over_http_and_https(domain, tmp_path):
    """The fleet refuses NTLM, refuses plain SOAP over HTTP (so the messages were sealed with the Kerberos
    session key), and ex02 requires channel binding over HTTPS (strict hardening)."""
    poller = domain.poller(tmp_path, domain.config(tmp_path))
    try:
        assert polled(poller, *ALL) == dict.fromkeys(ALL, "ok")
    finally:
        poller.stop()


def test_a_password_module_buys_its_own_tickets_and_never_uses_the_environments(domain, tmp_path, monkeypatch):
    """KRB5CCNAME names a cache holding another account's ticket (as kinit would leave): the module ignores it."""
    intruder = domain.kdc.add_principal("intruder")
    intruder_keytab = domain.kdc.keytab(tmp_path / "intruder.keytab", intruder)
    domain.kdc.user, domain.kdc.client_keytab = intruder, intruder_keytab
    ticket_cache(monkeypatch, domain.kdc)
    poller = domain.poller(tmp_path, domain.config(tmp_path, keytab_file=None, password_env=PASSWORD_ENV))
    try:
        assert polled(poller, *ALL) == dict.fromkeys(ALL, "ok")
    finally:
        poller.stop()


def test_the_spn_comes_from_the_configured_name_never_from_the_address(domain, tmp_path):
    """Every server is reached at a 127.x address; EX03 without spn_hostname asks for HTTP/EX03, which no
    account holds (a reverse lookup of its address would not name it either)."""
    config = domain.config(tmp_path, servers=[{"name": "EX03"}, NAMED[0],
                                              {"name": "EX03-FQDN", "host": "EX03", "spn_hostname": "ex03.contoso.test"}])
    poller = domain.poller(tmp_path, config)
    try:
        assert polled(poller, "ex01.contoso.test") == {"ex01.contoso.test": "ok"}
        tgts = tgts_issued(domain.kdc)
        outcome = poller.poll_server("EX03").outcome
        assert outcome.error_reason == "spn_unknown", outcome
        assert tgts_issued(domain.kdc) == tgts  # an unknown SPN is no reason to buy a new TGT
        assert "HTTP/EX03" in outcome.error_message and "not found in Kerberos database" in outcome.error_message
        assert polled(poller, "ex01.contoso.test", "EX03-FQDN") == {"ex01.contoso.test": "ok", "EX03-FQDN": "ok"}
    finally:
        poller.stop()
    poller = domain.poller(tmp_path, domain.config(tmp_path, spn_service="WSMAN"))
    try:
        assert polled(poller, *ALL) == dict.fromkeys(ALL, "ok")
    finally:
        poller.stop()


def documented_krb5_conf(kdc, path: Path) -> Path:
    """docs/kerberos.md's minimal krb5.conf, its [libdefaults] as written, for this realm and its KDC."""
    docs = (Path(__file__).resolve().parents[2] / "docs" / "kerberos.md").read_text(encoding="utf-8")
    libdefaults = docs.partition("### A minimal krb5.conf")[2].partition("```ini\n")[2].partition("[realms]")[0]
    libdefaults = libdefaults.replace("CONTOSO.COM", kdc.realm).replace("dns_lookup_kdc = true", "dns_lookup_kdc = false")
    path.write_text(f"{libdefaults}[realms]\n    {kdc.realm} = {{\n        kdc = {kdc.address}:{kdc.port}\n    }}\n",
                    encoding="utf-8")
    return path


def test_the_documented_krb5_conf_asks_for_the_spn_of_the_configured_name(domain, tmp_path, monkeypatch):
    """With the krb5.conf docs/kerberos.md gives, the exporter polls, and EX03 configured without spn_hostname asks
    for HTTP/EX03, as the docs say. That krb5.conf did not load: MIT reads a comment only on a line of its own, so
    `dns_canonicalize_hostname = false   # ...` was an invalid value and every Kerberos call failed with "Invalid
    argument". Without its comments, MIT (1.18 and later) qualified the short name with the host's DNS search
    domain (LOCALDOMAIN here, a Kubernetes pod's <namespace>.svc.cluster.local in the field), as qualify_shortname
    was not set to empty, and asked for a service ticket of a host nobody configured."""
    monkeypatch.setenv("KRB5_CONFIG", str(documented_krb5_conf(domain.kdc, tmp_path / "krb5.conf")))
    monkeypatch.setenv("LOCALDOMAIN", "elsewhere.test")
    poller = domain.poller(tmp_path, domain.config(tmp_path, servers=[{"name": "EX03"}, NAMED[0]]))
    try:
        assert polled(poller, "ex01.contoso.test") == {"ex01.contoso.test": "ok"}
        outcome = poller.poll_server("EX03").outcome
        asked = f"Server HTTP/ex03@{domain.kdc.realm} not found"  # MIT writes the host name in lower case
        assert outcome.error_reason == "spn_unknown" and asked in outcome.error_message, outcome
    finally:
        poller.stop()


def test_a_tgt_the_kdc_can_no_longer_read_is_bought_again_within_the_poll(domain, tmp_path):
    """The realm's krbtgt key changes while the module holds a TGT (an Active Directory krbtgt reset, done twice,
    as after a compromise): the KDC cannot read the held TGT any more, so asking it for a service ticket fails
    with "Decrypt integrity check failed". The module buys a new TGT at once and the poll goes on; it must not
    fail every poll of a new server until the old TGT would have expired (10 hours)."""
    poller = domain.poller(tmp_path, domain.config(tmp_path))
    try:
        assert polled(poller, "ex01.contoso.test") == {"ex01.contoso.test": "ok"}
        tgts = tgts_issued(domain.kdc)
        domain.kdc.new_key(f"krbtgt/{domain.kdc.realm}")
        assert polled(poller, "ex02.contoso.test", "EX03") == {"ex02.contoso.test": "ok", "EX03": "ok"}
        assert tgts_issued(domain.kdc) == tgts + 1  # one new TGT serves both
    finally:
        poller.stop()


def test_a_kerberos_module_never_falls_back_to_ntlm(kdc_factory, tmp_path):
    """The listeners also take NTLM with the same account; a Kerberos failure stays a Kerberos failure."""
    for domain in _domain(kdc_factory, tmp_path, scenario_changes={"defaults": {"auth": ["ntlm", "kerberos"]}}):
        poller = domain.poller(tmp_path, domain.config(tmp_path, servers=[{"name": "EX03"}], password_env=PASSWORD_ENV,
                                                       keytab_file=None))
        try:
            assert polled(poller, "EX03") == {"EX03": "spn_unknown"}
        finally:
            poller.stop()


def _reason_and_message(domain, tmp_path, **module) -> tuple[str, str]:
    poller = domain.poller(tmp_path, domain.config(tmp_path, **module))
    try:
        outcome = poller.poll_server("ex01.contoso.test").outcome
        return ("ok", "") if outcome.success else (outcome.error_reason, outcome.error_message)
    finally:
        poller.stop()


def test_each_kerberos_failure_has_its_reason_from_the_real_kdc(domain, tmp_path):
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not the password\n")
    reason, message = _reason_and_message(domain, tmp_path, keytab_file=None, password_file=str(wrong))
    assert reason == "auth_failed" and "Preauthentication failed" in message, message

    domain.kdc.new_key(domain.principal)  # the account's password changed after the keytab was made
    reason, message = _reason_and_message(domain, tmp_path)
    assert reason == "auth_failed" and "key version" in message and "Preauthentication failed" in message, message

    fresh = domain.kdc.keytab(tmp_path / "fresh.keytab", domain.principal)
    assert _reason_and_message(domain, tmp_path, keytab_file=str(fresh)) == ("ok", "")

    poller = domain.poller(tmp_path, domain.config(tmp_path, keytab_file=str(fresh)))
    try:
        fresh.write_bytes(b"\x05\x02 not a keytab any more")  # after check-config: read again when tickets are bought
        outcome = poller.poll_server("ex01.contoso.test").outcome
        assert outcome.error_reason == "keytab_unreadable", outcome
    finally:
        poller.stop()

    domain.kdc.delete_principal(domain.principal)
    reason, message = _reason_and_message(domain, tmp_path, keytab_file=None, password_env=PASSWORD_ENV)
    assert reason == "auth_failed" and "does not exist" in message and "not found in Kerberos database" in message

    domain.kdc.stop()
    reason, message = _reason_and_message(domain, tmp_path, keytab_file=None, password_env=PASSWORD_ENV)
    assert reason == "kdc_unreachable" and "Cannot contact any KDC" in message, message


def test_an_expired_or_disabled_account_is_named_as_such(domain, tmp_path):
    """MIT's KDC answers an account past its expiry date with KDC_ERR_NAME_EXP, which the table did not know: the
    poll said only "Kerberos failed: Client's entry in database has expired". Active Directory sends
    KDC_ERR_CLIENT_REVOKED for a disabled, expired or locked-out account (MS-KILE 3.3.5.7.1), so its text names all."""
    domain.kdc.admin(f'modprinc -expire "2000-01-01" {domain.principal}')
    reason, message = _reason_and_message(domain, tmp_path)
    assert reason == "auth_failed" and message.startswith("the monitoring account has expired"), message
    domain.kdc.admin(f"modprinc -expire never -allow_tix {domain.principal}")
    reason, message = _reason_and_message(domain, tmp_path)
    assert reason == "auth_failed" and "disabled, locked out or expired" in message, message


def _register_spn_anew(kdc, fqdn: str) -> None:
    """HTTP/<fqdn> registered anew: the same key version, another key than the server's keytab holds (the SPN
    on another account than the server's: a duplicate, an Alternate Service Account)."""
    spn = f"HTTP/{fqdn}@{kdc.realm}"
    kdc.admin(f"delprinc -force {spn}")
    kdc.add_principal(spn)


def test_a_server_holding_another_key_for_its_spn_is_named_as_such(domain, tmp_path):
    """HTTP/ex01 is registered anew with the same key version and another key, as when the SPN sits on another
    account (an Exchange Alternate Service Account, or a duplicate): the KDC issues the ticket under that key and
    the server, holding its own, cannot decrypt it. MIT's acceptor answers "Decrypt integrity check failed"
    (KRB_AP_ERR_BAD_INTEGRITY), which the table did not know: the poll said only "Kerberos failed: ...". The KDC
    accepted the credential to issue that ticket: it is spn_key_mismatch, not auth_failed."""
    _register_spn_anew(domain.kdc, "ex01.contoso.test")
    reason, message = _reason_and_message(domain, tmp_path)
    assert reason == "spn_key_mismatch" and "setspn -Q HTTP/ex01.contoso.test" in message, message
    assert "Decrypt integrity check failed" in message, message


def test_a_keytab_rotated_in_place_ends_the_credential_pause_at_the_reload(domain, tmp_path):
    """The account's password changed; the keytab is older, so servers of both modules' polls fail with
    auth_failed until the module pauses. The site writes the new keytab over the old one (a Kubernetes Secret
    update: same path) and reloads, as the log says to: the polls resume at once. The reload read the same
    configuration (the keytab's path only), found it unchanged and kept the pause, up to an hour, where a
    rotated password file counts as a change (docs/design.md)."""
    config = domain.config(tmp_path)
    poller = domain.poller(tmp_path, config)
    try:
        domain.kdc.new_key(domain.principal)
        rounds = [polled(poller, *ALL) for _ in range(2)]
        assert "credential_paused" in rounds[-1].values(), rounds
        domain.keytab.unlink()
        domain.kdc.keytab(domain.keytab, domain.principal)  # the new key, at the same path
        assert poller.runtime.reload() == (True, "configuration reloaded")
        poller.follow()
        assert polled(poller, *ALL) == dict.fromkeys(ALL, "ok")
    finally:
        poller.stop()


FAKETIME = next(iter(Path("/usr/lib").glob("*/faketime/libfaketime.so.1")), None)


@pytest.mark.parametrize(("offset", "timesync", "text"), [
    ("-10m", True, "Clock skew too great"),  # the listener (on time) refuses the authenticator in KDC time
    ("+10m", True, "Ticket not yet valid"),  # the ticket starts 10 minutes ahead of the listener's clock
    ("+10m", False, "Clock skew too great"),  # without kdc_timesync the KDC itself refuses the AS request
])
def test_clock_skew_is_reported_as_such(kdc_factory, tmp_path, offset, timesync, text):
    """The KDC runs under libfaketime, its clock 10 minutes away from the exporter's and the listeners'."""
    assert FAKETIME is not None, "libfaketime is missing: apt-get install faketime (make test installs it)"
    env = {"LD_PRELOAD": str(FAKETIME), "FAKETIME": offset, "DONT_FAKE_MONOTONIC": "1"}
    for domain in _domain(kdc_factory, tmp_path, kdc_env=env):
        if not timesync:
            conf = domain.kdc.krb5_conf
            conf.write_text(conf.read_text().replace("[libdefaults]\n", "[libdefaults]\n    kdc_timesync = 0\n"))
        reason, message = _reason_and_message(domain, tmp_path)
        assert reason == "clock_skew" and text in message, message


def let_time_pass_until(moment: float) -> None:
    """Let real time pass until `moment` (monotonic): the tickets the real KDC issued age only in real time."""
    threading.Event().wait(max(0.0, moment - time.monotonic()))


LIFETIME = 10  # seconds: MIT issues tickets this short; renewal at half of it


def test_polls_never_fail_across_many_ticket_lifetimes(kdc_factory, tmp_path):
    """Tickets of 10 seconds, a poll of every server every 2 seconds for 3.5 lifetimes: the module buys a new
    ticket every 5 seconds, a kept connection is authenticated again before its ticket ends, and no poll fails."""
    for domain in _domain(kdc_factory, tmp_path, lifetime=LIFETIME):
        poller = domain.poller(tmp_path, domain.config(tmp_path))
        try:
            started = time.monotonic()
            rounds = []
            while time.monotonic() - started < 3.5 * LIFETIME:
                rounds.append(polled(poller, *ALL))
                let_time_pass_until(time.monotonic() + 2)
            assert all(outcome == dict.fromkeys(ALL, "ok") for outcome in rounds), rounds
            assert domain.kdc.log_file.read_text().count("AS_REQ") >= 2 * 6  # preauth: 2 requests per ticket bought
        finally:
            poller.stop()


def test_when_the_kdc_stops_the_held_tickets_serve_until_they_expire(kdc_factory, tmp_path):
    for domain in _domain(kdc_factory, tmp_path, lifetime=LIFETIME):
        poller = domain.poller(tmp_path, domain.config(tmp_path))
        try:
            bought = time.monotonic()
            assert polled(poller, *ALL) == dict.fromkeys(ALL, "ok")
            domain.kdc.stop()
            assert polled(poller, *ALL) == dict.fromkeys(ALL, "ok")
            let_time_pass_until(bought + LIFETIME * 0.6)  # renewal is due and fails: the held tickets go on serving
            assert polled(poller, *ALL) == dict.fromkeys(ALL, "ok")
            let_time_pass_until(bought + LIFETIME + 1)
            assert polled(poller, *ALL) == dict.fromkeys(ALL, "kdc_unreachable")
            domain.kdc.start()
            assert polled(poller, *ALL) == dict.fromkeys(ALL, "ok")
        finally:
            poller.stop()



@contextlib.contextmanager
def hung(kdc):
    """The KDC process frozen (SIGSTOP) and resumed afterwards: the kernel still takes the connections to it, and
    nothing answers, as a domain controller that hangs. MIT's client then waits about half a minute per KDC."""
    os.kill(kdc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(kdc.pid, signal.SIGCONT)


def test_a_hung_kdc_at_renewal_time_costs_no_poll_while_the_held_ticket_serves(kdc_factory, tmp_path, monkeypatch):
    """Renewal is due and the KDC never answers: the polls go on with the held ticket, at once. The renewal was
    made under the ticket cache's lock, so the first poll waited for MIT's own timeout (about 30 s, longer than
    the ticket then had left) and every other poll of the module waited behind it. Tickets of 60 s renewed after
    6 s: MIT's GSSAPI tries a renewal of its own for a TGT within 30 s of its end (not what is tested here)."""
    lifetime = 60
    monkeypatch.setattr(tickets, "REFRESH_FRACTION", 0.1)
    for domain in _domain(kdc_factory, tmp_path, lifetime=lifetime):
        poller = domain.poller(tmp_path, domain.config(tmp_path))
        try:
            bought = time.monotonic()
            assert polled(poller, *ALL) == dict.fromkeys(ALL, "ok")
            with hung(domain.kdc):
                let_time_pass_until(bought + lifetime * 0.15)  # renewal is due
                started = time.monotonic()
                assert polled(poller, *ALL) == dict.fromkeys(ALL, "ok")
                assert time.monotonic() - started < 15
        finally:
            poller.stop()


def test_polls_without_a_ticket_end_by_their_deadline_when_the_kdc_never_answers(domain, tmp_path):
    """No ticket held yet, the KDC hung, three servers polled at once with poll.timeout 5s: each poll ends by its
    deadline as kdc_unreachable. They waited for MIT's timeout one after the other, under the cache's lock."""
    config = domain.config(tmp_path)
    config["poll"]["timeout"] = "5s"
    poller = domain.poller(tmp_path, config)
    outcomes, ended = {}, {}

    def poll(name: str) -> None:
        outcomes[name] = poller.poll_server(name).outcome
        ended[name] = time.monotonic()

    threads = [threading.Thread(target=poll, args=(name,), daemon=True) for name in ALL]
    try:
        with hung(domain.kdc):
            started = time.monotonic()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=max(0.0, started + 5 + 3 - time.monotonic()))
            late = {name: round(ended[name] - started, 1) if name in ended else "still waiting" for name in ALL}
        assert all(name in ended and ended[name] - started < 5 + 2 for name in ALL), late
        assert {name: outcome.error_reason for name, outcome in outcomes.items()} == dict.fromkeys(ALL, "kdc_unreachable")
    finally:
        for thread in threads:
            thread.join(timeout=60)
        poller.stop()


def test_a_service_ticket_the_hung_kdc_never_sends_ends_the_poll_by_its_deadline(domain, tmp_path):
    """The module holds a TGT and the KDC hangs before ex02's service ticket was asked for (a server polled for the
    first time since the last renewal, or just discovered): that poll ends by its deadline as kdc_unreachable,
    and ex01, whose service ticket is held, goes on. The request waited for MIT's timeout (about 30 s)."""
    config = domain.config(tmp_path)
    config["poll"]["timeout"] = "5s"
    poller = domain.poller(tmp_path, config)
    try:
        assert polled(poller, "ex01.contoso.test") == {"ex01.contoso.test": "ok"}
        with hung(domain.kdc):
            started = time.monotonic()
            outcome = poller.poll_server("ex02.contoso.test").outcome
            took = time.monotonic() - started
            assert polled(poller, "ex01.contoso.test") == {"ex01.contoso.test": "ok"}
        assert outcome.error_reason == "kdc_unreachable" and took < 5 + 2, (outcome, took)
    finally:
        poller.stop()


def test_a_kept_connection_is_authenticated_again_before_its_service_ticket_ends(domain, tmp_path):
    """The domain gives service tickets a shorter life than TGTs (a ticket policy; MIT caps a service ticket at
    the service principal's maximum life): a connection kept across polls over HTTP, sealed with the context
    of a service ticket of 8 s, is authenticated again before a poll its service ticket would end in."""
    domain.kdc.admin(f'modprinc -maxlife "8 seconds" HTTP/ex01.contoso.test@{domain.kdc.realm}')
    config = domain.config(tmp_path, servers=[NAMED[0]])
    config["poll"]["timeout"] = "5s"
    poller = domain.poller(tmp_path, config)
    try:
        started, rounds = time.monotonic(), []
        while time.monotonic() - started < 20:
            rounds.append(polled(poller, "ex01.contoso.test")["ex01.contoso.test"])
            let_time_pass_until(time.monotonic() + 1)
        assert set(rounds) == {"ok"}, rounds
    finally:
        poller.stop()


def test_a_kept_runspace_pool_never_polls_past_its_ticket(kdc_factory, tmp_path):
    """protocol psrp to Exchange's /PowerShell (Kerberos only, as real Exchange) with keep_runspace, tickets of
    10 seconds and a poll every 2 seconds for 2.5 lifetimes, closer than any idle limit: the channel is
    authenticated again, with a service ticket from a later TGT, before a poll its ticket would not outlive, so
    no poll fails (a kept channel past its ticket's end failed: MIT's GSSAPI refuses to seal with the expired
    context, the exporter's as the listener's); and the runspace pool, which belongs to the account and not to
    the connection, is kept across those channels (the simulator checks the pool's owner, as Windows does;
    reaching a kept pool from a new connection of the same account is UNCONFIRMED on real Windows)."""
    for domain in _domain(kdc_factory, tmp_path, lifetime=LIFETIME):
        config = domain.config(tmp_path, organization=True, protocol="psrp", configuration_name="Microsoft.Exchange",
                               keep_runspace=True)
        config["poll"]["timeout"] = "5s"  # no longer than half a ticket's life: a fresh channel outlives a poll
        poller = domain.poller(tmp_path, config)
        try:
            started = time.monotonic()
            outcomes = []
            while time.monotonic() - started < 2.5 * LIFETIME:
                outcome = poller.poll_organization().outcome
                outcomes.append("ok" if outcome.success else f"{outcome.error_reason}: {outcome.error_message}")
                let_time_pass_until(time.monotonic() + 2)
            assert outcomes == ["ok"] * len(outcomes), outcomes
            tgts = set(re.findall(r"TGS_REQ .*ISSUE: authtime (\d+).* for HTTP/ex01\.contoso\.test@",
                                  domain.kdc.log_file.read_text()))
            assert len(tgts) >= 3, tgts  # a service ticket from each of at least three TGTs: new channels
            assert domain.fleet.fleet.pools_created("EX01") == 1  # one runspace pool served every poll
        finally:
            poller.stop()

@pytest.mark.parametrize("delegation", [True, False])
def test_the_organization_collector_needs_a_delegated_ticket(kdc_factory, tmp_path, delegation):
    """double_hop: the Exchange cmdlets reach Active Directory only from a logon holding a forwarded TGT."""
    scenario = {"organization": {"domain": "contoso.test", "double_hop": True, "server": "EX01"}}
    for domain in _domain(kdc_factory, tmp_path, scenario_changes=scenario):
        poller = domain.poller(tmp_path, domain.config(tmp_path, organization=True, kerberos_delegation=delegation))
        try:
            outcome = poller.poll_organization().outcome
            assert (outcome.success, outcome.error_reason) == ((True, None) if delegation else (False, "double_hop"))
        finally:
            poller.stop()


# ---------------------------------------------------------------- the Kerberos demo

DEMO_LIFETIME = 10


def test_the_kerberos_demo_keeps_every_server_up_past_many_ticket_lifetimes(tmp_path):
    """`exchange-eems-simulator demo --kerberos --ticket-lifetime 10s`: its own KDC, a Kerberos-only fleet, the
    exporter with a keytab. Over four ticket lifetimes every reachable server stays up at every scrape, the
    organization collector succeeds (delegated ticket), and the exporter bought a new ticket at least thrice."""
    scenario = tmp_path / "demo.yaml"
    scenario.write_text(yaml.safe_dump(relocate(demo_scenario())), encoding="utf-8")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in (PASSWORD_ENV, "KRB5_CONFIG", "KRB5CCNAME")}
    process = subprocess.Popen(
        [sys.executable, "-m", "simulator", "demo", "--kerberos", "--ticket-lifetime", f"{DEMO_LIFETIME}s",
         "--scenario", str(scenario), "--listen", f"127.0.0.1:{port}", "--interval", "10s"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    samples: list[dict[str, str]] = []
    organization: list[str] = []
    try:
        deadline = time.monotonic() + 120
        first = None
        while time.monotonic() < deadline:
            let_time_pass_until(time.monotonic() + 1)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                    text = response.read().decode()
            except OSError:
                continue
            up = dict(re.findall(r'^exchange_up\{server="([^"]+)"\} (\S+)$', text, re.MULTILINE))
            if len(up) < 15:
                continue  # the first interval: not every server polled yet
            first = first or time.monotonic()
            samples.append(up)
            organization = re.findall(r'^exchange_collector_error\{collector="organization",[^}]*reason="(\w+)"\} 1',
                                      text, re.MULTILINE)
            if time.monotonic() - first > 4 * DEMO_LIFETIME:
                break
    finally:
        output, _ = stop_process(process, 30)
    assert samples and time.monotonic() - first > 4 * DEMO_LIFETIME, output
    for up in samples:
        assert up.pop("EX-SE05-NOWINRM") == "0.0"
        assert set(up.values()) == {"1.0"}, up
    assert organization == [], organization  # the delegated ticket lets the cmdlets reach Active Directory
    assert "Kerberos realm:  CONTOSO.COM" in output and "Traceback" not in output, output
    assert output.count("Kerberos: bought a ticket") >= 4, output


def test_a_ticket_handed_out_during_a_kdc_outage_must_not_end_mid_poll(kdc_factory, tmp_path):
    """KDC down, tickets of 10 s: a poll starting 2 s before the held TGT ends is still given it (margin 1 s), and
    the poll (0.4 s per answer, about 3 s) outlives it. The sealing then failed with ExpiredContextError, an
    internal_error; it is the KDC outage it is (kdc_unreachable), or the poll ends in time."""
    scenario = {"servers": [{**SERVERS[0], "faults": {"latency": 0.4}}, *SERVERS[1:]]}
    for domain in _domain(kdc_factory, tmp_path, lifetime=LIFETIME, scenario_changes=scenario):
        config = domain.config(tmp_path, servers=[{"name": "ex01.contoso.test", "host": "EX01"}])
        poller = domain.poller(tmp_path, config)
        try:
            bought = time.monotonic()
            first = poller.poll_server("ex01.contoso.test").outcome
            assert first.success, first
            domain.kdc.stop()
            let_time_pass_until(bought + LIFETIME - 2.0)
            outcome = poller.poll_server("ex01.contoso.test").outcome
            got = "ok" if outcome.success else (outcome.error_reason, outcome.error_message)
            assert got == "ok" or got[0] == "kdc_unreachable", got
        finally:
            poller.stop()


def test_a_kdc_whose_database_is_down_is_not_a_rejected_credential(kdc_factory, tmp_path):
    """The KDC process answers but cannot open its principal database (a backend outage: MIT's LDAP/DB2
    backend unavailable). MIT answers KRB_ERR_GENERIC ("Generic error"), which explain() turned into auth_failed,
    the reason the credential guard counts toward a pause and a 'credential rejected' page."""
    kdc = kdc_factory()
    principal = kdc.add_principal("svc_monitor", password=PASSWORD)
    database = kdc.directory / "kdc"
    moved = [path.rename(path.with_name(path.name + ".away")) for path in list(database.glob("principal*"))]
    try:
        with_error = None
        try:
            TicketCache(principal, password=PASSWORD).ccache()
        except TicketError as error:
            with_error = error
        assert with_error is not None
        assert with_error.reason != "auth_failed", (with_error.reason, with_error.message)
    finally:
        for path in moved:
            path.rename(path.with_name(path.name.removesuffix(".away")))


def test_a_krb5_conf_mit_cannot_read_is_not_a_rejected_credential(kdc_factory, tmp_path, monkeypatch):
    """A value MIT cannot parse in krb5.conf (a comment after it) fails MIT's context, before any KDC or credential
    is involved: the purchase raised python-krb5's own error, which no reason class knew."""
    kdc = kdc_factory()
    principal = kdc.add_principal("svc_monitor", password=PASSWORD)
    broken = tmp_path / "krb5.conf"
    setting = "dns_canonicalize_hostname = false"
    broken.write_text(kdc.krb5_conf.read_text().replace(setting, f"{setting}   # as given"))
    monkeypatch.setenv("KRB5_CONFIG", str(broken))
    with pytest.raises(TicketError) as failure:
        TicketCache(principal, password=PASSWORD).ccache()
    assert failure.value.reason == "kdc_unreachable" and str(broken) in failure.value.message, failure.value.message


def test_servers_holding_another_key_for_their_spn_never_pause_the_modules_credential(kdc_factory, tmp_path):
    """Two servers of one module cannot decrypt the service tickets the KDC issues for their SPNs; a third is
    healthy. The KDC accepted the module's key (it issued every ticket), no pre-authentication failed, no lockout
    is near: the servers' KRB_AP_ERR_BAD_INTEGRITY counted as a rejected credential (auth_failed), so three of them
    in a row paused the module, and the healthy server was not polled (credential_paused) while the alert said
    the credential was rejected. Once the SPN is fixed (the server's keytab gets the KDC's key), the next poll
    succeeds: the ticket the server could not read is not used again."""
    servers = [{"name": name, "build": "15.2.2562.53"} for name in ("EX01", "EX02", "EX03")]  # one module (http)
    for domain in _domain(kdc_factory, tmp_path, scenario_changes={"servers": servers}):
        config = domain.config(tmp_path)
        del config["modules"]["https"]  # a fleet without TLS has no CA
        poller = domain.poller(tmp_path, config)
        for fqdn in ("ex01.contoso.test", "ex02.contoso.test"):
            _register_spn_anew(domain.kdc, fqdn)
        try:
            order = ("ex01.contoso.test", "ex02.contoso.test", "ex01.contoso.test", "EX03", "ex02.contoso.test", "EX03")
            outcomes = [(name, *polled(poller, name).values()) for name in order]
            assert outcomes == [(name, "ok" if name == "EX03" else "spn_key_mismatch") for name in order], outcomes
            assert not poller.connections.credentials.paused(poller.runtime.current().config.modules)
            message = poller.poll_server("ex01.contoso.test").outcome.error_message
            assert "setspn -Q HTTP/ex01.contoso.test" in message and "(Decrypt integrity check failed)" in message, message
            assert tgts_issued(domain.kdc) == 1  # the servers' word costs no TGT

            domain.kdc.new_key("HTTP/ex01.contoso.test")  # fixed: the server's keytab gets the KDC's (new) key
            domain.kdc.keytab(tmp_path / "fleet.keytab", "HTTP/ex01.contoso.test")
            assert polled(poller, *ALL) == {"ex01.contoso.test": "ok", "ex02.contoso.test": "spn_key_mismatch",
                                            "EX03": "ok"}
            assert tgts_issued(domain.kdc) == 1
        finally:
            poller.stop()
