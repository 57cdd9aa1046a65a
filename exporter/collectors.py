"""One poll of one collector: run its script over a WinRM connection, parse, judge, return a result.

The exporter's analogue of blackbox_exporter's `ProbeFn`: plain functions of what they are given (the
target, an open connection, the settings, the catalog, a monotonic deadline) that never raise. Whatever
goes wrong becomes the result's outcome through one triage, `_attempt`: a `PollFailure` or `ParseError`
keeps its reason, anything else is a bug that costs this one poll (`internal_error`), not the exporter.
Where results are kept, when polls run and which connection they use is the poller's business.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Callable, TypeVar

from . import scripts
from .catalog import Catalog
from .config import OrganizationConfig, PollConfig
from .eems_log import classify_organization_error
from .interpret import interpret_server
from .model import (CollectorOutcome, OrganizationResult, OrgServerInfo, RawServerFacts, ScriptOutput, ServerResult,
                    ServerState)
from .parse import ParseError, clixml_to_text, parse_organization_output, parse_server_output
from .redact import masking
from .runtime import Target
from .winrm import CommandResult, PollFailure, ServerConnection

log = logging.getLogger(__name__)

T = TypeVar("T")


def collect_server(target: Target, connection: ServerConnection, settings: PollConfig, catalog: Catalog,
                   deadline: float, *, known: OrgServerInfo | None = None) -> ServerResult:
    """Poll one server. `known` is what the organization collector last said about it (its proxy and
    AdminDisplayVersion). The result holds this poll's state only: keeping the last good one is the store's."""
    started = time.monotonic()
    received: list[CommandResult] = []

    def poll() -> ServerState:
        command = scripts.powershell_command(server_script(target, settings, known))
        sent, sent_at = datetime.now(timezone.utc), time.monotonic()  # one wall reading; the rest is monotonic
        result = connection.run(command, deadline)
        elapsed = time.monotonic() - sent_at
        received.append(result)
        facts, state = interpret_output(target, script_stdout(result, connection), settings, catalog, known)
        offset = clock_offset(facts.now, sent, elapsed, sum(seconds for _, seconds in facts.stage_seconds))
        if offset is None:
            return state
        return replace(state, clock_offset_seconds=offset[0], clock_uncertainty_seconds=offset[1])

    state, outcome = _attempt("server", f"poll of {target.name}", started, poll, connection.module.secrets)
    output = ScriptOutput(received[0].stdout, received[0].stderr, received[0].exit_code) if received else None
    return ServerResult(target.name, outcome=outcome, state=state,
                        last_success=outcome.finished if outcome.success else None, output=output)


def clock_offset(server_now: datetime | None, sent: datetime, elapsed: float,
                 script_seconds: float) -> tuple[float, float] | None:
    """(offset, uncertainty) in seconds: the server's clock minus the exporter's, and how far that can be off; None
    when the script did not say its time. The script reads its `now` in its first statement, after the exporter
    sent the command (`sent`, the exporter's clock) and before its stages ran (`script_seconds`, their sum as
    the server measured them), which all ran before the answer came back `elapsed` seconds (monotonic) after
    `sent`. So the exporter's time at that instant lies in [sent, sent + elapsed - script_seconds]: the estimate
    takes its middle and is off by at most half its width (never more than half the poll's duration: stage times
    that do not fit in the poll are not trusted). Connecting, authenticating and starting PowerShell fall in
    the window, so a slow poll widens it; the network's asymmetry does not matter at this scale."""
    if server_now is None:
        return None
    elapsed = max(0.0, elapsed)
    window = elapsed - script_seconds if 0.0 <= script_seconds <= elapsed else elapsed
    middle = sent + timedelta(seconds=window / 2)
    return (server_now - middle).total_seconds(), window / 2


def collect_organization(target: Target, connection: ServerConnection, settings: OrganizationConfig,
                         deadline: float, *, max_servers: int) -> OrganizationResult:
    """Poll the organization through one server (Get-ExchangeServer and the organization config)."""
    started = time.monotonic()

    def poll():
        facts = parse_organization_output(run_script(connection, scripts.organization_script(), deadline),
                                          max_servers=max_servers)
        if facts.error_message:
            reason = classify_organization_error(facts.error_message)
            raise PollFailure(reason, f"{facts.error_stage or 'script'}: {facts.error_message}")  # masked in _attempt
        return facts

    facts, outcome = _attempt("organization", f"organization collector on {target.name}", started, poll,
                              connection.module.secrets)
    if facts is None:
        return OrganizationResult(settings.name, outcome=outcome)
    return OrganizationResult(settings.name, outcome=outcome, facts=facts, last_success=outcome.finished)


