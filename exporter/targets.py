"""Which servers this exporter instance polls, and where their WinRM endpoints are.

The list is the configured servers plus, when enabled, those the organization collector discovered,
cut down to this instance's shard. `/probe` may name any configured or discovered server (also one of
another shard), and nothing else: the exporter never connects to a host its configuration does not name.

A `Targets` never changes: a discovery or a reload makes a new one (`runtime.py` swaps it in with the
configuration it was built from), so whoever holds one sees one consistent list.
"""

from __future__ import annotations

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
    def __init__(self, config: Config, discovered: tuple[OrgServerInfo, ...] = ()):
        """The configured servers and, when the configuration asks for discovery, the servers
        `Get-ExchangeServer` listed (`discovered`), reached by FQDN with the organization's module."""
        self._config = config
        organization = config.organization
        self.discovered_from = discovered if organization is not None and organization.discover_servers else ()
        self._all = {s.name.lower(): self._target(s.name, s.address, s.port, s.module, s.endpoint_proxy,
                                                  discovered=False) for s in config.servers}
        for info in self.discovered_from:
            key = info.name.lower()
            if not info.name or key in self._all:
                continue
            if len(self._all) >= config.limits.max_servers:
                break
            self._all[key] = self._target(info.name, info.fqdn or info.name, None, organization.module,
                                          info.internet_web_proxy or "", discovered=True)
        index, count = config.shard
        self.polled: tuple[Target, ...] = tuple(sorted(
            (t for t in self._all.values() if shard_of(t.name, count) == index), key=lambda t: t.name.lower()))

    def _target(self, name: str, address: str, port: int | None, module_name: str, endpoint_proxy: str, *,
                discovered: bool) -> Target:
        module = self._config.modules[module_name]
        return Target(name=name, address=address, port=port or module.port, scheme=module.scheme,
                      module=module_name, endpoint_proxy=endpoint_proxy, discovered=discovered)

    def for_organization(self) -> Target | None:
        """The server the organization collector polls: as known, else reached by the name the organization
        section gives, with the organization's module (None without an organization collector)."""
        organization = self._config.organization
        if organization is None:
            return None
        return self.get(organization.server) or self._target(
            organization.server, organization.server, None, organization.module, "", discovered=False)

    def get(self, name: str) -> Target | None:
        return self._all.get(name.lower())
