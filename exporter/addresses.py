"""Which server names, host names, IP addresses and proxy URLs the exporter accepts: one rule for each,
wherever the value comes from (the configuration, or Active Directory through the organization collector).

A proxy URL reaches the collection script (`Invoke-WebRequest -Proxy`) from the configuration
(`servers[].endpoint_proxy`) or from Active Directory (a server's InternetWebProxy). Both are judged by
`is_proxy_url`, so a URL the configuration accepts is never dropped on its way to the script, and
nothing but a plain URL ever reaches PowerShell.
"""

from __future__ import annotations

import ipaddress
import re

# A server name becomes the `server` label and, for a discovered server, a poll target.
SERVER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?")
_PROXY_URL = re.compile(r"https?://(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.-]+))(?::(?P<port>[0-9]{1,5}))?/?")


def is_host(text: str) -> bool:
    """A DNS host name or an IP address (an IPv6 address bare or in both brackets: '[fd00::10' is none)."""
    try:
        ipaddress.ip_address(text[1:-1] if text[:1] == "[" and text[-1:] == "]" else text)
        return True
    except ValueError:
        return _HOST_NAME.fullmatch(text) is not None


def without_userinfo(url: str | None) -> str | None:
    """`url` without its `user:password@`, as it may be shown or become a label. A proxy URL from Active Directory
    may embed a password, and a refused one is repeated in the error that refuses it.

    Everything from the start of the authority (after `scheme://`, after `//`, or from the start when there is
    neither) to the last `@` goes: a password may hold `/`, `?`, `#` or `@` (typed unescaped, as users and generated
    passwords do), which end urlsplit's authority early or make an `@` look like part of the path, and the rest of
    the password was then kept. A URL with an `@` in its path or query loses what comes before that `@` too: shown
    short rather than with a password. (A proxy URL has neither path nor query.)"""
    if url is None or "@" not in url:
        return url
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, sep, rest = ("", "//", url[2:]) if url.startswith("//") else ("", "", url)
    return f"{scheme.lower()}{sep}{rest.rpartition('@')[2]}"


def is_proxy_url(text: str) -> bool:
    """`http(s)://host[:port][/]` with a host name, an IPv4 address or an IPv6 address in brackets, and a port
    from 1 to 65535; no user, path or query (the script hands the URL to `Invoke-WebRequest -Proxy` as it is)."""
    match = _PROXY_URL.fullmatch(text)
    if match is None:
        return False
    if match["port"] is not None and not 1 <= int(match["port"]) <= 65535:
        return False
    if match["ipv6"] is not None:
        try:
            return ipaddress.ip_address(match["ipv6"]).version == 6
        except ValueError:
            return False
    return _HOST_NAME.fullmatch(match["host"]) is not None
