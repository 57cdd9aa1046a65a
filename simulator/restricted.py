"""What a JEA session does to the commands its role capability's function calls.

A JEA session configuration of SessionType RestrictedRemoteServer is built by
`InitialSessionState.CreateRestricted(SessionCapabilities.RemoteServer)` (InitialSessionStateProvider.cs,
InitialSessionState.cs `CreateRestrictedForRemoteServer`, PowerShell/PowerShell): every engine cmdlet is there but
private, and the few the remoting protocol needs are replaced by public proxy functions that take fewer parameters
(CommandMetadata.cs `GetRestrictedCommands`). `Select-Object`'s proxy takes `-Property`, limited to eleven names
implicit remoting selects, and `-InputObject`; nothing else (`GetRestrictedSelectObject`). A function defined in a
role capability resolves command names in that session, proxies included: "By default, Select-Object is a
constrained cmdlet in all JEA sessions [...] To use the unconstrained Select-Object in functions, you must
explicitly request the full implementation using the FQMN" (Microsoft Learn, "JEA Role Capabilities", Creating
custom functions). `Microsoft.PowerShell.Utility\\Select-Object` reaches the cmdlet; `Select-Object` and its alias
`select` reach the proxy.

The simulator runs no PowerShell: it reads the collection script's text one stage at a time (`$r.stages.<part>=`,
the script's own layout) and finds the stages that call the proxy with a parameter it does not have. There the
binder fails the pipeline before it starts (`NamedParameterNotFound`, a ParameterBindingException), and the
stage's catch records it for the part.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PROXY_PARAMETERS = ("Property", "InputObject")  # GetRestrictedSelectObject
ERROR_ID = "NamedParameterNotFound,Select-Object"  # a function's binding error carries the function's name
CATEGORY = "InvalidArgument"
EXCEPTION = "System.Management.Automation.ParameterBindingException"

_STAGE = re.compile(r"\$r\.stages\.(\w+)=")
# An unqualified call: not preceded by a module name's backslash or another name character.
_CALL = re.compile(r"(?<![\w\\.-])(?:Select-Object|select)(?![\w-])([^|)}\r\n]*)", re.IGNORECASE)
_PARAMETER = re.compile(r"(?:^|\s)-(\w+)")


@dataclass(frozen=True)
class Refusal:
    part: str  # the stage whose pipeline fails
    parameter: str  # the first parameter the proxy does not have, as written


def refusals(script: str) -> dict[str, Refusal]:
    """The stages whose Select-Object call the session's proxy refuses, by part."""
    script = "\n".join("" if line.lstrip().startswith("#") else line for line in script.split("\n"))
    found: dict[str, Refusal] = {}
    stages = list(_STAGE.finditer(script))
    for index, stage in enumerate(stages):
        end = stages[index + 1].start() if index + 1 < len(stages) else len(script)
        for call in _CALL.finditer(script, stage.end(), end):
            parameter = next((p for p in _PARAMETER.findall(call.group(1))
                              if not any(name.lower().startswith(p.lower()) for name in PROXY_PARAMETERS)), None)
            if parameter is not None:
                found.setdefault(stage.group(1), Refusal(stage.group(1), parameter))
    return found
