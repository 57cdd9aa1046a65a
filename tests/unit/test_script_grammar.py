"""Every script the exporter can send parses under a PowerShell grammar that no one here wrote.

The simulator recognises our scripts by their marker line and never runs them, so a stray brace or an
unterminated string would pass every other test and fail on every real server. tree-sitter-powershell
(from PyPI) is an independent grammar: each variant that `exporter.scripts` can build must parse with zero
ERROR and zero MISSING nodes. Variants are enumerated from the parameter dataclasses, so a parameter added
later is covered without touching this file. The same tree finds what parses but fails when it runs, which
the simulator cannot show either: an index into a property that may be null (`indexed_properties`).
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


# Properties the scripts index that are never null: every ErrorRecord has its Exception, every object its pstypenames.
NEVER_NULL = ("$e.Exception.pstypenames", "$x.Exception.pstypenames")


def indexed_properties(script: str) -> list[str]:
    """Each property read the script indexes (`$a.b[0]`), other than those in NEVER_NULL. PowerShell throws NullArray
    for an index into null, strict mode or not (Binders.cs PSGetIndexBinder): in the scripts, under
    ErrorActionPreference Stop, that ends the script, and inside Fail, inside a catch, for the error it was
    recording. `@($a.b)[0]` is $null there instead."""
    source = script.encode("utf-8")
    found: list[str] = []

    def walk(node: Node) -> None:
        if node.type == "element_access" and node.children[0].type == "member_access":
            target = source[node.children[0].start_byte:node.children[0].end_byte].decode("utf-8")
            if target not in NEVER_NULL:
                found.append(f"line {node.start_point[0] + 1}: {target}[...]")
        for child in node.children:
            walk(child)

    walk(PARSER.parse(source).root_node)
    return found


@pytest.mark.parametrize("name", list(variants()), ids=str)
def test_no_script_indexes_a_property_that_may_be_null(name):
    """An error without an InnerException (most of them) made Fail throw, and the poll fail, where it was to be
    recorded as a partial failure."""
    assert indexed_properties(variants()[name]) == []


def test_an_index_into_a_property_that_may_be_null_is_found():
    assert indexed_properties("$i=[string]$e.Exception.InnerException.pstypenames[0]") == [
        "line 1: $e.Exception.InnerException.pstypenames[...]"]
    assert indexed_properties("$i=[string]@($e.Exception.InnerException.pstypenames)[0]") == []
