"""What `Get-WinEvent` answers on one simulated server, for the query the script actually sends.

Windows PowerShell 5.1's Get-WinEvent answers the same question differently depending on how it is asked
(GetEventCommand.cs, PowerShell/PowerShell, the Windows PowerShell 5.1 code imported at commit 4e4a07c5):

- `-FilterHashtable @{LogName=...; ProviderName=...}` (HashQuerySet, `ProcessHashQuery`) builds a structured
  query with `TolerateQueryErrors = true`: a channel the account may not read is only a per-channel status,
  the query returns nothing, and the cmdlet writes `NoMatchingEventsFound` (PowerShell/PowerShell#18965).
  It looks the provider up first: where it is not registered (Edge, builds before EEMS) it writes
  `NoMatchingProvidersFound`, removes the log from the query and writes `LogsAndProvidersDontOverlap`
  (BuildStructuredQuery; both seen together in PowerShell/PowerShell#15713).
- `-LogName Application -FilterXPath ...` (GetLogSet, `ProcessGetLog` with one log) builds an EventLogQuery
  without TolerateQueryErrors: a denied channel throws `UnauthorizedAccessException` out of the cmdlet (a
  terminating error the script catches, FullyQualifiedErrorId
  `System.UnauthorizedAccessException,Microsoft.PowerShell.Commands.GetWinEventCommand`), and no provider
  is looked up, so an unregistered provider is simply "no events".

Either form reads newest first (ReverseDirection = !Oldest) and writes `NoMatchingEventsFound` when it
returned no record at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from . import eems

HASHTABLE = "hashtable"
XPATH = "xpath"

_HASHTABLE = re.compile(r"Get-WinEvent\s+-FilterHashtable\b", re.IGNORECASE)
_XPATH = re.compile(r"Get-WinEvent\s+-LogName\s+'?Application'?\s+-FilterXPath\b", re.IGNORECASE)
_COMMAND = "Microsoft.PowerShell.Commands.GetWinEventCommand"


@dataclass(frozen=True)
class EventQueryError:
    """One error record of the query: what the script's error handler sees."""

    key: str  # the locales.yaml text
    error_id: str  # FullyQualifiedErrorId
    category: str
    exception: str


@dataclass(frozen=True)
class EventAnswer:
    events: list[eems.Event]
    errors: list[EventQueryError]


NO_EVENTS = EventQueryError("no_events", f"NoMatchingEventsFound,{_COMMAND}", "ObjectNotFound", "System.Exception")
NO_PROVIDER = EventQueryError("no_provider", f"NoMatchingProvidersFound,{_COMMAND}", "ObjectNotFound", "System.Exception")
NOT_OVERLAPPING = EventQueryError("logs_providers", f"LogsAndProvidersDontOverlap,{_COMMAND}", "InvalidArgument",
                                  "System.Exception")
UNAUTHORIZED = EventQueryError("unauthorized", f"System.UnauthorizedAccessException,{_COMMAND}", "NotSpecified",
                               "System.UnauthorizedAccessException")


def query_form(script: str) -> str | None:
    """Which Get-WinEvent parameter set the script uses for the EEMS events; None when it asks none."""
    if _XPATH.search(script):
        return XPATH
    if _HASHTABLE.search(script):
        return HASHTABLE
    return None


def answer(form: str, setup: eems.EemsSetup | None, *, denied: bool, has_events: bool, now: datetime,
           lookback: timedelta, max_events: int) -> EventAnswer:
    """The EEMS events (newest first, at most `max_events`) and the error records the query gives."""
    if denied:
        return EventAnswer([], [NO_EVENTS if form == HASHTABLE else UNAUTHORIZED])
    if setup is None:  # the provider is not registered
        return EventAnswer([], [NO_PROVIDER, NOT_OVERLAPPING] if form == HASHTABLE else [NO_EVENTS])
    found = eems.events(setup, now, lookback, max_events) if has_events else []
    return EventAnswer(found, [] if found else [NO_EVENTS])
