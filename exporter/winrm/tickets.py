"""A module's Kerberos tickets, held by the exporter itself: no kinit, no ticket cache from the environment.

The keytab (`keytab_file`, with `username` as the principal) or the password buys a ticket-granting ticket
from the KDC (an AS exchange through python-krb5) into a MEMORY credential cache that belongs to this module
alone; each connection's pyspnego context takes its service ticket from that cache (`KerberosCCache`), so
the KDC sees one AS exchange per renewal and one TGS exchange per server and ticket, not one per poll.

Renewal: once half the ticket's lifetime has passed (MIT's own `refresh_time`), the next use buys a new TGT
into a new cache that replaces the current one; a context being built from the old cache finishes with it,
and the old cache is destroyed once its ticket has expired. Tickets are bought again rather than renewed
(RFC 4120 renewal needs a renewable ticket, which a domain need not grant), so the same code serves a
keytab and a password. If the KDC cannot be reached then, the held tickets go on serving until they
expire (a KDC outage shorter than half a ticket's life is never seen), retried at most every
`RETRY_SECONDS`; after that the failure is reported with its reason.

A purchase runs on a thread of its own, one at a time whoever asks, outside the lock: MIT waits about half a
minute for a KDC that takes the connection and never answers, longer than a poll may take. A caller holding a
ticket that still serves takes it without waiting for the renewal; one without waits for the purchase until
its deadline at most.

Times: a ticket's lifetime is the KDC's `endtime - starttime`, measured here from the moment it arrived on
this process's monotonic clock, so a wrong wall clock on the exporter neither shortens nor lengthens it.
"""

from __future__ import annotations

import csv
import logging
import os
import threading
import time
import weakref
from concurrent.futures import Future, TimeoutError as FutureTimeout
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Callable

import krb5

from .errors import KERBEROS_MAX_CLOCK_SKEW_SECONDS

log = logging.getLogger(__name__)

REFRESH_FRACTION = 0.5  # of the lifetime, as MIT's refresh_time
RETRY_SECONDS = 30.0  # between renewal attempts while the held ticket still serves
EXPIRY_MARGIN = 0.1  # of the lifetime, at most EXPIRY_MARGIN_SECONDS: a ticket that close to its end is not
EXPIRY_MARGIN_SECONDS = 5.0  # handed out any more (a KDC outage then shows as kdc_unreachable, not mid-poll)
TICKET_EXPIRED = -1765328352  # KRB5KRB_AP_ERR_TKT_EXPIRED


