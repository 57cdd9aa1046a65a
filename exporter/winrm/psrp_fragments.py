"""Every PSRP fragment a server sends, checked before psrpcore parses any of it.

A PSRP answer is fragments (MS-PSRP 2.2.4) of messages (2.2.1) whose data is CLIXML, and psrpcore
defragments and parses whatever it is given. A compromised Exchange server must not be able to make the
exporter grow, stall or parse something dangerous, so `FragmentReader` reads each fragment's header first and
refuses, with a `PollFailure`:
- a fragment longer than the data that carries it, or longer than `max_message_bytes`;
- a message (all fragments of one object id) longer than `max_message_bytes`, or fragments that never end
  (they count against it as they come), or more than MAX_OPEN_MESSAGES messages begun and not finished;
- fragments out of order (psrpcore would refuse them too, with an error less clear);
- a message for another runspace pool, or for a pipeline other than the one being read (a nil id is
  accepted: the session capability of pypsrp's recorded Windows session carries one);
- a message of more objects times type names than MAX_TYPE_NAME_WORK: psrpcore gives every object a new
  list of its type names, each name written anew ("Deserialized." + name), and a `<TNRef>` of a few bytes
  names a list of any length again, so 107 KB of CLIXML (2,000 objects naming one list of 2,000 names) took
  364 MB and 4 MiB would take hundreds of GB; the product bounds that work (the largest captured Exchange
  object, Get-OrganizationConfig's, is 43 objects and 85 names: 3,655);
- a message whose CLIXML declares a DTD (entity expansion, external entities): refused before any parser sees
  it, as the WinRS path refuses one in a SOAP answer;
- more than `max_total_bytes` of fragments in one poll, or more XML tags than one in BYTES_PER_TAG of those
  bytes: psrpcore makes each `<S/>` or `<Obj/>` a Python object of about 220 bytes (2 MB of them took 110 MB;
  the default 8 MiB, 1.8 GB), and the captured Exchange objects have one tag in 113 bytes or more.
What passes goes to psrpcore unchanged.
"""

from __future__ import annotations

import re
import struct
import uuid
from dataclasses import dataclass, field

from .errors import PollFailure

HEADER = 21  # object id (8), fragment id (8), flags (1), length (4): all big-endian
MESSAGE_HEADER = 40  # destination (4), message type (4), runspace pool id (16), pipeline id (16)
START, END = 0x1, 0x2
MAX_OPEN_MESSAGES = 16
MAX_TYPE_NAME_WORK = 1_000_000
BYTES_PER_TAG = 32
_OBJECT = re.compile(rb"<Obj[\s/>]")
_TYPE_NAME = re.compile(rb"<T[\s/>]")
_DTD = re.compile(rb"<!\s*(?:DOCTYPE|ENTITY)", re.IGNORECASE)
_EMPTY = uuid.UUID(int=0)


@dataclass
class _Message:
    next_fragment: int = 0
    size: int = 0
    head: bytearray = field(default_factory=bytearray)  # the message header, until it is complete
    tail: bytes = b""  # the last bytes seen, so a DTD marker split across fragments is still found
    objects: int = 0
    type_names: int = 0


