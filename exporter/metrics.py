"""Render the latest poll results as Prometheus metric families (the public contract: docs/metrics.md).

A pure function of a snapshot: each scrape builds fresh families, nothing global is mutated, and a test
can render any snapshot. Timestamps, not ages: ages are `time() - x` in PromQL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Iterable

from prometheus_client.core import InfoMetricFamily, Metric

from . import __version__
from .eems_patterns import FETCH_ERROR_REASONS
from .model import OrganizationResult, ServerResult

SERVICE = "MSExchangeMitigation"
SERVICE_STATES = ("stopped", "start pending", "stop pending", "running", "continue pending", "pause pending",
                  "paused", "unknown")
_PART = re.compile(r"[a-z][a-z0-9_.]{0,31}")
START_MODES = ("boot", "system", "auto", "manual", "disabled")


@dataclass(frozen=True)
class SelfStatus:
    catalog_newest_release: date
    poll_interval_seconds: float
    last_reload_successful: bool
    last_reload_timestamp: float


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


def _server_metrics(out: _Families, result: ServerResult) -> None:
    server = {"server": result.name}
    outcome = result.outcome
    out.add("exchange_up", "1 if the last WinRM poll of the server succeeded.", server,
            1 if outcome and outcome.success else 0)
    _collector_metrics(out, "server", server, outcome, result.last_success)
    state = result.state
    if state is None:
        return
    build = state.build
    if build is not None:
        out.info("exchange_build", "Exchange build from ExSetup.exe FileVersion (registry MsiInstallPath fallback).",
                 {**server, "product": build.product, "cu": build.cu, "update": build.update, "version": build.version})
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
        for cutoff, compliant in sorted(build.cutoffs.items()):
            out.add("exchange_eems_certificate_cutoff_compliant",
                    "1 if the build can still use mitigations signed after this OCS certificate cutoff.",
                    {**server, "cutoff": cutoff}, 1 if compliant else 0)
    out.add("exchange_server_edge", "1 for an Edge Transport server (registry EdgeTransportRole key), which has no EEMS.",
            server, 1 if state.edge else 0)
    out.add("exchange_eems_supported", "1 if the build and role have the Emergency Mitigation service (Mailbox, "
            "2016 CU22+, 2019 CU11+, SE).", server, 1 if state.eems_supported else 0)
    if state.service_installed:
        name = {**server, "name": SERVICE}
        for value in SERVICE_STATES:
            out.add("exchange_service_state", "Windows service state (Get-Service), windows_exporter state-set shape.",
                    {**name, "state": value}, 1 if state.service_state == value else 0)
        for value in START_MODES:
            out.add("exchange_service_start_mode", "Windows service start mode (Get-Service StartType).",
                    {**name, "start_mode": value}, 1 if state.service_start_mode == value else 0)
    eems = state.eems
    out.add("exchange_eems_last_check_timestamp_seconds",
            "Newest EEMS check attempt seen in the Application log or the MitigationService log.",
            server, _ts(eems.last_check))
    out.add("exchange_eems_last_success_timestamp_seconds",
            "Newest successful EEMS mitigation check (events 1005/1006 or an error-free log cycle).",
            server, _ts(eems.last_success))
    out.add("exchange_eems_last_error_timestamp_seconds",
            "Newest failed EEMS check (event 1008 or a Warning/Error log cycle).", server, _ts(eems.last_error))
    if eems.last_error_reason:
        out.info("exchange_eems_last_error", "Reason class of the newest failed EEMS check.",
                 {**server, "reason": eems.last_error_reason})
    if state.eems_supported or any(eems.fetch_errors.values()):
        for reason in FETCH_ERROR_REASONS:
            out.add("exchange_eems_fetch_errors",
                    "Event 1008 (MSExchange Mitigation Service) errors within the lookback window, by reason.",
                    {**server, "reason": reason}, eems.fetch_errors.get(reason, 0))
    if state.endpoint_reachable is not None:
        out.add("exchange_eems_endpoint_reachable",
                "1 if an HTTPS GET of the OCS mitigation endpoint from the server answered 200.",
                server, 1 if state.endpoint_reachable else 0)
        out.add("exchange_eems_endpoint_duration_seconds", "Duration of that HTTPS GET, run on the server.",
                server, state.endpoint_duration_seconds)
    for part in sorted({_part(error) for error in state.collection_errors}):
        out.add("exchange_collector_partial_failure",
                "1 for each part of a successful poll that could not be read (e.g. events: no right to the log).",
                {"collector": "server", **server, "part": part}, 1)


def _part(collection_error: str) -> str:
    """The `part` label: the error's prefix (`events: ...`) when it has the shape of a part name, else `other`,
    since the errors come from the server's own output."""
    part = collection_error.split(":", 1)[0].strip()
    return part if _PART.fullmatch(part) else "other"


