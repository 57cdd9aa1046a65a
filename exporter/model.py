"""The values that flow between the stages: raw facts -> interpreted state -> poll results.

Plain frozen dataclasses so each stage is a pure function that a test can call on a snapshot.
All datetimes are timezone-aware UTC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime

# ---------------------------------------------------------------- raw facts (parse.py)


@dataclass(frozen=True)
class RawEvent:
    id: int
    time: datetime
    message: str


@dataclass(frozen=True)
class RawLog:
    name: str
    length: int | None
    last_write: datetime | None
    tail: str


@dataclass(frozen=True)
class RawEndpoint:
    status: int
    duration_seconds: float | None
    error: str | None


@dataclass(frozen=True)
class RawServerFacts:
    """What collect_server.ps1 reported, normalised but not yet judged."""

    computer: str | None
    now: datetime | None
    exsetup_version: str | None
    build_source: str | None
    edge: bool
    service_installed: bool
    service_status: str | None  # .NET ServiceControllerStatus name, e.g. "Running"
    service_start_type: str | None  # .NET ServiceStartMode name, e.g. "Automatic"
    events: tuple[RawEvent, ...]
    log: RawLog | None
    endpoint: RawEndpoint | None
    errors: tuple[str, ...]


@dataclass(frozen=True)
class OrgServerInfo:
    name: str
    fqdn: str | None
    roles: str | None
    admin_display_version: str | None
    mitigations_enabled: bool | None
    mitigations_applied: tuple[str, ...]
    mitigations_blocked: tuple[str, ...]
    mitigations_applied_time: datetime | None
    data_collection_enabled: bool | None
    internet_web_proxy: str | None


@dataclass(frozen=True)
class RawOrganizationFacts:
    mitigations_enabled: bool | None
    servers: tuple[OrgServerInfo, ...]
    error_stage: str | None
    error_message: str | None
    dropped_label_values: int = 0  # mitigation IDs and server names refused as label values


# ---------------------------------------------------------------- catalog (catalog.py)


@dataclass(frozen=True)
class BuildVerdict:
    version: str
    product: str  # Exchange2013 | Exchange2016 | Exchange2019 | ExchangeSE
    cu: str  # RTM, CU14, SP1, ...
    update: str  # "" for a CU's own build, else e.g. "Nov24SUv2"
    released: date | None
    known: bool
    eems_supported: bool  # the build has EEMS (role is judged separately)
    cutoffs: dict[str, bool]  # cutoff id ("2023-03", "2026-06") -> compliant
    superseded_since: date | None  # release of the first newer build of the same CU
    product_support_end: date | None


# ---------------------------------------------------------------- interpretation (interpret.py)


@dataclass(frozen=True)
class EemsHistory:
    last_check: datetime | None
    last_success: datetime | None
    last_error: datetime | None
    last_error_reason: str | None
    fetch_errors: dict[str, int]  # reason -> 1008 events in the lookback window; every reason present


@dataclass(frozen=True)
class ServerState:
    name: str
    build: BuildVerdict | None
    edge: bool
    eems_supported: bool  # build has EEMS and the server is not Edge
    service_installed: bool
    service_state: str | None  # windows_exporter state name: running, stopped, start pending, ...
    service_start_mode: str | None  # windows_exporter start_mode: auto, manual, disabled, boot, system
    eems: EemsHistory
    endpoint_reachable: bool | None  # None when the optional check is off
    endpoint_duration_seconds: float | None
    collection_errors: tuple[str, ...]


# ---------------------------------------------------------------- poll results (poller.py)


@dataclass(frozen=True)
class CollectorOutcome:
    collector: str  # "server" | "organization"
    success: bool
    duration_seconds: float
    finished: datetime
    error_reason: str | None = None  # see docs/design.md section 4
    error_message: str | None = None  # never contains secrets


@dataclass
class ServerResult:
    """Latest poll of one server. `state` keeps the last good facts when a later poll fails."""

    name: str
    outcome: CollectorOutcome | None = None
    state: ServerState | None = None
    last_success: datetime | None = None


@dataclass
class OrganizationResult:
    name: str
    outcome: CollectorOutcome | None = None
    facts: RawOrganizationFacts | None = None
    last_success: datetime | None = None
    servers: dict[str, OrgServerInfo] = field(default_factory=dict)
