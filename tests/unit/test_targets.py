"""Which servers one exporter instance polls (exporter/targets.py): the configured servers plus the discovered
ones, cut to its shard, and the only names `/probe` may reach."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.config import load_config_text
from exporter.targets import Targets

from ..conftest import minimal_config


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_every_server_is_on_exactly_one_shard(count):
    servers = "".join(f"  - ex{i:03d}.contoso.com\n" for i in range(100))
    base = minimal_config().split("servers:")[0] + "servers:\n" + servers
    owners: dict[str, list[int]] = {}
    for index in range(count):
        config = load_config_text(base + f"shard: {index}/{count}\n", Path("."))
        for target in Targets(config).mine():
            owners.setdefault(target.name, []).append(index)
    assert len(owners) == 100
    assert all(len(shards) == 1 for shards in owners.values())
    assert len({s[0] for s in owners.values()}) == count, "a shard got nothing out of 100 servers"
