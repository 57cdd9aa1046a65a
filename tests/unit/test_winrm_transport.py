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
