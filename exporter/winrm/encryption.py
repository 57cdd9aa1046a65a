"""WinRM message encryption over plain HTTP (MS-WSMV 2.2.9.1): each SOAP message sealed by the security
context that authenticated the connection, in the MIME framing Windows expects.

The sealing itself is pyspnego's public `wrap_winrm`/`unwrap_winrm`, for NTLM, Kerberos and CredSSP alike;
this module only frames it. On an encrypted connection every successful answer must come sealed: a
plain one would be a server (or someone between us) skipping the integrity protection.
"""

from __future__ import annotations

import re
import struct

import spnego
import spnego.exceptions

from .connection import Answer
from .errors import MalformedAnswer

SPNEGO = "application/HTTP-SPNEGO-session-encrypted"  # Negotiate: NTLM, or Kerberos inside SPNEGO
KERBEROS = "application/HTTP-Kerberos-session-encrypted"  # the raw Kerberos mechanism under "Kerberos"
CREDSSP = "application/HTTP-CredSSP-session-encrypted"
CREDSSP_CHUNK = 16384  # CredSSP seals at most 16 KiB per part (multipart/x-multi-encrypted)
_BOUNDARY = b"--Encrypted Boundary"
_PART = re.compile(rb"--\s*Encrypted Boundary(?:--)?\r\n")  # Exchange's IIS puts a space after the dashes
_LENGTH = re.compile(rb"\tOriginalContent: [^\r\n]*Length=(\d{1,10})\s*\Z")
_OCTETS = b"\tContent-Type: application/octet-stream\r\n"


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
        wrapped = self._context.wrap_winrm(message)
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
            length = _LENGTH.search(header)
            if length is None or not payload.startswith(_OCTETS) or len(payload) < len(_OCTETS) + 4:
                raise MalformedAnswer("an encrypted answer part without its length or payload")
            payload = payload[len(_OCTETS):]
            (size,) = struct.unpack("<i", payload[:4])
            if not 0 < size <= len(payload) - 4:
                raise MalformedAnswer("an encrypted answer part with an impossible signature length")
            try:
                plain = self._context.unwrap_winrm(payload[4:4 + size], payload[4 + size:])
            except (spnego.exceptions.SpnegoError, ValueError, struct.error):
                raise MalformedAnswer("an encrypted answer that does not decrypt or whose signature does not "
                                      "verify") from None
            if len(plain) != int(length.group(1)):
                raise MalformedAnswer("an encrypted answer whose length does not match its header")
            message += plain
        return bytes(message)
