"""What is current: the configuration, the catalog and the servers to poll, held in one place and swapped whole.

The servers (`Targets`) are the configured ones plus, when enabled, those the organization collector
discovered, cut down to this instance's shard. `/probe` may name any configured or discovered server (also
one of another shard), and nothing else: the exporter never connects to a host its configuration does not
name.

Like blackbox_exporter's `SafeConfig`: the poller and the HTTP handlers ask `current()` and get one frozen
`Runtime`, so no reader ever sees a new configuration with an old catalog or old targets. Nothing in a
`Runtime` changes after it is made; two things make a new one:
- `reload()` validates the new configuration and catalog completely before the swap; a bad file is logged
  and reported by `exchange_exporter_config_last_reload_successful` (set here, where the swap happens or
  not) while the old configuration keeps running; so is a file that would poll with less protection
  (`config.lowered_security`: a restart applies it). A file that loads to what is running changes nothing
  (blackbox compares a checksum of the file; comparing what was loaded also sees a password file or
  variable that changed under an unchanged file). The servers the organization collector discovered
  are carried over while the same organization is asked through the same server.
- `discovered()`: the organization collector listed the servers again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from .catalog import Catalog
from .catalog_data import CatalogError
from .config import Config, ConfigError, OrganizationConfig, config_warnings, load_config, lowered_security
from .model import OrgServerInfo
from .redact import Redactor
from .sharding import shard_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    name: str
    address: str
    port: int
    scheme: str
    module: str
    endpoint_proxy: str
    discovered: bool
    spn_hostname: str  # the host name in its Kerberos SPN (and NTLM target name): never its address

    @property
    def endpoint(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.scheme}://{host}:{self.port}/wsman"


class Targets:
    """Which servers there are and which this instance polls. Never changes: a discovery or a reload makes a new
    one, inside a new `Runtime`."""

    def __init__(self, config: Config, discovered: tuple[OrgServerInfo, ...] = ()):
        """The configured servers and, when the configuration asks for discovery, the servers
        `Get-ExchangeServer` listed (`discovered`), reached by FQDN with the organization's module."""
        self._config = config
        organization = config.organization
        self.discovered_from = discovered if organization is not None and organization.discover_servers else ()
        self._ports = {s.name.lower(): s.port for s in config.servers}  # the ports server entries name, else None
        self._all = {s.name.lower(): self._target(s.name, s.address, s.port, s.module, s.endpoint_proxy,
                                                  discovered=False, spn_hostname=s.spn_hostname)
                     for s in config.servers}
        over_limit = 0
        # every name a server is polled by (its name, address and SPN host): a configured server is the one
        # discovered when one of them is the latter's Name or FQDN (discovered again, it was polled twice), and
        # the organization's servers that none is, in any shard, are not polled (exchange_organization_server_polled)
        names = {name.lower() for t in self._all.values() for name in (t.name, t.address, t.spn_hostname)}
        for info in self.discovered_from:
            if any(key in names for key in info.keys()):  # configured, or listed twice
                continue
            # Get-ExchangeServer lists subscribed Edge Transport servers too, and Exchange 2010 ones beside 2016. An
            # Edge server sits outside the domain: the organization's credential is refused there, or the host is out
            # of reach; a 2010 server runs no collection script. Discovered, each raised ExchangeExporterCannotPoll,
            # and an Edge server's refusals counted towards pausing the module's credential for every server.
            # Discovery adopts what exchange_organization_server_polled counts; `servers:` can list others.
            if not info.may_run_eems():
                continue
            if len(self._all) >= config.limits.max_servers:
                over_limit += 1
                continue
            # its InternetWebProxy reaches its poll as what the organization said of it (collectors.endpoint_proxy)
            self._all[info.name.lower()] = self._target(info.name, info.fqdn or info.name, None, organization.module,
                                                        "", discovered=True, spn_hostname=info.fqdn)
            names.update(info.keys())  # its name, address and SPN host: its Name and FQDN
        self.known = len(self._all)  # of every shard
        self.names = frozenset(names)
        if over_limit:  # made at a reload or when the list changed, not at every organization poll
            log.warning("%d discovered servers are not polled: limits.max_servers (%d) is reached",
                        over_limit, config.limits.max_servers)
        index, count = config.shard
        shards = {name: shard_of(t.name, count) for name, t in self._all.items()}
        self.polled: tuple[Target, ...] = tuple(sorted(
            (t for name, t in self._all.items() if shards[name] == index), key=lambda t: t.name.lower()))
        self._polled = frozenset(t.name.lower() for t in self.polled)
        # this shard's servers by every name they are polled by (an address or SPN host is also a name: the
        # organization lists EX02, configured as MBX2 at ex02.contoso.com), its own name winning
        self.polled_names: dict[str, str] = {}
        for target in self.polled:
            for key in (target.address, target.spn_hostname):
                self.polled_names.setdefault(key.lower(), target.name)
        self.polled_names.update((target.name.lower(), target.name) for target in self.polled)
        # how many servers each shard polls: every replica says it of every shard, so that one no replica runs shows
        servers_of = Counter(shards.values())
        self.per_shard: tuple[int, ...] = tuple(servers_of[k] for k in range(count))

    def _target(self, name: str, address: str, port: int | None, module_name: str, endpoint_proxy: str, *,
                discovered: bool, spn_hostname: str | None = None) -> Target:
        """`spn_hostname`: the configured one, or for a discovered server the FQDN Active Directory gave;
        else the server's name."""
        module = self._config.modules[module_name]
        return Target(name=name, address=address, port=port or module.port, scheme=module.scheme,
                      module=module_name, endpoint_proxy=endpoint_proxy, discovered=discovered,
                      spn_hostname=spn_hostname or name)

    def for_organization(self) -> Target | None:
        """The server the organization collector polls: as known, else reached by the name the organization
        section gives, with the organization's module (None without an organization collector)."""
        organization = self._config.organization
        if organization is None:
            return None
        listed = self.get(organization.server)
        if listed is None:
            return self._target(organization.server, organization.server, None, organization.module, "",
                                discovered=False)
        if listed.module == organization.module:
            return listed
        # Another module than the server's own: reached with that module's scheme and port (Exchange's /PowerShell is
        # IIS's, http://SERVER/PowerShell/ on port 80, not the WinRM listener the server's module polls), unless the
        # server entry names a port of its own. With the server's module's, every organization poll asked
        # https://SERVER:5986/PowerShell, whatever the organization's module said.
        return self._target(listed.name, listed.address, self._ports.get(listed.name.lower()), organization.module,
                            listed.endpoint_proxy, discovered=listed.discovered, spn_hostname=listed.spn_hostname)

    def get(self, name: str) -> Target | None:
        return self._all.get(name.lower())

    def polls(self, name: str) -> bool:
        """Whether this instance polls the server named `name` (configured or discovered, of its shard)."""
        return name.lower() in self._polled


