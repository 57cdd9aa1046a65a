"""Constrained Language Mode: which parts of a script Windows PowerShell 5.1 refuses there, and how it says so.

Under AppLocker or WDAC script enforcement, `powershell -EncodedCommand` runs in ConstrainedLanguage. The binder
then refuses a method call, a property assignment or `New-Object` on any type that is not a core type
(Binders.cs `IsAllowedInConstrainedLanguage`, TypeResolver.cs `CoreTypes`, PowerShell/PowerShell@60b3b304; the
list is data/core_types.txt), with a terminating error the script cannot recover from when it comes from its own
error handler (review R9: the script before issue 17 died inside `Fail`).

The simulator runs no PowerShell, so this is a reading of the script's text: static calls and assignments
`[Type]::Member(...)` / `[Type]::Member = ...` on a type that is not core, `New-Object Type` of one, and
instance calls whose method is not one of core types' (data below; an instance call's receiver type cannot be
known from the text). Code inside `if($ExecutionContext.SessionState.LanguageMode -eq 'FullLanguage'){...}` never
runs in ConstrainedLanguage and is not read. The first refused construct refuses the whole script, as an uncaught
terminating error does; Windows would run the statements before it (a simplification, documented).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

FULL = "full"
CONSTRAINED = "constrained"
GUARD = "if($ExecutionContext.SessionState.LanguageMode -eq 'FullLanguage'){"

# Instance methods of core types (String, DateTime, TimeSpan, Hashtable, arrays, Regex) and ToString, allowed on
# any type. A method name not listed is taken to be called on a type that is not core.
CORE_INSTANCE_METHODS = frozenset(name.lower() for name in (
    "ToString", "Split", "Substring", "Replace", "Trim", "TrimStart", "TrimEnd", "ToLower", "ToUpper", "StartsWith",
    "EndsWith", "Contains", "IndexOf", "LastIndexOf", "PadLeft", "PadRight", "Insert", "Remove", "Equals",
    "CompareTo", "ToCharArray", "AddDays", "AddHours", "AddMinutes", "AddSeconds", "AddMilliseconds", "AddTicks",
    "ToUniversalTime", "ToLocalTime", "Subtract", "ContainsKey", "ContainsValue", "Add", "Clear", "Clone",
    "Matches", "Match", "IsMatch",
))

_STATIC = re.compile(r"\[([A-Za-z_][\w.`]*(?:\[\])?)\]::(\w+)\s*(\(|=(?![=]))")
_NEW_OBJECT = re.compile(r"\bNew-Object\s+(?:-TypeName\s+)?'?([A-Za-z_][\w.]*(?:\[\])?)", re.IGNORECASE)
_INSTANCE = re.compile(r"(?<=[\w)\]])\.(\w+)\(")
# A script block handed to a .NET method is converted to its delegate type, which is not a core type either.
_DELEGATE = re.compile(r"\]::\w+\((?:[^(){}]|\([^()]*\))*\{")


@dataclass(frozen=True)
class Refusal:
    error_id: str
    message: str
    line: int  # 1-based
    column: int
    text: str  # the line as written


_MESSAGES = {
    "MethodInvocationNotSupportedInConstrainedLanguage":
        "Cannot invoke method. Method invocation is supported only on core types in this language mode.",
    "PropertySetterNotSupportedInConstrainedLanguage":
        "Cannot set property. Property setting is supported only on core types in this language mode.",
    "CannotCreateTypeConstrainedLanguage": "Cannot create type. Only core types are supported in this language mode.",
    # ours in its details: the real text names the argument, its value and the delegate type
    "MethodArgumentConversionInvalidCastArgument":
        'Cannot convert argument "evaluator", with value: "param(...)", for "Replace" to type '
        '"System.Text.RegularExpressions.MatchEvaluator": "Cannot convert the "param(...)" value of type '
        '"System.Management.Automation.ScriptBlock" to type "System.Text.RegularExpressions.MatchEvaluator"."',
}
_CATEGORIES = {"MethodArgumentConversionInvalidCastArgument": "NotSpecified: (:) [], MethodException"}


@cache
def core_types() -> frozenset[str]:
    """Full names (with and without "System.") and accelerators, lower case."""
    names: set[str] = set()
    text = resources.files("simulator").joinpath("data").joinpath("core_types.txt").read_text(encoding="utf-8")
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            full, *accelerators = line.split()
            names.update(n.lower() for n in (full, *accelerators))
            if full.startswith("System."):
                names.add(full[len("System."):].lower())
    return frozenset(names)


def is_core(type_name: str) -> bool:
    name = type_name.replace("`", "").lower()
    if name.endswith("[]"):
        return is_core(name[:-2]) or name in core_types()
    return name in core_types()


def first_refusal(script: str) -> Refusal | None:
    """The first construct ConstrainedLanguage refuses in `script`, outside FullLanguage-only blocks."""
    text = _without_full_language_blocks(script)
    found: list[tuple[int, str]] = []
    for match in _STATIC.finditer(text):
        if not is_core(match.group(1)):
            kind = ("MethodInvocationNotSupportedInConstrainedLanguage" if match.group(3) == "("
                    else "PropertySetterNotSupportedInConstrainedLanguage")
            found.append((match.start(), kind))
    for match in _DELEGATE.finditer(text):
        found.append((match.start(), "MethodArgumentConversionInvalidCastArgument"))
    for match in _NEW_OBJECT.finditer(text):
        if not is_core(match.group(1)):
            found.append((match.start(), "CannotCreateTypeConstrainedLanguage"))
    for match in _INSTANCE.finditer(text):
        if match.group(1).lower() not in CORE_INSTANCE_METHODS:
            found.append((match.start(), "MethodInvocationNotSupportedInConstrainedLanguage"))
    if not found:
        return None
    position, kind = min(found)
    line = text.count("\n", 0, position) + 1
    start = text.rfind("\n", 0, position) + 1
    end = text.find("\n", position)
    return Refusal(kind, _MESSAGES[kind], line, position - start + 1, text[start: end if end >= 0 else len(text)])


def error_lines(refusal: Refusal, message: str | None = None) -> list[str]:
    """The error record as powershell.exe prints an uncaught one (then exits 1); `message` in the server's
    display language (the id is invariant)."""
    return [
        message or refusal.message,
        f"At line:{refusal.line} char:{refusal.column}",
        f"+ {refusal.text[:70]}",
        "+ " + " " * max(refusal.column - 1, 0) + "~~~~",
        f"    + CategoryInfo          : {_CATEGORIES.get(refusal.error_id, 'InvalidOperation: (:) [], RuntimeException')}",
        f"    + FullyQualifiedErrorId : {refusal.error_id}",
        " ",
    ]


def _without_full_language_blocks(script: str) -> str:
    """The script with comment lines and the body of every FullLanguage-only `if` blanked (line breaks kept, so
    positions hold)."""
    script = "\n".join(" " * len(line) if line.lstrip().startswith("#") else line for line in script.split("\n"))
    out, position = [], 0
    while (start := script.find(GUARD, position)) >= 0:
        body = start + len(GUARD)
        depth, index = 1, body
        while index < len(script) and depth:
            depth += {"{": 1, "}": -1}.get(script[index], 0)
            index += 1
        out.append(script[position:body])
        out.append("".join(c if c == "\n" else " " for c in script[body:index - 1]))
        position = index - 1
    out.append(script[position:])
    return "".join(out)
