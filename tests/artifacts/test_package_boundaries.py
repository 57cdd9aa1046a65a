"""The exporter and the simulator never import each other.

The simulator is an independent oracle: if it imported the exporter's parser or catalog, a bug there would
agree with itself. The exporter is the product: it must run (and ship in the image) without the simulator,
its asyncio server or its certificate authority. Each rule is checked on the source (every import statement,
relative ones resolved) and on a real interpreter (what importing the package actually loads). Inside the
exporter, its modules reach each other in one style: relatively.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(package: str) -> dict[str, set[str]]:
    """For every .py file of a top-level package: the absolute names it imports (relative imports resolved;
    one that climbs above the package resolves to its level in dots, which no package name starts with)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)  # [package, ..., module or "__init__"]
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module or "")
            elif isinstance(node, ast.ImportFrom):
                base = parts[:len(parts) - node.level] if node.level < len(parts) else []
                names.add(".".join(base + ([node.module] if node.module else [])) if base else "." * node.level)
        found[str(path.relative_to(ROOT))] = names
    return found


def offenders(package: str, forbidden: str) -> list[str]:
    return [f"{path}: {name}" for path, names in imported_modules(package).items() for name in sorted(names)
            if name == forbidden or name.startswith(forbidden + ".") or name.startswith(".")]


def loaded_after_importing(code: str) -> set[str]:
    """sys.modules of a fresh interpreter after running `code` (the test process has both packages loaded)."""
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout))


EVERY_MODULE_OF = """
import importlib, pkgutil, {package}
for info in pkgutil.walk_packages({package}.__path__, "{package}."):
    if not info.name.endswith(".__main__"):  # runs the program
        importlib.import_module(info.name)
"""


def test_the_simulator_imports_nothing_from_the_exporter():
    assert offenders("simulator", "exporter") == []
    assert len(imported_modules("simulator")) >= 10  # the walk really saw the simulator


def test_the_exporter_imports_nothing_from_the_simulator():
    assert offenders("exporter", "simulator") == []
    assert len(imported_modules("exporter")) >= 15  # the walk really saw the exporter


def absolute_self_imports(package: str) -> list[str]:
    """Where a module of `package` names the package itself in an import (`from exporter.model import ...`)."""
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        if path.name == "__main__.py":  # `python -m exporter` runs it as a script: it names the package
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            found += [f"{path.relative_to(ROOT)}:{node.lineno}: {name}" for name in names
                      if name == package or name.startswith(package + ".")]
    return found


def test_the_exporters_modules_import_each_other_relatively():
    """One import style inside the package (the architecture review's "mixed import style"): a module reaches
    another one of the package relatively (`from .model import ...`)."""
    assert absolute_self_imports("exporter") == []


def test_the_source_check_sees_absolute_and_relative_imports(tmp_path, monkeypatch):
    """The rules above can fail: a package that reaches into the other one, four ways, is caught four times."""
    package = tmp_path / "exporter"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from . import sub\n")
    (package / "a.py").write_text("import simulator.cli\nfrom simulator import demo\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("from ...simulator import cli\nfrom ..a import x\n")
    (package / "c.py").write_text("import simulator\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert offenders("exporter", "simulator") == [
        "exporter/a.py: simulator", "exporter/a.py: simulator.cli", "exporter/c.py: simulator",
        "exporter/sub/b.py: ...",
    ]
    assert imported_modules("exporter")["exporter/sub/b.py"] == {"...", "exporter.a"}
    assert imported_modules("exporter")["exporter/__init__.py"] == {"exporter"}


def test_the_command_line_loads_no_simulator_and_none_of_its_machinery():
    """`import exporter.cli` (what every `exchange-eems-exporter` command starts with) loads no simulator
    module, and not the simulator's asyncio server or its NTLM acceptor."""
    loaded = loaded_after_importing("import exporter.cli")
    assert "exporter.cli" in loaded
    assert sorted(m for m in loaded if m.split(".")[0] in ("simulator", "spnego", "asyncio")) == []


@pytest.mark.parametrize(("package", "other"), [("exporter", "simulator"), ("simulator", "exporter")])
def test_loading_every_module_of_one_package_loads_nothing_of_the_other(package, other):
    loaded = loaded_after_importing(EVERY_MODULE_OF.format(package=package))
    assert f"{package}.cli" in loaded
    assert sorted(m for m in loaded if m == other or m.startswith(other + ".")) == []
