"""Kerberos through pyspnego's public API (its GSSAPI backend: MIT krb5 through python-gssapi), with the
module's own tickets (`tickets.py`): a keytab or a password, never kinit or a ticket cache from the
environment.

Each connection gets a context built from the module's credential cache (`KerberosCCache`): a raw Kerberos
token (never SPNEGO, so never a fallback to NTLM) in the Negotiate scheme, as pywinrm sends it and Windows
accepts it; the service ticket for `<spn_service>/<host>`, host being the server's configured name or its
`spn_hostname`, never the address connected to (krb5.conf should say `dns_canonicalize_hostname = false`
and `rdns = false`, docs/kerberos.md); mutual authentication; channel binding over HTTPS; message sealing
over HTTP; with `kerberos_delegation`, a forwardable TGT forwarded to the server.

A channel is good until its service ticket expires (`Channel.valid_until`; no later than the TGT it came from,
earlier where the domain gives service tickets a shorter life): the client authenticates a kept connection again
before a poll that would outlive it, with a new service ticket if the cached one would end within that poll
(`first_step`), so a ticket running out never fails a poll. Failures carry the reason the KDC's or the server's error gives (exporter/data/kerberos_errors.tsv):
the server's KRB-ERROR, when its 401 carries one (raw, or inside SPNEGO as Windows' IIS sends it: `kerberos_token`),
is read by the context like any token. A server that cannot
decrypt its service ticket (`SPN_KEY_MISMATCH`) is `spn_key_mismatch`: the KDC accepted the credential.

A held TGT can go bad before it expires: the domain's krbtgt key changed (an Active Directory krbtgt reset,
done twice, as after a compromise), or the KDC revoked it. The KDC then refuses it when asked for a service
ticket, which happens in the context's first step, before anything is sent to the server (`first_step`): a
refusal of the TGT itself (`TGT_REFUSED`) makes the module buy a new one and step once more, so no poll fails
for it until the old TGT would have expired. Other refusals (a policy, an unknown SPN) are not retried: a new
TGT would not change them, and every poll would cost the domain controllers an AS exchange.
"""

from __future__ import annotations

import threading
import time
import weakref
from concurrent.futures import Future, TimeoutError as FutureTimeout
from typing import Callable, TypeVar

import spnego
import spnego.exceptions
from spnego.channel_bindings import GssChannelBindings

from ..config import ModuleConfig
from .connection import Connection
from .errors import AuthenticationRejected, PollFailure
from .session import EXPIRED, SPNEGO, Channel, MessageSeal, channel_bindings, handshake, ran_out
from .tickets import TICKET_EXPIRED, TicketCache, TicketError, explain, meanings, signed

# KDC errors, at the request for a service ticket, that say the held TGT is no good (MIT krb5 codes, signed):
# MIT's KDC answers a TGT it cannot decrypt (its krbtgt key changed) with a generic "PROCESS_TGS" error (tested).
# Which code Active Directory sends for it is UNCONFIRMED: Windows names a ticket its key cannot decrypt
# KRB_AP_ERR_MODIFIED, and a referral ticket a KDC cannot decrypt KRB_AP_ERR_BAD_INTEGRITY, so both are here.
# Also a revoked or expired TGT, and an account deleted or disabled since the TGT was bought (a new AS exchange
# then reports that clearly).
TGT_REFUSED = frozenset({
    -1765328324,  # KRB5KRB_ERR_GENERIC
    -1765328343,  # KRB5KRB_AP_ERR_MODIFIED
    -1765328353,  # KRB5KRB_AP_ERR_BAD_INTEGRITY
    -1765328364,  # KRB5KDC_ERR_TGT_REVOKED
    TICKET_EXPIRED,
    -1765328378,  # KRB5KDC_ERR_C_PRINCIPAL_UNKNOWN
    -1765328366,  # KRB5KDC_ERR_CLIENT_REVOKED
})

# KRB-ERRORs a server sends when it cannot decrypt the service ticket it was given: its key for the SPN is not
# the one the KDC encrypted the ticket with (the SPN registered to another account, such as an Exchange Alternate
# Service Account, or to two; the computer account's key changed without the server). The KDC accepted the
# module's credential to issue that ticket, and no pre-authentication failed, so it is `spn_key_mismatch`, never
# `auth_failed`, the reason that pauses the module's polls on every server (connections.py CredentialGuard).
# The same codes from the KDC (a TGT it cannot read) are TGT_REFUSED above.
SPN_KEY_MISMATCH = frozenset({
    -1765328343,  # KRB5KRB_AP_ERR_MODIFIED
    -1765328353,  # KRB5KRB_AP_ERR_BAD_INTEGRITY
    -1765328340,  # KRB5KRB_AP_ERR_BADKEYVER
    -1765328339,  # KRB5KRB_AP_ERR_NOKEY
})

