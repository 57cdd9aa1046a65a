"""Every third-party module the exporter imports is a declared dependency, and the image installs the
hashed lock of exactly those (issue 19, item 5).

An undeclared import works here, where the test extra happens to install it, and breaks a user's
install of the exporter (requests and urllib3 were imported and not declared)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"


def imported_top_level(package: Path) -> dict[str, str]:
    """Top-level module name -> the first file importing it, for every absolute import under `package`."""
    found: dict[str, str] = {}
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(package)))
    return found


def third_party(package: Path) -> dict[str, str]:
    return {name: where for name, where in imported_top_level(package).items()
            if name not in sys.stdlib_module_names and name not in ("exporter", "__future__")}


OPTIONAL = ("kerberos",)  # extras whose modules the exporter imports only when a module uses them


def declared(*extras: str) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = [*project["dependencies"], *(r for extra in extras for r in project["optional-dependencies"][extra])]
    return {canonicalize_name(Requirement(r).name) for r in texts}


def distributions(module: str) -> set[str]:
    return {canonicalize_name(d) for d in importlib.metadata.packages_distributions().get(module, [])}


def locked() -> dict[str, str]:
    """Name -> pinned version of every requirement in the lock."""
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==([^\s\\;]+)", LOCK.read_text(), flags=re.M)
    return {canonicalize_name(name): version for name, version in pins}


def test_every_third_party_module_the_exporter_imports_is_declared():
    undeclared = {module: where for module, where in third_party(ROOT / "exporter").items()
                  if not distributions(module) & declared(*OPTIONAL)}
    assert undeclared == {}, f"imported but not in [project] dependencies or an optional extra: {undeclared}"


def test_the_exporter_runs_without_its_optional_extras():
    """A user without the kerberos extra: every exporter module imports, and the configuration check says
    what is missing for a kerberos module instead of a traceback."""
    code = ("import sys, pkgutil, importlib\n"
            "sys.modules.update(krb5=None, gssapi=None)\n"
            "import exporter\n"
            "for module in pkgutil.walk_packages(exporter.__path__, 'exporter.'):\n"
            "    if module.name not in ('exporter.__main__', 'exporter.winrm.tickets', 'exporter.winrm.kerberos'):\n"
            "        importlib.import_module(module.name)\n"
            "from exporter.config import ConfigError, load_config_text\n"
            "try:\n"
            "    load_config_text('modules: {k: {transport: kerberos, username: a@B.C, password_env: HOME}}\\n'\n"
            "                     'servers: [ex01]\\n', __import__('pathlib').Path('.'))\n"
            "except ConfigError as error:\n"
            "    print(error)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "needs the exporter's kerberos extra" in result.stdout, result.stdout


def test_the_check_finds_an_undeclared_import(tmp_path):
    """The test above can fail: a module importing requests (no longer a dependency) is caught."""
    (tmp_path / "bad.py").write_text("import requests\nfrom urllib3 import util\nimport json\n")
    found = third_party(tmp_path)
    assert set(found) == {"requests", "urllib3"}
    assert all(not distributions(module) & declared() for module in found)


def test_every_declared_dependency_is_used():
    used = {d for module in third_party(ROOT / "exporter") for d in distributions(module)}
    assert declared() - used == set(), "declared but never imported: drop it or say why"


def test_the_lock_pins_every_dependency_with_hashes_within_the_declared_bounds():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = locked()
    for text in project["dependencies"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in requirements.lock: run `make lock`"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside {requirement.specifier}"
    entries = re.split(r"\n(?=[A-Za-z0-9_.-]+==)", LOCK.read_text().split("\n", 1)[1])
    for entry in entries:
        if "==" in entry.split("\n", 1)[0]:
            assert "--hash=sha256:" in entry, f"no hash for {entry.splitlines()[0]}"


def test_the_lock_holds_no_simulator_or_test_tools():
    assert not {"pywinrm", "pytest", "hypothesis", "pypsrp", "requests"} & set(locked())


def test_the_kerberos_lock_pins_the_kerberos_extra_within_its_bounds():
    """The image builds the kerberos extra from requirements-kerberos.lock (see the Dockerfile): what the extra
    names there must be pinned within the extra's bounds, and python-gssapi with it (pyspnego's GSSAPI backend)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    text = (ROOT / "requirements-kerberos.lock").read_text()
    pins = {canonicalize_name(n): v for n, v in re.findall(r"^([A-Za-z0-9_.-]+)==([^\s\\;]+)", text, flags=re.M)}
    assert {"gssapi", "krb5"} <= set(pins), "run `make lock`"
    for requirement in map(Requirement, project["optional-dependencies"]["kerberos"]):
        name = canonicalize_name(requirement.name)
        if name in pins:
            assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside {requirement.specifier}"
