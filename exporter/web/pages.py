"""The exporter's own HTML pages. Everything from a server is hostile: every value is escaped."""

from __future__ import annotations

import html
from urllib.parse import quote

from ..model import ServerResult

_LANDING = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Exchange EEMS exporter</title></head>
<body><h1>Exchange EEMS exporter</h1>
<p>Can each on-premises Exchange server still receive Microsoft's emergency mitigations? Version {version}.</p>
<ul><li><a href="/metrics">/metrics</a>: every server from the background poller, plus the exporter's own metrics</li>
<li><a href="/probe?target={example_url}">/probe?target={example}</a>: poll one configured server now (multi-target pattern; add <code>&amp;module=NAME</code> to choose credentials)</li>
<li><a href="/-/healthy">/-/healthy</a>, <a href="/-/ready">/-/ready</a>; <code>POST /-/reload</code> re-reads the configuration</li></ul>
<h2>Servers ({count})</h2><table><tr><th>server</th><th>up</th><th>build</th><th>servicing</th><th>next build</th><th>last error</th></tr>{rows}</table>
</body></html>
"""


def landing(servers: list[ServerResult], example: str, version: str) -> bytes:
    rows = []
    for result in servers:
        up = "yes" if result.outcome and result.outcome.success else "no"
        verdict = result.state.build if result.state else None
        build = verdict.version if verdict else ""
        servicing = verdict.servicing.replace("_", " ") if verdict else ""
        target = verdict.next_build if verdict else None
        next_build = " ".join((target.version, target.product, target.cu, target.update)).strip() if target else ""
        error = result.outcome.error_reason if result.outcome and not result.outcome.success else ""
        rows.append("<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>".format(
            *(html.escape(str(v)) for v in (result.name, up, build, servicing, next_build, error or ""))))
    return _LANDING.format(version=html.escape(version), example=html.escape(example),
                           example_url=html.escape(quote(example, safe=""), quote=True),
                           count=len(servers), rows="".join(rows)).encode()
