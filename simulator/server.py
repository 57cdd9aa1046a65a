"""A fleet of WinRM listeners that real clients (pywinrm, pypsrp) cannot tell from Windows on the wire.

One asyncio event loop in one daemon thread serves every host's listening socket, so thousands of
simulated servers cost one thread; only `SimulatedHost.run` (which may be slow) goes to a small thread
pool. HTTP/1.1 is parsed here with hard bounds on header and body size and on every wait, because a
client under test must never be able to wedge or crash the simulator.

NTLM: pyspnego's acceptor reads passwords from the file named by NTLM_USER_FILE; `Fleet.start` writes that
file (see `auth.py`) and sets the variable for the whole process. Kerberos: hosts whose `auth` names it take
tickets for their `HTTP/<fqdn>` and `WSMAN/<fqdn>` principals, whose keys are in the fleet's
`kerberos_keytab` (made by the realm's KDC, `kdc.py`); see `kerberos.py`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
import resource
import shutil
import socket
import ssl
import struct
import tempfile
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from . import auth, control, psrp, wsman
from .host import CommandOutput, Logon, SimulatedHost, run_as
from .shells import ShellTable
from .tls import TestAuthority

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024
KEEPALIVE_IDLE_SECONDS = 120.0  # HTTP.sys drops idle connections after about two minutes
HANG_LIMIT_SECONDS = 600.0
WATCH_INTERVAL_SECONDS = 0.2
CMD_LINE_LIMIT = 8191  # cmd.exe, which runs every command unless WINRS_SKIP_CMD_SHELL=TRUE
CREATE_PROCESS_LIMIT = 32767  # CreateProcessW lpCommandLine, including the NUL, when cmd.exe is skipped
TOO_LONG = CommandOutput(stdout_chunks=[], stderr=b"The command line is too long.\r\n", exit_code=1)
FILENAME_TOO_LONG = 2147942606  # 0x800700CE ERROR_FILENAME_EXCED_RANGE from CreateProcess (our guess at the fault)
E_FAIL = 2147500037  # 0x80004005 "Unspecified error": run() of a host broke
RUN_WORKERS = 16
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            411: "Length Required", 413: "Request Entity Too Large", 431: "Request Header Fields Too Large",
            500: "Internal Server Error"}


class HttpError(Exception):
    """A request we refuse to read further; answered with `status` and the connection closed."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@dataclass
class HttpRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    size: int = 0  # bytes on the wire: request line, headers and body


@dataclass
class HttpResponse:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    close: bool = False
    reset: bool = False  # fault injection: send a fragment, then a TCP reset


async def read_request(reader: asyncio.StreamReader) -> HttpRequest | None:
    """One HTTP/1.1 request with a Content-Length body; None on a clean close between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise HttpError(400) from None
        return None
    except asyncio.LimitOverrunError:
        raise HttpError(431) from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, sep, value = line.partition(":")
            if not sep:
                raise HttpError(400)
            headers[name.strip().lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise HttpError(411)
    length = headers.get("content-length", "0")
    if not length.isdigit():
        raise HttpError(400)
    if int(length) > MAX_BODY_BYTES:
        raise HttpError(413)
    body = await reader.readexactly(int(length)) if int(length) else b""
    return HttpRequest(parts[0], parts[1], headers, body, len(head) + len(body))


def _certificate_user(peercert: dict | None) -> str | None:
    """The CN of a client certificate that TLS verified against the test CA (None without one)."""
    for rdn in (peercert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


async def keepalive_requests(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
    """The keep-alive requests of one connection, until it closes or idles out; a request we refuse to read
    is answered with its status and ends the connection."""
    while True:
        try:
            request = await asyncio.wait_for(read_request(reader), KEEPALIVE_IDLE_SECONDS)
        except HttpError as exc:
            writer.write(render(HttpResponse(exc.status, close=True)))
            await writer.drain()
            return
        if request is None:
            return
        yield request


def render(response: HttpResponse) -> bytes:
    lines = [f"HTTP/1.1 {response.status} {_REASONS.get(response.status, '')}", "Server: Microsoft-HTTPAPI/2.0"]
    lines += [f"{name}: {value}" for name, value in response.headers]
    if response.close:
        lines.append("Connection: close")
    lines += [f"Content-Length: {len(response.body)}", "", ""]
    return "\r\n".join(lines).encode("latin-1") + response.body


def raise_open_file_limit() -> None:
    """Thousands of listeners plus their connections need far more than the usual 1024 descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class _HostRuntime:
    def __init__(self, host: SimulatedHost) -> None:
        self.host = host
        self.shells = ShellTable(host.lock)
        self.psrp: psrp.PsrpService | None = None  # made on the event loop at the first PSRP request
        self.requests = 0
        self.bytes_in = 0  # HTTP bytes received and sent (bench/psrp_cost.py compares protocols by them)
        self.bytes_out = 0
        self.rejected_logons = 0  # what a domain controller counts against the account's lockout threshold
        self.server: asyncio.Server | None = None
        self.connections: set[asyncio.StreamWriter] = set()
        self.ssl: ssl.SSLContext | None = None
        self.bindings: bytes | None = None


