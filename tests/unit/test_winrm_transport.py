"""pywinrm's transport as the exporter uses it (exporter/winrm_transport.py): sessions built by many polls at
once, as when a hundred polls connect together after a start or after HTTP.sys closed idle connections."""

from __future__ import annotations

import threading

from winrm.protocol import Protocol

from exporter.bounded_http import BoundedAdapter
from exporter.winrm_transport import bounded_protocol

THREADS, SESSIONS = 8, 2500


def test_sessions_built_in_parallel_do_not_trip_over_the_proxy_lookup():
    """requests' proxy lookup sets and deletes os.environ['no_proxy'] around each lookup; unserialised,
    one thread deletes it under another (KeyError 'no_proxy', about one session in 2,000 here)."""
    errors: list[str] = []

    def build() -> None:
        for _ in range(SESSIONS):
            protocol = bounded_protocol(Protocol("https://127.0.0.1:9/wsman", transport="ntlm", username="u",
                                                 password="p", server_cert_validation="ignore", proxy=None),
                                        BoundedAdapter(1024))
            try:
                protocol.transport.build_session()  # over HTTPS nothing is sent while building
            except Exception as error:  # noqa: BLE001 - any failure is what the test looks for
                errors.append(repr(error))
            protocol.transport.close_session()

    threads = [threading.Thread(target=build) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_requests_changes_the_environment_only_while_sessions_are_built_one_at_a_time(monkeypatch):
    """The proxy lookup's os.environ changes (set_environ) happen only under the session-building lock,
    the encryption handshake's requests included, which are sent outside it: a session that no longer
    trusts the environment makes no such change. Over plain HTTP against the simulator, so the NTLM
    handshake that sets up message encryption really is sent."""
    import requests.utils

    from exporter import winrm_transport
    from simulator.host import CommandOutput, SimulatedHost
    from simulator.server import Fleet

    unlocked = []
    original = requests.utils.set_environ
    monkeypatch.setattr(requests.utils, "set_environ", lambda *a: (
        unlocked.append(a) if not winrm_transport._SESSION_BUILDING.locked() else None) or original(*a))
    host = SimulatedHost(name="env", address="127.0.0.32", port=0, scheme="http",
                         run=lambda line: CommandOutput([b""], b"", 0))
    with Fleet([host], {"EXCH\\svc": "Pa55-word"}, control_address=("127.0.0.1", 0)):
        protocol = bounded_protocol(Protocol(f"http://{host.address}:{host.port}/wsman", transport="ntlm",
                                             username="EXCH\\svc", password="Pa55-word", proxy=None),
                                    BoundedAdapter(1 << 20))
        protocol.transport.build_session()
        protocol.close_shell(protocol.open_shell())
        protocol.transport.close_session()
    assert protocol.transport.encryption is not None  # the handshake did set up message encryption
    assert unlocked == []