T = TypeVar("T")
_CACHES: weakref.WeakValueDictionary[tuple, TicketCache] = weakref.WeakValueDictionary()
_CACHES_LOCK = threading.Lock()


def tickets_for(module: ModuleConfig) -> TicketCache:
    """The module's ticket cache, shared by its connections to every server. Two modules with the same
    principal and credential share one too; a changed credential (a reload, a keytab rotated in place) gets a new one."""
    key = (module.username, module.keytab_file, module.keytab_digest, module.password, module.kerberos_delegation)
    with _CACHES_LOCK:
        cache = _CACHES.get(key)
        if cache is None:
            cache = TicketCache(module.username, keytab=module.keytab_file,
                                password=module.password.reveal() if module.password else None,
                                forwardable=module.kerberos_delegation)
            _CACHES[key] = cache
        return cache


class Kerberos:
    def __init__(self, module: ModuleConfig, hostname: str, *, encrypt: bool):
        self._tickets = tickets_for(module)
        self._principal = module.username
        self._hostname = hostname
        self._service = module.spn_service
        self._requirements = spnego.ContextReq.default | (spnego.ContextReq.delegate if module.kerberos_delegation else 0)
        self._encrypt = encrypt

    def open(self, connection: Connection, *, deadline: float, timeout: float) -> Channel:
        bindings = channel_bindings(connection)
        context, ccache, token = first_step(self._tickets, self._principal, self._hostname, self._service,
                                            self._requirements, bindings, deadline=deadline)
        try:
            handshake(connection, context, "Negotiate", deadline=deadline, timeout=timeout, bindings=bindings,
                      first_token=token, inner=kerberos_token)
        except AuthenticationRejected as rejected:
            cause = rejected.__cause__
            if isinstance(cause, spnego.exceptions.SpnegoError):
                raise _failure(self._tickets, cause, ccache, self._service, self._hostname, server=True) from None
            raise
        return Channel(connection, seal=MessageSeal(context, SPNEGO) if self._encrypt else None,
                       valid_until=self._tickets.valid_until(ccache, f"{self._service}/{self._hostname}"))


def kerberos_token(token: bytes) -> bytes | None:
    """The Kerberos token in a server's Negotiate answer. Windows may put it in a SPNEGO NegTokenResp (RFC 4178
    4.2.2) although the module sent a raw Kerberos token: a 401 from IIS carries its KRB-ERROR so, with negState
    accept-incomplete (Microsoft's capture, docs/kerberos.md "What a refusing server sends"). Its responseToken
    goes to the raw Kerberos context (a NegTokenResp without one is a bare refusal: None); any other token, and
    one that is not well-formed DER, as it came (the context reads and refuses it)."""
    try:
        tag, body, rest = _der(token)
        if tag != 0xA1 or rest:
            return token
        tag, fields, rest = _der(body)
        if tag != 0x30 or rest:
            return token
        while fields:
            tag, value, fields = _der(fields)
            if tag == 0xA2:  # responseToken [2] OCTET STRING
                tag, inner, rest = _der(value)
                return inner if tag == 0x04 and not rest and inner else token
        return None
    except ValueError:
        return token


def _der(data: bytes) -> tuple[int, bytes, bytes]:
    """The first DER element of `data` (one-byte tag, definite length): its tag, its value, what follows it."""
    if len(data) < 2:
        raise ValueError("short")
    tag, size, start = data[0], data[1], 2
    if size & 0x80:
        count = size & 0x7F
        if not 1 <= count <= 4 or len(data) < 2 + count:
            raise ValueError("length")
        size, start = int.from_bytes(data[2:2 + count], "big"), 2 + count
    if len(data) < start + size:
        raise ValueError("short")
    return tag, data[start:start + size], data[start + size:]