class FragmentReader:
    """The fragments of one runspace pool's answers, checked (see the module docstring)."""

    def __init__(self, runspace_pool_id: uuid.UUID, *, max_message_bytes: int, max_total_bytes: int) -> None:
        self.runspace_pool_id = runspace_pool_id
        self.max_message_bytes = max_message_bytes
        self.max_total_bytes = max_total_bytes
        self.total = 0
        self.tags = 0
        self._pending = b""  # a fragment split across two answers (never more than one fragment's worth)
        self._open: dict[int, _Message] = {}

    def new_poll(self) -> None:
        """The poll's bounds count from here (a kept pool reads many polls)."""
        self.total = self.tags = 0

    def feed(self, data: bytes, pipeline_id: uuid.UUID | None) -> bytes:
        """Check the fragments in `data` (a Receive answer's streams, joined) for the pool, or for the pipeline
        `pipeline_id`; return the complete fragments to give psrpcore."""
        self.total += len(data)
        if self.total > self.max_total_bytes:
            raise PollFailure("output_too_large",
                              f"PowerShell remoting output exceeds limits.max_poll_bytes ({self.max_total_bytes})",
                              connection_intact=True)
        buffer = self._pending + data
        position = 0
        while len(buffer) - position >= HEADER:
            object_id, fragment_id, flags, length = struct.unpack(">QQBI", buffer[position : position + HEADER])
            if length > self.max_message_bytes:
                raise _bad(f"a PSRP fragment of {length} bytes exceeds limits.max_response_bytes "
                           f"({self.max_message_bytes})")
            end = position + HEADER + length
            if end > len(buffer):
                break
            self._check(object_id, fragment_id, flags, buffer[position + HEADER : end], pipeline_id)
            position = end
        complete, self._pending = buffer[:position], buffer[position:]
        if len(self._pending) > self.max_message_bytes + HEADER:
            raise _bad("an unfinished PSRP fragment exceeds limits.max_response_bytes")
        return complete

    def finish(self) -> None:
        """At the end of a pipeline or of the pool's opening: nothing may be left half sent."""
        if self._pending:
            raise _bad("a PSRP answer ended inside a fragment")

    def _check(self, object_id: int, fragment_id: int, flags: int, data: bytes, pipeline_id: uuid.UUID | None) -> None:
        message = self._open.get(object_id)
        if flags & START:
            if message is not None or fragment_id != 0:
                raise _bad(f"PSRP object {object_id} started twice or with fragment {fragment_id}")
            if len(self._open) >= MAX_OPEN_MESSAGES:
                raise _bad(f"more than {MAX_OPEN_MESSAGES} PSRP messages begun and not finished")
            message = self._open[object_id] = _Message()
        elif message is None or fragment_id != message.next_fragment:
            raise _bad(f"PSRP fragment {fragment_id} of object {object_id} out of order")
        message.next_fragment += 1
        message.size += len(data)
        if message.size > self.max_message_bytes:
            raise _bad(f"a PSRP message exceeds limits.max_response_bytes ({self.max_message_bytes})")
        body = data
        if len(message.head) < MESSAGE_HEADER:
            taken = data[: MESSAGE_HEADER - len(message.head)]
            message.head += taken
            body = data[len(taken):]
            if len(message.head) == MESSAGE_HEADER:
                self._check_ids(bytes(message.head), pipeline_id)
        self.tags += body.count(b"<")
        if self.tags > (most := self.max_total_bytes // BYTES_PER_TAG):
            raise PollFailure("output_too_large", f"PowerShell remoting output of more than {most} XML tags in one "
                              f"poll (one in {BYTES_PER_TAG} bytes of limits.max_poll_bytes)", connection_intact=True)
        if b"\0" in body:  # PSRP data is UTF-8 XML; in UTF-16 a DTD passed the byte check below, and expat read it
            raise _bad("a PSRP message's data is not UTF-8 (a NUL byte); refused")
        window = message.tail + data
        if _DTD.search(window):
            raise _bad("a PSRP message declares a DTD; refused")
        message.objects += _count(_OBJECT, window, len(message.tail))
        message.type_names += _count(_TYPE_NAME, window, len(message.tail))
        if message.objects * message.type_names > MAX_TYPE_NAME_WORK:
            raise _bad(f"a PSRP message of {message.objects} objects and {message.type_names} type names (<TNRef> "
                       "names a list again for each object); refused")
        message.tail = window[-16:]
        if flags & END:
            if len(message.head) < MESSAGE_HEADER:
                raise _bad("a PSRP message shorter than its header")
            del self._open[object_id]

    def _check_ids(self, head: bytes, pipeline_id: uuid.UUID | None) -> None:
        pool = uuid.UUID(bytes_le=head[8:24])
        pipeline = uuid.UUID(bytes_le=head[24:40])
        if pool not in (self.runspace_pool_id, _EMPTY):  # Windows sends its session capability with a nil id
            raise _bad(f"a PSRP message for runspace pool {pool}, not ours ({self.runspace_pool_id})")
        if pipeline not in (_EMPTY, pipeline_id):
            raise _bad(f"a PSRP message for pipeline {pipeline}, not the one read ({pipeline_id or 'none'})")


def split_fragments(data: bytes) -> list[memoryview]:
    """The fragments of `data` as `FragmentReader.feed` returns it (whole fragments, their lengths checked)."""
    view, position, fragments = memoryview(data), 0, []
    while position < len(data):
        end = position + HEADER + struct.unpack(">I", data[position + HEADER - 4 : position + HEADER])[0]
        fragments.append(view[position:end])
        position = end
    return fragments


def _count(tag: re.Pattern, window: bytes, seen: int) -> int:
    """Tags in `window` that end past its first `seen` bytes (the tail counted with the fragment before)."""
    return sum(1 for match in tag.finditer(window) if match.end() > seen)


def _bad(message: str) -> PollFailure:
    return PollFailure("bad_output", message, connection_intact=False)
