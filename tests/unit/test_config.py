"""Configuration validation: every bad file names the key at fault and says what is wrong, and good files
get the documented defaults. The table is the contract `check-config` users read their errors from."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from exporter.config import MAX_LOOKBACK_HOURS, ConfigError, exposed_secret_files, load_config, load_config_text

from ..conftest import PASSWORD, PASSWORD_ENV, write_keytab

MODULE = f"""\
modules:
  default:
    username: 'EXCH\\svc_monitor'
    password_env: {PASSWORD_ENV}
"""
ONE_SERVER = "servers:\n  - ex01.contoso.com\n"
GOOD = MODULE + ONE_SERVER


def module(*lines: str, name: str = "default", username: bool = True, password: bool = True) -> str:
    """One module section with extra keys; `{tmp}` in a line becomes the test's directory."""
    body = []
    if username:
        body.append("username: 'EXCH\\svc_monitor'")
    if password:
        body.append(f"password_env: {PASSWORD_ENV}")
    body.extend(lines)
    return f"modules:\n  {name}:\n" + "".join(f"    {line}\n" for line in body)


def servers(*entries: str) -> str:
    return "servers:\n" + "".join(f"  - {entry}\n" for entry in entries)


# (id, config text, expected key path, phrase expected in the message)
BAD = [
    # file shape
    ("empty file", "", "", "empty"),
    ("only a comment", "# nothing here\n", "", "empty"),
    ("list at top level", "- modules\n- servers\n", "(top level)", "expected a mapping, got list"),
    ("scalar at top level", "just text\n", "(top level)", "expected a mapping, got str"),
    ("invalid yaml names line and column", GOOD + "poll:\n  interval: [60s\n", "", "line 9, column 1"),
    ("tab indentation", MODULE + "servers:\n\t- ex01\n", "", "line 6, column 1"),
    ("control character", GOOD + "poll: {interval: \x07}\n", "", "#x0007"),
    ("undefined alias", GOOD + "poll: *nothing\n", "", "undefined alias"),
    ("non-string top-level key", GOOD + "1: 2\n", "(top level)", "keys must be strings"),
    # unknown keys at every level
    ("unknown top-level key", GOOD + "server: [ex02]\n", "server", "unknown key"),
    ("unknown poll key", GOOD + "poll: {intervall: 60s}\n", "poll.intervall", "unknown key"),
    ("unknown limits key", GOOD + "limits: {max_server: 3}\n", "limits.max_server", "unknown key"),
    ("unknown module key", module("verify: false") + ONE_SERVER, "modules.default.verify", "unknown key"),
    ("unknown server key", MODULE + servers("{name: ex01, host: 10.0.0.1}"), "servers[0].host", "unknown key"),
    ("unknown organization key", GOOD + "organization: {server: ex01.contoso.com, discover: true}\n",
     "organization.discover", "unknown key"),
    # wrong types
    ("poll not a mapping", GOOD + "poll: 60\n", "poll", "expected a mapping, got int"),
    ("modules a list", "modules:\n  - default\n" + ONE_SERVER, "modules", "expected a mapping, got list"),
    ("servers a mapping", MODULE + "servers: {ex01: {}}\n", "servers", "expected a list"),
    ("server entry a number", MODULE + servers("42"), "servers[0]", "expected a mapping, got int"),
    ("port a string", module("port: '5986'") + ONE_SERVER, "modules.default.port", "expected a whole number"),
    ("port a float", module("port: 5986.0") + ONE_SERVER, "modules.default.port", "expected a whole number"),
    ("concurrency a bool", GOOD + "poll: {concurrency: true}\n", "poll.concurrency", "expected a whole number"),
    ("check_endpoint a string", GOOD + "poll: {check_endpoint: 'yes'}\n", "poll.check_endpoint",
     "expected true or false"),
    ("insecure_skip_verify a string", module("insecure_skip_verify: 'no'") + ONE_SERVER,
     "modules.default.insecure_skip_verify", "expected true or false"),
    ("username a number", module("username: 42", username=False) + ONE_SERVER, "modules.default.username",
     "expected a non-empty string"),
    # missing required keys
    ("no modules", ONE_SERVER, "modules", "at least one module"),
    ("no servers", MODULE, "servers", "list at least one server"),
    ("server without name", MODULE + servers("{address: 10.0.0.1}"), "servers[0].name", "required"),
    ("module without username", module(username=False) + ONE_SERVER, "modules.default.username",
     "required for transport ntlm"),
    ("module without password", module(password=False) + ONE_SERVER, "modules.default",
     "needs password_env or password_file"),
    ("organization without server", GOOD + "organization: {name: Contoso}\n", "organization.server", "required"),
    # out-of-range numbers
    ("port zero", module("port: 0") + ONE_SERVER, "modules.default.port", "between 1 and 65535"),
    ("port too high", module("port: 65536") + ONE_SERVER, "modules.default.port", "between 1 and 65535"),
    ("server port too high", MODULE + servers("{name: ex01, port: 70000}"), "servers[0].port",
     "between 1 and 65535"),
    ("concurrency zero", GOOD + "poll: {concurrency: 0}\n", "poll.concurrency", "between 1 and 1024"),
    ("jitter above one", GOOD + "poll: {jitter: 1.5}\n", "poll.jitter", "fraction between 0 and 1"),
    ("max_events zero", GOOD + "poll: {max_events: 0}\n", "poll.max_events", "between 1 and 5000"),
    ("max_response_bytes tiny", GOOD + "limits: {max_response_bytes: 100}\n", "limits.max_response_bytes",
     "between 4096"),
    ("interval below 10s", GOOD + "poll: {interval: 5s}\n", "poll.interval", "at least 10s"),
    ("timeout above interval", GOOD + "poll: {interval: 30s, timeout: 45s}\n", "poll.timeout",
     "between 5s and poll.interval"),
    ("lookback below an hour", GOOD + "poll: {lookback: 30m}\n", "poll.lookback", "at least 1h"),
    # 3,000 years: every poll that read an event or a log line failed on `now - lookback` (OverflowError)
    ("lookback past a year", GOOD + "poll: {lookback: 30000000h}\n", "poll.lookback", "at most 8760h"),
    # Invoke-WebRequest's TimeoutSec is an Int32, and 0s became 1s unsaid
    ("endpoint_timeout of days", GOOD + "poll: {endpoint_timeout: 900000h}\n", "poll.endpoint_timeout", "at most 5m"),
    ("endpoint_timeout of 0s", GOOD + "poll: {endpoint_timeout: 0s}\n", "poll.endpoint_timeout", "at least 1s"),
    ("read_timeout not above operation_timeout", module("operation_timeout: 30s", "read_timeout: 20s") + ONE_SERVER,
     "modules.default.read_timeout", "longer than operation_timeout"),
    # bad durations
    ("duration in words", GOOD + "poll: {interval: 5 minutes}\n", "poll.interval", "expected a duration"),
    ("negative duration", GOOD + "poll: {timeout: -5}\n", "poll.timeout", "must not be negative"),
    ("empty duration", GOOD + "poll: {interval: ''}\n", "poll.interval", "expected a duration"),
    ("duration a bool", GOOD + "poll: {interval: true}\n", "poll.interval", "expected a duration"),
    ("duration units out of order", GOOD + "poll: {interval: 5m1h}\n", "poll.interval", "expected a duration"),
    ("infinite interval", GOOD + "poll: {interval: .inf}\n", "poll.interval", "finite"),
    ("nan lookback", GOOD + "poll: {lookback: .nan}\n", "poll.lookback", "finite"),
    ("infinite read_timeout", module("read_timeout: .inf") + ONE_SERVER, "modules.default.read_timeout", "finite"),
    # passwords
    ("password inline", module("password: hunter2", password=False) + ONE_SERVER, "modules.default.password",
     "not accepted inline"),
    ("password inline next to password_env", module("password: hunter2") + ONE_SERVER, "modules.default.password",
     "not accepted inline"),
    ("password_env unset", module("password_env: EEMS_TEST_SURELY_UNSET_VARIABLE", password=False) + ONE_SERVER,
     "modules.default.password_env", "the environment variable it names is not set or empty"),
    ("password_env empty", module("password_env: EEMS_TEST_EMPTY_VARIABLE", password=False) + ONE_SERVER,
     "modules.default.password_env", "the environment variable it names is not set or empty"),
    ("password_file missing", module("password_file: '{tmp}/no-such-file'", password=False) + ONE_SERVER,
     "modules.default.password_file", "does not exist"),
    ("password_file empty", module("password_file: '{tmp}/empty-password'", password=False) + ONE_SERVER,
     "modules.default.password_file", "is empty"),
    ("password_file only a newline", module("password_file: '{tmp}/newline-password'", password=False) + ONE_SERVER,
     "modules.default.password_file", "is empty"),
    ("password_env and password_file", module("password_file: '{tmp}/password'") + ONE_SERVER, "modules.default",
     "not both"),
    # modules and servers
    ("unknown module", MODULE + servers("{name: ex01, module: other}"), "servers[0].module",
     "unknown module 'other'"),
    ("two modules, none default", module(name="a") + module(name="b")[len("modules:\n"):] + ONE_SERVER,
     "servers[0].module", "required when more than one module"),
    ("invalid module name", module(name="'bad name'") + ONE_SERVER, "modules.bad name",
     "letters, digits, _ and -"),
    ("unknown transport", module("transport: digest") + ONE_SERVER, "modules.default.transport",
     "must be one of ntlm"),
    ("unknown scheme", module("scheme: ftp") + ONE_SERVER, "modules.default.scheme", "must be http or https"),
    ("duplicate server names", MODULE + servers("EX01", "ex01"), "servers[1].name", "listed twice"),
    # the absolute form of a name is the same host: two labels, one server polled twice
    ("a name and its absolute form", MODULE + servers("ex01.contoso.com", "EX01.contoso.com."), "servers[1].name",
     "listed twice"),
    ("server name with a space", MODULE + servers("'ex 01'"), "servers[0].name", "not a valid server name"),
    ("server name with a slash", MODULE + servers("'ex01/wsman'"), "servers[0].name", "not a valid server name"),
    ("address with a scheme", MODULE + servers("{name: ex01, address: 'http://ex01'}"), "servers[0].address",
     "not a host name or IP address"),
    ("address with a path", MODULE + servers("{name: ex01, address: 'ex01/wsman'}"), "servers[0].address",
     "not a host name or IP address"),
    ("bad endpoint proxy", MODULE + servers("{name: ex01, endpoint_proxy: 'socks5://proxy:1080'}"),
     "servers[0].endpoint_proxy", "expected a proxy URL"),
    # transport security
    ("basic over http", module("transport: basic", "scheme: http") + ONE_SERVER, "modules.default.transport",
     "allow_basic_over_http"),
    ("certificate over http", module("transport: certificate", "scheme: http", username=False, password=False)
     + ONE_SERVER, "modules.default.scheme", "needs https"),
    ("certificate without files", module("transport: certificate", username=False, password=False) + ONE_SERVER,
     "modules.default", "needs cert_file and key_file"),
    ("certificate without key file", module("transport: certificate", "cert_file: '{tmp}/client.crt'",
                                            username=False, password=False) + ONE_SERVER,
     "modules.default", "needs cert_file and key_file"),
    ("cert_file missing", module("transport: certificate", "cert_file: '{tmp}/absent.crt'",
                                 "key_file: '{tmp}/client.key'", username=False, password=False) + ONE_SERVER,
     "modules.default.cert_file", "does not exist"),
    ("insecure_skip_verify with ca_file", module("ca_file: '{tmp}/ca.crt'", "insecure_skip_verify: true")
     + ONE_SERVER, "modules.default.insecure_skip_verify", "contradicts ca_file"),
    ("ca_file missing", module("ca_file: '{tmp}/absent-ca.crt'") + ONE_SERVER, "modules.default.ca_file",
     "does not exist"),
    # taken without a look, a file with no certificate (a half-written CA, the password file by mistake) passed
    # check-config and reloads, and then failed every poll of the module with a TLS error
    ("ca_file without a certificate", module("ca_file: '{tmp}/ca.crt'") + ONE_SERVER, "modules.default.ca_file",
     "cannot load it as a PEM bundle of CA certificates"),
    ("ca_file the password file", module("ca_file: '{tmp}/password'") + ONE_SERVER, "modules.default.ca_file",
     "cannot load it as a PEM bundle of CA certificates"),
    # keys that cannot apply: accepted, they were ignored without a word
    ("certificate files for ntlm", module("cert_file: '{tmp}/client.crt'", "key_file: '{tmp}/client.key'")
     + ONE_SERVER, "modules.default.cert_file", "only applies to transport certificate"),
    ("password for certificate", module("transport: certificate", "cert_file: '{tmp}/client.crt'",
                                        "key_file: '{tmp}/client.key'", username=False) + ONE_SERVER,
     "modules.default", "a password would not be used"),
    ("ca_file over http", module("scheme: http", "ca_file: '{tmp}/ca.crt'") + ONE_SERVER, "modules.default.ca_file",
     "only applies to scheme https"),
    # a key given twice: YAML keeps the last, and the first went without a word
    ("modules given twice", GOOD + "modules: {other: {username: u, password_env: " + PASSWORD_ENV + "}}\n", "",
     "key 'modules' is given twice"),
    ("a module key given twice", module("transport: ntlm", "transport: basic") + ONE_SERVER, "",
     "key 'transport' is given twice"),
    # shard, organization, limits, catalog
    ("shard not K/N", GOOD + "shard: two\n", "shard", "must look like K/N"),
    ("shard index past count", GOOD + "shard: 3/3\n", "shard", "between 0 and 2"),
    ("shard count zero", GOOD + "shard: 0/0\n", "shard", "at least 1"),
    ("organization interval shorter than poll", GOOD + "poll: {interval: 5m}\n"
     "organization: {server: ex01.contoso.com, interval: 1m}\n", "organization.interval",
     "must not be shorter than poll.interval"),
    # organization.server becomes a URL's host when it is not a listed server: 'ex01:5986' failed every organization
    # poll with a ValueError, and 'x@ex01' polled ex01 (with 'x@ex01' as its Kerberos name)
    ("organization server with a port", GOOD + "organization: {server: 'ex01:5986'}\n", "organization.server",
     "not a valid server name"),
    ("organization server with user info", GOOD + "organization: {server: 'x@ex01'}\n", "organization.server",
     "not a valid server name"),
    ("organization server with a space", GOOD + "organization: {server: 'ex 01'}\n", "organization.server",
     "not a valid server name"),
    ("organization unknown module", GOOD + "organization: {server: ex01.contoso.com, module: nope}\n",
     "organization.module", "unknown module 'nope'"),
    ("too many servers", MODULE + servers("ex01", "ex02", "ex03") + "limits: {max_servers: 2}\n", "servers",
     "3 servers exceed limits.max_servers (2)"),
    ("catalog_file missing", GOOD + "catalog_file: '{tmp}/builds.tsv'\n", "catalog_file", "does not exist"),
]


