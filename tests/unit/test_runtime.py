"""What is current (exporter/runtime.py). Which servers one exporter instance polls: the configured servers plus
the discovered ones, cut to its shard, and the only names `/probe` may reach. A frozen Runtime swapped whole by a
reload or a discovery, nothing swapped when the file loads to what is running, and discovered servers carried over
a reload while the organization section stays the same. Configurations are loaded the way the exporter loads them;
discovered servers are what the organization collector hands over."""

from __future__ import annotations

import dataclasses
import os
import textwrap
from pathlib import Path

import pytest

from exporter import cli
from exporter.catalog import Catalog
from exporter.config import load_config, load_config_text
from exporter.model import OrgServerInfo
from exporter.runtime import SafeRuntime, Targets

from ..conftest import PASSWORD_ENV, minimal_config

ORGANIZATION = """
    organization:
      server: ex01.contoso.com
      discover_servers: true
    """


def config(extra: str = "", servers: str = "  - ex01.contoso.com\n"):
    base = minimal_config(extra).replace("servers:\n  - ex01.contoso.com\n", "servers:\n" + servers)
    return load_config_text(base, Path("."))


def discovered(name: str, fqdn: str | None = None, proxy: str | None = None) -> OrgServerInfo:
    """A server as Get-ExchangeServer lists it; the fields Targets does not read stay None."""
    unread = {field.name: None for field in dataclasses.fields(OrgServerInfo)}
    return OrgServerInfo(**{**unread, "name": name, "fqdn": fqdn, "internet_web_proxy": proxy,
                            "mitigations_applied": (), "mitigations_blocked": ()})


def test_a_configured_server_takes_the_modules_scheme_and_port_unless_it_names_its_own():
    targets = Targets(config(servers="  - ex01.contoso.com\n  - {name: EX02, address: '::1', port: 5985}\n"))
    first, second = targets.get("ex01.contoso.com"), targets.get("EX02")
    assert (first.address, first.port, first.scheme, first.discovered) == ("ex01.contoso.com", 5986, "https", False)
    assert first.endpoint == "https://ex01.contoso.com:5986/wsman"
    assert second.endpoint == "https://[::1]:5985/wsman"


def _organization_config(servers: str, organization: str):
    return load_config_text(textwrap.dedent(f"""
        modules:
          default:
            username: 'EXCH\\svc_monitor'
            password_env: {PASSWORD_ENV}
          exchange:
            username: 'EXCH\\svc_monitor'
            password_env: {PASSWORD_ENV}
            protocol: psrp
            configuration_name: Microsoft.Exchange
            scheme: http
            port: 80
        servers:
        """) + servers + textwrap.dedent(organization), Path("."))


def test_the_organization_collector_reaches_a_listed_server_with_its_own_modules_scheme_and_port():
    """README's recipe for Exchange's endpoint: the servers polled over WinRS (https:5986), the organization
    collector at Exchange's /PowerShell, which IIS serves at http://SERVER/PowerShell/ (port 80). The organization's
    server is one of the listed servers, and its target took the scheme and port of that server's module: the
    organization collector asked https://ex01.contoso.com:5986/PowerShell, the WinRM listener, where there is no
    /PowerShell (a 404, http_error), whatever port the organization's module gave."""
    organization = "organization: {name: Contoso, server: ex01.contoso.com, module: exchange}\n"
    targets = Targets(_organization_config("  - ex01.contoso.com\n", organization))
    target = targets.for_organization()
    assert (target.name, target.module, target.scheme, target.port) == ("ex01.contoso.com", "exchange", "http", 80)
    assert targets.get("ex01.contoso.com").endpoint == "https://ex01.contoso.com:5986/wsman"  # its own polls: as before
    # A port named on the server entry is where that server is reached, by either module (the simulator's demos).
    targets = Targets(_organization_config("  - {name: ex01.contoso.com, port: 15985}\n", organization))
    assert (targets.for_organization().scheme, targets.for_organization().port) == ("http", 15985)
    # The server's own module: its target as it is.
    own = "organization: {name: Contoso, server: ex01.contoso.com}\n"
    targets = Targets(_organization_config("  - ex01.contoso.com\n", own))
    assert targets.for_organization() is targets.get("ex01.contoso.com")


