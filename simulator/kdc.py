"""A real MIT Kerberos KDC for one realm, on loopback, in a temporary folder: the domain controller of the
Kerberos demo and tests.

It runs Debian's `krb5kdc` (package krb5-kdc; `kadmin.local` and `kdb5_util` from krb5-admin-server), so
every ticket, error and key version number comes from the same code a Linux client meets in the field;
only the Windows domain controller is missing. Everything lives in the folder given: the database, its
stash, the KDC's log, a `krb5.conf` for clients and acceptors, the replay cache and the keytabs. Nothing
outside it is read or written as long as processes use `environment()`: MIT reads /etc/krb5.conf and
writes replay caches under /var/tmp unless told otherwise.

The KDC is one child process, started with `-n` (no fork) and stopped by its PID. Ticket lifetimes are a
realm setting here (`ticket_lifetime`), because a short lifetime is what the renewal tests and
`demo --kerberos --ticket-lifetime 1m` need; MIT caps a ticket at the smallest of the realm's, the client
principal's, the service principal's and the krbtgt's maximum life, so all four are set.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ("krb5-kdc", "krb5-admin-server", "libkrb5-dev")
PROGRAMS = ("krb5kdc", "kdb5_util", "kadmin.local")
_SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")
START_TIMEOUT_SECONDS = 20.0
COMMAND_TIMEOUT_SECONDS = 60.0
_ADMIN_ERROR = re.compile(r"[a-z_]+: ")  # "get_principal: Principal does not exist while ..."


class KdcError(RuntimeError):
    """The KDC could not be set up, started, or told to do something; the message says what and why."""


def program(name: str) -> str | None:
    """The path of an MIT admin program; they live in sbin, which a non-root PATH often lacks."""
    found = shutil.which(name)
    if found:
        return found
    for directory in _SBIN:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def missing_programs() -> list[str]:
    return [name for name in PROGRAMS if program(name) is None]


def install_packages() -> None:
    """Install Debian's MIT KDC packages (root or sudo), waiting for another apt to finish rather than failing."""
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    steps = (["apt-get", "-o", "DPkg::Lock::Timeout=900", "update", "-qq"],
             ["apt-get", "-o", "DPkg::Lock::Timeout=900", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES])
    for step in steps:
        try:
            subprocess.run([*sudo, *step], env=env, check=True, stdout=subprocess.DEVNULL, timeout=1800)
        except (OSError, subprocess.SubprocessError) as exc:
            raise KdcError(f"cannot install {' '.join(PACKAGES)}: {exc}") from None
    if missing_programs():
        raise KdcError(f"{', '.join(missing_programs())} still missing after installing {' '.join(PACKAGES)}")


def _free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def _lifetime(seconds: int) -> str:
    """kadmin's date syntax for a duration ("60 seconds")."""
    return f"{int(seconds)} seconds"


