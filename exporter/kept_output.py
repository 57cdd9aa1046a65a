"""The last poll's raw output of each server, kept for `/server?name=X&debug=true`: what the collection script sent
back, as received, shown without polling again.

Bounded three ways, because a poll's output may be up to `limits.max_poll_bytes` (8 MiB) and a fleet has
thousands of servers:
- each output is cut where `diagnose` cuts it (the first MAX_RAW_CHARS bytes of stdout; stderr is already cut to
  64 KiB by the WinRM client);
- it is kept compressed (zlib level 1: a collection script's JSON output shrinks 4 to 20 times, in well under a
  millisecond for a typical 20-60 KB);
- all outputs together stay within `limits.max_debug_output_bytes` (compressed): past it the oldest outputs of
  polls that went well are dropped first, those of failed or partly failed polls (the ones an admin opens the
  page for) only when no other is left. `0` keeps none.

Outputs are kept as received, secrets and all, like the results themselves: the page masks them with the
redactor when it shows one, as `diagnose` does, so a secret a reload adds is masked in older outputs too.
"""

from __future__ import annotations

import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from .field_report import MAX_RAW_CHARS
from .model import ScriptOutput

ENTRY_OVERHEAD_BYTES = 256  # what an entry costs beyond its compressed bytes (objects, dict slots), for the bound


@dataclass(frozen=True)
class KeptOutput:
    finished: datetime  # when the poll that got it ended
    exit_code: int
    stdout_bytes: int  # as received, before the cut
    stderr_bytes: int
    compressed: tuple[bytes, bytes]  # stdout (cut at MAX_RAW_CHARS) and stderr, zlib

    @property
    def size(self) -> int:
        return len(self.compressed[0]) + len(self.compressed[1]) + ENTRY_OVERHEAD_BYTES

    def stdout(self) -> bytes:
        return zlib.decompress(self.compressed[0])

    def stderr(self) -> bytes:
        return zlib.decompress(self.compressed[1])


class KeptOutputs:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        # name (lower case) -> output; each in order of keeping, oldest first
        self._healthy: OrderedDict[str, KeptOutput] = OrderedDict()
        self._troubled: OrderedDict[str, KeptOutput] = OrderedDict()
        self._dropped: set[str] = set()  # names whose output went to stay within the bound
        self._total = 0

    def keep(self, name: str, output: ScriptOutput | None, finished: datetime, *, troubled: bool,
             budget: int) -> None:
        """The output of `name`'s latest poll (None: the script did not run), in place of the one before."""
        entry = None
        if output is not None and budget > 0:
            entry = KeptOutput(finished, output.exit_code, len(output.stdout), len(output.stderr),
                               (zlib.compress(output.stdout[:MAX_RAW_CHARS], 1), zlib.compress(output.stderr, 1)))
        key = name.lower()
        with self._lock:
            self._forget(key)
            if output is not None and (entry is None or entry.size > budget):
                self._dropped.add(key)
                return
            if entry is None:
                return
            (self._troubled if troubled else self._healthy)[key] = entry
            self._total += entry.size
            while self._total > budget:
                oldest, dropped = (self._healthy or self._troubled).popitem(last=False)
                self._total -= dropped.size
                self._dropped.add(oldest)

    def _forget(self, key: str) -> None:
        for kept in (self._healthy, self._troubled):
            entry = kept.pop(key, None)
            if entry is not None:
                self._total -= entry.size
        self._dropped.discard(key)

    def get(self, name: str) -> KeptOutput | None:
        key = name.lower()
        with self._lock:
            return self._healthy.get(key) or self._troubled.get(key)

    def dropped(self, name: str) -> bool:
        """Whether `name`'s latest output was not kept to stay within the bound (or because it is 0)."""
        with self._lock:
            return name.lower() in self._dropped

    def follow(self, names: set[str]) -> None:
        """Forget the outputs of servers no longer polled (`names`: lower case)."""
        with self._lock:
            for key in [k for k in (*self._healthy, *self._troubled, *self._dropped) if k not in names]:
                self._forget(key)

    @property
    def total(self) -> int:
        """Bytes held, as counted against the bound."""
        return self._total
