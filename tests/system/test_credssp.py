"""CredSSP end to end: the exporter's client (exporter/winrm/credssp.py, encryption.py), and pywinrm's
(requests-credssp, the real peer no one here wrote), against the simulator's CredSSP listener (pyspnego's
acceptor, simulator/auth.py), over HTTPS and over HTTP with message encryption (MS-WSMV 2.2.9.1.3: TLS
records of at most 16 KiB, several MIME parts above that).

What CredSSP is for here: the server receives the password itself (TSCredentials), so the WinRS shell can
reach Active Directory and the organization collector works under `double_hop`, which it cannot over NTLM.
That same password is what a compromised server would receive; the tests show it never reaches the
exporter's own logs or metrics.

The exporter authenticates with NTLM inside CredSSP unless the module asks for Kerberos. pywinrm's CredSSP
(requests-credssp, `auth_mechanism` auto) puts Kerberos first inside Negotiate; with no realm configured MIT
would read /etc/krb5.conf and ask DNS for that realm's KDCs. The module points KRB5_CONFIG at an empty,
DNS-free file, so it falls back to NTLM at once and every packet stays on loopback.
"""

from __future__ import annotations

import contextlib
import errno
import random
import re
import socket
import time
from pathlib import Path

import pytest
import winrm
import winrm.encryption
import yaml
from requests_credssp.exceptions import AuthenticationException, NTStatusException

from exporter.catalog import Catalog
from exporter.config import load_config_text
from exporter.poller import Poller, ProbeRefused
from exporter.runtime import SafeRuntime
from exporter.scripts import Command
from exporter.winrm import ServerConnection
from simulator.host import CommandOutput, SimulatedHost, current_logon
from simulator.server import Fleet

from ..conftest import PASSWORD, PASSWORD_ENV, USERNAME, SimulatedFleet, relocate, wait_until
from .test_secrets import Exporter, assert_no_secret, outcomes

BUILD = "15.2.2562.53"
SEC_E_LOGON_DENIED = 0x8009030C  # the NTSTATUS in the acceptor's error TSRequest for a wrong password
BIG = 60_000  # output bytes: the sealed answer takes four 16 KiB parts
SIZE = "C:\\Tools\\size.exe"  # an absolute path: WinRS starts it without cmd.exe (WINRS_SKIP_CMD_SHELL)
SCENARIO = {
    "organization": {"server": "CSSP-HTTP", "double_hop": True},
    "servers": [
        {"name": "CSSP-HTTP", "address": "127.0.0.1", "build": BUILD, "auth": ["ntlm", "credssp"]},
        {"name": "CSSP-HTTPS", "address": "127.0.0.1", "build": BUILD, "auth": ["ntlm", "credssp"], "scheme": "https"},
        {"name": "CSSP-BIG", "address": "127.0.0.1", "build": BUILD, "auth": ["credssp"],
         "output_faults": {"oversized_output": BIG}},
        {"name": "NTLM-ONLY", "address": "127.0.0.1", "build": BUILD},
    ],
}


@pytest.fixture(scope="module", autouse=True)
def no_kerberos_realm(tmp_path_factory):
    config = tmp_path_factory.mktemp("krb5") / "krb5.conf"
    config.write_text("[libdefaults]\n dns_lookup_kdc = false\n dns_lookup_realm = false\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KRB5_CONFIG", str(config))
        yield


@pytest.fixture(scope="module")
def fleet(no_kerberos_realm):
    with SimulatedFleet(relocate(SCENARIO)) as fleet:
        yield fleet


def module(fleet: SimulatedFleet, scheme: str, transport: str = "credssp", **settings) -> dict:
    values = {"transport": transport, "username": USERNAME, "password_env": PASSWORD_ENV, "scheme": scheme,
              "operation_timeout": "3s", "read_timeout": "5s", **settings}
    if scheme == "https":
        values["ca_file"] = str(fleet.fleet.ca_file)
    elif transport == "credssp" and values.get("credssp_auth_mechanism", "ntlm") == "ntlm":
        values["allow_credssp_ntlm_over_http"] = True  # the simulator's plain-http CredSSP listener, as asked for
    return values


