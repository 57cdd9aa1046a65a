"""The exporter's own endpoint security: Prometheus exporter-toolkit's ``--web.config.file``.

Admins already keep one web-config file per exporter (node_exporter, windows_exporter, ...), and
``promtool check web-config`` validates it, so this module reads the same file with the same keys and
the same strictness as the exporter-toolkit bundled with Prometheus 2.42 rather than inventing a format.

Differences from the Go implementation, each forced by Python's ``ssl`` module or deliberately stricter:

- ``cipher_suites`` and ``curve_preferences`` are validated as lists of names and then ignored: Go's
  IANA suite names do not map onto OpenSSL cipher strings, and OpenSSL's defaults are sound.
  ``http2`` is accepted and ignored (this exporter speaks HTTP/1.1 only), and so is ``prefer_server_cipher_suites``:
  the server's order always holds, as in Go's crypto/tls since 1.17, where the field has no effect.
- ``RequireAnyClientCert`` (demand a certificate but do not verify it) is rejected: ``ssl`` cannot
  request a client certificate without verifying it against a CA. ``RequestClientCert`` behaves like
  ``NoClientCert`` for the same reason; nothing in this exporter reads an unverified certificate, so
  the access decision is the same.
- ``min_version`` TLS10/TLS11 lowers OpenSSL 3's security level to 0, since OpenSSL otherwise refuses
  those protocols whatever the minimum version says; ``min_version`` above ``max_version`` is an error.
- A ``client_ca_file`` with no certificate in it is an error (Go silently trusts nobody).
- ``VerifyClientCertIfGiven`` and ``RequireAndVerifyClientCert`` need ``client_ca_file`` (Go would verify
  client certificates against the system's trust store, i.e. any public CA).
- An empty file, or a section left empty (``tls_server_config:`` with nothing under it), is an error: that is
  what a half-written rewrite, a full disk or a template that rendered nothing leaves behind. A file that
  means "no TLS, no users" says ``{}``.
- A reload never lowers security: the watcher refuses a new file that turns TLS off, lowers ``min_version`` or
  ``max_version``, drops every user, drops a configured response header, or stops requiring client certificates where the running one did (restart to do that on
  purpose).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import math
import os
import re
import secrets
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import bcrypt
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .config_keys import ConfigError, bounded_repr, existing_file, load_yaml, mapping, reject_unknown
from .files import exposed_to_others, read_regular_file

log = logging.getLogger(__name__)

_TOP_KEYS = {"tls_server_config", "http_server_config", "basic_auth_users"}
MAX_WEB_CONFIG_BYTES = 1 << 20  # a few users and headers take a few KB; read at every change of the file
RETRY_COST_FACTOR = 10  # a refused, unchanged web config is read again after 10 times what reading it took
MAX_PEM_FILE_BYTES = 4 << 20  # a certificate chain or key takes a few KB, a whole public CA bundle about 250 KB
_TLS_KEYS = {
    "cert_file", "key_file", "client_auth_type", "client_ca_file", "cipher_suites",
    "curve_preferences", "min_version", "max_version", "prefer_server_cipher_suites",
}
_HTTP_KEYS = {"http2", "headers"}
# Keys that later exporter-toolkit releases added; named so the error says why they are refused.
_NEWER_TOOLKIT_KEYS = {"rate_limit", "client_allowed_sans", "cert", "key", "client_ca"}

_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_CLIENT_AUTH = {
    "": ssl.CERT_NONE,
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# exporter-toolkit allows only these headers, some only with these values (None = any value).
_ALLOWED_HEADERS: dict[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}
_BCRYPT_HASH = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
# bcrypt only looks at the first 72 bytes; the bcrypt package refuses longer passwords outright.
_BCRYPT_MAX_PASSWORD_BYTES = 72
# Chooses each unknown name's decoy cost; secret and new in every process, so nobody can compute the choice.
_DECOY_KEY = secrets.token_bytes(32)


class WebConfigError(Exception):
    """A web-config file that cannot be used; the message names the file and the key path."""

    def __init__(self, path: Path, key_path: str, message: str):
        self.path = path
        self.key_path = key_path
        where = f"{path}: {key_path}: " if key_path else f"{path}: "
        super().__init__(where + message)


@dataclass
class WebConfig:
    """A validated web-config; the SSL context is built once here and shared by all connections."""

    path: Path
    headers: dict[str, str]
    users: dict[str, bytes]
    key_file: Path | None  # tls_server_config.key_file: exposed_secret_files checks its mode
    watched_files: tuple[Path, ...]
    _context: ssl.SSLContext | None
    _verified: dict[tuple[str, bytes], bytes] = field(default_factory=dict, repr=False)
    _decoys: dict[int, bytes] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, path: Path) -> "WebConfig":
        path = Path(path)
        try:
            return cls._load(path)
        except ConfigError as exc:  # from the helpers shared with the exporter's configuration
            raise WebConfigError(path, exc.path, exc.message) from None
        except OSError as exc:  # a file it names that cannot be read: a rotated key the exporter's user may not read
            raise WebConfigError(path, "", f"cannot read a file it names: {exc}") from None

    @classmethod
    def _load(cls, path: Path) -> "WebConfig":
        try:
            data = read_regular_file(path, MAX_WEB_CONFIG_BYTES)
            text = data.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise WebConfigError(path, "", f"cannot read web config: {exc}") from None
        if len(data) > MAX_WEB_CONFIG_BYTES:
            raise WebConfigError(path, "", f"larger than {MAX_WEB_CONFIG_BYTES} bytes: not a web config")
        document = load_yaml(text)
        if document is None:
            raise WebConfigError(path, "", "the file is empty (cut short, or rendered from nothing?); a web "
                                           "config with no TLS and no users says {}")
        doc = _section(document, "", _TOP_KEYS)
        for key, value in doc.items():
            if value is None:
                raise WebConfigError(path, key, "is empty (a file cut short?); leave the key out instead")
        tls = _section(doc.get("tls_server_config"), "tls_server_config", _TLS_KEYS)
        http = _section(doc.get("http_server_config"), "http_server_config", _HTTP_KEYS)
        headers = _load_headers(path, http)
        if "http2" in http and not isinstance(http["http2"], bool):
            raise WebConfigError(path, "http_server_config.http2", "must be true or false")
        users = _load_users(path, doc.get("basic_auth_users"))
        context, key_file, watched = _load_tls(path, tls)
        return cls(path=path, headers=headers, users=users, key_file=key_file,
                   watched_files=(path, *watched), _context=context)

    def ssl_context(self) -> ssl.SSLContext | None:
        return self._context

    def requires_client_certificate(self) -> bool:
        return self._context is not None and self._context.verify_mode == ssl.CERT_REQUIRED

    def cached_verdict(self, authorization_header: str | None) -> bool | None:
        """True or False when the answer needs no bcrypt (no users, a malformed header, a credential verified
        before); None when only a bcrypt check can tell. Cheap: callers run it on the event loop."""
        if not self.users:
            return True
        credentials = _parse_basic(authorization_header)
        if credentials is None:
            return False
        user, password = credentials
        if len(password) > _BCRYPT_MAX_PASSWORD_BYTES:
            return False
        hashed = self.users.get(user)
        if hashed is not None:
            known = self._verified.get((user, hashed))
            if known is not None and hmac.compare_digest(known, hashlib.sha256(password).digest()):
                return True
        return None

    def check_basic_auth(self, authorization_header: str | None) -> bool:
        """Answer whether the request may pass; bcrypt is deliberately slow, so it runs once per credential.

        A verified credential is remembered as the SHA-256 of the password, never the password itself.
        An unknown user still costs one bcrypt check against a decoy so timing does not reveal names (see _decoy).
        The caller bounds how many of these run at once (the HTTP front end runs them on their own thread).
        """
        cached = self.cached_verdict(authorization_header)
        if cached is not None:
            return cached
        user, password = _parse_basic(authorization_header)
        hashed = self.users.get(user)
        ok = bcrypt.checkpw(password, hashed if hashed is not None else self._decoy(user))
        if ok and hashed is not None:
            self._verified[(user, hashed)] = hashlib.sha256(password).digest()
            return True
        return False

    def keep_verified(self, previous: "WebConfig") -> None:
        """Carry over the credentials `previous` verified whose user and hash are unchanged, so a reload does
        not make Prometheus' next scrape pay for bcrypt (and queue behind password guessers)."""
        for (user, hashed), digest in list(previous._verified.items()):
            if self.users.get(user) == hashed:
                self._verified[(user, hashed)] = digest

    def _decoy(self, user: str) -> bytes:
        """A decoy hash for an unknown user, at the cost of one of the configured users, picked by the name.

        With one decoy cost for all unknown names, users whose hashes have other costs answer in a time no
        unknown name takes, which tells that they exist. Spread over the users' costs like this, a name's
        answer time matches some real user's, and the same name always gets the same time. The pick is keyed
        with a secret of this process: from a public hash of the name, anyone could compute which cost each
        name gets, and a name answering at another cost would exist.
        """
        costs = sorted(int(h[4:6]) for h in self.users.values())
        pick = hmac.new(_DECOY_KEY, user.encode("utf-8"), hashlib.sha256).digest()
        cost = costs[int.from_bytes(pick[:8], "big") % len(costs)]
        if cost not in self._decoys:
            self._decoys[cost] = bcrypt.hashpw(b"decoy", bcrypt.gensalt(rounds=cost))
        return self._decoys[cost]


