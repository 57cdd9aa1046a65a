"""`demo --kerberos`: the demo fleet as a Windows domain runs it, behind a real MIT KDC on loopback.

The realm is the organization's domain in capitals (CONTOSO.COM for the demo). Its KDC (`kdc.py`) runs in a
temporary folder and holds the monitoring account (the scenario's first credential, `svc_monitor@REALM`)
and every server's `HTTP/<fqdn>` and `WSMAN/<fqdn>`; the fleet takes Kerberos only (NTLM refused, as in a
domain that restricts it) with its own keytab, and the exporter authenticates with a keytab of the
monitoring account, delegating its ticket so the organization collector's cmdlets reach Active Directory.
`--ticket-lifetime` caps every ticket of the realm (Active Directory's default is 10 hours), so renewals
can be watched: with `1m` the exporter buys a new ticket every 30 seconds and no poll fails for it.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .kdc import Kdc, KdcError, install_packages, missing_programs
from .scenario import Scenario

MIN_LIFETIME_SECONDS = 10


@dataclass
class DemoRealm:
    kdc: Kdc
    principal: str  # the monitoring account
    client_keytab: Path  # for the exporter
    fleet_keytab: Path  # for the simulated listeners

    @property
    def realm(self) -> str:
        return self.kdc.realm

    def stop(self) -> None:
        self.kdc.stop()
        shutil.rmtree(self.kdc.directory, ignore_errors=True)


def start_realm(scenario: Scenario, directory: Path, ticket_lifetime: int | None) -> DemoRealm:
    """Install the KDC packages if they are missing, start the realm's KDC, register the account and every
    server, write both keytabs, point this process (and so the exporter it starts) at the realm, and make
    every server take Kerberos only."""
    if missing_programs():
        print(f"Installing MIT Kerberos (Debian packages; {', '.join(missing_programs())} missing) ...", flush=True)
        install_packages()
    kdc = Kdc(directory, realm=scenario.organization.domain.upper(), ticket_lifetime=ticket_lifetime)
    kdc.start()
    try:
        user = next(iter(scenario.credentials)).rpartition("\\")[2]
        principal = kdc.add_principal(user)
        client_keytab = kdc.keytab(directory / "keytabs" / f"{user}.keytab", principal)
        fleet_keytab = kdc.service_keytab(directory / "keytabs" / "fleet.keytab", [h.fqdn for h in scenario.hosts])
    except BaseException:
        kdc.stop()
        raise
    os.environ.update(kdc.environment())
    for host in scenario.hosts:
        host.auth = ("kerberos",)
    return DemoRealm(kdc, principal, client_keytab, fleet_keytab)


def exporter_settings(realm: DemoRealm) -> dict:
    """What a module of the exporter's configuration needs to use the realm (instead of a password). No delegation:
    only the organization collector's module over WinRS needs it (cli.exporter_config gives it its own)."""
    return {"transport": "kerberos", "username": realm.principal, "keytab_file": str(realm.client_keytab)}


def check_python_side() -> str | None:
    """Why the demo cannot run Kerberos in this Python (python-gssapi missing), or None."""
    try:
        import gssapi  # noqa: F401  (the fleet's acceptor)
        import krb5  # noqa: F401  (the exporter's tickets)
    except ImportError:
        return (f"{sys.executable} lacks python-gssapi or python-krb5: pip install '.[kerberos]' in the exporter's "
                "source folder (it builds against Debian's libkrb5-dev), or run make demo-kerberos")
    return None


def lifetime_seconds(value: str | None) -> int | None:
    """--ticket-lifetime as seconds (None: the realm's 10-hour default); KdcError if too short."""
    if value is None:
        return None
    from .cli import interval_seconds

    seconds = interval_seconds(value)
    if seconds < MIN_LIFETIME_SECONDS:
        raise KdcError(f"--ticket-lifetime must be at least {MIN_LIFETIME_SECONDS}s")
    return seconds
