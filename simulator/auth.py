"""WinRM authentication as a Windows listener does it: Basic per request, NTLM, Kerberos and CredSSP per TCP
connection.

Which Negotiate packages a host takes is its `auth` list (`ntlm`, `kerberos`): a domain that restricts NTLM
by policy refuses an NTLM token even from a known account. Kerberos tokens go to `kerberos.py` (MIT's
acceptor with the fleet's keytab); its client principal (`user@REALM`) is the account whose user name
matches, as a domain maps a ticket to its account.

`credssp` in the list turns on the listener's CredSSP scheme (WinRM's Service/Auth/CredSSP). The acceptor
is pyspnego's (`spnego.server(protocol="credssp")`): a TLS session carried in the CredSSP header, NTLM
inside it (pyspnego's Negotiate acceptor: NTLM, or Kerberos with the keys of the process's default keytab,
KRB5_KTNAME, since pyspnego's acceptor takes no other),
then the client's TSCredentials: the account's password itself, which the listener checks against the
account, as the logon Windows makes with it would. A connection that delivered it has a delegated logon.
Its TLS is capped at 1.2 with the GCM suites of Windows Server 2016/2019, whose SChannel has no TLS 1.3.

pyspnego's NTLM acceptor only reads passwords from the file named by the process environment variable
NTLM_USER_FILE (lines `DOMAIN:USER:PASSWORD`). Several fleets may live in one process (tests), so this
module keeps one private file holding the union of every live fleet's credentials and points
NTLM_USER_FILE at it; each connection then checks that the authenticated principal belongs to its own
fleet. The file is created 0600 in a private temporary directory and removed when the last fleet stops.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
import re
import ssl
import struct
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import spnego
import spnego.exceptions
import spnego.tls
from spnego.channel_bindings import GssChannelBindings

log = logging.getLogger(__name__)

ENCRYPTED_PROTOCOL = "application/HTTP-SPNEGO-session-encrypted"
ENCRYPTED_CONTENT_TYPE = f'multipart/encrypted;protocol="{ENCRYPTED_PROTOCOL}";boundary="Encrypted Boundary"'
CREDSSP_PROTOCOL = "application/HTTP-CredSSP-session-encrypted"
CREDSSP_CHUNK = 16384  # MS-WSMV 2.2.9.1.3: CredSSP seals at most 16 KiB per MIME part (one TLS record)
_CREDSSP_CIPHERS = "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256"
_BOUNDARY = b"--Encrypted Boundary"
_NTLM_TYPE1 = b"NTLMSSP\x00\x01\x00\x00\x00"


def _kerberos_token(token: bytes) -> bool:
    from .kerberos import is_kerberos  # python-gssapi: only fleets that take Kerberos need it

    return is_kerberos(token)


class CredentialError(ValueError):
    """A credential that the NTLM_USER_FILE format cannot represent, or a clash between fleets."""


class _UserFile:
    """The process-wide NTLM_USER_FILE shared by all fleets."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owners: dict[int, dict[str, str]] = {}
        self._directory: tempfile.TemporaryDirectory | None = None

    def register(self, owner: int, credentials: dict[str, str]) -> None:
        for user, password in credentials.items():
            if ":" in user or any(c in user + password for c in "\r\n") or ":" in password:
                raise CredentialError(f"credential for {user!r}: ':' and line breaks cannot be stored in NTLM_USER_FILE")
        with self._lock:
            merged = self._merged()
            for user, password in credentials.items():
                if merged.get(user.lower(), password) != password:
                    raise CredentialError(f"user {user!r} is already registered by another fleet with another password")
            self._owners[owner] = dict(credentials)
            self._write()

    def unregister(self, owner: int) -> None:
        with self._lock:
            self._owners.pop(owner, None)
            if self._owners:
                self._write()
            elif self._directory is not None:
                self._directory.cleanup()
                self._directory = None
                os.environ.pop("NTLM_USER_FILE", None)

    def _merged(self) -> dict[str, str]:
        return {user.lower(): pw for creds in self._owners.values() for user, pw in creds.items()}

    def _write(self) -> None:
        if self._directory is None:
            self._directory = tempfile.TemporaryDirectory(prefix="eems-sim-ntlm-")
        path = Path(self._directory.name) / "ntlm_users"
        lines = []
        for user, password in self._merged().items():
            domain, _, name = user.rpartition("\\")
            lines.append(f"{domain}:{name}:{password}\n")
        temp = path.with_suffix(".new")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.writelines(lines)
        os.replace(temp, path)
        os.environ["NTLM_USER_FILE"] = str(path)


