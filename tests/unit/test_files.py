"""Files the operator names are read at start and at every reload (which holds the runtime's lock): a FIFO named by
mistake blocked the read for ever, waiting for a writer; a password file or a web config was read whole, however
large. Each entry point now reads a regular file only, within a bound, and says so in one line."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from exporter.catalog import Catalog
from exporter.catalog_data import CatalogError
from exporter.catalog_update import read_source
from exporter.config import ConfigError, load_config, load_config_text
from exporter.webconfig import WebConfig, WebConfigError

CONFIG = """modules:
  default: {username: 'EXCH\\\\svc_monitor', password_file: PASSWORD}
servers: [ex01.contoso.com]
"""


def _within(seconds: float, read) -> BaseException | None:
    """What `read()` raised, or None; fails if it has not returned within `seconds` (it blocked)."""
    outcome: list = []

    def run() -> None:
        try:
            read()
            outcome.append(None)
        except BaseException as error:  # noqa: BLE001 - handed to the test
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still reading after {seconds} s: blocked"
    return outcome[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
@pytest.mark.parametrize("entry", ["config", "password_file", "web_config", "catalog_file", "catalog_from"])
def test_a_fifo_named_as_a_file_is_refused_at_once(tmp_path, entry):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    password = tmp_path / "password"
    password.write_text("secret")
    reads = {
        "config": lambda: load_config(fifo),
        "password_file": lambda: load_config_text(CONFIG.replace("PASSWORD", str(fifo)), tmp_path),
        "web_config": lambda: WebConfig.load(fifo),
        "catalog_file": lambda: Catalog.load(fifo),
        "catalog_from": lambda: read_source(str(fifo)),
    }
    error = _within(5, reads[entry])
    assert isinstance(error, (ConfigError, WebConfigError, CatalogError)), repr(error)
    assert "\n" not in str(error) and "secret" not in str(error)


def test_a_password_file_beyond_its_bound_is_refused(tmp_path):
    password = tmp_path / "password"
    password.write_bytes(b"x" * (64 << 10) + b"y")
    with pytest.raises(ConfigError, match="larger than 65536 bytes"):
        load_config_text(CONFIG.replace("PASSWORD", str(password)), tmp_path)
    password.write_bytes(b"x" * (64 << 10))
    assert load_config_text(CONFIG.replace("PASSWORD", str(password)), tmp_path).modules["default"].password


def test_a_web_config_beyond_its_bound_is_refused(tmp_path):
    web = tmp_path / "web.yml"
    web.write_text("# padding\n" * ((1 << 20) // 10 + 1) + "{}\n")
    with pytest.raises(WebConfigError, match="larger than 1048576 bytes"):
        WebConfig.load(web)


@pytest.mark.parametrize("key", ["cert_file", "key_file", "client_ca_file"])
def test_a_tls_file_beyond_its_bound_is_refused_before_the_ssl_module_reads_it(tmp_path, key):
    """The ssl module reads a certificate, key or CA file itself, whole and at every change: a multi-gigabyte file
    named by mistake held the web-config lock for as long as reading it took, then failed as "not a PEM pair"."""
    huge = tmp_path / "huge.pem"
    with huge.open("wb") as file:
        file.truncate(4 << 30)  # sparse: no disk used
    text = {"cert_file": "x.pem", "key_file": "x.pem", "client_ca_file": "x.pem",
            "client_auth_type": "RequireAndVerifyClientCert"}
    (tmp_path / "x.pem").write_text("not read\n")
    text[key] = str(huge)
    web = tmp_path / "web.yml"
    web.write_text("tls_server_config:\n" + "".join(f"  {k}: {v}\n" for k, v in text.items()))
    error = _within(5, lambda: WebConfig.load(web))
    assert isinstance(error, WebConfigError) and f"tls_server_config.{key}" in str(error), repr(error)
    assert "larger than 4194304 bytes" in str(error)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_a_fifo_named_as_a_tls_file_is_called_so(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {fifo}\n  key_file: {fifo}\n")
    error = _within(5, lambda: WebConfig.load(web))
    assert isinstance(error, WebConfigError) and "is not a regular file" in str(error), repr(error)


@pytest.mark.parametrize("entry", ["config", "web_config", "catalog_file", "catalog_from"])
def test_a_directory_named_as_a_file_is_refused_by_its_path(tmp_path, entry):
    """fdopen refused a directory with an error naming the descriptor: "Is a directory: 3"."""
    folder = tmp_path / "folder"
    folder.mkdir()
    reads = {
        "config": lambda: load_config(folder),
        "web_config": lambda: WebConfig.load(folder),
        "catalog_file": lambda: Catalog.load(folder),
        "catalog_from": lambda: read_source(str(folder)),
    }
    error = _within(5, reads[entry])
    assert isinstance(error, (ConfigError, WebConfigError, CatalogError)), repr(error)
    assert str(folder) in str(error) and "not a regular file" in str(error), str(error)
