"""What the collection script gets from the EEMS log folder, for the way the script reads it.

Two readers are modelled, recognised by the script's text:
- `lines` (`Get-Content -Tail N`): PowerShell's FileSystemContentReaderWriter seeks to the end and reads
  backward in 4 KiB blocks until it has N lines (FileSystemContentStream.cs `SeekItemsBackward`,
  `FileStreamBackReader`), detects the encoding from the byte order mark and returns whole lines without
  their line ends. The script keeps the newest lines whose characters (plus two per line end) fit in what is
  left of LogTailBytes, and lists the newest file even when nothing is left.
- `stream` (`[IO.File]::Open` then Seek/Read, the script before issue 17): the last bytes of each file, its
  first line possibly cut; listing stops before a file once the budget is spent.

`Get-ChildItem -Filter *.log` lists only log files; without it, any file in the folder is read (the `.state` file
of `log_other_file`, a speculative model of a non-log file EEMS might keep there, review R15).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from . import eems

LINES = "lines"
STREAM = "stream"
OTHER_FILE = "MitigationService.state"  # ours: a file EEMS might rewrite at each check (unconfirmed)
OTHER_FILE_BYTES = 256 * 1024
LINES_PER_BUDGET_CHAR = 1 / 64  # the script asks Get-Content for 1 + LogTailBytes/64 lines

_LOG_FILTER = re.compile(r"Get-ChildItem\b[^|\r\n]*-Filter\s+'?\*\.log'?", re.IGNORECASE)


@dataclass(frozen=True)
class Entry:
    """One `logs` entry, its write time not yet in the server's date style."""

    name: str
    last_write: datetime
    tail: str
    length: int | None = None  # only the stream reader reports these two
    encoding: str | None = None


def reader_form(script: str) -> str | None:
    if "Get-Content" in script:
        return LINES
    if "[IO.File]::Open" in script:
        return STREAM
    return None


def listing(setup: eems.EemsSetup, now: datetime, since: datetime, script: str, other_file: bool) -> list[eems.LogFile]:
    """The folder's files as the script's Get-ChildItem and sort see them: newest write first."""
    files = eems.log_files(setup, now, since)
    if other_file and not _LOG_FILTER.search(script):
        state = b"<state>" + b"x" * (OTHER_FILE_BYTES - 15) + b"</state>"
        files = [eems.LogFile(OTHER_FILE, state, now), *files]
    return files


def read(form: str, files: list[eems.LogFile], budget: int, since: datetime) -> list[Entry]:
    return _read_lines(files, budget, since) if form == LINES else _read_stream(files, budget)


def _decode(content: bytes) -> str:
    if content[:2] == b"\xff\xfe":
        return content[2:].decode("utf-16-le", "replace")
    return content.decode("utf-8-sig", "replace")


def _read_lines(files: list[eems.LogFile], left: int, since: datetime) -> list[Entry]:
    entries = []
    for file in files:
        tail = ""
        if left > 0:
            lines = _decode(file.content).splitlines()[-(1 + int(left * LINES_PER_BUDGET_CHAR)):]
            kept, used = 0, 0
            while kept < len(lines) and used + len(lines[-1 - kept]) + 2 <= left:
                used += len(lines[-1 - kept]) + 2
                kept += 1
            tail = "\r\n".join(lines[len(lines) - kept:]) if kept else ""
            left = left - used if used else (0 if lines else left)
        entries.append(Entry(file.name, file.last_write, tail))
        if left <= 0 or file.last_write < since:
            break
    return entries


def _read_stream(files: list[eems.LogFile], left: int) -> list[Entry]:
    entries = []
    for file in files:
        if left <= 0:
            break
        utf16 = file.content[:2] == b"\xff\xfe"
        n = min(len(file.content), left)
        n -= n % 2 if utf16 else 0
        tail = file.content[len(file.content) - n:] if n else b""
        entries.append(Entry(file.name, file.last_write, tail.decode("utf-16-le" if utf16 else "utf-8", "replace"),
                             len(file.content), "utf-16" if utf16 else "utf-8"))
        left -= n
    return entries