def exposed_secret_files(config: WebConfig) -> list[str]:
    """A warning for the TLS private key, and for the web config itself when it holds basic_auth_users' hashes,
    if every user of the host may read or write it (files.exposed_to_others): the key lets anyone with a shell
    there pose as the exporter, and the hashes can be cracked offline, or a user added. As for the exporter's
    configuration (config.exposed_secret_files): logged at start and at every reload that applies the file, and
    printed by `check-config --web.config.file`."""
    warnings = [exposed_to_others(config.key_file, "web config tls_server_config.key_file")]
    if config.users:
        warnings.append(exposed_to_others(config.path, "web config basic_auth_users"))
    return [warning for warning in warnings if warning]


def _log_exposed_secret_files(config: WebConfig) -> None:
    for warning in exposed_secret_files(config):
        log.warning("%s", warning)


def lowered_security(old: WebConfig, new: WebConfig) -> str | None:
    """Why `new` would serve with less protection than `old`; None when it does not."""
    if old.ssl_context() is not None and new.ssl_context() is None:
        return "it turns TLS off"
    if old.users and not new.users:
        return "it removes every basic_auth_users entry"
    if old.requires_client_certificate() and not new.requires_client_certificate():
        return "it stops requiring client certificates"
    if old.ssl_context() is not None and new.ssl_context().minimum_version < old.ssl_context().minimum_version:
        return "it lowers min_version"  # such as a file cut short before its `min_version: TLS13` line
    if old.ssl_context() is not None and new.ssl_context().maximum_version < old.ssl_context().maximum_version:
        return "it lowers max_version"  # every client that spoke TLS 1.3 would be served TLS 1.2
    dropped = sorted(set(old.headers) - set(new.headers))
    if dropped:  # such as a file cut short before its http_server_config (Strict-Transport-Security, X-Frame-Options)
        return f"it drops the response header {', '.join(dropped)}"
    return None


