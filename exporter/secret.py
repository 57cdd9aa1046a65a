"""A password as the configuration holds it: revealed only where a credential is built (the WinRM
authentications), never printed, so a config object in a log line, a traceback or a repr shows no password."""

from __future__ import annotations


class Secret:
    """A password that never prints itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(<redacted>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)
