"""The repository stands alone: a user's clone has nothing beside it, so no file may lean on a path outside it.

The developers' machines have a research folder next to the clone; its facts are copied into `docs/reference/`
with their public sources (`docs/sources.md`). This test keeps it that way: a file that names the folder beside
the clone, or an absolute path of a developer's workspace, works on our machines and breaks in every user's.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Spelled in pieces so that this file does not match itself.
OUTSIDE = re.compile("|".join([r"\.\./" + "shared", r"(?<![\w.])/" + "work/"]))


def _tracked_files() -> list[Path]:
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True).stdout
    return [REPO / name for name in listed.decode().split("\0") if name]


def _lines_matching(pattern: re.Pattern) -> list[str]:
    """Every line of a tracked file that `pattern` finds, as file:line: text."""
    found = []
    for path in _tracked_files():
        if not path.is_file():
            continue
        text = path.read_bytes().decode("utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            if pattern.search(line):
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:120]}")
    return found


def test_no_file_names_a_path_outside_the_repository():
    offenders = _lines_matching(OUTSIDE)
    assert not offenders, "paths outside the repository:\n" + "\n".join(offenders)


def test_the_pattern_finds_what_it_must():
    assert OUTSIDE.search("see ../" + "shared/reference/eems-facts.md")
    assert OUTSIDE.search("Sources: /" + "work/shared/reference")
    assert not OUTSIDE.search("docs/reference/eems-facts.md and https://example.com/work/x")


def test_every_source_file_that_docs_sources_names_exists():
    index = (REPO / "docs" / "sources.md").read_text(encoding="utf-8")
    named = re.findall(r"\]\((reference/[^)]+)\)", index)
    assert len(named) >= 5
    for relative in named:
        assert (REPO / "docs" / relative).is_file(), relative


# A `pip install` of the exporter by its name, with or without an extra; spelled in pieces like OUTSIDE.
BY_NAME = re.compile(r"pip3? install\b[^\n|`]*?(?<![\w./-])['\"]?" + "exchange-eems-"
                     + r"exporter\b(?![\w.-]*\.(?:whl|tar\.gz))")


def test_no_file_installs_the_exporter_by_its_name():
    """The exporter is not published on PyPI: a step that installs it by its name would fetch whatever someone else
    published under that name (dependency confusion). Install steps take a clone's folder or a built wheel."""
    offenders = _lines_matching(BY_NAME)
    assert not offenders, "installs the exporter by its name:\n" + "\n".join(offenders)


def test_the_install_pattern_finds_what_it_must():
    name = "exchange-eems-" + "exporter"
    assert BY_NAME.search(f"/opt/venv/bin/pip install {name}")
    assert BY_NAME.search(f"pip install '{name}[kerberos]'")
    assert not BY_NAME.search("pip install '.[kerberos]' in a clone")
    assert not BY_NAME.search(f"pip install --no-deps dist/{name.replace('-', '_')}-0.1.0-py3-none-any.whl")
    assert not BY_NAME.search(f"pip install --no-deps ../..   # the exporter")
