"""The exporter's own HTTP endpoint: `/`, `/metrics`, `/probe`, `/-/healthy`, `/-/ready`, `/-/reload`.

    transport.py  the asyncio front end: connections, deadlines, caps, TLS, authentication, each request read
                  and parsed once (RFC 9112, bounded), writing
    handlers.py   the route table, and a plain function per route: (Request, View) -> Response
    pages.py      the HTML pages

TLS and basic auth come from the web-config file (`exporter/webconfig.py`), re-read when it changes, so
certificates rotate without a restart. docs/security.md says what a client of this port can and cannot do.
"""

from .transport import ExporterHTTPServer, serve

__all__ = ["ExporterHTTPServer", "serve"]
