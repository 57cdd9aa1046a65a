"""What is current: the configuration, the catalog and the targets, held in one place and swapped whole.

Like blackbox_exporter's `SafeConfig`: the poller and the HTTP handlers ask `current()` and get one frozen
`Runtime`, so no reader ever sees a new configuration with an old catalog or old targets. `reload()`
validates the new configuration and catalog completely before the swap; a bad file is logged and reported
by `exchange_exporter_config_last_reload_successful` (set here, where the swap happens or not) while the
old configuration keeps running.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .catalog import Catalog, CatalogError
from .config import Config, ConfigError, load_config
from .redact import Redactor
from .targets import Targets

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    config: Config
    catalog: Catalog
    targets: Targets  # its discovered servers follow the organization collector; a reload starts it afresh


class SafeRuntime:
    def __init__(self, config: Config, catalog: Catalog, redactor: Redactor | None = None):
        self._current = Runtime(config, catalog, Targets(config))
        self._redactor = redactor
        self._reload_lock = threading.Lock()
        self.last_reload_successful = True
        self.last_reload_timestamp = time.time()

    def current(self) -> Runtime:
        return self._current  # one attribute read: atomic, so no lock

    def reload(self) -> tuple[bool, str]:
        """Load the configuration file again and its catalog, and swap them in if both are valid."""
        with self._reload_lock:
            source = self._current.config.source
            if source is None:
                return False, "the configuration was not loaded from a file"
            try:
                config = load_config(Path(source))
                catalog = Catalog.load(config.catalog_file)
            except Exception as err:  # whatever went wrong (MemoryError, a bug), the reload failed
                self.last_reload_successful = False
                detail = err if isinstance(err, (ConfigError, CatalogError)) else f"unexpected {type(err).__name__}"
                message = f"reload failed, the running configuration is kept: {detail}"
                if self._redactor is not None:
                    message = self._redactor.scrub(message)
                log.error("%s", message)
                return False, message
            if self._redactor is not None:
                self._redactor.add(config.secrets())
            self._current = Runtime(config, catalog, Targets(config))
            self.last_reload_successful = True
            self.last_reload_timestamp = time.time()
            log.info("configuration reloaded from %s: %d servers", source, len(config.servers))
            return True, "configuration reloaded"