USER_FILE = _UserFile()


def credssp_tls_context() -> spnego.tls.CredSSPTLSContext:
    """The TLS side of the fleet's CredSSP acceptor: a self-signed certificate, as the WinRM service makes one
    for CredSSP, TLS 1.2 at most with AES-GCM suites (SChannel's on Windows Server 2016/2019). Made once per
    fleet: an RSA key takes tens of milliseconds."""
    tls = spnego.tls.default_tls_context(usage="accept")
    tls.context.maximum_version = ssl.TLSVersion.TLSv1_2
    tls.context.set_ciphers(_CREDSSP_CIPHERS)
    certificate, key, public_key = spnego.tls.generate_tls_certificate()
    with tempfile.TemporaryDirectory(prefix="eems-sim-credssp-") as directory:
        path = Path(directory) / "credssp.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(certificate + key)
        tls.context.load_cert_chain(path)
    tls.public_key = public_key
    return tls


CERTIFICATE_AUTH = "http://schemas.dmtf.org/wbem/wsman/1/wsman/secprofile/https/mutual"


@dataclass
class AuthResult:
    """`principal` set = the request may proceed; otherwise answer 401 with `challenge` (or close)."""

    principal: str | None = None
    challenge: str | None = None  # WWW-Authenticate value with the next token (SPNEGO: also the final one)
    close: bool = False  # credentials rejected: 401 with Connection: close
    mechanism: str | None = None  # how `principal` authenticated: basic | ntlm | kerberos | credssp | certificate


