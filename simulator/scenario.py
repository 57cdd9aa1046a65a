"""Load a scenario YAML file into simulated hosts, rejecting anything doubtful with the key path that is wrong.

A scenario is the whole simulated estate: the clock, the accounts the WinRM side accepts, the organization and
one entry per Exchange server (or a generated fleet for benchmarks). Every server becomes a `SimulatedHost`
whose `run` is a `windows.WindowsHost`. The format is documented in docs/simulator.md.
"""

from __future__ import annotations

import ipaddress
import re
import zlib
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import yaml

from . import eems, remoting, timezones
from .host import Faults, SimulatedHost
from .windows import (
    ACCOUNTS,
    ARRAY_STYLES,
    ENDPOINT_FAILURES,
    DATE_STYLES,
    DENIABLE,
    ENUM_STYLES,
    LOCALES,
    MAINTENANCE,
    SERVICE_STATUS,
    START_TYPES,
    VERSION_STYLES,
    Clock,
    Organization,
    OutputFaults,
    WindowsHost,
    WindowsServer,
)

FAILURE_CHOICES = ("none", "tls_validation", "signature_invalid")
DEFAULT_PORTS = {"http": 5985, "https": 5986}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,14}")  # a NetBIOS computer name
_RELATIVE = re.compile(r"-(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_TOP_KEYS = ("clock", "credentials", "tls_dir", "defaults", "organization", "servers", "generate", "remoting")
_HOST_KEYS = ("scheme", "port", "max_shells_per_user", "idle_timeout", "auth", "cbt_hardening")
AUTH_METHODS = ("ntlm", "kerberos", "credssp")  # the Negotiate packages a host takes, and CredSSP
_SERVER_KEYS = (
    "name", "address", "fqdn", "build", "role", "service", "service_stopped_since", "installed_since", "mitigations",
    "data_collection_enabled", "internet_web_proxy", "eems_failure", "endpoint_status", "log_file", "events",
    "success_events", "build_source", "output_style", "faults", "output_faults", "locale", "account", "unreadable",
    "unreadable_event", "winhttp_proxy", "endpoint_failure", "non_fetch_errors", "log_other_errors", "log_rotation", "log_encoding", "log_time", "log_header",
    "log_time_zone", "time_zone", "log_last_write", "log_other_file", "application_log_events", "language_mode",
    "remote_shell", "event_read_errors", "clock_offset", "maintenance",
    *_HOST_KEYS,
)


class ScenarioError(ValueError):
    """A scenario problem: `str()` is "<file>: <key path>: <message>", with the parts that are known."""

    def __init__(self, key_path: str, message: str, source: str = ""):
        super().__init__(": ".join(part for part in (source, key_path, message) if part))
        self.key_path = key_path
        self.message = message
        self.source = source


@dataclass
class Scenario:
    hosts: list[SimulatedHost]
    servers: list[WindowsServer]  # the state behind each host, same order
    credentials: dict[str, str] = field(repr=False)  # username -> password; never printed
    tls: Path | None  # directory with the certificate/key for https hosts; None = the server side decides
    organization: Organization
    clock: Clock


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError("", f"cannot read the scenario file: {exc.strerror or exc}", str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ScenarioError("", f"not valid YAML{where}: {getattr(exc, 'problem', None) or exc}", str(path)) from None
    try:
        return scenario_from_dict(data, path.parent)
    except ScenarioError as exc:
        raise ScenarioError(exc.key_path, exc.message, str(path)) from None


def scenario_from_dict(data: Any, base_dir: Path = Path(".")) -> Scenario:
    top = _mapping(data, "", _TOP_KEYS)
    pinned = _time(top["clock"], "clock", None) if "clock" in top else None
    clock = Clock(pinned)
    anchor = clock.now()
    credentials = _credentials(top.get("credentials"))
    tls = (base_dir / _string(top["tls_dir"], "tls_dir")) if "tls_dir" in top else None
    defaults = _mapping(top.get("defaults", {}), "defaults", _HOST_KEYS)
    org = _mapping(top.get("organization", {}), "organization", ("name", "domain", "mitigations_enabled", "server", "double_hop"))
    domain = _string(org.get("domain", "contoso.com"), "organization.domain")

    entries: list[tuple[str, dict[str, Any]]] = []
    servers = top.get("servers", [])
    if not isinstance(servers, list):
        raise ScenarioError("servers", f"expected a list of servers, got {_kind(servers)}")
    entries += [(f"servers[{i}]", s) for i, s in enumerate(servers)]
    if "generate" in top:
        entries += _generated(top["generate"])
    if not entries:
        raise ScenarioError("servers", "the scenario has no servers (give 'servers' or 'generate')")

    states, host_settings, seen_names, seen_endpoints = [], [], {}, {}
    for key, raw in entries:
        state, settings = _server(raw, key, defaults, domain, anchor)
        if state.name.lower() in seen_names:
            raise ScenarioError(f"{key}.name", f"{state.name!r} is already used by {seen_names[state.name.lower()]}")
        seen_names[state.name.lower()] = key
        endpoint = (settings["address"], settings["port"])
        if endpoint in seen_endpoints:
            raise ScenarioError(f"{key}.address", f"{endpoint[0]} port {endpoint[1]} is already used by {seen_endpoints[endpoint]}")
        seen_endpoints[endpoint] = key
        states.append(state)
        host_settings.append(settings)

    answering = org.get("server")
    if answering is not None:
        answering = _string(answering, "organization.server")
        if answering.lower() not in seen_names:
            raise ScenarioError("organization.server", f"{answering!r} is not one of the scenario's servers")
    else:
        answering = next((s.name for s in states if s.role != "Edge"), None)
    organization = Organization(
        name=_string(org.get("name", "Contoso"), "organization.name"),
        domain=domain,
        mitigations_enabled=_bool(org.get("mitigations_enabled", True), "organization.mitigations_enabled"),
        server=answering,
        double_hop=_bool(org.get("double_hop", False), "organization.double_hop"),
    )
    remote = _remoting(top.get("remoting", {}), {s.name.lower() for s in states})
    hosts = []
    for state, settings in zip(states, host_settings):
        windows = WindowsHost(state, organization, states, clock)
        hosts.append(SimulatedHost(
            name=state.name,
            address=settings["address"],
            port=settings["port"],
            scheme=settings["scheme"],
            run=windows,
            faults=settings["faults"],
            max_shells_per_user=settings["max_shells_per_user"],
            idle_timeout_seconds=settings["idle_timeout"],
            endpoints=remoting.Endpoints(windows, remote),
            winrs=remote.winrs,
            remote_shell_disabled=settings["remote_shell"] == "disabled",
            fqdn=state.fqdn,
            auth=settings["auth"],
            cbt_hardening=settings["cbt_hardening"],
        ))
    return Scenario(hosts, states, credentials, tls, organization, clock)


def _remoting(raw: Any, names: set[str]) -> remoting.Settings:
    """The `remoting` section: the PowerShell endpoints the servers serve over PSRP (docs/simulator.md)."""
    top = _mapping(raw, "remoting", ("winrs", "jea", "exchange"))
    jea = _mapping(top.get("jea", {}), "remoting.jea", ("configuration", "role_capability", "outdated", "absent"))
    exchange = _mapping(top.get("exchange", {}), "remoting.exchange", ("rbac_denied", "kerberos_only",
                                                                                "select_object"))

    def servers(key: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ScenarioError(key, f"expected a list of server names, got {_kind(value)}")
        unknown = [v for v in value if v.lower() not in names]
        if unknown:
            raise ScenarioError(key, f"{', '.join(unknown)}: not one of the scenario's servers")
        return tuple(v.upper() for v in value)

    denied = exchange.get("rbac_denied", [])
    if not isinstance(denied, list) or any(d not in remoting.EXCHANGE_CMDLETS for d in denied):
        raise ScenarioError("remoting.exchange.rbac_denied",
                            f"expected a list of: {', '.join(remoting.EXCHANGE_CMDLETS)}; got {_kind(denied)}")
    settings = remoting.Settings(
        jea_configuration=_string(jea.get("configuration", remoting.JEA_CONFIGURATION), "remoting.jea.configuration"),
        jea_outdated=servers("remoting.jea.outdated", jea.get("outdated", [])),
        jea_absent=servers("remoting.jea.absent", jea.get("absent", [])),
        rbac_denied=tuple(denied),
        exchange_kerberos_only=_bool(exchange.get("kerberos_only", True), "remoting.exchange.kerberos_only"),
        exchange_select_object=_bool(exchange.get("select_object", True), "remoting.exchange.select_object"),
        winrs=_bool(top.get("winrs", True), "remoting.winrs"),
    )
    if "role_capability" in jea:
        path = Path(_string(jea["role_capability"], "remoting.jea.role_capability"))
        try:
            settings.jea_version, settings.jea_body, settings.jea_proxy = remoting.installed_function(
                path.read_text(encoding="utf-8-sig"))
        except OSError as exc:
            raise ScenarioError("remoting.jea.role_capability", f"cannot read {path}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise ScenarioError("remoting.jea.role_capability", f"{path}: {exc}") from None
    return settings


# ---------------------------------------------------------------- sections


def _credentials(raw: Any) -> dict[str, str]:
    if raw is None:
        raise ScenarioError("credentials", "at least one credential is required")
    if not isinstance(raw, list) or not raw:
        raise ScenarioError("credentials", "expected a non-empty list of {username, password}")
    result: dict[str, str] = {}
    for i, item in enumerate(raw):
        entry = _mapping(item, f"credentials[{i}]", ("username", "password"))
        for key in ("username", "password"):
            if key not in entry:
                raise ScenarioError(f"credentials[{i}].{key}", "is required")
        username = _string(entry["username"], f"credentials[{i}].username")
        password = entry["password"]
        if not isinstance(password, str) or not password:
            raise ScenarioError(f"credentials[{i}].password", "must be a non-empty string (quote it in YAML)")
        if username.lower() in (u.lower() for u in result):
            raise ScenarioError(f"credentials[{i}].username", f"{username!r} is listed twice")
        result[username] = password
    return result


def _generated(raw: Any) -> list[tuple[str, dict[str, Any]]]:
    gen = _mapping(raw, "generate", ("count", "address_base", "name_prefix", "template"))
    for key in ("count", "address_base"):
        if key not in gen:
            raise ScenarioError(f"generate.{key}", "is required")
    count = _int(gen["count"], "generate.count", 1, 100_000)
    prefix = _string(gen.get("name_prefix", "EXBENCH"), "generate.name_prefix")
    template = _mapping(gen.get("template", {}), "generate.template", tuple(k for k in _SERVER_KEYS if k not in ("name", "address", "fqdn")))
    address = _ipv4_loopback(gen["address_base"], "generate.address_base")
    width = max(4, len(str(count)))
    if len(prefix) + width > 15:
        raise ScenarioError("generate.name_prefix", f"{prefix!r} plus {width} digits is longer than a 15-character computer name")
    entries = []
    for i in range(1, count + 1):
        while address.packed[3] in (0, 255):
            address += 1
        if address not in _LOOPBACK4:
            raise ScenarioError("generate.count", f"{count} servers from {gen['address_base']} run past 127.255.255.254")
        entries.append((f"generate[{i}]", {**template, "name": f"{prefix}{i:0{width}d}", "address": str(address)}))
        address += 1
    return entries


def _server(raw: Any, key: str, defaults: dict[str, Any], domain: str, anchor: datetime) -> tuple[WindowsServer, dict[str, Any]]:
    s = _mapping(raw, key, _SERVER_KEYS)
    for required in ("name", "address", "build"):
        if required not in s:
            raise ScenarioError(f"{key}.{required}", "is required")
    name = _string(s["name"], f"{key}.name")
    if not _NAME.fullmatch(name):
        raise ScenarioError(f"{key}.name", f"{name!r} is not a Windows computer name (1-15 letters, digits, '-')")
    settings = _host_settings(s, defaults, key)
    try:
        build = eems.parse_build(str(s["build"]))
    except ValueError as exc:
        raise ScenarioError(f"{key}.build", str(exc)) from None
    role = _choice(s.get("role", "Mailbox"), f"{key}.role", ("Mailbox", "Edge"))
    with_eems = role == "Mailbox" and eems.has_eems(build)
    installed = _time(s["installed_since"], f"{key}.installed_since", anchor) if "installed_since" in s else _default_install(name, anchor)

    status = start_type = None
    if "service" in s and s["service"] != "not_installed":
        if not with_eems:
            why = "Edge servers" if role == "Edge" else f"build {s['build']}"
            raise ScenarioError(f"{key}.service", f"{why} have no EEMS service; remove 'service' or use not_installed")
        svc = _mapping(s["service"], f"{key}.service", ("status", "start_type"))
        status = _choice(svc.get("status", "Running"), f"{key}.service.status", SERVICE_STATUS)
        start_type = _choice(svc.get("start_type", "Automatic"), f"{key}.service.start_type", START_TYPES)
    elif "service" not in s and with_eems:
        status, start_type = "Running", "Automatic"
    if "service_stopped_since" in s and status in (None, "Running"):
        raise ScenarioError(f"{key}.service_stopped_since", "only applies to a service that is installed and not Running")
    stopped = None
    if status is not None and status != "Running":
        stopped = _time(s["service_stopped_since"], f"{key}.service_stopped_since", anchor) if "service_stopped_since" in s else installed
        if stopped < installed:
            raise ScenarioError(f"{key}.service_stopped_since", "is before installed_since")

    mit = _mapping(s.get("mitigations", {}), f"{key}.mitigations", ("enabled", "applied", "blocked"))
    applied = _id_list(mit.get("applied", ["PING1"] if with_eems else []), f"{key}.mitigations.applied")
    blocked = _id_list(mit.get("blocked", []), f"{key}.mitigations.blocked")
    both = sorted(set(applied) & set(blocked))
    if both:
        raise ScenarioError(f"{key}.mitigations", f"{', '.join(both)} cannot be both applied and blocked")
    proxy = None
    if s.get("internet_web_proxy") is not None:
        proxy = _string(s["internet_web_proxy"], f"{key}.internet_web_proxy")
        if not re.fullmatch(r"https?://[^\s/]+/?", proxy):
            raise ScenarioError(f"{key}.internet_web_proxy", f"expected a URL like http://proxy.contoso.com:8080/, got {proxy!r}")
    data_collection = _bool(s.get("data_collection_enabled", False), f"{key}.data_collection_enabled")
    failure = _choice(s["eems_failure"], f"{key}.eems_failure", FAILURE_CHOICES) if "eems_failure" in s else None
    if failure is not None and not with_eems:
        raise ScenarioError(f"{key}.eems_failure", "this server has no EEMS (Edge role or a build without it)")
    locale = _choice(s.get("locale", "en-US"), f"{key}.locale", tuple(LOCALES))
    culture = LOCALES[locale]["culture"]
    log_time = _choice(s.get("log_time", "iso"), f"{key}.log_time", ("iso", "culture"))
    zone = _time_zone(s, key)
    account = _choice(s.get("account", "admin"), f"{key}.account", ACCOUNTS)
    unreadable = s.get("unreadable", [])
    if not isinstance(unreadable, list) or any(u not in ("events", "log") for u in unreadable):
        raise ScenarioError(f"{key}.unreadable", f"expected a list of: events, log; got {_kind(unreadable)}")
    if unreadable and account != "least_privilege":
        raise ScenarioError(f"{key}.unreadable", "only a least_privilege account is denied reading")
    denied = (("service",) if account == "least_privilege" else ()) + tuple(u for u in DENIABLE if u in unreadable)
    winhttp = _mapping(s.get("winhttp_proxy", {}), f"{key}.winhttp_proxy", ("proxy", "answers"))
    if winhttp and "proxy" not in winhttp:
        raise ScenarioError(f"{key}.winhttp_proxy.proxy", "is required")
    setup = None
    if with_eems:
        major, minor, cu, revision = build
        setup = eems.EemsSetup(
            server=name,
            build=build,
            data_version=f"{major}.{minor:02d}.{cu:04d}.{revision:03d}",
            running_from=installed,
            running_until=stopped,
            forced_failure=failure,
            proxy=proxy,
            data_collection_enabled=data_collection,
            success_events=_bool(s.get("success_events", False), f"{key}.success_events"),
            applied=applied,
            non_fetch_errors=_bool(s.get("non_fetch_errors", False), f"{key}.non_fetch_errors"),
            log_other_errors=_bool(s.get("log_other_errors", False), f"{key}.log_other_errors"),
            log_rotation=_choice(s.get("log_rotation", "hourly"), f"{key}.log_rotation", eems.LOG_ROTATIONS),
            log_encoding=_choice(s.get("log_encoding", "utf-8"), f"{key}.log_encoding", eems.LOG_ENCODINGS),
            log_header=_choice(s.get("log_header", "csv_first"), f"{key}.log_header", eems.LOG_HEADERS),
            log_time=(culture["date"], culture["time"], culture["am"], culture["pm"]) if log_time == "culture" else None,
            log_time_zone=zone,
            log_last_write=_choice(s.get("log_last_write", "at_write"), f"{key}.log_last_write", eems.LOG_LAST_WRITES),
        )
    style = _mapping(s.get("output_style", {}), f"{key}.output_style", ("dates", "service_enums", "arrays", "versions"))
    out = _mapping(s.get("output_faults", {}), f"{key}.output_faults", ("script_runtime", "garbage_output", "truncated_output", "oversized_output", "exit_code"))
    state = WindowsServer(
        name=name,
        fqdn=_string(s.get("fqdn", f"{name.lower()}.{domain}"), f"{key}.fqdn"),
        build=".".join(map(str, build)),
        role=role,
        service_status=status,
        service_start_type=start_type,
        eems=setup,
        mitigations_enabled=_bool(mit.get("enabled", True), f"{key}.mitigations.enabled") if with_eems else None,
        applied=applied,
        blocked=blocked,
        data_collection_enabled=data_collection if with_eems else None,
        internet_web_proxy=proxy,
        endpoint_status=_endpoint_status(s.get("endpoint_status", 200), f"{key}.endpoint_status"),
        log_file=_choice(s.get("log_file", "present"), f"{key}.log_file", ("present", "absent")) == "present",
        events=_choice(s.get("events", "present"), f"{key}.events", ("present", "absent")) == "present",
        build_source=_choice(s.get("build_source", "exsetup"), f"{key}.build_source", ("exsetup", "registry", "none", "empty")),
        date_style=_choice(style.get("dates", "ms"), f"{key}.output_style.dates", DATE_STYLES),
        enum_style=_choice(style.get("service_enums", "strings"), f"{key}.output_style.service_enums", ENUM_STYLES),
        array_style=_choice(style.get("arrays", "arrays"), f"{key}.output_style.arrays", ARRAY_STYLES),
        version_style=_choice(style.get("versions", "padded"), f"{key}.output_style.versions", VERSION_STYLES),
        locale=locale,
        time_zone=zone,
        clock_offset=_clock_offset(s.get("clock_offset", "0s"), f"{key}.clock_offset"),
        log_other_file=_bool(s.get("log_other_file", False), f"{key}.log_other_file"),
        language_mode=_choice(s.get("language_mode", "full"), f"{key}.language_mode", ("full", "constrained")),
        application_log_events=_int(s["application_log_events"], f"{key}.application_log_events", 0, 100_000_000)
        if "application_log_events" in s else None,
        event_read_errors=_int(s.get("event_read_errors", 0), f"{key}.event_read_errors", 0, 10_000_000),
        maintenance=_choice(s.get("maintenance", "none"), f"{key}.maintenance", tuple(MAINTENANCE)),
        denied=denied,
        unreadable_event=_unreadable_event(s.get("unreadable_event", False), f"{key}.unreadable_event"),
        winhttp_proxy=_string(winhttp["proxy"], f"{key}.winhttp_proxy.proxy") if winhttp else None,
        winhttp_proxy_answers=_endpoint_status(winhttp.get("answers", 200), f"{key}.winhttp_proxy.answers"),
        endpoint_failure=_choice(s["endpoint_failure"], f"{key}.endpoint_failure", tuple(ENDPOINT_FAILURES))
        if "endpoint_failure" in s else None,
        output=OutputFaults(
            script_runtime=_float(out["script_runtime"], f"{key}.output_faults.script_runtime") if "script_runtime" in out else None,
            garbage_output=_bool(out.get("garbage_output", False), f"{key}.output_faults.garbage_output"),
            truncated_output=_bool(out.get("truncated_output", False), f"{key}.output_faults.truncated_output"),
            oversized_output=_int(out["oversized_output"], f"{key}.output_faults.oversized_output", 1, 1 << 30) if "oversized_output" in out else None,
            exit_code=_int(out.get("exit_code", 0), f"{key}.output_faults.exit_code", 0, 2**31 - 1),
        ),
    )
    return state, settings


def _host_settings(s: dict[str, Any], defaults: dict[str, Any], key: str) -> dict[str, Any]:
    def pick(name: str, fallback: Any) -> tuple[Any, str]:
        if name in s:
            return s[name], f"{key}.{name}"
        return defaults.get(name, fallback), f"defaults.{name}"

    value, where = pick("scheme", "http")
    scheme = _choice(value, where, ("http", "https"))
    value, where = pick("port", DEFAULT_PORTS[scheme])
    port = _int(value, where, 1, 65535)
    value, where = pick("max_shells_per_user", 30)
    shells = _int(value, where, 1, 10_000)
    value, where = pick("idle_timeout", 180.0)
    idle = _float(value, where)
    value, where = pick("auth", ["ntlm"])
    methods = _auth(value, where)
    value, where = pick("cbt_hardening", "relaxed")
    hardening = _choice(value, where, ("relaxed", "strict"))
    address = s["address"]
    if isinstance(address, str) and address.strip() == "::1":
        address = "::1"
    else:
        address = str(_ipv4_loopback(address, f"{key}.address"))
    return {"address": address, "port": port, "scheme": scheme, "max_shells_per_user": shells, "idle_timeout": idle,
            "auth": methods, "cbt_hardening": hardening, "faults": _faults(s.get("faults", {}), f"{key}.faults"),
            "remote_shell": _choice(s.get("remote_shell", "enabled"), f"{key}.remote_shell", ("enabled", "disabled"))}


def _auth(value: Any, key: str) -> tuple[str, ...]:
    """`auth: kerberos` or `auth: [ntlm, kerberos, credssp]`: the Negotiate packages a host takes, and whether
    its listener takes CredSSP (WinRM's Service/Auth/CredSSP, off by default on Windows)."""
    methods = [value] if isinstance(value, str) else value
    if not isinstance(methods, list) or not methods or any(m not in AUTH_METHODS for m in methods):
        raise ScenarioError(key, f"expected {' or '.join(AUTH_METHODS)}, or a list of them, got {_kind(value)}")
    return tuple(dict.fromkeys(methods))


def _faults(raw: Any, key: str) -> Faults:
    f = _mapping(raw, key, ("latency", "slow_start", "refuse_connections", "reset_mid_response", "hang", "unauthorized",
                            "fault_code"))
    return Faults(
        latency_seconds=_float(f.get("latency", 0.0), f"{key}.latency"),
        slow_start_seconds=_float(f.get("slow_start", 0.0), f"{key}.slow_start"),
        refuse_connections=_bool(f.get("refuse_connections", False), f"{key}.refuse_connections"),
        reset_mid_response=_bool(f.get("reset_mid_response", False), f"{key}.reset_mid_response"),
        hang=_bool(f.get("hang", False), f"{key}.hang"),
        unauthorized=_bool(f.get("unauthorized", False), f"{key}.unauthorized"),
        fault_code=_int(f["fault_code"], f"{key}.fault_code", 1, 2**32 - 1) if f.get("fault_code") is not None else None,
    )


def _unreadable_event(value: Any, key: str) -> str | None:
    """false | true (the newest event's text cannot be formatted: an exception) | null_message (no text, no error)."""
    if value is False:
        return None
    if value is True:
        return "exception"
    if value == "null_message":
        return "null_message"
    raise ScenarioError(key, f"expected false, true or null_message, got {_kind(value)}")


def _time_zone(s: dict[str, Any], key: str) -> timezones.Zone:
    """`time_zone` (an IANA name: a zone with daylight saving) or `log_time_zone` (a fixed offset), not both."""
    if "time_zone" in s and "log_time_zone" in s:
        raise ScenarioError(f"{key}.time_zone", "give time_zone or log_time_zone, not both")
    if "time_zone" in s:
        try:
            return timezones.zone(s["time_zone"])
        except ValueError as e:
            raise ScenarioError(f"{key}.time_zone", str(e)) from None
    text = s.get("log_time_zone", "+00:00")
    return timezones.fixed(_utc_offset(text, f"{key}.log_time_zone"), text)


def _utc_offset(value: Any, key: str) -> timedelta:
    """A UTC offset like "+01:00" or "-05:30", -12:00 to +14:00."""
    match = re.fullmatch(r"([+-])([0-9]{2}):([0-9]{2})", value) if isinstance(value, str) else None
    offset = None
    if match:
        offset = (1 if match.group(1) == "+" else -1) * timedelta(hours=int(match.group(2)), minutes=int(match.group(3)))
    if offset is None or int(match.group(3)) >= 60 or not timedelta(hours=-12) <= offset <= timedelta(hours=14):
        raise ScenarioError(key, f"expected a UTC offset from -12:00 to +14:00 like \"+01:00\", got {_kind(value)}")
    return offset


def _clock_offset(value: Any, key: str) -> timedelta:
    """How far the server's clock is off the scenario clock: "+2h", "-10m", "90s", up to a year either way."""
    match = re.fullmatch(r"([+-]?)(\d+(?:\.\d+)?)([smhd])", value.strip()) if isinstance(value, str) else None
    offset = None
    if match:
        amount, unit = float(match.group(2)), timedelta(**{_UNITS[match.group(3)]: 1})
        # bounded before a timedelta is made of it: beyond timedelta's range (or a float's: infinity) that raised
        # OverflowError instead of this error
        if amount * unit.total_seconds() <= timedelta(days=366).total_seconds():
            offset = (-1 if match.group(1) == "-" else 1) * amount * unit
    if offset is None:
        raise ScenarioError(key, f"expected an offset like +2h, -10m or 90s (at most a year), got {_kind(value)}")
    return offset


def _default_install(name: str, anchor: datetime) -> datetime:
    """A year ago, at a minute fixed per server so the fleet's hourly checks are spread over the hour."""
    hour = (anchor - timedelta(days=365)).replace(minute=0, second=0, microsecond=0)
    return hour + timedelta(seconds=zlib.crc32(name.upper().encode()) % 3600)


# ---------------------------------------------------------------- typed readers


_LOOPBACK4 = ipaddress.IPv4Network("127.0.0.0/8")


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"


def _mapping(value: Any, key: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ScenarioError(key or "(top level)", f"expected a mapping, got {_kind(value)}")
    for k in value:
        if k not in allowed:
            where = f"{key}.{k}" if key else str(k)
            raise ScenarioError(where, f"unknown key; expected one of: {', '.join(allowed)}")
    return value


def _string(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ScenarioError(key, f"expected a non-empty string, got {_kind(value)}")
    return value.strip()


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ScenarioError(key, f"expected true or false, got {_kind(value)}")
    return value


def _int(value: Any, key: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ScenarioError(key, f"expected a whole number, got {_kind(value)}")
    if not lo <= value <= hi:
        raise ScenarioError(key, f"must be between {lo} and {hi}, got {value}")
    return value


def _float(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ScenarioError(key, f"expected a number of seconds >= 0, got {_kind(value)}")
    return float(value)


def _choice(value: Any, key: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ScenarioError(key, f"expected one of {', '.join(choices)}, got {_kind(value)}")
    return value


def _id_list(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9.]+", v) for v in value):
        raise ScenarioError(key, f"expected a list of mitigation ids like [PING1, M2.1.0], got {_kind(value)}")
    return tuple(value)


def _endpoint_status(value: Any, key: str) -> int:
    status = _int(value, key, 0, 599)
    if 0 < status < 100:
        raise ScenarioError(key, f"expected 0 (no response) or an HTTP status 100-599, got {status}")
    return status


def _ipv4_loopback(value: Any, key: str) -> ipaddress.IPv4Address:
    try:
        address = ipaddress.IPv4Address(str(value).strip())
    except ValueError:
        raise ScenarioError(key, f"expected an IPv4 address like 127.0.0.10, got {_kind(value)}") from None
    if address not in _LOOPBACK4:
        raise ScenarioError(key, f"{address} is not a loopback address; the simulator only listens on 127.0.0.0/8")
    return address


def _time(value: Any, key: str, anchor: datetime | None) -> datetime:
    """ISO time (naive = UTC), a YAML timestamp, or relative to the scenario clock like -6h, -30d."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    if isinstance(value, str):
        relative = _RELATIVE.fullmatch(value.strip())
        if relative and anchor is not None:
            return anchor - timedelta(**{_UNITS[relative.group(2)]: float(relative.group(1))})
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    hint = "an ISO time like 2026-11-26T10:00:00Z" + (" or a relative time like -6h, -30d" if anchor is not None else "")
    raise ScenarioError(key, f"expected {hint}, got {_kind(value)}")
