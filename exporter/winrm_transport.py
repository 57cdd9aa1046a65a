"""pywinrm's transport with every response bounded (`bounded_http`) and every answer checked before it is parsed.

pywinrm builds its requests session and, over plain HTTP, sends the first request (the NTLM handshake that
sets up message encryption) inside `build_session`, before a caller could mount anything on the session.
This subclass mounts the bounded adapter at the start of `setup_encryption`, i.e. before that request,
and after `build_session` for HTTPS, where no request is sent while building.

pywinrm then parses every answer (faults included) with ElementTree, whose tree costs some 60 bytes per
element: 4 MiB of nested markup became 220 MiB. A WS-Management answer has a few dozen elements (at most
one per output stream chunk), so an answer with more is refused before ElementTree sees it.
"""

from __future__ import annotations

import requests
from winrm.exceptions import WinRMTransportError
from winrm.protocol import Protocol
from winrm.transport import Transport

from .bounded_http import BoundedAdapter

MAX_XML_ELEMENTS = 10_000


class MalformedAnswer(Exception):
    """An answer that is not a plausible WS-Management message; reported as `wsman_fault`."""


class BoundedTransport(Transport):
    adapter: BoundedAdapter

    def _mount(self, session: requests.Session) -> None:
        session.mount("http://", self.adapter)
        session.mount("https://", self.adapter)

    def setup_encryption(self, session: requests.Session) -> None:
        self._mount(session)
        super().setup_encryption(session)

    def build_session(self) -> requests.Session:
        session = super().build_session()
        self._mount(session)
        return session

    def send_message(self, message: str | bytes) -> bytes:
        try:
            answer = super().send_message(message)
        except WinRMTransportError as error:
            _check_xml(error.response_text.encode("utf-8", "replace"))
            raise
        _check_xml(answer)
        return answer


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
