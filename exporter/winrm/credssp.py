"""CredSSP through pyspnego's public API: a TLS session carried in the CredSSP header, inside which NTLM (or, when
the module asks, Kerberos) authenticates and the password itself is delegated to the server (so the WinRS session
can reach Active Directory: no double hop). Messages over plain HTTP are sealed by that TLS session in parts of
at most 16 KiB (MS-WSMV 2.2.9.1.3).

The authentication inside is the module's `credssp_auth_mechanism`, given to pyspnego as the CredSSP context's
`credssp_negotiate_context` (as requests-credssp, pywinrm's CredSSP, does for its `auth_mechanism`):
- `ntlm` (the default): NTLM alone. Left to itself, pyspnego negotiates Kerberos first, and with the kerberos
  extra installed that means reading /etc/krb5.conf and asking DNS for the default realm's KDCs on every new
  connection before falling back to NTLM, on sites that have no Kerberos for the exporter at all. As for the
  `ntlm` transport, the password's hashes are derived once per server and each connection starts from
  `new_context()`;
- `kerberos`: Kerberos alone (the kerberos extra), for `spn_service`/<server name>, with the module's own
  tickets as the `kerberos` transport gets them (kerberos.py, tickets.py: from the module's password, never
  kinit or the environment; KDC failures with their reasons).
Servers below CredSSP protocol version 5 are refused (`credssp_min_protocol`), with the reason
`credssp_outdated`: versions 2 to 4 lack the CVE-2018-0886 fix (a man in the middle could relay the
authentication and run commands on the server); every Windows patched since May 2018 speaks 6.

Tested end to end against the simulator's CredSSP listener (pyspnego's acceptor, TLS 1.2, NTLM inside, and
Kerberos inside against a real MIT KDC), beside pywinrm's CredSSP client on the same listener
(tests/system/test_credssp.py), and against a scripted acceptor (tests/unit/test_winrm_credssp.py). Not
tested: TLS 1.3 (Windows Server 2022's SChannel may offer it).
"""

from __future__ import annotations

import spnego

from ..config import ModuleConfig
from .connection import Connection
from .errors import AuthenticationRejected, PollFailure
from .session import CREDSSP, Channel, MessageSeal, handshake

MIN_PROTOCOL = 5  # MS-CSSP 2.2.1: 5 and 6 carry the CVE-2018-0886 fix (a nonce in pubKeyAuth)


class CredSSP:
    def __init__(self, module: ModuleConfig, hostname: str, *, encrypt: bool):
        self._username, self._password = module.username, module.password.reveal()
        self._hostname, self._service = hostname, module.spn_service
        if module.credssp_auth_mechanism == "kerberos":
            from .kerberos import tickets_for  # the kerberos extra, only when used

            self._tickets, self._ntlm = tickets_for(module), None
        else:
            self._tickets, self._ntlm = None, spnego.client(self._username, self._password, hostname=hostname,
                                                             service=self._service, protocol="ntlm")
        self._encrypt = encrypt

    def _inner(self, deadline: float) -> spnego.ContextProxy:
        """A fresh context for the authentication inside CredSSP (a TGT still to be bought waited for until
        `deadline`)."""
        if self._ntlm is not None:
            return self._ntlm.new_context()
        from .kerberos import first_step

        # The service ticket is got here, where a held TGT the KDC refuses can be replaced (kerberos.first_step),
        # and the context CredSSP steps finds it in the cache.
        _, ccache, _ = first_step(self._tickets, self._username, self._hostname, self._service,
                                  spnego.ContextReq.default, None, deadline=deadline)
        return spnego.client(spnego.KerberosCCache(ccache=ccache, principal=self._username), hostname=self._hostname,
                             service=self._service, protocol="kerberos")

    def open(self, connection: Connection, *, deadline: float, timeout: float) -> Channel:
        context = spnego.client(self._username, self._password, hostname=self._hostname, service=self._service,
                                protocol="credssp", credssp_negotiate_context=self._inner(deadline),
                                credssp_min_protocol=MIN_PROTOCOL)
        try:
            handshake(connection, context, "CredSSP", deadline=deadline, timeout=timeout, bindings=None)
        except AuthenticationRejected:  # pyspnego refused the server's version, or the server the credential
            version = context.get_extra_info("protocol_version")
            if version is not None and version < MIN_PROTOCOL:
                raise PollFailure("credssp_outdated", f"the server speaks CredSSP version {version}, without the "
                                  f"CVE-2018-0886 fix (version {MIN_PROTOCOL} or later): refused") from None
            raise
        return Channel(connection, seal=MessageSeal(context, CREDSSP) if self._encrypt else None)