class Fleet:
    """Serves `hosts` over WinRM until `stop()`. See the module docstring for NTLM_USER_FILE."""

    def __init__(
        self,
        hosts: list[SimulatedHost],
        credentials: dict[str, str],
        tls_dir: Path | None = None,
        allow_basic: bool = True,
        allow_unencrypted: bool = False,
        control_address: tuple[str, int] | None = None,
        kerberos_keytab: Path | None = None,
    ) -> None:
        if not credentials:
            raise ValueError("credentials must name at least one user")
        names = [host.name for host in hosts]
        if len(set(names)) != len(names):
            raise ValueError("host names must be unique")
        for host in hosts:
            _require_loopback(host.address, f"host {host.name}")
            if host.scheme not in ("http", "https"):
                raise ValueError(f"host {host.name}: scheme must be http or https, not {host.scheme!r}")
            if "kerberos" in host.auth and kerberos_keytab is None:
                raise ValueError(f"host {host.name} takes Kerberos: the fleet needs a kerberos_keytab with its service keys")
        if control_address is not None:
            _require_loopback(control_address[0], "control_address")
        self._runtimes = {host.name: _HostRuntime(host) for host in hosts}
        self._credentials = dict(credentials)
        self._tls_dir = Path(tls_dir) if tls_dir else None
        self._own_tls_dir: str | None = None
        self._allow_basic = allow_basic
        self._allow_unencrypted = allow_unencrypted
        self._control_address = control_address
        self._kerberos_keytab = Path(kerberos_keytab) if kerberos_keytab else None
        self._kerberos = None  # kerberos.Acceptor, made at start()
        self._credssp_tls = None  # the CredSSP acceptor's TLS certificate, made at start() if a host takes CredSSP
        self._rcache_dir: str | None = None
        self.control_port: int | None = None
        self.ca_file: Path | None = None
        self._authority: TestAuthority | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task] = set()
        self._servers: list[asyncio.Server] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Bind every listener (and the control API); returns once all are listening."""
        raise_open_file_limit()
        auth.USER_FILE.register(id(self), self._credentials)
        try:
            self._prepare_tls()
            self._prepare_kerberos()
            if any("credssp" in rt.host.auth for rt in self._runtimes.values()):
                self._credssp_tls = auth.credssp_tls_context()
            self._loop = asyncio.new_event_loop()
            self._loop.set_default_executor(
                concurrent.futures.ThreadPoolExecutor(RUN_WORKERS, thread_name_prefix="winrm-sim-run")
            )
            ready = concurrent.futures.Future()
            self._thread = threading.Thread(target=self._run_loop, args=(ready,), name="winrm-simulator", daemon=True)
            self._thread.start()
            ready.result()
        except BaseException:
            self._cleanup()
            raise

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._close_all(), self._loop).result(timeout=30)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._cleanup()

    def _cleanup(self) -> None:
        if self._loop is not None and not self._loop.is_running():
            self._loop.close()
        self._loop = None
        auth.USER_FILE.unregister(id(self))
        if self._own_tls_dir:
            shutil.rmtree(self._own_tls_dir, ignore_errors=True)
            self._own_tls_dir = None
        if self._rcache_dir:
            shutil.rmtree(self._rcache_dir, ignore_errors=True)
            self._rcache_dir = None

    def __enter__(self) -> Fleet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _prepare_tls(self) -> None:
        secure = [rt for rt in self._runtimes.values() if rt.host.scheme == "https"]
        if not secure:
            return
        if self._tls_dir is None:
            self._own_tls_dir = tempfile.mkdtemp(prefix="eems-sim-tls-")
            self._tls_dir = Path(self._own_tls_dir)
        authority = self._authority = TestAuthority(self._tls_dir)
        self.ca_file = authority.ca_file
        for rt in secure:
            rt.ssl, rt.bindings = authority.server_context(rt.host.address)

    def _prepare_kerberos(self) -> None:
        """The acceptor credential from the keytab, with a replay cache of the fleet's own (MIT's default
        is under /var/tmp)."""
        if self._kerberos_keytab is None:
            return
        from .kerberos import Acceptor  # python-gssapi: only a fleet that takes Kerberos needs it

        self._rcache_dir = tempfile.mkdtemp(prefix="eems-sim-rcache-")
        self._kerberos = Acceptor(self._kerberos_keytab, Path(self._rcache_dir))

    def _run_loop(self, ready: concurrent.futures.Future) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._open_all())
        except BaseException as exc:  # bind failures go back to start()'s caller
            ready.set_exception(exc)
            self._loop.run_until_complete(self._close_all())
            return
        ready.set_result(None)
        self._loop.run_forever()
        self._loop.run_until_complete(self._loop.shutdown_default_executor())

    async def _open_all(self) -> None:
        for rt in self._runtimes.values():
            if not rt.host.faults.refuse_connections:
                await self._listen(rt)
        if self._control_address is not None:
            server = await asyncio.start_server(
                self._serve_control, self._control_address[0], self._control_address[1], limit=MAX_HEADER_BYTES
            )
            self._servers.append(server)
            self.control_port = server.sockets[0].getsockname()[1]
        self._tasks.add(asyncio.get_running_loop().create_task(self._watch()))

    async def _listen(self, rt: _HostRuntime) -> None:
        rt.server = await asyncio.start_server(
            partial(self._serve, rt), rt.host.address, rt.host.port, ssl=rt.ssl, limit=MAX_HEADER_BYTES,
            backlog=128, reuse_address=True,
        )
        if rt.host.port == 0:
            rt.host.port = rt.server.sockets[0].getsockname()[1]

    async def _close_all(self) -> None:
        for rt in self._runtimes.values():
            if rt.server is not None:
                rt.server.close()
                rt.server = None
            for writer in list(rt.connections):
                writer.transport.abort()
        for server in self._servers:
            server.close()
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        tasks += [task for rt in self._runtimes.values() if rt.psrp is not None for task in rt.psrp.tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch(self) -> None:
        """Apply `refuse_connections` live: close the listener (and its connections) while set."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL_SECONDS)
            for rt in self._runtimes.values():
                refuse = rt.host.faults.refuse_connections
                if refuse and rt.server is not None:
                    rt.server.close()
                    rt.server = None
                    for writer in list(rt.connections):
                        writer.transport.abort()
                elif not refuse and rt.server is None:
                    try:
                        await self._listen(rt)
                    except OSError as exc:
                        log.warning("host %s: cannot listen again yet: %s", rt.host.name, exc)

    # ------------------------------------------------------------------ observation (thread-safe)

    def client_certificate(self, username: str) -> tuple[Path, Path]:
        """(certificate, key) PEM files for WinRM certificate authentication as `username` (https hosts)."""
        if self._authority is None:
            raise ValueError("no https host: certificate authentication needs TLS")
        return self._authority.client_certificate(username)

    def open_shells(self, host_name: str | None = None) -> int:
        runtimes = self._runtimes.values() if host_name is None else [self._runtime(host_name)]
        return sum(rt.shells.open_count(rt.host.idle_timeout_seconds) for rt in runtimes)

    def open_pools(self, host_name: str | None = None) -> int:
        """PSRP runspace pools open (not yet deleted or expired)."""
        runtimes = self._runtimes.values() if host_name is None else [self._runtime(host_name)]
        return sum(rt.psrp.pools.open_count() for rt in runtimes if rt.psrp is not None)

    def pools_created(self, host_name: str) -> int:
        """PSRP runspace pools ever opened on one host."""
        rt = self._runtime(host_name)
        return rt.psrp.pools.created if rt.psrp is not None else 0

    def traffic(self, host_name: str) -> tuple[int, int, int]:
        """(requests, bytes received, bytes sent) of one host so far."""
        rt = self._runtime(host_name)
        return rt.requests, rt.bytes_in, rt.bytes_out

    def request_count(self, host_name: str) -> int:
        return self._runtime(host_name).requests

    def rejected_logons(self, host_name: str | None = None) -> int:
        """Logons refused (a wrong password, an unknown user): each counts towards the account's lockout."""
        runtimes = self._runtimes.values() if host_name is None else [self._runtime(host_name)]
        return sum(rt.rejected_logons for rt in runtimes)

    def stats(self) -> dict:
        return {
            "hosts": {
                name: {
                    "open_shells": rt.shells.open_count(rt.host.idle_timeout_seconds),
                    "requests": rt.requests,
                    "commands": rt.shells.commands,
                    "open_pools": rt.psrp.pools.open_count() if rt.psrp is not None else 0,
                    "invocations": rt.psrp.invocations if rt.psrp is not None else 0,
                }
                for name, rt in self._runtimes.items()
            }
        }

    def _runtime(self, host_name: str) -> _HostRuntime:
        try:
            return self._runtimes[host_name]
        except KeyError:
            raise KeyError(f"no simulated host named {host_name!r}") from None

    # ------------------------------------------------------------------ HTTP

    async def _serve(self, rt: _HostRuntime, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        rt.connections.add(writer)
        peer = writer.get_extra_info("peername") or ("", 0)
        conn_auth = auth.ConnectionAuth(self._credentials, self._allow_basic, rt.bindings,
                                        _certificate_user(writer.get_extra_info("peercert")),
                                        methods=rt.host.auth, kerberos=self._kerberos,
                                        strict_channel_binding=rt.host.cbt_hardening == "strict",
                                        credssp_tls=self._credssp_tls)
        try:
            async for request in keepalive_requests(reader, writer):
                rt.requests += 1
                rt.bytes_in += request.size
                faults = rt.host.faults
                if faults.hang:
                    await _drain_until_closed(reader)
                    return
                response = await self._respond(rt, conn_auth, request, peer[0])
                if faults.latency_seconds > 0:
                    await asyncio.sleep(faults.latency_seconds)
                if response.reset:
                    writer.write(b"HTTP/1.1 200 OK\r\nServer: Microsoft-")
                    await writer.drain()
                    _reset(writer)
                    return
                rendered = render(response)
                rt.bytes_out += len(rendered)
                writer.write(rendered)
                await writer.drain()
                if response.close or request.headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError, ssl.SSLError, OSError):
            return
        except asyncio.CancelledError:
            return  # stop(): end quietly (asyncio's stream callback would log a cancelled task as an error)
        finally:
            rt.connections.discard(writer)
            self._tasks.discard(task)
            writer.close()

    async def _respond(self, rt: _HostRuntime, conn_auth: auth.ConnectionAuth, request: HttpRequest, client_ip: str) -> HttpResponse:
        path = request.path.split("?")[0].rstrip("/").lower()
        if path not in ("/wsman", EXCHANGE_PATH):
            return HttpResponse(404)
        if request.method != "POST":
            return HttpResponse(405)
        result = conn_auth.authenticate(request.headers.get("authorization"), deny=rt.host.faults.unauthorized)
        if result.principal is None and result.close:  # credentials were offered and refused
            rt.rejected_logons += 1
        if result.principal is not None and path == EXCHANGE_PATH and _kerberos_only(rt.host) \
                and result.mechanism != "kerberos":
            # Exchange's /PowerShell application takes Kerberos only (pypsrp issue #187); IIS asks again
            return HttpResponse(401, [("WWW-Authenticate", "Negotiate")], close=True)
        response = await self._authorized(rt, conn_auth, result, request, client_ip, path)
        if result.principal is not None and result.challenge:
            response.headers.append(("WWW-Authenticate", result.challenge))  # SPNEGO's final token
        return response

    async def _authorized(
        self, rt: _HostRuntime, conn_auth: auth.ConnectionAuth, result: auth.AuthResult, request: HttpRequest,
        client_ip: str, path: str,
    ) -> HttpResponse:
        if result.principal is None:
            if result.challenge:
                return HttpResponse(401, [("WWW-Authenticate", result.challenge)], close=result.close)
            headers = [("WWW-Authenticate", "Negotiate")]
            if "kerberos" in rt.host.auth:
                headers.append(("WWW-Authenticate", "Kerberos"))
            if self._allow_basic:
                headers.append(("WWW-Authenticate", 'Basic realm="WSMAN"'))
            if "credssp" in rt.host.auth:
                headers.append(("WWW-Authenticate", "CredSSP"))  # last, as Windows lists it
            return HttpResponse(401, headers, close=result.close)
        context = conn_auth.context
        encrypted = auth.encryption_protocol(request.headers.get("content-type", ""))
        if encrypted:
            if context is None or encrypted != conn_auth.encryption:
                return HttpResponse(400, close=True)
            try:
                soap = auth.unwrap_body(context, request.body, encrypted)
            except auth.EncryptionError:
                return HttpResponse(400, close=True)
        else:
            soap = request.body
            if soap and context is not None and rt.ssl is None and not self._allow_unencrypted:
                return HttpResponse(500)  # Windows with AllowUnencrypted=false refuses plain SOAP over HTTP
        if not soap:
            return HttpResponse(200)  # the empty POST that completes authentication
        logon = Logon(result.principal, delegated=conn_auth.delegated)
        status, xml, reset = await self._dispatch(rt, logon, soap, client_ip, path)
        if reset:
            return HttpResponse(reset=True)
        if encrypted:
            try:
                wrapped = auth.wrap_body(context, xml, encrypted)
            except ValueError:  # the Kerberos context expired with its ticket
                return HttpResponse(400, close=True)
            return HttpResponse(status, [("Content-Type", auth.sealed_content_type(encrypted, len(xml)))], wrapped)
        return HttpResponse(status, [("Content-Type", "application/soap+xml;charset=UTF-8")], xml)

    async def _serve_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            async for request in keepalive_requests(reader, writer):
                status, body = control.handle(
                    request.method, request.path, request.body, {n: rt.host for n, rt in self._runtimes.items()}, self.stats
                )
                writer.write(render(HttpResponse(status, [("Content-Type", "application/json")], body)))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError, OSError):
            return
        finally:
            self._tasks.discard(task)
            writer.close()

    # ------------------------------------------------------------------ WS-Management

    async def _dispatch(self, rt: _HostRuntime, logon: Logon, soap: bytes, client_ip: str,
                        path: str = "/wsman") -> tuple[int, bytes, bool]:
        host = rt.host
        relates_to = ""
        try:
            request = wsman.parse_request(soap)
            relates_to = request.message_id
            if request.action == wsman.ACTION_CREATE and host.remote_shell_disabled and path != EXCHANGE_PATH:
                # AllowRemoteShellAccess = Disabled: the WinRM service refuses every new shell, WinRS and PSRP alike
                raise wsman.WsmanFault(wsman.REMOTE_SHELLS_NOT_ALLOWED)
            if path == EXCHANGE_PATH or request.resource_uri.lower().startswith(wsman.POWERSHELL_RESOURCE):
                if rt.psrp is None:
                    loop = asyncio.get_running_loop()
                    rt.psrp = psrp.PsrpService(host, lambda f, *a: loop.run_in_executor(None, f, *a))
                if request.action == wsman.ACTION_RECEIVE and host.faults.reset_mid_response:
                    return 0, b"", True
                address = f"{host.scheme}://{host.address}:{host.port}{'/PowerShell' if path == EXCHANGE_PATH else '/wsman'}"
                return 200, await rt.psrp.dispatch(request, path, logon.principal, client_ip, address), False
            if request.action in (wsman.ACTION_CREATE, wsman.ACTION_COMMAND) and host.faults.slow_start_seconds > 0:
                await asyncio.sleep(host.faults.slow_start_seconds)
            if request.action == wsman.ACTION_CREATE:
                if not host.winrs:
                    raise wsman.WsmanFault(5)  # a PSRP-only fleet: no WinRS shell to fall back on
                requested = wsman.requested_idle_timeout(request)
                shell_id = rt.shells.create(logon, host.max_shells_per_user, host.idle_timeout_seconds, requested)
                address = f"{host.scheme}://{host.address}:{host.port}/wsman"
                idle = min(host.idle_timeout_seconds, requested) if requested else host.idle_timeout_seconds
                body = wsman.create_response(relates_to, address, shell_id, logon.principal, client_ip, idle)
                return 200, body, False
            if request.action not in (wsman.ACTION_COMMAND, wsman.ACTION_RECEIVE, wsman.ACTION_SIGNAL, wsman.ACTION_DELETE):
                raise wsman.WsmanFault(2150858771)
            shell = rt.shells.shell(request.shell_id or "", host.idle_timeout_seconds)
            if request.action == wsman.ACTION_COMMAND:
                return 200, await self._command(rt, shell, request), False
            if request.action == wsman.ACTION_RECEIVE:
                if host.faults.reset_mid_response:
                    return 0, b"", True
                return 200, await _receive(rt, shell, request), False
            if request.action == wsman.ACTION_SIGNAL:
                rt.shells.remove_command(shell, wsman.signal_command_id(request))
                return 200, wsman.signal_response(relates_to), False
            rt.shells.delete(request.shell_id or "")
            return 200, wsman.delete_response(relates_to), False
        except wsman.WsmanFault as fault:
            return 500, wsman.fault_response(fault, relates_to, host.address), False

    async def _command(self, rt: _HostRuntime, shell, request: wsman.WsmanRequest) -> bytes:
        host = rt.host
        code = host.faults.fault_code
        if code is not None:
            detail = str(host.max_shells_per_user) if code == 2150859173 else f"Simulated WS-Management fault {code}. "
            raise wsman.WsmanFault(code, detail)
        started = time.monotonic()
        if wsman.skips_cmd_shell(request):
            line = wsman.process_command_line(request)
            if len(line) >= CREATE_PROCESS_LIMIT:
                raise wsman.WsmanFault(FILENAME_TOO_LONG, "The filename or extension is too long. ")
            too_long = False
        else:
            line = wsman.command_line(request)
            too_long = len(line) > CMD_LINE_LIMIT
        if too_long:
            output = TOO_LONG
        else:
            try:
                output = await asyncio.get_running_loop().run_in_executor(None, run_as, shell.logon, host.run, line)
            except Exception as exc:  # a broken scenario must not take the listener down
                log.error("host %s: run() raised %s", host.name, type(exc).__name__)
                raise wsman.WsmanFault(E_FAIL, "Unspecified error ") from None
            if not isinstance(output, CommandOutput):
                log.error("host %s: run() returned %s, not CommandOutput", host.name, type(output).__name__)
                raise wsman.WsmanFault(E_FAIL, "Unspecified error ")
        command_id = rt.shells.add_command(shell, output, started)
        return wsman.command_response(request.message_id, command_id)


