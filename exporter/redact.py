"""Defence in depth for secrets in logs and reports.

Passwords are never passed to a log call on purpose; this filter also scrubs them from any record,
including exception text from libraries, in case one ever echoes a request or a credential. A secret is
found in every form a log line, an event text or a script's output can carry it, not only as typed: each
character as itself or percent-encoded (a URL's user info), JSON-escaped (Python's and Windows PowerShell's
ConvertTo-Json, which also escapes ' < > &), HTML-escaped, and any of those escaped once more (a JSON log line
inside a script's JSON output, an HTML-escaped text a page escapes again); with NULs between the characters
(UTF-16 text read as bytes); and as base64 of the secret alone (at any alignment inside longer base64) and its
NT hash (MD4 of its UTF-16LE: what NTLM needs instead of the password). A text cut short to a length limit
before it was masked may end in the secret's first characters: at least MIN_CUT of them, before `...` or `…`
or at the end of the text, are masked too.

Authentication tokens are secrets of their own kind: an NTLM CHALLENGE and AUTHENTICATE pair is what offline
password guessing needs, and a Kerberos or CredSSP token can be replayed. Libraries that see them log them at
DEBUG (pyspnego logs every NTLM message it reads or writes), so those libraries' loggers are held at INFO or
above whatever the root level (`TOKEN_LOGGERS`), and any record from any logger has token shapes masked.
"""

from __future__ import annotations

import base64
import functools
import html
import json
import logging
import re
import struct
import threading
from typing import Callable

MASK = "<redacted>"
MIN_CUT = 4  # a secret's first characters at a cut, masked from this many on
MIN_INNER_BASE64 = 8  # a shorter middle piece of base64 could be anything: only whole encodings are matched then
_UTF16_GAP = r"(?:\x00|\\{1,3}u0000)?"  # between the characters of UTF-16 text read as bytes (raw, or JSON-escaped)
# Loggers (and everything below them) of the libraries that handle authentication tokens or the headers that
# carry them: NTLM, Kerberos/GSSAPI, CredSSP, HTTP, WinRM and PowerShell remoting.
TOKEN_LOGGERS = ("spnego", "requests_ntlm", "ntlm_auth", "gssapi", "krb5", "requests_gssapi", "requests_kerberos",
                 "requests_credssp", "urllib3", "requests", "winrm", "pypsrp", "psrpcore")
# Token shapes, wherever a record comes from: an NTLM message (NTLMSSP\0) in base64, hex or a bytes repr, and
# the credential of an Authorization / WWW-Authenticate value (the scheme name is kept, to show what it was).
_TOKENS = (r"TlRMTVNTUA[A-Za-z0-9+/]*={0,2}", r"(?i:4e544c4d53535000[0-9a-f]*)", r"NTLMSSP(?:\x00|\\x00)\S*",
           r"(?<=Negotiate )[A-Za-z0-9+/]{16,}={0,2}", r"(?<=NTLM )[A-Za-z0-9+/]{16,}={0,2}",
           r"(?<=Kerberos )[A-Za-z0-9+/]{16,}={0,2}", r"(?<=CredSSP )[A-Za-z0-9+/]{16,}={0,2}",
           r"(?<=Basic )[A-Za-z0-9+/]{16,}={0,2}", r"(?<=Bearer )[A-Za-z0-9+/._~-]{16,}={0,2}")


class Redactor(logging.Filter):
    def __init__(self, secrets: list[str] | None = None):
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()
        self._pattern: re.Pattern | None = None
        self.version = 0  # counts the changes to the secrets: text scrubbed at an older version may need it again
        self.add(secrets or [])

    def add(self, secrets: list[str]) -> None:
        with self._lock:
            known = set(self._secrets) | {s for s in secrets if s}
            if self._pattern is not None and known == set(self._secrets):
                return
            self.version += 1
            self._secrets = tuple(sorted(known, key=len, reverse=True))  # a secret inside a longer one: longer first
            forms = [f for secret in self._secrets for f in (_spelled(secret), *_encoded(secret), *_cut(secret))]
            self._pattern = re.compile("|".join((*forms, *_TOKENS)))

    def scrub(self, text: str) -> str:
        return self._pattern.sub(MASK, text)

    def filter(self, record: logging.LogRecord) -> bool:
        original = record.getMessage()
        message = self.scrub(original)
        if record.exc_info:
            formatter = logging.Formatter()
            message = message + "\n" + self.scrub(formatter.formatException(record.exc_info))
            record.exc_info = None
            record.exc_text = None
        elif message == original:
            return True
        record.msg, record.args = message, None
        return True

    def install(self) -> None:
        """Attach to every handler of the root logger, so records from all libraries pass through it; and hold the
        loggers of libraries that see authentication tokens at INFO or above, whatever the root level."""
        root = logging.getLogger()
        for handler in root.handlers:
            handler.addFilter(self)
            handler.addFilter(quiet_token_loggers)
        for name in TOKEN_LOGGERS:
            logging.getLogger(name).setLevel(max(logging.INFO, root.getEffectiveLevel()))


def masking(secrets: list[str] | tuple[str, ...]) -> Callable[[str], str]:
    """`scrub` of a Redactor for these secrets alone (a module's), made once per set of secrets: failure messages
    mask them where they are made, whether or not a Redactor is installed on the log handlers (library use,
    tests, a logging setup of one's own)."""
    return _masking(tuple(sorted(set(secrets))))


@functools.lru_cache(maxsize=64)
def _masking(secrets: tuple[str, ...]) -> Callable[[str], str]:
    return Redactor(list(secrets)).scrub