def _attempt(collector: str, what: str, started: float, poll: Callable[[], T],
             secrets: Callable[[], list[str]]) -> tuple[T | None, CollectorOutcome]:
    """Run `poll`; its value and a successful outcome, or None and the outcome its failure deserves. The module's
    `secrets()` are masked in the failure's text once more (a ParseError may quote the output) before it is
    logged; a poll that went well has no text to mask."""
    try:
        value = poll()
    except (PollFailure, ParseError) as failure:
        masked = PollFailure(failure.reason, getattr(failure, "detail", str(failure)), mask=masking(secrets()))
        outcome = failed(collector, started, masked)
        log.warning("%s failed: %s: %s", what, outcome.error_reason, outcome.error_message)
        return None, outcome
    except Exception as err:  # a bug must cost one poll, not the exporter
        log.exception("%s failed unexpectedly", what)
        return None, failed(collector, started, PollFailure("internal_error", type(err).__name__))
    return value, CollectorOutcome(collector, True, time.monotonic() - started, datetime.now(timezone.utc))


def failed(collector: str, started: float, failure: PollFailure) -> CollectorOutcome:
    return CollectorOutcome(collector, False, time.monotonic() - started, datetime.now(timezone.utc),
                            error_reason=failure.reason, error_message=" ".join(str(failure).split())[:300])


# The FullyQualifiedErrorIds Windows PowerShell gives when Constrained Language Mode refuses a construct (Binders.cs,
# invariant in every display language): AppLocker or WDAC script enforcement, not a broken script.
CONSTRAINED_LANGUAGE_IDS = ("MethodInvocationNotSupportedInConstrainedLanguage",
                            "PropertySetterNotSupportedInConstrainedLanguage", "CannotCreateTypeConstrainedLanguage")


def run_script(connection: ServerConnection, script: str, deadline: float) -> bytes:
    """The script's stdout; a non-zero exit is a `script_failed` PollFailure carrying its error text, or
    `constrained_language` when Constrained Language Mode refused it."""
    return script_stdout(connection.run(scripts.powershell_command(script), deadline), connection)


def script_stdout(result: CommandResult, connection: ServerConnection) -> bytes:
    """The stdout of a script that ran, or its failure (masked with `connection`'s module's secrets)."""
    if result.exit_code != 0:
        raise script_failure(result.exit_code, result.stderr, secrets=connection.module.secrets())
    return result.stdout


def script_failure(exit_code: int, stderr: bytes, *, secrets: list[str] | tuple[str, ...] = ()) -> PollFailure:
    """Why PowerShell exited with `exit_code`, from its error stream (the invariant error ids, never the text).
    The error text is the server's: `secrets` (the module's) are masked in it in every form, before it is cut."""
    detail = clixml_to_text(stderr).strip() or "no error text"
    mask = masking(secrets)
    refused = next((i for i in CONSTRAINED_LANGUAGE_IDS if i in detail), None)
    if refused is not None:
        return PollFailure("constrained_language", f"Constrained Language Mode (AppLocker/WDAC) refused the script "
                                                   f"({refused}): {detail}", mask=mask)
    return PollFailure("script_failed", f"PowerShell exited with code {exit_code}: {detail}", mask=mask)


def endpoint_proxy(target: Target, known: OrgServerInfo | None) -> tuple[str, str]:
    """(proxy, source) the endpoint check is given: the configured one, else the server's InternetWebProxy from
    Active Directory (which any Exchange server of the organization can set); ("", "") for neither, when the
    script falls back to the server's WinHTTP proxy or goes direct."""
    if target.endpoint_proxy:
        return target.endpoint_proxy, "configured"
    if known and known.internet_web_proxy:
        return known.internet_web_proxy, "internet_web_proxy"
    return "", ""


def server_script(target: Target, settings: PollConfig, known: OrgServerInfo | None) -> str:
    """The collection script for one server; its proxy is the configured one, else the organization's."""
    return scripts.server_script(
        scripts.ServerScriptParameters(
            # whole hours, rounded up: rounded down, a 90m lookback read 60m of events and log and judged them as 90m
            lookback_hours=max(1, math.ceil(settings.lookback / 3600)),
            max_events=settings.max_events,
            log_tail_bytes=settings.log_tail_bytes,
            check_endpoint=settings.check_endpoint,
            endpoint_timeout_seconds=int(settings.endpoint_timeout),  # 1s to 1h (config.POLL_KEYS)
            proxy=endpoint_proxy(target, known)[0],
            proxy_default_credentials=settings.endpoint_proxy_default_credentials,
        )
    )


def interpret_output(target: Target, stdout: bytes, settings: PollConfig, catalog: Catalog,
                     known: OrgServerInfo | None) -> tuple[RawServerFacts, ServerState]:
    """Parse and judge one output of the collection script, as a poll does. Raises ParseError."""
    facts = parse_server_output(stdout, max_events=settings.max_events, max_log_bytes=settings.log_tail_bytes)
    now = facts.now or datetime.now(timezone.utc)
    return facts, interpret_server(
        target.name, facts, catalog, lookback=timedelta(seconds=settings.lookback), now=now,
        today=datetime.now(timezone.utc).date(), admin_display_version=known.admin_display_version if known else None,
        proxy_source=endpoint_proxy(target, known)[1] or None,
    )
