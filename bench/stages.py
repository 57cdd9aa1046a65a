"""Sort py-spy samples of a poll cycle into the stages of a poll, to see where its CPU goes.

Input is py-spy's `--format raw` output (one collapsed stack and a sample count per line), recorded with
`--gil` so that only the thread holding the GIL is sampled: a sample is Python-level CPU work, never a
thread waiting on the network or on the GIL. With a hundred threads trading the GIL at every socket call,
py-spy catches the holder in only about half of its samples (the sampled milliseconds come to about half
of the process CPU time the bench measures), so the shares are what to read, not the absolute figure. Each stack is charged to one stage, decided by the innermost
frame that belongs to a known stage, except the NTLM handshake, which is charged whole (its crypto and
HTTP would otherwise be mixed into the steady-state stages).

    python bench/stages.py profile.txt --rate 1000 --polls 200
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

# Any of these anywhere in the stack: the sample belongs to authenticating a new connection.
HANDSHAKE_MARKERS = ("Transport.setup_encryption", "retry_using_http_NTLM_auth", "handshake (")

# (stage, pattern on "function (file:line)"), tried on each frame from the innermost outwards.
STAGES: tuple[tuple[str, re.Pattern], ...] = tuple(
    (stage, re.compile(pattern))
    for stage, pattern in (
        ("NTLM seal/unseal (spnego, cryptography)", r"\((spnego|cryptography)/|\(hmac\.py|\(hashlib|_ntlm_message "),
        ("encrypted MIME framing (MessageSeal, winrm/encryption.py)",
         r"\(winrm/encryption\.py|^(wrap|unwrap|_part|sealed) \(exporter/winrm/session\.py"),
        ("base64", r"\(base64\.py|b64decode|b64encode"),
        ("XML building (xmltodict, headers, uuid)",
         r"\(xmltodict\.py|\(xml/sax/|\(uuid\.py|build_wsman_header|\(exporter/(winrm/)?wsman\.py"),
        ("XML parsing (ElementTree)", r"\(xml/etree/"),
        ("HTTP (requests, urllib3, http.client, sockets)",
         r"\((requests|urllib3|http|email|urllib|socket\.py|ssl\.py|selectors\.py)[/.]|\(requests_ntlm/"
         r"|\(exporter/wsman_http\.py|\(exporter/winrm/(connection|session)\.py"),
        ("JSON and output parsing (parse.py)", r"\(json/|\(exporter/parse\.py"),
        ("interpretation (interpret, eems_log, catalog)",
         r"\(exporter/(interpret|eems_log|catalog)\.py"),
        ("metric rendering (metrics)", r"\(exporter/metrics\.py|\(prometheus_client/"),
        ("script text (scripts.py)", r"\(exporter/scripts\.py|\(importlib/resources|\(pathlib\.py"),
        ("pywinrm request/reply glue (protocol, transport)", r"\(winrm/"),
        ("retries and deadlines (tenacity)", r"\(tenacity/"),
        ("poll orchestration (poller, the WinRM client)", r"\(exporter/"),
        ("threads and locks", r"\((threading|concurrent/|queue)\b"),
    )
)
HANDSHAKE = "NTLM handshake (new connections only)"
OTHER = "other (interpreter, imports, bench)"


def stage_of(frames: list[str]) -> str:
    if any(marker in frame for frame in frames for marker in HANDSHAKE_MARKERS):
        return HANDSHAKE
    for frame in reversed(frames):
        for stage, pattern in STAGES:
            if pattern.search(frame):
                return stage
    return OTHER


def samples_per_stage(raw: str) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            counts[stage_of(stack.split(";"))] += int(count)
    return counts


def breakdown(raw: str, *, rate: int, polls: int) -> dict[str, float]:
    """Milliseconds of GIL-holding CPU per poll, by stage, largest first."""
    counts = samples_per_stage(raw)
    return {stage: round(n / rate / polls * 1000, 3) for stage, n in counts.most_common()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path, help="py-spy --format raw output")
    parser.add_argument("--rate", type=int, required=True, help="py-spy sampling rate, per second")
    parser.add_argument("--polls", type=int, required=True, help="polls the profile covers")
    args = parser.parse_args()
    stages = breakdown(args.profile.read_text(encoding="utf-8"), rate=args.rate, polls=args.polls)
    total = sum(stages.values())
    for stage, ms in stages.items():
        print(f"{ms:8.3f} ms  {ms / total:6.1%}  {stage}")
    print(f"{total:8.3f} ms  total")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
