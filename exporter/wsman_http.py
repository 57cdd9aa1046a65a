"""Per request, only the HTTP work a kept WinRM connection needs (used by `wsman.WinRSProtocol`).

pywinrm's transport sends each message through a requests session as a fresh request, and two things
that make sense for a browser-like client cost a fifth of a poll's CPU here (docs/scaling.md section 3):
- with `trust_env`, requests looks up proxy variables for every request: it scans the whole process
  environment and, through `should_bypass_proxies`, even sets and restores `no_proxy` in `os.environ`
  (not thread-safe, with a hundred polls in flight). pywinrm is given `proxy=None`, which already puts
  `no_proxy: *` in the session, so the lookup can never find a proxy to use;
- `prepare_encrypted_request` merges the session's headers, cookies, hooks and authentication into a new
  request for every message. They do not change while the connection lives, so they are merged once
  into a template and each message gets a copy of it with its own body.
NTLM sealing and unsealing stay pywinrm's; `seal` and `unseal` hand them to the kept connection
(`kept_connection`), which sends a connection's requests after its first, and the template's headers
become that connection's request head.
"""

from __future__ import annotations

import requests
from winrm.encryption import Encryption
from winrm.transport import Transport


class TemplateEncryption(Encryption):
    """pywinrm's NTLM message encryption, preparing each request from one template."""

    def __init__(self, session: requests.Session, endpoint: str) -> None:
        super().__init__(session, "ntlm")
        self.template = session.prepare_request(requests.Request("POST", endpoint))
        self.content_type = f'multipart/encrypted;protocol="{self.protocol_string.decode()}";boundary="Encrypted Boundary"'
        self._protocol_parameter = f'protocol="{self.protocol_string.decode()}"'

    def prepare_encrypted_request(self, session: requests.Session, endpoint: str | bytes, message: bytes) -> requests.PreparedRequest:
        request = self.template.copy()
        request.body = self.seal(message)
        request.headers["Content-Length"] = str(len(request.body))
        request.headers["Content-Type"] = self.content_type
        return request

    def seal(self, message: bytes) -> bytes:
        """The body of an encrypted request carrying `message`."""
        return self._encrypt_message(message, None) + self.MIME_BOUNDARY + b"--\r\n"

    def unseal(self, answer) -> bytes:
        """The message in a `kept_connection.Answer`, decrypted when its Content-Type says it is encrypted
        (as pywinrm's `parse_encrypted_response` decides for a requests response)."""
        if self._protocol_parameter not in answer.headers.get("content-type", ""):
            return answer.content
        return self._decrypt_response(answer, None)


def lighten(transport: Transport) -> requests.Session:
    """Make the transport's (authenticated) session send each message with only the per-request work."""
    session = transport.build_session()
    session.trust_env = False
    if transport.encryption is not None and transport.encryption.protocol == "ntlm":
        transport.encryption = TemplateEncryption(session, transport.endpoint)
    return session
