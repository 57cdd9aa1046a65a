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
