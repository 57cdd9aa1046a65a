"""The values that flow between the stages: raw facts -> interpreted state -> poll results.

Plain frozen dataclasses so each stage is a pure function that a test can call on a snapshot.
All datetimes are timezone-aware UTC.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from datetime import date, datetime

# ---------------------------------------------------------------- raw facts (parse.py)


@dataclass(frozen=True)
class RawEvent:
    id: int
    time: datetime
    message: str  # "" when Windows could not format it (Message null)
    data: tuple[str, ...] = ()  # the insertion strings (EventRecord.Properties) the message is formatted from

    @property
    def text(self) -> str:
        """What a decision may read: the message and the insertion strings, so a 1008 whose message could not
        be formatted still says what it is about."""
        return "\n".join((self.message, *self.data)) if self.data else self.message


@dataclass(frozen=True)
class RawLog:
    """One EEMS log file: its newest whole lines (at most the script's LogTailBytes characters over all files)."""

    last_write: datetime | None  # a lower bound of the newest write: it may not move while EEMS holds the file open
    tail: str


@dataclass(frozen=True)
class RawEndpoint:
    name: str  # "GetExchangeMitigations" | "GetExchangeConfig"
    status: int  # HTTP status, 0 without an answer
    duration_seconds: float | None
    web_status: str | None  # .NET WebExceptionStatus name (invariant), e.g. "TrustFailure"; None on success
    revocation_failed: bool  # the request failed with revocation checked and succeeded without
    proxy: str | None = None  # the proxy URL the request went through ("" direct); None when not reported
    proxy_source: str | None = None  # parameter (the exporter's) | winhttp | none
    proxy_credentials: bool = False  # the account's default credentials were offered to the proxy


@dataclass(frozen=True)
class RawError:
    """An error the script caught. `id` (FullyQualifiedErrorId), `category` and `type` are invariant across
    Windows display languages; only `message` is localized, so decisions never read the message."""

    part: str  # build | service | service_key | events | log | winhttp | parse
    id: str
    category: str
    type: str
    message: str
    inner: str = ""  # the type of the exception's InnerException: a cmdlet may wrap the one that says what happened


@dataclass(frozen=True)
class RawCulture:
    """The server culture's time patterns: the log may write culture-formatted times (eems_log.py reads them)."""

    date_pattern: str  # .NET ShortDatePattern, e.g. "M/d/yyyy"
    time_pattern: str  # .NET LongTimePattern, e.g. "h:mm:ss tt"
    am: str
    pm: str


@dataclass(frozen=True)
class RawComponentState:
    """One value of the registry key HKLM\\SOFTWARE\\Microsoft\\ExchangeServer\\v15\\ServerComponentStates\\<component>:
    a requester's entry, as the server holds it (its format is UNCONFIRMED: component_state.py reads it)."""

    component: str  # ServerWideOffline
    requester: str  # Maintenance, Functional, HealthAPI, Sidelined, Deployment, ... (the value's name)
    value: str


@dataclass(frozen=True)
class RawServerFacts:
    """What collect_server.ps1 reported, normalised but not yet judged."""

    now: datetime | None
    culture: RawCulture | None
    exsetup_version: str | None
    build_source: str | None
    edge: bool
    service_key_start: int | None  # Start value of the service's registry key; None when unread or absent
    service_queried: bool  # Get-Service answered (it cannot tell "not installed" from "access denied")
    service_status: str | None  # .NET ServiceControllerStatus name, e.g. "Running"
    service_start_type: str | None  # .NET ServiceStartMode name, e.g. "Automatic"
    events: tuple[RawEvent, ...]
    log_folder: bool | None  # the MitigationService log folder exists; None when not looked at
    logs: tuple[RawLog, ...]  # newest first
    endpoints: tuple[RawEndpoint, ...]  # empty when the optional check is off
    errors: tuple[RawError, ...]
    utc_offset_minutes: int | None = None  # the server's local time minus UTC, now (culture log times may be local)
    # The server's local time minus UTC over the lookback: (since, minutes) pairs, since ascending, each offset in force
    # from its UTC instant on, the first also before it; empty when the script did not say (an older endpoint)
    utc_offsets: tuple[tuple[datetime, int], ...] = ()
    stage_seconds: tuple[tuple[str, float], ...] = ()  # (stage, seconds) the script measured (Measure-Command)
    error_counts: tuple[tuple[str, int], ...] = ()  # (part, error records the script met); it sends a few of them
    # The server's registry entries of ServerWideOffline per requester; None when not read (an older script, the key
    # unreadable), () when the key does not exist
    component_states: tuple[RawComponentState, ...] | None = None


@dataclass(frozen=True)
class OrgServerInfo:
    name: str
    fqdn: str | None
    mailbox_role: bool | None  # ServerRole includes Mailbox, where EEMS runs (None: not said)
    admin_display_version: str | None
    mitigations_enabled: bool | None
    mitigations_applied: tuple[str, ...]
    mitigations_blocked: tuple[str, ...]
    mitigations_applied_time: datetime | None
    data_collection_enabled: bool | None
    internet_web_proxy: str | None

    def may_run_eems(self) -> bool:
        """Whether EEMS may run on this server, as far as the organization says: the Mailbox role (EEMS never runs
        on Edge Transport; a role not said counts as Mailbox) on Exchange 2013 or later (AdminDisplayVersion
        "Version 15.x", or none said). Exchange 2010 and older (14.x, which can share an organization with 2016)
        never have EEMS, and their PowerShell 2.0 runs no collection script. Microsoft's own scripts keep the same
        servers (CSS-Exchange CVE-2023-21709.ps1: `ServerRole -ne "Edge"`, `AdminDisplayVersion -like "Version 15*"`)."""
        major = re.match(r"Version ([0-9]{1,9})\.", self.admin_display_version or "")
        return self.mailbox_role is not False and (major is None or int(major.group(1)) >= 15)

    def keys(self) -> tuple[str, ...]:
        """The names (lower case) a configured server may have that this one is: its Name, then its FQDN (the
        README builds `servers:` from Get-ExchangeServer's Fqdn). Discovery, what a poll knows of its server and
        the organization's series of a server all match by these."""
        return (self.name.lower(), self.fqdn.lower()) if self.fqdn else (self.name.lower(),)


@dataclass(frozen=True)
class RawOrganizationFacts:
    mitigations_enabled: bool | None
    servers: tuple[OrgServerInfo, ...]
    error_stage: str | None
    error_message: str | None
    dropped_label_values: int = 0  # mitigation IDs and server names refused as label values
    parse_notes: tuple[str, ...] = ()  # fields of the wrong type, left out (parse._Notes), as a server's output says
    # MitigationsEnabled (or the organization object holding it) was sent but of the wrong type: unknown, and one of
    # the parse_notes; not a setting the build lacks (absent or null)
    mitigations_enabled_unreadable: bool = False


# ---------------------------------------------------------------- catalog (catalog.py)


@dataclass(frozen=True)
class NextBuild:
    """The build a server should go to next on its update path."""

    version: str
    product: str
    cu: str
    update: str
    released: date


@dataclass(frozen=True)
class BuildVerdict:
    version: str
    product: str  # Exchange2013 | Exchange2016 | Exchange2019 | ExchangeSE | unknown (a newer Exchange version)
    cu: str  # RTM, CU14, SP1, ...
    update: str  # "" for a CU's own build, else e.g. "Nov24SUv2"
    released: date | None
    known: bool
    eems_supported: bool | None  # the build has EEMS (role is judged separately); None: product unknown
    flighting_supported: bool | None  # the build has Feature Flighting (uses GetExchangeConfig); None: product unknown
    cutoffs: dict[str, bool]  # cutoff id ("2023-03", "2026-06") -> compliant
    superseded_since: date | None  # release of the first newer build of the same CU
    product_support_end: date | None
    servicing: str  # "serviced" | "cu_not_serviced" | "out_of_support" (the product gets no updates at all) | "unknown"
    cu_servicing_end: date | None  # first day the CU got no more security updates; None while serviced
    next_build: NextBuild | None  # where the update path leads; None on the newest build of the path
    update_path_since: date | None  # since when a newer build has existed on this server's update path


# ---------------------------------------------------------------- interpretation (interpret.py)


@dataclass(frozen=True)
class EemsHistory:
    last_check: datetime | None
    last_success: datetime | None
    last_error: datetime | None
    last_error_reason: str | None
    fetch_errors: dict[str, int]  # reason -> 1008 fetch-error events in the lookback window; every reason present
    other_errors: int  # 1008 events in the lookback window that are not about fetching mitigations
    last_activity: datetime | None  # newest trace of the service at all: any EEMS event, newest log write
    failing: bool  # the two newest checks failed, with no hourly check between them or since unseen
    log_other_errors: int = 0  # Warning/Error log lines in the lookback window that are not about fetching
    failure_runs: int = 0  # runs of failed checks one after the other reaching into the lookback window


@dataclass(frozen=True)
class PartialFailure:
    part: str  # what could not be read: build, service, events, log, endpoint, parse
    reason: str  # access_denied | not_found | unreadable | constrained_language | other
    message: str


@dataclass(frozen=True)
class EndpointState:
    endpoint: str  # mitigations | flighting
    reachable: bool
    reason: str  # ok | timeout | proxy_auth_required | tls_validation | revocation_unknown | dns | connect_failed | http_status | other
    duration_seconds: float | None
    proxy: str | None = None  # the proxy used ("" direct); None when the script did not say
    proxy_source: str | None = None  # configured | internet_web_proxy | winhttp | none
    proxy_credentials: bool = False


@dataclass(frozen=True)
class ServerState:
    name: str
    build: BuildVerdict | None
    build_source: str | None  # "exsetup" | "registry" | "admin_display_version" (CU level only)
    edge: bool
    eems_supported: bool | None  # build has EEMS and the server is not Edge; None: build unknown, no trace of EEMS
    service_installed: bool | None  # None: could not be told (service query denied, registry key unread)
    service_state: str | None  # windows_exporter state name: running, stopped, ..., unknown (state unread)
    service_start_mode: str | None  # windows_exporter start_mode: auto, manual, disabled, boot, system
    eems: EemsHistory
    endpoints: tuple[EndpointState, ...]  # empty when the optional check is off
    collection_errors: tuple[PartialFailure, ...]
    stage_seconds: tuple[tuple[str, float], ...] = ()  # the collection script's own time per stage on the server
    # The server's clock minus the exporter's (collectors.clock_offset), off by at most clock_uncertainty_seconds;
    # None when the script did not say its time. Only a poll knows it: interpret_server leaves it None.
    clock_offset_seconds: float | None = None
    clock_uncertainty_seconds: float | None = None
    # (component, requester, state) from the server's registry, state as component_state.py reads the value
    # (active | inactive | draining | unrecognised); None when not read
    component_states: tuple[tuple[str, str, str], ...] | None = None


# ---------------------------------------------------------------- poll results (collectors.py, poller.py)


@dataclass(frozen=True)
class CollectorOutcome:
    collector: str  # "server" | "organization"
    success: bool
    duration_seconds: float
    finished: datetime
    error_reason: str | None = None  # see docs/design.md section 4
    error_message: str | None = None  # never contains secrets


@dataclass(frozen=True)
class ScriptOutput:
    """What the collection script sent back in one poll, as received: the store keeps the last one (bounded, see
    store.py) for /server?name=X&debug=true."""

    stdout: bytes
    stderr: bytes
    exit_code: int


@dataclass(frozen=True)
class ServerResult:
    """Latest poll of one server. `state` keeps the last good facts when a later poll fails. Frozen: a new
    poll makes a new result, and the /metrics cache keys on the object. `output` is the script's raw output
    (None when it did not run); the store takes it out and keeps it apart, within its own bound."""

    name: str
    outcome: CollectorOutcome | None = None
    state: ServerState | None = None
    last_success: datetime | None = None
    output: ScriptOutput | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class OrganizationResult:
    name: str
    outcome: CollectorOutcome | None = None
    facts: RawOrganizationFacts | None = None
    last_success: datetime | None = None

    def server(self, name: str) -> OrgServerInfo | None:
        """What the organization said of a server, by the name it is configured by (its Name or its FQDN)."""
        return self._servers.get(name.lower())

    @cached_property
    def _servers(self) -> dict[str, OrgServerInfo]:
        return {key: info for info in (self.facts.servers if self.facts else ()) for key in info.keys()}