def first_step(tickets: TicketCache, principal: str, hostname: str, service: str, requirements: spnego.ContextReq,
               bindings: GssChannelBindings | None, *, deadline: float | None = None
               ) -> tuple[spnego.ContextProxy, str, bytes]:
    """A context for `<service>/<hostname>` from the held TGT, the name of its cache, and its first token (getting
    it is when the KDC is asked for the service ticket). A refusal of the TGT (`TGT_REFUSED`) buys a new one and
    steps once more; a TGT bought for this call is not bought again. A TGT still to be bought, and the service
    ticket, are waited for until `deadline`."""
    retried = False
    while True:
        bought = tickets.acquisitions
        try:
            ccache = tickets.ccache(deadline)
        except TicketError as error:
            raise PollFailure(error.reason, error.message) from None
        if deadline is not None:
            tickets.drop_ending_before(ccache, f"{service}/{hostname}", deadline)
        try:
            context, token = _by(deadline, f"the service ticket for {service}/{hostname}", _context_and_token,
                                 ccache, principal, hostname, service, requirements, bindings)
            return context, ccache, token
        except spnego.exceptions.SpnegoError as error:
            code = _code(error)
            if retried or tickets.acquisitions != bought or code is None or signed(code) not in TGT_REFUSED:
                raise _failure(tickets, error, ccache, service, hostname) from None
            tickets.expire(ccache)
            retried = True


def _context_and_token(ccache: str, principal: str, hostname: str, service: str, requirements: spnego.ContextReq,
                       bindings: GssChannelBindings | None) -> tuple[spnego.ContextProxy, bytes]:
    context = spnego.client(username=spnego.KerberosCCache(ccache=ccache, principal=principal), hostname=hostname,
                            service=service, protocol="kerberos", context_req=requirements)
    return context, context.step(None, channel_bindings=bindings)


def _by(deadline: float | None, what: str, call: Callable[..., T], *args) -> T:
    """`call(*args)`, which may ask the KDC, on a thread of its own, waited for until `deadline`: MIT waits about
    half a minute for a KDC that takes the connection and never answers, longer than a poll may take."""
    if deadline is None:
        return call(*args)
    result: Future = Future()

    def run() -> None:
        try:
            result.set_result(call(*args))
        except BaseException as error:
            result.set_exception(error)

    threading.Thread(target=run, name="kerberos-tgs", daemon=True).start()
    try:
        return result.result(max(0.0, deadline - time.monotonic()))
    except FutureTimeout:
        raise PollFailure("kdc_unreachable", f"no KDC of the realm answered within the poll's time: {what} could "
                                             f"not be had") from None


def _code(error: spnego.exceptions.SpnegoError) -> int | None:
    """MIT's error code (the GSSAPI minor status) behind pyspnego's error."""
    return getattr(getattr(error, "base_error", None), "min_code", None) or None


def _failure(tickets: TicketCache, error: spnego.exceptions.SpnegoError, ccache: str, service: str,
             hostname: str, *, server: bool = False) -> PollFailure:
    """The failure for `error`; `server`: it is the KRB-ERROR the server sent in its 401, not the KDC's or MIT's."""
    code = _code(error)
    if isinstance(error, EXPIRED) and (code is None or signed(code) not in meanings()):
        # the held TGT ran out under the service ticket's request (it is used to its end while the KDC does not
        # answer a renewal): GSSAPI's "context has expired" with no Kerberos code of ours (minor 100001,
        # "Success"), which read as auth_failed, the reason that pauses a credential
        tickets.expire(ccache)
        return ran_out()
    spn = f"{service}/{hostname}"
    if server and code is not None and signed(code) in SPN_KEY_MISMATCH:
        # the server's word, as TICKET_EXPIRED below: the ticket it could not read goes, so the next poll asks the
        # KDC for one under the key the SPN has then (a fixed SPN is taken without a restart); the TGT stays
        tickets.forget(ccache, spn)
        # whole in MAX_MESSAGE_CHARS for a host name up to 60 characters; docs/kerberos.md has the rest
        return PollFailure("spn_key_mismatch", f"Kerberos: the server cannot decrypt its service ticket "
                           f"({' '.join(_mit_text(error).split())}): its key for the SPN is not the KDC's, the "
                           f"credential is fine. Check setspn -Q {spn} (another account? an ASA?), setspn -X, the "
                           f"computer account's key")
    failure = explain(code, _mit_text(error))
    if failure.code == TICKET_EXPIRED:
        if server:
            # the server's word, unauthenticated (a clock ahead, or a compromised server): it costs that server's
            # service ticket, never the TGT every other server's polls share (a new AS exchange for all of them,
            # and kdc_unreachable for all while the KDC does not answer, although the held TGT still served)
            tickets.forget(ccache, spn)
        else:
            tickets.expire(ccache)
    return PollFailure(failure.reason, f"Kerberos to {spn}: {failure.message}")


def _mit_text(error: spnego.exceptions.SpnegoError) -> str:
    """MIT's minor text from pyspnego's message ("... Minor (2529638919): Server ... not found ..., Context: ...")."""
    text = str(error)
    minor = text.partition("Minor (")[2]
    if minor:
        text = minor.partition("): ")[2].rpartition(", Context:")[0] or minor
    return text
