"""One server's authenticated link for one module: where the server is, how the module authenticates to it, and
the channel kept between requests. WinRS (`client.ServerConnection`) and PowerShell remoting
(`psrp.PsrpConnection`) both send every request through one, so they decide alike when a kept channel still
serves. It does while:
- the server has not closed its connection;
- it was used within KEEP_IF_POLLED_WITHIN: HTTP.sys closes a connection idle for about two minutes, and a
  request on one it is closing would fail a healthy poll;
- its authentication outlives the deadline of the poll that would use it (`Channel.valid_until`, the end of
  the Kerberos TGT its service ticket came from): the link authenticates anew, with the module's current
  ticket, before a poll the old one could end in, so a ticket running out never fails a poll. What was
  opened on the server under the old channel (a WinRS shell, a runspace pool) belongs to the account, not
  to the connection, and is reached from the new one.

Otherwise the link opens a new connection and authenticates it. The authentication object is built once, at
the first request: NTLM derives the password's hashes there, Kerberos finds the module's ticket cache.

`LinkedConnection` is what the two protocols' connections share around their link: the constructor and the
attributes the poller sees (PROTOCOL.md's fixed names), one lock, and `close()`.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from ..config import ModuleConfig
from . import tls
from .basic import Basic
from .certificate import Certificate
from .connection import Connection, Endpoint
from .credssp import CredSSP
from .errors import OutOfTime
from .ntlm import NTLM
from .session import Channel

MIN_REQUEST_SECONDS = 2.0  # to open a connection or a shell: less would only leave a shell to clean up
KEEP_IF_POLLED_WITHIN = 90.0  # HTTP.sys's idle connection timeout is about 120 s
USER_AGENT = "exchange-eems-exporter"


def authentication(module: ModuleConfig, hostname: str):
    """The authentication of `module` towards the server named `hostname` (its configured name: the SPN and
    the NTLM target name come from it, never from the address connected to)."""
    password = module.password.reveal() if module.password else None
    encrypt = module.scheme == "http"  # over https, TLS protects the messages
    if module.transport == "ntlm":
        return NTLM(module.username, password, hostname, encrypt=encrypt)
    if module.transport == "basic":
        return Basic(module.username, password)
    if module.transport == "certificate":
        return Certificate()
    if module.transport == "kerberos":
        from .kerberos import Kerberos  # python-krb5 and python-gssapi: the kerberos extra, only when used

        return Kerberos(module, hostname, encrypt=encrypt)
    if module.transport == "credssp":
        return CredSSP(module, hostname, encrypt=encrypt)
    raise ValueError(f"unknown transport {module.transport!r}")


def request_timeouts(module: ModuleConfig, deadline: float, minimum: float) -> tuple[int, float]:
    """(OperationTimeout for the envelope, socket read timeout) for a request sent now; OutOfTime (`timeout`)
    when less than `minimum` seconds are left before `deadline`. Both are the module's `operation_timeout` and
    `read_timeout`, cut to the time left; the read timeout stays above the OperationTimeout, since a Receive
    is held by the server up to it."""
    remaining = deadline - time.monotonic()
    if remaining < minimum:
        raise OutOfTime(f"the server's answers took the poll's time (poll.timeout): {max(0.0, remaining):.1f} s "
                        "left, too little for the next request")
    operation = max(1, min(int(module.operation_timeout), int(remaining) - 1))
    return operation, min(module.read_timeout, max(remaining, operation + 1.0))


class Link:
    """The authenticated channel to `address` (the server named `server_name`) for `module`."""

    def __init__(self, address: Endpoint, module: ModuleConfig, server_name: str | None, *, max_response_bytes: int):
        self.address = address
        self.module = module
        self.server_name = server_name or address.host
        self.max_response_bytes = max_response_bytes
        self.channel: Channel | None = None
        self._authentication = None

    def open(self, deadline: float) -> Channel:
        """The kept channel if it still serves a poll that ends by `deadline` (module docstring), else a new
        connection, authenticated."""
        channel = self.channel
        if channel is not None:
            if self._serves(channel, deadline):
                return channel
            self.close()  # the server will have closed it, or did, or its ticket ends first: no request wasted
        timeout = request_timeouts(self.module, deadline, MIN_REQUEST_SECONDS)[1]
        if self._authentication is None:
            self._authentication = authentication(self.module, self.server_name)
        context = tls.context(self.module) if self.address.scheme == "https" else None
        connection = Connection.open(self.address, context, deadline=deadline, timeout=timeout,
                                     max_response_bytes=self.max_response_bytes, user_agent=USER_AGENT)
        try:
            self.channel = self._authentication.open(connection, deadline=deadline, timeout=timeout)
        except BaseException:
            connection.close()
            raise
        return self.channel

    @staticmethod
    def _serves(channel: Channel, deadline: float) -> bool:
        idle = time.monotonic() - channel.connection.last_used
        lasts = channel.valid_until is None or channel.valid_until > deadline
        return idle < KEEP_IF_POLLED_WITHIN and lasts and not channel.connection.dropped()

    def close(self) -> None:
        if self.channel is not None:
            self.channel.connection.close()
            self.channel = None


class LinkedConnection:
    """`ServerConnection(endpoint, module, *, max_response_bytes, max_poll_bytes, server_name=None, clock=...)` and
    PsrpConnection alike: the WinRM endpoint of one server for one module, reached through one `Link`. Not
    thread-safe for its callers' sake: `_lock` runs one command at a time (the poller polls one server at a time
    anyway)."""

    def __init__(self, endpoint: str, module: ModuleConfig, *, max_response_bytes: int, max_poll_bytes: int,
                 server_name: str | None = None, clock: Callable[[], float] = time.monotonic):
        self.endpoint = endpoint
        self.module = module
        self.max_response_bytes = max_response_bytes
        self.max_poll_bytes = max_poll_bytes
        self._link = Link(self._address(endpoint), module, server_name, max_response_bytes=max_response_bytes)
        self._server_name = self._link.server_name
        self._clock = clock
        self._lock = threading.Lock()

    def _address(self, endpoint: str) -> Endpoint:
        """Where requests go: the endpoint's URL (WinRS: /wsman)."""
        return Endpoint.parse(endpoint)

    def close(self) -> None:
        self._link.close()
