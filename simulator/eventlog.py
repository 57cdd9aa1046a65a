"""What `Get-WinEvent` answers on one simulated server, for the query the script actually sends.

Windows PowerShell 5.1's Get-WinEvent answers the same question differently depending on how it is asked
(GetEventCommand.cs, PowerShell/PowerShell, the Windows PowerShell 5.1 code imported at commit 4e4a07c5):

- `-FilterHashtable @{LogName=...; ProviderName=...}` (HashQuerySet, `ProcessHashQuery`) builds a structured
  query with `TolerateQueryErrors = true`: a channel the account may not read is only a per-channel status,
  the query returns nothing, and the cmdlet writes `NoMatchingEventsFound` (PowerShell/PowerShell#18965).
  It looks the provider up first: where it is not registered (Edge, builds before EEMS) it writes
  `NoMatchingProvidersFound`, removes the log from the query and writes `LogsAndProvidersDontOverlap`
  (BuildStructuredQuery; both seen together in PowerShell/PowerShell#15713).
- `-LogName Application -FilterXPath ...` (GetLogSet, `ProcessGetLog` with one log) first finds the log by its
  name (`FindLogNamesMatchingWildcards`), opening its configuration (`new EventLogConfiguration`): an account
  that may not read the channel is refused there, which the cmdlet writes as `LogInfoUnavailable` (a
  System.Exception around the UnauthorizedAccessException, category NotSpecified) and then, the name having
  matched no log it could open, `NoMatchingLogsFound`; it returns without a query, and throws nothing
  (PowerShell/PowerShell#10637 and #10639 show the first record for the Security log as a non-administrator,
  dsccommunity/xWinEventLog#25 both for the Application log). A query it does run has no TolerateQueryErrors,
  and no provider is looked up, so an unregistered provider is simply "no events".

Either form reads newest first (ReverseDirection = !Oldest) and writes `NoMatchingEventsFound` when it
returned no record at all. A read that fails (`EventLogReader.ReadEvent` throws) is caught, written as an error and
the loop goes on (ReadEvents: `catch (Exception exc) { WriteError(...); continue; }`), so a reader that keeps failing
repeats its error: PowerShell/PowerShell#10637 shows "The data is invalid" (EventLogInvalidDataException, id = the
exception's text + the command) "repeated many times". `event_read_errors: N` makes N reads fail so; the events
are still read.

What a query costs (`application_log_events`): the Event Log service evaluates the XPath filter record by record
(a structured query has no index; CSS-Exchange measured about 3 minutes per Exchange server for a
provider-filtered scan of the Application log, microsoft/CSS-Exchange#47). A filter on provider and time cannot
stop at the window's start, so it reads the whole log; the collection script's query also lets through every
record older than the window and stops at the first one (`Select-Object -First 1` stops Get-WinEvent upstream),
so it reads the window's records and one more. Only records handed to PowerShell are formatted. The cost per
record and the log's rate are OUR GUESSES (no Windows measurement here), chosen so that a full scan of a few
million records takes minutes, as CSS-Exchange saw.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from . import eems

HASHTABLE = "hashtable"
XPATH = "xpath"
BOUNDED = "bounded"  # -FilterXPath that also lets the first record older than the window through, and stops there
SCAN_SECONDS_PER_RECORD = 30e-6  # guess: 6 million records in 3 minutes
RECORDS_PER_HOUR = 500  # guess: a busy Exchange server's Application log

_HASHTABLE = re.compile(r"Get-WinEvent\s+-FilterHashtable\b", re.IGNORECASE)
_XPATH = re.compile(r"Get-WinEvent\s+-LogName\s+'?Application'?\s+-FilterXPath\b", re.IGNORECASE)
_STOPS_AT_WINDOW = re.compile(r"timediff\(@SystemTime\)\s*>\s*\$", re.IGNORECASE)
_COMMAND = "Microsoft.PowerShell.Commands.GetWinEventCommand"


@dataclass(frozen=True)
class EventQueryError:
    """One error record of the query: what the script's error handler sees."""

    key: str  # the locales.yaml text
    error_id: str  # FullyQualifiedErrorId
    category: str
    exception: str
    inner: str = ""  # the exception's InnerException type


