"""Render the latest poll results as Prometheus metric families (the public contract: docs/metrics.md), and
encode them as the /metrics and /probe bodies.

Families are a pure function of a snapshot: nothing global is mutated, and a test can render any snapshot.
Timestamps, not ages: ages are `time() - x` in PromQL.

For thousands of servers, each server's sample lines are formatted once per poll, not per scrape
(`CachedExposition`). A fleet of 2,000 servers is about 70,000 samples; formatting them through
prometheus_client on every scrape costs a third of a second of CPU. A server's result only changes when it is
polled, so its lines are cached with the result object they came from, and a scrape only joins cached lines
under one HELP/TYPE header per family. The output is the same Prometheus text format (or OpenMetrics, when
negotiated) that prometheus_client writes; the process/GC/platform families still come from prometheus_client
itself. /probe goes through the same encoder, so the two endpoints cannot drift apart.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

from prometheus_client import CollectorRegistry
from prometheus_client.core import InfoMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString

from . import __version__
from .component_state import STATES as COMPONENT_STATES
from .eems_log import FETCH_ERROR_REASONS
from .model import BuildVerdict, OrganizationResult, ServerResult
from .sharding import shard_of
from .windows_service import START_MODES, STATE_LABELS

SERVICE = "MSExchangeMitigation"
OPENMETRICS = "application/openmetrics-text"
_EOF = b"# EOF\n"


@dataclass(frozen=True)
class SelfStatus:
    catalog_newest_release: date
    poll_interval_seconds: float
    last_reload_successful: bool
    last_reload_timestamp: float
    credential_paused: dict[str, bool] = field(default_factory=dict)  # module -> its polls are paused
    servers: int = 0  # configured plus discovered, of every shard
    server_names: frozenset[str] = frozenset()  # their names, addresses and SPN hosts, lower case
    shard: tuple[int, int] = (0, 1)  # this instance's K/N
    shard_server_names: dict[str, str] = field(default_factory=dict)  # this shard's servers by each name, lower case
    shard_servers: tuple[int, ...] = ()  # the servers of each shard, by index
    catalog_checked: date | None = None  # the day the catalog was last known current (default: its newest release)
    probe_targets: tuple[str, ...] = ()  # probe-only (poll.background: false): the servers only a /probe polls
    start_time: float | None = None  # when this exporter started (Unix seconds); a reload keeps it


def _ts(value: datetime | date | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime(value.year, value.month, value.day, tzinfo=timezone.utc).timestamp()


class _Families:
    """Metric families created on first use, in a stable order, each with HELP naming its source."""

    def __init__(self) -> None:
        self._families: dict[str, Metric] = {}

    def add(self, name: str, help_text: str, labels: dict[str, str], value: float | None) -> None:
        if value is None:
            return
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = Metric(name, help_text, "gauge")
        family.add_sample(name, labels, float(value))

    def info(self, name: str, help_text: str, labels: dict[str, str]) -> None:
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = InfoMetricFamily(name, help_text)
        family.add_sample(f"{name}_info", labels, 1.0)

    def __iter__(self):
        return iter(self._families.values())


def server_families(result: ServerResult) -> list[Metric]:
    out = _Families()
    server = {"server": result.name}
    collector = {"collector": "server", **server}
    outcome = result.outcome
    out.add("exchange_up", "1 if the last WinRM poll of the server succeeded.", server,
            1 if outcome and outcome.success else 0)
    _collector_metrics(out, collector, outcome, result.last_success)
    state = result.state
    if state is None:
        return list(out)
    build = state.build
    if build is not None:
        out.info("exchange_build", "Exchange build from ExSetup.exe FileVersion (fallbacks: registry MsiInstallPath, "
                 "then Get-ExchangeServer AdminDisplayVersion, CU level only); source names which one.",
                 {**server, "product": build.product, "cu": build.cu, "update": build.update, "version": build.version,
                  "source": state.build_source or "unknown"})
        out.add("exchange_build_known", "1 if the build is in the exporter's build catalog.", server,
                1 if build.known else 0)
        out.add("exchange_build_release_timestamp_seconds", "Release date of the server's build (build catalog).",
                server, _ts(build.released))
        out.add("exchange_build_superseded_timestamp_seconds",
                "Release date of the first newer build of the same CU; absent on the newest known build of its CU.",
                server, _ts(build.superseded_since))
        out.add("exchange_product_support_end_timestamp_seconds",
                "End of extended support of the server's Exchange product; absent when it has no fixed end.",
                server, _ts(build.product_support_end))
        _update_path_metrics(out, server, build)
        for cutoff, compliant in sorted(build.cutoffs.items()):
            out.add("exchange_eems_certificate_cutoff_compliant",
                    "1 if the build can still use mitigations signed after this OCS certificate cutoff.",
                    {**server, "cutoff": cutoff}, 1 if compliant else 0)
    out.add("exchange_server_edge", "1 for an Edge Transport server (registry EdgeTransportRole key), which has no EEMS.",
            server, 1 if state.edge else 0)
    for component, requester, local in state.component_states or ():
        for value in COMPONENT_STATES:
            out.add("exchange_server_component_local_state",
                    "State a requester set for an Exchange server component (ServerWideOffline: maintenance mode) in "
                    "the server's registry, state-set shape; read by an UNCONFIRMED format (unrecognised: another).",
                    {**server, "component": component, "requester": requester, "state": value},
                    1 if local == value else 0)
    if state.eems_supported is not None:  # an unknown build without a trace of EEMS: no series, not "0"
        out.add("exchange_eems_supported", "1 if the build and role have the Emergency Mitigation service (Mailbox, "
                "2016 CU22+, 2019 CU11+, SE; where the build is unknown, if the server shows the service, its log "
                "folder or its events).", server, 1 if state.eems_supported else 0)
    if state.service_installed is not False:  # installed, or not known: the state-set then says "unknown"
        name = {**server, "name": SERVICE}
        for value in STATE_LABELS:
            out.add("exchange_service_state", "Windows service state (Get-Service), windows_exporter state-set shape; "
                    "unknown when the account may not query the service.",
                    {**name, "state": value}, 1 if state.service_state == value else 0)
        for value in START_MODES.values() if state.service_start_mode else ():  # no series rather than a wrong mode
            out.add("exchange_service_start_mode", "Windows service start mode (Get-Service StartType, else the "
                    "service's registry Start value).",
                    {**name, "start_mode": value}, 1 if state.service_start_mode == value else 0)
    eems = state.eems
    out.add("exchange_eems_last_activity_timestamp_seconds",
            "Newest trace of the Emergency Mitigation service: an event of any id from its source, a log line, "
            "or the newest write into its log folder.", server, _ts(eems.last_activity))
    if state.eems_supported:
        out.add("exchange_eems_failing", "1 while the two newest EEMS checks failed to fetch mitigations, one "
                "after the other (no hourly check fits between them or since).", server, 1 if eems.failing else 0)
    out.add("exchange_eems_last_check_timestamp_seconds",
            "Newest EEMS check attempt seen in the Application log or the MitigationService log.",
            server, _ts(eems.last_check))
    out.add("exchange_eems_last_success_timestamp_seconds",
            "Newest confirmed successful EEMS check (events 1005/1006 or an error-free log cycle); may never "
            "appear on a healthy server.", server, _ts(eems.last_success))
    out.add("exchange_eems_last_error_timestamp_seconds",
            "Newest failed EEMS fetch (a 1008 or a Warning/Error log line about fetching mitigations).",
            server, _ts(eems.last_error))
    if eems.last_error_reason:
        out.info("exchange_eems_last_error", "Reason class of the newest failed EEMS check.",
                 {**server, "reason": eems.last_error_reason})
    if state.eems_supported or any(eems.fetch_errors.values()):
        for reason in FETCH_ERROR_REASONS:
            out.add("exchange_eems_fetch_errors",
                    "Event 1008 (MSExchange Mitigation Service) fetch errors within the lookback window, by reason.",
                    {**server, "reason": reason}, eems.fetch_errors.get(reason, 0))
        out.add("exchange_eems_failure_runs",
                "Runs of failed EEMS checks (one after the other, no success between) within the lookback window: "
                "an outage is one run, each failure among good checks another.", server, eems.failure_runs)
        out.add("exchange_eems_other_errors",
                "Event 1008 errors within the lookback window that are not about fetching mitigations.",
                server, eems.other_errors)
        out.add("exchange_eems_log_other_errors",
                "Warning/Error lines of the EEMS log within the lookback window that are not about fetching "
                "mitigations (e.g. a blocked mitigation); they fail no check.", server, eems.log_other_errors)
    for endpoint in state.endpoints:
        labels = {**server, "endpoint": endpoint.endpoint}
        out.add("exchange_eems_endpoint_reachable",
                "1 if an HTTPS GET of the OCS endpoint from the server (WinHTTP proxy, revocation checked) answered 200.",
                labels, 1 if endpoint.reachable else 0)
        out.add("exchange_eems_endpoint_duration_seconds", "Duration of that HTTPS GET, run on the server.",
                labels, endpoint.duration_seconds)
        out.info("exchange_eems_endpoint_result", "Why that HTTPS GET failed (ok when it answered 200).",
                 {**labels, "reason": endpoint.reason})
        if endpoint.proxy is not None and endpoint.proxy_source is not None:
            out.info("exchange_eems_endpoint_proxy",
                     "The proxy that HTTPS GET went through (empty: direct), where it came from (configured, "
                     "internet_web_proxy from Active Directory, winhttp, none), and whether the monitoring account's "
                     "default credentials were offered to it (poll.endpoint_proxy_default_credentials).",
                     {**labels, "proxy": endpoint.proxy, "source": endpoint.proxy_source,
                      "default_credentials": "true" if endpoint.proxy_credentials else "false"})
    out.add("exchange_server_clock_offset_seconds",
            "The server's clock minus the exporter's, in its last successful poll: the collection script's time "
            "against the exporter's in the middle of the window it was read in (sending the command to the answer, "
            "less the script's stages). Off by at most half that window, never more than half "
            "exchange_collector_duration_seconds. Absent when the script did not say its time.",
            server, state.clock_offset_seconds)
    for stage, seconds in state.stage_seconds:
        out.add("exchange_eems_script_stage_seconds",
                "Seconds the collection script spent in each stage on the server (Measure-Command), in its last "
                "successful run: build, service, events (the Application log query), log, endpoint.",
                {**server, "stage": stage}, seconds)
    for failure in state.collection_errors:
        out.add("exchange_collector_partial_failure", PARTIAL_FAILURE_HELP,
                {**collector, "part": failure.part, "reason": failure.reason}, 1)
    return list(out)



def _update_path_metrics(out: _Families, server: dict[str, str], build: BuildVerdict) -> None:
    target = build.next_build
    out.info("exchange_build_update_path",
             "Servicing of the server's CU (serviced, cu_not_serviced, out_of_support) and the build to install next; "
             "next_* labels are empty on the newest build of the path.",
             {**server, "servicing": build.servicing, "next_product": target.product if target else "",
              "next_cu": target.cu if target else "", "next_update": target.update if target else "",
              "next_version": target.version if target else ""})
    out.add("exchange_build_cu_servicing_end_timestamp_seconds",
            "First day the server's CU received no more security updates; absent while it is serviced.",
            server, _ts(build.cu_servicing_end))
    out.add("exchange_build_update_path_timestamp_seconds",
            "Since when a newer build has existed on the server's update path (newer update of a serviced CU, newer "
            "CU, or the product to migrate to); absent on the newest build of the path.",
            server, _ts(build.update_path_since))


def _collector_metrics(out: _Families, labels: dict[str, str], outcome, last_success) -> None:
    if outcome is None:
        return
    out.add("exchange_collector_success", "1 if the collector's last run succeeded.", labels,
            1 if outcome.success else 0)
    out.add("exchange_collector_duration_seconds", "Duration of the collector's last run.", labels,
            outcome.duration_seconds)
    out.add("exchange_collector_last_success_timestamp_seconds", "When the collector last succeeded.", labels,
            _ts(last_success))
    if not outcome.success:
        out.add("exchange_collector_error", "1 while the collector's last run failed, with the reason class.",
                {**labels, "reason": outcome.error_reason or "internal_error"}, 1)


# One family, two collectors: a server's parts, and the organization output's fields of the wrong type.
PARTIAL_FAILURE_HELP = ("1 for each part of a successful poll that could not be read, with the reason class "
                        "(e.g. events/access_denied: no right to the Application log).")
# One family, two scopes: the organization's setting and each server's.
MITIGATIONS_ENABLED_HELP = "MitigationsEnabled (Get-OrganizationConfig / Get-ExchangeServer)."
POLLED_HELP = ("For each Mailbox server Get-ExchangeServer lists (label name: its Name): 1 if this exporter's "
               "configuration polls it (configured or discovered, in any shard), 0 if not: nothing here watches its EEMS.")


def organization_families(org: OrganizationResult, status: SelfStatus) -> list[Metric]:
    """The organization collector's series. `status`: the names any instance of this configuration polls a server
    by, the servers of this instance's shard by each of their names (a server's series take the name it is polled
    by, as its exchange_up does), and the shard.

    Every instance runs the organization collector, but each server's series come from one of them, so that N
    shards do not say them N times (N alerts for one server, dashboards counting it N times): the instance that
    polls it or, for a server none polls, the one of the shard its Name falls to; the organization's own setting
    comes from shard 0. The collector's own state is each instance's."""
    index, count = status.shard
    out = _Families()
    collector = {"collector": "organization", "organization": org.name}
    _collector_metrics(out, collector, org.outcome, org.last_success)
    facts = org.facts
    if facts is None:
        return list(out)
    out.add("exchange_collector_dropped_label_values",
            "Values in the collector's last successful output refused as label values: over the per-list cap or not "
            "of the expected shape (mitigation IDs, server names).", collector, facts.dropped_label_values)
    if facts.parse_notes:  # a field of the wrong type was left out: what depends on it is unknown, not absent
        out.add("exchange_collector_partial_failure", PARTIAL_FAILURE_HELP,
                {**collector, "part": "parse", "reason": "other"}, 1)
    if facts.mitigations_enabled is not None and index == 0:
        out.add("exchange_eems_mitigations_enabled", MITIGATIONS_ENABLED_HELP,
                {"scope": "organization", "organization": org.name}, 1 if facts.mitigations_enabled else 0)
    elif index == 0 and not facts.mitigations_enabled_unreadable:
        # Get-OrganizationConfig without MitigationsEnabled: a build before EEMS answered (HealthChecker: "Failed to
        # query config"), whose Get-ExchangeServer has no Mitigations* either: no setting, no blocked list. One of
        # the wrong type is not that: part "parse" above says it, once.
        out.add("exchange_collector_partial_failure", PARTIAL_FAILURE_HELP,
                {**collector, "part": "settings", "reason": "not_found"}, 1)
    for info in facts.servers:
        polled = any(key in status.server_names for key in info.keys())
        mine = next((status.shard_server_names[key] for key in info.keys() if key in status.shard_server_names), None)
        if mine is None and (polled or shard_of(info.name, count) != index):
            continue  # another instance says it
        server = {"server": mine or info.name}
        if not info.may_run_eems():
            # HealthChecker reads a server's Mitigations* only when it is no Edge server (CSS-Exchange
            # Invoke-AnalyzerSecurityMitigationService.ps1). What the AD object of an Edge server holds there is no
            # EEMS setting: a false MitigationsEnabled or a blocked ID on it raised ExchangeEEMSMitigationsDisabled /
            # ...Blocked for a server without EEMS; an Exchange 2010 server was ExchangeServerNotPolled forever.
            continue
        # `name`: Get-ExchangeServer's Name, the same in every exporter of the organization whatever name each
        # polls the server by (`server`): another site's exporter polling it by its FQDN says 1 under that name
        out.add("exchange_organization_server_polled", POLLED_HELP, {**server, "name": info.name}, 1 if polled else 0)
        if info.mitigations_enabled is not None:
            out.add("exchange_eems_mitigations_enabled", MITIGATIONS_ENABLED_HELP,
                    {"scope": "server", **server}, 1 if info.mitigations_enabled else 0)
        for mitigation in info.mitigations_applied:
            out.add("exchange_eems_mitigation_applied", "1 for each mitigation ID in MitigationsApplied.",
                    {**server, "mitigation": mitigation}, 1)
        for mitigation in info.mitigations_blocked:
            out.add("exchange_eems_mitigation_blocked", "1 for each mitigation ID in MitigationsBlocked.",
                    {**server, "mitigation": mitigation}, 1)
        out.add("exchange_eems_mitigations_applied_timestamp_seconds",
                "MitigationsAppliedTime (Get-ExchangeServer) where present; its exact meaning is unconfirmed.",
                server, _ts(info.mitigations_applied_time))
        if info.data_collection_enabled is not None:
            out.add("exchange_eems_data_collection_enabled", "DataCollectionEnabled (Get-ExchangeServer).", server,
                    1 if info.data_collection_enabled else 0)
    return list(out)


def self_families(self_status: SelfStatus) -> list[Metric]:
    out = _Families()
    out.info("exchange_exporter_build", "Version of exchange-eems-exporter.", {"version": __version__})
    out.add("exchange_catalog_newest_release_timestamp_seconds",
            "Release date of the newest build in the exporter's build catalog (staleness check).", {},
            _ts(self_status.catalog_newest_release))
    out.add("exchange_catalog_checked_timestamp_seconds",
            "Day the build catalog was last known to be current: when `catalog update` last compared it with "
            "Microsoft's list, or its newest build's release if later (ExchangeCatalogStale).", {},
            _ts(max(self_status.catalog_checked or self_status.catalog_newest_release,
                    self_status.catalog_newest_release)))
    # ExchangeExporterRestarting counts its changes. process_start_time_seconds says the same, but prometheus_client
    # reads it from /proc (Linux only), and the reload timestamp also changes at every reload, which starts nothing.
    out.add("exchange_exporter_start_time_seconds", "When this exporter started, since the Unix epoch; a reload keeps "
            "it (ExchangeExporterRestarting).", {}, self_status.start_time)
    out.add("exchange_exporter_poll_interval_seconds", "Configured background poll interval.", {},
            self_status.poll_interval_seconds)
    out.add("exchange_exporter_servers", "Exchange servers this exporter knows: configured plus discovered, of every "
            "shard.", {}, self_status.servers)
    out.info("exchange_exporter_shard", "The shard this instance polls (--shard K/N, or the configuration's shard).",
             {"shard": str(self_status.shard[0]), "shards": str(self_status.shard[1])})
    # `shards`: shard K of another N holds other servers, so only a replica running with this N covers shard K here
    for index, count in enumerate(self_status.shard_servers):
        out.add("exchange_exporter_shard_servers", "Exchange servers each shard of this configuration polls, "
                "configured plus discovered; every instance says it of every shard (ExchangeExporterShardMissing).",
                {"shard": str(index), "shards": str(self_status.shard[1])}, count)
    # Probe-only: Prometheus's target list, not this configuration, decides which servers are polled. Each server a
    # /probe would poll, so that a rule can find the ones no probe result (`exchange_up`) comes for.
    for name in self_status.probe_targets:
        out.add("exchange_exporter_probe_target", "1 for each server this exporter polls only when a /probe asks "
                "for it (poll.background: false); one without exchange_up is never polled (ExchangeServerNotProbed).",
                {"server": name}, 1)
    out.add("exchange_exporter_config_last_reload_successful", "1 if the last configuration (re)load succeeded.",
            {}, 1 if self_status.last_reload_successful else 0)
    out.add("exchange_exporter_config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully.", {}, self_status.last_reload_timestamp)
    for module, paused in sorted(self_status.credential_paused.items()):
        out.add("exchange_exporter_credential_paused", "1 while the module's polls are paused because servers kept "
                "rejecting its credential (so that the account is not locked out).", {"module": module},
                1 if paused else 0)
    return list(out)


@dataclass(frozen=True)
class _Family:
    name: str  # OpenMetrics family name (without _info for info metrics)
    type: str  # gauge | info
    help: str
    lines: tuple[str, ...]


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _line(name: str, labels: dict[str, str], value: float) -> str:
    if labels:
        rendered = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sorted(labels.items()))
        return f"{name}{{{rendered}}} {floatToGoString(value)}\n"
    return f"{name} {floatToGoString(value)}\n"


def _format(families: list[Metric]) -> list[_Family]:
    return [
        _Family(f.name, f.type, f.documentation, tuple(_line(s.name, s.labels, s.value) for s in f.samples))
        for f in families
    ]


def _header(family: _Family, openmetrics: bool) -> str:
    if openmetrics:  # OpenMetrics escapes a HELP text as it escapes a label value
        return f"# HELP {family.name} {_escape_label(family.help)}\n# TYPE {family.name} {family.type}\n"
    name = f"{family.name}_info" if family.type == "info" else family.name
    help_text = family.help.replace("\\", "\\\\").replace("\n", "\\n")
    return f"# HELP {name} {help_text}\n# TYPE {name} gauge\n"


class CachedExposition:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._servers: dict[str, tuple[ServerResult, list[_Family]]] = {}

    def _server(self, result: ServerResult) -> list[_Family]:
        key = result.name.lower()
        cached = self._servers.get(key)
        if cached is not None and cached[0] is result:
            return cached[1]
        families = _format(server_families(result))
        self._servers[key] = (result, families)
        return families

    def body(self, servers: list[ServerResult], organization: OrganizationResult | None,
             self_status: SelfStatus, base: CollectorRegistry, accept: str) -> tuple[bytes, str]:
        """/metrics: every server's latest result (cached lines), the organization, the exporter's own
        metrics, after `base` (the process metrics, from prometheus_client)."""
        with self._lock:
            parts = [self._server(result) for result in servers]
            current = {r.name.lower() for r in servers}
            for stale in [k for k in self._servers if k not in current]:
                del self._servers[stale]
        if organization is not None:
            parts.append(_format(organization_families(organization, self_status)))
        parts.append(_format(self_families(self_status)))
        return _encode(parts, base, accept)


def probe_body(result: ServerResult, accept: str) -> tuple[bytes, str]:
    """/probe: one poll's metrics, encoded as /metrics encodes them (a probe's result is new: nothing cached)."""
    return _encode([_format(server_families(result))], None, accept)


def choose_format(accept: str | None) -> tuple:
    """prometheus_client's choose_encoder for an Accept header, which raises TypeError on a version it cannot
    compare (`version=a`): such a header asks for no format we know, so the text format answers, as for none.
    It raised out of the handler: a 500 and a logged traceback per request."""
    try:
        return choose_encoder(accept or "")
    except (TypeError, ValueError):
        return choose_encoder("")


def _encode(parts: list[list[_Family]], base: CollectorRegistry | None, accept: str) -> tuple[bytes, str]:
    """The families of `parts` merged per name, in the format `accept` asks for, after `base`'s."""
    encoder, content_type = choose_format(accept)
    openmetrics = content_type.startswith(OPENMETRICS)
    merged: dict[str, tuple[_Family, list[str]]] = {}
    for families in parts:
        for family in families:
            entry = merged.get(family.name)
            if entry is None:
                merged[family.name] = (family, list(family.lines))
            else:
                entry[1].extend(family.lines)
    chunks = [_header(family, openmetrics) + "".join(lines) for family, lines in merged.values()]
    ours = "".join(chunks).encode("utf-8")
    if base is None:
        return ours + (_EOF if openmetrics else b""), content_type
    prefix = encoder(base)
    if openmetrics and prefix.endswith(_EOF):
        return prefix[: -len(_EOF)] + ours + _EOF, content_type
    return prefix + ours, content_type
