"""HTTP Basic authentication: the user name and password with every request.

Only local accounts can use it on Windows, and the configuration refuses it over plain HTTP unless
`allow_basic_over_http` says otherwise (config.scheme_problem). The header value is a secret in itself:
`ModuleConfig.secrets()` names it so that a server quoting it back has it redacted.
"""

from __future__ import annotations

import base64

from .connection import Connection
from .session import Channel


class Basic:
    def __init__(self, username: str, password: str):
        credential = base64.b64encode(f"{username}:{password}".encode("utf-8")).decode("ascii")
        self._headers = f"Authorization: Basic {credential}\r\n"

    def open(self, connection: Connection, *, deadline: float, timeout: float) -> Channel:
        return Channel(connection, self._headers)
