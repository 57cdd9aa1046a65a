"""The latest result of every server the background polls reach, and of the organization: what /metrics shows.

A failed poll keeps the last good state (and when it was had), so a server that cannot be reached goes on
showing its last known facts beside `exchange_up 0`. Only background polls write here: a `/probe` answers
with its own result and leaves this alone, as blackbox_exporter keeps no state between probes.
The last poll's raw output is kept apart, within its own bound (`kept_output.py`), for /server?debug=true.
"""

from __future__ import annotations

import threading
from dataclasses import replace

from .kept_output import KeptOutputs
from .model import OrganizationResult, OrgServerInfo, ServerResult
from .runtime import Target, Targets


class Store:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._servers: dict[str, ServerResult] = {}
        self._organization: OrganizationResult | None = None
        self.outputs = KeptOutputs()

    def record(self, result: ServerResult, targets: Targets, *, output_budget: int = 0) -> ServerResult:
        """Keep `result` as the server's latest (with the last good state if it failed) while the server is
        one of `targets`, the current ones: a poll that ends after a reload removed its server keeps nothing.
        Its raw output goes to `outputs`, within `output_budget` bytes for all servers (limits.max_debug_output_bytes)."""
        key = result.name.lower()
        output, outcome, state = result.output, result.outcome, result.state
        troubled = not (outcome and outcome.success) or bool(state and state.collection_errors)
        if output is not None:
            result = replace(result, output=None)
        if targets.get(key) is not None and result.outcome is not None:
            self.outputs.keep(key, output, result.outcome.finished, troubled=troubled, budget=output_budget)
        with self._lock:
            previous = self._servers.get(key)
            if not result.outcome.success and previous is not None:
                result = replace(result, state=previous.state, last_success=previous.last_success)
            if targets.get(key) is not None:
                self._servers[key] = result
        return result

    def record_organization(self, result: OrganizationResult) -> OrganizationResult:
        with self._lock:
            previous = self._organization
            if not result.outcome.success and previous is not None and previous.name == result.name:
                result = replace(result, facts=previous.facts, last_success=previous.last_success,
                                 servers=previous.servers)
            self._organization = result
        return result

    def follow(self, targets: Targets, organization: str | None) -> None:
        """Forget the servers that are no longer targets (so one added back shows nothing until polled again
        rather than its old result), and the organization's result if the organization is not the same
        (a configured one shows as not yet polled)."""
        with self._lock:
            self._servers = {key: r for key, r in self._servers.items() if targets.get(key) is not None}
            self.outputs.follow(set(self._servers))
            if organization is None:
                self._organization = None
            elif self._organization is None or self._organization.name != organization:
                self._organization = OrganizationResult(organization)

    def known(self, name: str) -> OrgServerInfo | None:
        """What the last organization poll said about a server (its proxy, its AdminDisplayVersion)."""
        organization = self._organization
        return organization.servers.get(name.lower()) if organization is not None else None

    def snapshot(self, polled: tuple[Target, ...]) -> list[ServerResult]:
        """The latest result of each of `polled` that has one, in their order."""
        with self._lock:
            return [r for r in (self._servers.get(t.name.lower()) for t in polled) if r is not None]

    def organization(self) -> OrganizationResult | None:
        return self._organization