def test_lookup_ignores_case_and_knows_no_other_name():
    targets = Targets(config())
    assert targets.get("EX01.CONTOSO.COM").name == "ex01.contoso.com"
    assert targets.get("ex02.contoso.com") is None and targets.get("") is None


def test_discovered_servers_join_but_never_replace_a_configured_one():
    targets = Targets(config(ORGANIZATION), (discovered("EX01.contoso.com", fqdn="elsewhere.example"),
                                             discovered("EX07", fqdn="ex07.contoso.com",
                                                        proxy="http://proxy.contoso.com:8080/")))
    assert targets.get("ex01.contoso.com").address == "ex01.contoso.com"  # the configuration wins
    found = targets.get("ex07")
    # its InternetWebProxy is what the organization said of it (source internet_web_proxy), not a configured proxy
    assert (found.address, found.discovered, found.endpoint_proxy) == ("ex07.contoso.com", True, "")
    assert [t.name for t in targets.polled] == ["ex01.contoso.com", "EX07"]


def test_a_discovery_is_a_new_list_that_leaves_the_old_one_alone():
    before = Targets(config(ORGANIZATION), (discovered("EX07"),))
    after = Targets(config(ORGANIZATION), (discovered("EX08"),))
    assert after.get("EX07") is None and after.get("EX08").address == "EX08"  # no FQDN: reached by name
    assert before.get("EX07") is not None and before.get("EX08") is None


def test_discovery_stops_at_the_server_limit():
    targets = Targets(config(ORGANIZATION + "limits: {max_servers: 3}\n"),
                      tuple(discovered(f"EX{i:02d}") for i in range(10)))
    assert len(targets.polled) == 3


def test_without_an_organization_section_nothing_is_discovered():
    targets = Targets(config(), (discovered("EX07"),))
    assert targets.get("EX07") is None and len(targets.polled) == 1 and targets.discovered_from == ()


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_every_server_is_on_exactly_one_shard(count):
    servers = "".join(f"  - ex{i:03d}.contoso.com\n" for i in range(100))
    base = minimal_config().split("servers:")[0] + "servers:\n" + servers
    owners: dict[str, list[int]] = {}
    for index in range(count):
        config = load_config_text(base + f"shard: {index}/{count}\n", Path("."))
        for target in Targets(config).polled:
            owners.setdefault(target.name, []).append(index)
    assert len(owners) == 100
    assert all(len(shards) == 1 for shards in owners.values())
    assert len({s[0] for s in owners.values()}) == count, "a shard got nothing out of 100 servers"


# ---------------------------------------------------------------- reload and discovery


DISCOVERING = "organization: {server: ex01.contoso.com, discover_servers: true}\n"


def write(path, password_file, *, extra: str = "") -> None:
    path.write_text(textwrap.dedent(f"""\
        modules:
          default:
            username: 'EXCH\\svc_monitor'
            password_file: '{password_file}'
        servers: [ex01.contoso.com]
        """) + extra)


def runtime_for(tmp_path, extra: str = ""):
    path, password = tmp_path / "exporter.yml", tmp_path / "password"
    password.write_text("first")
    write(path, password, extra=extra)
    return SafeRuntime(load_config(path), Catalog.load()), path, password


def test_a_file_that_loads_to_what_is_running_swaps_nothing(tmp_path):
    runtime, path, _ = runtime_for(tmp_path)
    before = runtime.current()
    path.write_text(path.read_text() + "# a comment\n")  # another checksum, the same configuration
    assert runtime.reload() == (True, "configuration unchanged")
    assert runtime.current() is before and runtime.last_reload_successful


def test_a_changed_password_file_under_an_unchanged_file_is_a_change(tmp_path):
    """blackbox's checksum covers the file only; a rotated password file must take effect on reload."""
    runtime, _, password = runtime_for(tmp_path)
    password.write_text("second")
    assert runtime.reload() == (True, "configuration reloaded")
    assert runtime.current().config.modules["default"].password.reveal() == "second"


