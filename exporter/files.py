"""Reading a file the operator names (the configuration, its password files, the web config, a catalog file).

They are read at start and at every reload, which holds the runtime's lock meanwhile. Named by mistake, a FIFO
would block the read for ever (no writer ever comes), and a device such as /dev/zero or a huge file would fill
memory, so only a regular file is read, and never more than its caller's bound.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def read_regular_file(path: Path | str, max_bytes: int) -> bytes:
    """At most `max_bytes + 1` bytes of `path` (more than `max_bytes`: the caller refuses the file, saying its
    bound); OSError for a path that is not a regular file, as for one that cannot be read."""
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer
    handle = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(handle, "rb") as file:
        if not stat.S_ISREG(os.fstat(handle).st_mode):
            raise OSError(f"{os.fspath(path)!r} is not a regular file")
        return file.read(max_bytes + 1)