class WebConfigWatcher:
    """Keeps the last good web-config and reloads it when the file or its certificates change.

    Certificates rotate without a restart (cert-manager, Kubernetes Secret updates), and a broken
    edit must not take the endpoint down, so a bad new file is logged and the old one stays in force. So
    does a file that would lower security (`lowered_security`): exporter-toolkit, too, keeps TLS on its
    listener whatever the file says later. Failed reloads are counted for /metrics (`collect`).
    """

    def __init__(self, path: Path, *, check_interval: float = 1.0, clock: Callable[[], float] = time.monotonic):
        """`clock`: monotonic seconds, for when to look at the files again (a test passes one it moves)."""
        self._path = Path(path)
        self._lock = threading.Lock()
        self._clock = clock
        self._check_interval = check_interval
        self._config, self._fingerprint = self._load((self._path,), _fingerprint((self._path,)))
        _log_exposed_secret_files(self._config)
        self._last_check = clock()
        self._last_error: str | None = None
        self._failed_fingerprint: tuple | None = None
        self._retry_at = -math.inf  # when a refused file whose fingerprint has not changed is read again
        self._failures = 0

    def in_force(self) -> WebConfig:
        """The web config in force, without looking at the files (one attribute read: never waits for a check)."""
        return self._config

    def due(self) -> bool:
        """Whether `current()` would look at the files now (a cheap guess, without the lock)."""
        return self._clock() - self._last_check >= self._check_interval

    def current(self) -> WebConfig:
        with self._lock:
            now = self._clock()
            if now - self._last_check < self._check_interval:
                return self._config
            self._last_check = now
            fingerprint = _fingerprint(self._config.watched_files)
            if fingerprint == self._fingerprint and self._last_error is None:
                return self._config
            if self._last_error is not None and fingerprint == self._failed_fingerprint and now < self._retry_at:
                return self._config
            started = self._clock()
            try:
                config, settled = self._load(self._config.watched_files, fingerprint)
                lowered = lowered_security(self._config, config)
                if lowered:
                    raise WebConfigError(self._path, "", f"refused because {lowered}; restart the exporter "
                                                         "to serve with less protection")
            except WebConfigError as exc:  # retried (a missing file may appear), told once
                if str(exc) != self._last_error or fingerprint != self._failed_fingerprint:
                    self._failures += 1
                    log.error("keeping the previous web config: %s", exc)
                self._last_error, self._failed_fingerprint = str(exc), fingerprint
                # Unchanged, it is read again at every check while that costs little, else at most a tenth of the
                # time: a refused file of 1 MiB of YAML took 2.5 s to parse, again at every check, for as long as
                # it stayed (a changed file is read at the next check all the same).
                done = self._clock()
                self._retry_at = done + RETRY_COST_FACTOR * (done - started)
                return self._config
            if self._last_error is not None:
                log.info("web config %s loaded again after an error", self._path)
            config.keep_verified(self._config)
            _log_exposed_secret_files(config)
            self._config, self._fingerprint = config, settled
            self._last_error = None
            return config

    def _load(self, files: tuple[Path, ...], fingerprint: tuple) -> tuple[WebConfig, tuple | None]:
        """The file loaded, and the fingerprint its files had before they were read (`fingerprint`, of `files`:
        those the config in force names), so that an edit landing while they are read is read at the next check.
        A config naming other files (the certificates, at the start) is loaded once more at once, after their
        fingerprint is taken: checked later instead, it would be read again then, and a new config closes every
        connection opened under the one before. None when that load names other files again (an edit landed)."""
        config = WebConfig.load(self._path)
        if config.watched_files != files:
            files, fingerprint = config.watched_files, _fingerprint(config.watched_files)
            config = WebConfig.load(self._path)
            if config.watched_files != files:
                return config, None
        return config, fingerprint

    def collect(self) -> Iterator[Metric]:
        """The reload metrics, for the exporter's registry (a prometheus_client collector)."""
        with self._lock:
            failures, ok = self._failures, self._last_error is None
        yield CounterMetricFamily("exchange_exporter_web_config_reload_failures",
                                  "Times a changed web config file was refused (the previous one stays in force).",
                                  value=failures)
        yield GaugeMetricFamily("exchange_exporter_web_config_last_reload_successful",
                                "1 if the web config file in force is the one on disk, 0 if a change was refused.",
                                value=int(ok))