def poller(fleet: SimulatedFleet, tmp_path: Path, modules: dict, organization_module: str | None = None) -> Poller:
    """A poller for the fleet's servers that have a module named like their scheme."""
    config = {
        "poll": {"interval": "60s", "timeout": "15s"},
        "modules": modules,
        "servers": [{"name": h.name, "address": h.address, "port": h.port, "module": h.scheme}
                    for h in fleet.scenario.hosts if h.scheme in modules],
    }
    if organization_module:
        config["organization"] = {"server": "CSSP-HTTP", "module": organization_module}
    return Poller(SafeRuntime(load_config_text(yaml.safe_dump(config), tmp_path), Catalog.load()))


def poll(fleet: SimulatedFleet, tmp_path: Path, name: str, **settings):
    scheme = fleet.hosts[name].scheme
    p = poller(fleet, tmp_path, {scheme: module(fleet, scheme, **settings)})
    try:
        return p.poll_server(name).outcome
    finally:
        p.stop()


# ---------------------------------------------------------------- the exporter


@pytest.mark.parametrize("name", ["CSSP-HTTPS", "CSSP-HTTP"])
def test_the_exporter_polls_over_credssp(fleet, tmp_path, name):
    """Over HTTP every message is sealed: the listener answers plain SOAP after authentication with 500
    (AllowUnencrypted=false), so a successful poll there is one whose requests and answers were all sealed."""
    rejected = fleet.fleet.rejected_logons(name)
    outcome = poll(fleet, tmp_path, name)
    assert outcome.success, outcome
    assert fleet.fleet.rejected_logons(name) == rejected and fleet.fleet.open_shells(name) == 0


def test_a_probe_with_an_https_module_seals_its_messages_to_a_plain_http_server(fleet, tmp_path):
    """`/probe?module=` may pair a module made for https (where TLS protects its messages) with a server reached over
    plain http. What goes over that connection must be sealed as the connection needs, not as the module's own
    scheme says: before, the module's https turned sealing off, and the session's SOAP (commands, output) went in
    clear over http, where the listener refuses it (500, AllowUnencrypted=false) and a man in the middle reads it.
    The same held for CredSSP and Kerberos; an NTLM module shows it here."""
    p = poller(fleet, tmp_path, {"http": module(fleet, "http"), "https": module(fleet, "https", transport="ntlm")})
    try:
        outcome = p.probe("NTLM-ONLY", module="https").outcome
    finally:
        p.stop()
    assert outcome.success, outcome
    assert fleet.fleet.open_shells("NTLM-ONLY") == 0


def test_a_probe_does_not_delegate_an_https_modules_password_over_plain_http(fleet, tmp_path):
    """A CredSSP module made for https delegates its password only to a server whose certificate `ca_file` vouches
    for. `/probe?module=` pairing it with a server reached over plain http would hand the password to a server
    nothing verified (NTLM inside CredSSP does not authenticate the server): refused before anything connects, as
    Basic credentials to a plain-http server are. Before, the probe logged on and delegated the password."""
    p = poller(fleet, tmp_path, {"http": module(fleet, "http", transport="ntlm"), "https": module(fleet, "https")})
    requests = fleet.fleet.request_count("CSSP-HTTP")
    try:
        with pytest.raises(ProbeRefused, match="CredSSP"):
            p.probe("CSSP-HTTP", module="https")
    finally:
        p.stop()
    assert fleet.fleet.request_count("CSSP-HTTP") == requests


