"""Every PromQL query of the shipped Grafana dashboards, runnable outside Grafana.

Grafana fills in template variables before it sends a query; this module does the same, selecting every
job and server, so tests can hand the queries to promtool or to a real Prometheus.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

DASHBOARDS = Path(__file__).resolve().parent.parent / "dashboards"

# Grafana variable -> the value it takes when everything is selected (a multi-value variable with
# allValue ".+" is rendered into `=~"..."` matchers as that regex).
SUBSTITUTIONS = {
    "job": ".+",
    "server": ".+",
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "1d",
}


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def panels(dashboard: dict) -> list[dict]:
    """All panels, including those nested in collapsed rows."""
    found = []
    for panel in dashboard.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def substitute(expr: str, **selected: str) -> str:
    """`expr` as Grafana sends it, every variable at All but those `selected` (e.g. server="EX01")."""
    values = {**SUBSTITUTIONS, **selected}

    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name.isdigit():  # label_replace's "$1": no variable has that name, so Grafana leaves it as it is
            return match.group(0)
        if name not in values:
            raise KeyError(f"unknown dashboard variable ${name} in: {expr}")
        return values[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", value, expr)


def all_panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard file name, panel title, expr with variables substituted) for every query target."""
    queries = []
    for path in dashboard_files():
        for panel in panels(json.loads(path.read_text())):
            for target in panel.get("targets", []):
                queries.append((path.name, panel["title"], substitute(target["expr"])))
    return queries