class TicketError(Exception):
    """A Kerberos failure with its `reason` (kdc_unreachable, spn_unknown, auth_failed, clock_skew,
    keytab_unreadable) and a message that says what it means before MIT's own text."""

    def __init__(self, reason: str, message: str, code: int | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.code = code


@dataclass(frozen=True)
class Meaning:
    name: str
    reason: str
    text: str


@cache
def meanings() -> dict[int, Meaning]:
    """exporter/data/kerberos_errors.tsv: MIT error code (signed) -> what it means here."""
    text = resources.files("exporter").joinpath("data/kerberos_errors.tsv").read_text(encoding="utf-8")
    rows = csv.DictReader((line for line in text.splitlines() if not line.startswith("#")), delimiter="\t")
    return {int(row["code"]): Meaning(row["name"], row["reason"], row["meaning"]) for row in rows}


def signed(code: int) -> int:
    """A GSSAPI minor status (unsigned 32 bits) as MIT's signed com_err code."""
    return code - (1 << 32) if code >= 1 << 31 else code


def explain(code: int | None, mit_text: str) -> TicketError:
    """The failure for MIT error `code` (signed or unsigned), with MIT's text after our meaning."""
    mit_text = " ".join(mit_text.split())
    meaning = meanings().get(signed(code)) if code is not None else None
    if meaning is None:
        return TicketError("auth_failed", f"Kerberos failed: {mit_text}", code)
    return TicketError(meaning.reason, f"{meaning.text} ({mit_text})", signed(code))


def _krb5_text(error: krb5.Krb5Error) -> str:
    """python-krb5 appends the code to the message: "Cannot contact any KDC for realm 'X' -1765328228"."""
    text = str(error.args[0]) if error.args else str(error)
    code = getattr(error, "err_code", None)
    suffix = f" {code}"
    return text[: -len(suffix)] if code is not None and text.endswith(suffix) else text


@dataclass
class _Held:
    ccache: krb5.CCache  # the handle keeps the MEMORY cache alive
    name: str  # "MEMORY:<unique>"
    refresh_at: float  # monotonic
    expires_at: float  # monotonic
    margin: float  # seconds before expires_at from which it is not handed out
    kdc_end: int  # the TGT's end in the KDC's time: other tickets' ends are reckoned from it

    def ends(self, creds: krb5.Creds) -> float:
        """When a ticket of this cache ends (monotonic)."""
        return self.expires_at - (self.kdc_end - creds.times.endtime)

    def usable(self, now: float) -> bool:
        return now < self.expires_at - self.margin


class TicketCache:
    """The TGT of one principal, from a keytab or a password, in MEMORY caches of its own (see the module
    docstring). Thread-safe: polls of many servers share it; tickets are bought one at a time, beside the polls."""

    def __init__(self, principal: str, *, keytab: Path | None = None, password: str | None = None,
                 forwardable: bool = False, clock: Callable[[], float] = time.monotonic):
        if (keytab is None) == (password is None):
            raise ValueError("a TicketCache needs a keytab or a password")
        self.principal = principal
        self._keytab = keytab
        self._password = password.encode("utf-8") if password is not None else None
        self._forwardable = forwardable
        self._clock = clock
        self._lock = threading.Lock()
        self._current: _Held | None = None
        self._caches: list[_Held] = []  # every cache held, the current one last; others destroyed once expired
        self._retry_at = 0.0
        self._purchase: Future | None = None  # the TGT being bought, if any: its cache's name or its TicketError
        # MIT keeps a MEMORY cache until it is destroyed: when this object goes (a reload replaced the
        # module), its caches go with it.
        weakref.finalize(self, _destroy_all, self._caches)
        self.acquisitions = 0  # AS exchanges that succeeded (for tests and benchmarks)

    def ccache(self, deadline: float | None = None) -> str:
        """The name of a MEMORY cache whose TGT is valid now; buys or renews one when due (module docstring),
        waiting for the purchase until `deadline` (monotonic) at most when no held ticket serves meanwhile.
        Raises TicketError with the reason when there is none and none can be bought in time."""
        with self._lock:
            now = self._clock()
            held = self._current
            if held is not None and now < held.refresh_at:
                return held.name
            usable = held is not None and held.usable(now)
            if usable and now < self._retry_at:
                return held.name
            purchase = self._purchase or self._start_purchase(now)
            if usable:
                return held.name
        try:
            return purchase.result(None if deadline is None else max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            raise TicketError("kdc_unreachable", f"no KDC of the realm answered within the poll's time: the ticket "
                                                 f"of {self.principal} could not be bought") from None

    def _start_purchase(self, now: float) -> Future:
        purchase = self._purchase = Future()
        threading.Thread(target=self._purchase_ticket, args=(purchase, now), name="kerberos-tgt", daemon=True).start()
        return purchase

    def _purchase_ticket(self, purchase: Future, started: float) -> None:
        """Buy a TGT (the AS exchange, outside the lock) and make it the current one, or hand the failure to
        whoever waits for it; while the held ticket still serves, it is tried again after RETRY_SECONDS."""
        try:
            held = self._buy(started)
        except Exception as error:
            with self._lock:
                now, current, self._purchase = self._clock(), self._current, None
                if current is not None and current.usable(now):
                    self._retry_at = now + RETRY_SECONDS
                    log.warning("Kerberos: renewing the ticket of %s failed (%s); the held tickets serve for another "
                                "%.0fs", self.principal, error, current.expires_at - now)
            purchase.set_exception(error)
            return
        with self._lock:
            self._caches[:] = [old for old in self._caches if started < old.expires_at or _destroy(old)]
            self._caches.append(held)
            self._current, self._retry_at, self._purchase = held, 0.0, None
            self.acquisitions += 1
        purchase.set_result(held.name)

    def valid_until(self, name: str, server: str) -> float | None:
        """When the ticket for `server` ("HTTP/<host>") in cache `name` ends (monotonic), the TGT's end if it holds
        none: a domain may give service tickets a shorter life than TGTs. None for a cache this object no longer
        holds."""
        held = self._held(name)
        if held is None:
            return None
        return min((held.ends(creds) for creds in _server_tickets(name, server)[2]), default=held.expires_at)

    def drop_ending_before(self, name: str, server: str, moment: float) -> None:
        """Remove the ticket for `server` from cache `name` if it ends before `moment` (monotonic) and the TGT
        outlives it: MIT hands out a cached ticket to its last second, so a context built from it could end
        within the poll, where one from a new service ticket lasts longer."""
        held = self._held(name)
        if held is None:
            return
        context, ccache, found = _server_tickets(name, server)
        for creds in found:
            if held.ends(creds) < moment and creds.times.endtime < held.kdc_end:
                krb5.cc_remove_cred(context, ccache, 0, creds)

    def forget(self, name: str, server: str) -> None:
        """Remove every ticket for `server` from cache `name`: the next context for it asks the KDC anew."""
        if self._held(name) is None:
            return
        context, ccache, found = _server_tickets(name, server)
        for creds in found:
            krb5.cc_remove_cred(context, ccache, 0, creds)

    def _held(self, name: str) -> _Held | None:
        with self._lock:
            return next((held for held in self._caches if held.name == name), None)

    def expire(self, name: str) -> None:
        """A context found the ticket in cache `name` expired before we thought (the clocks moved): buy a
        new one at the next use."""
        with self._lock:
            if self._current is not None and self._current.name == name:
                self._current.refresh_at = self._current.expires_at = self._clock()
                self._retry_at = 0.0

    def _buy(self, now: float) -> _Held:
        context = _context()
        try:
            principal = krb5.parse_name_flags(context, self.principal.encode("utf-8"))
            options = krb5.get_init_creds_opt_alloc(context)
            krb5.get_init_creds_opt_set_forwardable(options, self._forwardable)
            krb5.get_init_creds_opt_set_canonicalize(options, True)
            if self._keytab is not None:
                keytab = krb5.kt_resolve(context, f"FILE:{self._keytab}".encode())
                creds = krb5.get_init_creds_keytab(context, principal, options, keytab=keytab)
            else:
                creds = krb5.get_init_creds_password(context, principal, options, password=self._password)
            ccache = krb5.cc_new_unique(context, b"MEMORY")
            krb5.cc_initialize(context, ccache, creds.client)
            krb5.cc_store_cred(context, ccache, creds)
        except krb5.Krb5Error as error:
            raise explain(getattr(error, "err_code", None), _krb5_text(error)) from None
        times = creds.times
        lifetime = max(0, times.endtime - (times.starttime or times.authtime))
        skew = (times.starttime or times.authtime) - time.time()
        if abs(skew) > KERBEROS_MAX_CLOCK_SKEW_SECONDS:
            log.warning("Kerberos: this machine's clock differs from the KDC's by %.0fs; MIT corrects it for the "
                        "KDC, but servers whose clocks follow the KDC may refuse tickets (clock_skew)", skew)
        log.info("Kerberos: bought a ticket for %s from the KDC, valid %ds; renewed after %ds", self.principal,
                 lifetime, lifetime * REFRESH_FRACTION)
        return _Held(ccache, f"MEMORY:{ccache.name.decode()}", now + lifetime * REFRESH_FRACTION, now + lifetime,
                     min(EXPIRY_MARGIN_SECONDS, lifetime * EXPIRY_MARGIN), times.endtime)


def _context() -> krb5.Context:
    """MIT's context, which reads krb5.conf: a value MIT cannot parse (a comment after it, say) fails it, and
    with it every Kerberos call, whatever the credential (so not auth_failed, which pauses a module's polls)."""
    try:
        return krb5.init_context()
    except krb5.Krb5Error as error:
        path = os.environ.get("KRB5_CONFIG") or "/etc/krb5.conf"
        raise TicketError("kdc_unreachable", f"MIT Kerberos cannot read krb5.conf ({path}): {_krb5_text(error)}") from None


def _server_tickets(name: str, server: str) -> tuple[krb5.Context, krb5.CCache, list[krb5.Creds]]:
    """The tickets for `server` ("HTTP/<host>", any realm) in MEMORY cache `name`, through a handle of this call's
    own: a krb5 context must not be used by two threads at once."""
    context = krb5.init_context()
    ccache = krb5.cc_resolve(context, name.encode())
    prefix = f"{server}@".lower().encode()
    return context, ccache, [creds for creds in ccache if creds.server.name.lower().startswith(prefix)]


def _destroy_all(held: list[_Held]) -> None:
    for each in held:
        _destroy(each)


def _destroy(held: _Held) -> bool:
    """Free a MEMORY cache (its tickets are gone with it). Returns False, to filter with."""
    try:
        krb5.cc_destroy(krb5.init_context(), held.ccache)
    except krb5.Krb5Error:
        pass
    return False


MAX_KEYTAB_BYTES = 1 << 20  # a keytab of one account is well under a kilobyte


def check_keytab(path: Path, principal: str) -> tuple[str | None, bytes]:
    """Why the keytab at `path` cannot serve `principal` (unreadable, not a keytab, no key for it), or None; and
    the bytes read to check its size (at most MAX_KEYTAB_BYTES + 1), which the configuration hashes into its
    keytab_digest: the file is read once, and a file grown or swapped later is never read whole into memory.
    For the configuration check: the same file is read again at each renewal, so a rotated keytab is used
    without a restart."""
    try:
        with open(path, "rb") as handle:
            content = handle.read(MAX_KEYTAB_BYTES + 1)
    except OSError as error:
        return f"cannot be read: {error.strerror or error.__class__.__name__}", b""
    return _keytab_problem(path, principal, len(content)), content


def _keytab_problem(path: Path, principal: str, size: int) -> str | None:
    """check_keytab's verdict on the file it read `size` bytes of; MIT reads the keys from `path` itself."""
    if size > MAX_KEYTAB_BYTES:
        return f"is larger than {MAX_KEYTAB_BYTES} bytes, which no keytab of one account is"
    try:
        context = _context()
    except TicketError as error:
        return f"cannot be checked: {error.message}"
    try:
        wanted = krb5.unparse_name_flags(context, krb5.parse_name_flags(context, principal.encode("utf-8")))
        held = {krb5.unparse_name_flags(context, entry.principal) for entry in krb5.kt_resolve(context, f"FILE:{path}".encode())}
    except krb5.Krb5Error as error:
        return f"is not a usable keytab: {_krb5_text(error)}"
    if wanted not in held:  # MIT looks keys up by the exact name: one differing in case only is no key for it
        names = ", ".join(sorted(name.decode("utf-8", "replace") for name in held)) or "nothing"
        case = " (principal names are case-sensitive)" if wanted.lower() in {n.lower() for n in held} else ""
        return f"holds no key for {wanted.decode('utf-8', 'replace')}{case} (it holds: {names[:300]})"
    return None