def test_sealed_messages_over_16_kib_travel_in_parts_both_ways(fleet, tmp_path):
    """An answer of 60 KB comes back in four sealed parts, and a 20 KB request goes out in two: the
    listener refuses a part above 16 KiB, or one whose length field is not the TLS trailer's."""
    assert poll(fleet, tmp_path, "CSSP-BIG").success
    config = load_config_text(yaml.safe_dump({"modules": {"m": module(fleet, "http")}, "servers": ["CSSP-BIG"]}),
                              tmp_path)
    host = fleet.hosts["CSSP-BIG"]
    conn = ServerConnection(f"http://{host.address}:{host.port}/wsman", config.modules["m"],
                            max_response_bytes=1 << 20, max_poll_bytes=1 << 22, server_name="CSSP-BIG")
    try:
        result = conn.run(Command("C:\\Windows\\System32\\cmd.exe", ("/c", "echo", "x" * 20_000)),
                          time.monotonic() + 15)
    finally:
        conn.close()
    # The simulated Windows read the 20 KB command line whole (it knows no cmd.exe to start, and says so)
    assert result.exit_code == 1 and b"cmd.exe\"' is not recognized" in result.stderr, result


def test_a_wrong_password_is_auth_failed_and_one_rejected_logon(fleet, tmp_path, monkeypatch):
    monkeypatch.setenv("EEMS_TEST_WRONG_PASSWORD", PASSWORD + "-old")
    before = fleet.fleet.rejected_logons("CSSP-HTTPS")
    outcome = poll(fleet, tmp_path, "CSSP-HTTPS", password_env="EEMS_TEST_WRONG_PASSWORD")
    assert outcome.error_reason == "auth_failed", outcome
    assert fleet.fleet.rejected_logons("CSSP-HTTPS") > before


def test_a_listener_without_credssp_refuses_it(fleet, tmp_path):
    assert poll(fleet, tmp_path, "NTLM-ONLY").error_reason == "auth_failed"


class SilentKdc:
    """The KDC a krb5.conf names for its default realm, on loopback: it answers nothing and counts what reaches it
    (UDP datagrams, TCP connections: the kernel queues both until `count` reads them)."""

    def __init__(self) -> None:
        # one port number for both: the kernel's free UDP port may be a TCP port in use (another worker's), then
        # another is tried (it failed the suite once with EADDRINUSE)
        for _ in range(20):
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.bind(("127.0.0.1", 0))
            self.port = self.udp.getsockname()[1]
            self.tcp = socket.socket()
            try:
                self.tcp.bind(("127.0.0.1", self.port))
                break
            except OSError as error:
                self.udp.close()
                self.tcp.close()
                if error.errno != errno.EADDRINUSE:
                    raise
        else:
            raise RuntimeError("no port number free for both UDP and TCP in 20 tries")
        self.tcp.listen(8)
        for sock in (self.udp, self.tcp):
            sock.setblocking(False)

    def krb5_conf(self, path: Path) -> Path:
        path.write_text(f"[libdefaults]\n default_realm = CONTOSO.TEST\n dns_lookup_kdc = false\n"
                        f" dns_lookup_realm = false\n[realms]\n CONTOSO.TEST = {{\n  kdc = 127.0.0.1:{self.port}\n }}\n")
        return path

    def count(self) -> int:
        seen = 0
        for receive in (lambda: self.udp.recv(65536), lambda: self.tcp.accept()[0].close()):
            with contextlib.suppress(BlockingIOError):
                while True:
                    receive()
                    seen += 1
        return seen

    def close(self) -> None:
        self.udp.close()
        self.tcp.close()


def test_credssp_authenticates_with_ntlm_inside_and_asks_no_kdc(fleet, tmp_path, monkeypatch):
    """With the kerberos extra installed and a realm in krb5.conf, pyspnego's CredSSP client left to itself tries
    Kerberos first: an AS-REQ to the realm's KDC (here a silent one on loopback, with DNS asked on real sites) on
    every new connection, then NTLM. A module that does not ask for Kerberos (`credssp_auth_mechanism` defaults
    to ntlm) authenticates with NTLM inside CredSSP and sends the KDC nothing."""
    pytest.importorskip("gssapi", reason="the kerberos extra is what would make pyspnego try Kerberos")
    kdc = SilentKdc()
    try:
        monkeypatch.setenv("KRB5_CONFIG", str(kdc.krb5_conf(tmp_path / "krb5.conf")))
        outcome = poll(fleet, tmp_path, "CSSP-HTTPS")
        asked = kdc.count()
    finally:
        kdc.close()
    assert outcome.success, outcome
    assert asked == 0, f"{asked} requests reached the realm's KDC"


