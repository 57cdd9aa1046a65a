"""The latest result of every server the background polls reach, and of the organization: what /metrics shows.

A failed poll keeps the last good state (and when it was had), so a server that cannot be reached goes on
showing its last known facts beside `exchange_up 0`. Only background polls write here: a `/probe` answers
with its own result and leaves this alone, as blackbox_exporter keeps no state between probes.

The last poll's raw output of each server is kept beside its result (`KeptOutputs`), for
`/server?name=X&debug=true`: what the collection script sent back, as received, shown without polling again.
It is bounded three ways, because a poll's output may be up to `limits.max_poll_bytes` (8 MiB) and a fleet has
thousands of servers:
- each output is cut where `diagnose` cuts it (the first MAX_RAW_CHARS bytes of stdout; stderr is already cut to
  64 KiB by the WinRM client);
- it is kept compressed (zlib level 1: the simulator's 35 KB outputs shrink 12 times; a real server's, with more
  varied event texts and log lines, less);
- all outputs together stay within `limits.max_debug_output_bytes` (compressed): past it the oldest outputs of
  polls that went well are dropped first, those of failed or partly failed polls (the ones an admin opens the
  page for) only when no other is left. `0` keeps none.

Outputs are kept as received, secrets and all, like the results themselves: the page masks them with the
redactor when it shows one, as `diagnose` does, so a secret a reload adds is masked in older outputs too.
"""

from __future__ import annotations

import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import datetime

from .field_report import MAX_RAW_CHARS
from .model import OrganizationResult, OrgServerInfo, ScriptOutput, ServerResult
from .runtime import Target, Targets

ENTRY_OVERHEAD_BYTES = 256  # what an entry costs beyond its compressed bytes (objects, dict slots), for the bound


@dataclass(frozen=True)
class KeptOutput:
    finished: datetime  # when the poll that got it ended
    exit_code: int
    stdout_bytes: int  # as received, before the cut
    stderr_bytes: int
    compressed: tuple[bytes, bytes]  # stdout (cut at MAX_RAW_CHARS) and stderr, zlib

    @property
    def size(self) -> int:
        return len(self.compressed[0]) + len(self.compressed[1]) + ENTRY_OVERHEAD_BYTES

    def stdout(self) -> bytes:
        return zlib.decompress(self.compressed[0])

    def stderr(self) -> bytes:
        return zlib.decompress(self.compressed[1])


class KeptOutputs:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        # name (lower case) -> output; each in order of keeping, oldest first
        self._healthy: OrderedDict[str, KeptOutput] = OrderedDict()
        self._troubled: OrderedDict[str, KeptOutput] = OrderedDict()
        self._dropped: set[str] = set()  # names whose output went to stay within the bound
        self._total = 0

    def keep(self, name: str, output: ScriptOutput | None, finished: datetime, *, troubled: bool,
             budget: int) -> None:
        """The output of `name`'s latest poll (None: the script did not run), in place of the one before."""
        entry = None
        if output is not None and budget > 0:
            entry = KeptOutput(finished, output.exit_code, len(output.stdout), len(output.stderr),
                               (zlib.compress(output.stdout[:MAX_RAW_CHARS], 1), zlib.compress(output.stderr, 1)))
        key = name.lower()
        with self._lock:
            self._forget(key)
            if output is not None and (entry is None or entry.size > budget):
                self._dropped.add(key)
                return
            if entry is None:
                return
            (self._troubled if troubled else self._healthy)[key] = entry
            self._total += entry.size
            while self._total > budget:
                oldest, dropped = (self._healthy or self._troubled).popitem(last=False)
                self._total -= dropped.size
                self._dropped.add(oldest)

    def forget(self, name: str) -> None:
        """Drop `name`'s output: its server is no longer polled."""
        with self._lock:
            self._forget(name.lower())

    def _forget(self, key: str) -> None:
        for kept in (self._healthy, self._troubled):
            entry = kept.pop(key, None)
            if entry is not None:
                self._total -= entry.size
        self._dropped.discard(key)

    def get(self, name: str) -> KeptOutput | None:
        key = name.lower()
        with self._lock:
            return self._healthy.get(key) or self._troubled.get(key)

    def dropped(self, name: str) -> bool:
        """Whether `name`'s latest output was not kept to stay within the bound (or because it is 0)."""
        with self._lock:
            return name.lower() in self._dropped

    def follow(self, names: set[str]) -> None:
        """Forget the outputs of servers no longer polled (`names`: lower case)."""
        with self._lock:
            for key in [k for k in (*self._healthy, *self._troubled, *self._dropped) if k not in names]:
                self._forget(key)

    @property
    def total(self) -> int:
        """Bytes held, as counted against the bound."""
        return self._total


