"""End-to-end checks of the web-config: a real TLS server on loopback, real clients, and promtool.

The server below uses WebConfigWatcher exactly as exporter/web/transport.py does: the SSL context
per accepted connection, basic auth and extra headers per request.
"""

from __future__ import annotations

import base64
import http.server
import logging
import os
import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import bcrypt
import pytest
import requests
from cryptography import x509
from cryptography.x509.oid import NameOID

from exporter.webconfig import WebConfig, WebConfigError, WebConfigWatcher, exposed_secret_files

from ..clock import ManualClock
from ..pki import issue, write

PASSWORD = "s3cret-Passw0rd!"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


# --- certificates -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca, ca_key = issue("test ca", None, None, ca=True)
    other_ca, other_key = issue("untrusted ca", None, None, ca=True)
    write(d, "ca", ca, ca_key)
    write(d, "server", *issue("server one", ca_key, ca.subject, ca=False, server=True))
    write(d, "server2", *issue("server two", ca_key, ca.subject, ca=False, server=True))
    write(d, "client", *issue("prometheus", ca_key, ca.subject, ca=False))
    write(d, "rogue", *issue("rogue", other_key, other_ca.subject, ca=False))
    return d


@pytest.fixture(scope="module")
def password_hash() -> str:
    return bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()


# --- promtool ---------------------------------------------------------------------------------------

def promtool_check(path: Path) -> subprocess.CompletedProcess:
    assert Path(PROMTOOL).is_file(), "promtool is required (Debian package 'prometheus'); not found"
    return subprocess.run([PROMTOOL, "check", "web-config", str(path)], capture_output=True, text=True, timeout=60)


def write_config(directory: Path, text: str, name: str = "web.yml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def load_valid(path: Path) -> WebConfig:
    """Both promtool and this implementation must accept every valid file the tests use."""
    result = promtool_check(path)
    assert result.returncode == 0, result.stdout + result.stderr
    return WebConfig.load(path)


# --- a test server that uses the watcher the way exporter/web/transport.py does-----------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        config = self.server.watcher.current()
        if not config.check_basic_auth(self.headers.get("Authorization")):
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="exchange-eems-exporter"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"ok\n"
        self.send_response(200)
        for name, value in config.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, watcher: WebConfigWatcher):
        self.watcher = watcher
        super().__init__(("127.0.0.1", 0), _Handler)

    def get_request(self):
        sock, addr = self.socket.accept()
        context = self.watcher.current().ssl_context()
        if context is not None:
            sock = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def finish_request(self, request, client_address):
        if isinstance(request, ssl.SSLSocket):
            try:
                request.settimeout(5)
                request.do_handshake()
            except (ssl.SSLError, OSError):
                return
        super().finish_request(request, client_address)


@pytest.fixture
def serve():
    servers = []

    def start(config_path: Path, clock: ManualClock | None = None) -> str:
        server = _Server(WebConfigWatcher(config_path, **({"clock": clock.now} if clock else {})))
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()  # shutdown() waits a poll
        servers.append(server)
        scheme = "https" if server.watcher.current().ssl_context() is not None else "http"
        return f"{scheme}://127.0.0.1:{server.server_address[1]}/metrics"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _tls_config(pki: Path, extra: str = "") -> str:
    return f"tls_server_config:\n  cert_file: {pki}/server.crt\n  key_file: {pki}/server.key\n{extra}"


# --- tests: valid files over real connections ---------------------------------------------------------

def test_plain_http_with_basic_auth_and_headers(tmp_path, serve, password_hash):
    path = write_config(tmp_path, f"basic_auth_users:\n  prometheus: '{password_hash}'\n"
                                  "http_server_config:\n  headers:\n    X-Frame-Options: deny\n")
    load_valid(path)
    url = serve(path)
    assert url.startswith("http://")
    denied = requests.get(url, timeout=5)
    assert denied.status_code == 401
    assert denied.headers["WWW-Authenticate"] == 'Basic realm="exchange-eems-exporter"'
    assert requests.get(url, auth=("prometheus", "wrong"), timeout=5).status_code == 401
    assert requests.get(url, auth=("nobody", PASSWORD), timeout=5).status_code == 401
    ok = requests.get(url, auth=("prometheus", PASSWORD), timeout=5)
    assert ok.status_code == 200 and ok.text == "ok\n"
    assert ok.headers["X-Frame-Options"] == "deny"


