"""Which servers this exporter instance polls, and where their WinRM endpoints are.

The list is the configured servers plus, when enabled, those the organization collector discovered,
cut down to this instance's shard. `/probe` may name any configured or discovered server (also one of
another shard), and nothing else: the exporter never connects to a host its configuration does not name.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from .config import Config
from .model import OrgServerInfo
from .sharding import shard_of


@dataclass(frozen=True)
class Target:
    name: str
    address: str
    port: int
    scheme: str
    module: str
    endpoint_proxy: str
    discovered: bool

    @property
    def endpoint(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.scheme}://{host}:{self.port}/wsman"


class Targets:
    def __init__(self, config: Config):
        self._config = config
        self._lock = threading.Lock()
        self._configured = {
            s.name.lower(): self._target(s.name, s.address, s.port, s.module, s.endpoint_proxy, discovered=False)
            for s in config.servers
        }
        self._discovered: dict[str, Target] = {}
        self._mine = self._shard_of_everything()

    def _target(self, name: str, address: str, port: int | None, module_name: str, endpoint_proxy: str, *,
                discovered: bool) -> Target:
        module = self._config.modules[module_name]
        return Target(name=name, address=address, port=port or module.port, scheme=module.scheme,
                      module=module_name, endpoint_proxy=endpoint_proxy, discovered=discovered)

    def set_discovered(self, servers: tuple[OrgServerInfo, ...]) -> None:
        """Adopt the servers `Get-ExchangeServer` listed, reached by FQDN with the organization's module."""
        organization = self._config.organization
        if organization is None:
            return
        found = {}
        for info in servers:
            key = info.name.lower()
            if key in self._configured or not info.name:
                continue
            found[key] = self._target(info.name, info.fqdn or info.name, None, organization.module,
                                      info.internet_web_proxy or "", discovered=True)
            if len(self._configured) + len(found) >= self._config.limits.max_servers:
                break
        with self._lock:
            self._discovered = found
            self._mine = self._shard_of_everything()

    def for_organization(self) -> Target | None:
        """The server the organization collector polls: as known, else reached by the name the organization
        section gives, with the organization's module (None without an organization collector)."""
        organization = self._config.organization
        if organization is None:
            return None
        return self.get(organization.server) or self._target(
            organization.server, organization.server, None, organization.module, "", discovered=False)

    def get(self, name: str) -> Target | None:
        key = name.lower()
        with self._lock:
            return self._configured.get(key) or self._discovered.get(key)

    def mine(self) -> list[Target]:
        """The targets of this instance's shard, in a stable order (computed when the list changes, not per
        call: the scheduler and every scrape ask for it)."""
        with self._lock:
            return list(self._mine)

    def _shard_of_everything(self) -> list[Target]:
        index, count = self._config.shard
        everything = list(self._configured.values()) + list(self._discovered.values())
        return sorted((t for t in everything if shard_of(t.name, count) == index), key=lambda t: t.name.lower())