async def _receive(rt: _HostRuntime, shell, request: wsman.WsmanRequest) -> bytes:
    """Wait for the command's runtime (or OperationTimeout, then TimedOut), then stream what fits."""
    command_id = wsman.receive_command_id(request)
    command = rt.shells.command(shell, command_id)
    wait = command.ready_at - time.monotonic()
    if wait > request.operation_timeout:
        await asyncio.sleep(request.operation_timeout)
        raise wsman.WsmanFault(2150858793)
    if wait > 0:
        await asyncio.sleep(wait)
    stdout, stderr, done = command.take(request.max_envelope_size - wsman.RECEIVE_OVERHEAD)
    exit_code = command.output.exit_code if done else None
    return wsman.receive_response(request.message_id, command_id.upper(), stdout, stderr, exit_code)


async def _drain_until_closed(reader: asyncio.StreamReader) -> None:
    """The `hang` fault: never answer; discard input until the client leaves or the limit passes."""
    try:
        async with asyncio.timeout(HANG_LIMIT_SECONDS):
            while await reader.read(65536):
                pass
    except TimeoutError:
        pass


def _reset(writer: asyncio.StreamWriter) -> None:
    """Abort with SO_LINGER 0 so the kernel sends RST, as a crashing server would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


EXCHANGE_PATH = "/powershell"  # Exchange's remote PowerShell application in IIS (compared lower-case)


def _kerberos_only(host: SimulatedHost) -> bool:
    return bool(host.endpoints is not None and host.endpoints.settings.exchange_kerberos_only)


def _require_loopback(address: str, what: str) -> None:
    try:
        loopback = ipaddress.ip_address(address).is_loopback
    except ValueError:
        raise ValueError(f"{what}: {address!r} is not an IP address") from None
    if not loopback:
        raise ValueError(f"{what}: {address} is not a loopback address; the simulator only listens on 127.0.0.0/8 or ::1")
