"""Load and validate the YAML configuration.

Every problem is reported as a `ConfigError` naming the key path (`modules.default.port`) and what is wrong,
so `check-config` and start-up can print one clear line instead of a traceback. Secrets are resolved here,
once, and wrapped in `Secret` so they cannot leak through repr() or an f-string by accident.
"""

from __future__ import annotations

import base64
import math
import os
import re
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .addresses import is_host, is_proxy_url
from .sharding import parse_shard

DEFAULT_LISTEN_PORT = 10061
TRANSPORTS = ("ntlm", "kerberos", "credssp", "basic", "certificate")
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?(?:(\d+)ms)?$")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
SERVER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")


MAX_ERROR_CHARS = 300


def bounded_repr(value: Any) -> str:
    """A value for an error message, bounded: YAML aliases make a 600-byte file hold a value whose repr()
    is gigabytes, and the message is printed, logged and returned by POST /-/reload."""
    return _REPR.repr(value)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 2, 4, 4, 80, 80


class ConfigError(Exception):
    def __init__(self, path: str, message: str):
        path = path if len(path) <= MAX_ERROR_CHARS else path[:MAX_ERROR_CHARS] + "..."
        message = message if len(message) <= MAX_ERROR_CHARS else message[:MAX_ERROR_CHARS] + "..."
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class Secret:
    """A password that never prints itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(<redacted>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


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
    kerberos_delegation: bool = False  # lets Exchange cmdlets in the WinRS session reach AD (the double hop)

    def secrets(self) -> list[str]:
        """The password and the Basic `Authorization` value made from it, which a server can quote back."""
        if not (self.password and self.password.reveal()):
            return []
        password = self.password.reveal()
        basic = base64.b64encode(f"{self.username or ''}:{password}".encode("utf-8")).decode("ascii")
        return [password, basic]


@dataclass(frozen=True)
class ServerConfig:
    name: str
    address: str
    port: int | None  # None: the module's port
    module: str
    endpoint_proxy: str


@dataclass(frozen=True)
class PollConfig:
    background: bool = True  # false: probe-only, Prometheus drives every poll through /probe
    interval: float = 300.0
    timeout: float = 60.0
    concurrency: int = 32
    jitter: float = 0.1
    failing_share: float = 0.25
    lookback: float = 24 * 3600.0
    max_events: int = 200
    log_tail_bytes: int = 65536
    check_endpoint: bool = False
    endpoint_timeout: float = 10.0


@dataclass(frozen=True)
class LimitsConfig:
    max_servers: int = 5000
    max_response_bytes: int = 4 << 20
    max_poll_bytes: int = 8 << 20


@dataclass(frozen=True)
class OrganizationConfig:
    name: str
    server: str
    module: str
    discover_servers: bool
    interval: float


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

    def secrets(self) -> list[str]:
        return [secret for module in self.modules.values() for secret in module.secrets()]


# ---------------------------------------------------------------- value helpers


def parse_duration(value: Any, path: str) -> float:
    """Prometheus-style durations (`90s`, `5m`, `1h30m`, `250ms`) or a plain number of seconds."""
    if isinstance(value, bool):
        raise ConfigError(path, f"expected a duration like 30s or 5m, got {bounded_repr(value)}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ConfigError(path, f"expected a finite duration, got {bounded_repr(value)}")
        if value < 0:
            raise ConfigError(path, "must not be negative")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        if match and any(match.groups()):
            hours, minutes, seconds, millis = match.groups()
            return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds or 0) + int(millis or 0) / 1000
    raise ConfigError(path, f"expected a duration like 30s, 5m or 1h, got {bounded_repr(value)}")


def _mapping(value: Any, path: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(path, f"expected a mapping, got {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise ConfigError(path, f"keys must be strings, got {bounded_repr(key)}")
    return value


def _reject_unknown(section: dict, allowed: set[str], path: str) -> None:
    for key in section:
        if key not in allowed:
            prefix = f"{path}." if path else ""
            raise ConfigError(f"{prefix}{key}", f"unknown key (allowed: {', '.join(sorted(allowed))})")


def _int(value: Any, path: str, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(path, f"expected a whole number, got {bounded_repr(value)}")
    if not minimum <= value <= maximum:
        raise ConfigError(path, f"must be between {minimum} and {maximum}, got {value}")
    return value


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(path, f"expected true or false, got {bounded_repr(value)}")
    return value


def _str(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(path, f"expected a non-empty string, got {bounded_repr(value)}")
    return value.strip()


def _existing_file(value: Any, path: str, base: Path, *, secret_nearby: bool = False) -> Path:
    """`secret_nearby`: never repeat the value, in case someone pasted the password itself there."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(path, "expected a file path" if secret_nearby else f"expected a file path, got {bounded_repr(value)}")
    candidate = Path(value.strip())
    if not candidate.is_absolute():
        candidate = base / candidate
    if not candidate.is_file():
        shown = "the file it names" if secret_nearby else f"file {str(candidate)!r}"
        raise ConfigError(path, f"{shown} does not exist")
    return candidate


