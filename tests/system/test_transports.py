"""The exporter's WinRM transports over HTTPS against the simulator: NTLM with channel binding, Basic,
client-certificate authentication, certificate validation on by default."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from exporter.catalog import Catalog
from exporter.config import ConfigError, load_config_text
from exporter.poller import Poller
from exporter.runtime import SafeRuntime

from ..conftest import PASSWORD_ENV, USERNAME, SimulatedFleet, relocate

SCENARIO = {
    "defaults": {"scheme": "https"},
    "servers": [{"name": "EX01", "address": "127.0.0.1", "build": "15.2.2562.53"}],
}


@pytest.fixture(scope="module")
def secure_fleet():
    with SimulatedFleet(relocate(SCENARIO)) as fleet:
        yield fleet


def config_with(fleet: SimulatedFleet, module: dict, tmp_path: Path):
    host = fleet.hosts["EX01"]
    config = {
        "poll": {"interval": "60s", "timeout": "15s"},
        "modules": {"m": {"scheme": "https", "operation_timeout": "3s", "read_timeout": "5s", **module}},
        "servers": [{"name": "EX01", "address": host.address, "port": host.port}],
    }
    return load_config_text(yaml.safe_dump(config), tmp_path)


def poll_with(fleet: SimulatedFleet, module: dict, tmp_path: Path):
    poller = Poller(SafeRuntime(config_with(fleet, module, tmp_path), Catalog.load()))
    try:
        return poller.poll_server("EX01")
    finally:
        poller.stop()


def test_ntlm_over_https_with_the_ca(secure_fleet, tmp_path):
    result = poll_with(secure_fleet, {"username": USERNAME, "password_env": PASSWORD_ENV,
                                      "ca_file": str(secure_fleet.fleet.ca_file)}, tmp_path)
    assert result.outcome.success, result.outcome


def test_basic_over_https(secure_fleet, tmp_path):
    result = poll_with(secure_fleet, {"transport": "basic", "username": USERNAME, "password_env": PASSWORD_ENV,
                                      "ca_file": str(secure_fleet.fleet.ca_file)}, tmp_path)
    assert result.outcome.success, result.outcome


def test_client_certificate_authentication(secure_fleet, tmp_path):
    cert, key = secure_fleet.fleet.client_certificate(USERNAME)
    result = poll_with(secure_fleet, {"transport": "certificate", "cert_file": str(cert), "key_file": str(key),
                                      "ca_file": str(secure_fleet.fleet.ca_file)}, tmp_path)
    assert result.outcome.success, result.outcome


def test_certificate_validation_is_on_by_default(secure_fleet, tmp_path):
    """The simulator's CA is not a public CA: without ca_file the poll must fail TLS, not proceed."""
    result = poll_with(secure_fleet, {"username": USERNAME, "password_env": PASSWORD_ENV}, tmp_path)
    assert result.outcome.error_reason == "tls_error", result.outcome
    assert secure_fleet.fleet.open_shells() == 0


def test_validation_can_be_turned_off_explicitly(secure_fleet, tmp_path):
    result = poll_with(secure_fleet, {"username": USERNAME, "password_env": PASSWORD_ENV,
                                      "insecure_skip_verify": True}, tmp_path)
    assert result.outcome.success, result.outcome


def encrypt_key(key: Path, into: Path) -> None:
    private = serialization.load_pem_private_key(key.read_bytes(), None)
    into.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.BestAvailableEncryption(b"pass-phrase")))


def test_a_passphrase_protected_key_is_refused_at_load_without_a_prompt(secure_fleet, tmp_path, capfd):
    """The exporter has no passphrase to give: OpenSSL, asked for one, prompts on the terminal (and a poll thread
    waits there for ever when the exporter runs in one). Before, such a key_file was accepted and each poll asked
    "Enter PEM pass phrase:"; now the configuration names it."""
    cert, key = secure_fleet.fleet.client_certificate(USERNAME)
    encrypt_key(key, tmp_path / "encrypted.key")
    with pytest.raises(ConfigError, match="key_file"):
        config_with(secure_fleet, {"transport": "certificate", "cert_file": str(cert),
                                   "key_file": str(tmp_path / "encrypted.key"),
                                   "ca_file": str(secure_fleet.fleet.ca_file)}, tmp_path)
    assert "pass phrase" not in capfd.readouterr().err


def test_a_key_file_rewritten_with_a_passphrase_fails_the_poll_as_tls_without_a_prompt(secure_fleet, tmp_path, capfd):
    """A key replaced by an encrypted one after the configuration was read: the poll fails with `tls_error` at once
    (before: OpenSSL's prompt, and with no terminal an EINVAL taken for a network error and retried)."""
    cert, key = secure_fleet.fleet.client_certificate(USERNAME)
    rotated = tmp_path / "rotated.key"
    rotated.write_bytes(key.read_bytes())
    config = config_with(secure_fleet, {"transport": "certificate", "cert_file": str(cert), "key_file": str(rotated),
                                        "ca_file": str(secure_fleet.fleet.ca_file)}, tmp_path)
    encrypt_key(key, rotated)
    poller = Poller(SafeRuntime(config, Catalog.load()))
    try:
        outcome = poller.poll_server("EX01").outcome
    finally:
        poller.stop()
    assert outcome.error_reason == "tls_error" and "key_file" in outcome.error_message, outcome
    assert "pass phrase" not in capfd.readouterr().err
