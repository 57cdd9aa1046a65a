"""Load and validate the YAML configuration.

Every problem is reported as a `ConfigError` naming the key path (`modules.default.port`) and what is wrong,
so `check-config` and start-up can print one clear line instead of a traceback. Secrets are resolved here,
once, and wrapped in `Secret` so they cannot leak through repr() or an f-string by accident.

Each section is a table of keys (name, reader, default, check) beside the dataclass it fills: the tables
are the one place for defaults and bounds, the keys a section allows are its table's names, and each
dataclass is checked against its table on import. What the tables cannot say (which module a server
uses, transport rules across keys) is in the section's loader below its table.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import ssl
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from .addresses import SERVER_NAME, is_host, is_proxy_url, without_userinfo
from .config_keys import (
    REQUIRED,
    ConfigError,
    Key,
    Required,
    boolean,
    bounded_repr,
    check_fields,
    choice,
    duration,
    existing_file,
    fraction,
    integer,
    load_yaml,
    mapping,
    read_section,
    reject_unknown,
    string,
)
from .files import exposed_to_others, read_regular_file
from .secret import Secret
from .sharding import parse_shard

DEFAULT_LISTEN_PORT = 10061
# A file is read (at start and every reload) up to this, and refused beyond: 100,000 servers in mappings take
# about 12 MiB, and PyYAML parses about 3 MB a second (300 MB of comment took 107 s and 640 MB of memory).
MAX_CONFIG_BYTES = 16 << 20
MAX_PASSWORD_FILE_BYTES = 64 << 10
MAX_CA_FILE_BYTES = 4 << 20  # certifi's bundle of every public CA is about 300 KB
TRANSPORTS = ("ntlm", "kerberos", "credssp", "basic", "certificate")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_MODULE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


# ---------------------------------------------------------------- poll


@dataclass(frozen=True)
class PollConfig:
    background: bool  # false: probe-only, Prometheus drives every poll through /probe
    interval: float
    timeout: float
    concurrency: int
    jitter: float
    failing_share: float
    lookback: float
    max_events: int
    log_tail_bytes: int
    check_endpoint: bool
    endpoint_timeout: float
    # Offer the monitoring account's default credentials to the proxy the endpoint check uses, which may be the
    # server's InternetWebProxy from Active Directory or its WinHTTP proxy (issue 24 finding 17): off unless asked.
    endpoint_proxy_default_credentials: bool


def _at_least(seconds: float, shown: str):
    return lambda value, _: None if value >= seconds else f"must be at least {shown}"


def _between(low: float, low_shown: str, high: float, high_shown: str):
    return lambda value, _: (f"must be at least {low_shown}" if value < low else
                             f"must be at most {high_shown}" if value > high else None)


def _within_interval(timeout: float, values: dict[str, Any]) -> str | None:
    interval = values["interval"]
    return None if 5 <= timeout <= interval else f"must be between 5s and poll.interval ({interval:g}s)"


MAX_CONCURRENCY = 1024  # polls at once
# The shipped JEA function's ValidateRange bounds are written from these (windows_endpoint.PARAMETERS), so a value the
# configuration takes is one the function takes: where they differed, a poll through the endpoint asked the server
# for less than the exporter judged (a lookback of 366 days against the function's 365) or waited less than
# configured (an endpoint timeout of up to 1h against its 300 s). Changing one changes the endpoint's version: every
# installed endpoint then reports endpoint_outdated until it is reinstalled.
MAX_LOOKBACK_HOURS = 365 * 24
MAX_EVENTS_ASKED = 5000
MAX_LOG_TAIL_BYTES = 16 << 20
MAX_ENDPOINT_TIMEOUT_SECONDS = 300

POLL_KEYS = (
    Key("background", boolean, True),
    Key("interval", duration, "5m", check=_at_least(10, "10s")),
    Key("timeout", duration, "60s", check=_within_interval),
    Key("concurrency", integer(1, MAX_CONCURRENCY), 32),
    Key("jitter", fraction, 0.1),
    Key("failing_share", fraction, 0.25),
    # at most a year: thousands of years failed every poll that read an event or a log line (`now - lookback`)
    Key("lookback", duration, "24h", check=_between(3600, "1h (EEMS checks hourly)", MAX_LOOKBACK_HOURS * 3600,
                                                    f"{MAX_LOOKBACK_HOURS}h (365 days)")),
    Key("max_events", integer(1, MAX_EVENTS_ASKED), 200),
    Key("log_tail_bytes", integer(0, MAX_LOG_TAIL_BYTES), 65536),
    Key("check_endpoint", boolean, False),
    Key("endpoint_proxy_default_credentials", boolean, False),
    # whole seconds for Invoke-WebRequest's TimeoutSec (an Int32: a huge value failed the check's binding); 0s
    # became 1s unsaid. The poll's own timeout cuts a longer one anyway.
    Key("endpoint_timeout", duration, "10s", check=_between(1, "1s", MAX_ENDPOINT_TIMEOUT_SECONDS,
                                                            f"{MAX_ENDPOINT_TIMEOUT_SECONDS // 60}m")),
)
check_fields(POLL_KEYS, PollConfig)


# ---------------------------------------------------------------- limits


@dataclass(frozen=True)
class LimitsConfig:
    max_servers: int
    max_response_bytes: int
    max_poll_bytes: int
    max_debug_output_bytes: int  # the last polls' raw outputs kept for /server?debug=true, compressed, all servers


LIMITS_KEYS = (
    Key("max_servers", integer(1, 100_000), 5000),
    Key("max_response_bytes", integer(4096, 1 << 30), 4 << 20),
    Key("max_poll_bytes", integer(4096, 1 << 30), 8 << 20),
    Key("max_debug_output_bytes", integer(0, 1 << 30), 32 << 20),
)
check_fields(LIMITS_KEYS, LimitsConfig)


# ---------------------------------------------------------------- modules


# Session configurations that run a whole script (Windows PowerShell's own) or cmdlets (Exchange's): any other name
# is a JEA endpoint, which runs the exporter's function alone (exporter/winrm/psrp.py).
EXCHANGE_CONFIGURATION = "Microsoft.Exchange"  # Exchange's own /PowerShell endpoint
BUILT_IN_CONFIGURATIONS = ("Microsoft.PowerShell", "Microsoft.PowerShell32", "PowerShell.7", EXCHANGE_CONFIGURATION)


@dataclass(frozen=True)
class ModuleConfig:
    """How to reach and authenticate to a server: a named credential set, selectable by /probe?module=."""

    name: str
    transport: str
    username: str | None
    password: Secret | None
    scheme: str
    port: int
    ca_file: Path | None
    insecure_skip_verify: bool
    allow_basic_over_http: bool
    cert_file: Path | None
    key_file: Path | None
    operation_timeout: float
    read_timeout: float
    kerberos_delegation: bool  # lets Exchange cmdlets in the WinRS session reach AD (the double hop)
    keytab_file: Path | None  # transport kerberos: the keys of `username`, instead of a password
    spn_service: str  # transport kerberos: the service ticket is for <spn_service>/<server FQDN>
    # transport credssp: what authenticates inside CredSSP's TLS session (exporter/winrm/credssp.py)
    credssp_auth_mechanism: str = "ntlm"
    allow_credssp_ntlm_over_http: bool = False  # the password to a server nothing verifies: only when asked for
    # PowerShell remoting instead of WinRS (exporter/winrm/psrp.py): the session configuration, the HTTP path
    # (wsman for the WinRM service, PowerShell for Exchange's own endpoint) and whether the runspace pool is
    # kept between polls.
    protocol: str = "winrs"
    configuration_name: str = "ExchangeEemsExporter"
    path: str = "wsman"
    keep_runspace: bool = True
    password_file: Path | None = None  # where `password` was read from (exposed_secret_files checks its mode)
    # transport kerberos with keytab_file: a digest of the keytab as loaded, so a keytab rotated in place (a new
    # Kubernetes Secret under the same path) makes a reload a change, as a rotated password file does: the module's
    # credential pause ends and its tickets are bought with the new keys at once
    keytab_digest: str | None = field(default=None, repr=False)

    @property
    def jea_endpoint(self) -> bool:
        """PowerShell remoting to a JEA endpoint (the exporter's, by default): only its function's parameters are
        sent, so what the function fixes when it is written (the endpoint check's proxy) cannot be chosen here."""
        return self.protocol == "psrp" and self.configuration_name not in BUILT_IN_CONFIGURATIONS

    def secrets(self) -> list[str]:
        """The password and the Basic `Authorization` value made from it, which a server can quote back."""
        if not (self.password and self.password.reveal()):
            return []
        password = self.password.reveal()
        basic = base64.b64encode(f"{self.username or ''}:{password}".encode("utf-8")).decode("ascii")
        return [password, basic]


def _password_from_env(name: Any, path: str) -> Secret:
    if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
        raise ConfigError(path, "must be the NAME of an environment variable (letters, digits "
                                "and _, not starting with a digit) that holds the password, not the password itself")
    value = os.environ.get(name)
    if not value:
        # not named: what was pasted here may be the password itself, if it happens to look like a name
        raise ConfigError(path, "the environment variable it names is not set or empty")
    return Secret(value)


def _password_from_file(file: Path, path: str) -> Secret:
    try:
        data = read_regular_file(file, MAX_PASSWORD_FILE_BYTES)
        # utf-8-sig: Windows PowerShell 5.1 writes a byte order mark first, which no password begins with
        password = data.decode("utf-8-sig").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(path, f"cannot read the file it names: {err.__class__.__name__}") from None
    if len(data) > MAX_PASSWORD_FILE_BYTES:
        raise ConfigError(path, f"the file it names is larger than {MAX_PASSWORD_FILE_BYTES} bytes: not a password")
    if not password:
        raise ConfigError(path, "the file it names is empty")
    return Secret(password)


def _longer_than_operation_timeout(read_timeout: float, values: dict[str, Any]) -> str | None:
    if 1 <= values["operation_timeout"] < read_timeout:
        return None
    return "must be longer than operation_timeout, which must be at least 1s"


def module_keys(base: Path) -> tuple[Key, ...]:
    """A module's keys; files named in it are taken relative to `base`, the configuration file's directory."""
    file = partial(existing_file, base=base)
    return (
        Key("transport", choice(*TRANSPORTS), "ntlm"),
        Key("scheme", choice("http", "https"), "https"),
        Key("port", integer(1, 65535), lambda values: 5986 if values["scheme"] == "https" else 5985),
        Key("username", string, None),
        Key("password_env", _password_from_env, None),
        Key("password_file", partial(existing_file, base=base, secret_nearby=True), None),
        Key("ca_file", file, None),
        Key("cert_file", file, None),
        Key("key_file", file, None),
        Key("insecure_skip_verify", boolean, False),
        Key("allow_basic_over_http", boolean, False),
        Key("operation_timeout", duration, "20s"),
        Key("read_timeout", duration, "30s", check=_longer_than_operation_timeout),
        Key("kerberos_delegation", boolean, False),
        Key("keytab_file", partial(existing_file, base=base, secret_nearby=True), None),
        Key("spn_service", choice("HTTP", "WSMAN"), "HTTP"),
        Key("credssp_auth_mechanism", choice("ntlm", "kerberos"), "ntlm"),
        Key("allow_credssp_ntlm_over_http", boolean, False),
        Key("protocol", choice("winrs", "psrp"), "winrs"),
        Key("configuration_name", _configuration_name, "ExchangeEemsExporter"),
        Key("path", _http_path, lambda values: "PowerShell" if values["configuration_name"] == EXCHANGE_CONFIGURATION
            else "wsman"),
        Key("keep_runspace", boolean, True),
    )


def _configuration_name(value: Any, path: str) -> str:
    """A PowerShell session configuration name, as it goes into the resource URI."""
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", value):
        raise ConfigError(path, f"expected a session configuration name like ExchangeEemsExporter or "
                                f"Microsoft.Exchange, got {bounded_repr(value)}")
    return value


def _http_path(value: Any, path: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", value.strip("/")):
        raise ConfigError(path, f"expected an HTTP path like wsman or PowerShell, got {bounded_repr(value)}")
    return value.strip("/")


check_fields(module_keys(Path()), ModuleConfig, also=("name", "password", "keytab_digest"),
             besides=("password_env",))


def scheme_problem(module: ModuleConfig, scheme: str) -> str | None:
    """Why the credentials of `module` must not be sent over `scheme`; None when they may. One rule for the
    configuration and for /probe, where a module (made for its own `scheme`) may be paired with a server that uses
    another one."""
    transport = module.transport
    if transport == "certificate" and scheme != "https":
        return "certificate authentication needs https"
    if transport == "credssp" and scheme == "http" and module.scheme == "https":
        return ("CredSSP delegates the password; this module does so over https only, to a server whose certificate "
                "is checked, and over plain http nothing verifies the server")
    if transport == "credssp" and scheme == "http" and module.credssp_auth_mechanism == "ntlm" \
            and not module.allow_credssp_ntlm_over_http:
        # neither http nor CredSSP's inner TLS checks a certificate, and NTLM does not authenticate the server:
        # whoever completes NTLM in its place gets the password. Windows' default policy refuses it too.
        return ("CredSSP over plain http with NTLM inside delegates the password to a server nothing verifies; use "
                "https, or credssp_auth_mechanism: kerberos, or set allow_credssp_ntlm_over_http: true if you really "
                "mean it")
    if transport == "basic" and scheme == "http" and not module.allow_basic_over_http:
        return ("basic authentication over plain http sends the password in clear text; use https, "
                "or set allow_basic_over_http: true if you really mean it")
    return None


def reusable_credential(module: ModuleConfig) -> str | None:
    """What a server that `module` authenticates to receives and can use elsewhere, or None: with NTLM, Kerberos
    without delegation or a client certificate it sees only an authentication exchange."""
    if module.transport == "basic":
        return "the password (Basic authentication sends it)"
    if module.transport == "credssp":
        return "the password (CredSSP delegates it)"
    if module.transport == "kerberos" and module.kerberos_delegation:
        return "a forwardable ticket-granting ticket (kerberos_delegation)"
    return None


def _load_module(name: str, raw: Any, base: Path) -> ModuleConfig:
    path = f"modules.{name}"
    section = mapping(raw, path)
    if "password_env" in section and "password_file" in section:
        raise ConfigError(path, "set password_env or password_file, not both")
    if "password" in section:
        raise ConfigError(f"{path}.password", "passwords are not accepted inline; use password_env or password_file")
    values = read_section(section, path, module_keys(base))
    from_env, file = values.pop("password_env"), values["password_file"]
    password = from_env or (_password_from_file(file, f"{path}.password_file") if file else None)
    transport, scheme = values["transport"], values["scheme"]
    problem = scheme_problem(ModuleConfig(name=name, password=password, **values), scheme)
    if problem:
        raise ConfigError(f"{path}.{'scheme' if transport == 'certificate' else 'transport'}", problem)
    if transport == "certificate":
        if not (values["cert_file"] and values["key_file"]):
            raise ConfigError(path, "transport certificate needs cert_file and key_file")
    else:
        if not values["username"]:
            raise ConfigError(f"{path}.username", f"required for transport {transport}")
        if transport != "kerberos" and password is None:
            raise ConfigError(path, f"transport {transport} needs password_env or password_file")
    if transport == "kerberos":
        _check_kerberos(path, values, password)
    else:
        for key in ("kerberos_delegation", "keytab_file"):
            if values[key]:
                raise ConfigError(f"{path}.{key}", "only applies to transport kerberos")
    if transport == "credssp" and values["credssp_auth_mechanism"] == "kerberos":
        _check_kerberos_inside_credssp(path, values)
    elif transport != "credssp" and "credssp_auth_mechanism" in section:
        raise ConfigError(f"{path}.credssp_auth_mechanism", "only applies to transport credssp")
    if values["allow_credssp_ntlm_over_http"] and (transport, values["credssp_auth_mechanism"]) != ("credssp", "ntlm"):
        raise ConfigError(f"{path}.allow_credssp_ntlm_over_http", "only applies to transport credssp with NTLM inside")
    if values["ca_file"] and values["insecure_skip_verify"]:
        raise ConfigError(f"{path}.insecure_skip_verify", "contradicts ca_file: choose one")
    # keys that cannot apply are refused, as the ones below: accepted, they were ignored without a word
    if transport != "certificate":
        for key in ("cert_file", "key_file"):
            if values[key]:
                raise ConfigError(f"{path}.{key}", "only applies to transport certificate")
    elif password is not None:
        raise ConfigError(path, "transport certificate logs on with cert_file and key_file; a password would not "
                                "be used")
    if scheme == "http" and values["ca_file"]:
        raise ConfigError(f"{path}.ca_file", "only applies to scheme https")
    if values["protocol"] == "winrs":
        for key in ("configuration_name", "path", "keep_runspace"):
            if key in section:
                raise ConfigError(f"{path}.{key}", "only applies to protocol psrp")
    if values["ca_file"]:
        _check_ca_file(path, values["ca_file"])
    if transport == "certificate":
        _check_client_certificate(path, values)
    return ModuleConfig(name=name, password=password, **values)


def _check_kerberos(path: str, values: dict[str, Any], password: Secret | None) -> None:
    """A Kerberos module has its own credential: a keytab or a password, never tickets from kinit or the
    environment; its username is a principal (user@REALM), and its keytab must hold that principal's key."""
    username, keytab = values["username"], values["keytab_file"]
    if "\\" in username:
        raise ConfigError(f"{path}.username", "Kerberos needs the account as a principal, user@REALM (the domain's "
                                              "DNS name in capitals), or user in krb5.conf's default realm; "
                                              "DOMAIN\\user is the NTLM form")
    if keytab is not None and password is not None:
        raise ConfigError(path, "set keytab_file or a password (password_env, password_file), not both")
    if keytab is None and password is None:
        raise ConfigError(path, "transport kerberos needs keytab_file, or password_env or password_file "
                                "(the exporter never uses tickets from kinit or the environment)")
    try:
        from .winrm.tickets import check_keytab
    except ImportError:
        raise ConfigError(f"{path}.transport", "Kerberos needs the exporter's kerberos extra: "
                                               "pip install '.[kerberos]' in its source folder") from None
    if keytab is not None:
        problem, content = check_keytab(keytab, username)
        if problem:
            raise ConfigError(f"{path}.keytab_file", f"the keytab {problem}")
        values["keytab_digest"] = hashlib.sha256(content).hexdigest()


def _check_client_certificate(path: str, values: dict[str, Any]) -> None:
    """The certificate and its key load as each poll will load them: an encrypted or mismatched key is named
    here, at start or reload, not at every poll."""
    from .winrm.tls import load_client_certificate  # winrm.tls reads ModuleConfig from this module

    try:
        load_client_certificate(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), values["cert_file"], values["key_file"])
    except (ssl.SSLError, OSError) as err:
        raise ConfigError(f"{path}.key_file", f"cannot load it with cert_file: {err}") from None


def _check_ca_file(path: str, ca_file: Path) -> None:
    """The CA bundle loads as each poll will load it (winrm/tls.py): a file without a certificate (half written,
    or the password file named by mistake) is named here, at start or reload, not at every poll as a TLS error."""
    try:
        data = read_regular_file(ca_file, MAX_CA_FILE_BYTES)
        if len(data) > MAX_CA_FILE_BYTES:
            raise ConfigError(f"{path}.ca_file", f"larger than {MAX_CA_FILE_BYTES} bytes: not a CA bundle")
        ssl.create_default_context(cafile=str(ca_file))
    except (ssl.SSLError, OSError) as err:
        # the reason only (OpenSSL's names no content of the file, which may be a secret named by mistake)
        reason = err.reason if isinstance(err, ssl.SSLError) and err.reason else type(err).__name__
        raise ConfigError(f"{path}.ca_file", f"cannot load it as a PEM bundle of CA certificates: {reason}") from None


def _check_kerberos_inside_credssp(path: str, values: dict[str, Any]) -> None:
    if "\\" in values["username"]:
        raise ConfigError(f"{path}.username", "Kerberos inside CredSSP needs the account as a principal, user@REALM; "
                                              "DOMAIN\\user is the NTLM form")
    try:
        from .winrm import tickets  # noqa: F401  (python-krb5 and python-gssapi: the kerberos extra)
    except ImportError:
        raise ConfigError(f"{path}.credssp_auth_mechanism", "Kerberos needs the exporter's kerberos extra: "
                                                            "pip install '.[kerberos]' in its source folder") from None


# ---------------------------------------------------------------- servers


@dataclass(frozen=True)
class ServerConfig:
    name: str
    address: str
    port: int | None  # None: the module's port
    module: str
    endpoint_proxy: str
    spn_hostname: str | None  # Kerberos: the FQDN in the server's SPN, when its name is not that FQDN


def _server_name(value: Any, path: str) -> str:
    name = string(value, path)
    if not SERVER_NAME.fullmatch(name):
        raise ConfigError(path, f"not a valid server name: {bounded_repr(name)}")
    return name


def _address(value: Any, path: str) -> str:
    address = string(value, path)
    if not is_host(address):
        raise ConfigError(path, f"not a host name or IP address: {bounded_repr(address)}")
    # an IPv6 address as URLs write it: the endpoint adds the brackets (twice, they made no URL: every poll failed)
    return address[1:-1] if address.startswith("[") else address


def _organization_server(value: Any, path: str) -> str:
    """A listed server's name, or a host to reach: an IPv6 address, which no server name matches, too."""
    server = string(value, path)
    if SERVER_NAME.fullmatch(server):
        return server
    if is_host(server):
        return server[1:-1] if server.startswith("[") else server
    raise ConfigError(path, f"not a valid server name: {bounded_repr(server)}")


def _proxy_url(value: Any, path: str) -> str:
    if value is None or value == "":  # `endpoint_proxy:` left empty: no proxy
        return ""
    if not isinstance(value, str) or not is_proxy_url(value):
        shown = without_userinfo(value) if isinstance(value, str) else value  # never repeat a password it holds
        raise ConfigError(path, f"expected a proxy URL like http://proxy:8080 (no user info), got "
                                f"{bounded_repr(shown)}")
    return value


def _spn_hostname(value: Any, path: str) -> str:
    name = string(value, path)
    if not is_host(name) or _looks_like_ip(name):
        raise ConfigError(path, f"expected the server's DNS name (as in its SPN), got {bounded_repr(name)}")
    return name.lower()


def _looks_like_ip(name: str) -> bool:
    return ":" in name or name.replace(".", "").isdigit()


SERVER_KEYS = (
    Key("name", _server_name, REQUIRED),
    Key("address", _address, lambda values: values["name"]),
    Key("port", integer(1, 65535), None),
    Key("module", string, None),  # None: the only module, or the one named default (see _load_servers)
    Key("endpoint_proxy", _proxy_url, ""),
    Key("spn_hostname", _spn_hostname, None),
)
check_fields(SERVER_KEYS, ServerConfig)


def _load_servers(raw: Any, modules: dict[str, ModuleConfig], default_module: str | None) -> tuple[ServerConfig, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError("servers", "expected a list of servers")
    servers: list[ServerConfig] = []
    seen: set[str] = set()
    for index, item in enumerate(raw):
        path = f"servers[{index}]"
        values = read_section({"name": item} if isinstance(item, str) else item, path, SERVER_KEYS)
        name = values["name"]
        host = name.lower().rstrip(".")  # ex01.contoso.com. is ex01.contoso.com: one server, polled twice
        if host in seen:
            raise ConfigError(f"{path}.name", f"server {bounded_repr(name)} is listed twice")
        seen.add(host)
        module = values["module"] = values["module"] or default_module
        if module is None:
            raise ConfigError(f"{path}.module", "required when more than one module is configured")
        if module not in modules:
            raise ConfigError(f"{path}.module",
                              f"unknown module {bounded_repr(module)} (configured: {', '.join(modules)})")
        if values["endpoint_proxy"] and modules[module].jea_endpoint:  # accepted, it was ignored without a word
            raise ConfigError(f"{path}.endpoint_proxy", f"does not apply to module {bounded_repr(module)}: its JEA "
                              "endpoint sends the check through the proxy it was written with "
                              "(windows-endpoint --endpoint-proxy)")
        if values["spn_hostname"] is None and _looks_like_ip(name) and _uses_kerberos(modules[module]):
            raise ConfigError(f"{path}.name", f"{bounded_repr(name)} is an address, and Kerberos (module {module!r}) "
                                              "needs the server's name for its SPN (HTTP/<name>): give its FQDN as "
                                              "name, or add spn_hostname")
        servers.append(ServerConfig(**values))
    return tuple(servers)


def _uses_kerberos(module: ModuleConfig) -> bool:
    return module.transport == "kerberos" or module.transport == "credssp" and module.credssp_auth_mechanism == "kerberos"


# ---------------------------------------------------------------- organization


@dataclass(frozen=True)
class OrganizationConfig:
    name: str
    server: str
    module: str
    discover_servers: bool
    interval: float


ORGANIZATION_KEYS = (
    # a listed server's name, or else the host name polled (runtime.Targets.for_organization): checked as both,
    # it went into the URL unchecked ('ex01:5986' failed every organization poll, 'x@ex01' polled ex01)
    Key("server", _organization_server, Required("the Exchange server that runs the organization cmdlets")),
    Key("name", string, "default"),
    Key("module", string, None),  # None: the server's module when it is listed, else the default module
    Key("discover_servers", boolean, False),
    Key("interval", duration, None),  # None: poll.interval
)
check_fields(ORGANIZATION_KEYS, OrganizationConfig)


def _load_organization(raw: Any, modules: dict[str, ModuleConfig], default_module: str | None,
                       servers: tuple[ServerConfig, ...], poll: PollConfig) -> OrganizationConfig | None:
    if raw is None:
        return None
    values = read_section(raw, "organization", ORGANIZATION_KEYS)
    named = {s.name.lower(): s for s in servers}
    server = values["server"].lower()
    if server not in named and not is_host(values["server"]):
        raise ConfigError("organization.server", f"not a listed server, nor a host name to reach: "
                                                 f"{bounded_repr(values['server'])}")
    module = values["module"] = values["module"] or (named[server].module if server in named else default_module)
    if module is None or module not in modules:
        raise ConfigError("organization.module", f"unknown module {bounded_repr(module)}")
    chosen = modules[module]
    if values["discover_servers"] and chosen.protocol == "psrp" and \
            chosen.configuration_name == EXCHANGE_CONFIGURATION:
        # discovered servers are polled with the organization's module: each failed configuration_not_found
        raise ConfigError("organization.discover_servers", f"discovered servers are polled with the organization's "
                          f"module, and {module!r} is Exchange's endpoint, which runs cmdlets only: list the servers "
                          f"in servers:, or give the organization a WinRS module (which then needs delegation: README, 'Windows "
                          f"permissions')")
    if server not in named and _looks_like_ip(server) and _uses_kerberos(chosen):
        raise ConfigError("organization.server", f"{bounded_repr(values['server'])} is an address, and Kerberos (module "
                                                 f"{module!r}) needs the server's name for its SPN (HTTP/<name>): give "
                                                 "its FQDN, or list it in servers with spn_hostname")
    interval = values["interval"] = values["interval"] if values["interval"] is not None else poll.interval
    if interval < poll.interval:
        raise ConfigError("organization.interval", "must not be shorter than poll.interval")
    return OrganizationConfig(**values)


# ---------------------------------------------------------------- the whole file


@dataclass(frozen=True)
class Config:
    poll: PollConfig
    limits: LimitsConfig
    modules: dict[str, ModuleConfig]
    servers: tuple[ServerConfig, ...]
    organization: OrganizationConfig | None
    catalog_file: Path | None
    shard: tuple[int, int]
    source: Path | None = field(default=None, compare=False)
    shard_override: tuple[int, int] | None = None  # `run --shard`: wins over the file's shard, at every reload

    def secrets(self) -> list[str]:
        return [secret for module in self.modules.values() for secret in module.secrets()]


def insecure_settings(config: Config) -> list[str]:
    """A warning for each module setting that weakens what protects the credential: logged at start and at every
    reload that applies the configuration (a reload turning one on said nothing)."""
    warnings = []
    for module in config.modules.values():
        if module.insecure_skip_verify:
            warnings.append(f"module {module.name}: WinRM server certificate validation is OFF "
                            "(insecure_skip_verify: true)")
        if module.transport == "basic" and module.scheme == "http":
            warnings.append(f"module {module.name}: basic authentication over plain http sends the password in "
                            "clear text")
        if module.allow_credssp_ntlm_over_http:
            warnings.append(f"module {module.name}: CredSSP over plain http with NTLM inside delegates the password "
                            "to a server nothing verifies (allow_credssp_ntlm_over_http: true)")
    return warnings


def exposed_secret_files(config: Config) -> list[str]:
    """A warning for each file holding a module's secret (password_file, keytab_file, key_file) that every user of
    the host may read or write (files.exposed_to_others), logged at start and at every reload that applies the
    configuration."""
    warnings = (exposed_to_others(getattr(module, key), f"modules.{module.name}.{key}")
                for module in config.modules.values() for key in ("password_file", "keytab_file", "key_file"))
    return [warning for warning in warnings if warning]


def config_warnings(config: Config) -> list[str]:
    """Every warning a configuration earns, in one list so that `run` at start, a reload that applies it and
    `check-config` say the same: settings that weaken the credential's protection, then its secret files that
    every user of the host may read or write."""
    return insecure_settings(config) + exposed_secret_files(config)


def lowered_security(old: Config, new: Config) -> str | None:
    """Why polling with `new` would protect the credential less than `old` does; None when it would not. A reload
    is refused for it, as a web config's is (webconfig.lowered_security): whoever can write the file, or a file cut
    short before its `ca_file:` line, must not weaken a running exporter; a restart applies the file."""
    before = set(insecure_settings(old))
    for warning in insecure_settings(new):
        if warning not in before:
            return warning
    pairs = [(f"module {name}", old.modules[name], module) for name, module in new.modules.items()
             if name in old.modules]
    old_servers = {server.name.lower(): server for server in old.servers}
    for server in new.servers:
        was = old_servers.get(server.name.lower())
        if was is not None and was.module != server.module:
            pairs.append((f"server {server.name}", old.modules[was.module], new.modules[server.module]))
    if old.organization and new.organization and old.organization.module != new.organization.module:
        pairs.append(("organization", old.modules[old.organization.module], new.modules[new.organization.module]))
    for what, was, module in pairs:
        problem = _weaker(was, module)
        if problem:
            return f"{what}: {problem}"
    if new.poll.endpoint_proxy_default_credentials and not old.poll.endpoint_proxy_default_credentials:
        return "it turns on poll.endpoint_proxy_default_credentials"
    return None


def _weaker(was: ModuleConfig, module: ModuleConfig) -> str | None:
    if was.scheme == "https" and module.scheme == "http":
        return "it moves from https to plain http, where no certificate authenticates the server"
    if module.scheme == "https" and not was.insecure_skip_verify and module.insecure_skip_verify:
        return "it turns certificate validation off"
    if module.scheme == "https" and was.ca_file is not None and module.ca_file is None \
            and not module.insecure_skip_verify:
        return "it drops ca_file: every public CA of the certifi bundle would be trusted instead"
    if _reusable_rank(module) > _reusable_rank(was):
        return f"the servers would receive {reusable_credential(module)}"
    return None


def _reusable_rank(module: ModuleConfig) -> int:
    """What a server gets that it can use elsewhere: nothing (0), a forwardable TGT, which expires (1), the password
    (2). A reload from one password-handing transport to another (CredSSP to Basic) lowers nothing."""
    return 2 if module.transport in ("basic", "credssp") else 1 if reusable_credential(module) else 0


_TOP_LEVEL_KEYS = set(Config.__dataclass_fields__) - {"source", "shard_override"}


def _shard(value: Any) -> tuple[int, int]:
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise ConfigError("shard", f"expected K/N, got {bounded_repr(value)}")
    try:
        return parse_shard(str(value))
    except ValueError as err:
        raise ConfigError("shard", str(err).replace("--shard ", "")) from None


def load_config_text(text: str, base: Path, source: Path | None = None) -> Config:
    raw = load_yaml(text)
    if raw is None:
        raise ConfigError("", "the configuration is empty: it needs at least modules and servers")
    root = mapping(raw, "(top level)")
    reject_unknown(root, _TOP_LEVEL_KEYS, "")
    poll = PollConfig(**read_section(root.get("poll"), "poll", POLL_KEYS))
    limits = LimitsConfig(**read_section(root.get("limits"), "limits", LIMITS_KEYS))
    raw_modules = mapping(root.get("modules"), "modules")
    if not raw_modules:
        raise ConfigError("modules", "at least one module (credentials) is required")
    modules = {}
    for name, section in raw_modules.items():
        if not _MODULE_NAME.fullmatch(name):
            raise ConfigError(f"modules.{name}", "module names may use letters, digits, _ and - only")
        modules[name] = _load_module(name, section, base)
    default_module = next(iter(modules)) if len(modules) == 1 else ("default" if "default" in modules else None)
    servers = _load_servers(root.get("servers"), modules, default_module)
    organization = _load_organization(root.get("organization"), modules, default_module, servers, poll)
    if not servers and not (organization and organization.discover_servers):
        raise ConfigError("servers", "list at least one server, or enable organization.discover_servers")
    if len(servers) > limits.max_servers:
        raise ConfigError("servers", f"{len(servers)} servers exceed limits.max_servers ({limits.max_servers})")
    catalog_file = (
        existing_file(root["catalog_file"], "catalog_file", base) if root.get("catalog_file") is not None else None
    )
    shard = _shard(root["shard"]) if "shard" in root else (0, 1)
    return Config(poll=poll, limits=limits, modules=modules, servers=servers, organization=organization,
                  catalog_file=catalog_file, shard=shard, source=source)


def load_config(path: Path, shard_override: tuple[int, int] | None = None) -> Config:
    """The configuration in `path`; `shard_override` (the command line's --shard) replaces the file's shard and is
    kept in the Config, so a reload applies it again: it fell back to the file's, and every replica polled the
    whole fleet after a reload."""
    config = _load_config(path)
    return replace(config, shard=shard_override, shard_override=shard_override) if shard_override else config


def _load_config(path: Path) -> Config:
    try:
        data = read_regular_file(path, MAX_CONFIG_BYTES)
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError("", f"config file {str(path)!r} is larger than {MAX_CONFIG_BYTES} bytes")
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError("", f"config file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError("", f"cannot read config file {str(path)!r}: {err}") from None
    return load_config_text(text, path.parent, path)