@dataclass(frozen=True)
class EventAnswer:
    events: list[eems.Event]
    errors: list[EventQueryError]
    scanned: int = 0  # Application log records the Event Log service read for the query
    read_errors: int = 0  # reads that failed, each written as READ_FAILED

    @property
    def seconds(self) -> float:
        return self.scanned * SCAN_SECONDS_PER_RECORD

    def errors_with_repeats(self) -> list[tuple[EventQueryError, int]]:
        """Each error record and how many times it is written, in order: the failed reads, then the others."""
        return [(READ_FAILED, self.read_errors)] * bool(self.read_errors) + [(error, 1) for error in self.errors]


NO_EVENTS = EventQueryError("no_events", f"NoMatchingEventsFound,{_COMMAND}", "ObjectNotFound", "System.Exception")
NO_PROVIDER = EventQueryError("no_provider", f"NoMatchingProvidersFound,{_COMMAND}", "ObjectNotFound", "System.Exception")
NOT_OVERLAPPING = EventQueryError("logs_providers", f"LogsAndProvidersDontOverlap,{_COMMAND}", "InvalidArgument",
                                  "System.Exception")
# A failed read's FullyQualifiedErrorId is the exception's (localized) text and the command; "{text}" is filled in.
READ_FAILED = EventQueryError("read_failed", "{text}," + _COMMAND, "NotSpecified",
                              "System.Diagnostics.Eventing.Reader.EventLogInvalidDataException")
LOG_INFO_DENIED = EventQueryError("log_info_denied", f"LogInfoUnavailable,{_COMMAND}", "NotSpecified",
                                  "System.Exception", "System.UnauthorizedAccessException")
NO_LOG = EventQueryError("no_log", f"NoMatchingLogsFound,{_COMMAND}", "ObjectNotFound", "System.Exception")


def query_form(script: str) -> str | None:
    """Which Get-WinEvent parameter set the script uses for the EEMS events; None when it asks none."""
    if _XPATH.search(script):
        return BOUNDED if _STOPS_AT_WINDOW.search(script) else XPATH
    if _HASHTABLE.search(script):
        return HASHTABLE
    return None


def scanned(form: str, log_records: int | None, lookback: timedelta) -> int:
    """How many records the query reads in a log of `log_records` (None: not modelled, nothing)."""
    if not log_records:
        return 0
    if form == BOUNDED:
        return min(log_records, int(RECORDS_PER_HOUR * lookback.total_seconds() / 3600) + 1)
    return log_records


def answer(form: str, setup: eems.EemsSetup | None, *, denied: bool, has_events: bool, now: datetime,
           lookback: timedelta, max_events: int, log_records: int | None = None, read_errors: int = 0) -> EventAnswer:
    """The EEMS events (newest first, at most `max_events`), the error records the query gives, and its cost;
    `read_errors` reads fail on the way (not where the query itself is refused)."""
    if denied:
        return EventAnswer([], [NO_EVENTS] if form == HASHTABLE else [LOG_INFO_DENIED, NO_LOG])
    cost = scanned(form, log_records, lookback)
    if setup is None:  # the provider is not registered
        return EventAnswer([], [NO_PROVIDER, NOT_OVERLAPPING] if form == HASHTABLE else _nothing(form, log_records, lookback), cost)
    found = eems.events(setup, now, lookback, max_events) if has_events else []
    return EventAnswer(found, [] if found else _nothing(form, log_records, lookback), cost, read_errors)


def _nothing(form: str, log_records: int | None, lookback: timedelta) -> list[EventQueryError]:
    """No EEMS event: "no events", unless the query let a record older than the window through (returned, so no
    NoMatchingEventsFound; the script drops it). A log not modelled is taken to reach back past the window."""
    older = log_records is None or log_records > RECORDS_PER_HOUR * lookback.total_seconds() / 3600
    return [] if form == BOUNDED and older else [NO_EVENTS]
