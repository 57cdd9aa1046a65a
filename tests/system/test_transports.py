"""The exporter's WinRM transports over HTTPS against the simulator: NTLM with channel binding, Basic,
client-certificate authentication, certificate validation on by default."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from exporter.catalog import Catalog
from exporter.config import load_config_text
from exporter.poller import Poller

from ..conftest import PASSWORD_ENV, USERNAME, SimulatedFleet, relocate

SCENARIO = {
    "defaults": {"scheme": "https"},
    "servers": [{"name": "EX01", "address": "127.0.0.1", "build": "15.2.2562.53"}],
}


@pytest.fixture(scope="module")
def secure_fleet():
    with SimulatedFleet(relocate(SCENARIO)) as fleet:
        yield fleet


def poll_with(fleet: SimulatedFleet, module: dict, tmp_path: Path):
    host = fleet.hosts["EX01"]
    config = {
        "poll": {"interval": "60s", "timeout": "15s"},
        "modules": {"m": {"scheme": "https", "operation_timeout": "3s", "read_timeout": "5s", **module}},
        "servers": [{"name": "EX01", "address": host.address, "port": host.port}],
    }
    poller = Poller(load_config_text(yaml.safe_dump(config), tmp_path), Catalog.load())
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
