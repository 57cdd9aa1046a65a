"""Every command the shipped PowerShell calls is named in full: no alias, and module-qualified where it may run in a
JEA session.

Inside a JEA session a function defined in a role capability still resolves commands in that session, "which
includes the proxy functions JEA creates to constrain existing commands. By default, Select-Object is a
constrained cmdlet in all JEA sessions that doesn't allow the selection of arbitrary properties on objects. To use
the unconstrained Select-Object in functions, you must explicitly request the full implementation using the FQMN"
(Microsoft Learn, "JEA Role Capabilities", Creating custom functions, whose own example calls
`Microsoft.PowerShell.Utility\\Select-Object`). The proxy takes -Property and -InputObject only
(CommandMetadata.cs `GetRestrictedSelectObject`, PowerShell/PowerShell), so `select -First 64` would fail there,
and any cmdlet another role capability of the same user constrains is constrained for our function too
("Any constrained cmdlet in a JEA session has the same constraints when invoked from a function"). Aliases in a
restricted session are private entries (InitialSessionState.cs `CreateRestrictedForRemoteServer`); whether every
one resolves from a role capability's function is not documented, so none is used.

The scripts the exporter sends (collection, organization, diagnose) and the JEA function written from the collection
script call every cmdlet as `Module\\Cmdlet`, with the module Microsoft's reference gives
(tests/fixtures/cmdlet_modules.tsv); only the Exchange snap-in's cmdlets stay unqualified (qualifying them by the
snap-in's name is untested on Exchange). The install script, which an administrator runs in a full session, uses
full names. tree-sitter-powershell, a grammar no one here wrote, finds the commands.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import tree_sitter_powershell
from tree_sitter import Language, Node, Parser

from exporter import windows_endpoint

from .test_script_grammar import variants

PARSER = Parser(Language(tree_sitter_powershell.language()))
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
EXCHANGE_SNAPIN = "Microsoft.Exchange.Management.PowerShell.SnapIn"
INSTALL = windows_endpoint.INSTALL_SCRIPT


def cmdlet_modules() -> dict[str, str]:
    rows = (line.split("\t") for line in (FIXTURES / "cmdlet_modules.tsv").read_text(encoding="utf-8").splitlines()
            if line and not line.startswith("#"))
    return {cmdlet.lower(): module for cmdlet, module in rows}


MODULES = cmdlet_modules()


def _text(node: Node, source: bytes) -> str:
    return source[node.start_byte:node.end_byte].decode("utf-8")


def _walk(node: Node):
    yield node
    for kid in node.children:
        yield from _walk(kid)


def misnamed(script: str, *, qualified: bool) -> list[str]:
    """Each command called by a name other than its full one (`Module\\Cmdlet` when `qualified`), as 'line: why'.
    Functions the script defines itself are called by their name."""
    source = script.encode("utf-8")
    root = PARSER.parse(source).root_node
    own = {_text(n.child_by_field_name("function_name") or n.children[1], source).lower()
           for n in _walk(root) if n.type == "function_statement"}
    found = []
    for node in _walk(root):
        if node.type != "command":
            continue
        name_node = node.child_by_field_name("command_name")
        if name_node is None or name_node.type != "command_name":  # `& $block`, `. $path`: no name to resolve
            continue
        written = _text(name_node, source)
        module, _, name = written.rpartition("\\")
        line = name_node.start_point[0] + 1
        if not module and name.lower() in own:
            continue
        expected = MODULES.get(name.lower())
        if expected is None:
            found.append(f"{line}: {written} is no cmdlet of tests/fixtures/cmdlet_modules.tsv (an alias?)")
        elif module and module.lower() != expected.lower():
            found.append(f"{line}: {written} is {expected}'s")
        elif not module and qualified and expected != EXCHANGE_SNAPIN:
            found.append(f"{line}: {written} without its module {expected}")
    return found


def shipped() -> dict[str, tuple[str, bool]]:
    """name -> (script text, whether its commands must be module-qualified)."""
    found = {name: (text, True) for name, text in variants().items()}
    files = windows_endpoint.build("CONTOSO\\EEMS Monitoring").files
    for path, text in files.items():
        if path.endswith((".psrc", ".psm1")):
            found[f"endpoint {path}"] = (text, True)
    found[INSTALL] = (files[INSTALL], False)
    return found


@pytest.mark.parametrize("name", list(shipped()), ids=str)
def test_every_command_is_called_by_its_full_name(name):
    script, qualified = shipped()[name]
    assert misnamed(script, qualified=qualified) == []


def test_the_jea_function_is_checked():
    """The role capability's function body is parsed as code, not as a string: its commands are found."""
    (role,) = (text for name, (text, _) in shipped().items() if name.endswith(".psrc"))
    assert misnamed(role.replace("Microsoft.PowerShell.Utility\\Select-Object", "select"), qualified=True)


@pytest.mark.parametrize("snippet, why", [
    ("Get-ChildItem x|sort LastWriteTimeUtc|select -First 1", "sort is no cmdlet"),
    ("1..3|%{$_}", "% is no cmdlet"),
    ("Get-Date", "Get-Date without its module Microsoft.PowerShell.Utility"),
    ("Microsoft.PowerShell.Utility\\Get-WinEvent -LogName Application", "is Microsoft.PowerShell.Diagnostics's"),
    ("gci C:\\", "gci is no cmdlet"),
])
def test_each_kind_is_refused(snippet, why):
    assert why in "\n".join(misnamed(snippet, qualified=True))


def test_own_functions_and_exchange_cmdlets_pass():
    assert misnamed("function Fail($p){};Fail 'x' $_;Get-ExchangeServer|Microsoft.PowerShell.Core\\ForEach-Object{1}",
                    qualified=True) == []
    assert misnamed("Get-Date", qualified=False) == []


def test_the_script_before_issue_17_used_aliases():
    found = "\n".join(misnamed((FIXTURES / "collect_server_before_issue_17.ps1").read_text(encoding="utf-8"),
                               qualified=True))
    for alias in ("sort", "select", "%"):
        assert f": {alias} is no cmdlet" in found, alias