class Kdc:
    """One realm's KDC. `start()` creates the database and runs the KDC; `stop()` ends it by its PID.

    `ticket_lifetime` (seconds) caps every ticket of the realm; None gives 10 hours (`max_life = 10h`), Active
    Directory's default. Tickets are not renewable here: the exporter never renews one, it buys a new
    ticket-granting ticket instead, so it works whether or not a domain grants renewable tickets.
    """

    def __init__(self, directory: Path, realm: str = "CONTOSO.TEST", address: str = "127.0.0.1",
                 ticket_lifetime: int | None = None, extra_env: dict[str, str] | None = None) -> None:
        self.directory = Path(directory)
        self.realm = realm
        self.address = address
        self.ticket_lifetime = ticket_lifetime
        self.port: int | None = None
        self._extra_env = dict(extra_env or {})  # e.g. libfaketime for a KDC whose clock is off
        self._process: subprocess.Popen | None = None
        self._master = secrets.token_urlsafe(24)

    # ------------------------------------------------------------------ files

    @property
    def krb5_conf(self) -> Path:
        return self.directory / "krb5.conf"

    @property
    def kdc_conf(self) -> Path:
        return self.directory / "kdc" / "kdc.conf"

    @property
    def log_file(self) -> Path:
        return self.directory / "kdc" / "kdc.log"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def environment(self) -> dict[str, str]:
        """What a client or acceptor process needs in its environment to use this realm and nothing else."""
        return {
            "KRB5_CONFIG": str(self.krb5_conf),
            "KRB5_KDC_PROFILE": str(self.kdc_conf),
            "KRB5RCACHEDIR": str(self.directory / "rcache"),
        }

    def client_config(self, kdc_port: int | None = None) -> str:
        """A krb5.conf that names the KDC by address and never asks DNS (no canonicalisation, no reverse
        lookup, no SRV records), with no file ticket cache and no default keytab to pick up by accident."""
        port = kdc_port if kdc_port is not None else self.port
        none = self.directory / "keytabs" / "none.keytab"
        domain = self.realm.lower()
        return (
            "[libdefaults]\n"
            f"    default_realm = {self.realm}\n"
            "    dns_lookup_kdc = false\n"
            "    dns_lookup_realm = false\n"
            "    dns_canonicalize_hostname = false\n"
            "    rdns = false\n"
            '    qualify_shortname = ""\n'
            "    udp_preference_limit = 1\n"
            "    default_ccache_name = MEMORY:eems-default\n"
            f"    default_client_keytab_name = FILE:{none}\n"
            f"    default_keytab_name = FILE:{none}\n"
            "    kdc_timeout = 3000\n"
            "    max_retries = 1\n"
            "[realms]\n"
            f"    {self.realm} = {{\n"
            f"        kdc = {self.address}:{port}\n"
            "    }\n"
            "[domain_realm]\n"
            f"    .{domain} = {self.realm}\n"
            f"    {domain} = {self.realm}\n"
        )

    def _write_config(self) -> None:
        (self.directory / "kdc").mkdir(parents=True, exist_ok=True)
        (self.directory / "keytabs").mkdir(exist_ok=True)
        (self.directory / "rcache").mkdir(exist_ok=True)
        life = f"{self.ticket_lifetime}s" if self.ticket_lifetime else "10h"
        self.kdc_conf.write_text(
            "[kdcdefaults]\n"
            f"    kdc_listen = {self.address}:{self.port}\n"
            f"    kdc_tcp_listen = {self.address}:{self.port}\n"
            "[realms]\n"
            f"    {self.realm} = {{\n"
            f"        database_name = {self.directory / 'kdc' / 'principal'}\n"
            f"        key_stash_file = {self.directory / 'kdc' / 'stash'}\n"
            f"        acl_file = {self.directory / 'kdc' / 'kadm5.acl'}\n"
            f"        max_life = {life}\n"
            "        max_renewable_life = 0\n"
            "        supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal\n"
            "        default_principal_flags = +preauth\n"  # as Active Directory: pre-authentication required
            "    }\n"
            "[logging]\n"
            f"    kdc = FILE:{self.log_file}\n"
            f"    default = FILE:{self.directory / 'kdc' / 'admin.log'}\n",
            encoding="utf-8",
        )
        (self.directory / "kdc" / "kadm5.acl").write_text("", encoding="utf-8")
        self.krb5_conf.write_text(self.client_config(), encoding="utf-8")

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Kdc:
        """Create the realm's database (first time) and run the KDC; returns once it accepts TCP connections."""
        if self._process is not None:
            return self
        missing = missing_programs()
        if missing:
            raise KdcError(f"MIT Kerberos programs missing: {', '.join(missing)} (Debian: apt-get install {' '.join(PACKAGES)})")
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = _free_port(self.address)
        self._write_config()
        if not (self.directory / "kdc" / "principal").exists():
            self._run(program("kdb5_util"), "create", "-s", "-r", self.realm, "-P", self._master)
            if self.ticket_lifetime:
                self.admin(f'modprinc -maxlife "{_lifetime(self.ticket_lifetime)}" krbtgt/{self.realm}@{self.realm}')
        self._process = subprocess.Popen(
            [program("krb5kdc"), "-n", "-r", self.realm],
            env={**os.environ, **self.environment(), **self._extra_env},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        self._wait_listening()
        return self

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                error = self._process.stderr.read().decode(errors="replace").strip()
                self._process = None
                raise KdcError(f"krb5kdc exited at start: {error or 'no message'} (log: {self.log_file})")
            try:
                with socket.create_connection((self.address, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)  # the KDC is still starting; bounded by the deadline
        self.stop()
        raise KdcError(f"krb5kdc did not listen on {self.address}:{self.port} within {START_TIMEOUT_SECONDS:g}s")

    def stop(self) -> None:
        """End the KDC by its PID (SIGTERM, then SIGKILL after 10 s). The database stays, so `start()` resumes."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> Kdc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ administration (kadmin.local)

    def _run(self, *command: str) -> str:
        try:
            done = subprocess.run(
                command, env={**os.environ, **self.environment()}, capture_output=True, text=True,
                timeout=COMMAND_TIMEOUT_SECONDS, stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise KdcError(f"{Path(command[0]).name}: {exc}") from None
        # kadmin.local exits 0 even when its query fails; it says so on stderr as "function: message"
        problems = [line for line in done.stderr.splitlines() if _ADMIN_ERROR.match(line)]
        if done.returncode or problems:
            raise KdcError(f"{Path(command[0]).name}: {'; '.join(problems) or done.stderr.strip() or done.returncode}")
        return done.stdout

    def admin(self, query: str) -> str:
        """One kadmin.local query (dates inside need double quotes: -maxlife "1 minute")."""
        return self._run(program("kadmin.local"), "-r", self.realm, "-q", query)

    def principal(self, name: str) -> str:
        """`name` with this realm, unless it already has one."""
        return name if "@" in name else f"{name}@{self.realm}"

    def add_principal(self, name: str, password: str | None = None) -> str:
        """A user or service principal with a random key, or the given password; returns its full name."""
        principal = self.principal(name)
        life = f'-maxlife "{_lifetime(self.ticket_lifetime)}" ' if self.ticket_lifetime else ""
        key = f'-pw "{password}"' if password is not None else "-randkey"
        if password is not None and '"' in password:
            raise KdcError("a password for kadmin.local must not contain a double quote")
        self.admin(f"addprinc {life}{key} {principal}")
        return principal

    def delete_principal(self, name: str) -> None:
        self.admin(f"delprinc -force {self.principal(name)}")

    def new_key(self, name: str) -> None:
        """A new random key (kvno + 1), as a password reset or `ktpass` for the account would do."""
        self.admin(f"cpw -randkey {self.principal(name)}")

    def keytab(self, path: Path, *names: str) -> Path:
        """Write the current keys of `names` to the keytab at `path` without changing them (kvno kept)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.admin(f"ktadd -k {path} -norandkey {' '.join(self.principal(n) for n in names)}")
        os.chmod(path, 0o600)
        return path

    def service_keytab(self, path: Path, fqdns: list[str], services: tuple[str, ...] = ("HTTP", "WSMAN")) -> Path:
        """Register each computer's service principals (`HTTP/<fqdn>`, `WSMAN/<fqdn>`, as Windows registers
        them on the computer account) and write all their keys to one keytab: the listeners' side."""
        names = [f"{service}/{fqdn.lower()}" for fqdn in dict.fromkeys(fqdns) for service in services]
        for name in names:
            self.add_principal(name)
        for start in range(0, len(names), 50):  # one kadmin.local per 50 principals keeps the command line short
            self.keytab(path, *names[start : start + 50])
        return Path(path)

    def kvno(self, name: str) -> int:
        for line in self.admin(f"getprinc {self.principal(name)}").splitlines():
            if line.strip().startswith("Key: vno"):
                return int(line.split("vno", 1)[1].split(",", 1)[0])
        raise KdcError(f"no key version for {name}")
