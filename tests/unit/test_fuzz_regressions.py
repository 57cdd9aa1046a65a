"""Seeded fuzzing of the parsers of hostile input (a compromised Exchange server, any client of the port): each case
a campaign found is kept here as an explicit regression test, and each campaign runs again on a fixed seed with a
bounded number of cases. Complexity checks are ratios within one run (n against 4n), never absolute times."""

from __future__ import annotations

import random
import struct
import time
from types import SimpleNamespace

import pytest

from exporter.winrm.connection import Answer
from exporter.winrm.errors import MalformedAnswer
from exporter.winrm.session import SPNEGO, MessageSeal


def _best_of(runs: int, call) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best


# ---------------------------------------------------------------- sealed answers (session.MessageSeal.unwrap)


class _EchoContext:
    """A security context whose unwrap returns the sealed data as it is: the framing is what is under test."""

    def unwrap_winrm(self, header: bytes, data: bytes) -> bytes:
        return data


def _sealed(body: bytes) -> Answer:
    headers = {"Content-Type": f'multipart/encrypted;protocol="{SPNEGO}";boundary="Encrypted Boundary"'}
    return Answer(200, SimpleNamespace(get=headers.get), body)


def _part(header: bytes, plain: bytes) -> bytes:
    return (b"--Encrypted Boundary\r\n" + header + b"--Encrypted Boundary\r\n\tContent-Type: application/octet-stream"
            b"\r\n" + struct.pack("<i", 16) + b"S" * 16 + plain)


GOOD_HEADER = (b"\tContent-Type: application/HTTP-SPNEGO-session-encrypted\r\n"
               b"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length=%d\r\n")


def test_a_sealed_answer_still_unwraps():
    seal = MessageSeal(_EchoContext(), SPNEGO)
    body = _part(GOOD_HEADER % 5, b"hello") + _part(GOOD_HEADER % 3, b"abc") + b"--Encrypted Boundary--\r\n"
    assert seal.unwrap(_sealed(body)) == b"helloabc"


def test_a_part_header_of_many_original_content_lines_is_refused_in_linear_time():
    """Found by fuzzing: `_LENGTH.search` in a header repeating "\\tOriginalContent: " on one line took time
    quadratic in its length (288 KB: 9 s; a 4 MiB answer: half an hour, the GIL held, every thread stopped)."""
    seal = MessageSeal(_EchoContext(), SPNEGO)

    def unwrap(repeats: int):
        body = _part(b"\tOriginalContent: " * repeats, b"x") + b"--Encrypted Boundary--\r\n"
        return lambda: pytest.raises(MalformedAnswer, seal.unwrap, _sealed(body))

    with pytest.raises(MalformedAnswer, match="MIME header exceeds"):
        seal.unwrap(_sealed(_part(b"\tOriginalContent: " * 4000, b"x")))
    small, large = _best_of(3, unwrap(4000)), _best_of(3, unwrap(16000))
    assert large < 10 * small + 0.002, (small, large)
