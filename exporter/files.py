"""Reading a file the operator names (the configuration, its password files, the web config, a catalog file),
and telling when one holding a secret is open to every user of the host.

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
    try:  # checked before fdopen, which refuses a directory with an error that names the descriptor, not the path
        regular = stat.S_ISREG(os.fstat(handle).st_mode)
    except OSError:
        os.close(handle)
        raise
    if not regular:
        os.close(handle)
        raise OSError(f"{os.fspath(path)!r} is not a regular file")
    with os.fdopen(handle, "rb") as file:
        return file.read(max_bytes + 1)


def exposed_to_others(file: Path | None, key_path: str) -> str | None:
    """A warning when `file`, holding a secret (a password, a keytab, a private key, password hashes), may be read
    or written by every user of the host: such a file gives the account, or the endpoint, to anyone with a shell
    there. None when it may not, when it is gone (its next read says so), and on Windows, which has no such mode
    bits (its ACLs decide). A warning, not an error: a file system without POSIX modes (a mounted Windows share:
    every file 0777) would otherwise stop the exporter. One wording for the exporter's configuration and the web
    config, which `run` logs and `check-config` prints."""
    if file is None or os.name == "nt":
        return None
    try:
        mode = os.stat(file).st_mode & 0o777
    except OSError:
        return None
    if not mode & 0o006:
        return None
    others = " and ".join(what for bit, what in ((0o004, "read"), (0o002, "written")) if mode & bit)
    return (f"{key_path}: {str(file)!r} can be {others} by every user of this host (mode {mode:04o}): chmod o-rwx "
            "it (in Kubernetes: the Secret volume's defaultMode: 0440, with the pod's fsGroup)")
