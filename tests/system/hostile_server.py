"""A malicious WinRM server on loopback: it authenticates like Windows, then attacks the client.

The simulator plays a *broken* server; this one plays a *compromised* one, which knows the exporter's
weak points and aims at them. It reuses the simulator's HTTP reader, NTLM acceptor, message encryption
and WS-Man envelopes, so the exporter gets through the handshake exactly as with a real server, and then
one of the attacks in `ATTACKS` happens. `bytes_sent` lets tests measure what the exporter let through.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import gzip
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from simulator import auth, wsman
from simulator.server import HttpError, HttpResponse, keepalive_requests, render
from simulator.tls import TestAuthority

ATTACKS = (
    "none",  # behave: answer every command with `output`
    "drip",  # every response, the NTLM handshake included, a few bytes per second
    "drip_receive",  # the handshake is quick; the Receive answer drips
    "huge_handshake",  # the first 401 carries an endless chunked body
    "nested_xml",  # the Receive answer is deeply nested markup
    "reflect_authorization",  # Command fails with a fault quoting the request's Authorization header
    "non_utf8_500",  # Receive answers HTTP 500 with bytes that are not UTF-8
    "stream_without_name",  # an rsp:Stream element without its Name attribute
    "exit_code_word",  # ExitCode "zero"
    "challenge_missing",  # the NTLM challenge 401 carries no WWW-Authenticate header
    "gzip_bomb",  # the Receive answer is 64 KiB of gzip that inflates to 64 MiB
    "entity_expansion",  # the Receive answer declares entities that expand 331 bytes into 1.5 million elements
    "endless_continue",  # the Receive answer is "HTTP/1.1 100 Continue" without end
    "slow_cleanup",  # the command never finishes (each Receive: 1 s, then Running), Signal and Delete take 20 s
)
SLOW_CLEANUP_SECONDS = 20
DRIP_BYTES_PER_SECOND = 20
HUGE_CHUNK = b"A" * (1 << 20)
HUGE_LIMIT_BYTES = 256 << 20  # give up sending after 256 MiB (a client that reads everything is caught long before)


@dataclass
class Output:
    stdout: bytes = b""
    stderr: bytes = b""
    exit_code: int = 0


class HostileServer:
    def __init__(self, attack: str, credentials: dict[str, str], *, scheme: str = "http",
                 address: str = "127.0.0.1", output: Callable[[str], Output] | None = None):
        if attack not in ATTACKS:
            raise ValueError(f"unknown attack {attack!r}")
        self.attack = attack
        self.scheme = scheme
        self.address = address
        self.port = 0
        self.output = output or (lambda command: Output())
        self._credentials = credentials
        self.bytes_sent = 0  # attack payload bytes written (over TLS, asyncio accepts writes after a hang-up)
        self.ca_file: Path | None = None
        self._ssl = None
        self._bindings: bytes | None = None
        self._tls_dir: tempfile.TemporaryDirectory | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> "HostileServer":
        auth.USER_FILE.register(id(self), self._credentials)
        if self.scheme == "https":
            self._tls_dir = tempfile.TemporaryDirectory(prefix="eems-hostile-tls-")
            authority = TestAuthority(Path(self._tls_dir.name))
            self.ca_file = authority.ca_file
            self._ssl, self._bindings = authority.server_context(self.address)
        self._loop = asyncio.new_event_loop()
        ready: concurrent.futures.Future = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="hostile-winrm", daemon=True)
        self._thread.start()
        ready.result(timeout=10)
        return self

    def __exit__(self, *exc) -> None:
        async def close() -> None:
            self._server.close()
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        auth.USER_FILE.unregister(id(self))
        if self._tls_dir is not None:
            self._tls_dir.cleanup()

    def _run(self, ready: concurrent.futures.Future) -> None:
        asyncio.set_event_loop(self._loop)

        async def listen() -> None:
            self._server = await asyncio.start_server(self._serve, self.address, 0, ssl=self._ssl, limit=1 << 16)
            self.port = self._server.sockets[0].getsockname()[1]

        self._loop.run_until_complete(listen())
        ready.set_result(None)
        self._loop.run_forever()

    # ------------------------------------------------------------ one connection

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn_auth = auth.ConnectionAuth(self._credentials, True, self._bindings)
        command = ""
        try:
            async for request in keepalive_requests(reader, writer):
                authorization = request.headers.get("authorization")
                result = conn_auth.authenticate(authorization, deny=False)
                if result.principal is None:
                    if not await self._unauthorized(reader, writer, result):
                        return
                    continue
                context = conn_auth.context
                encrypted = auth.is_encrypted(request.headers.get("content-type", ""))
                soap = auth.unwrap_body(context, request.body) if encrypted else request.body
                if not soap:
                    await self._send(writer, render(HttpResponse(200)))
                    continue
                parsed = wsman.parse_request(soap)
                if parsed.action == wsman.ACTION_COMMAND:
                    command = wsman.command_line(parsed)
                status, xml = self._answer(parsed, command, authorization or "")
                if status == 500 and self.attack == "non_utf8_500":
                    await self._send(writer, render(HttpResponse(500, [("Content-Type", "text/plain")], xml)))
                    continue
                body = auth.wrap_body(context, xml) if encrypted else xml
                content_type = auth.ENCRYPTED_CONTENT_TYPE if encrypted else "application/soap+xml;charset=UTF-8"
                response = render(HttpResponse(status, [("Content-Type", content_type)], body))
                if self.attack == "gzip_bomb" and parsed.action == wsman.ACTION_RECEIVE:
                    bomb = gzip.compress(bytes(64 << 20), compresslevel=9)
                    response = render(HttpResponse(200, [("Content-Type", content_type), ("Content-Encoding", "gzip")],
                                                bomb))
                if self.attack == "slow_cleanup":
                    slow = {wsman.ACTION_RECEIVE: 1, wsman.ACTION_SIGNAL: SLOW_CLEANUP_SECONDS,
                            wsman.ACTION_DELETE: SLOW_CLEANUP_SECONDS}
                    await asyncio.sleep(slow.get(parsed.action, 0))
                if self.attack == "endless_continue" and parsed.action == wsman.ACTION_RECEIVE:
                    await self._endless_continue(reader, writer)
                    return
                if self.attack == "drip_receive" and parsed.action == wsman.ACTION_RECEIVE:
                    await self._drip(writer, response)
                else:
                    await self._send(writer, response)
        except (ConnectionError, HttpError, auth.EncryptionError, wsman.WsmanFault, asyncio.IncompleteReadError,
                OSError, asyncio.CancelledError):
            return
        finally:
            writer.close()

    async def _unauthorized(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            result: auth.AuthResult) -> bool:
        """Answer an unauthenticated request; False when the connection should end."""
        if self.attack == "huge_handshake":
            await self._endless_401(reader, writer)
            return False
        headers = [("WWW-Authenticate", result.challenge)] if result.challenge else [
            ("WWW-Authenticate", "Negotiate"), ("WWW-Authenticate", 'Basic realm="WSMAN"')]
        if self.attack == "challenge_missing" and result.challenge:
            headers = []
        await self._send(writer, render(HttpResponse(401, headers, close=result.close)))
        return not result.close

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        if self.attack == "drip":
            await self._drip(writer, data)
            return
        writer.write(data)
        await writer.drain()

    async def _drip(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        for index in range(len(data)):
            writer.write(data[index:index + 1])
            await writer.drain()
            self.bytes_sent += 1
            await asyncio.sleep(1 / DRIP_BYTES_PER_SECOND)

    async def _endless_401(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 401 Unauthorized\r\nServer: Microsoft-HTTPAPI/2.0\r\nWWW-Authenticate: Negotiate\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n" % len(HUGE_CHUNK) + HUGE_CHUNK + b"\r\n"
        for _ in range(HUGE_LIMIT_BYTES // len(HUGE_CHUNK)):
            if writer.is_closing() or reader.at_eof():  # the client hung up: asyncio drops further writes silently
                return
            writer.write(chunk)
            await writer.drain()
            self.bytes_sent += len(HUGE_CHUNK)

    async def _endless_continue(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        interim = b"HTTP/1.1 100 Continue\r\n\r\n" * 4096
        for _ in range(HUGE_LIMIT_BYTES // len(interim)):
            if writer.is_closing() or reader.at_eof():
                return
            writer.write(interim)
            await writer.drain()
            self.bytes_sent += len(interim)

    # ------------------------------------------------------------ WS-Management

    def _answer(self, request: wsman.WsmanRequest, command: str, authorization: str) -> tuple[int, bytes]:
        shell_id = "8F1C1D3E-0000-4000-8000-000000000001"
        command_id = "8F1C1D3E-0000-4000-8000-000000000002"
        if request.action == wsman.ACTION_CREATE:
            return 200, wsman.create_response(request.message_id, f"{self.scheme}://{self.address}/wsman", shell_id,
                                              "attacker", "127.0.0.1", 120)
        if request.action == wsman.ACTION_COMMAND:
            if self.attack == "reflect_authorization":
                return 500, _fault_with_reason(request.message_id, f"Invalid header: Authorization: {authorization}")
            return 200, wsman.command_response(request.message_id, command_id)
        if request.action == wsman.ACTION_SIGNAL:
            return 200, wsman.signal_response(request.message_id)
        if request.action == wsman.ACTION_DELETE:
            return 200, wsman.delete_response(request.message_id)
        if self.attack == "nested_xml":
            return 200, b"<a>" * 1_300_000
        if self.attack == "non_utf8_500":
            return 500, b"\xff\xfe\xfa garbage \x80\x81"
        if self.attack == "slow_cleanup":
            return 200, wsman.receive_response(request.message_id, command_id, [], [], None)
        output = self.output(_decoded_script(command))
        xml = wsman.receive_response(request.message_id, command_id, [output.stdout], [output.stderr], output.exit_code)
        if self.attack == "stream_without_name":
            xml = xml.replace(b'Name="stdout" ', b"", 1)
        if self.attack == "exit_code_word":
            xml = re.sub(rb"<rsp:ExitCode>[^<]*</rsp:ExitCode>", b"<rsp:ExitCode>zero</rsp:ExitCode>", xml)
        if self.attack == "entity_expansion":
            xml = _entity_bomb() + xml.replace(b"<rsp:ReceiveResponse>", b"<rsp:ReceiveResponse>&g;", 1)
        self.bytes_sent += len(xml)
        return 200, xml


def _entity_bomb() -> bytes:
    """An internal DTD whose entity g expands to 1,500,000 empty elements (6 MB of markup: just under what
    expat's own amplification guard lets through) from 331 bytes of declarations; ElementTree holds them in
    about 200 MiB."""
    levels = "abcdef"
    declarations = ['<!ENTITY a "' + "<x/>" * 10 + '">']
    for previous, name in zip(levels, levels[1:]):
        declarations.append(f'<!ENTITY {name} "' + f"&{previous};" * 10 + '">')
    declarations.append('<!ENTITY g "&f;&e;&e;&e;&e;&e;">')
    return ("<!DOCTYPE s:Envelope [" + "".join(declarations) + "]>").encode()


def _fault_with_reason(relates_to: str, reason: str) -> bytes:
    body = (
        "<s:Fault><s:Code><s:Value>s:Receiver</s:Value></s:Code>"
        f'<s:Reason><s:Text xml:lang="en-US">{wsman.escape(reason)}</s:Text></s:Reason><s:Detail>'
        '<f:WSManFault xmlns:f="http://schemas.microsoft.com/wbem/wsman/1/wsmanfault" Code="2150858999" '
        'Machine="attacker"><f:Message>see reason</f:Message></f:WSManFault></s:Detail></s:Fault>'
    )
    return wsman._envelope("http://schemas.dmtf.org/wbem/wsman/1/wsman/fault", relates_to, body)


def _decoded_script(command: str) -> str:
    """The PowerShell text of `powershell.exe ... -EncodedCommand BASE64` (what the exporter asked for)."""
    encoded = command.rsplit(" ", 1)[-1]
    try:
        return base64.b64decode(encoded).decode("utf-16-le")
    except (ValueError, UnicodeDecodeError):
        return command
