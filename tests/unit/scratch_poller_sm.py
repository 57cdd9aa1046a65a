import textwrap, tempfile, os, dataclasses
from datetime import datetime, timezone
from pathlib import Path
from hypothesis import settings, strategies as st, HealthCheck
from hypothesis.stateful import RuleBasedStateMachine, rule, invariant, initialize, precondition

from exporter.catalog import Catalog
from exporter.config import load_config
from exporter.connections import _settings, _target_of
from exporter.model import CollectorOutcome, ServerResult, ScriptOutput, OrgServerInfo
from exporter.poller import Poller, Job
from exporter.runtime import SafeRuntime
import exporter.poller as poller_mod
import exporter.connections as conn_mod
from tests.clock import ManualClock
from tests.conftest import PASSWORD_ENV

CAT = Catalog.load()
CREATED = []

class FakeConnection:
    def __init__(self, *a, **k):
        self.closed = False
        CREATED.append(self)
    def close(self):
        self.closed = True

def collect(target, connection, poll, catalog, deadline, known=None):
    assert not connection.closed
    return ServerResult(target.name, outcome=CollectorOutcome("server", True, 0.0, datetime.now(timezone.utc)),
                        output=ScriptOutput(b"{}", b"", 0))

poller_mod.collect_server = collect
conn_mod.connect = FakeConnection

def disc(name, fqdn):
    unread = {f.name: None for f in dataclasses.fields(OrgServerInfo)}
    return OrgServerInfo(**{**unread, "name": name, "fqdn": fqdn, "internet_web_proxy": None,
                            "mitigations_applied": (), "mitigations_blocked": ()})

DISC = [disc("EX05", "ex05.contoso.com"), disc("EX06", None), disc("EX01", "ex01.contoso.com")]

class SM(RuleBasedStateMachine):
    @initialize()
    def init(self):
        CREATED.clear()
        self.dir = tempfile.mkdtemp()
        self.path = Path(self.dir) / "e.yml"
        self.write(("ex01", "ex02"), 0, 0, 1)
        self.runtime = SafeRuntime(load_config(self.path), CAT)
        self.poller = Poller(self.runtime, clock=ManualClock())
        self.poller._executor = object()
        self.poller._sync_jobs()
        self.pending = []
        self.orgs = []

    def write(self, servers, bytes_, user, org):
        orgtext = ["", "organization: {name: Contoso, server: ex01.contoso.com, discover_servers: true}\n",
                   "organization: {name: Contoso, server: ex02.contoso.com, discover_servers: true}\n",
                   "organization: {name: Fabrikam, server: ex01.contoso.com, discover_servers: true}\n"][org]
        self.path.write_text(textwrap.dedent(f"""\
            modules:
              default:
                username: 'EXCH\\svc_{user}'
                password_env: {PASSWORD_ENV}
            limits: {{max_response_bytes: {1048576 * (1 + bytes_)}}}
            servers: [{", ".join(f"{n}.contoso.com" for n in servers)}]
            """) + orgtext)

    @rule(servers=st.sets(st.sampled_from(["ex01", "ex02", "ex03"])), b=st.integers(0, 1), u=st.integers(0, 1),
          org=st.integers(0, 3))
    def reload(self, servers, b, u, org):
        self.orgs.append(self.runtime.current().config.organization)
        self.write(sorted(servers), b, u, org)
        ok, msg = self.runtime.reload()
        if ok:
            self.poller.follow()

    @rule(stale=st.integers(0, 3), listed=st.sets(st.integers(0, 2)))
    def discover(self, stale, listed):
        orgs = self.orgs + [self.runtime.current().config.organization]
        org = orgs[-1 - stale] if stale < len(orgs) else orgs[-1]
        if org is None:
            return
        if self.runtime.discovered(org, tuple(DISC[i] for i in sorted(listed))):
            self.poller.follow()

    @rule(i=st.integers(0, 10))
    def begin_poll(self, i):
        polled = self.runtime.current().targets.polled
        if polled:
            self.pending.append((self.runtime.current(), polled[i % len(polled)]))

    @rule(i=st.integers(0, 10))
    def end_poll(self, i):
        if self.pending:
            rt, target = self.pending.pop(i % len(self.pending))
            result = self.poller._poll(rt, target, None, None, scheduled=True)
            assert result.outcome.success, result.outcome
            self.poller.store.record(result, output_budget=1 << 20)

    @invariant()
    def consistent(self):
        if not hasattr(self, "poller"):
            return
        cur = self.runtime.current()
        keys = {t.name.lower() for t in cur.targets.polled}
        store = self.poller.store
        assert set(store._servers) <= keys, (store._servers.keys(), keys)
        assert set(store.outputs._healthy) | set(store.outputs._troubled) <= keys
        org = cur.config.organization
        jobs = set(self.poller._schedule._jobs)
        expected = {Job("server", k) for k in keys} | ({Job("organization", org.name)} if org else set())
        assert jobs == expected
        if org is None:
            assert store.organization() is None
        else:
            assert store.organization().name == org.name
        pool = self.poller.connections._pool
        for (name, module), entry in pool.items():
            t = _target_of(cur.targets, name)
            assert t is not None and _settings(t, module, cur.config) == entry.settings, name
            assert not entry.connection.closed
        pooled = {id(e.connection) for e in pool.values()}
        for c in CREATED:
            assert id(c) in pooled or c.closed, "leaked connection"
        for name, state in self.poller.connections.credentials._modules.items():
            assert cur.config.modules.get(name) == state.module
        ready = self.poller.ready()
        results = {r.name.lower() for r in self.poller.snapshot()[0]}
        assert ready == (results == keys)

TestSM = SM.TestCase
TestSM.settings = settings(max_examples=200, stateful_step_count=30, deadline=None,
                           suppress_health_check=list(HealthCheck))
