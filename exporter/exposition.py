"""/metrics and /probe bodies; for thousands of servers, each server's sample lines are formatted once per
poll, not per scrape.

A fleet of 2,000 servers is about 70,000 samples; formatting them through prometheus_client on every
scrape costs a third of a second of CPU. A server's result only changes when it is polled, so its lines
are cached with the result object they came from, and a scrape only joins cached lines under one HELP/TYPE
header per family. The output is the same Prometheus text format (or OpenMetrics, when negotiated) that
prometheus_client writes; the process/GC/platform families still come from prometheus_client itself.
/probe goes through the same encoder, so the two endpoints cannot drift apart.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString

from .metrics import SelfStatus, organization_families, self_families, server_families
from .model import OrganizationResult, ServerResult

OPENMETRICS = "application/openmetrics-text"
_EOF = b"# EOF\n"


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
    if openmetrics:
        help_text = family.help.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
        return f"# HELP {family.name} {help_text}\n# TYPE {family.name} {family.type}\n"
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
             self_status: SelfStatus | None, base: CollectorRegistry, accept: str) -> tuple[bytes, str]:
        """/metrics: every server's latest result (cached lines), the organization, the exporter's own
        metrics, after `base` (the process metrics, from prometheus_client)."""
        parts: list[list[_Family]] = []
        with self._lock:
            for result in servers:
                parts.append(self._server(result))
            current = {r.name.lower() for r in servers}
            for stale in [k for k in self._servers if k not in current]:
                del self._servers[stale]
        if organization is not None:
            parts.append(_format(organization_families(organization, {r.name.lower(): r.name for r in servers})))
        if self_status is not None:
            parts.append(_format(self_families(self_status)))
        return _encode(parts, base, accept)


def probe_body(result: ServerResult, accept: str) -> tuple[bytes, str]:
    """/probe: one poll's metrics, encoded as /metrics encodes them (a probe's result is new: nothing cached)."""
    return _encode([_format(server_families(result))], None, accept)


def _encode(parts: list[list[_Family]], base: CollectorRegistry | None, accept: str) -> tuple[bytes, str]:
    """The families of `parts` merged per name, in the format `accept` asks for, after `base`'s."""
    encoder, content_type = choose_encoder(accept)
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