class ConnectionAuth:
    """The authentication state of one TCP connection."""

    def __init__(self, credentials: dict[str, str], allow_basic: bool, channel_bindings: bytes | None,
                 certificate_user: str | None = None, *, methods: tuple[str, ...] = ("ntlm",),
                 kerberos=None, strict_channel_binding: bool = False,
                 credssp_tls: spnego.tls.CredSSPTLSContext | None = None) -> None:
        self._credentials = {user.lower(): password for user, password in credentials.items()}
        self._accounts = {user.rpartition("\\")[2].lower(): user for user in credentials}
        self._certificate_user = certificate_user  # CN of a client certificate the TLS layer verified
        self._allow_basic = allow_basic
        self._channel_bindings = channel_bindings
        self._bindings = GssChannelBindings(application_data=channel_bindings) if channel_bindings else None
        self._methods = methods
        self._kerberos = kerberos  # kerberos.Acceptor with the fleet's keytab, when any host takes Kerberos
        self._strict_channel_binding = strict_channel_binding
        self._credssp_tls = credssp_tls  # the fleet's CredSSP certificate, when any host takes CredSSP
        self._context: spnego.ContextProxy | None = None
        self._credssp: spnego.ContextProxy | None = None  # a CredSSP handshake in progress
        self._session = None  # the completed NTLM, Kerberos or CredSSP context of this connection
        self.principal: str | None = None  # who this connection authenticated as (NTLM, Kerberos or CredSSP)
        self._mechanism: str | None = None  # how: ntlm | kerberos | credssp
        self.delegated = False  # the client forwarded its TGT (Kerberos) or its password (CredSSP) to the logon

    @property
    def context(self):
        """The completed NTLM, Kerberos or CredSSP context (for message encryption), if this connection has one."""
        return self._session if self.principal else None

    @property
    def encryption(self) -> str:
        """The protocol of this connection's sealed messages (MS-WSMV 2.2.9.1)."""
        return CREDSSP_PROTOCOL if self._mechanism == "credssp" else ENCRYPTED_PROTOCOL

    def authenticate(self, authorization: str | None, deny: bool) -> AuthResult:
        """Judge one request's Authorization header. `deny` makes even valid credentials fail (fault injection)."""
        if not authorization:
            if self.principal and not deny:
                return AuthResult(principal=self.principal, mechanism=self._mechanism)
            return AuthResult()
        scheme, _, value = authorization.strip().partition(" ")
        scheme = scheme.lower()
        if scheme == "basic" and self._allow_basic:
            principal = self._check_basic(value.strip())
            return AuthResult(principal=principal, mechanism="basic") if principal and not deny else AuthResult(close=True)
        if scheme in ("negotiate", "kerberos", "ntlm", "credssp"):
            try:
                token = base64.b64decode(value.strip(), validate=True)
            except binascii.Error:
                return AuthResult(close=True)
            if scheme == "credssp":
                if "credssp" not in self._methods or self._credssp_tls is None:
                    return AuthResult(close=True)
                return self._step_credssp(token, deny)
            if scheme != "ntlm" and self._kerberos is not None and _kerberos_token(token):
                return self._step_kerberos(scheme, token, deny)
            if scheme == "kerberos" or "ntlm" not in self._methods:
                return AuthResult(close=True)  # NTLM restricted on this host, or not Kerberos under "Kerberos"
            return self._step_ntlm(scheme, token, deny)
        if authorization.strip() == CERTIFICATE_AUTH:
            user = self._certificate_user
            known = user is not None and user.lower() in self._credentials
            return AuthResult(principal=user, mechanism="certificate") if known and not deny else AuthResult(close=True)
        return AuthResult(close=True)

    def _check_basic(self, value: str) -> str | None:
        try:
            user, sep, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        expected = self._credentials.get(user.lower())
        if not sep or expected is None or not hmac.compare_digest(expected.encode(), password.encode()):
            return None
        return user

    def _step_kerberos(self, scheme: str, token: bytes, deny: bool) -> AuthResult:
        """One AP-REQ in, the AP-REP out (Kerberos needs one round trip). A rejection answers 401 with MIT's
        KRB-ERROR token when it made one, so the client can tell why (expired, skew, wrong key)."""
        from .kerberos import KerberosRejected

        self.principal, self._session, self.delegated = None, None, False
        header_scheme = "Kerberos" if scheme == "kerberos" else "Negotiate"
        if "kerberos" not in self._methods:
            return AuthResult(close=True)
        context = self._kerberos.context(self._channel_bindings)
        try:
            accepted = context.accept(token)
        except KerberosRejected as rejected:
            log.info("Kerberos token rejected: %s", rejected.reason)
            error = f"{header_scheme} {base64.b64encode(rejected.token).decode()}" if rejected.token else None
            return AuthResult(challenge=error, close=True)
        account = self._accounts.get(accepted.client_principal.rpartition("@")[0].lower())
        if deny or account is None or (self._strict_channel_binding and self._channel_bindings and not accepted.channel_bound):
            return AuthResult(close=True)
        self.principal, self._session, self.delegated = account, context, accepted.delegated
        self._mechanism = "kerberos"
        final = f"{header_scheme} {base64.b64encode(accepted.output_token).decode()}" if accepted.output_token else None
        return AuthResult(principal=account, challenge=final, mechanism="kerberos")

    def _step_credssp(self, token: bytes, deny: bool) -> AuthResult:
        """One CredSSP token in (MS-CSSP 3.1.5: TLS handshake, NTLM inside TLS, the public key binding, the
        TSCredentials), the next out under `CredSSP`; the exchange ends when the client's credentials arrive,
        answered 200 without a token. A failed NTLM step answers 401 with the TSRequest carrying its NTSTATUS
        (CredSSP 3 and later), as pyspnego's acceptor makes it; whether Windows sends it in the 401 or a bare 401
        is not documented, and a client must handle both."""
        if self._credssp is None or self.principal or _client_hello(token):
            self.principal, self._session, self.delegated = None, None, False
            self._credssp = spnego.server(protocol="credssp", credssp_tls_context=self._credssp_tls)
        try:
            out = self._credssp.step(token)
        except (spnego.exceptions.SpnegoError, ValueError, struct.error, IndexError, KeyError, TypeError,
                ssl.SSLError) as error:  # a token that is not CredSSP, a bad public key binding
            log.info("CredSSP token rejected: %s", type(error).__name__)
            self._credssp = None
            return AuthResult(close=True)
        challenge = f"CredSSP {base64.b64encode(out).decode()}" if out else None
        if not self._credssp.complete:
            if out is None or self._credssp.get_extra_info("auth_stage") == "Authentication failure":
                self._credssp = None  # the acceptor gave up (a wrong password): its error TSRequest, if any
                return AuthResult(challenge=challenge, close=True)
            return AuthResult(challenge=challenge)
        context, self._credssp = self._credssp, None
        principal = self._account(context.client_principal or "")
        if deny or principal.lower() not in self._credentials or not self._logs_on(principal, context):
            return AuthResult(close=True)
        self.principal, self._session, self._mechanism, self.delegated = principal, context, "credssp", True
        return AuthResult(principal=principal, mechanism="credssp")

    def _account(self, principal: str) -> str:
        """The account a principal authenticated inside CredSSP names: DOMAIN\\user from NTLM as it is, user@REALM
        from Kerberos (or a UPN in the TSCredentials) as the account of that user name, as `_step_kerberos` maps it."""
        if "@" in principal:
            return self._accounts.get(principal.rpartition("@")[0].lower(), "")
        return principal

    def _logs_on(self, principal: str, context: spnego.ContextProxy) -> bool:
        """Whether the delegated TSCredentials are a password for the account NTLM or Kerberos authenticated
        (Windows logs the session on with them; a credential for someone else, or a wrong password, gets no logon)."""
        credential = context.get_extra_info("client_credential")
        password = getattr(credential, "password", None)
        if not isinstance(password, str):
            return False  # a smart card or Remote Guard credential: no password to log on with
        user = f"{credential.domain_name}\\{credential.username}" if credential.domain_name else credential.username
        expected = self._credentials[principal.lower()]
        return self._account(user).lower() == principal.lower() and hmac.compare_digest(expected.encode(),
                                                                                        password.encode())

    def _step_ntlm(self, scheme: str, token: bytes, deny: bool) -> AuthResult:
        if self._context is None or token.startswith(_NTLM_TYPE1) or self.principal:
            self.principal, self._session, self.delegated = None, None, False
            self._context = spnego.server(protocol="negotiate", channel_bindings=self._bindings)
        try:
            out = self._context.step(token)
        except (spnego.exceptions.SpnegoError, ValueError, struct.error):
            self._context = None
            return AuthResult(close=True)
        header_scheme = "Negotiate" if scheme == "negotiate" else "NTLM"
        if not self._context.complete:
            return AuthResult(challenge=f"{header_scheme} {base64.b64encode(out or b'').decode()}")
        principal = self._context.client_principal or ""
        if deny or principal.lower() not in self._credentials:
            self._context = None
            return AuthResult(close=True)
        self.principal, self._session, self._mechanism = principal, self._context, "ntlm"
        final = f"{header_scheme} {base64.b64encode(out).decode()}" if out else None
        return AuthResult(principal=principal, challenge=final, mechanism=self._mechanism)


