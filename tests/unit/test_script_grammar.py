"""Every script the exporter can send parses under a PowerShell grammar that no one here wrote.

The simulator recognises our scripts by their marker line and never runs them, so a stray brace or an
unterminated string would pass every other test and fail on every real server. tree-sitter-powershell
(from PyPI) is an independent grammar: each variant that `exporter.scripts` can build must parse with zero
ERROR and zero MISSING nodes. Variants are enumerated from the parameter dataclasses, so a parameter added
later is covered without touching this file.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import tree_sitter_powershell
from tree_sitter import Language, Node, Parser

from exporter import scripts

PARSER = Parser(Language(tree_sitter_powershell.language()))
SAMPLE_PROXY = "http://proxy.contoso.com:8080/"


def _choices(field: dataclasses.Field) -> tuple:
    """The values of one parameter that change the script's text in kind: both flags, empty and set strings.
    Integers only change digits, so one value is enough. (`scripts` uses postponed annotations: types are names.)"""
    if field.type == "bool":
        return (False, True)
    if field.type == "str":
        return ("", SAMPLE_PROXY)
    return (7,)


def _combinations(parameters_class) -> list:
    fields = dataclasses.fields(parameters_class)
    return [parameters_class(**dict(zip((f.name for f in fields), values)))
            for values in itertools.product(*(_choices(f) for f in fields))]


def _label(params) -> str:
    """The parameters that change the text, e.g. `check_endpoint=True,proxy=set`."""
    shown = [(f.name, getattr(params, f.name)) for f in dataclasses.fields(params) if f.type in ("bool", "str")]
    return ",".join(f"{name}={value if isinstance(value, bool) else 'set' if value else 'empty'}"
                    for name, value in shown) or "defaults"


def variants() -> dict[str, str]:
    found = {"organization": scripts.organization_script()}
    for params in _combinations(scripts.ServerScriptParameters):
        found[f"server {_label(params)}"] = scripts.server_script(params)
    for params in _combinations(scripts.DiagnoseScriptParameters):
        found[f"diagnose {_label(params)}"] = scripts.diagnose_script(params)
    return found


def syntax_problems(script: str) -> list[str]:
    """Every ERROR and MISSING node, with its line and the text around it."""
    source = script.encode("utf-8")
    problems: list[str] = []

    def walk(node: Node) -> None:
        if node.type == "ERROR" or node.is_missing:
            kind = f"MISSING {node.type}" if node.is_missing else "ERROR"
            start = max(0, node.start_byte - 30)
            context = source[start : node.end_byte + 30].decode("utf-8", "replace")
            problems.append(f"{kind} at line {node.start_point[0] + 1}, column {node.start_point[1] + 1}: {context!r}")
        for child in node.children:
            walk(child)

    walk(PARSER.parse(source).root_node)
    return problems


def test_every_variant_is_enumerated():
    names = list(variants())
    assert sum(n.startswith("server ") for n in names) >= 4  # endpoint check on/off x proxy set/unset
    assert "organization" in names
    assert any(n.startswith("diagnose ") for n in names)


@pytest.mark.parametrize("name", list(variants()), ids=str)
def test_script_parses_without_errors(name):
    assert syntax_problems(variants()[name]) == []


@pytest.mark.parametrize(
    "breakage",
    [
        pytest.param(lambda s: s.replace("}", "", 1), id="a missing closing brace"),
        pytest.param(lambda s: s.replace("'", "", 1), id="an unterminated string"),
        pytest.param(lambda s: s.replace("catch{", "catch(", 1), id="a catch without its block"),
    ],
)
def test_a_broken_script_is_caught(breakage):
    """The check can fail: each damage to a real script yields an ERROR or MISSING node."""
    for name, script in variants().items():
        broken = breakage(script)
        assert broken != script, name
        assert syntax_problems(broken), f"{name}: the grammar accepted a broken script"
