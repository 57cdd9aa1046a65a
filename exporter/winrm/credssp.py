"""CredSSP through pyspnego's public API: a TLS session carried in the CredSSP header, inside which NTLM or
Kerberos authenticates and the password itself is delegated to the server (so the WinRS session can reach
Active Directory: no double hop). Messages over plain HTTP are sealed by that TLS session in parts of at
most 16 KiB (MS-WSMV 2.2.9.1.3).

Tested end to end against the simulator's CredSSP listener (pyspnego's acceptor, TLS 1.2, NTLM inside),
beside pywinrm's CredSSP client on the same listener (tests/system/test_credssp.py), and against a scripted
acceptor (tests/unit/test_winrm_credssp.py). Not tested: Kerberos inside CredSSP, and TLS 1.3 (Windows
Server 2022's SChannel may offer it).
"""

from __future__ import annotations

import spnego

from .connection import Connection
from .encryption import CREDSSP, MessageSeal
from .session import Channel, handshake


class CredSSP:
    def __init__(self, username: str, password: str, hostname: str, *, encrypt: bool):
        self._arguments = (username, password, hostname)
        self._encrypt = encrypt

    def open(self, connection: Connection, *, deadline: float, timeout: float) -> Channel:
        username, password, hostname = self._arguments
        context = spnego.client(username, password, hostname=hostname, service="HTTP", protocol="credssp")
        handshake(connection, context, "CredSSP", deadline=deadline, timeout=timeout, bindings=None)
        return Channel(connection, seal=MessageSeal(context, CREDSSP) if self._encrypt else None)
