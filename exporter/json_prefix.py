"""Whether a text that `json.loads` refused is a JSON document cut short rather than a malformed one.

A poll's output that ends inside its JSON document is `truncated_output`, whose runbook row differs from
`bad_output`'s. json's error cannot tell the two apart (an unterminated string is reported where the string
starts, a truncated `tru` as a bad value), so this reads the text token by token as a JSON parser would: a
prefix when every token so far fits and the rest could still be completed. Called only for output that did
not parse.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<punct>[{}\[\]:,])
    | (?P<string>"(?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*")
    | (?P<number>-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)
    | (?P<literal>true|false|null)
    )""",
    re.VERBOSE,
)
_PARTIAL_STRING = re.compile(r'\s*"(?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*(?:\\u?[0-9a-fA-F]{0,3})?\Z')
_PARTIAL_SCALAR = re.compile(r"\s*(?:-|-?[0-9]+\.?[0-9]*(?:[eE][+-]?[0-9]*)?|t(?:r(?:u)?)?|f(?:a(?:l(?:s)?)?)?|n(?:u(?:l)?)?)\Z")


def _partial_token_fits(text: str, pos: int, expect: str) -> bool:
    """Whether the unparseable rest of the text is the start of a token that may come next."""
    if not text[pos:].strip():
        return True
    if _PARTIAL_STRING.match(text, pos):
        return expect in ("value", "key")
    return expect == "value" and bool(_PARTIAL_SCALAR.match(text, pos))


def is_json_prefix(text: str) -> bool:
    """Whether `text` is a proper prefix of some JSON document: cut short, not malformed.

    `expect` is what may come next; a trailing "!" means the container may not close here.
    """
    stack: list[str] = []
    expect = "value!"  # value | value! | key | key! | colon | comma
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            return _partial_token_fits(text, pos, expect.rstrip("!"))
        pos = match.end()
        punct = match.group("punct")
        if punct is None:  # a scalar
            if expect.startswith("key") and match.group("string") is not None:
                expect = "colon"
            elif expect.startswith("value") and stack:
                expect = "comma"
            else:
                return False
        elif punct in "{[":
            if not expect.startswith("value"):
                return False
            stack.append(punct)
            expect = "key" if punct == "{" else "value"
        elif punct in "}]":
            opener = "{" if punct == "}" else "["
            closable = expect == "comma" or expect == ("key" if punct == "}" else "value")
            if not stack or stack[-1] != opener or not closable:
                return False
            stack.pop()
            expect = "comma"
            if not stack:
                return False  # the document is complete; anything after it is malformed, not truncated
        elif punct == ":":
            if expect != "colon":
                return False
            expect = "value!"
        else:  # ","
            if expect != "comma":
                return False
            expect = "key!" if stack[-1] == "{" else "value!"
    return True
