"""WinRM certificate authentication (https only): a client certificate in the TLS handshake, which the
server maps to a local account, and the WS-Management security profile named in every request."""

from __future__ import annotations

from .connection import Connection
from .session import Channel

SECURITY_PROFILE = "http://schemas.dmtf.org/wbem/wsman/1/wsman/secprofile/https/mutual"


class Certificate:
    """The certificate itself is loaded into the module's TLS context (`tls.py`)."""

    def open(self, connection: Connection, *, deadline: float, timeout: float) -> Channel:
        return Channel(connection, f"Authorization: {SECURITY_PROFILE}\r\n")