def _collector_metrics(out: _Families, collector: str, labels: dict[str, str], outcome, last_success) -> None:
    labels = {"collector": collector, **labels}
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


def _organization_metrics(out: _Families, org: OrganizationResult, server_names: dict[str, str]) -> None:
    _collector_metrics(out, "organization", {"organization": org.name}, org.outcome, org.last_success)
    facts = org.facts
    if facts is None:
        return
    out.add("exchange_collector_dropped_label_values",
            "Values in the collector's last successful output refused as label values: over the per-list cap or not "
            "of the expected shape (mitigation IDs, server names).",
            {"collector": "organization", "organization": org.name}, facts.dropped_label_values)
    if facts.mitigations_enabled is not None:
        out.add("exchange_eems_mitigations_enabled", "MitigationsEnabled (Get-OrganizationConfig / Get-ExchangeServer).",
                {"scope": "organization", "organization": org.name}, 1 if facts.mitigations_enabled else 0)
    for info in facts.servers:
        server = {"server": server_names.get(info.name.lower(), info.name)}
        if info.mitigations_enabled is not None:
            out.add("exchange_eems_mitigations_enabled",
                    "MitigationsEnabled (Get-OrganizationConfig / Get-ExchangeServer).",
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


def server_families(result: ServerResult) -> list[Metric]:
    out = _Families()
    _server_metrics(out, result)
    return list(out)


def organization_families(organization: OrganizationResult, server_names: dict[str, str]) -> list[Metric]:
    out = _Families()
    _organization_metrics(out, organization, server_names)
    return list(out)


def self_families(self_status: SelfStatus) -> list[Metric]:
    out = _Families()
    _self_metrics(out, self_status)
    return list(out)


def render(servers: Iterable[ServerResult], organization: OrganizationResult | None,
           self_status: SelfStatus | None) -> list[Metric]:
    """All families for a snapshot, merged per metric name (for /probe and tests; /metrics uses exposition.py)."""
    out = _Families()
    names: dict[str, str] = {}
    for result in servers:
        names[result.name.lower()] = result.name
        _server_metrics(out, result)
    if organization is not None:
        _organization_metrics(out, organization, names)
    if self_status is not None:
        _self_metrics(out, self_status)
    return list(out)


def _self_metrics(out: _Families, self_status: SelfStatus) -> None:
    out.info("exchange_exporter_build", "Version of exchange-eems-exporter.", {"version": __version__})
    out.add("exchange_catalog_newest_release_timestamp_seconds",
            "Release date of the newest build in the exporter's build catalog (staleness check).", {},
            _ts(self_status.catalog_newest_release))
    out.add("exchange_exporter_poll_interval_seconds", "Configured background poll interval.", {},
            self_status.poll_interval_seconds)
    out.add("exchange_exporter_config_last_reload_successful", "1 if the last configuration (re)load succeeded.",
            {}, 1 if self_status.last_reload_successful else 0)
    out.add("exchange_exporter_config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully.", {}, self_status.last_reload_timestamp)