# ---------------------------------------------------------------- sections


def _load_poll(raw: Any) -> PollConfig:
    section = _mapping(raw, "poll")
    _reject_unknown(section, set(PollConfig.__dataclass_fields__), "poll")
    values: dict[str, Any] = {}
    for key in ("interval", "timeout", "lookback", "endpoint_timeout"):
        if key in section:
            values[key] = parse_duration(section[key], f"poll.{key}")
    if "concurrency" in section:
        values["concurrency"] = _int(section["concurrency"], "poll.concurrency", 1, 1024)
    if "max_events" in section:
        values["max_events"] = _int(section["max_events"], "poll.max_events", 1, 5000)
    if "log_tail_bytes" in section:
        values["log_tail_bytes"] = _int(section["log_tail_bytes"], "poll.log_tail_bytes", 0, 16 << 20)
    for key in ("check_endpoint", "background"):
        if key in section:
            values[key] = _bool(section[key], f"poll.{key}")
    for key in ("jitter", "failing_share"):
        if key in section:
            value = section[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ConfigError(f"poll.{key}", f"expected a fraction between 0 and 1, got {bounded_repr(value)}")
            values[key] = float(value)
    poll = PollConfig(**values)
    if poll.interval < 10:
        raise ConfigError("poll.interval", "must be at least 10s")
    if not 5 <= poll.timeout <= poll.interval:
        raise ConfigError("poll.timeout", f"must be between 5s and poll.interval ({poll.interval:g}s)")
    if poll.lookback < 3600:
        raise ConfigError("poll.lookback", "must be at least 1h (EEMS checks hourly)")
    return poll


def _load_limits(raw: Any) -> LimitsConfig:
    section = _mapping(raw, "limits")
    _reject_unknown(section, set(LimitsConfig.__dataclass_fields__), "limits")
    values = {}
    if "max_servers" in section:
        values["max_servers"] = _int(section["max_servers"], "limits.max_servers", 1, 100_000)
    for key in ("max_response_bytes", "max_poll_bytes"):
        if key in section:
            values[key] = _int(section[key], f"limits.{key}", 4096, 1 << 30)
    return LimitsConfig(**values)


_MODULE_KEYS = {
    "transport", "username", "password_env", "password_file", "scheme", "port", "ca_file",
    "insecure_skip_verify", "allow_basic_over_http", "cert_file", "key_file", "operation_timeout", "read_timeout",
    "kerberos_delegation",
}


def _load_password(section: dict, path: str, base: Path) -> Secret | None:
    if "password_env" in section and "password_file" in section:
        raise ConfigError(path, "set password_env or password_file, not both")
    if "password" in section:
        raise ConfigError(f"{path}.password", "passwords are not accepted inline; use password_env or password_file")
    if "password_env" in section:
        name = section["password_env"]
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            raise ConfigError(f"{path}.password_env", "must be the NAME of an environment variable (letters, digits "
                              "and _, not starting with a digit) that holds the password, not the password itself")
        value = os.environ.get(name)
        if not value:
            # not named: what was pasted here may be the password itself, if it happens to look like a name
            raise ConfigError(f"{path}.password_env", "the environment variable it names is not set or empty")
        return Secret(value)
    if "password_file" in section:
        file = _existing_file(section["password_file"], f"{path}.password_file", base, secret_nearby=True)
        try:
            value = file.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}.password_file", f"cannot read the file it names: {err.__class__.__name__}") from None
        if not value:
            raise ConfigError(f"{path}.password_file", "the file it names is empty")
        return Secret(value)
    return None


