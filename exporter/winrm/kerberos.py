"""Kerberos through pyspnego's public API (its GSSAPI backend: MIT krb5 through python-gssapi).

What this module does today: a raw Kerberos token (never SPNEGO, so never a fallback to NTLM) in the
Negotiate scheme, as pywinrm sends it and Windows accepts it; the service ticket for `<service>/<host>`
where host is the server's configured name, never the address connected to; channel binding over HTTPS;
message sealing over HTTP; a forwardable ticket when `kerberos_delegation` is set. The credential is the
module's password, or without one the process's default credential cache (as pywinrm 0.5 used it).

What it does not do yet, and issue 18 adds on this module without changing its interface (`open` per
connection): a keytab, a credential cache of its own per module in memory, renewal before expiry, and
the Kerberos failure reasons (kdc_unreachable, spn_unknown, clock_skew). It is not tested against a KDC.
"""

from __future__ import annotations

import spnego
import spnego.exceptions

from .connection import Connection
from .encryption import SPNEGO, MessageSeal
from .errors import AuthenticationRejected
from .session import Channel, channel_bindings, handshake


class Kerberos:
    def __init__(self, username: str | None, password: str | None, hostname: str, *, service: str, delegate: bool,
                 encrypt: bool):
        self._arguments = dict(username=username, password=password, hostname=hostname, service=service,
                               protocol="kerberos")
        self._requirements = spnego.ContextReq.default | (spnego.ContextReq.delegate if delegate else 0)
        self._encrypt = encrypt

    def open(self, connection: Connection, *, deadline: float, timeout: float) -> Channel:
        try:
            context = spnego.client(**self._arguments, context_req=self._requirements)
        except spnego.exceptions.SpnegoError as error:  # no GSSAPI library, or no credential to start from
            raise AuthenticationRejected(f"Kerberos is not available: {error}") from None
        handshake(connection, context, "Negotiate", deadline=deadline, timeout=timeout,
                  bindings=channel_bindings(connection))
        return Channel(connection, seal=MessageSeal(context, SPNEGO) if self._encrypt else None)
