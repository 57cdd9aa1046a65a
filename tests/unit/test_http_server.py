"""The exporter's HTTP endpoint over real loopback connections: routing, /probe safety, scrape timeouts,
content negotiation, the web config (TLS, client certificates, basic auth) and concurrent scrapes.

`/probe` is an SSRF surface: whoever can reach the exporter chooses the target. The tests prove that an
unknown target never causes a connection, by listening where such a target points and checking that
nothing knocked.
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import os
import shutil
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import bcrypt
import pytest
import requests
import yaml

from exporter.catalog import Catalog
from exporter.config import load_config, load_config_text
from exporter.exporter import Exporter
from exporter.web import serve
from exporter.webconfig import WebConfigWatcher

from ..clock import ManualClock
from ..conftest import (PASSWORD, PASSWORD_ENV, USERNAME, SimulatedFleet, minimal_config, poll_all, quick_organization,
                        relocate, samples, serving)
from ..pki import issue, write

WRONG_PASSWORD_ENV = "EEMS_TEST_WRONG_PASSWORD"
WRONG_PASSWORD = "Wr0ng-but-still-secret-42"
WEB_USER, WEB_PASSWORD = "prometheus", "web-Passw0rd-for-scrapes"
SECRETS = (PASSWORD, WRONG_PASSWORD, WEB_PASSWORD)
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

SCENARIO = {
    "servers": [
        {"name": "EX01", "address": "127.0.0.1", "build": "15.2.2562.53"},
        {"name": "EX02", "address": "127.0.0.1", "build": "15.2.1544.36"},
    ],
}



def assert_no_secret(*texts: str | bytes) -> None:
    for text in texts:
        text = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        for secret in SECRETS:
            assert secret not in text


class Answer:
    def __init__(self, response: http.client.HTTPResponse):
        self.status = response.status
        self.headers = response.headers
        self.body = response.read()
        assert_no_secret(self.body, str(self.headers))

    @property
    def text(self) -> str:
        return self.body.decode()


def call(port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None,
         timeout: float = 30) -> Answer:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, headers=headers or {})
        return Answer(connection.getresponse())
    finally:
        connection.close()


@pytest.fixture(scope="module")
def fleet():
    with SimulatedFleet(relocate(quick_organization(SCENARIO))) as fleet:
        yield fleet


def exporter_config(fleet: SimulatedFleet):
    """The fleet's config plus a module whose password the fleet does not accept."""
    os.environ[WRONG_PASSWORD_ENV] = WRONG_PASSWORD
    raw = yaml.safe_load(fleet.config_text(timeout="10s"))
    raw["modules"]["wrong"] = {**raw["modules"]["http"], "password_env": WRONG_PASSWORD_ENV}
    return load_config_text(yaml.safe_dump(raw), Path("."))


@pytest.fixture(scope="module")
def rig(fleet):
    """An exporter that has polled every server once, served on a random loopback port."""
    exporter = Exporter(exporter_config(fleet), Catalog.load())
    poll_all(exporter.poller)
    with serving(exporter) as port:
        yield fleet, exporter, port


# ---------------------------------------------------------------- /probe safety


