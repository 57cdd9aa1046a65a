"""NTLM (in the Negotiate scheme, as Windows' listener offers it) through pyspnego's public API.

The password's hashes are what NTLM needs, and pyspnego derives them (with pure-Python DES for the LM
hash, about 1.2 ms) for every new context built from a password. So one context is built per server and
never used: `new_context()`, pyspnego's documented way to start again "without having to retrieve the
credentials again", gives each connection a fresh context from the same derived hashes. At a 5-minute
interval every poll authenticates a new connection (HTTP.sys drops idle ones after about two minutes).

Over HTTPS the tokens carry channel binding to the server's certificate; over HTTP every message is
sealed with the session key (MS-WSMV 2.2.9.1.1).
"""

from __future__ import annotations

import spnego

from .connection import Connection
from .session import SPNEGO, Channel, MessageSeal, channel_bindings, handshake


class NTLM:
    def __init__(self, username: str, password: str, hostname: str, *, encrypt: bool):
        self._credential = spnego.client(username, password, hostname=hostname, service="HTTP", protocol="ntlm")
        self._encrypt = encrypt

    def open(self, connection: Connection, *, deadline: float, timeout: float) -> Channel:
        context = self._credential.new_context()
        handshake(connection, context, "Negotiate", deadline=deadline, timeout=timeout,
                  bindings=channel_bindings(connection))
        return Channel(connection, seal=MessageSeal(context, SPNEGO) if self._encrypt else None)
