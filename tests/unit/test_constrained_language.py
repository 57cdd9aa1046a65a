"""Constrained Language Mode (review R9): the scripts call no method, set no property and create no object of a type
that is not a core type, outside the FullLanguage branch of a language-mode check.

Under AppLocker or WDAC script enforcement Windows PowerShell runs `-EncodedCommand` input in ConstrainedLanguage,
where the binder allows methods and property setters only on core types (Binders.cs `IsAllowedInConstrainedLanguage`;
`ToString` on any type), object creation and conversion only to core types (TypeResolver.cs `CoreTypes`, the list
in simulator/data/core_types.txt, with its source). The finder below reads the scripts with tree-sitter-powershell,
a grammar no one here wrote:

- a static call or property assignment `[Type]::Member(...)` / `[Type]::Member = ...` on a type that is not core;
- a script block passed to a .NET method (converted to a delegate type, never a core type);
- a cast to a type that is not core, and `New-Object` of one;
- an instance call: the receiver's type cannot be known from the text, so the method must be one of
  CORE_METHODS, each with the core type the scripts call it on;
- an instance property assignment on anything but a hashtable built in the script.

The simulator (`language_mode: constrained`) refuses a script by its own reading of the text; the two must agree.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest
import tree_sitter_powershell
from tree_sitter import Language, Node, Parser

from exporter import windows_endpoint
from simulator import language as simulated

from .test_script_grammar import variants

PARSER = Parser(Language(tree_sitter_powershell.language()))
BEFORE = Path(__file__).resolve().parents[1] / "fixtures" / "collect_server_before_issue_17.ps1"
GUARD = "$ExecutionContext.SessionState.LanguageMode-eq'FullLanguage'"
# Instance methods the scripts may call, with the core type they call each on (checked by reading, not typed).
CORE_METHODS = {"tostring": "any type", "touniversaltime": "System.DateTime", "tolocaltime": "System.DateTime",
                "addhours": "System.DateTime", "adddays": "System.DateTime", "addminutes": "System.DateTime",
                "addticks": "System.DateTime",
                "split": "System.String", "substring": "System.String"}


def core_types() -> set[str]:
    names = set()
    text = resources.files("simulator").joinpath("data", "core_types.txt").read_text(encoding="utf-8")
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            full, *accelerators = line.split()
            names |= {full.lower(), *(a.lower() for a in accelerators)}
            names.add(full.lower().removeprefix("system."))
    return names


CORE = core_types()


def is_core(type_name: str) -> bool:
    name = type_name.lower().replace(" ", "")
    return name in CORE or (name.endswith("[]") and is_core(name[:-2]))


def text(node: Node, source: bytes) -> str:
    return source[node.start_byte:node.end_byte].decode("utf-8")


def full_language_only(node: Node, source: bytes) -> bool:
    """Whether the node sits in the then-block of `if(<LanguageMode> -eq 'FullLanguage')`."""
    while node.parent is not None:
        parent = node.parent
        if (parent.type == "if_statement" and node.type == "statement_block"
                and re.sub(r"\s", "", text(parent.children[2], source)) == GUARD):
            return True
        node = parent
    return False


def refused(script: str) -> list[str]:
    """What ConstrainedLanguage would refuse in `script`, outside FullLanguage-only blocks, as 'line: what'."""
    source = script.encode("utf-8")
    hashtables = set(re.findall(r"(\$\w+)=@\{", script))
    found: list[str] = []

    def report(node: Node, what: str) -> None:
        if not full_language_only(node, source):
            found.append(f"{node.start_point[0] + 1}: {what}")

    def walk(node: Node) -> None:
        kids = node.children
        if node.type == "invokation_expression":
            method = text(next(k for k in kids if k.type == "member_name"), source)
            if kids[0].type == "type_literal" and kids[1].type == "::":
                type_name = text(kids[0], source).strip("[]")
                if not is_core(type_name):
                    report(node, f"method {method} of {type_name}")
            elif method.lower() not in CORE_METHODS:
                report(node, f"method {method} of {text(kids[0], source)}")
            arguments = next((k for k in kids if k.type == "argument_list"), None)
            if arguments is not None and _holds(arguments, "script_block_expression"):
                report(node, f"script block converted to a delegate for {method}")
        elif node.type == "assignment_expression":
            target = kids[0]
            access = _first(target, "member_access")
            if access is not None and access.children[0].type == "type_literal":
                type_name = text(access.children[0], source).strip("[]")
                if not is_core(type_name):
                    report(node, f"property {text(access.children[-1], source)} of {type_name} set")
            elif access is not None and _root(access, source) not in hashtables:
                report(node, f"property of {_root(access, source)} set")
        elif node.type == "cast_expression":
            type_name = text(kids[0], source).strip("[]")
            if not is_core(type_name):
                report(node, f"conversion to {type_name}")
        elif node.type == "command" and text(kids[0], source).lower().rpartition("\\")[2] == "new-object":
            type_name = next((text(k, source) for k in _descendants(kids[1]) if k.type == "generic_token"), "")
            if type_name and not is_core(type_name):
                report(node, f"New-Object {type_name}")
        for kid in kids:
            walk(kid)

    walk(PARSER.parse(source).root_node)
    return found


def _descendants(node: Node):
    for kid in node.children:
        yield kid
        yield from _descendants(kid)


def _holds(node: Node, kind: str) -> bool:
    return any(k.type == kind for k in _descendants(node))


def _first(node: Node, kind: str) -> Node | None:
    return next((k for k in _descendants(node) if k.type == kind), None)


def _root(access: Node, source: bytes) -> str:
    while access.children and access.children[0].type == "member_access":
        access = access.children[0]
    return text(access.children[0], source)


@pytest.mark.parametrize("name", list(variants()), ids=str)
def test_no_script_calls_what_constrained_language_refuses(name):
    assert refused(variants()[name]) == []


@pytest.mark.parametrize("path", [p for p in windows_endpoint.build("CONTOSO\\EEMS Monitoring").files
                                  if p.endswith((".psrc", ".ps1"))], ids=str)
def test_the_jea_endpoint_files_are_constrained_language_safe(path):
    """The JEA function's body runs in the system's language mode (Learn, "JEA Role Capabilities"), and the install
    script runs wherever an admin starts it, WDAC-enforced servers included."""
    assert refused(windows_endpoint.build("CONTOSO\\EEMS Monitoring").files[path]) == []


def test_the_script_before_issue_17_is_refused_where_the_review_found():
    """The finder can fail: it finds each construct review R9 lists in the script it reviewed."""
    found = "\n".join(refused(BEFORE.read_text(encoding="utf-8")))
    for construct in ("method GetValue", "method GetType", "method Open of IO.File", "method Min of Math",
                      "method GetString of", "method ToInt32 of BitConverter",
                      "property SecurityProtocol of Net.ServicePointManager set",
                      "property CheckCertificateRevocationList of Net.ServicePointManager set",
                      "method StartNew of Diagnostics.Stopwatch", "script block converted to a delegate for Replace"):
        assert construct in found, construct


@pytest.mark.parametrize("snippet, refusal", [
    ("$k=(Get-Item 'HKLM:\\x').GetValue('Start')", "method GetValue"),
    ("$u=New-Object Net.WebClient", "New-Object Net.WebClient"),
    ("$u=Microsoft.PowerShell.Utility\\New-Object Net.WebClient", "New-Object Net.WebClient"),
    ("$p=[Security.Principal.WindowsPrincipal]$i", "conversion to Security.Principal.WindowsPrincipal"),
    ("$s=Get-Service x;$s.Status='Running'", "property of $s set"),
    ("if($ExecutionContext.SessionState.LanguageMode -eq 'FullLanguage'){$x=1}else{[IO.File]::Open('a')}",
     "method Open of IO.File"),
])
def test_each_kind_is_found(snippet, refusal):
    (found,) = refused(snippet)
    assert found.split(": ", 1)[1].startswith(refusal)


def test_a_full_language_branch_is_not_read():
    assert refused("if($ExecutionContext.SessionState.LanguageMode -eq 'FullLanguage'){[IO.File]::Open('a')}") == []
    assert refused("$y=[datetime]::UtcNow.AddHours(-1);$r=@{};$r.x=[int][char]'a';$b=New-Object byte[] 2") == []


@pytest.mark.parametrize("name", [*variants(), "before issue 17"], ids=str)
def test_the_simulator_refuses_exactly_what_the_finder_finds(name):
    script = BEFORE.read_text(encoding="utf-8") if name == "before issue 17" else variants()[name]
    assert (simulated.first_refusal(script) is not None) == bool(refused(script))