@pytest.fixture
def files(tmp_path, monkeypatch) -> Path:
    """The files the table refers to through `{tmp}`."""
    (tmp_path / "password").write_text(PASSWORD + "\n")
    (tmp_path / "empty-password").write_text("")
    (tmp_path / "newline-password").write_text("\n")
    for name in ("client.crt", "client.key", "ca.crt"):
        (tmp_path / name).write_text("placeholder: the loader checks that the file exists\n")
    monkeypatch.delenv("EEMS_TEST_SURELY_UNSET_VARIABLE", raising=False)
    monkeypatch.setenv("EEMS_TEST_EMPTY_VARIABLE", "")
    return tmp_path


def write_ca(path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    from ..pki import issue

    certificate, _ = issue("Test CA", None, None, ca=True)
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def test_the_table_is_big_enough():
    assert len(BAD) >= 40
    assert len({case[0] for case in BAD}) == len(BAD), "case names must be unique"


@pytest.mark.parametrize(("text", "key_path", "phrase"), [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_config_names_the_key(files, text, key_path, phrase):
    with pytest.raises(ConfigError) as caught:
        load_config_text(text.replace("{tmp}", str(files)), files)
    assert caught.value.path == key_path, str(caught.value)
    assert phrase in caught.value.message, str(caught.value)
    assert "hunter2" not in str(caught.value) and PASSWORD not in str(caught.value)
    if key_path:
        assert str(caught.value).startswith(f"{key_path}: ")


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yml")


def test_config_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.yml"
    path.write_bytes(GOOD.encode() + b"# caf\xe9\n")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(path)


# ---------------------------------------------------------------- good configs


def test_minimal_config_defaults(tmp_path):
    path = tmp_path / "exporter.yml"
    path.write_text(GOOD)
    config = load_config(path)
    assert config.source == path
    (server,) = config.servers
    assert (server.name, server.address, server.port, server.module, server.endpoint_proxy) == (
        "ex01.contoso.com", "ex01.contoso.com", None, "default", "")
    default = config.modules["default"]
    assert default.transport == "ntlm"
    assert default.scheme == "https"
    assert default.port == 5986
    assert default.insecure_skip_verify is False  # certificate validation stays on
    assert default.ca_file is None and default.cert_file is None and default.key_file is None
    assert default.allow_basic_over_http is False
    assert default.username == "EXCH\\svc_monitor"
    assert default.password.reveal() == PASSWORD
    assert PASSWORD not in repr(config) and PASSWORD not in str(default.password)
    assert (default.operation_timeout, default.read_timeout) == (20.0, 30.0)
    assert (config.poll.interval, config.poll.timeout, config.poll.lookback) == (300.0, 60.0, 86400.0)
    assert config.poll.check_endpoint is False
    assert config.limits.max_servers == 5000
    assert config.organization is None and config.catalog_file is None
    assert config.shard == (0, 1)
    # the password and the Basic Authorization value a server could quote back in a fault
    assert config.secrets() == [PASSWORD, base64.b64encode(f"{default.username}:{PASSWORD}".encode()).decode()]


def test_http_scheme_defaults_to_port_5985():
    config = load_config_text(module("scheme: http") + ONE_SERVER, Path("."))
    assert config.modules["default"].port == 5985


def test_string_and_mapping_server_entries(tmp_path):
    text = MODULE + servers("EX01", "{name: EX02, address: 10.1.2.3, port: 15986}", "{name: EX03, address: '::1'}",
                            "{name: EX04, endpoint_proxy: 'http://proxy.contoso.com:8080/'}")
    config = load_config_text(text, tmp_path)
    assert [(s.name, s.address, s.port) for s in config.servers] == [
        ("EX01", "EX01", None), ("EX02", "10.1.2.3", 15986), ("EX03", "::1", None), ("EX04", "EX04", None)]
    assert config.servers[3].endpoint_proxy == "http://proxy.contoso.com:8080/"


def test_several_modules(tmp_path):
    # as Windows PowerShell 5.1's Set-Content -Encoding UTF8 writes it: a byte order mark, then CR LF
    (tmp_path / "pw").write_text("\ufeffother-secret\r\n", encoding="utf-8")
    write_ca(tmp_path / "ca.pem")
    text = textwrap.dedent(f"""\
        modules:
          default:
            username: 'EXCH\\svc_monitor'
            password_env: {PASSWORD_ENV}
            ca_file: ca.pem
          legacy:
            transport: basic
            scheme: http
            allow_basic_over_http: true
            username: 'legacy'
            password_file: pw
          kerb:
            transport: kerberos
            username: 'svc@CONTOSO.COM'
            keytab_file: svc.keytab
            spn_service: WSMAN
        servers:
          - EX01
          - {{name: EX02, module: legacy}}
          - {{name: EX03, module: kerb}}
        poll: {{interval: 1h30m, timeout: 90s, lookback: 48h, jitter: 0}}
        organization: {{server: EX01, discover_servers: true}}
        shard: 1/2
        """)
    write_keytab(tmp_path / "svc.keytab", "svc@CONTOSO.COM")
    config = load_config_text(text, tmp_path)
    assert [s.module for s in config.servers] == ["default", "legacy", "kerb"]
    assert config.modules["kerb"].keytab_file == tmp_path / "svc.keytab"
    assert config.modules["kerb"].spn_service == "WSMAN" and config.modules["default"].spn_service == "HTTP"
    assert config.modules["default"].ca_file == tmp_path / "ca.pem"  # relative to the config's directory
    assert config.modules["legacy"].password.reveal() == "other-secret"  # byte order mark and CR/LF stripped
    assert config.modules["legacy"].port == 5985
    assert config.modules["kerb"].password is None
    assert (config.poll.interval, config.poll.timeout, config.poll.lookback) == (5400.0, 90.0, 172800.0)
    assert config.organization.module == "default" and config.organization.interval == 5400.0
    assert config.organization.discover_servers is True
    assert config.shard == (1, 2)
    passwords = {name: module.password.reveal() for name, module in config.modules.items() if module.password}
    basic = [base64.b64encode(f"{config.modules[name].username}:{pw}".encode()).decode() for name, pw in passwords.items()]
    assert sorted(config.secrets()) == sorted([PASSWORD, "other-secret", *basic])


def test_discovery_alone_needs_no_server_list():
    text = MODULE + "organization: {server: ex01.contoso.com, discover_servers: true}\n"
    config = load_config_text(text, Path("."))
    assert config.servers == () and config.organization.server == "ex01.contoso.com"


@pytest.mark.parametrize(("value", "seconds"), [
    ("90s", 90.0), ("5m", 300.0), ("1h30m", 5400.0), ("2m30s", 150.0), ("1500ms", 1.5), ("12.5s", 12.5), (45, 45.0),
])
def test_durations(value, seconds):
    from exporter.config_keys import duration

    assert duration(value, "poll.endpoint_timeout") == seconds
    if 1 <= seconds <= 300:  # and as the configuration reads it, within endpoint_timeout's bounds
        config = load_config_text(GOOD + f"poll: {{endpoint_timeout: {value}}}\n", Path("."))
        assert config.poll.endpoint_timeout == seconds


def test_each_section_table_names_exactly_its_dataclass_fields():
    """The tables are the one place for keys and defaults; a key added to a dataclass and not to its table
    (or the other way round) must fail on import, not in a user's file."""
    from exporter.config import POLL_KEYS, PollConfig
    from exporter.config_keys import check_fields

    check_fields(POLL_KEYS, PollConfig)
    with pytest.raises(TypeError, match="endpoint_timeout"):
        check_fields(POLL_KEYS[:-1], PollConfig)


def test_defaults_come_from_the_tables_and_meet_their_checks():
    """A default is written as in the file and read like a value from it, so it meets the same checks: the
    default timeout (60s) does not fit a 30s interval, and saying so names the key."""
    with pytest.raises(ConfigError) as caught:
        load_config_text(GOOD + "poll: {interval: 30s}\n", Path("."))
    assert (caught.value.path, caught.value.message) == ("poll.timeout", "must be between 5s and poll.interval (30s)")


@pytest.mark.parametrize(("entry", "key_path", "phrase"), [
    ("{name: ex01, module: [default]}", "servers[0].module", "expected a non-empty string"),
    ("{name: ex01, endpoint_proxy: 8080}", "servers[0].endpoint_proxy", "expected a proxy URL"),
])
def test_server_keys_of_the_wrong_type_name_the_key(entry, key_path, phrase):
    with pytest.raises(ConfigError) as caught:
        load_config_text(MODULE + servers(entry), Path("."))
    assert (caught.value.path, phrase in caught.value.message) == (key_path, True), str(caught.value)


def test_an_empty_endpoint_proxy_is_no_proxy():
    config = load_config_text(MODULE + servers("{name: ex01, endpoint_proxy: }"), Path("."))
    assert config.servers[0].endpoint_proxy == ""


def test_the_readme_shows_the_defaults_of_the_tables():
    """README's key table is what users read; its backticked defaults must be the tables' defaults."""
    import re

    from exporter.config import LIMITS_KEYS, POLL_KEYS, module_keys

    tables = {"poll": POLL_KEYS, "limits": LIMITS_KEYS, "modules.NAME": module_keys(Path("."))}
    defaults = {f"{section}.{key.name}": key.default for section, keys in tables.items() for key in keys}
    shown = lambda value: str(value).lower() if isinstance(value, bool) else str(value)  # noqa: E731
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    compared = 0
    for key_cell, default_cell in re.findall(r"^\| ((?:`[^`]+`(?:, | / )?)+) \| ((?:`[^`]+`(?:, )?)+) \|", readme, re.M):
        keys, values = re.findall(r"`([^`]+)`", key_cell), re.findall(r"`([^`]+)`", default_cell)
        if len(keys) != len(values):
            continue
        section = keys[0].rpartition(".")[0]
        for key, value in zip(keys, values):
            key = section + key if key.startswith(".") else key
            if key in defaults:
                assert shown(defaults[key]) == value, key
                compared += 1
    assert compared >= 12


KERBEROS = "transport: kerberos"


@pytest.mark.parametrize(("lines", "key_path", "phrase"), [
    ((KERBEROS, "username: svc@CONTOSO.COM"), "modules.default", "needs keytab_file, or password_env or password_file"),
    ((KERBEROS, "username: 'CONTOSO\\svc'", f"password_env: {PASSWORD_ENV}"), "modules.default.username", "user@REALM"),
    ((KERBEROS, "username: svc@CONTOSO.COM", f"password_env: {PASSWORD_ENV}", "keytab_file: svc.keytab"),
     "modules.default", "not both"),
    ((KERBEROS, "username: other@CONTOSO.COM", "keytab_file: svc.keytab"), "modules.default.keytab_file",
     "holds no key for other@CONTOSO.COM (it holds: svc@CONTOSO.COM)"),
    # MIT finds keys by the exact name: accepted, every ticket purchase failed with keytab_unreadable
    ((KERBEROS, "username: SVC@CONTOSO.COM", "keytab_file: svc.keytab"), "modules.default.keytab_file",
     "holds no key for SVC@CONTOSO.COM (principal names are case-sensitive)"),
    ((KERBEROS, "username: svc@contoso.com", "keytab_file: svc.keytab"), "modules.default.keytab_file",
     "holds no key for svc@contoso.com (principal names are case-sensitive)"),
    ((KERBEROS, "username: svc@CONTOSO.COM", "keytab_file: garbage.keytab"), "modules.default.keytab_file",
     "not a usable keytab"),
    ((KERBEROS, "username: svc@CONTOSO.COM", "keytab_file: missing.keytab"), "modules.default.keytab_file",
     "does not exist"),
    (("username: 'EXCH\\svc'", f"password_env: {PASSWORD_ENV}", "keytab_file: svc.keytab"),
     "modules.default.keytab_file", "only applies to transport kerberos"),
    ((KERBEROS, "username: svc@CONTOSO.COM", "keytab_file: svc.keytab", "spn_service: HOST"),
     "modules.default.spn_service", "must be HTTP or WSMAN"),
], ids=["no credential", "netbios name", "keytab and password", "keytab without the principal",
         "principal in other case", "realm in other case", "not a keytab",
        "no keytab file", "keytab for ntlm", "unknown spn service"])
def test_a_kerberos_module_has_its_own_credential(tmp_path, lines, key_path, phrase):
    write_keytab(tmp_path / "svc.keytab", "svc@CONTOSO.COM")
    (tmp_path / "garbage.keytab").write_bytes(b"not a keytab at all")
    text = module(*lines, username=False, password=False) + ONE_SERVER
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, tmp_path)
    assert (caught.value.path, phrase in caught.value.message) == (key_path, True), str(caught.value)


@pytest.mark.parametrize(("value", "phrase"), [("10.0.0.1", "DNS name"), ("ex 01", "DNS name")])
def test_spn_hostname_is_a_dns_name(value, phrase):
    with pytest.raises(ConfigError, match=phrase) as caught:
        load_config_text(MODULE + servers(f"{{name: ex01, spn_hostname: '{value}'}}"), Path("."))
    assert caught.value.path == "servers[0].spn_hostname"
    config = load_config_text(MODULE + servers("{name: EX01, address: 10.0.0.1, spn_hostname: EX01.Contoso.COM}"), Path("."))
    assert config.servers[0].spn_hostname == "ex01.contoso.com"


def _psrp_config(tmp_path, **module):
    text = yaml.safe_dump({"modules": {"m": {"username": "EXCH\\svc_monitor", "password_env": PASSWORD_ENV, **module}},
                           "servers": ["EX01"]})
    return load_config_text(text, tmp_path).modules["m"]


def test_psrp_modules(tmp_path):
    jea = _psrp_config(tmp_path, protocol="psrp")
    assert (jea.protocol, jea.configuration_name, jea.path, jea.keep_runspace) == ("psrp", "ExchangeEemsExporter", "wsman", True)
    exchange = _psrp_config(tmp_path, protocol="psrp", configuration_name="Microsoft.Exchange", keep_runspace=False)
    assert exchange.path == "PowerShell" and not exchange.keep_runspace
    assert _psrp_config(tmp_path).protocol == "winrs"


@pytest.mark.parametrize("module, key", [
    ({"configuration_name": "ExchangeEemsExporter"}, "configuration_name"),  # without protocol psrp
    ({"protocol": "psrp", "configuration_name": "a b"}, "configuration_name"),
    ({"protocol": "psrp", "path": "../x"}, "path"),
    ({"protocol": "psrpx"}, "protocol"),
])
def test_psrp_keys_are_checked(tmp_path, module, key):
    with pytest.raises(ConfigError) as error:
        _psrp_config(tmp_path, **module)
    assert f"modules.m.{key}" in str(error.value)


def test_credssp_authenticates_inside_with_ntlm_unless_the_module_asks_for_kerberos(tmp_path):
    base = {"transport": "credssp", "scheme": "https", "password_env": PASSWORD_ENV}
    assert _psrp_config(tmp_path, **base).credssp_auth_mechanism == "ntlm"
    kerberos = {**base, "credssp_auth_mechanism": "kerberos", "username": "svc@CONTOSO.COM"}
    assert _psrp_config(tmp_path, **kerberos).credssp_auth_mechanism == "kerberos"
    for settings, key, phrase in [
        ({**base, "credssp_auth_mechanism": "kerberos"}, "credssp_auth_mechanism", None),  # EXCH\svc_monitor
        ({**base, "credssp_auth_mechanism": "negotiate"}, "credssp_auth_mechanism", "ntlm or kerberos"),
        ({"credssp_auth_mechanism": "ntlm"}, "credssp_auth_mechanism", "only applies to transport credssp"),
    ]:
        with pytest.raises(ConfigError) as caught:
            _psrp_config(tmp_path, **settings)
        if phrase is None:
            assert caught.value.path == "modules.m.username" and "user@REALM" in caught.value.message
        else:
            assert caught.value.path == f"modules.m.{key}" and phrase in caught.value.message, str(caught.value)


def test_credssp_over_plain_http_with_ntlm_inside_only_when_asked_for(tmp_path):
    """CredSSP hands the server the password. Over plain http with NTLM inside nothing verifies that server: neither
    http nor CredSSP's own TLS checks a certificate, and NTLM does not authenticate it, so whoever completes NTLM in
    its place (a domain computer account can) receives the password; Windows' default policy refuses it. It was
    accepted without a word. Refused now unless asked for, as Basic over http is."""
    base = {"transport": "credssp", "scheme": "http", "password_env": PASSWORD_ENV}
    with pytest.raises(ConfigError) as caught:
        _psrp_config(tmp_path, **base)
    assert caught.value.path == "modules.m.transport" and "allow_credssp_ntlm_over_http" in caught.value.message
    assert _psrp_config(tmp_path, **base, allow_credssp_ntlm_over_http=True).allow_credssp_ntlm_over_http
    kerberos = _psrp_config(tmp_path, **base, credssp_auth_mechanism="kerberos", username="svc@CONTOSO.COM")
    assert not kerberos.allow_credssp_ntlm_over_http  # the KDC's ticket authenticates the server
    assert not _psrp_config(tmp_path, **{**base, "scheme": "https"}).allow_credssp_ntlm_over_http
    for settings in ({"transport": "ntlm", "scheme": "http"},
                     {**base, "credssp_auth_mechanism": "kerberos", "username": "svc@CONTOSO.COM"}):
        with pytest.raises(ConfigError) as caught:
            _psrp_config(tmp_path, **settings, allow_credssp_ntlm_over_http=True)
        assert caught.value.path == "modules.m.allow_credssp_ntlm_over_http", str(caught.value)


def test_the_organization_server_is_a_listed_server_or_a_host_name():
    listed = load_config_text(MODULE + servers("{name: ex_01, address: 10.0.0.1}") + "organization: {server: EX_01}\n",
                              Path())
    assert listed.organization.server == "EX_01"
    unlisted = load_config_text(GOOD + "organization: {server: ex02.contoso.com}\n", Path())
    assert unlisted.organization.server == "ex02.contoso.com"
    with pytest.raises(ConfigError, match="organization.server: not a listed server, nor a host name"):
        load_config_text(GOOD + "organization: {server: ex_02}\n", Path())
    for address in ("'fd00::10'", "'[fd00::10]'"):  # an IPv6 address, bare as the endpoint brackets it
        assert load_config_text(GOOD + f"organization: {{server: {address}}}\n", Path()).organization.server == "fd00::10"
    for address in ("'[fd00::10'", "'fd00::10]'"):  # taken as fd00::1 (both brackets dropped) and as 'fd00::10]'
        with pytest.raises(ConfigError, match="organization.server"):
            load_config_text(GOOD + f"organization: {{server: {address}}}\n", Path())
        with pytest.raises(ConfigError, match=r"servers\[0\].address"):
            load_config_text(GOOD.replace("- ex01.contoso.com", f"- {{name: ex01.contoso.com, address: {address}}}"),
                             Path())


def test_the_longest_lookback_the_configuration_takes_can_be_judged():
    """The bound on poll.lookback keeps `now - lookback` and the script's AddHours(-LookbackHours) in range."""
    from datetime import datetime, timedelta, timezone

    from exporter.catalog import Catalog
    from exporter.interpret import interpret_server
    from exporter.model import RawEvent

    from .test_interpret import facts

    config = load_config_text(GOOD + "poll: {lookback: 8760h}\n", Path())
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    lookback = timedelta(seconds=config.poll.lookback)
    state = interpret_server("EX01", facts(events=[RawEvent(1008, now - timedelta(days=300), "text")], now=now),
                             Catalog.load(), lookback=lookback, now=now)
    assert state.eems.other_errors == 1
    with pytest.raises(ConfigError, match="at most 8760h"):
        load_config_text(GOOD + "poll: {lookback: 8761h}\n", Path())


@pytest.mark.parametrize("key, parameter, highest, beyond, refusal", [
    ("lookback", "LookbackHours", f"{MAX_LOOKBACK_HOURS}h", f"{MAX_LOOKBACK_HOURS + 1}h", f"at most {MAX_LOOKBACK_HOURS}h"),
    ("max_events", "MaxEvents", "5000", "5001", "5000"),
    ("log_tail_bytes", "LogTailBytes", str(16 << 20), str((16 << 20) + 1), str(16 << 20)),
    ("endpoint_timeout", "EndpointTimeoutSec", "300s", "301s", "at most 5m"),
])
def test_each_poll_bound_is_the_jea_functions(key, parameter, highest, beyond, refusal):
    """poll.lookback took up to 8784h (366 days) and poll.endpoint_timeout up to 1h where the shipped JEA function's
    ValidateRange, and the simulator's copy of it, stop at 8760h and 300 s: a poll through that endpoint asked for
    less than the configuration said. The configuration's bound is the one the function is written with
    (windows_endpoint.PARAMETERS); the highest value it takes is the function's highest, the next is refused."""
    from exporter import windows_endpoint
    from simulator.remoting import JEA_PARAMETERS

    function = {name: high for name, _, high, _ in windows_endpoint.PARAMETERS}
    assert function[parameter] == JEA_PARAMETERS[parameter][1]
    taken = getattr(load_config_text(GOOD + f"poll: {{{key}: {highest}}}\n", Path()).poll, key)
    assert taken == function[parameter] * (3600 if key == "lookback" else 1)
    with pytest.raises(ConfigError, match=f"poll.{key}.*{refusal}"):
        load_config_text(GOOD + f"poll: {{{key}: {beyond}}}\n", Path())


@pytest.mark.parametrize("lookback, hours", [("1h", 1), ("90m", 2), ("24h", 24), ("8759h1m", 8760), ("8760h", 8760)])
def test_a_lookback_of_part_of_an_hour_is_asked_of_the_server_whole(lookback, hours):
    """The script takes whole hours (LookbackHours). A lookback of 90m asked for 1h and was judged as 90m: a fetch
    error 61 to 90 minutes old was never read, yet exchange_eems_fetch_errors said the 90m held none. Asking for the
    next whole hour gives the poll every record its window judges (what lies beyond the window is not counted)."""
    from types import SimpleNamespace

    from exporter.collectors import server_script

    config = load_config_text(GOOD + f"poll: {{lookback: {lookback}}}\n", Path())
    script = server_script(SimpleNamespace(endpoint_proxy=""), config.poll, None)
    assert f"LookbackHours={hours};" in next(line for line in script.splitlines() if line.startswith("$P=@{"))


@pytest.mark.parametrize("server", ["10.0.0.5", "'fd00::10'"])
def test_a_kerberos_organization_server_is_named_not_addressed(tmp_path, server):
    """Not a listed server, organization.server is the host of the organization collector's SPN: HTTP/10.0.0.5
    names no service, so every organization poll failed at the KDC (spn_unknown) long after check-config passed."""
    write_keytab(tmp_path / "svc.keytab", "svc@CONTOSO.COM")
    kerberos = module(KERBEROS, "username: svc@CONTOSO.COM", "keytab_file: svc.keytab", username=False, password=False)
    with pytest.raises(ConfigError, match="needs the server's name for its SPN") as caught:
        load_config_text(kerberos + ONE_SERVER + f"organization: {{server: {server}}}\n", tmp_path)
    assert caught.value.path == "organization.server"
    named = load_config_text(kerberos + ONE_SERVER + "organization: {server: ex02.contoso.com}\n", tmp_path)
    assert named.organization.server == "ex02.contoso.com"
    listed = kerberos + servers("{name: ex05, address: 10.0.0.5, spn_hostname: ex05.contoso.com}")
    assert load_config_text(listed + "organization: {server: ex05}\n", tmp_path).organization.server == "ex05"
    assert load_config_text(GOOD + f"organization: {{server: {server}}}\n", tmp_path).organization  # NTLM: an address


@pytest.mark.parametrize("server", ["10.0.0.5", "192.168.20.7"])  # an IPv6 address is no server name at all
def test_a_kerberos_server_is_named_not_addressed(tmp_path, server):
    """A server listed by its address alone asks for the service ticket of HTTP/10.0.0.5, which no Windows account
    holds: every poll failed at the KDC (spn_unknown) after check-config passed it, although organization.server
    refused the same address."""
    write_keytab(tmp_path / "svc.keytab", "svc@CONTOSO.COM")
    kerberos = module(KERBEROS, "username: svc@CONTOSO.COM", "keytab_file: svc.keytab", username=False, password=False)
    with pytest.raises(ConfigError, match="needs the server's name for its SPN") as caught:
        load_config_text(kerberos + servers(server), tmp_path)
    assert caught.value.path == "servers[0].name"
    listed = kerberos + servers(f"{{name: {server}, spn_hostname: ex05.contoso.com}}")
    assert load_config_text(listed, tmp_path).servers[0].spn_hostname == "ex05.contoso.com"
    assert load_config_text(MODULE + servers(server), tmp_path).servers  # NTLM: an address is a name


def test_an_endpoint_proxy_a_jea_endpoint_would_ignore_is_refused(monkeypatch):
    """The exporter's JEA endpoint takes five integers: its proxy is the one `windows-endpoint --endpoint-proxy`
    wrote into it. A `servers[].endpoint_proxy` on a server polled through it was accepted and ignored without a
    word, and the check went another way than the one configured."""
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    proxy = "{name: ex01.contoso.com, endpoint_proxy: 'http://proxy.contoso.com:8080'}"
    with pytest.raises(ConfigError) as caught:
        load_config_text(module("protocol: psrp") + servers(proxy), Path("."))
    assert caught.value.path == "servers[0].endpoint_proxy" and "--endpoint-proxy" in caught.value.message
    # a session configuration that runs the whole script takes the proxy, as WinRS does
    for lines in (("protocol: psrp", "configuration_name: Microsoft.PowerShell"), ()):
        config = load_config_text(module(*lines) + servers(proxy), Path("."))
        assert config.servers[0].endpoint_proxy == "http://proxy.contoso.com:8080"



def test_the_keytab_is_read_once_at_load_and_its_digest_is_of_the_bytes_checked(tmp_path):
    """Loading a keytab module opened the keytab twice: once for its bounded size check (keytab_problem), then again
    for its digest (a rotated keytab makes a reload a change), so a file swapped in between was hashed unchecked.
    Counted with Python's audit hook, in a process of its own (an audit hook cannot be removed); MIT's own read
    of the keys is not Python's and is not counted."""
    pytest.importorskip("krb5", reason="the kerberos extra")
    keytab = write_keytab(tmp_path / "svc.keytab", "svc@CONTOSO.COM")
    text = module(KERBEROS, "username: svc@CONTOSO.COM", "keytab_file: svc.keytab", username=False, password=False)
    program = textwrap.dedent(f"""\
        import sys
        from pathlib import Path
        from exporter.config import load_config_text
        opened = []
        sys.addaudithook(lambda event, args: opened.append(args[0])
                         if event == "open" and str(args[0]) == {str(keytab)!r} else None)
        config = load_config_text({(text + ONE_SERVER)!r}, Path({str(tmp_path)!r}))
        print(len(opened), config.modules["default"].keytab_digest)
        """)
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", hashlib.sha256(keytab.read_bytes()).hexdigest()]


def test_discovery_is_refused_with_an_organization_module_that_cannot_poll_a_server():
    """Discovered servers are polled with the organization's module. README's recipe for Exchange's endpoint
    (`organization: {module: exchange}`, `configuration_name: Microsoft.Exchange`) with `discover_servers: true`
    passed check-config, and every discovered server then failed configuration_not_found (Exchange's endpoint runs
    cmdlets only): a whole fleet unmonitored, after check-config said OK."""
    exchange = module("protocol: psrp", "configuration_name: Microsoft.Exchange", "scheme: http", "port: 80",
                      name="exchange").replace("modules:\n", "")
    config = MODULE + exchange + ONE_SERVER
    with pytest.raises(ConfigError, match="runs cmdlets only") as caught:
        load_config_text(config + "organization: {server: ex01.contoso.com, module: exchange, discover_servers: true}\n",
                         Path())
    assert caught.value.path == "organization.discover_servers"
    assert load_config_text(config + "organization: {server: ex01.contoso.com, module: exchange}\n", Path()).organization
    assert load_config_text(config + "organization: {server: ex01.contoso.com, discover_servers: true}\n",
                            Path()).organization.discover_servers


# ---------------------------------------------------------------- secret files every user may read


def _secret_files_config(tmp_path: Path, password_mode: int, keytab_mode: int):
    (tmp_path / "pw").write_text("a-secret\n")
    (tmp_path / "pw").chmod(password_mode)
    write_keytab(tmp_path / "svc.keytab", "svc@CONTOSO.COM").chmod(keytab_mode)
    return load_config_text(textwrap.dedent("""\
        modules:
          default: {username: u, password_file: pw}
          kerb: {transport: kerberos, username: svc@CONTOSO.COM, keytab_file: svc.keytab}
        servers: [EX01, {name: EX02, module: kerb}]
        """), tmp_path)


@pytest.mark.skipif(os.name == "nt", reason="POSIX mode bits")
def test_a_secret_file_every_user_may_read_or_write_is_named_with_its_mode(tmp_path):
    """The exporter read a password file or keytab of mode 0644 or 0666 without a word: on a shared host, every
    user could take the monitoring account (a shell on every Exchange server). Now each such file is named, with its
    key, its mode and the fix, in the warnings `run` logs at start and reload and `check-config` prints."""
    warnings = exposed_secret_files(_secret_files_config(tmp_path, 0o644, 0o666))
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith(f"modules.default.password_file: {str(tmp_path / 'pw')!r} can be read by every user")
    assert "(mode 0644)" in warnings[0] and "chmod o-rwx" in warnings[0]
    assert warnings[1].startswith("modules.kerb.keytab_file: ") and "read and written" in warnings[1]
    assert "(mode 0666)" in warnings[1]
    assert "a-secret" not in " ".join(warnings)


@pytest.mark.skipif(os.name == "nt", reason="POSIX mode bits")
def test_secret_files_for_the_owner_and_its_group_raise_no_warning(tmp_path):
    """0600 (a systemd credential is 0400) and 0440 (a Kubernetes Secret volume with the pod's fsGroup) are right."""
    assert exposed_secret_files(_secret_files_config(tmp_path, 0o600, 0o440)) == []
