"""Text from a server or a URL made safe to print on a terminal, in a log line or a file's comment.

A compromised server's text may carry terminal controls: ESC sequences that clear the screen, retitle the window
or make a hyperlink (OSC 8), a carriage return that overwrites the line before it, a bidi override that reorders
what is read. Each character that is not printable (C0 and C1 controls, format characters, line and paragraph
separators, lone surrogates) is written as its Python escape, so it shows and does nothing.
"""

from __future__ import annotations


def printable(text: str) -> str:
    """`text` with every character that is not printable written as its Python escape (`\\x1b`, `\\r`, `\\u2028`)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def paired_surrogates(text: str) -> str:
    """`text` whose characters came as UTF-16 code units (CLIXML's `_xD83D_` escapes, PSRP strings): each pair of
    surrogates joined into its character, a lone one (which a hostile server sends) replaced by U+FFFD, so that the
    text encodes as UTF-8 (a lone surrogate broke every encoding of it: the server's page, the poll's output)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
