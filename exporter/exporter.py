"""The running exporter: configuration, catalog, poller and registries, and how they are reloaded.

A reload (SIGHUP or POST /-/reload) validates the new configuration and catalog completely before
swapping them in; a bad file is logged and reported by `exchange_exporter_config_last_reload_successful`
while the old configuration keeps running.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from .catalog import Catalog, CatalogError
from .config import Config, ConfigError, load_config
from .exposition import CachedExposition
from .metrics import SelfStatus, render
from .poller import Poller
from .redact import Redactor

log = logging.getLogger(__name__)


class _ProbeCollector:
    def __init__(self, families):
        self._families = families

    def collect(self):
        return self._families


class Exporter:
    def __init__(self, config: Config, catalog: Catalog, redactor: Redactor | None = None):
        self.config = config
        self.catalog = catalog
        self.redactor = redactor
        self.poller = Poller(config, catalog)
        self._reload_lock = threading.Lock()
        self.last_reload_successful = True
        self.last_reload_timestamp = time.time()
        self.registry = CollectorRegistry(auto_describe=False)  # the process's own metrics
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=self.registry)
        self._exposition = CachedExposition()

    def _self_status(self) -> SelfStatus:
        return SelfStatus(
            catalog_newest_release=self.catalog.newest_release,
            poll_interval_seconds=self.config.poll.interval,
            last_reload_successful=self.last_reload_successful,
            last_reload_timestamp=self.last_reload_timestamp,
        )

    def metrics_body(self, accept: str) -> tuple[bytes, str]:
        """/metrics: every server's latest result and the exporter's own metrics. In probe-only mode the
        exporter's own metrics only: servers come through /probe."""
        servers, organization = self.poller.snapshot() if self.config.poll.background else ([], None)
        return self._exposition.body(servers, organization, self._self_status(), self.registry, accept)

    def start(self) -> None:
        if self.config.poll.background:
            self.poller.start()

    def stop(self) -> None:
        self.poller.stop()

    def ready(self) -> bool:
        return not self.config.poll.background or self.poller.ready()

    def probe_registry(self, target: str, module: str | None, timeout: float | None) -> CollectorRegistry:
        """Poll one server now; its metrics only (self metrics stay on /metrics, as for blackbox)."""
        result = self.poller.poll_server(target, module=module, timeout=timeout)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_ProbeCollector(render([result], None, None)))
        return registry

    def reload(self) -> tuple[bool, str]:
        with self._reload_lock:
            source = self.config.source
            if source is None:
                return False, "the configuration was not loaded from a file"
            try:
                config = load_config(Path(source))
                catalog = Catalog.load(config.catalog_file)
            except Exception as err:  # whatever went wrong (MemoryError, a bug), the reload failed
                self.last_reload_successful = False
                detail = err if isinstance(err, (ConfigError, CatalogError)) else f"unexpected {type(err).__name__}"
                message = f"reload failed, the running configuration is kept: {detail}"
                if self.redactor is not None:
                    message = self.redactor.scrub(message)
                log.error("%s", message)
                return False, message
            if self.redactor is not None:
                self.redactor.add(config.secrets())
            self.poller.apply_config(config, catalog)
            self.config, self.catalog = config, catalog
            self.last_reload_successful = True
            self.last_reload_timestamp = time.time()
            log.info("configuration reloaded from %s: %d servers", source, len(config.servers))
            return True, "configuration reloaded"
