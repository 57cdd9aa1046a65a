"""CredSSP (exporter/winrm/credssp.py) against pyspnego's own CredSSP acceptor, the peer no one here wrote: the
TLS-in-HTTP handshake under the `CredSSP` scheme, the password delegated to the server, and a message over
16 KiB sealed in parts (multipart/x-multi-encrypted, MS-WSMV 2.2.9.1.3) and unsealed by the acceptor.

A small scripted HTTP server on loopback plays Windows here and reads the multipart framing with its own code,
not the exporter's; full polls over the simulator's CredSSP listener are tests/system/test_credssp.py."""

from __future__ import annotations

import base64
import re
import socket
import struct
import threading
import time

from pathlib import Path

import spnego
import yaml

from exporter.config import load_config_text
from exporter.winrm.connection import Connection, Endpoint
from exporter.winrm.credssp import CredSSP
from simulator import auth

USER, PASSWORD = "EXCH\\svc_credssp", "Cred-SSP-test-only"
PROTOCOL = b"application/HTTP-CredSSP-session-encrypted"


def _read_request(stream) -> tuple[dict[str, str], bytes] | None:
    if not stream.readline():
        return None
    headers = {}
    while (line := stream.readline().decode("latin-1")) not in ("\r\n", ""):
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers, stream.read(int(headers.get("content-length", "0")))


def _unseal(context, body: bytes) -> bytes:
    """The acceptor's reading of a sealed request: each part is a TLS record of the CredSSP session."""
    parts = [p for p in re.split(rb"--Encrypted Boundary(?:--)?\r\n", body) if p]
    message = b""
    for header, payload in zip(parts[::2], parts[1::2]):
        assert PROTOCOL in header
        length = int(re.search(rb"Length=(\d+)", header).group(1))
        payload = payload.removeprefix(b"\tContent-Type: application/octet-stream\r\n")
        size = struct.unpack("<i", payload[:4])[0]
        plain = context.unwrap_winrm(payload[4:4 + size], payload[4 + size:])
        assert len(plain) == length
        message += plain
    return message


def _seal(context, message: bytes) -> bytes:
    wrapped = context.wrap_winrm(message)
    return (b"--Encrypted Boundary\r\n\tContent-Type: " + PROTOCOL + b"\r\n\tOriginalContent: "
            b"type=application/soap+xml;charset=UTF-8;Length=%d\r\n--Encrypted Boundary\r\n"
            b"\tContent-Type: application/octet-stream\r\n" % len(message)
            + struct.pack("<i", len(wrapped.header)) + wrapped.header + wrapped.data + b"--Encrypted Boundary--\r\n")


class CredSSPListener:
    """Answers the handshake with pyspnego's acceptor, then each sealed message with the message reversed."""

    def __init__(self) -> None:
        self.received: list[tuple[str, bytes]] = []  # (content type, the message unsealed)
        self.delegated: object = None
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = Endpoint("http", "127.0.0.1", self._listener.getsockname()[1], "/wsman")
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        client, _ = self._listener.accept()
        with client, client.makefile("rb") as stream:
            context = spnego.server(protocol="credssp")
            while (request := _read_request(stream)) is not None:
                headers, body = request
                if "authorization" in headers:
                    token = context.step(base64.b64decode(headers["authorization"].split()[1]))
                    if not context.complete:
                        client.sendall(b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: CredSSP "
                                       + base64.b64encode(token) + b"\r\nContent-Length: 0\r\n\r\n")
                        continue
                    self.delegated = context.get_extra_info("client_credential")
                    client.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    continue
                message = _unseal(context, body)
                self.received.append((headers["content-type"], message))
                reply = _seal(context, message[::-1])
                content_type = b'multipart/encrypted;protocol="' + PROTOCOL + b'";boundary="Encrypted Boundary"'
                client.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type
                               + b"\r\nContent-Length: %d\r\n\r\n" % len(reply) + reply)


def test_credssp_authenticates_delegates_and_seals_large_messages_in_parts(monkeypatch):
    monkeypatch.setenv("EEMS_TEST_CREDSSP_PASSWORD", PASSWORD)
    module = load_config_text(yaml.safe_dump({
        "modules": {"m": {"transport": "credssp", "scheme": "http", "username": USER,
                          "password_env": "EEMS_TEST_CREDSSP_PASSWORD", "allow_credssp_ntlm_over_http": True}},
        "servers": ["ex01.contoso.test"]}), Path(".")).modules["m"]
    auth.USER_FILE.register(id(test_credssp_authenticates_delegates_and_seals_large_messages_in_parts),
                            {USER: PASSWORD})  # the acceptor's NTLM, inside CredSSP, reads NTLM_USER_FILE
    try:
        listener = CredSSPListener()
        deadline = time.monotonic() + 20
        connection = Connection.open(listener.endpoint, None, deadline=deadline, timeout=10,
                                     max_response_bytes=1 << 20, user_agent="test")
        channel = CredSSP(module, "ex01.contoso.test", encrypt=True).open(connection, deadline=deadline, timeout=10)
        small, large = b"<small/>", b"<large/>" * 3000  # 24 KB: two parts
        assert channel.exchange(small, deadline=deadline, timeout=10) == small[::-1]
        assert channel.exchange(large, deadline=deadline, timeout=10) == large[::-1]
    finally:
        auth.USER_FILE.unregister(id(test_credssp_authenticates_delegates_and_seals_large_messages_in_parts))
    (small_type, _), (large_type, received) = listener.received
    assert small_type.startswith("multipart/encrypted;") and large_type.startswith("multipart/x-multi-encrypted;")
    assert received == large
    assert listener.delegated is not None and listener.delegated.password == PASSWORD