def test_a_server_below_credssp_version_5_is_refused_before_the_password_is_sent(fleet, tmp_path, monkeypatch):
    """CredSSP versions 2 to 4 lack the CVE-2018-0886 fix. A server speaking 4 (pyspnego's acceptor with its
    protocol version lowered; in this one process the client's own version goes down with it, and both take the
    lower of the two, as against a real old server) is refused with `credssp_outdated` after the NTLM exchange and
    before the pubKeyAuth and credentials steps: the server receives no password and opens no shell."""
    import spnego._credssp  # the version is a module constant of pyspnego's CredSSP, used by both ends

    monkeypatch.setattr(spnego._credssp, "_CREDSSP_VERSION", 4)
    requests = fleet.fleet.request_count("CSSP-HTTPS")
    outcome = poll(fleet, tmp_path, "CSSP-HTTPS")
    assert outcome.error_reason == "credssp_outdated", outcome
    assert "version 4" in outcome.error_message, outcome
    assert fleet.fleet.open_shells("CSSP-HTTPS") == 0
    assert fleet.fleet.request_count("CSSP-HTTPS") - requests <= 4, "the poll went on past the handshake"


def test_credssp_authenticates_with_kerberos_inside_when_the_module_asks(kdc_factory, tmp_path, monkeypatch):
    """`credssp_auth_mechanism: kerberos`: the module's own ticket (bought with its password from a real MIT KDC)
    authenticates inside CredSSP, for HTTP/<server FQDN>, and the password is then delegated as with NTLM inside.
    The listener is pyspnego's CredSSP acceptor, whose Kerberos takes the service keys from the default keytab
    (KRB5_KTNAME, this process's, as a Windows server's from its computer account)."""
    kdc = kdc_factory()
    kdc.add_principal("svc_monitor", password=PASSWORD)
    scenario = relocate({"organization": {"domain": "contoso.test"},
                         "servers": [{"name": "CSSP-KRB", "address": "127.0.0.1", "build": BUILD, "auth": ["credssp"]}]})
    with SimulatedFleet(scenario) as fleet:
        host = fleet.hosts["CSSP-KRB"]
        monkeypatch.setenv("KRB5_KTNAME", f"FILE:{kdc.service_keytab(tmp_path / 'fleet.keytab', [host.fqdn])}")
        config = {"poll": {"interval": "60s", "timeout": "15s"},
                  "modules": {"m": module(fleet, "http", username=f"svc_monitor@{kdc.realm}",
                                          credssp_auth_mechanism="kerberos")},
                  "servers": [{"name": host.fqdn, "address": host.address, "port": host.port}]}
        p = Poller(SafeRuntime(load_config_text(yaml.safe_dump(config), tmp_path), Catalog.load()))
        try:
            outcome = p.poll_server(host.fqdn).outcome
        finally:
            p.stop()
        assert outcome.success, outcome
        assert fleet.fleet.rejected_logons("CSSP-KRB") == 0 and fleet.fleet.open_shells("CSSP-KRB") == 0
    assert f"HTTP/{host.fqdn}@{kdc.realm}" in kdc.log_file.read_text(errors="replace")  # the service ticket


