"""The public interface the code has is the one the docs name, both ways.

CHANGELOG.md calls metric names, labels, alert names and configuration keys the public interface; a user finds
them in README.md (configuration keys, make targets), docs/metrics.md (metrics, failure reasons) and
docs/runbooks.md (what to do about each failure reason). Each is read here from the code itself (the key tables,
the metric calls, every place a failure reason is raised, the argument parser, the Makefile), so that a new one
fails this test until it is documented, and a documented one that is gone fails it too.
"""

from __future__ import annotations

import argparse
import ast
import csv
import re
from pathlib import Path

from exporter import cli, config

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
METRICS_DOC = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
RUNBOOKS = (ROOT / "docs" / "runbooks.md").read_text(encoding="utf-8")
DOCS = README + "".join(path.read_text(encoding="utf-8") for path in sorted((ROOT / "docs").glob("*.md")))

# The exceptions whose first argument is the `reason` label of exchange_collector_error.
FAILURES = {"PollFailure", "ParseError", "TicketError"}


def _modules() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text(encoding="utf-8"))) for path in sorted((ROOT / "exporter").rglob("*.py"))]


def _called(node: ast.Call) -> str:
    return node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")


def _first_text(node: ast.Call) -> str | None:
    first = node.args[0] if node.args else None
    return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None


def collector_error_reasons() -> set[str]:
    """Every reason the exporter can put on exchange_collector_error: a literal first argument of a failure, the
    Kerberos error table's reasons, and what classify_organization_error returns."""
    reasons = set()
    for _, module in _modules():
        for node in ast.walk(module):
            if isinstance(node, ast.Call) and _called(node) in FAILURES and _first_text(node):
                reasons.add(_first_text(node))
            if isinstance(node, ast.FunctionDef) and node.name == "classify_organization_error":
                reasons |= {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                            and re.fullmatch(r"[a-z]+(_[a-z]+)+", n.value)}
    with (ROOT / "exporter" / "data" / "kerberos_errors.tsv").open(encoding="utf-8") as table:
        reasons |= {row["reason"] for row in csv.DictReader((line for line in table if not line.startswith("#")),
                                                            delimiter="\t")}
    return reasons


def exported_metric_names() -> set[str]:
    """The names the exporter exposes: `out.add`/`out.info` in metrics.py (an info gets `_info`) and the metric
    families built elsewhere (a counter gets `_total`)."""
    names = set()
    for _, module in _modules():
        for node in ast.walk(module):
            name = _first_text(node) if isinstance(node, ast.Call) else None
            if not name or not name.startswith("exchange_"):
                continue
            called = _called(node)
            if called == "add" or called == "GaugeMetricFamily":
                names.add(name)
            elif called == "info":
                names.add(name + "_info")
            elif called == "CounterMetricFamily":
                names.add(name + "_total")
    return names


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else len(text)]


def _first_cells(section: str) -> set[str]:
    return {name for line in section.splitlines() if line.startswith("| ")
            for name in re.findall(r"`(\w+)`", line.split(" | ")[0])}


def test_the_inventories_find_what_they_must():
    """The extraction itself: without these, an empty set would pass every test below."""
    assert {"timeout", "auth_failed", "bad_output", "kdc_unreachable", "double_hop", "rbac_denied"} <= \
        collector_error_reasons()
    assert {"exchange_up", "exchange_build_info", "exchange_exporter_web_config_reload_failures_total"} <= \
        exported_metric_names()


def test_every_collector_error_reason_is_listed_in_docs_metrics():
    start = METRICS_DOC.index("Collector error reasons:")
    listed = {name for name in re.findall(r"`(\w+)`", METRICS_DOC[start:METRICS_DOC.index("\n\n", start)])
              if not name.startswith("exchange_")}
    assert collector_error_reasons() - listed == set()
    assert listed - collector_error_reasons() - {"transport", "protocol", "credssp", "psrp"} == set(), \
        "docs/metrics.md lists reasons the exporter never reports"


