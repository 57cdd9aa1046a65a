"""pywinrm's transport with every response bounded (`bounded_http`) and every answer checked before it is parsed.

pywinrm builds its requests session and, over plain HTTP, sends the first request (the NTLM handshake that
sets up message encryption) inside `build_session`, before a caller could mount anything on the session.
Building it also runs requests' proxy lookup, which sets and restores `os.environ["no_proxy"]`: two threads
doing that at once can delete the variable under each other (KeyError 'no_proxy', a failed poll; seen with a
hundred polls connecting together). requests does the same lookup for every request it sends while the
session trusts the environment. So this subclass builds sessions one at a time, but without their
handshake: `setup_encryption` is put off until the session is built, turned away from the environment
(`trust_env` off: pywinrm is given `proxy=None`, which puts `no_proxy: *` in the session, so the lookup
could never find a proxy to use) and the bounded adapter mounted, and then sent outside the lock, so a
slow server never holds up another's connection. NTLM message encryption is then prepared from one
template per connection (`wsman_http.TemplateEncryption`).

Once a request has succeeded, the following ones go straight onto the authenticated connection
(`kept_connection`) for the transports whose later requests need nothing from the authentication library:
NTLM (it authenticates the connection; over HTTP its message encryption stays pywinrm's, through
`wsman_http.TemplateEncryption`), Basic and certificate authentication. Kerberos and CredSSP requests always
go through requests and their authentication libraries.

pywinrm then parses every answer (faults included) with ElementTree, whose tree costs some 60 bytes per
element: 4 MiB of nested markup became 220 MiB. A WS-Management answer has a few dozen elements (at most
one per output stream chunk), so an answer with more is refused before ElementTree sees it.
"""

from __future__ import annotations

import threading
from urllib.parse import urlsplit

import requests
from winrm.exceptions import InvalidCredentialsError, WinRMTransportError
from winrm.protocol import Protocol
from winrm.transport import Transport

from .bounded_http import BoundedAdapter
from .kept_connection import KeptConnection, request_head
from .wsman_http import TemplateEncryption

MAX_XML_ELEMENTS = 10_000


class MalformedAnswer(Exception):
    """An answer that is not a plausible WS-Management message; reported as `wsman_fault`."""


_SESSION_BUILDING = threading.Lock()  # requests' proxy lookup changes os.environ (module docstring)

# pywinrm's auth_method names whose requests, once one succeeded on a connection, carry nothing new
KEPT_AUTH_METHODS = ("ntlm", "basic", "plaintext", "ssl", "certificate")


class BoundedTransport(Transport):
    adapter: BoundedAdapter
    kept: KeptConnection | None = None
    _building = False  # inside pywinrm's build_session: the encryption handshake waits
    _handshake_due = False

    def _mount(self, session: requests.Session) -> None:
        session.mount("http://", self.adapter)
        session.mount("https://", self.adapter)

    def setup_encryption(self, session: requests.Session) -> None:
        if self._building:
            self._handshake_due = True
            return
        self._mount(session)
        super().setup_encryption(session)

    def build_session(self) -> requests.Session:
        if self.session is not None:
            return self.session
        self._building, self._handshake_due = True, False
        try:
            with _SESSION_BUILDING:
                session = super().build_session()
        finally:
            self._building = False
        session.trust_env = False
        self._mount(session)
        if self._handshake_due:
            try:
                self.setup_encryption(session)
            except BaseException:
                self.close_session()  # not authenticated: the next call builds and authenticates anew
                raise
        if self.encryption is not None and self.encryption.protocol == "ntlm":
            self.encryption = TemplateEncryption(session, self.endpoint)
        return session

    def send_message(self, message: str | bytes) -> bytes:
        if isinstance(message, str):
            message = message.encode("utf-8")
        if self.kept is not None and self.kept.open:
            answer = self._send_kept(message)
        else:
            try:
                answer = super().send_message(message)
            except WinRMTransportError as error:
                _check_xml(error.response_text.encode("utf-8", "replace"))
                raise
            self.kept = self._adopt()
        _check_xml(answer)
        return answer

    def close_session(self) -> None:
        self.kept = None
        super().close_session()

    def idle_connection_dropped(self) -> bool:
        """Whether the kept connection was closed by the server since the last poll: a new session (and
        authentication) is then needed, and asking for it before sending anything costs no failed request."""
        return self.kept is not None and self.kept.dropped()

    def _adopt(self) -> KeptConnection | None:
        """The connection the last answer came on, to send the next requests on directly; None when that
        is not possible (an authentication library is needed per request, or the server closed it)."""
        connection = self.adapter.last_connection
        if self.auth_method not in KEPT_AUTH_METHODS or connection is None or connection.sock is None:
            return None
        if self.encryption is not None and not isinstance(self.encryption, TemplateEncryption):
            return None
        if self.encryption is not None:
            headers = dict(self.encryption.template.headers)
        else:
            headers = dict(self.session.prepare_request(requests.Request("POST", self.endpoint)).headers)
        headers["Accept-Encoding"] = "identity"  # as BoundedAdapter asks on every request
        url = urlsplit(self.endpoint)
        path = url.path + (f"?{url.query}" if url.query else "")
        return KeptConnection(connection, request_head(connection, path or "/", headers), self.adapter)

    def _send_kept(self, message: bytes) -> bytes:
        """pywinrm's `send_message` and `_send_message_request`, on the kept connection."""
        encryption = self.encryption
        if encryption is not None:
            answer = self.kept.exchange(encryption.seal(message), encryption.content_type, self.read_timeout_sec)
            text = encryption.unseal(answer)
        else:
            answer = self.kept.exchange(message, self.default_headers["Content-Type"], self.read_timeout_sec)
            text = answer.content
        if answer.status == 401:
            raise InvalidCredentialsError("the specified credentials were rejected by the server")
        if answer.status >= 300:
            _check_xml(text)
            raise WinRMTransportError("http", answer.status, text.decode("utf-8", "replace"))
        return text


def _check_xml(answer: bytes) -> None:
    elements = answer.count(b"<")
    if elements > MAX_XML_ELEMENTS:
        raise MalformedAnswer(f"the answer holds {elements} XML tags, more than any WS-Management message "
                              f"({MAX_XML_ELEMENTS})")


def bounded_protocol(protocol: Protocol, adapter: BoundedAdapter) -> Protocol:
    """Make `protocol` send through BoundedTransport; pywinrm offers no way to pass a transport in, and the
    subclass adds behaviour only, so the instance keeps its state and changes class."""
    protocol.transport.__class__ = BoundedTransport
    protocol.transport.adapter = adapter
    return protocol