def _load_module(name: str, raw: Any, base: Path) -> ModuleConfig:
    path = f"modules.{name}"
    section = _mapping(raw, path)
    if "password" in section:
        _load_password(section, path, base)
    _reject_unknown(section, _MODULE_KEYS, path)
    transport = section.get("transport", "ntlm")
    if transport not in TRANSPORTS:
        raise ConfigError(f"{path}.transport", f"must be one of {', '.join(TRANSPORTS)}, got {bounded_repr(transport)}")
    scheme = section.get("scheme", "https")
    if scheme not in ("http", "https"):
        raise ConfigError(f"{path}.scheme", f"must be http or https, got {bounded_repr(scheme)}")
    port = _int(section.get("port", 5986 if scheme == "https" else 5985), f"{path}.port", 1, 65535)
    username = _str(section["username"], f"{path}.username") if "username" in section else None
    password = _load_password(section, path, base)
    ca_file = _existing_file(section["ca_file"], f"{path}.ca_file", base) if "ca_file" in section else None
    cert_file = _existing_file(section["cert_file"], f"{path}.cert_file", base) if "cert_file" in section else None
    key_file = _existing_file(section["key_file"], f"{path}.key_file", base) if "key_file" in section else None
    insecure = _bool(section.get("insecure_skip_verify", False), f"{path}.insecure_skip_verify")
    allow_basic_http = _bool(section.get("allow_basic_over_http", False), f"{path}.allow_basic_over_http")
    operation_timeout = parse_duration(section.get("operation_timeout", "20s"), f"{path}.operation_timeout")
    read_timeout = parse_duration(section.get("read_timeout", "30s"), f"{path}.read_timeout")

    problem = scheme_problem(transport, scheme, allow_basic_http)
    if problem:
        raise ConfigError(f"{path}.{'scheme' if transport == 'certificate' else 'transport'}", problem)
    if transport == "certificate":
        if not (cert_file and key_file):
            raise ConfigError(path, "transport certificate needs cert_file and key_file")
    else:
        if not username:
            raise ConfigError(f"{path}.username", f"required for transport {transport}")
        if transport != "kerberos" and password is None:
            raise ConfigError(path, f"transport {transport} needs password_env or password_file")
    delegation = _bool(section.get("kerberos_delegation", False), f"{path}.kerberos_delegation")
    if delegation and transport != "kerberos":
        raise ConfigError(f"{path}.kerberos_delegation", "only applies to transport kerberos")
    if ca_file and insecure:
        raise ConfigError(f"{path}.insecure_skip_verify", "contradicts ca_file: choose one")
    if not 1 <= operation_timeout < read_timeout:
        raise ConfigError(f"{path}.read_timeout", "must be longer than operation_timeout, which must be at least 1s")
    return ModuleConfig(
        name=name, transport=transport, username=username, password=password, scheme=scheme, port=port,
        ca_file=ca_file, insecure_skip_verify=insecure, allow_basic_over_http=allow_basic_http,
        cert_file=cert_file, key_file=key_file, operation_timeout=operation_timeout, read_timeout=read_timeout,
        kerberos_delegation=delegation,
    )


def scheme_problem(transport: str, scheme: str, allow_basic_over_http: bool) -> str | None:
    """Why credentials of `transport` must not be sent over `scheme`; None when they may. One rule for the
    configuration and for /probe, where a module may be paired with a server that uses another scheme."""
    if transport == "certificate" and scheme != "https":
        return "certificate authentication needs https"
    if transport == "basic" and scheme == "http" and not allow_basic_over_http:
        return ("basic authentication over plain http sends the password in clear text; use https, "
                "or set allow_basic_over_http: true if you really mean it")
    return None


def _validate_address(address: str, path: str) -> str:
    if not is_host(address):
        raise ConfigError(path, f"not a host name or IP address: {bounded_repr(address)}")
    return address