def _fingerprint(paths: tuple[Path, ...]) -> tuple[tuple[int, int, int] | None, ...]:
    result = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            result.append(None)
        else:
            result.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(result)


def _section(value: Any, key_path: str, allowed: set[str]) -> dict[str, Any]:
    """A mapping (empty when left out) with only `allowed` keys; a key of a later exporter-toolkit says so."""
    section = mapping(value, key_path or "(top level)")
    for key in section:
        if key in _NEWER_TOOLKIT_KEYS:
            raise ConfigError(f"{key_path}.{key}" if key_path else key,
                              "unknown key (added in a later exporter-toolkit; not supported here)")
    reject_unknown(section, allowed, key_path)
    return section


def _load_headers(path: Path, http: dict[str, Any]) -> dict[str, str]:
    raw = http.get("headers") or {}
    if not isinstance(raw, dict):
        raise WebConfigError(path, "http_server_config.headers", "must be a mapping of header name to value")
    headers: dict[str, str] = {}
    for name, value in raw.items():
        key_path = f"http_server_config.headers.{name}"
        if name not in _ALLOWED_HEADERS:
            raise WebConfigError(path, key_path, "this header can not be configured; allowed: "
                                 + ", ".join(_ALLOWED_HEADERS))
        if not isinstance(value, str) or "\r" in value or "\n" in value:
            raise WebConfigError(path, key_path, "value must be a single-line string")
        allowed_values = _ALLOWED_HEADERS[name]
        if allowed_values is not None and value not in allowed_values:
            raise WebConfigError(path, key_path, f"value must be one of {', '.join(allowed_values)}")
        headers[name] = value
    return headers


def _load_users(path: Path, raw: Any) -> dict[str, bytes]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise WebConfigError(path, "basic_auth_users", "must be a mapping of user name to bcrypt hash")
    users: dict[str, bytes] = {}
    for user, hashed in raw.items():
        key_path = f"basic_auth_users.{user}"
        if not isinstance(user, str) or not user:
            raise WebConfigError(path, key_path, "user name must be a non-empty string")
        if not isinstance(hashed, str) or not _BCRYPT_HASH.match(hashed):
            raise WebConfigError(path, key_path, "value is not a bcrypt hash ($2a$/$2b$/$2y$, cost 04-31, 60 characters)")
        users[user] = hashed.encode("ascii")
    return users


def _parse_basic(header: str | None) -> tuple[str, bytes] | None:
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None