def quiet_token_loggers(record: logging.LogRecord) -> bool:
    """Records below INFO from a token library are dropped, even if it (or anything) set its logger to DEBUG later:
    the handler decides, not only the logger's level."""
    if record.levelno >= logging.INFO:
        return True
    name = record.name
    return not any(name == library or name.startswith(library + ".") for library in TOKEN_LOGGERS)


# ---------------------------------------------------------------- the forms of a secret


def _spelled(secret: str) -> str:
    """A pattern for the secret written out character by character, each character in any of its escapes."""
    return _UTF16_GAP.join(_character(c) for c in secret) + _UTF16_GAP


def _character(c: str) -> str:
    once = {c, html.escape(c), f"&#{ord(c)};", f"&#x{ord(c):x};", _json(c), _powershell_json(c)}
    once |= {"".join(f"%{b:02X}" for b in c.encode("utf-8")), "".join(f"\\u{u:04X}" for u in _utf16_units(c))}
    if ord(c) > 0xFF:  # UTF-16 text read as single bytes: the character's two bytes, not it and a NUL
        once.add(c.encode("utf-16-le", "surrogatepass").decode("latin-1"))
    twice = once | {_json(f) for f in once} | {_powershell_json(f) for f in once} | {html.escape(f) for f in once}
    # hex digits in escapes may be either case: compare case-insensitively where a form has an escape
    alternatives = sorted((f"(?i:{re.escape(f)})" if f != c else re.escape(f) for f in twice), key=len, reverse=True)
    return f"(?:{'|'.join(alternatives)})"


def _cut(secret: str) -> list[str]:
    """The secret's first MIN_CUT or more characters (not all of them: that is `_spelled`) where a text was cut
    short after them: before `...` or `…` (the marks of a cut), or at the end of the text."""
    if len(secret) <= MIN_CUT:
        return []
    characters = [_character(c) + _UTF16_GAP for c in secret[:-1]]
    optional = ""
    for character in reversed(characters[MIN_CUT:]):
        optional = f"(?:{character}{optional})?"
    return ["".join(characters[:MIN_CUT]) + optional + r"(?=\.\.\.|…|\Z)"]


def _utf16_units(c: str) -> list[int]:
    data = c.encode("utf-16-le", "surrogatepass")
    return [int.from_bytes(data[i : i + 2], "little") for i in range(0, len(data), 2)]


def _json(text: str) -> str:
    return json.dumps(text)[1:-1]


def _powershell_json(text: str) -> str:
    """ConvertTo-Json of Windows PowerShell 5.1: JSON, plus ' < > & as \\u escapes."""
    body = _json(text)
    for char in "'<>&":
        body = body.replace(char, f"\\u{ord(char):04x}")
    return body


def _encoded(secret: str) -> list[str]:
    """Patterns for the secret's base64 and NT hash forms (these are not per-character)."""
    forms: set[str] = set()
    for data in (secret.encode("utf-8"), secret.encode("utf-16-le", "surrogatepass")):
        alone = base64.b64encode(data).decode("ascii").rstrip("=")
        pieces = {alone}
        for offset in range(3):  # inside longer base64, after 0, 1 or 2 other bytes: the groups only it decides
            encoded = base64.b64encode(bytes(offset) + data).decode("ascii")
            piece = encoded[4 if offset else 0 : len(encoded) - (4 if (offset + len(data)) % 3 else 0)]
            if len(piece) >= MIN_INNER_BASE64:
                pieces.add(piece)
        for piece in pieces:  # standard and URL-safe alphabets
            forms |= {re.escape(piece), re.escape(piece.replace("+", "-").replace("/", "_"))}
    forms.add(f"(?i:{nt_hash(secret).hex()})")
    return sorted(forms, key=len, reverse=True)


def nt_hash(password: str) -> bytes:
    """The NT hash (NTOWFv1): MD4 of the UTF-16LE password."""
    return md4(password.encode("utf-16-le", "surrogatepass"))


def md4(data: bytes) -> bytes:
    """MD4 (RFC 1320). OpenSSL 3 leaves it out of hashlib unless its legacy provider is loaded, and the only
    implementation among our dependencies (pyspnego's) is private; the algorithm is fixed and short."""
    mask = 0xFFFFFFFF

    def rotl(x: int, n: int) -> int:
        return ((x << n) | (x >> (32 - n))) & mask

    message = data + b"\x80" + bytes((55 - len(data)) % 64) + struct.pack("<Q", (len(data) * 8) & (2**64 - 1))
    state = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476]
    for block in range(0, len(message), 64):
        x = struct.unpack("<16I", message[block : block + 64])
        a, b, c, d = state
        for i in range(16):  # round 1: F(b, c, d) = bc | ~b d
            k, s = i, (3, 7, 11, 19)[i % 4]
            a, b, c, d = d, rotl((a + ((b & c) | (~b & d)) + x[k]) & mask, s), b, c
        for i in range(16):  # round 2: G = majority, constant 0x5A827999
            k, s = (i % 4) * 4 + i // 4, (3, 5, 9, 13)[i % 4]
            a, b, c, d = d, rotl((a + ((b & c) | (b & d) | (c & d)) + x[k] + 0x5A827999) & mask, s), b, c
        for i in range(16):  # round 3: H = parity, constant 0x6ED9EBA1
            k, s = (0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15)[i], (3, 9, 11, 15)[i % 4]
            a, b, c, d = d, rotl((a + (b ^ c ^ d) + x[k] + 0x6ED9EBA1) & mask, s), b, c
        state = [(v + w) & mask for v, w in zip(state, (a, b, c, d))]
    return struct.pack("<4I", *state)
