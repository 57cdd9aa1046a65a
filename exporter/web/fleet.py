"""The rows of `/` and `/server`: each server's alerts and HTML made once per poll result, joined per request.

At 2,000 servers, evaluating the shipped rules over /metrics' text and rendering the whole table on every
request took seconds. A server's row changes only when
- its poll result changes (the store makes a new result object per poll);
- its organization samples change (a new organization result), or the samples of no server do (the exporter's
  own: poll interval, catalog, credential pauses, the organization collector's state);
- time turns one of its rules' comparisons (the EEMS age passing 2 h, a support end reached): the evaluator says
  when (`alerts.evaluated`), per server;
- the redactor learns a secret (a reload).
So each row is kept with those and made again only when one of them moves; the rows due are evaluated together,
in one pass of the rules over their samples. The ages on a row ("4m ago") are written at each request from the
times the row keeps. The rules see exactly the samples /metrics serves (the same metric families), split by
server: no rule matches one server's series with another's (every join is `on(job, instance, server)`, or
`on(job, instance) group_left()` with a series of no server, or `on(server)`), so each server's alerts do not depend
on the others'. The organization's series of a server this instance does not poll (one nothing polls, whose Name
falls to this shard: `ExchangeServerNotPolled`) have no row: they are evaluated with the series of no server, and
their alerts are listed with the exporter's.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Callable

from ..metrics import SelfStatus, organization_families, self_families, server_families
from ..model import OrganizationResult, ServerResult
from . import alerts, pages

Sample = tuple[str, dict[str, str], float]


def samples_of(families) -> list[Sample]:
    """The samples of these families that a rule reads (the others cannot change any alert, nor make a row due)."""
    return alerts.read_by_rules((s.name, s.labels, s.value) for family in families for s in family.samples)


@dataclass(frozen=True)
class _Entry:
    result: ServerResult  # the poll result it was made from (compared by identity)
    organization: tuple  # the server's organization samples it was made with
    context: object  # the samples of no server and the redactor's version it was made with (by identity)
    until: float  # when time may turn one of its rules' comparisons
    row: pages.Row
    html: pages.RowHTML


class FleetRows:
    """The rows, kept between requests (one per exporter: the transport makes it)."""

    def __init__(self, status: Callable[[], SelfStatus], clock: Callable[[], float] = time.time):
        self._status = status
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._context: tuple = ()  # (samples of no server, redactor version): the current one, by identity
        self._organization: tuple = (None, (), [], {})  # (result, its servers' names and shard, samples of no row, by row)
        self._exporter_level: tuple[object, float, list[alerts.Firing]] = (None, -math.inf, [])

    def rows(self, servers: list[ServerResult], organization: OrganizationResult | None, redactor_version: int,
             scrub: Callable[[str], str]) -> tuple[list[tuple[pages.Row, pages.RowHTML]], list[alerts.Firing]]:
        """Each server's row (in the order of `servers`), and the alerts about no one server."""
        now = self._clock()
        with self._lock:
            names = {r.name.lower(): r.name for r in servers}
            status = self._status()
            global_samples, by_server = self._organization_samples(organization, names, status)
            context = self._context_now(global_samples + samples_of(self_families(status)), redactor_version)
            entries, due = {}, []
            for result in servers:
                key = result.name.lower()
                entry = self._entries.get(key)
                mine = by_server.get(result.name, ())
                if (entry is None or entry.result is not result or entry.context is not context
                        or entry.organization is not mine or now >= entry.until):
                    due.append(result)
                else:
                    entries[key] = entry
            if due or now >= self._exporter_level[1] or self._exporter_level[0] is not context:
                samples = list(context[0])
                for result in due:
                    samples += samples_of(server_families(result)) + list(by_server.get(result.name, ()))
                firings, until = alerts.evaluated(samples, now)
                per_server: dict[str, list[alerts.Firing]] = {}
                exporter_level = []
                for firing in firings:
                    name = firing.labels.get("server")
                    if name is None or name.lower() not in names:
                        exporter_level.append(firing)  # of no server, or of one without a row here
                    else:
                        per_server.setdefault(name, []).append(firing)
                shared = until.get(None, math.inf)
                self._exporter_level = (context, shared, exporter_level)
                for result in due:
                    row = pages.Row(result, tuple(per_server.get(result.name, ())))
                    entries[result.name.lower()] = _Entry(result, by_server.get(result.name, ()), context,
                                                          min(shared, until.get(result.name, math.inf)), row,
                                                          pages.row_html(row, scrub))
            self._entries = entries
            return [(entries[r.name.lower()].row, entries[r.name.lower()].html) for r in servers], self._exporter_level[2]

    def _context_now(self, global_samples: list[Sample], redactor_version: int) -> tuple:
        """The current context: the same object as before while the samples of no server and the redactor are
        the same, so that each row compares it by identity."""
        key = (tuple((name, tuple(sorted(labels.items())), value) for name, labels, value in global_samples),
               redactor_version)
        if self._context and (self._context[2], self._context[1]) == key:
            return self._context
        self._context = (global_samples, redactor_version, key[0])
        return self._context

    def _organization_samples(self, organization: OrganizationResult | None, names: dict[str, str],
                              status: SelfStatus) -> tuple[list[Sample], dict[str, tuple]]:
        """The organization's samples of no row (of no server, or of a server this instance does not poll), and each
        row's server's (by its name as /metrics writes it); made again only for a new organization result or a new
        set of servers, and then a server's samples that did not change are the same object as before (its row
        compares them by identity)."""
        kept, kept_names, global_samples, before = self._organization
        servers = (names, status.server_names, status.shard_server_names, status.shard)
        if kept is organization and kept_names == servers:
            return global_samples, before
        global_samples, grouped = [], {}
        rows = set(names.values())
        if organization is not None:
            for sample in samples_of(organization_families(organization, status)):
                server = sample[1].get("server")
                if server not in rows:
                    global_samples.append(sample)
                else:
                    grouped.setdefault(server, []).append(sample)
        by_server = {}
        for name, samples in grouped.items():
            mine = tuple(samples)
            by_server[name] = before[name] if before.get(name) == mine else mine
        self._organization = (organization, servers, global_samples, by_server)
        return global_samples, by_server