def test_no_users_means_open(tmp_path):
    config = load_valid(write_config(tmp_path, "{}\n"))
    assert config.check_basic_auth(None) is True
    assert config.ssl_context() is None


def test_bcrypt_runs_once_per_credential(tmp_path, password_hash, monkeypatch):
    config = load_valid(write_config(tmp_path, f"basic_auth_users:\n  prometheus: '{password_hash}'\n"))
    calls = []
    real = bcrypt.checkpw
    monkeypatch.setattr(bcrypt, "checkpw", lambda p, h: calls.append(1) or real(p, h))
    header = "Basic " + base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode()
    assert all(config.check_basic_auth(header) for _ in range(5))
    assert len(calls) == 1
    wrong = "Basic " + base64.b64encode(b"prometheus:nope").decode()
    assert not config.check_basic_auth(wrong) and not config.check_basic_auth(wrong)
    assert len(calls) == 3, "a wrong password must never be answered from the cache"
    assert PASSWORD.encode() not in repr(config._verified).encode()


@pytest.mark.parametrize("header", [
    None, "", "Bearer abc", "Basic", "Basic !!!notbase64", "Basic " + base64.b64encode(b"nocolon").decode(),
    "Basic " + base64.b64encode(b"\xff\xfe:x").decode(),
    "Basic " + base64.b64encode(b"prometheus:" + b"a" * 100).decode(),
])
def test_malformed_authorization_is_refused_not_crashed(tmp_path, password_hash, header):
    config = load_valid(write_config(tmp_path, f"basic_auth_users:\n  prometheus: '{password_hash}'\n"))
    assert config.check_basic_auth(header) is False


