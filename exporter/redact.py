"""Defence in depth for secrets in logs.

Passwords are never passed to a log call on purpose; this filter also scrubs them from any record,
including exception text from libraries, in case one ever echoes a request or a credential.
"""

from __future__ import annotations

import logging
import threading

MASK = "<redacted>"


class Redactor(logging.Filter):
    def __init__(self, secrets: list[str] | None = None):
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()
        self.add(secrets or [])

    def add(self, secrets: list[str]) -> None:
        with self._lock:
            known = set(self._secrets) | {s for s in secrets if s}
            self._secrets = tuple(sorted(known, key=len, reverse=True))

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = self.scrub(record.getMessage())
        if record.exc_info:
            formatter = logging.Formatter()
            message = message + "\n" + self.scrub(formatter.formatException(record.exc_info))
            record.exc_info = None
            record.exc_text = None
        record.msg, record.args = message, None
        return True

    def install(self) -> None:
        """Attach to every handler of the root logger, so records from all libraries pass through it."""
        for handler in logging.getLogger().handlers:
            handler.addFilter(self)
