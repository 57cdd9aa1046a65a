"""An authenticated connection (`Channel`) and the HTTP token handshake that authenticates one.

Basic and certificate authentication send the same header with every request; NTLM, Kerberos and
CredSSP authenticate the connection once, by exchanging security tokens on empty POSTs (as pywinrm
and pypsrp do before message encryption, and as Windows' own client does), after which each request
carries only its message, sealed over plain HTTP (`encryption.py`). Every request of a channel takes
the same path: `Channel.exchange`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

import spnego
import spnego.exceptions
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from spnego.channel_bindings import GssChannelBindings

from . import wsman
from .connection import Answer, Connection
from .encryption import MessageSeal
from .errors import AuthenticationRejected, HTTPStatusError, MalformedAnswer

SOAP_CONTENT_TYPE = "application/soap+xml;charset=UTF-8"
MAX_HANDSHAKE_ROUNDS = 8  # NTLM needs 2, Kerberos 1 or 2, CredSSP about 5
_TOKEN = re.compile(r"\s*([A-Za-z]+)(?:\s+([A-Za-z0-9+/=]+))?\s*$")


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
              timeout: float, bindings: GssChannelBindings | None) -> None:
    """Authenticate `connection` by exchanging `context`'s tokens under the `scheme` header (Negotiate,
    Kerberos, CredSSP) on empty POSTs until the server answers 200."""
    token = _step(context, None, bindings)
    for _ in range(MAX_HANDSHAKE_ROUNDS):
        answer = connection.post(b"", f"Authorization: {scheme} {base64.b64encode(token or b'').decode()}\r\n",
                                 deadline=deadline, timeout=timeout)
        reply = _server_token(answer, scheme)
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
    except (spnego.exceptions.SpnegoError, ValueError, KeyError, IndexError, TypeError) as error:
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
