"""The running exporter: what is current (the runtime holder), the poller, and what the HTTP handlers read.

The handlers ask only this object (a narrow read interface): the bodies they send, whether a target or a
module exists, readiness, and the reload. A reload (SIGHUP or POST /-/reload) goes to the runtime holder,
which swaps configuration, catalog and targets in one step or keeps the old ones; the poller then follows.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from .catalog import Catalog
from .config import Config
from .metrics import CachedExposition, SelfStatus
from .model import OrganizationResult, ServerResult
from .poller import Clock, Poller
from .redact import Redactor
from .runtime import SafeRuntime, Target
from .store import KeptOutput


class Exporter:
    def __init__(self, config: Config, catalog: Catalog, redactor: Redactor | None = None, *,
                 clock: Clock | None = None):
        # Also scrubs the exporter's own pages, which show text servers sent (a server may echo the password).
        self.redactor = redactor if redactor is not None else Redactor()
        self.redactor.add(config.secrets())
        self.runtime = SafeRuntime(config, catalog, self.redactor)
        self.poller = Poller(self.runtime, clock=clock)
        self.registry = CollectorRegistry(auto_describe=False)  # the process's own metrics
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=self.registry)
        self.start_time = time.time()  # exchange_exporter_start_time_seconds, on every platform
        self._exposition = CachedExposition()

    def self_status(self) -> SelfStatus:
        """What the exporter says about itself on /metrics (the pages' alerts read it too)."""
        current = self.runtime.current()
        paused = self.poller.connections.credentials.paused(current.config.modules)
        return SelfStatus(
            catalog_newest_release=current.catalog.newest_release,
            catalog_checked=current.catalog.checked,
            poll_interval_seconds=current.config.poll.interval,
            last_reload_successful=self.runtime.last_reload_successful,
            last_reload_timestamp=self.runtime.last_reload_timestamp,
            credential_paused={name: name in paused for name in current.config.modules},
            servers=current.targets.known,
            server_names=current.targets.names,
            shard=current.config.shard,
            shard_server_names=current.targets.polled_names,
            shard_servers=current.targets.per_shard,
            probe_targets=() if current.config.poll.background else tuple(t.name for t in current.targets.polled),
            start_time=self.start_time,
        )

    # ------------------------------------------------------------ what the handlers read

    def targets(self) -> tuple[Target, ...]:
        """The servers this instance polls, in name order."""
        return self.runtime.current().targets.polled

    def scrub(self, text: str) -> str:
        """`text` with every configured secret, in any form it can take, masked."""
        return self.redactor.scrub(text)

    def snapshot(self) -> tuple[list[ServerResult], OrganizationResult | None]:
        """The latest result of every server of this instance, and of the organization."""
        return self.poller.snapshot()

    def output(self, name: str) -> tuple[KeptOutput | None, bool]:
        """The raw output of a server's last background poll, as received (a page masks it when it shows it),
        and whether it was dropped to stay within limits.max_debug_output_bytes."""
        outputs = self.poller.store.outputs
        return outputs.get(name), outputs.dropped(name)

    def metrics_body(self, accept: str) -> tuple[bytes, str]:
        """/metrics: every server's latest result and the exporter's own metrics. In probe-only mode the
        exporter's own metrics only: servers come through /probe."""
        background = self.runtime.current().config.poll.background
        servers, organization = self.poller.snapshot() if background else ([], None)
        return self._exposition.body(servers, organization, self.self_status(), self.registry, accept)

    def probe(self, target: str, module: str | None, timeout: float | None) -> ServerResult:
        """Poll one server now, for /probe. The result is not kept: /metrics shows the background polls' results
        only."""
        return self.poller.probe(target, module=module, timeout=timeout)

    def ready(self) -> bool:
        return not self.runtime.current().config.poll.background or self.poller.ready()

    def reload(self) -> tuple[bool, str]:
        ok, message = self.runtime.reload()
        if ok:
            self.poller.follow()
        return ok, message

    # ------------------------------------------------------------ life cycle

    def start(self) -> None:
        if self.runtime.current().config.poll.background:
            self.poller.start()

    def stop(self) -> None:
        self.poller.stop()