def _client_context(pki: Path, cert: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if cert:
        ctx.load_cert_chain(pki / f"{cert}.crt", pki / f"{cert}.key")
    return ctx


def _get(url: str, ctx: ssl.SSLContext) -> int:
    """One HTTPS GET with a given client context; returns the status or raises on a TLS failure."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := tls.recv(4096):
                data += chunk
    if not data:
        raise ConnectionError("connection closed without a response")
    return int(data.split(b" ", 2)[1])


def test_tls_with_basic_auth(tmp_path, serve, pki, password_hash):
    path = write_config(tmp_path, _tls_config(pki) + f"basic_auth_users:\n  prometheus: '{password_hash}'\n")
    load_valid(path)
    url = serve(path)
    assert url.startswith("https://")
    ca = str(pki / "ca.crt")
    assert requests.get(url, verify=ca, timeout=5).status_code == 401
    assert requests.get(url, verify=ca, auth=("prometheus", PASSWORD), timeout=5).status_code == 200
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(url, timeout=5)  # system trust store does not know the test CA


def test_require_and_verify_client_cert(tmp_path, serve, pki):
    path = write_config(tmp_path, _tls_config(pki, "  client_auth_type: RequireAndVerifyClientCert\n"
                                                   "  client_ca_file: ca.crt\n"), name="mtls.yml")
    # client_ca_file is relative: resolved against the config file's directory, as exporter-toolkit does.
    shutil.copy(pki / "ca.crt", tmp_path / "ca.crt")
    load_valid(path)
    url = serve(path)
    assert _get(url, _client_context(pki, "client")) == 200
    for client in (None, "rogue"):
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            _get(url, _client_context(pki, client))


def test_verify_client_cert_if_given(tmp_path, serve, pki):
    path = write_config(tmp_path, _tls_config(pki, f"  client_auth_type: VerifyClientCertIfGiven\n"
                                                   f"  client_ca_file: {pki}/ca.crt\n"))
    load_valid(path)
    url = serve(path)
    assert _get(url, _client_context(pki)) == 200
    assert _get(url, _client_context(pki, "client")) == 200
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        _get(url, _client_context(pki, "rogue"))


def _tls11_client(pki: Path) -> ssl.SSLContext:
    ctx = _client_context(pki)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.minimum_version = ssl.TLSVersion.TLSv1_1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    return ctx


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls11_refused_at_default_min_version_but_allowed_when_configured(tmp_path, serve, pki):
    strict = write_config(tmp_path, _tls_config(pki, "  min_version: TLS12\n"), name="strict.yml")
    load_valid(strict)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        _get(serve(strict), _tls11_client(pki))
    # The control: the same client gets through when the config allows TLS 1.1, so the refusal above
    # comes from min_version and not from the client being unable to speak TLS 1.1 at all.
    legacy = write_config(tmp_path, _tls_config(pki, "  min_version: TLS11\n"), name="legacy.yml")
    load_valid(legacy)
    assert _get(serve(legacy), _tls11_client(pki)) == 200


def test_a_reload_cannot_lower_min_version(tmp_path, serve, pki, caplog):
    """A reload never lowers security (webconfig.py), but `lowered_security` looked only at TLS, users and
    client certificates: a file rewritten without its `min_version: TLS13` line (cut short, or an edit) was
    taken at once, and a TLS 1.2 client the running config refused was served."""
    path = write_config(tmp_path, _tls_config(pki, "  min_version: TLS13\n"))
    clock = ManualClock()
    url = serve(path, clock)
    tls12 = _client_context(pki)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        _get(url, tls12)
    path.write_text(_tls_config(pki))
    clock.advance(1.1)
    with caplog.at_level(logging.WARNING, logger="exporter.webconfig"):
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            _get(url, tls12)
    assert "min_version" in caplog.text


def test_a_reload_cannot_lower_max_version(tmp_path, serve, pki, caplog):
    """`lowered_security` compared min_version only: a file that added `max_version: TLS12` was taken at once, and
    every client, each of which spoke TLS 1.3 with the running config, was served TLS 1.2 from then on (a client
    that accepts only TLS 1.3 was refused)."""
    path = write_config(tmp_path, _tls_config(pki))
    clock = ManualClock()
    url = serve(path, clock)
    tls13 = _client_context(pki)
    tls13.minimum_version = ssl.TLSVersion.TLSv1_3
    assert _get(url, tls13) == 200
    path.write_text(_tls_config(pki, "  max_version: TLS12\n"))
    clock.advance(1.1)
    with caplog.at_level(logging.WARNING, logger="exporter.webconfig"):
        assert _get(url, tls13) == 200
    assert "max_version" in caplog.text


def _negotiated_cipher(url: str, ctx: ssl.SSLContext) -> str:
    host, port = url.split("//")[1].split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.cipher()[0]


def test_no_web_config_lets_the_client_choose_a_weaker_cipher(tmp_path, serve, pki):
    """A reload never lowers TLS, and `lowered_security` does not look at `prefer_server_cipher_suites`: it need not,
    since the server's order always holds (Go's crypto/tls ignores the field since 1.17, and Python sets
    OP_CIPHER_SERVER_PREFERENCE on every context). Were `false` to apply, a client listing a CBC suite first would get
    it instead of AES-GCM after such a reload, and this test would fail."""
    path = write_config(tmp_path, _tls_config(pki))
    clock = ManualClock()
    url = serve(path, clock)
    cbc_first = _client_context(pki)
    cbc_first.maximum_version = ssl.TLSVersion.TLSv1_2
    cbc_first.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384")
    assert _negotiated_cipher(url, cbc_first) == "ECDHE-ECDSA-AES256-GCM-SHA384"
    path.write_text(_tls_config(pki, "  prefer_server_cipher_suites: false\n"))
    clock.advance(1.1)
    assert _negotiated_cipher(url, cbc_first) == "ECDHE-ECDSA-AES256-GCM-SHA384"


@pytest.mark.parametrize("weaker", ["  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: {pki}/ca.crt\n", ""],
                         ids=["if given", "no client certificates"])
def test_a_reload_cannot_stop_requiring_client_certificates(tmp_path, serve, pki, caplog, weaker):
    """docs/security.md: a file that would stop requiring client certificates is refused. No test held that
    promise: with the check taken out of `lowered_security`, every test still passed, and a client without a
    certificate was served once the file was rewritten."""
    path = write_config(tmp_path, _tls_config(pki, "  client_auth_type: RequireAndVerifyClientCert\n"
                                                   f"  client_ca_file: {pki}/ca.crt\n"))
    clock = ManualClock()
    url = serve(path, clock)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        _get(url, _client_context(pki))
    path.write_text(_tls_config(pki, weaker.format(pki=pki)))
    clock.advance(1.1)
    with caplog.at_level(logging.WARNING, logger="exporter.webconfig"):
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            _get(url, _client_context(pki))
    assert "stops requiring client certificates" in caplog.text
    assert _get(url, _client_context(pki, "client")) == 200


def _peer_cn(url: str, pki: Path) -> str:
    host, port = url.split("//")[1].split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with _client_context(pki).wrap_socket(raw, server_hostname="localhost") as tls:
            cert = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
            tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            tls.recv(4096)
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def test_certificate_rotation_without_restart(tmp_path, serve, pki, caplog):
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(pki / "server.crt", live / "tls.crt")
    shutil.copy(pki / "server.key", live / "tls.key")
    path = write_config(tmp_path, "tls_server_config:\n  cert_file: live/tls.crt\n  key_file: live/tls.key\n")
    load_valid(path)
    clock = ManualClock()
    url = serve(path, clock)
    assert _peer_cn(url, pki) == "server one"

    # Half-way through a rotation the new certificate does not match the old key: keep serving the old pair.
    shutil.copy(pki / "server2.crt", live / "tls.crt")
    clock.advance(1.1)
    with caplog.at_level(logging.WARNING, logger="exporter.webconfig"):
        assert _peer_cn(url, pki) == "server one"
    assert "keeping the previous web config" in caplog.text and "cert_file" in caplog.text

    shutil.copy(pki / "server2.key", live / "tls.key")
    clock.advance(1.1)
    assert _peer_cn(url, pki) == "server two"


def test_watcher_keeps_last_good_config_on_bad_edit(tmp_path, password_hash, caplog):
    path = write_config(tmp_path, f"basic_auth_users:\n  prometheus: '{password_hash}'\n")
    clock = ManualClock()
    watcher = WebConfigWatcher(path, clock=clock.now)
    first = watcher.current()
    assert watcher.current() is first, "unchanged file must not be re-read"
    path.write_text("basic_auth_users:\n  prometheus: plaintext-oops\n")
    assert watcher.current() is first, "the file is looked at again only after the check interval"
    clock.advance(1.1)
    with caplog.at_level(logging.WARNING, logger="exporter.webconfig"):
        assert watcher.current() is first
    assert "basic_auth_users.prometheus" in caplog.text
    assert "plaintext-oops" not in caplog.text
    path.write_text(f"basic_auth_users:\n  grafana: '{password_hash}'\n")
    clock.advance(1.1)
    assert watcher.current().check_basic_auth("Basic " + base64.b64encode(f"grafana:{PASSWORD}".encode()).decode())


def test_a_reload_keeps_verified_credentials(tmp_path, password_hash, monkeypatch):
    """Prometheus' credential stays verified across a reload that keeps its user and hash: its next scrape
    costs no bcrypt (and cannot queue behind password guessers)."""
    path = write_config(tmp_path, f"basic_auth_users:\n  prometheus: '{password_hash}'\n")
    watcher = WebConfigWatcher(path, check_interval=0)
    header = "Basic " + base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode()
    assert watcher.current().check_basic_auth(header)
    path.write_text(f"basic_auth_users:\n  prometheus: '{password_hash}'\n  grafana: '{password_hash}'\n")
    reloaded = watcher.current()
    assert "grafana" in reloaded.users
    assert reloaded.cached_verdict(header) is True


def test_a_file_that_cannot_be_read_keeps_the_last_good_config(tmp_path, password_hash, caplog):
    """A TLS file that cannot be read (a rotated key the exporter's user may not read, EACCES; here a name over
    NAME_MAX, ENAMETOOLONG, since the tests run as root) raised OSError out of WebConfig.load: the watcher let it
    escape, so every connection was dropped unanswered while the reload metrics said all was well."""
    path = write_config(tmp_path, f"basic_auth_users:\n  prometheus: '{password_hash}'\n")
    unreadable = f"tls_server_config:\n  cert_file: {tmp_path / ('c' * 300)}\n  key_file: k.pem\n"
    with pytest.raises(WebConfigError, match="cannot read a file it names"):
        WebConfigWatcher(write_config(tmp_path, unreadable, "unreadable.yml"))
    watcher = WebConfigWatcher(path, check_interval=0)
    first = watcher.current()
    path.write_text(path.read_text() + unreadable)
    with caplog.at_level(logging.ERROR, logger="exporter.webconfig"):
        assert watcher.current() is first
    assert "keeping the previous web config" in caplog.text and "cannot read a file it names" in caplog.text
    metrics = {sample.name: sample.value for family in watcher.collect() for sample in family.samples}
    assert metrics["exchange_exporter_web_config_last_reload_successful"] == 0
    assert metrics["exchange_exporter_web_config_reload_failures_total"] == 1


def test_an_edit_landing_while_the_watcher_reads_is_read_at_the_next_check(tmp_path, password_hash, monkeypatch):
    """The watcher took the files' fingerprint after reading them: a second edit landing while the first was read
    (an atomic rename by an editor or a deploy tool) was taken as read, so the basic auth it added was never
    enforced while the reload metrics said all was well."""
    path = write_config(tmp_path, "{}\n")
    clock = ManualClock()
    watcher = WebConfigWatcher(path, clock=clock.now)
    headers = "http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n"
    secured = f"{headers}basic_auth_users:\n  prometheus: '{password_hash}'\n"  # keeps the header: dropping it is refused
    load = WebConfig.load.__func__

    def load_while_the_next_edit_lands(cls, file):
        config = load(cls, file)
        if not config.users:
            write_config(tmp_path, secured, "web.yml.new").replace(path)
        return config

    monkeypatch.setattr(WebConfig, "load", classmethod(load_while_the_next_edit_lands))
    path.write_text(headers)
    clock.advance(1.1)
    assert not watcher.current().users  # the first edit, read while the second landed
    clock.advance(1.1)
    assert watcher.current().check_basic_auth(None) is False, "the second edit was never read"


def test_certificates_unchanged_since_the_start_are_not_read_again(tmp_path, pki):
    """A web config naming certificates was read once more at the watcher's first check (their state before the
    first read was unknown), and the new config closed every connection opened in the exporter's first second."""
    path = write_config(tmp_path, _tls_config(pki))
    clock = ManualClock()
    watcher = WebConfigWatcher(path, clock=clock.now)
    first = watcher.current()
    clock.advance(1.1)
    assert watcher.current() is first
    path.write_text(_tls_config(pki).replace("server.", "server2."))
    clock.advance(1.1)
    second = watcher.current()
    assert second is not first and second.watched_files != first.watched_files
    clock.advance(1.1)
    assert watcher.current() is second, "a reload naming other certificates is settled when it is read"