class Store:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._servers: dict[str, ServerResult] = {}
        self._organization: OrganizationResult | None = None
        self._targets: Targets | None = None  # as of the last `follow`: nothing is kept before the first
        self.outputs = KeptOutputs()

    def _current(self, key: str) -> bool:
        return self._targets is not None and self._targets.polls(key)

    def record(self, result: ServerResult, *, output_budget: int = 0) -> ServerResult:
        """Keep `result` as the server's latest (with the last good state if it failed) while the server is
        one the targets the store follows poll, checked under the lock `follow` takes: a poll that ends after a
        reload removed its server keeps nothing, whenever the reload lands (checked against the targets the poll
        read before the lock, a reload in between let the result in after `follow`, and the server added back
        showed it). Its raw output goes to `outputs`, within `output_budget` bytes for all servers
        (limits.max_debug_output_bytes)."""
        key = result.name.lower()
        output, outcome, state = result.output, result.outcome, result.state
        troubled = not (outcome and outcome.success) or bool(state and state.collection_errors)
        if output is not None:
            result = replace(result, output=None)
        if self._current(key) and result.outcome is not None:  # compressed outside the lock, checked again in it
            self.outputs.keep(key, output, result.outcome.finished, troubled=troubled, budget=output_budget)
        with self._lock:
            previous = self._servers.get(key)
            if not result.outcome.success and previous is not None:
                result = replace(result, state=previous.state, last_success=previous.last_success)
            if self._current(key):
                self._servers[key] = result
            else:
                self.outputs.forget(key)
        return result

    def record_organization(self, result: OrganizationResult) -> OrganizationResult:
        """Keep `result` while its organization is the one the store follows: a poll that ends after a reload
        removed or renamed the organization keeps nothing (it put back the series `follow` had taken away)."""
        with self._lock:
            previous = self._organization
            if previous is None or previous.name != result.name:
                return result
            if not result.outcome.success:
                result = replace(result, facts=previous.facts, last_success=previous.last_success)
            self._organization = result
        return result

    def follow(self, targets: Targets, organization: str | None) -> None:
        """Forget the servers this instance no longer polls: removed, no longer discovered, or moved to another
        shard (so one added back shows nothing until polled again rather than its old result; kept for a server
        of another shard, its result came back stale with a reload that gave the server back, and its output
        held its share of limits.max_debug_output_bytes meanwhile), and the organization's result if the
        organization is not the same (a configured one shows as not yet polled)."""
        with self._lock:
            self._targets = targets
            self._servers = {key: r for key, r in self._servers.items() if targets.polls(key)}
            self.outputs.follow(set(self._servers))
            if organization is None:
                self._organization = None
            elif self._organization is None or self._organization.name != organization:
                self._organization = OrganizationResult(organization)

    def known(self, name: str) -> OrgServerInfo | None:
        """What the last organization poll said about a server (its proxy, its AdminDisplayVersion)."""
        organization = self._organization
        return organization.server(name) if organization is not None else None

    def snapshot(self, polled: tuple[Target, ...]) -> list[ServerResult]:
        """The latest result of each of `polled` that has one, in their order."""
        with self._lock:
            return [r for r in (self._servers.get(t.name.lower()) for t in polled) if r is not None]

    def organization(self) -> OrganizationResult | None:
        return self._organization