def test_discovered_servers_outlive_a_reload_that_keeps_the_organization_section(tmp_path):
    runtime, path, password = runtime_for(tmp_path, DISCOVERING)
    organization = runtime.current().config.organization
    assert runtime.discovered(organization, (discovered("EX07"),))
    assert not runtime.discovered(organization, (discovered("EX07"),))  # the same list again: nothing to do
    write(path, password, extra=DISCOVERING + "poll: {timeout: 20s}\n")
    assert runtime.reload()[0]
    assert runtime.current().targets.get("EX07").discovered

    write(path, password, extra=DISCOVERING.replace("ex01", "ex02"))
    assert runtime.reload()[0]
    assert runtime.current().targets.get("EX07") is None  # another source: its list is not this one's
    assert not runtime.discovered(organization, (discovered("EX07"),))  # a poll under the old section ended late
    assert runtime.current().targets.get("EX07") is None


def _fleet_config(tmp_path: Path, count: int = 12) -> Path:
    servers = "\n".join(f"  - ex{i:02d}.contoso.com" for i in range(count))
    path = tmp_path / "exporter.yml"
    path.write_text(textwrap.dedent(f"""\
        modules:
          default:
            username: 'EXCH\\svc_monitor'
            password_env: {PASSWORD_ENV}
        servers:
        """) + servers + "\n", encoding="utf-8")
    return path


def test_a_reload_keeps_the_shard_given_on_the_command_line(tmp_path):
    """`run --shard 1/3`: a SIGHUP or POST /-/reload of the unchanged file must keep this replica's shard; it
    fell back to the file's (none: 0/1), so every replica polled the whole fleet after a reload."""
    path = _fleet_config(tmp_path)
    config, catalog = cli._load(path, "1/3")  # what cmd_run does with --shard 1/3
    runtime = SafeRuntime(config, catalog)
    before = {t.name for t in runtime.current().targets.polled}
    assert config.shard == (1, 3) and 0 < len(before) < 12

    ok, _ = runtime.reload()

    assert ok
    assert runtime.current().config.shard == (1, 3)
    assert {t.name for t in runtime.current().targets.polled} == before


def test_an_ipv6_address_in_brackets_is_one_endpoint():
    """`address: '[fd00::3]'`, as URLs write it, passed the check (addresses.is_host strips brackets) and the
    endpoint bracketed it again: http://[[fd00::3]]:5986/wsman, no URL, so every poll of it failed."""
    text = minimal_config().replace("  - ex01.contoso.com\n", "  - {name: ex03, address: '[fd00::3]'}\n")
    assert Targets(load_config_text(text, Path("."))).get("ex03").endpoint == "https://[fd00::3]:5986/wsman"


@pytest.mark.parametrize("text, phrase", [
    ("? [a, b]\n: 1\n", "found unhashable key"),
    ('"servers\\n\\e[2J": 1\n', "servers\\n\\x1b[2J: unknown key"),
], ids=["complex key", "control characters in a key"])
def test_a_reload_with_a_hostile_file_keeps_the_running_configuration_and_names_the_problem(tmp_path, text, phrase):
    """Before: a complex key made the reload fail as "unexpected TypeError", which names neither the line nor the
    problem; a key's newline split the log line and the POST /-/reload answer in two."""
    runtime, path, _ = runtime_for(tmp_path)
    before = runtime.current()
    path.write_text(text)
    ok, message = runtime.reload()
    assert not ok and not runtime.last_reload_successful and runtime.current() is before
    assert phrase in message and "\n" not in message and "\x1b" not in message, message


def write_module(path, password, *lines: str, servers: str = "[ex01.contoso.com]", extra: str = "") -> None:
    body = "".join(f"    {line}\n" for line in lines)
    path.write_text(f"modules:\n  default:\n    username: 'EXCH\\svc_monitor'\n    password_file: '{password}'\n"
                    f"{body}servers: {servers}\n{extra}")


# (id, the module's lines before, after, phrase of the refusal): each would poll with less protection than the
# running configuration; such a reload was taken (with a warning at best), so whoever can write the file, or a
# file cut short before its `ca_file:` line, lowered what protects the credential without a restart
LOWERED = [
    ("certificate validation off", (), ("insecure_skip_verify: true",), "certificate validation is OFF"),
    ("https to http", (), ("scheme: http",), "from https to plain http"),
    ("ca_file dropped", ("ca_file: ca.pem",), (), "drops ca_file"),
    ("basic over http allowed", ("transport: basic",), ("transport: basic", "scheme: http",
                                                         "allow_basic_over_http: true"), "plain http"),
    ("a reusable credential", (), ("transport: credssp",), "the password (CredSSP delegates it)"),
]