def test_watcher_refuses_a_bad_file_at_startup(tmp_path):
    with pytest.raises(WebConfigError, match="nonsense"):
        WebConfigWatcher(write_config(tmp_path, "nonsense: 1\n"))


# --- invalid files: promtool and this implementation both refuse, ours names the key ----------------

BAD_FILES = {
    "unknown top-level key": ("nonsense: 1\n", "nonsense"),
    "unknown tls key": ("tls_server_config:\n  cert_fil: x\n", "tls_server_config.cert_fil"),
    "newer toolkit key": ("rate_limit:\n  burst: 1\n", "rate_limit"),
    "hash is not bcrypt": ("basic_auth_users:\n  alice: hunter2\n", "basic_auth_users.alice"),
    "header not allowed": ("http_server_config:\n  headers:\n    X-Foo: bar\n", "http_server_config.headers.X-Foo"),
    "header value not allowed": ("http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
                                 "http_server_config.headers.X-Frame-Options"),
    "missing key_file": ("tls_server_config:\n  cert_file: {pki}/server.crt\n", "tls_server_config.key_file"),
    "missing cert file": ("tls_server_config:\n  cert_file: /nonexistent.crt\n  key_file: {pki}/server.key\n",
                          "tls_server_config.cert_file"),
    "cert and key mismatch": ("tls_server_config:\n  cert_file: {pki}/server.crt\n  key_file: {pki}/server2.key\n",
                              "tls_server_config.cert_file"),
    "bad client auth": (_tls_config(Path("{pki}"), "  client_auth_type: Always\n"), "tls_server_config.client_auth_type"),
    "ca without client auth": (_tls_config(Path("{pki}"), "  client_ca_file: {pki}/ca.crt\n"),
                               "tls_server_config.client_ca_file"),
    "bad tls version": (_tls_config(Path("{pki}"), "  min_version: TLS14\n"), "tls_server_config.min_version"),
    "not a mapping": ("- a\n- b\n", "expected a mapping, got list"),
    "bad yaml": ("tls_server_config: [\n", "not valid YAML"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_invalid_files_rejected_by_both(tmp_path, pki, case):
    text, expected = BAD_FILES[case]
    path = write_config(tmp_path, text.replace("{pki}", str(pki)))
    result = promtool_check(path)
    assert result.returncode != 0, f"promtool accepted {case}: {result.stdout}"
    with pytest.raises(WebConfigError) as excinfo:
        WebConfig.load(path)
    assert expected in str(excinfo.value)
    assert str(path) in str(excinfo.value)


def test_documented_python_limitation_require_any_client_cert(tmp_path, pki):
    """promtool accepts RequireAnyClientCert; Python's ssl cannot do it, so we refuse with the reason."""
    path = write_config(tmp_path, _tls_config(pki, "  client_auth_type: RequireAnyClientCert\n"))
    assert promtool_check(path).returncode == 0
    with pytest.raises(WebConfigError, match="client_auth_type.*RequireAndVerifyClientCert"):
        WebConfig.load(path)


def test_secret_never_in_error_text(tmp_path):
    path = write_config(tmp_path, "basic_auth_users:\n  alice: 'my-plain-password'\n")
    with pytest.raises(WebConfigError) as excinfo:
        WebConfig.load(path)
    assert "my-plain-password" not in str(excinfo.value)


@pytest.mark.parametrize(("text", "expected"), [
    ("tls_server_config: " + "[" * 20000 + "]" * 20000 + "\n", "nested too deeply"),
    ("tls_server_config:\n  min_version: \x07\n", "character #x0007"),
    ("tls_server_config:\n  min_version: [TLS12\n", "line 3, column 1"),
])
def test_yaml_errors_are_reported_like_the_exporter_configuration(tmp_path, text, expected):
    """A file too deeply nested for the YAML parser is a WebConfigError (it was a RecursionError, which the
    watcher does not catch), and every YAML error says where, as the exporter's own configuration does."""
    with pytest.raises(WebConfigError) as excinfo:
        WebConfig.load(write_config(tmp_path, text))
    assert "not valid YAML" in str(excinfo.value) and expected in str(excinfo.value)


def test_a_refused_file_that_takes_long_to_read_is_not_read_again_at_every_check(tmp_path, password_hash, monkeypatch):
    """A refused web config of 1 MiB of YAML took 2.5 s to parse and was parsed again at every check (each second),
    for as long as it stayed: on the exporter's event loop, 5 s per request. Now an unchanged refused file is read
    again after ten times what reading it took (a small one still at every check), a changed one at the next check."""
    path = write_config(tmp_path, f"basic_auth_users:\n  prometheus: '{password_hash}'\n")
    clock = ManualClock()
    watcher = WebConfigWatcher(path, clock=clock.now)
    first = watcher.current()
    load = WebConfig.load.__func__
    reads = []

    def slow_load(cls, file):
        reads.append(clock.now())
        clock.advance(2.5)  # what parsing the file took
        return load(cls, file)

    monkeypatch.setattr(WebConfig, "load", classmethod(slow_load))
    path.write_text("basic_auth_users:\n" + "".join(f"  u{i}: not-a-hash\n" for i in range(100)))
    clock.advance(1.1)
    assert watcher.current() is first and len(reads) == 1
    for _ in range(20):  # 22 s: less than ten times the 2.5 s
        clock.advance(1.1)
        assert watcher.current() is first
    assert len(reads) == 1, f"the unchanged refused file was read {len(reads)} times"
    clock.advance(5)
    assert watcher.current() is first and len(reads) == 2, "it is read again in the end (a file it names may appear)"
    path.write_text(f"basic_auth_users:\n  grafana: '{password_hash}'\n")
    clock.advance(1.1)
    assert "grafana" in watcher.current().users, "a changed file is read at the next check"


def test_a_reload_cannot_drop_a_configured_response_header(tmp_path, caplog):
    """A file cut short before its http_server_config (or one that left it out) was taken, and the exporter stopped
    sending Strict-Transport-Security and X-Frame-Options without a word, while a file cut short before its users
    or its min_version was refused."""
    headers = "http_server_config:\n  headers:\n    Strict-Transport-Security: max-age=31536000\n    X-Frame-Options: deny\n"
    path = write_config(tmp_path, headers)
    watcher = WebConfigWatcher(path, check_interval=0)
    first = watcher.current()
    path.write_text("http_server_config:\n  headers:\n    X-Frame-Options: deny\n")
    with caplog.at_level(logging.ERROR, logger="exporter.webconfig"):
        assert watcher.current() is first
    assert "drops the response header Strict-Transport-Security" in caplog.text
    path.write_text(headers.replace("deny", "sameorigin") + "    X-Content-Type-Options: nosniff\n")
    assert watcher.current().headers["X-Frame-Options"] == "sameorigin", "a header changed or added is taken"


@pytest.mark.skipif(os.name == "nt", reason="POSIX mode bits")
def test_a_tls_key_or_users_file_every_user_may_read_is_named_at_start_and_reload(tmp_path, pki, password_hash,
                                                                                  caplog):
    """The exporter's configuration named a password file, keytab or key of mode 0644 (config.exposed_secret_files),
    but the web config's TLS private key and its basic_auth_users' hashes earned no word: anyone with a shell on the
    host could pose as the exporter, or crack the hashes offline. Now each is named with its mode, at start and at
    every reload that applies the file."""
    shutil.copy(pki / "server.crt", tmp_path / "tls.crt")
    key = tmp_path / "tls.key"
    shutil.copy(pki / "server.key", key)
    key.chmod(0o600)
    path = write_config(tmp_path, "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"
                                  f"basic_auth_users:\n  prometheus: '{password_hash}'\n")
    path.chmod(0o600)
    assert exposed_secret_files(WebConfig.load(path)) == []
    key.chmod(0o644)
    path.chmod(0o666)
    clock = ManualClock()
    with caplog.at_level(logging.WARNING, logger="exporter.webconfig"):
        watcher = WebConfigWatcher(path, clock=clock.now)
    assert [record.getMessage() for record in caplog.records] == [
        f"web config tls_server_config.key_file: {str(key)!r} can be read by every user of this host (mode 0644): chmod "
        "o-rwx it (in Kubernetes: the Secret volume's defaultMode: 0440, with the pod's fsGroup)",
        f"web config basic_auth_users: {str(path)!r} can be read and written by every user of this host (mode 0666): "
        "chmod o-rwx it (in Kubernetes: the Secret volume's defaultMode: 0440, with the pod's fsGroup)"]
    caplog.clear()
    path.write_text(path.read_text() + "http_server_config:\n  headers:\n    X-Frame-Options: deny\n")
    clock.advance(1.1)
    with caplog.at_level(logging.WARNING, logger="exporter.webconfig"):
        assert watcher.current().headers == {"X-Frame-Options": "deny"}
    assert len(caplog.records) == 2 and "tls_server_config.key_file" in caplog.records[0].getMessage()
    assert PASSWORD not in caplog.text
