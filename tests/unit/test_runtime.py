"""What is current (exporter/runtime.py): a frozen Runtime swapped whole by a reload or a discovery, nothing
swapped when the file loads to what is running, and discovered servers carried over a reload while the
organization section stays the same."""

from __future__ import annotations

import dataclasses
import textwrap

from exporter.catalog import Catalog
from exporter.config import load_config
from exporter.model import OrgServerInfo
from exporter.runtime import SafeRuntime

ORGANIZATION = "organization: {server: ex01.contoso.com, discover_servers: true}\n"


def write(path, password_file, *, extra: str = "") -> None:
    path.write_text(textwrap.dedent(f"""\
        modules:
          default:
            username: 'EXCH\\svc_monitor'
            password_file: '{password_file}'
        servers: [ex01.contoso.com]
        """) + extra)


def discovered(name: str) -> OrgServerInfo:
    unread = {field.name: None for field in dataclasses.fields(OrgServerInfo)}
    return OrgServerInfo(**{**unread, "name": name, "mitigations_applied": (), "mitigations_blocked": ()})


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
    runtime, path, password = runtime_for(tmp_path, ORGANIZATION)
    organization = runtime.current().config.organization
    assert runtime.discovered(organization, (discovered("EX07"),))
    assert not runtime.discovered(organization, (discovered("EX07"),))  # the same list again: nothing to do
    write(path, password, extra=ORGANIZATION + "poll: {timeout: 20s}\n")
    assert runtime.reload()[0]
    assert runtime.current().targets.get("EX07").discovered

    write(path, password, extra=ORGANIZATION.replace("ex01", "ex02"))
    assert runtime.reload()[0]
    assert runtime.current().targets.get("EX07") is None  # another source: its list is not this one's
    assert not runtime.discovered(organization, (discovered("EX07"),))  # a poll under the old section ended late
    assert runtime.current().targets.get("EX07") is None
