"""NTLM message encryption prepared from one template per connection (used by `winrm_transport`).

pywinrm's `prepare_encrypted_request` merges the session's headers, cookies, hooks and authentication
into a new request for every message. They do not change while the connection lives, so they are merged
once into a template and each message gets a copy of it with its own body (docs/scaling.md section 3.1).
NTLM sealing and unsealing stay pywinrm's; `seal` and `unseal` hand them to the kept connection
(`kept_connection`), which sends a connection's requests after its first, and the template's headers
become that connection's request head.
"""

from __future__ import annotations

import requests
from winrm.encryption import Encryption


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