def test_kerberos_inside_credssp_replaces_a_tgt_the_kdc_no_longer_reads(kdc_factory, tmp_path, monkeypatch):
    """The realm's krbtgt key changes after the module bought its TGT (an Active Directory krbtgt reset): the next
    server asks for a new service ticket, the KDC refuses the held TGT, and the module buys a new one within the
    poll (kerberos.first_step) instead of failing every poll of a new server until the old TGT expires."""
    kdc = kdc_factory()
    kdc.add_principal("svc_monitor", password=PASSWORD)
    names = ("CSSP-KRB", "CSSP-KRB2")
    scenario = relocate({"organization": {"domain": "contoso.test"},
                         "servers": [{"name": n, "address": "127.0.0.1", "build": BUILD, "auth": ["credssp"]}
                                     for n in names]})
    with SimulatedFleet(scenario) as fleet:
        hosts = [fleet.hosts[n] for n in names]
        keytab = kdc.service_keytab(tmp_path / "fleet.keytab", [h.fqdn for h in hosts])
        monkeypatch.setenv("KRB5_KTNAME", f"FILE:{keytab}")
        config = {"poll": {"interval": "60s", "timeout": "15s"},
                  "modules": {"m": module(fleet, "http", username=f"svc_monitor@{kdc.realm}",
                                          credssp_auth_mechanism="kerberos")},
                  "servers": [{"name": h.fqdn, "address": h.address, "port": h.port} for h in hosts]}
        p = Poller(SafeRuntime(load_config_text(yaml.safe_dump(config), tmp_path), Catalog.load()))
        try:
            first = p.poll_server(hosts[0].fqdn).outcome
            kdc.new_key(f"krbtgt/{kdc.realm}")
            second = p.poll_server(hosts[1].fqdn).outcome
        finally:
            p.stop()
        assert first.success, first
        assert second.success, second


@pytest.mark.parametrize("transport, reason", [("credssp", None), ("ntlm", "double_hop")])
def test_the_organization_collector_needs_the_delegated_password(fleet, tmp_path, transport, reason):
    """`double_hop`: the organization's cmdlets reach Active Directory only from a logon holding a delegated
    credential. CredSSP gives the server the password; NTLM gives it nothing to pass on."""
    p = poller(fleet, tmp_path, {"http": module(fleet, "http", transport=transport)}, organization_module="http")
    try:
        outcome = p.poll_organization().outcome
    finally:
        p.stop()
    assert (outcome.success, outcome.error_reason) == (reason is None, reason), outcome


def test_the_password_reaches_the_server_but_not_the_exporters_logs_or_metrics(fleet, tmp_path):
    """The exporter as a process at debug level, polling over CredSSP with the right password (HTTP and
    HTTPS, the organization under double_hop) and a wrong one: nothing it writes or serves holds the
    password, in any encoding test_secrets.py searches for."""
    wrong = tmp_path / "wrong-password"
    wrong.write_text(PASSWORD[::-1] + "\n")
    config = {
        "poll": {"interval": "10s", "timeout": "8s"},
        "modules": {"http": module(fleet, "http"), "https": module(fleet, "https"),
                    "wrong": {**module(fleet, "https"), "password_env": None, "password_file": str(wrong)}},
        "servers": [{"name": "CSSP-HTTP", "address": fleet.hosts["CSSP-HTTP"].address,
                     "port": fleet.hosts["CSSP-HTTP"].port, "module": "http"},
                    {"name": "CSSP-HTTPS", "address": fleet.hosts["CSSP-HTTPS"].address,
                     "port": fleet.hosts["CSSP-HTTPS"].port, "module": "https"},
                    {"name": "WRONG", "address": fleet.hosts["CSSP-HTTPS"].address,
                     "port": fleet.hosts["CSSP-HTTPS"].port, "module": "wrong"}],
        "organization": {"server": "CSSP-HTTP", "module": "http"},
    }
    del config["modules"]["wrong"]["password_env"]
    config_file = tmp_path / "config.yml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    exporter = Exporter(config_file, tmp_path)
    try:
        exporter.start()
        exporter.wait_ready()
        metrics = wait_until(lambda: organization_ran(exporter), 30, "the organization collector's first run")
    finally:
        exporter.stop()
    seen = outcomes(metrics.decode())
    assert seen["CSSP-HTTP"] == (1, set()) and seen["CSSP-HTTPS"] == (1, set()), seen
    assert seen["WRONG"] == (0, {"auth_failed"}), seen
    assert re.search(rb'^exchange_collector_success\{collector="organization"[^}]*\} 1', metrics, re.M), metrics
    assert_no_secret({"GET /metrics": metrics, "exporter log": Path(exporter.stdout_file).read_bytes()
                      + Path(exporter.stderr_file).read_bytes()})


