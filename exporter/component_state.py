"""Reading a server's registry entries of an Exchange server component state (maintenance mode): the one place
for the guessed format of those values.

What is confirmed (docs/reference/server-component-states.md has the sources): an admin puts a server into
maintenance with `Set-ServerComponentState <server> -Component ServerWideOffline -State Inactive -Requester
Maintenance`, which sets every component Inactive (Microsoft Learn, Set-ServerComponentState, example 2). Each
requester's request is kept apart, in Active Directory and in the server's registry under
`HKLM\\SOFTWARE\\Microsoft\\ExchangeServer\\v15\\ServerComponentStates\\<component>` (`-LocalOnly` writes the registry
alone, `-RemoteOnly` Active Directory alone: Learn); `Get-ServerComponentState` shows both as LocalStates and
RemoteStates, each entry a requester, a state and a time (Microsoft's own serialized output in CSS-Exchange's
HealthChecker tests, where the state's numbers are Inactive 0 and Active 1).

What is NOT confirmed: the format of a registry value. No Microsoft source documents it (Microsoft's collectors
only dump the key). GUESS, from a third-party script that reads these values (Zachary Loeber,
"Exchange 2013: Server Component State Script", 2014, which takes the third colon-separated field as the time in
.NET ticks) and from the Active Directory form the same script reads (`...:<component>:<requester>:<state>:<ticks>`):
a value is `<field>:<state>:<ticks>`, the state a ServiceState number or name. Anything else is `unrecognised`,
never a guess at the state. Nor is it confirmed how Exchange combines the requesters and the two stores into the
state `Get-ServerComponentState` reports (third-party posts: any requester's Inactive wins). So nothing inhibits or
pages on this reading (docs/alerts.md, "What each alert rests on").
"""

from __future__ import annotations

import re

from .model import RawComponentState

STATES = ("active", "inactive", "draining", "unrecognised")  # label `state` of exchange_server_component_local_state
# ServiceState (Microsoft.Exchange.Data): Inactive 0 and Active 1 in Microsoft's serialized Get-ServerComponentState,
# Draining 3 (not 2) in the Active Directory copies that Exchange Setup's recorded logs print
# (docs/reference/server-component-states.md, C5 and C10); 2 is no state.
_NUMBERS = {"0": "inactive", "1": "active", "3": "draining"}
_GUESSED_FORMAT = re.compile(r"[^:]*:([A-Za-z]+|[0-9]+):[0-9]{1,19}")


def local_state(raw: RawComponentState) -> str:
    """The state a registry value holds, by the guessed format: active | inactive | draining | unrecognised."""
    match = _GUESSED_FORMAT.fullmatch(raw.value.strip())
    if match is None:
        return "unrecognised"
    state = match.group(1)
    return _NUMBERS.get(state) or (state.lower() if state.lower() in STATES[:3] else "unrecognised")


def local_states(raws: tuple[RawComponentState, ...] | None) -> tuple[tuple[str, str, str], ...] | None:
    """(component, requester, state) for each entry, in the server's order. A requester named twice (the registry
    cannot: value names are case-insensitive; a hostile output can) counts once, by its first entry."""
    if raws is None:
        return None
    first: dict[tuple[str, str], RawComponentState] = {}
    for raw in raws:
        first.setdefault((raw.component, raw.requester.lower()), raw)
    return tuple((raw.component, raw.requester, local_state(raw)) for raw in first.values())