@pytest.fixture
def bait():
    """A listener where an unknown target would point: nothing may ever connect to it."""
    with socket.socket() as listener:
        listener.bind(("127.77.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        yield listener


def requests_seen(fleet: SimulatedFleet) -> dict[str, int]:
    return {name: fleet.fleet.request_count(name) for name in fleet.hosts}


def test_probe_refuses_unknown_targets_without_connecting(rig, bait):
    fleet, _, port = rig
    bait_port = bait.getsockname()[1]
    before = requests_seen(fleet)
    ex01_address = fleet.hosts["EX01"].address
    for target in ("127.77.0.1", f"127.77.0.1:{bait_port}", f"http://127.77.0.1:{bait_port}/wsman",
                   "EX-UNKNOWN", "ex-unknown.contoso.com", ex01_address, f"{ex01_address}:{fleet.hosts['EX01'].port}",
                   "EX01:5985", "EX01/../EX02", "EX01\x00"):
        answer = call(port, f"/probe?target={quote(target, safe='')}")
        assert answer.status == 400, target
        assert "Unknown target" in answer.text
    # A /probe polls before it answers, and the kernel queues a connection to a listening socket before
    # connect() returns: any attempt would be in the accept queue before the 400 came back.
    with pytest.raises(BlockingIOError):
        bait.accept()
    assert requests_seen(fleet) == before
    # the control: a configured name does reach its server
    assert call(port, "/probe?target=EX01").status == 200
    assert fleet.fleet.request_count("EX01") > before["EX01"]


def test_probe_target_names_are_case_insensitive(rig):
    _, _, port = rig
    answer = call(port, "/probe?target=ex01")
    assert answer.status == 200
    assert samples(answer.text)[("exchange_up", frozenset({"server": "EX01"}.items()))] == 1


@pytest.mark.parametrize(("query", "phrase"), [
    ("", "Exactly one 'target'"),
    ("?target=", "Exactly one 'target'"),
    ("?module=http", "Exactly one 'target'"),
    ("?target=EX01&target=EX02", "Exactly one 'target'"),
    ("?target=EX01&module=nope", "Unknown module 'nope'"),
    ("?target=EX01&module=http&module=wrong", "At most one 'module'"),
])
def test_probe_bad_parameters(rig, query, phrase):
    fleet, _, port = rig
    before = requests_seen(fleet)
    answer = call(port, "/probe" + query)
    assert answer.status == 400
    assert phrase in answer.text
    assert requests_seen(fleet) == before


def test_a_probe_checks_and_polls_on_one_configuration(tmp_path, monkeypatch):
    """/probe refuses Basic credentials over plain http. The handler checked the module and the target on the
    configuration it read, and the poll read the configuration again: a reload landing in between, moving the
    server to an http module, sent `Authorization: Basic` in clear text. Here the reload lands after each read of
    the configuration in turn; none may let the password out."""
    modules = {"default": {"username": USERNAME, "password_env": PASSWORD_ENV, "scheme": "https"},
               "plain": {"username": USERNAME, "password_env": PASSWORD_ENV, "scheme": "http"},
               "secure": {"transport": "basic", "username": USERNAME, "password_env": PASSWORD_ENV}}
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    # a reload that moves a server from https to http is refused now (config.lowered_security); the probe must
    # stay consistent should one be taken all the same, so this test lets it through
    monkeypatch.setattr("exporter.runtime.lowered_security", lambda old, new: None)
    with socket.socket() as listener:  # stands for EX01: keeps the first bytes of every connection, then hangs up
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(0.2)
        received, stop = [], threading.Event()

        def keep_first_bytes():
            while not stop.is_set():
                try:
                    connection, _ = listener.accept()
                except TimeoutError:
                    continue
                with connection:
                    connection.settimeout(5)
                    received.append(connection.recv(65536))

        def config(module: str) -> str:
            return yaml.safe_dump({"poll": {"timeout": "5s"}, "modules": modules, "servers": [
                {"name": "EX01", "address": "127.0.0.1", "port": listener.getsockname()[1], "module": module}]})

        catcher = threading.Thread(target=keep_first_bytes, daemon=True)
        catcher.start()
        try:
            for reads_before_the_reload in (1, 2, 3):
                path = tmp_path / f"config-{reads_before_the_reload}.yml"
                path.write_text(config("secure"))  # its own module: /probe lends no other module's Basic password
                exporter = Exporter(load_config(path), Catalog.load())
                current, reads = exporter.runtime.current, []

                def current_then_a_reload(current=current, reads=reads, path=path, exporter=exporter):
                    snapshot = current()
                    reads.append(snapshot)
                    if len(reads) == reads_before_the_reload:  # the admin moves EX01 to plain http, and reloads
                        path.write_text(config("plain"))
                        assert exporter.reload()[0]
                    return snapshot

                monkeypatch.setattr(exporter.runtime, "current", current_then_a_reload)
                with serving(exporter) as port:
                    answer = call(port, "/probe?target=EX01&module=secure",
                                  headers={"X-Prometheus-Scrape-Timeout-Seconds": "3"})
                assert answer.status in (200, 400), answer.text  # refused, or polled over https (which fails)
        finally:
            stop.set()
            catcher.join(5)
    assert received, "no probe reached the listener: the test shows nothing"
    assert not any(b"Authorization: Basic" in first for first in received), "a Basic password went over plain http"


def test_probe_module_selects_the_credentials(rig):
    _, _, port = rig
    up = frozenset({"server": "EX02"}.items())
    wrong = samples(call(port, "/probe?target=EX02&module=wrong").text)
    assert wrong[("exchange_up", up)] == 0
    assert wrong[("exchange_collector_error",
                  frozenset({"collector": "server", "server": "EX02", "reason": "auth_failed"}.items()))] == 1
    right = samples(call(port, "/probe?target=EX02&module=http").text)
    assert right[("exchange_up", up)] == 1
    default = samples(call(port, "/probe?target=EX02").text)
    assert default[("exchange_up", up)] == 1
    # a probe with other credentials is not recorded as the server's state
    assert samples(call(port, "/metrics").text)[("exchange_up", up)] == 1


def test_probe_honours_the_scrape_timeout(rig):
    fleet, _, port = rig
    fleet.hosts["EX02"].faults.hang = True
    try:
        started = time.monotonic()
        answer = call(port, "/probe?target=EX02", headers={"X-Prometheus-Scrape-Timeout-Seconds": "3"})
        elapsed = time.monotonic() - started
    finally:
        fleet.hosts["EX02"].faults.hang = False
    assert answer.status == 200
    assert elapsed < 3.5, f"the probe answered after {elapsed:.2f}s"
    metrics = samples(answer.text)
    assert metrics[("exchange_up", frozenset({"server": "EX02"}.items()))] == 0
    reasons = {dict(labels)["reason"] for (name, labels), value in metrics.items()
               if name == "exchange_collector_error" and value == 1}
    assert reasons == {"timeout"}, reasons


@pytest.mark.parametrize("value", ["soon", "3s", "nan", "inf", "-3", "0"])
def test_probe_rejects_an_invalid_scrape_timeout(rig, value):
    fleet, _, port = rig
    before = requests_seen(fleet)
    answer = call(port, "/probe?target=EX01", headers={"X-Prometheus-Scrape-Timeout-Seconds": value})
    assert answer.status == 400
    assert "X-Prometheus-Scrape-Timeout-Seconds" in answer.text
    assert requests_seen(fleet) == before


# ---------------------------------------------------------------- routes


def test_landing_page_lists_the_servers(rig):
    answer = call(rig[2], "/")
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("text/html")
    assert "/probe?target=EX01" in answer.text
    ex01 = answer.text[answer.text.index('<a href="/server?name=EX01">EX01</a>'):]
    assert "15.2.2562.53" in ex01[:ex01.index("</tr>")] and "serviced" in ex01[:ex01.index("</tr>")]
    assert '<a href="/server?name=EX02">EX02</a>' in answer.text


def test_healthy(rig):
    answer = call(rig[2], "/-/healthy")
    assert (answer.status, answer.text) == (200, "Healthy\n")


def test_ready_only_after_the_first_poll_of_every_server(fleet):
    exporter = Exporter(exporter_config(fleet), Catalog.load())
    server = serve(exporter, "127.0.0.1", 0, None)
    try:
        port = server.server_address[1]
        assert call(port, "/-/ready").status == 503
        exporter.poller.poll_server("EX01")
        assert call(port, "/-/ready").status == 503  # EX02 not yet
        exporter.poller.poll_server("EX02")
        answer = call(port, "/-/ready")
        assert (answer.status, answer.text) == (200, "Ready\n")
    finally:
        server.shutdown()
        server.server_close()
        exporter.stop()


@pytest.mark.parametrize("path", ["/metric", "/metrics/", "/probe/", "//metrics", "/favicon.ico", "/../etc/passwd"])
def test_unknown_paths_are_404(rig, path):
    assert call(rig[2], path).status == 404


def test_reload_only_by_post(rig):
    _, exporter, port = rig
    before = exporter.runtime.last_reload_timestamp
    answer = call(port, "/-/reload")
    assert answer.status == 405 and answer.headers["Allow"] == "POST"
    assert exporter.runtime.last_reload_timestamp == before


def test_absolute_form_is_the_same_route(rig):
    """RFC 9112 3.2.2: a server must accept the absolute form; it names the same route as the path."""
    answer = call(rig[2], "http://exporter.example/-/healthy")
    assert (answer.status, answer.text) == (200, "Healthy\n")


def test_an_absolute_form_that_is_no_url_is_400(rig):
    """`http://[::1/metrics` (an unclosed IPv6 bracket) made urlsplit raise ValueError, and the connection was
    dropped with no answer where every other malformed request line gets a 400."""
    connection = http.client.HTTPConnection("127.0.0.1", rig[2], timeout=30)
    try:
        connection.putrequest("GET", "http://[::1/metrics", skip_host=True)  # the client would parse it too
        connection.putheader("Host", "exporter")
        connection.endheaders()
        answer = Answer(connection.getresponse())
    finally:
        connection.close()
    assert (answer.status, answer.text) == (400, "Request target is not a valid URL\n")


def test_unknown_method_is_501(rig):
    assert call(rig[2], "/metrics", method="BREW").status == 501


@pytest.mark.parametrize("path", ["/metrics", "/probe?target=EX01", "/"])
def test_post_is_not_allowed_outside_reload(rig, path):
    fleet, _, port = rig
    before = requests_seen(fleet)
    answer = call(port, path, method="POST")
    assert answer.status == 405
    assert answer.headers["Allow"] == "GET, HEAD"
    assert requests_seen(fleet) == before


def test_over_long_url_is_414(rig):
    fleet, _, port = rig
    before = requests_seen(fleet)
    answer = call(port, "/probe?target=" + "A" * 3000)
    assert answer.status == 414
    assert requests_seen(fleet) == before


def test_head(rig):
    _, _, port = rig
    get = call(port, "/metrics")
    head = call(port, "/metrics", method="HEAD")
    assert head.status == 200 and head.body == b""
    assert head.headers["Content-Type"] == get.headers["Content-Type"]
    assert int(head.headers["Content-Length"]) > 1000


def test_gzip_when_asked(rig):
    _, _, port = rig
    plain = call(port, "/metrics")
    assert "Content-Encoding" not in plain.headers
    zipped = call(port, "/metrics", headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert int(zipped.headers["Content-Length"]) == len(zipped.body) < len(plain.body)
    text = gzip.decompress(zipped.body).decode()
    assert ("exchange_up", frozenset({"server": "EX01"}.items())) in samples(text)


def test_content_negotiation(rig):
    _, _, port = rig
    classic = call(port, "/metrics")
    assert classic.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    open_metrics = call(port, "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert open_metrics.headers["Content-Type"].startswith("application/openmetrics-text")
    assert open_metrics.text.endswith("# EOF\n")
    probe = call(port, "/probe?target=EX01", headers={"Accept": "application/openmetrics-text"})
    assert probe.headers["Content-Type"].startswith("application/openmetrics-text")
    assert probe.text.endswith("# EOF\n")


def test_promtool_accepts_metrics_and_probe(rig):
    _, _, port = rig
    for path in ("/metrics", "/probe?target=EX01"):
        result = subprocess.run([PROMTOOL, "check", "metrics"], input=call(port, path).body, capture_output=True,
                                timeout=30)
        assert result.returncode == 0, (path, result.stdout + result.stderr)


def test_concurrent_scrapes_while_polling(rig):
    _, exporter, port = rig
    polling = threading.Thread(target=poll_all, args=(exporter.poller,))
    polling.start()
    try:
        with ThreadPoolExecutor(50) as pool:
            answers = list(pool.map(lambda _: call(port, "/metrics", timeout=30), range(50)))
    finally:
        polling.join(timeout=60)
    assert [a.status for a in answers] == [200] * 50
    for answer in answers:
        assert ("exchange_up", frozenset({"server": "EX01"}.items())) in samples(answer.text)


# ---------------------------------------------------------------- the web config on the exporter's endpoint


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    ca, ca_key = issue("exporter test ca", None, None, ca=True)
    rogue_ca, rogue_key = issue("rogue ca", None, None, ca=True)
    write(directory, "ca", ca, ca_key)
    write(directory, "server", *issue("exporter", ca_key, ca.subject, ca=False, server=True))
    write(directory, "client", *issue("prometheus", ca_key, ca.subject, ca=False))
    write(directory, "rogue", *issue("prometheus", rogue_key, rogue_ca.subject, ca=False))
    return directory


def web_config(directory: Path, name: str, text: str) -> Path:
    """Write a web config and have promtool accept it before the exporter uses it."""
    path = directory / name
    path.write_text(text)
    assert Path(PROMTOOL).is_file(), "promtool is required (Debian package 'prometheus')"
    result = subprocess.run([PROMTOOL, "check", "web-config", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return path


@pytest.fixture(scope="module")
def secured(rig, pki):
    """The same exporter behind two web configs: TLS with basic auth, and TLS requiring client certificates.

    Their watchers' clock stands still: these tests are about TLS and passwords, not reloading (test_webconfig.py).
    On the real clock, a watcher of a file naming certificates reads it once more at its first check, a second
    after it started, with a new SSL context; a connection whose handshake came before that check and whose
    request came after it is closed unanswered (the web config changed since its handshake). On a loaded machine
    that second fell inside test_tls_with_basic_auth: "Remote end closed connection without response"."""
    _, exporter, _ = rig
    hashed = bcrypt.hashpw(WEB_PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    tls = f"tls_server_config:\n  cert_file: {pki}/server.crt\n  key_file: {pki}/server.key\n"
    basic = web_config(pki, "basic.yml", tls + f"basic_auth_users:\n  {WEB_USER}: '{hashed}'\n")
    mutual = web_config(pki, "mutual.yml", tls + f"  client_auth_type: RequireAndVerifyClientCert\n"
                                                 f"  client_ca_file: {pki}/ca.crt\n")
    still = ManualClock()
    servers = [serve(exporter, "127.0.0.1", 0, WebConfigWatcher(path, clock=still.now)) for path in (basic, mutual)]
    yield tuple(f"127.0.0.1:{s.server_address[1]}" for s in servers)
    for server in servers:
        server.shutdown()
        server.server_close()


def test_tls_with_basic_auth(secured, pki):
    address, _ = secured
    ca = str(pki / "ca.crt")
    ok = requests.get(f"https://{address}/metrics", verify=ca, auth=(WEB_USER, WEB_PASSWORD), timeout=10)
    assert ok.status_code == 200
    assert ("exchange_up", frozenset({"server": "EX01"}.items())) in samples(ok.text)
    for auth in (None, (WEB_USER, "wrong"), ("nobody", WEB_PASSWORD), (WEB_USER, "")):
        denied = requests.get(f"https://{address}/metrics", verify=ca, auth=auth, timeout=10)
        assert denied.status_code == 401, auth
        assert denied.headers["WWW-Authenticate"] == 'Basic realm="exchange-eems-exporter"'
        assert "exchange_up" not in denied.text
        assert_no_secret(denied.text, str(denied.headers))
    # every route is behind the password, /probe and /-/reload included
    for method, path in (("GET", "/probe?target=EX01"), ("GET", "/-/ready"), ("POST", "/-/reload")):
        assert requests.request(method, f"https://{address}{path}", verify=ca, timeout=10).status_code == 401


def test_tls_refuses_plain_http_and_unknown_servers(secured, pki):
    address, _ = secured
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://{address}/metrics", auth=(WEB_USER, WEB_PASSWORD), timeout=10)
    with pytest.raises(requests.exceptions.SSLError):  # a client that does not trust our CA
        requests.get(f"https://{address}/metrics", verify=str(pki / "rogue.crt"), timeout=10)


def test_client_certificate_required(secured, pki):
    _, address = secured
    ca = str(pki / "ca.crt")
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"https://{address}/metrics", verify=ca, timeout=10)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"https://{address}/metrics", verify=ca, cert=(str(pki / "rogue.crt"), str(pki / "rogue.key")),
                     timeout=10)
    ok = requests.get(f"https://{address}/metrics", verify=ca, cert=(str(pki / "client.crt"), str(pki / "client.key")),
                      timeout=10)
    assert ok.status_code == 200
    assert ("exchange_up", frozenset({"server": "EX01"}.items())) in samples(ok.text)


@pytest.mark.parametrize("other", [
    {"transport": "basic"},
    {"transport": "credssp"},
])
def test_a_probe_does_not_hand_another_modules_password_to_a_server(tmp_path, monkeypatch, other):
    """`/probe?module=` pairs any module with any configured server. A module that hands the server a credential
    it can use elsewhere (Basic and CredSSP give it the password) went to a server the configuration gives another
    module: a client of the port, without any web config, could send the organization collector's CredSSP
    password, or a Basic one, to whichever configured server it chose (the compromised one). Refused before
    anything connects unless the module is the server's own."""
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    with socket.socket() as bait:
        bait.bind(("127.0.0.1", 0))
        bait.listen(1)
        bait.setblocking(False)
        text = yaml.safe_dump({
            "modules": {
                "default": {"username": USERNAME, "password_env": PASSWORD_ENV, "scheme": "https"},
                "org": {**other, "username": USERNAME, "password_env": PASSWORD_ENV, "scheme": "https"},
            },
            "servers": [{"name": "EX01", "address": "127.0.0.1", "port": bait.getsockname()[1]},
                        {"name": "EX02", "address": "127.0.0.1", "port": bait.getsockname()[1], "module": "org"}],
        })
        exporter = Exporter(load_config_text(text, tmp_path), Catalog.load())
        with serving(exporter) as port:
            answer = call(port, "/probe?target=EX01&module=org", headers={"X-Prometheus-Scrape-Timeout-Seconds": "2"})
        assert answer.status == 400, answer.text
        assert "EX01" in answer.text and "own module" in answer.text
        with pytest.raises(BlockingIOError):
            bait.accept()  # no connection was attempted


@pytest.mark.parametrize("path", ["/server?name=%3Cscript%3Ealert(1)%3C/script%3E",
                                  "/probe?target=%3Cscript%3Ealert(1)%3C/script%3E", "/nowhere", "/metrics",
                                  "/-/healthy"])
def test_every_answer_forbids_sniffing(rig, path):
    """A 404 or 400 repeats what the client sent (a server name, a target) in text/plain, without nosniff: a browser
    that sniffed it as HTML would run a script a link put there. The pages had nosniff; now every answer has it,
    once."""
    _, _, port = rig
    answer = call(port, path)
    assert answer.headers.get_all("X-Content-Type-Options") == ["nosniff"], (answer.status, answer.headers)


def test_a_request_waiting_for_its_worker_at_shutdown_leaves_no_task_pending(monkeypatch):
    """At shutdown a connection's task that waits for a worker (a /metrics being built) never saw its transport
    aborted: it was left pending in a loop left open, and the garbage collector later reported it ("Task was
    destroyed but it is pending!", an ERROR) in whatever ran next, which failed tests that want a quiet log. Its
    connection was ended, so its task is cancelled and ends quietly, and the loop is closed."""
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    exporter = Exporter(load_config_text(minimal_config(), Path(".")), Catalog.load())
    building, release = threading.Event(), threading.Event()

    def held_body(accept: str):
        building.set()
        release.wait(30)
        return b"", "text/plain"

    monkeypatch.setattr(exporter, "metrics_body", held_body)
    server = serve(exporter, "127.0.0.1", 0, None)
    client = threading.Thread(target=lambda: _get_quietly(server.server_address[1], "/metrics"), daemon=True)
    try:
        client.start()
        assert building.wait(10), "the /metrics request never reached its worker"
        server.shutdown()
        assert server._loop.is_closed(), [t for t in asyncio.all_tasks(server._loop) if not t.done()]
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        exporter.stop()
        client.join(10)


def _get_quietly(port: int, path: str) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        connection.getresponse().read()
    except (OSError, http.client.HTTPException):
        pass  # the server went away under the request: what the test does
    finally:
        connection.close()