def _load_servers(raw: Any, modules: dict[str, ModuleConfig], default_module: str | None) -> tuple[ServerConfig, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError("servers", "expected a list of servers")
    servers: list[ServerConfig] = []
    seen: set[str] = set()
    for index, item in enumerate(raw):
        path = f"servers[{index}]"
        if isinstance(item, str):
            item = {"name": item}
        section = _mapping(item, path)
        _reject_unknown(section, {"name", "address", "port", "module", "endpoint_proxy"}, path)
        if "name" not in section:
            raise ConfigError(f"{path}.name", "required")
        name = _str(section["name"], f"{path}.name")
        if not SERVER_NAME.fullmatch(name):
            raise ConfigError(f"{path}.name", f"not a valid server name: {bounded_repr(name)}")
        if name.lower() in seen:
            raise ConfigError(f"{path}.name", f"server {bounded_repr(name)} is listed twice")
        seen.add(name.lower())
        address = _validate_address(_str(section.get("address", name), f"{path}.address"), f"{path}.address")
        port = _int(section["port"], f"{path}.port", 1, 65535) if "port" in section else None
        module = section.get("module", default_module)
        if module is None:
            raise ConfigError(f"{path}.module", "required when more than one module is configured")
        if module not in modules:
            raise ConfigError(f"{path}.module", f"unknown module {bounded_repr(module)} (configured: {', '.join(modules)})")
        proxy = section.get("endpoint_proxy", "")
        if proxy and not (isinstance(proxy, str) and is_proxy_url(proxy)):
            raise ConfigError(f"{path}.endpoint_proxy", f"expected a proxy URL like http://proxy:8080, got {bounded_repr(proxy)}")
        servers.append(ServerConfig(name=name, address=address, port=port, module=module, endpoint_proxy=str(proxy)))
    return tuple(servers)


def _load_organization(raw: Any, modules: dict[str, ModuleConfig], default_module: str | None,
                       servers: tuple[ServerConfig, ...], poll: PollConfig) -> OrganizationConfig | None:
    if raw is None:
        return None
    section = _mapping(raw, "organization")
    _reject_unknown(section, {"name", "server", "module", "discover_servers", "interval"}, "organization")
    if "server" not in section:
        raise ConfigError("organization.server", "required: the Exchange server that runs the organization cmdlets")
    server = _str(section["server"], "organization.server")
    named = {s.name.lower(): s for s in servers}
    module = section.get("module", named[server.lower()].module if server.lower() in named else default_module)
    if module is None or module not in modules:
        raise ConfigError("organization.module", f"unknown module {bounded_repr(module)}")
    interval = parse_duration(section.get("interval", poll.interval), "organization.interval")
    if interval < poll.interval:
        raise ConfigError("organization.interval", "must not be shorter than poll.interval")
    return OrganizationConfig(
        name=_str(section.get("name", "default"), "organization.name"),
        server=server,
        module=module,
        discover_servers=_bool(section.get("discover_servers", False), "organization.discover_servers"),
        interval=interval,
    )


def _shard(value: Any) -> tuple[int, int]:
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise ConfigError("shard", f"expected K/N, got {bounded_repr(value)}")
    try:
        return parse_shard(str(value))
    except ValueError as err:
        raise ConfigError("shard", str(err).replace("--shard ", "")) from None


def load_config_text(text: str, base: Path, source: Path | None = None) -> Config:
    try:
        raw = yaml.safe_load(text)
    except RecursionError:
        raise ConfigError("", "not valid YAML: nested too deeply") from None
    except yaml.reader.ReaderError as err:  # a control character: no line mark, but a position
        raise ConfigError("", f"not valid YAML: character #x{err.character:04x} at position {err.position} "
                              "is not allowed") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError("", f"not valid YAML{where}: {problem}") from None
    if raw is None:
        raise ConfigError("", "the configuration is empty: it needs at least modules and servers")
    root = _mapping(raw, "(top level)")
    _reject_unknown(root, {"poll", "limits", "modules", "servers", "organization", "catalog_file", "shard"}, "")
    poll = _load_poll(root.get("poll"))
    limits = _load_limits(root.get("limits"))
    raw_modules = _mapping(root.get("modules"), "modules")
    if not raw_modules:
        raise ConfigError("modules", "at least one module (credentials) is required")
    modules = {}
    for name, section in raw_modules.items():
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
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
        _existing_file(root["catalog_file"], "catalog_file", base) if root.get("catalog_file") is not None else None
    )
    shard = _shard(root["shard"]) if "shard" in root else (0, 1)
    return Config(poll=poll, limits=limits, modules=modules, servers=servers, organization=organization,
                  catalog_file=catalog_file, shard=shard, source=source)


def load_config(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("", f"config file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError("", f"cannot read config file {str(path)!r}: {err}") from None
    return load_config_text(text, path.parent, path)