@pytest.mark.parametrize(("before", "after", "phrase"), [case[1:] for case in LOWERED],
                         ids=[case[0] for case in LOWERED])
def test_a_reload_never_lowers_what_protects_the_credential(tmp_path, caplog, before, after, phrase):
    """As the web config's (docs/security.md): the running configuration stays, the reload is reported failed,
    and a restart applies the file."""
    from .test_config import write_ca

    write_ca(tmp_path / "ca.pem")
    path, password = tmp_path / "exporter.yml", tmp_path / "password"
    password.write_text("first")
    write_module(path, password, *before)
    runtime = SafeRuntime(load_config(path), Catalog.load())
    running = runtime.current()
    write_module(path, password, *after)
    with caplog.at_level("ERROR"):
        ok, message = runtime.reload()
    assert not ok and not runtime.last_reload_successful and runtime.current() is running
    assert phrase in message and "restart the exporter" in message, message
    assert any(r.levelname == "ERROR" and phrase in r.getMessage() for r in caplog.records)
    load_config(path)  # the file itself is valid: a restart takes it
    write_module(path, password, *before)  # the operator puts it back: the next reload succeeds
    assert runtime.reload() == (True, "configuration unchanged") and runtime.last_reload_successful


@pytest.mark.skipif(os.name == "nt", reason="POSIX mode bits")
def test_a_reload_warns_of_a_password_file_every_user_may_read(tmp_path, caplog):
    """As at start (exporter/cli.py): a reload that applies a configuration logs its secret files that every user of
    the host may read, and takes the configuration (a warning, not a refusal)."""
    path, password = tmp_path / "exporter.yml", tmp_path / "password"
    password.write_text("first")
    password.chmod(0o600)
    write_module(path, password)
    runtime = SafeRuntime(load_config(path), Catalog.load())
    password.chmod(0o644)
    write_module(path, password, servers="[ex01.contoso.com, ex02.contoso.com]")
    with caplog.at_level("WARNING"):
        assert runtime.reload() == (True, "configuration reloaded")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(m.startswith("modules.default.password_file: ") and "(mode 0644)" in m for m in warnings), warnings


def test_a_reload_may_not_move_a_server_to_a_weaker_module_nor_add_an_insecure_one(tmp_path):
    runtime, path, password = runtime_for(tmp_path)
    running = runtime.current()
    weak = "modules:\n  default:\n    username: u\n    password_file: '%s'\n  weak:\n    username: u\n" \
           "    password_file: '%s'\n    %s\n"
    path.write_text(weak % (password, password, "insecure_skip_verify: true") + "servers: [ex01.contoso.com]\n")
    ok, message = runtime.reload()  # a new module that turns validation off, even before a server uses it
    assert not ok and "module weak: WinRM server certificate validation is OFF" in message
    path.write_text(weak % (password, password, "transport: basic")
                    + "servers: [{name: ex01.contoso.com, module: weak}]\n")
    ok, message = runtime.reload()
    assert not ok and "server ex01.contoso.com" in message and "Basic authentication sends it" in message
    assert runtime.current() is running


def test_a_reload_may_raise_protection_and_change_what_does_not_lower_it(tmp_path):
    from .test_config import write_ca

    write_ca(tmp_path / "ca.pem")
    path, password = tmp_path / "exporter.yml", tmp_path / "password"
    password.write_text("first")
    write_module(path, password, "insecure_skip_verify: true")
    runtime = SafeRuntime(load_config(path), Catalog.load())
    write_module(path, password, "ca_file: ca.pem")  # validation on again, against the internal CA
    assert runtime.reload() == (True, "configuration reloaded")
    write_ca(tmp_path / "other-ca.pem")
    write_module(path, password, "ca_file: other-ca.pem", "port: 15986", servers="[ex01.contoso.com, ex02]")
    assert runtime.reload() == (True, "configuration reloaded")  # a rotated CA, another port, another server
    # from one transport that hands the password over to another (CredSSP delegates it, Basic sends it): no lower
    write_module(path, password, "ca_file: other-ca.pem", "transport: credssp", servers="[ex01.contoso.com, ex02]")
    runtime = SafeRuntime(load_config(path), Catalog.load())  # started with CredSSP
    write_module(path, password, "ca_file: other-ca.pem", "transport: basic", servers="[ex01.contoso.com, ex02]")
    assert runtime.reload() == (True, "configuration reloaded")
