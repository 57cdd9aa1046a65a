"""What is current, as a property: any sequence of reloads (servers, a connection setting, the credential, the
organization), discoveries (also by an organization poll that began before a reload) and polls that read the runtime
before some of them and end after, leaves the poller on the newest runtime: results only for current servers, one
schedule job per current server and the organization, the organization's result only while it is configured,
pooled connections only with current settings and every other connection closed, credential records only for
current modules, and /-/ready true exactly when every server has a result. One thread steps through it; the
interleavings of threads that tests/unit/test_current_races.py writes out are among its orders."""

from __future__ import annotations

import dataclasses
import tempfile
import textwrap
from datetime import datetime, timezone
from pathlib import Path

from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from exporter import connections as connections_module, poller as poller_module
from exporter.catalog import Catalog
from exporter.config import load_config
from exporter.connections import _settings, _target_of
from exporter.model import CollectorOutcome, OrgServerInfo, ScriptOutput, ServerResult
from exporter.poller import Job, Poller
from exporter.runtime import SafeRuntime

from ..clock import ManualClock
from ..conftest import PASSWORD_ENV
from .test_current_races import FakeConnection

CATALOG = Catalog.load()
ORGANIZATIONS = ["", "organization: {name: Contoso, server: ex01.contoso.com, discover_servers: true}\n",
                 "organization: {name: Contoso, server: ex02.contoso.com, discover_servers: true}\n",
                 "organization: {name: Fabrikam, server: ex01.contoso.com, discover_servers: true}\n"]


def collect(target, connection, poll, catalog, deadline, known=None):
    assert not connection.closed, "a connection closed under a poll"
    return ServerResult(target.name, outcome=CollectorOutcome("server", True, 0.0, datetime.now(timezone.utc)),
                        output=ScriptOutput(b"{}", b"", 0))


def listed(name: str, fqdn: str | None) -> OrgServerInfo:
    unread = {field.name: None for field in dataclasses.fields(OrgServerInfo)}
    return OrgServerInfo(**{**unread, "name": name, "fqdn": fqdn, "internet_web_proxy": None,
                            "mitigations_applied": (), "mitigations_blocked": ()})


LISTED = [listed("EX05", "ex05.contoso.com"), listed("EX06", None), listed("EX01", "ex01.contoso.com")]


class Current(RuleBasedStateMachine):
    @initialize()
    def start(self):
        self.made = []  # every connection made, to see none left open outside the pool
        self.patched = [(poller_module, "collect_server", poller_module.collect_server),
                        (connections_module, "connect", connections_module.connect)]
        poller_module.collect_server = collect
        connections_module.connect = lambda *args, **kwargs: self.made.append(FakeConnection()) or self.made[-1]
        self.dir = tempfile.TemporaryDirectory()
        self.path = Path(self.dir.name) / "exporter.yml"
        self.write(["ex01", "ex02"], 0, 0, 1)
        self.runtime = SafeRuntime(load_config(self.path), CATALOG)
        self.poller = Poller(self.runtime, clock=ManualClock())
        self.poller._executor = object()  # _sync_jobs tells the schedule; nothing is submitted to it
        self.poller._sync_jobs()
        self.polls = []  # polls that read the runtime and have not ended
        self.organizations = []  # the organization sections of before each reload

    def write(self, servers: list[str], limit: int, user: int, organization: int) -> None:
        self.path.write_text(textwrap.dedent(f"""\
            modules:
              default:
                username: 'EXCH\\svc_{user}'
                password_env: {PASSWORD_ENV}
            limits: {{max_response_bytes: {1048576 * (1 + limit)}}}
            servers: [{", ".join(f"{name}.contoso.com" for name in servers)}]
            """) + ORGANIZATIONS[organization])

    @rule(servers=st.sets(st.sampled_from(["ex01", "ex02", "ex03"])), limit=st.integers(0, 1),
          user=st.integers(0, 1), organization=st.integers(0, len(ORGANIZATIONS) - 1))
    def reload(self, servers, limit, user, organization):
        self.organizations.append(self.runtime.current().config.organization)
        self.write(sorted(servers), limit, user, organization)
        if self.runtime.reload()[0]:
            self.poller.follow()

    @rule(before=st.integers(0, 3), servers=st.sets(st.integers(0, len(LISTED) - 1)))
    def discover(self, before, servers):
        """An organization poll ends, begun `before` reloads ago."""
        organizations = [*self.organizations, self.runtime.current().config.organization]
        organization = organizations[-1 - min(before, len(organizations) - 1)]
        if organization is not None and self.runtime.discovered(organization,
                                                                tuple(LISTED[i] for i in sorted(servers))):
            self.poller.follow()

    @rule(i=st.integers(0, 10))
    def begin_poll(self, i):
        current = self.runtime.current()
        if current.targets.polled:
            self.polls.append((current, current.targets.polled[i % len(current.targets.polled)]))

    @rule(i=st.integers(0, 10))
    def end_poll(self, i):
        """What poll_server does once the poll that read `current` holds its server."""
        if self.polls:
            current, target = self.polls.pop(i % len(self.polls))
            result = self.poller._poll(current, target, None, None, scheduled=True)
            assert result.outcome.success, result.outcome
            self.poller.store.record(result, output_budget=1 << 20)

    @invariant()
    def on_the_newest_runtime(self):
        if not hasattr(self, "poller"):
            return
        current = self.runtime.current()
        names = {t.name.lower() for t in current.targets.polled}
        store, organization = self.poller.store, current.config.organization
        assert set(store._servers) <= names
        assert set(store.outputs._healthy) | set(store.outputs._troubled) <= names
        assert set(self.poller._schedule._jobs) == {Job("server", name) for name in names} | (
            {Job("organization", organization.name)} if organization else set())
        assert (store.organization() and store.organization().name) == (organization and organization.name)
        pool = self.poller.connections._pool
        for (name, module), entry in pool.items():
            target = _target_of(current.targets, name)
            assert target is not None and _settings(target, module, current.config) == entry.settings, name
            assert not entry.connection.closed
        pooled = {id(entry.connection) for entry in pool.values()}
        assert all(id(c) in pooled or c.closed for c in self.made), "a connection neither pooled nor closed"
        for name, state in self.poller.connections.credentials._modules.items():
            assert current.config.modules.get(name) == state.module
        shown = {r.name.lower() for r in self.poller.snapshot()[0]}
        assert self.poller.ready() == (shown == names)

    def teardown(self):
        for module, name, value in getattr(self, "patched", ()):
            setattr(module, name, value)
        if hasattr(self, "dir"):
            self.dir.cleanup()


TestCurrent = Current.TestCase
TestCurrent.settings = settings(max_examples=40, stateful_step_count=25, deadline=None,
                                suppress_health_check=list(HealthCheck))
