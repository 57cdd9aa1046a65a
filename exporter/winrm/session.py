"""An authenticated connection (`Channel`), the HTTP token handshake that authenticates one, and the sealing of its
messages over plain HTTP (`MessageSeal`).

Basic and certificate authentication send the same header with every request; NTLM, Kerberos and
CredSSP authenticate the connection once, by exchanging security tokens on empty POSTs (as pywinrm
and pypsrp do before message encryption, and as Windows' own client does), after which each request
carries only its message, sealed over plain HTTP. Every request of a channel takes the same path:
`Channel.exchange`.

WinRM message encryption over plain HTTP (MS-WSMV 2.2.9.1): each SOAP message is sealed by the security
context that authenticated the connection, in the MIME framing Windows expects. The sealing itself is
pyspnego's public `wrap_winrm`/`unwrap_winrm`, for NTLM, Kerberos and CredSSP alike; `MessageSeal` only frames
it. On an encrypted connection every successful answer must come sealed: a plain one would be a server (or
someone between us) skipping the integrity protection.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from typing import Callable

import spnego
import spnego.exceptions
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from spnego.channel_bindings import GssChannelBindings

from . import wsman
from .connection import Answer, Connection
from .errors import AuthenticationRejected, HTTPStatusError, MalformedAnswer, PollFailure

SOAP_CONTENT_TYPE = "application/soap+xml;charset=UTF-8"
MAX_HANDSHAKE_ROUNDS = 8  # NTLM needs 2, Kerberos 1 or 2, CredSSP about 5
_TOKEN = re.compile(r"\s*([A-Za-z]+)(?:\s+([A-Za-z0-9+/=]+))?\s*$")
SPNEGO = "application/HTTP-SPNEGO-session-encrypted"  # Negotiate: NTLM, or Kerberos inside SPNEGO
CREDSSP = "application/HTTP-CredSSP-session-encrypted"
CREDSSP_CHUNK = 16384  # CredSSP seals at most 16 KiB per part (multipart/x-multi-encrypted)
_BOUNDARY = b"--Encrypted Boundary"
_PART = re.compile(rb"--\s*Encrypted Boundary(?:--)?\r\n")  # Exchange's IIS puts a space after the dashes
_LENGTH = re.compile(rb"\tOriginalContent: [^\r\n]*Length=(\d{1,10})\s*\Z")
_OCTETS = b"\tContent-Type: application/octet-stream\r\n"
# A part's header is two short lines (about 110 bytes). `_LENGTH` is searched only in one this long: searched in a
# long run of "\tOriginalContent: " it took quadratic time (288 KB, 9 s; 4 MiB, half an hour with the GIL held).
MAX_PART_HEADER = 1024


# A context or credential past its end: pyspnego's errors, and python-gssapi's (the kerberos extra), which pyspnego
# passes through unchanged from wrap and unwrap.
try:
    from gssapi.raw.exceptions import ExpiredContextError, ExpiredCredentialsError
except ImportError:  # no Kerberos: nothing expires
    EXPIRED = (spnego.exceptions.ContextExpiredError, spnego.exceptions.CredentialsExpiredError)
else:
    EXPIRED = (spnego.exceptions.ContextExpiredError, spnego.exceptions.CredentialsExpiredError, ExpiredContextError,
               ExpiredCredentialsError)


def ran_out() -> PollFailure:
    """A Kerberos context whose ticket ended during the poll. The held ticket is used until it ends while the KDC
    does not answer its renewal, so a poll that starts shortly before then may outlive it: a KDC outage, not an
    internal error (as it was)."""
    return PollFailure("kdc_unreachable", "the Kerberos ticket ran out during the poll: the KDC gave no newer one "
                                          "(it did not answer the renewal)")


class MessageSeal:
    """Seals requests and unseals answers for one authenticated connection."""

    def __init__(self, context: spnego.ContextProxy, protocol: str):
        self._context = context
        self.protocol = protocol
        self._chunk = CREDSSP_CHUNK if protocol == CREDSSP else None
        self._protocol_parameter = f'protocol="{protocol}"'

    def wrap(self, message: bytes) -> tuple[bytes, str]:
        """The request body carrying `message`, and its Content-Type."""
        if self._chunk is not None and len(message) > self._chunk:
            parts = [message[i:i + self._chunk] for i in range(0, len(message), self._chunk)]
            kind = "multipart/x-multi-encrypted"
        else:
            parts, kind = [message], "multipart/encrypted"
        body = b"".join(self._part(part) for part in parts) + _BOUNDARY + b"--\r\n"
        return body, f'{kind};{self._protocol_parameter};boundary="Encrypted Boundary"'

    def _part(self, message: bytes) -> bytes:
        try:
            wrapped = self._context.wrap_winrm(message)
        except EXPIRED:
            raise ran_out() from None
        return (
            _BOUNDARY + b"\r\n\tContent-Type: " + self.protocol.encode() + b"\r\n"
            b"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length="
            + str(len(message) + wrapped.padding_length).encode() + b"\r\n"
            + _BOUNDARY + b"\r\n" + _OCTETS
            + struct.pack("<i", len(wrapped.header)) + wrapped.header + wrapped.data
        )

    def sealed(self, answer: Answer) -> bool:
        return self._protocol_parameter in (answer.headers.get("Content-Type") or "")

    def unwrap(self, answer: Answer) -> bytes:
        """The SOAP message inside a sealed answer."""
        parts = [part for part in _PART.split(answer.body) if part]
        if not parts or len(parts) % 2:
            raise MalformedAnswer("an encrypted answer without pairs of MIME parts")
        message = bytearray()
        for header, payload in zip(parts[::2], parts[1::2]):
            if len(header) > MAX_PART_HEADER:
                raise MalformedAnswer(f"an encrypted answer part whose MIME header exceeds {MAX_PART_HEADER} bytes")
            length = _LENGTH.search(header)
            if length is None or not payload.startswith(_OCTETS) or len(payload) < len(_OCTETS) + 4:
                raise MalformedAnswer("an encrypted answer part without its length or payload")
            payload = payload[len(_OCTETS):]
            (size,) = struct.unpack("<i", payload[:4])
            if not 0 < size <= len(payload) - 4:
                raise MalformedAnswer("an encrypted answer part with an impossible signature length")
            try:
                plain = self._context.unwrap_winrm(payload[4:4 + size], payload[4 + size:])
            except EXPIRED:
                raise ran_out() from None
            except (spnego.exceptions.SpnegoError, ValueError, struct.error):
                raise MalformedAnswer("an encrypted answer that does not decrypt or whose signature does not "
                                      "verify") from None
            if len(plain) != int(length.group(1)):
                raise MalformedAnswer("an encrypted answer whose length does not match its header")
            message += plain
        return bytes(message)


class Channel:
    """A connection every request of which is authenticated: `headers` go with each, `seal` seals each body."""

    def __init__(self, connection: Connection, headers: str = "", seal: MessageSeal | None = None,
                 valid_until: float | None = None):
        self.connection = connection
        self.valid_until = valid_until  # monotonic time its authentication ends (Kerberos: the ticket's end)
        self._headers = headers
        self._seal = seal
        self._plain_type = f"{headers}Content-Type: {SOAP_CONTENT_TYPE}\r\n"

    def exchange(self, message: bytes, *, deadline: float, timeout: float) -> bytes:
        """Send one SOAP message; its answer, or the fault or status it got as an exception."""
        if self._seal is not None:
            body, content_type = self._seal.wrap(message)
            headers = f"{self._headers}Content-Type: {content_type}\r\n"
        else:
            body, headers = message, self._plain_type
        answer = self.connection.post(body, headers, deadline=deadline, timeout=timeout)
        text = self._text(answer)
        if answer.status == 200:
            return text
        if answer.status == 401:
            raise AuthenticationRejected("the server rejected the credentials (HTTP 401)")
        fault = wsman.fault(text)
        if fault is not None:
            raise fault
        raise HTTPStatusError(answer.status)

    def _text(self, answer: Answer) -> bytes:
        if self._seal is None:
            return answer.body
        if self._seal.sealed(answer):
            return self._seal.unwrap(answer)
        if answer.status == 200:
            raise MalformedAnswer("an unencrypted answer on an encrypted connection")
        return answer.body  # HTTP.sys's own errors (400, 503, ...) are never sealed


def channel_bindings(connection: Connection) -> GssChannelBindings | None:
    """RFC 5929 tls-server-end-point of the server's certificate (the hash its signature uses, at least
    SHA-256), which ties NTLM and Kerberos tokens to this TLS connection; None over plain HTTP."""
    certificate = connection.certificate()
    if certificate is None:
        return None
    try:
        algorithm = x509.load_der_x509_certificate(certificate).signature_hash_algorithm
        name = algorithm.name if algorithm is not None else "sha256"
    except (UnsupportedAlgorithm, ValueError):
        name = "sha256"
    if name in ("md5", "sha1") or name not in hashlib.algorithms_available:
        name = "sha256"
    digest = hashlib.new(name, certificate).digest()
    return GssChannelBindings(application_data=b"tls-server-end-point:" + digest)


def handshake(connection: Connection, context: spnego.ContextProxy, scheme: str, *, deadline: float,
              timeout: float, bindings: GssChannelBindings | None, first_token: bytes | None = None,
              inner: Callable[[bytes], bytes | None] | None = None) -> None:
    """Authenticate `connection` by exchanging `context`'s tokens under the `scheme` header (Negotiate,
    Kerberos, CredSSP) on empty POSTs until the server answers 200. `first_token`: the context's first step,
    when the caller took it (Kerberos: it asks the KDC for the service ticket). `inner`: what of the server's
    token goes to the context (Kerberos: the token inside a SPNEGO answer; None, no token at all)."""
    token = first_token if first_token is not None else _step(context, None, bindings)
    for _ in range(MAX_HANDSHAKE_ROUNDS):
        answer = connection.post(b"", f"Authorization: {scheme} {base64.b64encode(token or b'').decode()}\r\n",
                                 deadline=deadline, timeout=timeout)
        reply = _server_token(answer, scheme)
        if reply and inner is not None:
            reply = inner(reply)
        if answer.status == 200:
            if reply and not context.complete:  # mutual authentication (Kerberos): the server's last token
                _step(context, reply, bindings)
            if not context.complete:
                raise AuthenticationRejected(f"the server accepted an incomplete {scheme} authentication")
            return
        if answer.status != 401:
            raise HTTPStatusError(answer.status)
        if context.complete or not reply:
            raise AuthenticationRejected("the server rejected the credentials (HTTP 401)")
        token = _step(context, reply, bindings)
    raise AuthenticationRejected(f"the {scheme} handshake did not end after {MAX_HANDSHAKE_ROUNDS} rounds")


def _step(context: spnego.ContextProxy, token: bytes | None, bindings: GssChannelBindings | None) -> bytes | None:
    try:
        return context.step(token, channel_bindings=bindings)
    # struct.error: a token cut short; OverflowError: a timestamp past year 9999 (pyspnego reads both unchecked)
    except (spnego.exceptions.SpnegoError, ValueError, KeyError, IndexError, TypeError, struct.error,
            OverflowError) as error:
        raise AuthenticationRejected(f"the authentication handshake failed: the server's token was not valid "
                                     f"({error.__class__.__name__})") from error  # Kerberos reads the cause


def _server_token(answer: Answer, scheme: str) -> bytes | None:
    """The token the server sent under `scheme` in WWW-Authenticate, if any."""
    for value in answer.headers.get_all("WWW-Authenticate") or ():
        for offer in value.split(","):
            match = _TOKEN.match(offer)
            if match and match.group(1).lower() == scheme.lower() and match.group(2):
                try:
                    return base64.b64decode(match.group(2), validate=True)
                except binascii.Error:
                    raise AuthenticationRejected("the server's authentication token is not base64") from None
    return None
