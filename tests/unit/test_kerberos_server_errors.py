"""What a server's KRB-ERROR may do to the module's tickets, against a real MIT KDC (tests/conftest.py kdc_factory).

The KRB-ERROR a server puts in its 401 is its own word, unauthenticated: a compromised server, or one whose clock
runs ahead, can answer KRB_AP_ERR_TKT_EXPIRED to any ticket. The module's TGT is shared by its polls of every
server (kerberos.tickets_for), so that answer must cost only that server's service ticket, never the TGT: otherwise
every other server's next poll waits for a new AS exchange, and while the KDC does not answer they all fail
kdc_unreachable although the held TGT had hours to serve."""

from __future__ import annotations

import base64
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from exporter.config import load_config_text
from exporter.winrm.connection import Connection, Endpoint
from exporter.winrm.errors import PollFailure
from exporter.winrm.kerberos import Kerberos, kerberos_token, tickets_for

TKT_EXPIRED, SKEW = 32, 37
MODIFIED, BAD_INTEGRITY, BADKEYVER, NOKEY = 41, 31, 44, 45  # the server cannot decrypt its service ticket
LONG_HOST = "ex01-" + "m" * 42 + ".contoso.test"  # 60 characters: the longest a spn_key_mismatch message holds


def _der(tag: int, body: bytes) -> bytes:
    if len(body) < 128:
        return bytes([tag, len(body)]) + body
    size = len(body).to_bytes((len(body).bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def _int(value: int) -> bytes:
    return _der(0x02, value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True))


def krb_error_token(code: int, service: str, host: str, realm: str) -> bytes:
    """A GSS-API Kerberos error token (RFC 1964 TOK_ID 03 00) holding a KRB-ERROR (RFC 4120 5.9.1) with `code`."""
    field = lambda number, body: _der(0xA0 + number, body)  # noqa: E731
    text = lambda value: _der(0x1B, value.encode())  # noqa: E731
    now = _der(0x18, time.strftime("%Y%m%d%H%M%SZ", time.gmtime()).encode())
    sname = _der(0x30, field(0, _int(2)) + field(1, _der(0x30, text(service) + text(host))))
    body = _der(0x30, field(0, _int(5)) + field(1, _int(30)) + field(4, now) + field(5, _int(0))
                + field(6, _int(code)) + field(9, text(realm)) + field(10, sname))
    return _der(0x60, bytes.fromhex("06092a864886f712010202") + b"\x03\x00" + _der(0x7E, body))


class _Refusing(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    token = b""

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(401)
        self.send_header("WWW-Authenticate", "Negotiate " + base64.b64encode(self.token).decode())
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def refusing_server():
    servers = []

    def start(token: bytes) -> ThreadingHTTPServer:
        handler = type("Handler", (_Refusing,), {"token": token})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()  # shutdown() waits a poll
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _module(kdc, tmp_path):
    principal = kdc.add_principal("svc_monitor")
    keytab = kdc.keytab(tmp_path / "svc_monitor.keytab", principal)
    for host in ("ex01.contoso.test", "ex02.contoso.test", LONG_HOST):
        kdc.add_principal(f"HTTP/{host}")
    config = load_config_text(f"modules:\n  default:\n    transport: kerberos\n    username: {principal}\n"
                              f"    keytab_file: {keytab}\nservers:\n  - ex01.contoso.test\n", tmp_path)
    return config.modules["default"]


def _authenticate(module, server: ThreadingHTTPServer, host: str) -> PollFailure:
    deadline = time.monotonic() + 10
    connection = Connection.open(Endpoint.parse(f"http://127.0.0.1:{server.server_address[1]}/wsman"), None,
                                 deadline=deadline, timeout=5, max_response_bytes=1 << 20, user_agent="test")
    try:
        with pytest.raises(PollFailure) as failure:
            Kerberos(module, host, encrypt=True).open(connection, deadline=deadline, timeout=5)
    finally:
        connection.close()
    return failure.value


@pytest.mark.parametrize("code", [TKT_EXPIRED, SKEW])
def test_a_servers_krb_error_costs_only_its_own_service_ticket_never_the_shared_tgt(kdc_factory, tmp_path,
                                                                                    refusing_server, code):
    kdc = kdc_factory()
    module = _module(kdc, tmp_path)
    tickets = tickets_for(module)
    hostile = refusing_server(krb_error_token(code, "HTTP", "ex01.contoso.test", kdc.realm))

    failure = _authenticate(module, hostile, "ex01.contoso.test")
    assert failure.reason == "clock_skew", failure.message
    assert _service_tickets(tickets.ccache(), "HTTP/ex01.contoso.test@") or code == TKT_EXPIRED
    bought = tickets.acquisitions
    cache = tickets.ccache(time.monotonic() + 10)

    kdc.stop()  # the other servers' polls are served by the held TGT: no AS exchange is needed for them
    assert tickets.ccache(time.monotonic() + 10) == cache and tickets.acquisitions == bought == 1
    if code == TKT_EXPIRED:  # that server's service ticket is gone: its next poll asks the KDC for a new one
        assert not _service_tickets(cache, "HTTP/ex01.contoso.test@")


def _service_tickets(cache: str, prefix: str) -> list:
    import krb5

    context = krb5.init_context()
    return [c for c in krb5.cc_resolve(context, cache.encode()) if c.server.name.decode().startswith(prefix)]


@pytest.mark.parametrize("code", [MODIFIED, BAD_INTEGRITY, BADKEYVER, NOKEY])
def test_a_server_that_cannot_decrypt_its_ticket_is_no_rejected_credential(kdc_factory, tmp_path, refusing_server,
                                                                           code):
    """The KDC issued the service ticket, so it accepted the credential; the server holds another key for its SPN.
    That is spn_key_mismatch, which the credential guard does not count (auth_failed paused every server's polls),
    and it costs that server's service ticket only (the next poll gets one under the key the SPN has then)."""
    assert len(LONG_HOST) == 60
    kdc = kdc_factory()
    module = _module(kdc, tmp_path)
    tickets = tickets_for(module)
    server = refusing_server(krb_error_token(code, "HTTP", LONG_HOST, kdc.realm))

    failure = _authenticate(module, server, LONG_HOST)
    assert failure.reason == "spn_key_mismatch", failure.message
    assert failure.message.startswith("Kerberos: the server cannot decrypt its service ticket (")
    assert f"setspn -Q HTTP/{LONG_HOST} " in failure.message and failure.message.endswith("computer account's key")
    cache = tickets.ccache(time.monotonic() + 10)
    assert not _service_tickets(cache, f"HTTP/{LONG_HOST}@")
    kdc.stop()  # the TGT the other servers' polls share is kept: no AS exchange is needed for them
    assert tickets.ccache(time.monotonic() + 10) == cache and tickets.acquisitions == 1


def spnego_wrapped(token: bytes) -> bytes:
    """`token` as the responseToken of a SPNEGO NegTokenResp (RFC 4178 4.2.2), negState accept-incomplete: how a
    Windows server framed its KRB-ERROR in the capture below."""
    return _der(0xA1, _der(0x30, _der(0xA0, b"\x0a\x01\x01") + _der(0xA2, _der(0x04, token))))


# What an IIS 7 server sent in `WWW-Authenticate: Negotiate ...` with its 401 for a service ticket it could not
# decrypt, as Network Monitor showed it (Microsoft IIS support blog, asiatech, "IIS 7+ Kerberos authentication
# failure: KRB_AP_ERR_MODIFIED", learn.microsoft.com/en-us/archive/blogs/asiatech/iis-7-kerberos-authentication-
# failure-krb_ap_err_modified; the token's text as a copy of the post prints it, e-com-net.com/article/
# 1294178539167358976.htm, less a space its line break left). A NegTokenResp (negState accept-incomplete) whose
# responseToken is a GSS-API Kerberos token, TOK_ID 03 00, holding a KRB-ERROR: error-code 41
# (KRB_AP_ERR_MODIFIED), realm TEST.COM, sname contososvc, stime 2011-10-14 05:10:14Z.
WINDOWS_401 = base64.b64decode(
    "oWwwaqADCgEBomMEYWBfBgkqhkiG9xIBAgIDAH5QME6gAwIBBaEDAgEepBEYDzIwMTExMDE0MDUxMDE0WqUFAgMG362mAwIBKakKGwhURVNU"
    "LkNPTaoXMBWgAwIBAaEOMAwbCmNvbnRvc29zdmM=")


def test_the_windows_capture_is_a_krb_error_inside_spnego():
    inner = kerberos_token(WINDOWS_401)
    assert WINDOWS_401[:1] == b"\xa1" and inner == WINDOWS_401[13:]
    assert inner[:2] == b"\x60\x5f" and inner[4:15] == bytes.fromhex("2a864886f712010202") + b"\x03\x00"
    assert inner[15:17] == b"\x7e\x50" and b"\xa6\x03\x02\x01\x29" in inner  # error-code [6] 41
    assert spnego_wrapped(inner) == WINDOWS_401


def test_windows_own_401_for_an_undecryptable_ticket_is_spn_key_mismatch(kdc_factory, tmp_path, refusing_server):
    """Before, a SPNEGO-framed KRB-ERROR went whole to the raw Kerberos context, which refused it without a
    Kerberos code ("Kerberos failed: Success"): auth_failed, counted against the credential on every server."""
    kdc = kdc_factory()
    module = _module(kdc, tmp_path)
    failure = _authenticate(module, refusing_server(WINDOWS_401), "ex01.contoso.test")
    assert failure.reason == "spn_key_mismatch", failure.message


@pytest.mark.parametrize("code", [MODIFIED, BAD_INTEGRITY, BADKEYVER, NOKEY, SKEW])
def test_a_krb_error_in_a_spnego_answer_is_read_as_the_bare_one(kdc_factory, tmp_path, refusing_server, code):
    kdc = kdc_factory()
    module = _module(kdc, tmp_path)
    bare = _authenticate(module, refusing_server(krb_error_token(code, "HTTP", "ex01.contoso.test", kdc.realm)),
                         "ex01.contoso.test")
    framed = _authenticate(module, refusing_server(spnego_wrapped(krb_error_token(code, "HTTP", "ex01.contoso.test",
                                                                                   kdc.realm))), "ex01.contoso.test")
    assert framed.reason == bare.reason != "auth_failed", framed.message


@pytest.mark.parametrize("token", [
    b"", b"\xa1", b"\xa1\x85\x00\x00\x00\x00\x01", b"\xa1\x05\x30\x03\xa2\x01",  # cut short, length overlong
    b"\xa1\x00\x00",  # bytes after the NegTokenResp
    b"\xa1\x07\x30\x05\xa2\x03\x02\x01\x00",  # responseToken not an OCTET STRING
    b"\x60\x03\x06\x01\x00",  # a GSS-API token (raw Kerberos): not SPNEGO
])
def test_what_is_no_well_formed_negtokenresp_goes_to_the_context_as_it_came(token):
    assert kerberos_token(token) == token


def test_a_negtokenresp_without_a_response_token_is_a_bare_refusal():
    assert kerberos_token(_der(0xA1, _der(0x30, _der(0xA0, b"\x0a\x01\x02")))) is None  # negState reject