def _tls_version(path: Path, tls: dict[str, Any], key: str, default: str) -> ssl.TLSVersion:
    name = tls.get(key, default)
    if not isinstance(name, str) or name not in _TLS_VERSIONS:
        raise WebConfigError(path, f"tls_server_config.{key}", f"unknown TLS version {bounded_repr(name)}; expected one of "
                             + ", ".join(_TLS_VERSIONS))
    return _TLS_VERSIONS[name]


def _file_setting(path: Path, tls: dict[str, Any], key: str) -> Path | None:
    value = tls.get(key)
    if value is None or value == "":  # exporter-toolkit: an empty path is no file
        return None
    file = existing_file(value, f"tls_server_config.{key}", path.parent)
    size = file.stat().st_size  # the ssl module reads the file itself, whatever its size
    if size > MAX_PEM_FILE_BYTES:
        raise WebConfigError(path, f"tls_server_config.{key}",
                             f"{size} bytes, larger than {MAX_PEM_FILE_BYTES} bytes: not a certificate, key or CA bundle")
    return file


def _string_list(path: Path, tls: dict[str, Any], key: str) -> None:
    value = tls.get(key)
    if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise WebConfigError(path, f"tls_server_config.{key}", "must be a list of names")


def _load_tls(path: Path, tls: dict[str, Any]) -> tuple[ssl.SSLContext | None, Path | None, list[Path]]:
    """The server's TLS context, its private key's file and the files to watch; None, None, [] without TLS."""
    _string_list(path, tls, "cipher_suites")
    _string_list(path, tls, "curve_preferences")
    if not isinstance(tls.get("prefer_server_cipher_suites", True), bool):
        raise WebConfigError(path, "tls_server_config.prefer_server_cipher_suites", "must be true or false")
    min_version = _tls_version(path, tls, "min_version", "TLS12")
    max_version = _tls_version(path, tls, "max_version", "TLS13")
    if min_version > max_version:
        raise WebConfigError(path, "tls_server_config.min_version", "is higher than max_version")
    auth_name = tls.get("client_auth_type") or ""
    if auth_name == "RequireAnyClientCert":
        raise WebConfigError(path, "tls_server_config.client_auth_type",
                             "RequireAnyClientCert is not supported: Python's ssl module cannot demand a client "
                             "certificate without verifying it; use RequireAndVerifyClientCert with client_ca_file")
    if not isinstance(auth_name, str) or auth_name not in _CLIENT_AUTH:
        raise WebConfigError(path, "tls_server_config.client_auth_type",
                             f"invalid value {bounded_repr(auth_name)}; expected one of NoClientCert, RequestClientCert, "
                             "VerifyClientCertIfGiven, RequireAndVerifyClientCert")
    cert = _file_setting(path, tls, "cert_file")
    key = _file_setting(path, tls, "key_file")
    client_ca = _file_setting(path, tls, "client_ca_file")
    if not any(tls.get(k) for k in ("cert_file", "key_file", "client_ca_file", "client_auth_type")):
        return None, None, []
    if cert is None:
        raise WebConfigError(path, "tls_server_config.cert_file", "missing (required when TLS is configured)")
    if key is None:
        raise WebConfigError(path, "tls_server_config.key_file", "missing (required when TLS is configured)")
    verify_mode = _CLIENT_AUTH[auth_name]
    if client_ca is not None and auth_name in ("", "NoClientCert"):
        raise WebConfigError(path, "tls_server_config.client_ca_file",
                             "client CAs are configured without a client_auth_type that uses them")
    if client_ca is None and verify_mode != ssl.CERT_NONE:
        raise WebConfigError(path, "tls_server_config.client_ca_file",
                             f"missing: {auth_name} would accept a client certificate from any CA the operating "
                             "system trusts; name the CA that issues your clients' certificates")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = min_version
    context.maximum_version = max_version
    if min_version < ssl.TLSVersion.TLSv1_2:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    # The server's order always, whatever prefer_server_cipher_suites says: Go's crypto/tls has ignored the field since
    # 1.17 (the server picks), and a client that lists a weak suite first must not get it (nor after a reload).
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        # An empty password makes an encrypted key fail instead of prompting on the terminal.
        context.load_cert_chain(cert, key, password=b"")
    except ssl.SSLError as exc:
        raise WebConfigError(path, "tls_server_config.cert_file",
                             f"certificate and key_file do not load as a matching PEM pair ({exc.reason or exc})") from None
    context.verify_mode = verify_mode
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except ssl.SSLError as exc:
            raise WebConfigError(path, "tls_server_config.client_ca_file",
                                 f"no PEM certificate could be loaded ({exc.reason or exc})") from None
    watched = [p for p in (cert, key, client_ca) if p is not None]
    return context, key, watched