def _client_hello(token: bytes) -> bool:
    """A TLS ClientHello (a handshake record whose first message is type 1): a client starting CredSSP again."""
    return token[:2] == b"\x16\x03" and token[5:6] == b"\x01"


class EncryptionError(ValueError):
    """An encrypted body that cannot be decrypted or whose length does not match."""


_PART = re.compile(rb"--\s*Encrypted Boundary(?:--)?\r\n")
_OCTETS = b"\tContent-Type: application/octet-stream\r\n"


def encryption_protocol(content_type: str) -> str | None:
    """The protocol a sealed request names (SPNEGO for NTLM and Kerberos, or CredSSP); None for plain SOAP."""
    lower = content_type.lower()
    if not lower.startswith(("multipart/encrypted", "multipart/x-multi-encrypted")):
        return None
    for protocol in (ENCRYPTED_PROTOCOL, CREDSSP_PROTOCOL):
        if protocol.lower() in lower:
            return protocol
    return None


def is_encrypted(content_type: str) -> bool:
    return encryption_protocol(content_type) is not None


def unwrap_body(context: spnego.ContextProxy, body: bytes, protocol: str = ENCRYPTED_PROTOCOL) -> bytes:
    """Decrypt a sealed request body (MS-WSMV 2.2.9.1): one pair of MIME parts, or for CredSSP one pair per
    16 KiB of the message (multipart/x-multi-encrypted). A CredSSP part's length field must be the TLS
    trailer's length, as SChannel's stream sizes give it and pywinrm computes it."""
    parts = [part for part in _PART.split(body) if part]
    pairs = len(parts) // 2
    if len(parts) % 2 or not pairs or (pairs > 1 and protocol != CREDSSP_PROTOCOL):
        raise EncryptionError("expected one encrypted MIME part pair (several only with CredSSP)")
    message = bytearray()
    for header, payload in zip(parts[::2], parts[1::2]):
        if f"\tContent-Type: {protocol}\r\n".encode() not in header:
            raise EncryptionError("the encrypted part does not name the connection's protocol")
        match = re.search(rb"Length=(\d+)", header)
        if not match:
            raise EncryptionError("OriginalContent has no Length")
        if not payload.startswith(_OCTETS) or len(payload) < len(_OCTETS) + 4:
            raise EncryptionError("encrypted part has no octet-stream payload")
        payload = payload[len(_OCTETS):]
        (header_length,) = struct.unpack("<i", payload[:4])
        if not 0 < header_length <= len(payload) - 4:
            raise EncryptionError("bad signature length")
        if protocol == CREDSSP_PROTOCOL and header_length != context.query_message_sizes().header:
            raise EncryptionError("the CredSSP part's length is not the TLS trailer's")
        try:
            plain = context.unwrap_winrm(payload[4 : 4 + header_length], payload[4 + header_length :])
        except (spnego.exceptions.SpnegoError, ValueError) as exc:  # ValueError: the Kerberos context's unwrap
            raise EncryptionError("message signature check failed") from exc
        if len(plain) != int(match.group(1)):
            raise EncryptionError("decrypted length does not match OriginalContent Length")
        if protocol == CREDSSP_PROTOCOL and len(plain) > CREDSSP_CHUNK:
            raise EncryptionError("a CredSSP part carries more than 16 KiB")
        message += plain
    return bytes(message)