def test_every_collector_error_reason_has_a_runbook_row():
    """ExchangeExporterCannotPoll's table is where an admin looks up the reason the alert (or the fleet page)
    names, whichever collector failed."""
    rows = _first_cells(_section(RUNBOOKS, "ExchangeExporterCannotPoll"))
    assert collector_error_reasons() - rows == set()
    assert rows - collector_error_reasons() == set(), "runbook rows for reasons the exporter never reports"


def test_every_exported_metric_is_documented_and_every_documented_one_exported():
    documented = {name for name in re.findall(r"^\| `(\w+)(?:\{\w+\})?` \|", METRICS_DOC, re.M)}
    exported = exported_metric_names()
    assert exported - documented == set(), "exported but not in docs/metrics.md"
    assert documented - exported == set(), "in docs/metrics.md but not exported"


def test_every_configuration_key_is_in_the_readme_key_table():
    tables = {"poll": config.POLL_KEYS, "limits": config.LIMITS_KEYS, "modules.NAME": config.module_keys(ROOT),
              "servers[]": config.SERVER_KEYS, "organization": config.ORGANIZATION_KEYS}
    rows = [line for line in README.splitlines() if line.startswith("| `")]
    missing = []
    for section, keys in tables.items():
        own = [row for row in rows if row.startswith(f"| `{section}")]
        for key in keys:
            if not any(f"`{section}.{key.name}`" in row or re.search(rf"[`.{{ ]{key.name}[`,}} ]", row) for row in own):
                missing.append(f"{section}.{key.name}")
    top = {row[3:].split("`")[0].split(".")[0].removesuffix("[]") for row in rows}
    assert missing == [] and set(config._TOP_LEVEL_KEYS) - top == set()


def test_every_command_line_option_is_documented_and_every_documented_one_exists():
    options, commands = set(), set()

    def walk(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            options.update(o for o in action.option_strings if o.startswith("--"))
            if isinstance(action, argparse._SubParsersAction):
                commands.update(action.choices)
                for sub in action.choices.values():
                    walk(sub)

    walk(cli.build_parser())
    aliases = {"--help", "--version", "--config", "--catalog-file"}  # argparse's own, and spellings kept working
    assert {o for o in options - aliases if o not in DOCS} == set()
    assert {c for c in commands if not re.search(rf"(exchange-eems-exporter|catalog) {c}\b", DOCS)} == set()
    named = set(re.findall(r"exchange-eems-exporter [^`\n]*?(?<![\w-])(--[a-z][a-z0-9.-]*)", DOCS))
    assert named - options == set(), "the docs give the exporter options it does not have"


def test_every_make_target_is_documented_and_every_documented_one_exists():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.M))
    assert set(re.search(r"^\.PHONY: (.*)$", makefile, re.M).group(1).split()) == targets, ".PHONY is not the targets"
    named = set(re.findall(r"(?:^|`)make ([a-z][a-z-]*)", DOCS, re.M))
    assert targets - named == set(), "make targets the docs do not name"
    assert named - targets == set(), "the docs name make targets the Makefile does not have"