def organization_ran(exporter: Exporter) -> bytes | None:
    status, transcript = exporter.request("GET", "/metrics")
    ran = status == 200 and re.search(rb'^exchange_collector_success\{collector="organization"', transcript, re.M)
    return transcript if ran else None


# ---------------------------------------------------------------- pywinrm, the real peer, on the same acceptor


def whoami(line: str) -> CommandOutput:
    """The logon the command runs in, then as many bytes as the command line asks for (`size.exe N`)."""
    logon = current_logon()
    words = line.split()
    size = int(words[1]) if "size" in words[0] else 0
    return CommandOutput([f"{logon.principal} delegated={logon.delegated}\n".encode(), b"x" * size])


@pytest.fixture(scope="module")
def peers(no_kerberos_realm):
    block = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}"
    hosts = [SimulatedHost(name, f"{block}.{index}", 0, scheme, whoami, auth=auth)
             for index, (name, scheme, auth) in enumerate([("HTTP", "http", ("credssp",)),
                                                           ("HTTPS", "https", ("ntlm", "credssp")),
                                                           ("NTLM", "http", ("ntlm",))], start=1)]
    with Fleet(hosts, {USERNAME: PASSWORD}) as fleet:
        fleet.hosts = {h.name: h for h in hosts}
        yield fleet


def pywinrm_session(fleet: Fleet, name: str, password: str = PASSWORD) -> winrm.Session:
    host = fleet.hosts[name]
    return winrm.Session(f"{host.scheme}://{host.address}:{host.port}/wsman", auth=(USERNAME, password),
                         transport="credssp", server_cert_validation="validate",
                         ca_trust_path=str(fleet.ca_file))


@pytest.mark.parametrize("name", ["HTTP", "HTTPS"])
def test_pywinrm_delegates_over_credssp_with_parts_both_ways(peers, name):
    """pywinrm seals over HTTP (its message_encryption="auto"), 16 KiB per part both ways: a 20 KB command
    line (no cmd.exe, whose limit is 8 KB) and a 60 KB answer."""
    protocol = pywinrm_session(peers, name).protocol
    shell = protocol.open_shell()
    try:
        command = protocol.run_command(shell, SIZE, [str(BIG), "y" * 20_000], skip_cmd_shell=True)
        stdout, _, code = protocol.get_command_output(shell, command)
        protocol.cleanup_command(shell, command)
    finally:
        protocol.close_shell(shell)
    assert stdout.startswith(f"{USERNAME} delegated=True\n".encode()) and code == 0, stdout[:100]
    assert len(stdout) > BIG


def test_pywinrm_reads_the_acceptors_logon_denied(peers):
    with pytest.raises(NTStatusException) as raised:
        pywinrm_session(peers, "HTTPS", PASSWORD + "-old").run_cmd("size", ["0"])
    assert raised.value.status == SEC_E_LOGON_DENIED


def test_pywinrm_finds_no_credssp_where_the_listener_does_not_offer_it(peers):
    with pytest.raises(AuthenticationException, match="CredSSP"):
        pywinrm_session(peers, "NTLM").run_cmd("size", ["0"])


def test_the_listener_refuses_a_part_whose_length_is_not_the_tls_trailers(peers, monkeypatch):
    """The framing check is live: pywinrm with a trailer length one byte off gets 400, not an answer."""
    real = winrm.encryption.Encryption._get_credssp_trailer_length
    monkeypatch.setattr(winrm.encryption.Encryption, "_get_credssp_trailer_length",
                        lambda self, length, cipher: real(self, length, cipher) + 1)
    with pytest.raises(winrm.exceptions.WinRMTransportError) as raised:
        pywinrm_session(peers, "HTTP").run_cmd("size", ["0"])
    assert raised.value.code == 400
