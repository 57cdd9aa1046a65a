"""What can go wrong while talking to a WinRM server, and the one place that names it for metrics.

The layers below the client raise the exceptions defined here (or the standard library's OSError family
for the network), each at the point where the cause is known: the HTTP layer knows a deadline or a size
bound was hit, the authentication knows the server refused, the WS-Management reader knows an answer was
malformed or a fault. `classify` then maps each to a `PollFailure` whose `reason` is a stable label value
(docs/metrics.md lists them, docs/runbooks.md says what to do about each).
"""

from __future__ import annotations

import http.client
import ssl
from typing import Callable

from ..terminal import printable

ACCESS_DENIED = 5
QUOTA_FAULTS = frozenset({2150859173, 2150859174, 2150859175, 2150859176, 2150859179})
OPERATION_TIMEOUT = 2150858793  # w:TimedOut: a Receive with nothing new yet ("ask again")
# HRESULT_FROM_WIN32(ERROR_FILE_NOT_FOUND) on a Command: no program at the path named (pypsrp's recorded
# test_winrs_no_cmd_shell); the exporter names powershell.exe under C:\Windows (scripts.POWERSHELL).
FILE_NOT_FOUND = 2147942402
# ERROR_WSMAN_REMOTESHELLS_NOT_ALLOWED (0x803381AC, winerror.h): the Windows Remote Shell policy
# AllowRemoteShellAccess is Disabled, and every new shell is refused (docs/reference/winrm.md, section 2.4).
REMOTE_SHELLS_NOT_ALLOWED = 2150859180
# Kerberos' default maximum clock skew: MIT's krb5.conf `clockskew` (300 s) and Windows' Kerberos Policy
# `MaxClockSkew` (5 minutes, MS-GPSB 2.2.2). Clocks further apart than this fail Kerberos (reason clock_skew), so
# the exporter warns of such a KDC (tickets.py), the server page marks such a server (web/pages.py), and
# ExchangeServerClockSkew fires (exporter/data/alert_rules.yml; tests/artifacts/test_rules.py holds it to this).
KERBEROS_MAX_CLOCK_SKEW_SECONDS = 300

MAX_MESSAGE_CHARS = 300
# How much of a failure's text the secret masking sees before the message is cut to MAX_MESSAGE_CHARS: a secret
# cut at the end of the message would survive as its start, which nothing recognises any more.
MAX_MASKED_CHARS = 16 << 10


class PollFailure(Exception):
    """A failed poll: `reason` is a stable class for metrics, `message` a short human text without secrets.

    Text a server sent can hold the module's password (a script that echoes it, a fault quoting our request):
    who makes a failure from such text passes `mask` (`redact.masking(module.secrets())`), which sees the text
    before it is cut. `detail` keeps that longer text, so that a failure made where the module is not known
    can be masked later without the cut (`client.without_secrets`)."""

    def __init__(self, reason: str, message: str, *, connection_intact: bool = False,
                 mask: Callable[[str], str] | None = None):
        detail = message[:MAX_MASKED_CHARS]
        if mask is not None:
            detail = mask(detail)
        # server text must not start a new log line, nor steer the terminal that shows it
        message = printable(" ".join(detail.split()))[:MAX_MESSAGE_CHARS]
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.detail = detail
        self.connection_intact = connection_intact  # raised between requests: the connection is still usable


class OutOfTime(PollFailure):
    """Too little of the poll's time is left for the next request: the server's answers took it. A `timeout`
    (the server is slow), never retried; `deadline_exceeded` is for a deadline reached mid-answer."""

    def __init__(self, message: str):
        super().__init__("timeout", message, connection_intact=True)


class WinRMFailure(Exception):
    """Base of the failures the layers below the client raise."""


class DeadlineExceeded(WinRMFailure):
    """The poll's deadline passed while a request was being sent or its answer read."""


class NoAnswer(WinRMFailure):
    """The deadline or the request's read timeout passed before any byte of the answer arrived."""