def wrap_body(context: spnego.ContextProxy, plain: bytes, protocol: str = ENCRYPTED_PROTOCOL) -> bytes:
    """Encrypt a response body with the framing Windows uses. CredSSP seals each 16 KiB in a part of its own
    (its Content-Type: `sealed_content_type`)."""
    if protocol == CREDSSP_PROTOCOL:
        chunks = [plain[i : i + CREDSSP_CHUNK] for i in range(0, len(plain), CREDSSP_CHUNK)] or [b""]
    else:
        chunks = [plain]
    body = b""
    for chunk in chunks:
        wrapped = context.wrap_winrm(chunk)
        body += (
            _BOUNDARY + b"\r\n"
            b"\tContent-Type: " + protocol.encode() + b"\r\n"
            b"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length=" + str(len(chunk)).encode() + b"\r\n"
            + _BOUNDARY + b"\r\n" + _OCTETS
            + struct.pack("<i", len(wrapped.header)) + wrapped.header + wrapped.data
        )
    return body + _BOUNDARY + b"--\r\n"


def sealed_content_type(protocol: str, length: int) -> str:
    """The Content-Type of a sealed message of `length` bytes: CredSSP's over 16 KiB is multipart/x-multi-encrypted."""
    kind = "multipart/x-multi-encrypted" if protocol == CREDSSP_PROTOCOL and length > CREDSSP_CHUNK else "multipart/encrypted"
    return f'{kind};protocol="{protocol}";boundary="Encrypted Boundary"'
