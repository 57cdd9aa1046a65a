"""Which exporter replica polls which Exchange server, when the fleet is split with ``--shard K/N``.

Rendezvous (highest random weight) hashing: every replica computes the same answer from the server
name alone, without coordination, and changing N moves only the ~1/N of servers that the new shard
wins (or that the removed shard held), so a scale-up does not reset every server's poll history.
The hash is keyed blake2b, not Python's ``hash()``, because the answer must be the same in every
process, on every machine and in every Python version.
"""

from __future__ import annotations

import hashlib
import re

_SHARD = re.compile(r"^\s*(-?\d+)\s*/\s*(-?\d+)\s*$")
_PERSON = b"eems-shard-v1"


def shard_of(server_name: str, shard_count: int) -> int:
    if shard_count < 1:
        raise ValueError(f"shard count must be at least 1, got {shard_count}")
    name = server_name.strip().lower()
    if not name:
        raise ValueError("server name must not be empty")
    encoded = name.encode("utf-8")
    best_shard, best_weight = 0, -1
    for shard in range(shard_count):
        digest = hashlib.blake2b(shard.to_bytes(4, "big") + encoded, digest_size=8, person=_PERSON).digest()
        weight = int.from_bytes(digest, "big")
        if weight > best_weight:
            best_shard, best_weight = shard, weight
    return best_shard


def parse_shard(text: str) -> tuple[int, int]:
    """Parse the ``--shard K/N`` flag: this replica is shard K (counting from 0) of N."""
    match = _SHARD.match(text or "")
    if not match:
        raise ValueError(f"--shard must look like K/N, e.g. 0/3 for the first of three replicas; got {text!r}")
    k, n = int(match.group(1)), int(match.group(2))
    if n < 1:
        raise ValueError(f"--shard {text}: shard count N must be at least 1")
    if not 0 <= k < n:
        raise ValueError(f"--shard {text}: shard index K must be between 0 and {n - 1} (shards count from 0)")
    return k, n