class ResponseTooLarge(WinRMFailure):
    """An answer above `limits.max_response_bytes`."""


class MalformedAnswer(WinRMFailure):
    """An answer that is not a plausible WS-Management message over HTTP/1.1: reported as `wsman_fault`."""


class AuthenticationRejected(WinRMFailure):
    """The server refused the credentials, or its side of the authentication handshake made no sense."""


class HTTPStatusError(WinRMFailure):
    """An HTTP status other than 200 whose body is not a WS-Management fault."""

    def __init__(self, status: int):
        super().__init__(f"HTTP {status} from the WinRM service")
        self.status = status


class WSManFault(WinRMFailure):
    """A SOAP fault from the WinRM service: `code` is the WSManFault Code, `wmi_code` an MSFT_WmiError code."""

    def __init__(self, code: int | None, wmi_code: int | None, reason: str, subcode: str | None = None):
        super().__init__(reason)
        self.code = code
        self.wmi_code = wmi_code
        self.reason = reason
        self.subcode = subcode


def classify(error: BaseException) -> PollFailure:
    """The reason class of anything a poll can raise; an unexpected exception is `internal_error`."""
    if isinstance(error, PollFailure):
        return error
    if isinstance(error, ResponseTooLarge):
        return PollFailure("output_too_large", str(error))
    if isinstance(error, DeadlineExceeded):
        return PollFailure("deadline_exceeded", str(error))
    if isinstance(error, NoAnswer):
        return PollFailure("timeout", str(error))
    if isinstance(error, MalformedAnswer):
        return PollFailure("wsman_fault", f"malformed WS-Management answer: {error}")
    if isinstance(error, AuthenticationRejected):
        return PollFailure("auth_failed", str(error))
    if isinstance(error, WSManFault):
        return _fault(error)
    if isinstance(error, HTTPStatusError):
        if error.status == 401:
            return PollFailure("auth_failed", "the server rejected the credentials (HTTP 401)")
        return PollFailure("http_error", str(error))
    if isinstance(error, (ssl.SSLError, ssl.CertificateError)):
        return PollFailure("tls_error", f"TLS handshake failed: {_text(error)}")
    if isinstance(error, TimeoutError):
        return PollFailure("timeout", "no HTTP answer from the WinRM service in time")
    if isinstance(error, ConnectionRefusedError):
        return PollFailure("connection_refused", "connection refused (is WinRM listening on that port?)")
    if isinstance(error, http.client.RemoteDisconnected):
        return PollFailure("connection_error", "the server closed the connection without answering")
    if isinstance(error, http.client.HTTPException):  # a status line, header or chunk no HTTP/1.1 server sends
        return PollFailure("wsman_fault", f"malformed HTTP answer ({error.__class__.__name__})")
    if isinstance(error, OSError):
        return PollFailure("connection_error", f"connection failed: {_text(error)}")
    return PollFailure("internal_error", f"unexpected {error.__class__.__name__}")


def _fault(fault: WSManFault) -> PollFailure:
    codes = {fault.code, fault.wmi_code}
    text = " ".join(fault.reason.split())
    if ACCESS_DENIED in codes:
        return PollFailure("access_denied", f"WS-Management access denied (fault 5): {text}")
    if REMOTE_SHELLS_NOT_ALLOWED in codes:
        return PollFailure("remote_shell_disabled", f"Windows Remote Shell is disabled by policy "
                                                    f"(AllowRemoteShellAccess, fault {REMOTE_SHELLS_NOT_ALLOWED}): {text}")
    if codes & QUOTA_FAULTS:
        return PollFailure("quota_exceeded", f"WinRM quota exceeded: {text}")
    if OPERATION_TIMEOUT in codes:
        return PollFailure("timeout", "WS-Management operation timed out")
    return PollFailure("wsman_fault", f"WS-Management fault {fault.code or fault.wmi_code}: {text}")


def _text(error: BaseException) -> str:
    text = getattr(error, "strerror", None) or getattr(error, "reason", None) or str(error) or error.__class__.__name__
    return str(text)[:200]
