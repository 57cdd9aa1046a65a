"""Kerberos on the simulated WinRM listener, as a domain member's HTTP.sys and WinRM service take it.

The acceptor is MIT's, through python-gssapi, with the fleet's own keytab (the keys of every host's
`HTTP/<fqdn>` and `WSMAN/<fqdn>` principals, as a computer account holds them). It takes the two forms a
Windows listener takes under `Authorization: Negotiate` or `Kerberos`: a SPNEGO token carrying Kerberos,
and a raw Kerberos token (krb5 mechanism OID), which is what pywinrm and pyspnego's `protocol="kerberos"`
send. NTLM inside Negotiate stays with `auth.py`.

pyspnego's own acceptor is not used here: it hides every rejection (wrong key, expired ticket, channel
binding mismatch) behind an AttributeError, and a simulator must say why it refused. python-gssapi's raw
calls raise the real GSS error, with the KRB-ERROR token MIT produced, which the listener returns in its
401 as a Windows acceptor returns the error token SSPI gives it; a client can then read the real reason
(for example "Clock skew too great") instead of a bare 401.

Message encryption is MS-WSMV's: GSS wrap with a header, data and padding buffer (IOV), as Windows and
pyspnego's `wrap_winrm` do it. Channel binding: over HTTPS the acceptor checks the tls-server-end-point
binding. MIT accepts a client that sends no binding (Windows' CbtHardeningLevel "Relaxed", its default) and
reports a verified binding with GSS_C_CHANNEL_BOUND_FLAG, which `channel_bound` exposes so a host with
`cbt_hardening: strict` can refuse a token without one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import gssapi
import gssapi.raw
from gssapi.raw import IOV, IOVBufferType, ChannelBindings

log = logging.getLogger(__name__)

KRB5_OID = bytes.fromhex("06092a864886f712010202")  # 1.2.840.113554.1.2.2
MS_KRB5_OID = bytes.fromhex("06092a864882f712010202")  # 1.2.840.48018.1.2.2, Windows' legacy alias
SPNEGO_OID = bytes.fromhex("06062b0601050502")  # 1.3.6.1.5.5.2
CHANNEL_BOUND_FLAG = 2048  # GSS_C_CHANNEL_BOUND_FLAG, MIT 1.19+
DELEGATE_FLAG = 1  # GSS_C_DELEG_FLAG


def _der_header(data: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the DER element at `offset`; ValueError if malformed."""
    if offset + 2 > len(data):
        raise ValueError("truncated DER element")
    tag, first = data[offset], data[offset + 1]
    offset += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if not 0 < count <= 4 or offset + count > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[offset : offset + count], "big")
        offset += count
    if offset + length > len(data):
        raise ValueError("DER element longer than the token")
    return tag, offset, offset + length


def first_mechanism(token: bytes) -> bytes | None:
    """The mechanism OID (DER, tag included) an initial context token is for: the krb5 OID for a raw
    Kerberos token; for SPNEGO, the first of the client's mechTypes (the one its optimistic token is for).
    None for anything else, NTLMSSP included."""
    try:
        tag, start, _ = _der_header(token, 0)
        if tag != 0x60:  # [APPLICATION 0] InitialContextToken
            return None
        _, oid_start, oid_end = _der_header(token, start)
        oid = token[start:oid_end]
        if oid != SPNEGO_OID:
            return oid
        # NegotiationToken ::= CHOICE { negTokenInit [0] NegTokenInit } ; NegTokenInit ::= SEQUENCE {
        #   mechTypes [0] MechTypeList (SEQUENCE OF OID), ... }
        inner = oid_end
        for expected in (0xA0, 0x30, 0xA0, 0x30):  # [0] negTokenInit, SEQUENCE, [0] mechTypes, SEQUENCE OF
            tag, inner, _ = _der_header(token, inner)
            if tag != expected:
                return None
        tag, _, end = _der_header(token, inner)
        return token[inner:end] if tag == 0x06 else None
    except ValueError:
        return None


def is_kerberos(token: bytes) -> bool:
    return first_mechanism(token) in (KRB5_OID, MS_KRB5_OID)


class KerberosRejected(Exception):
    """The acceptor refused a token: `reason` is MIT's text, `token` the KRB-ERROR to send back (or None)."""

    def __init__(self, reason: str, token: bytes | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.token = token


class Acceptor:
    """The fleet's acceptor credential: every key in `keytab`; replay cache in `rcache_dir`."""

    def __init__(self, keytab: Path, rcache_dir: Path) -> None:
        self.keytab = Path(keytab)
        rcache_dir.mkdir(parents=True, exist_ok=True)
        store = {b"keytab": str(self.keytab).encode(), b"rcache": f"file2:{rcache_dir / 'rcache2'}".encode()}
        self._creds = gssapi.raw.acquire_cred_from(store, usage="accept").creds

    def context(self, channel_bindings: bytes | None) -> AcceptContext:
        return AcceptContext(self._creds, channel_bindings)


@dataclass
class Accepted:
    client_principal: str  # user@REALM
    output_token: bytes | None  # the AP-REP (mutual authentication), for the 200's WWW-Authenticate
    channel_bound: bool
    delegated: bool  # the client forwarded its ticket-granting ticket


class AcceptContext:
    """One connection's Kerberos security context, after `accept` the WinRM message wrap/unwrap."""

    def __init__(self, creds, channel_bindings: bytes | None) -> None:
        self._creds = creds
        self._bindings = (
            ChannelBindings(initiator_address_type=0, acceptor_address_type=0, application_data=channel_bindings)
            if channel_bindings else None
        )
        self._context = None

    def accept(self, token: bytes) -> Accepted:
        """Kerberos completes in one round trip: one AP-REQ in, the AP-REP out."""
        try:
            result = gssapi.raw.accept_sec_context(token, self._creds, None, self._bindings)
        except gssapi.raw.GSSError as exc:
            raise KerberosRejected(_describe(exc), getattr(exc, "token", None)) from None
        if result.more_steps:
            raise KerberosRejected("the token asked for another round trip, which Kerberos never needs")
        self._context = result.context
        flags = int(result.flags)
        return Accepted(
            client_principal=gssapi.raw.display_name(result.initiator_name).name.decode("utf-8", "replace"),
            output_token=result.token or None,
            channel_bound=bool(flags & CHANNEL_BOUND_FLAG),
            delegated=result.delegated_creds is not None and bool(flags & DELEGATE_FLAG),
        )

    def wrap_winrm(self, plain: bytes) -> _Wrapped:
        iov = IOV(IOVBufferType.header, plain, IOVBufferType.padding, std_layout=False)
        gssapi.raw.wrap_iov(self._context, iov, confidential=True)
        padding = iov[2].value or b""
        return _Wrapped(header=iov[0].value or b"", data=(iov[1].value or b"") + padding)

    def unwrap_winrm(self, header: bytes, data: bytes) -> bytes:
        iov = IOV((IOVBufferType.header, False, header), data, IOVBufferType.data, std_layout=False)
        try:
            gssapi.raw.unwrap_iov(self._context, iov)
        except gssapi.raw.GSSError as exc:
            raise ValueError(_describe(exc)) from None
        return iov[1].value or b""


@dataclass
class _Wrapped:
    header: bytes
    data: bytes


def _describe(exc: gssapi.raw.GSSError) -> str:
    """MIT's minor text ("Clock skew too great"), or the major one when there is none."""
    text = " ".join(str(exc).split())
    minor = text.rpartition("Minor (")[2]
    return minor.partition("): ")[2] or text
