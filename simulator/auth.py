"""WinRM authentication as a Windows listener does it: Basic per request, NTLM and Kerberos per TCP connection.

Which Negotiate packages a host takes is its `auth` list (`ntlm`, `kerberos`): a domain that restricts NTLM
by policy refuses an NTLM token even from a known account. Kerberos tokens go to `kerberos.py` (MIT's
acceptor with the fleet's keytab); its client principal (`user@REALM`) is the account whose user name
matches, as a domain maps a ticket to its account.

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
import struct
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import spnego
import spnego.exceptions
from spnego.channel_bindings import GssChannelBindings

log = logging.getLogger(__name__)

ENCRYPTED_PROTOCOL = "application/HTTP-SPNEGO-session-encrypted"
ENCRYPTED_CONTENT_TYPE = f'multipart/encrypted;protocol="{ENCRYPTED_PROTOCOL}";boundary="Encrypted Boundary"'
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


CERTIFICATE_AUTH = "http://schemas.dmtf.org/wbem/wsman/1/wsman/secprofile/https/mutual"


@dataclass
class AuthResult:
    """`principal` set = the request may proceed; otherwise answer 401 with `challenge` (or close)."""

    principal: str | None = None
    challenge: str | None = None  # WWW-Authenticate value with the next token (SPNEGO: also the final one)
    close: bool = False  # credentials rejected: 401 with Connection: close
    mechanism: str | None = None  # how `principal` authenticated: basic | ntlm | kerberos | certificate


class ConnectionAuth:
    """The authentication state of one TCP connection."""

    def __init__(self, credentials: dict[str, str], allow_basic: bool, channel_bindings: bytes | None,
                 certificate_user: str | None = None, *, methods: tuple[str, ...] = ("ntlm",),
                 kerberos=None, strict_channel_binding: bool = False) -> None:
        self._credentials = {user.lower(): password for user, password in credentials.items()}
        self._accounts = {user.rpartition("\\")[2].lower(): user for user in credentials}
        self._certificate_user = certificate_user  # CN of a client certificate the TLS layer verified
        self._allow_basic = allow_basic
        self._channel_bindings = channel_bindings
        self._bindings = GssChannelBindings(application_data=channel_bindings) if channel_bindings else None
        self._methods = methods
        self._kerberos = kerberos  # kerberos.Acceptor with the fleet's keytab, when any host takes Kerberos
        self._strict_channel_binding = strict_channel_binding
        self._context: spnego.ContextProxy | None = None
        self._session = None  # the completed NTLM or Kerberos context of this connection
        self.principal: str | None = None  # who this connection authenticated as (NTLM or Kerberos)
        self._mechanism: str | None = None  # how: ntlm | kerberos
        self.delegated = False  # Kerberos: the client forwarded its TGT to this connection's logon

    @property
    def context(self):
        """The completed NTLM or Kerberos context (for message encryption), if this connection has one."""
        return self._session if self.principal else None

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
        if scheme in ("negotiate", "kerberos", "ntlm"):
            try:
                token = base64.b64decode(value.strip(), validate=True)
            except binascii.Error:
                return AuthResult(close=True)
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


class EncryptionError(ValueError):
    """An encrypted body that cannot be decrypted or whose length does not match."""


def is_encrypted(content_type: str) -> bool:
    return content_type.lower().startswith("multipart/encrypted") and ENCRYPTED_PROTOCOL.lower() in content_type.lower()


def unwrap_body(context: spnego.ContextProxy, body: bytes) -> bytes:
    """Decrypt a `multipart/encrypted` request body (MS-WSMV 2.2.9.1.1 framing)."""
    parts = [part for part in re.split(rb"--\s*Encrypted Boundary(?:--)?\r\n", body) if part]
    if len(parts) != 2:
        raise EncryptionError("expected one encrypted MIME part pair")
    match = re.search(rb"Length=(\d+)", parts[0])
    if not match:
        raise EncryptionError("OriginalContent has no Length")
    payload = parts[1]
    prefix = b"\tContent-Type: application/octet-stream\r\n"
    if not payload.startswith(prefix) or len(payload) < len(prefix) + 4:
        raise EncryptionError("encrypted part has no octet-stream payload")
    payload = payload[len(prefix):]
    (header_length,) = struct.unpack("<i", payload[:4])
    if not 0 < header_length <= len(payload) - 4:
        raise EncryptionError("bad signature length")
    try:
        plain = context.unwrap_winrm(payload[4 : 4 + header_length], payload[4 + header_length :])
    except (spnego.exceptions.SpnegoError, ValueError) as exc:  # ValueError: the Kerberos context's unwrap
        raise EncryptionError("message signature check failed") from exc
    if len(plain) != int(match.group(1)):
        raise EncryptionError("decrypted length does not match OriginalContent Length")
    return plain


def wrap_body(context: spnego.ContextProxy, plain: bytes) -> bytes:
    """Encrypt a response body with the same framing Windows uses."""
    wrapped = context.wrap_winrm(plain)
    return (
        _BOUNDARY + b"\r\n"
        b"\tContent-Type: " + ENCRYPTED_PROTOCOL.encode() + b"\r\n"
        b"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length=" + str(len(plain)).encode() + b"\r\n"
        + _BOUNDARY + b"\r\n"
        b"\tContent-Type: application/octet-stream\r\n"
        + struct.pack("<i", len(wrapped.header)) + wrapped.header + wrapped.data
        + _BOUNDARY + b"--\r\n"
    )
