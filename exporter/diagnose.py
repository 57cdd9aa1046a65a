"""`exchange-eems-exporter diagnose SERVER`: poll one server, run the diagnose script, write the field report.

The poll is the exporter's own (same script, parser and interpretation as `poll`), so the report shows what
the exporter concludes; the diagnose script then reads the raw facts behind our unconfirmed assumptions.
A failure of either is part of the report, not a reason to write none.
"""

from __future__ import annotations

from datetime import datetime, timezone

from . import scripts
from .catalog import Catalog
from .config import Config
from .field_report import DIAGNOSE_PARAMETERS, build_report
from .parse import ParseError
from .poller import Poller
from .redact import Redactor
from .runtime import SafeRuntime, Target
from .winrm import PollFailure

DIAGNOSE_TIMEOUT_SECONDS = 120  # the diagnose script reads more than a poll; still bounded


def field_report(config: Config, catalog: Catalog, server: str, *, redact_names: bool,
                 diagnose_module: str | None = None) -> str:
    """The report; the diagnose script runs through `diagnose_module` when given (the JEA endpoint runs its one
    function only), else through the server's module. KeyError: the server, or that module, is not configured."""
    if diagnose_module is not None and diagnose_module not in config.modules:
        raise KeyError(diagnose_module)
    poller = Poller(SafeRuntime(config, catalog))
    target = poller.runtime.current().targets.get(server)
    if target is None:
        raise KeyError(server)
    try:
        collect, facts, interpretation = _poll(poller, target)
        try:
            diagnose: bytes | str = poller.run_raw(
                target.name, scripts.diagnose_script(DIAGNOSE_PARAMETERS),
                timeout=max(config.poll.timeout, DIAGNOSE_TIMEOUT_SECONDS), module=diagnose_module)
        except PollFailure as failure:
            diagnose = f"{failure.reason}: {failure.message}"
            module = config.modules[diagnose_module or target.module]
            if failure.reason == "configuration_not_found" and module.protocol == "psrp":
                diagnose += ("; the diagnose script needs a module that may run scripts (protocol winrs, or psrp "
                             "with configuration_name Microsoft.PowerShell): run diagnose again with "
                             "--diagnose-module NAME")
    finally:
        poller.stop()
    return build_report(server=target.name, created=datetime.now(timezone.utc), collect=collect,
                        interpretation=interpretation, diagnose=diagnose, secrets=Redactor(config.secrets()),
                        redact_names=[target.name, target.address, target.spn_hostname] if redact_names else None,
                        culture=facts.culture if facts else None, diagnose_module=diagnose_module,
                        usernames=[config.modules[m].username for m in (target.module, diagnose_module) if m])


def _poll(poller: Poller, target: Target):
    """The collection script's stdout (or the failure), the raw facts and the exporter's interpretation of them."""
    try:
        stdout = poller.run_raw(target.name)
    except PollFailure as failure:
        return f"{failure.reason}: {failure.message}", None, None
    try:
        return (stdout, *poller.interpret(target, stdout))
    except ParseError:
        return stdout, None, None