def _lists_the_same(old: OrganizationConfig | None, new: OrganizationConfig | None) -> bool:
    """Whether servers discovered under `old` are what `new` would list: the same organization asked through the
    same server. Its interval and module say how often and with which credential, not what it lists; comparing
    the whole section, which takes its interval from poll.interval, dropped every discovered server and its
    data at a reload that changed poll.interval alone."""
    return old is not None and new is not None and (old.name, old.server.lower()) == (new.name, new.server.lower())


@dataclass(frozen=True)
class Runtime:
    config: Config
    catalog: Catalog
    targets: Targets  # the configured servers and the last discovery's, as of this configuration


class SafeRuntime:
    def __init__(self, config: Config, catalog: Catalog, redactor: Redactor | None = None):
        self._current = Runtime(config, catalog, Targets(config))
        self._redactor = redactor
        self._lock = threading.Lock()  # one swap at a time: a reload never loses a discovery, nor the reverse
        self.last_reload_successful = True
        self.last_reload_timestamp = time.time()

    def current(self) -> Runtime:
        return self._current  # one attribute read: atomic, so no lock

    def reload(self) -> tuple[bool, str]:
        """Load the configuration file again and its catalog, and swap them in if both are valid and differ
        from what is running."""
        with self._lock:
            current = self._current
            source = current.config.source
            if source is None:
                return False, "the configuration was not loaded from a file"
            try:
                config = load_config(Path(source), current.config.shard_override)
                lowered = lowered_security(current.config, config)
                if lowered:
                    raise ConfigError("", f"refused because {lowered}; restart the exporter to poll with less "
                                          "protection")
                catalog = Catalog.load(config.catalog_file)
            except Exception as err:  # whatever went wrong (MemoryError, a bug), the reload failed
                self.last_reload_successful = False
                detail = err if isinstance(err, (ConfigError, CatalogError)) else f"unexpected {type(err).__name__}"
                message = f"reload failed, the running configuration is kept: {detail}"
                if self._redactor is not None:
                    message = self._redactor.scrub(message)
                log.error("%s", message)
                return False, message
            self.last_reload_successful = True
            self.last_reload_timestamp = time.time()
            if config == current.config and catalog.builds() == current.catalog.builds():
                log.info("configuration reloaded from %s: unchanged", source)
                return True, "configuration unchanged"
            if self._redactor is not None:
                self._redactor.add(config.secrets())
            carried = current.targets.discovered_from if _lists_the_same(current.config.organization,
                                                                         config.organization) else ()
            self._current = Runtime(config, catalog, Targets(config, carried))
            log.info("configuration reloaded from %s: %d servers", source, len(config.servers))
            for warning in config_warnings(config):  # as at start
                log.warning("%s", warning)
            return True, "configuration reloaded"

    def discovered(self, organization: OrganizationConfig, servers: tuple[OrgServerInfo, ...]) -> bool:
        """Adopt the servers an organization poll listed; False (nothing changes) when a reload changed which
        organization is asked while that poll ran, or when the list is the one already adopted."""
        with self._lock:
            current = self._current
            if not _lists_the_same(current.config.organization, organization) \
                    or current.targets.discovered_from == servers:
                return False
            self._current = replace(current, targets=Targets(current.config, servers))
            return True
