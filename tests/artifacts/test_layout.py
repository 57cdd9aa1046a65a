"""The test tree mirrors the code (docs/design.md "Where the tests are"): every test module sits in the folder
for its kind, and every folder is a package, so the shared helpers in tests/ import the same way everywhere."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
KINDS = {
    "unit": "one exporter module each: unit/test_<module>.py",
    "system": "the exporter as a whole against simulated fleets",
    "artifacts": "dashboards, rules, deploy, Dockerfile, examples, repository rules",
    "simulator": "the simulator itself",
}


def test_every_test_module_is_in_the_folder_for_its_kind():
    misplaced = [str(path.relative_to(TESTS)) for path in sorted(TESTS.rglob("test_*.py"))
                 if path.relative_to(TESTS).parts[0] not in KINDS]
    assert misplaced == [], "move with git mv into " + "; ".join(f"tests/{k}/ ({v})" for k, v in KINDS.items())


def test_every_test_folder_is_a_package():
    """Without __init__.py, `from ..conftest import ...` fails and pytest may confuse same-named modules."""
    folders = {path.parent for path in TESTS.rglob("test_*.py")}
    assert sorted(str(f.relative_to(TESTS)) for f in folders if not (f / "__init__.py").exists()) == []
    assert {f.name for f in folders} == set(KINDS)
