"""What the exporter lets go of over weeks of running: the state of a server it no longer polls (removed, no longer
discovered, or moved to another shard by a reload) is released, not kept where nothing reads it until it shows
again, stale, or holds a socket. No network: the collectors are replaced, and a lease only makes the connection
object (test_current_races.py's `Fleet`)."""

from __future__ import annotations

import time

from exporter.sharding import shard_of

from .test_current_races import Fleet, FakeConnection, lease_once

SERVERS = ("ex01", "ex05")  # of shard 1 and shard 0 of two


def test_shards():  # what the tests below rely on
    assert [shard_of(f"{name}.contoso.com", 2) for name in SERVERS] == [1, 0]


def test_a_server_moved_to_another_shard_keeps_no_result_and_shows_none_when_it_comes_back(tmp_path, catalog,
                                                                                         monkeypatch):
    """A reload that splits the fleet (`shard: 1/2`) moves ex05 to the other replica. Its result and its raw output
    stayed in the store (the store kept every server of the configuration, of any shard), its output held against
    limits.max_debug_output_bytes for as long as the shard lasted; when a later reload gave it back, /metrics
    showed that old result at once, and /-/ready counted it, before any poll of it."""
    fleet = Fleet(tmp_path, catalog, monkeypatch, servers=SERVERS, extra="limits: {max_debug_output_bytes: 1048576}\n")
    for name in SERVERS:
        fleet.poller.poll_server(f"{name}.contoso.com")
    assert fleet.results() == {"ex01.contoso.com", "ex05.contoso.com"} and fleet.poller.ready()

    fleet.reload(SERVERS, "limits: {max_debug_output_bytes: 1048576}\nshard: 1/2\n")
    store = fleet.poller.store
    assert fleet.results() == {"ex01.contoso.com"}
    assert store.outputs.get("ex05.contoso.com") is None, "the output of a server of another shard is kept"
    assert store.outputs.total == store.outputs.get("ex01.contoso.com").size

    fleet.reload(SERVERS, "limits: {max_debug_output_bytes: 1048576}\n")
    assert fleet.results() == {"ex01.contoso.com"}, "the server back in this shard shows its result from before"
    assert not fleet.poller.ready()


def test_a_server_moved_to_another_shard_leaves_no_connection_open(tmp_path, catalog, monkeypatch):
    """Its pooled connection stayed in the pool (the pool took every server of the configuration for its own): a
    socket the server had long closed (HTTP.sys drops an idle one after two minutes), and with `keep_runspace` a
    runspace pool, held until the next reload that removed the server from the configuration. A /probe of a server
    of another shard gets a connection of its own, closed when the probe ends, for the same reason."""
    monkeypatch.setattr("exporter.connections.connect", FakeConnection)
    fleet = Fleet(tmp_path, catalog, monkeypatch, servers=SERVERS)
    connections = fleet.poller.connections
    moved = lease_once(connections, fleet.runtime.current().config, "ex05.contoso.com")
    kept = lease_once(connections, fleet.runtime.current().config, "ex01.contoso.com")
    assert not moved.closed and not kept.closed

    fleet.reload(SERVERS, "shard: 1/2\n")
    assert moved.closed, "the connection of a server moved to another shard is kept"
    assert not kept.closed
    probed = lease_once(connections, fleet.runtime.current().config, "ex05.contoso.com")
    assert probed.closed, "a probe of a server of another shard left its connection in the pool"
    assert lease_once(connections, fleet.runtime.current().config, "ex01.contoso.com") is kept


def test_the_organization_server_of_another_shard_keeps_its_connection(tmp_path, catalog, monkeypatch):
    """The organization collector polls its server whichever shard the server falls to: its connection is kept."""
    monkeypatch.setattr("exporter.connections.connect", FakeConnection)
    extra = "organization: {name: Contoso, server: ex05.contoso.com}\nshard: 1/2\n"
    fleet = Fleet(tmp_path, catalog, monkeypatch, servers=SERVERS, extra=extra)
    connections, config = fleet.poller.connections, fleet.runtime.current().config
    first = lease_once(connections, config, "ex05.contoso.com")
    assert not first.closed and lease_once(connections, config, "ex05.contoso.com") is first


def test_a_probe_with_another_module_leaves_no_connection_in_the_pool(tmp_path, catalog, monkeypatch):
    """`/probe?target=ex01&module=other` pooled a connection for the pair: one per server and module probed, each
    kept (with the socket of its last probe open, once two probes came within KEEP_IF_POLLED_WITHIN) for as long as
    the configuration lasted, although no background poll ever used it."""
    monkeypatch.setattr("exporter.connections.connect", FakeConnection)
    other = ("  other:\n    username: 'EXCH\\\\svc_other'\n    password_env: EEMS_TEST_PASSWORD\n")
    fleet = Fleet(tmp_path, catalog, monkeypatch, servers=SERVERS)
    fleet.write(SERVERS)
    text = fleet.path.read_text()
    fleet.path.write_text(text.replace("servers:", other + "servers:", 1))
    assert fleet.runtime.reload()[0]
    fleet.poller.follow()
    config, connections = fleet.runtime.current().config, fleet.poller.connections
    assert set(config.modules) == {"default", "other"}
    target = fleet.runtime.current().targets.get("ex01.contoso.com")
    with connections.lease(target, "other", config, time.monotonic() + 5) as lease:
        probed = lease.connection
    assert probed.closed, "a probe's connection with another module than the server's is kept in the pool"
    assert not lease_once(connections, config, "ex01.contoso.com").closed  # its own module's is kept