def test_every_exporter_module_has_a_row_in_the_design_module_table():
    """docs/design.md's table says what each module is for; a module without a row is one a contributor cannot
    place, a row without a module names one that is gone."""
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    named = {name for cell in re.findall(r"^\| ([^|]+) \|", design, re.M)
             for name in re.findall(r"`([\w/]+(?:\.py)?)`", cell)}
    package = ROOT / "exporter"
    modules = {p.name for p in package.glob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    modules |= {p.name + "/" for p in package.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert modules - named == set(), "exporter modules without a row in docs/design.md"
    folders = {p.name + "/" for p in package.iterdir() if p.is_dir() and p.name != "__pycache__"}
    rows = {n for n in named if n.endswith((".py", "/")) and "/" not in n.rstrip("/")}
    assert rows - modules - folders - {"exporter/", "simulator/"} == set(), "design.md rows for modules that are gone"


def test_every_web_config_key_is_in_the_docs():
    """`--web.config.file` takes exporter-toolkit's format; every key it reads is named in the docs, so that one
    it accepts and ignores (cipher_suites, http2) or treats more strictly is said where an admin looks."""
    from exporter import webconfig

    keys = webconfig._TOP_KEYS | webconfig._TLS_KEYS | webconfig._HTTP_KEYS
    assert {key for key in keys if not re.search(rf"[`.]{key}[`.:]", DOCS)} == set()


def _returned_texts(module_path: str, function: str) -> set[str]:
    tree = ast.parse((ROOT / module_path).read_text(encoding="utf-8"))
    body = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function)
    return {n.value.value for n in ast.walk(body) if isinstance(n, ast.Return) and isinstance(n.value, ast.Constant)}


def test_every_eems_fetch_reason_and_endpoint_result_has_its_runbook_row():
    """The other `reason` labels: exchange_eems_fetch_errors / last_error_info (ExchangeEEMSFetchErrors' table)
    and exchange_eems_endpoint_result_info (ExchangeEEMSEndpointUnreachable's table; `ok` is no failure)."""
    from exporter.eems_log import FETCH_ERROR_REASONS
    from exporter.interpret import WEB_STATUS_REASONS

    endpoint = _returned_texts("exporter/interpret.py", "_endpoint_reason") | set(WEB_STATUS_REASONS.values())
    assert {"ok", "timeout", "proxy_auth_required"} <= endpoint
    assert set(FETCH_ERROR_REASONS) - _first_cells(_section(RUNBOOKS, "ExchangeEEMSFetchErrors")) == set()
    assert endpoint - {"ok"} - _first_cells(_section(RUNBOOKS, "ExchangeEEMSEndpointUnreachable")) == set()
    assert {r for r in endpoint | set(FETCH_ERROR_REASONS) if f"`{r}`" not in METRICS_DOC} == set()


def test_every_part_the_collector_can_be_blind_to_has_a_runbook_row():
    """ExchangeCollectorBlind fires per `part`; its runbook's first table says which alerts are off for each. The
    parts are the collection script's `Fail` parts (service_key counts as service) and `parse` (a field of the
    wrong type)."""
    script = (ROOT / "exporter" / "scripts" / "collect_server.ps1").read_text(encoding="utf-8")
    named = re.findall(r"\bFail '(\w+)'", script) + re.findall(r"\bpart='(\w+)'", script)  # and its own records
    parts = {"service" if p == "service_key" else p for p in named} | {"parse"}
    assert {"build", "events", "log", "service", "endpoint"} <= parts
    section = _section(RUNBOOKS, "ExchangeCollectorBlind")
    first_table = section[:section.index("\n\n", section.index("| `part` |"))]
    assert parts - _first_cells(first_table) == set()


def test_every_alert_the_docs_name_exists():
    """tests/artifacts/test_rules.py checks each alert is documented; this is the other way: no doc, example or
    dashboard names an alert the rule file does not have (a renamed one, a warning twin that is gone)."""
    import yaml

    rules = yaml.safe_load((ROOT / "alerts" / "exchange-eems.rules.yml").read_text(encoding="utf-8"))
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule}
    shape = re.compile(r"\bExchange(?:EEMS|Build|Product|Exporter|Collector|Catalog|Organization|Monitoring)[A-Za-z]+")
    places = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md")),
              *sorted((ROOT / "dashboards").glob("*.json")), *sorted(p for p in (ROOT / "examples").rglob("*.y*ml"))]
    # Microsoft's names of the same shape: microsoft/Get-ExchangeBuildNumber, ExchangeBuildNumbers.csv, HealthChecker's
    # Get-ExchangeBuildVersionInformation.
    theirs = {"ExchangeBuildNumber", "ExchangeBuildNumbers", "ExchangeBuildVersionInformation"}
    named = {(path.name, name) for path in places for name in shape.findall(path.read_text(encoding="utf-8"))}
    assert {(place, name) for place, name in named if name not in alerts | theirs} == set()
