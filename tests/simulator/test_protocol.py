"""Conformance of the simulator's WinRM side, judged by real clients we did not write (pywinrm, pypsrp).

Everything runs over real loopback TCP with real NTLM, message encryption and TLS. The hosts answer with
a small `run` of this file so these tests do not depend on the Windows half of the simulator.
"""

from __future__ import annotations

import base64
import json
import socket
import struct
import time

import pytest
import requests
import spnego
import winrm
import xmltodict
from pypsrp.shell import Process, SignalCode, WinRS
from pypsrp.wsman import WSMan
from spnego.channel_bindings import GssChannelBindings
from winrm.exceptions import InvalidCredentialsError, WinRMTransportError, WSManFaultError

from simulator.host import CommandOutput, Faults, SimulatedHost
from simulator.server import Fleet
from simulator.shells import Command
from simulator.tls import TestAuthority
from simulator.wsman import parse_duration

from ..conftest import listening, wait_until

USER, PASSWORD = "EXCH\\svc_monitor", "S3cret!Pass"
CREDENTIALS = {USER: PASSWORD, "localadmin": "L0cal!Only"}
BIG_OUTPUT = [bytes([65 + i % 26]) * 50_000 for i in range(8)]  # 400 kB: needs several Receives


def run(line: str) -> CommandOutput:
    """A tiny Windows: enough commands to exercise the protocol."""
    if line == "cmd.exe /c echo hi":
        return CommandOutput([b"hi\r\n"])
    if line.startswith(("sleep ", '"C:\\Windows\\System32\\sleep.exe" ')):
        return CommandOutput([b"slept\r\n"], runtime_seconds=float(line.split()[1]))
    if line == "big":
        return CommandOutput(list(BIG_OUTPUT))
    if line == "explode":
        raise RuntimeError("scenario bug")
    if line.lower().startswith("powershell -encodedcommand "):
        script = base64.b64decode(line.split()[-1]).decode("utf-16-le")
        if script.startswith("Write-Error"):
            clixml = (
                b'#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
                b'<S S="Error">Error_x000D__x000A_</S></Objs>'
            )
            return CommandOutput([], clixml, 1)
        return CommandOutput([script.encode(), b"\n"])
    return CommandOutput([], f"'{line.split()[0]}' is not recognized as a command.\r\n".encode(), 1)


def _host(name: str, octet: int, scheme: str = "http", **kwargs) -> SimulatedHost:
    return SimulatedHost(name=name, address=f"127.0.0.{octet}", port=0, scheme=scheme, run=run, **kwargs)


@pytest.fixture(scope="module")
def fleet():
    hosts = [
        _host("plain", 21),
        _host("secure", 22, "https"),
        _host("quota", 23, max_shells_per_user=3),
        _host("idle", 24, idle_timeout_seconds=1.0),
        _host("faulty", 25),
        _host("busy", 26),
    ]
    with Fleet(hosts, CREDENTIALS, control_address=("127.0.0.1", 0)) as running:
        running.hosts = {host.name: host for host in hosts}
        yield running


def url(fleet, name: str) -> str:
    host = fleet.hosts[name]
    return f"{host.scheme}://{host.address}:{host.port}/wsman"


def session(fleet, name: str, **kwargs) -> winrm.Session:
    kwargs.setdefault("transport", "ntlm")
    return winrm.Session(url(fleet, name), auth=kwargs.pop("auth", (USER, PASSWORD)), **kwargs)


def protocol(fleet, name: str, **kwargs) -> winrm.Protocol:
    return winrm.Protocol(url(fleet, name), transport="ntlm", username=USER, password=PASSWORD, **kwargs)


@pytest.fixture
def faulty(fleet):
    host = fleet.hosts["faulty"]
    yield host
    host.faults = Faults()
    wait_until(lambda: listening(host), 5, "the watcher to listen again after refuse_connections")


# ---------------------------------------------------------------- pywinrm over HTTP with NTLM


def test_run_ps_with_ntlm_message_encryption(fleet):
    result = session(fleet, "plain").run_ps("Write-Output hello")
    assert (result.status_code, result.std_out, result.std_err) == (0, b"Write-Output hello\n", b"")


def test_run_ps_clixml_stderr_is_cleaned_by_the_client(fleet):
    result = session(fleet, "plain").run_ps('Write-Error "Error"')
    assert result.status_code == 1
    assert result.std_err == b"Error"


def test_run_cmd_joins_arguments_into_one_command_line(fleet):
    result = session(fleet, "plain").run_cmd("cmd.exe", ["/c", "echo", "hi"])
    assert (result.status_code, result.std_out) == (0, b"hi\r\n")


def test_user_without_domain(fleet):
    result = session(fleet, "plain", auth=("localadmin", "L0cal!Only")).run_cmd("cmd.exe", ["/c", "echo", "hi"])
    assert result.std_out == b"hi\r\n"


def test_responses_to_encrypted_requests_are_encrypted_on_the_wire(fleet):
    """Clients also accept plain replies, so check the framing ourselves (MS-WSMV 2.2.9.1.1)."""
    client = spnego.client(USER, PASSWORD, hostname="127.0.0.21", service="http", protocol="ntlm",
                           options=spnego.NegotiateOptions.wrapping_winrm)
    with requests.Session() as http:
        first = http.post(url(fleet, "plain"), headers={"Authorization": "Negotiate " + base64.b64encode(client.step()).decode()})
        challenge = base64.b64decode(first.headers["WWW-Authenticate"].split()[1])
        token = base64.b64encode(client.step(challenge)).decode()
        assert http.post(url(fleet, "plain"), headers={"Authorization": "Negotiate " + token}).status_code == 200
        create = {"env:Envelope": winrm.Protocol(url(fleet, "plain"), username=USER, password=PASSWORD).build_wsman_header(
            "http://schemas.xmlsoap.org/ws/2004/09/transfer/Create",
            "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd",
        )}
        create["env:Envelope"]["env:Body"] = {"rsp:Shell": {"rsp:InputStreams": "stdin", "rsp:OutputStreams": "stdout stderr"}}
        plain = xmltodict.unparse(create).encode()
        wrapped = client.wrap_winrm(plain)
        body = (
            b"--Encrypted Boundary\r\n\tContent-Type: application/HTTP-SPNEGO-session-encrypted\r\n"
            b"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length=" + str(len(plain)).encode() + b"\r\n"
            b"--Encrypted Boundary\r\n\tContent-Type: application/octet-stream\r\n"
            + struct.pack("<i", len(wrapped.header)) + wrapped.header + wrapped.data + b"--Encrypted Boundary--\r\n"
        )
        content_type = 'multipart/encrypted;protocol="application/HTTP-SPNEGO-session-encrypted";boundary="Encrypted Boundary"'
        response = http.post(url(fleet, "plain"), data=body, headers={"Content-Type": content_type})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == content_type
    parts = response.content.split(b"--Encrypted Boundary\r\n")
    length = int(parts[1].split(b"Length=")[1].strip())
    sealed = parts[2].removeprefix(b"\tContent-Type: application/octet-stream\r\n").removesuffix(b"--Encrypted Boundary--\r\n")
    (sig_len,) = struct.unpack("<i", sealed[:4])
    reply = client.unwrap_winrm(sealed[4 : 4 + sig_len], sealed[4 + sig_len :])
    assert len(reply) == length and b'<w:Selector Name="ShellId">' in reply and b"CreateResponse" in reply


def test_wrong_password_is_rejected(fleet):
    with pytest.raises(InvalidCredentialsError):
        session(fleet, "plain", auth=(USER, "wrong")).run_cmd("cmd.exe", ["/c", "echo", "hi"])


def test_unknown_user_is_rejected(fleet):
    with pytest.raises(InvalidCredentialsError):
        session(fleet, "plain", auth=("EXCH\\nobody", PASSWORD)).run_cmd("cmd.exe", ["/c", "echo", "hi"])


def test_unencrypted_ntlm_over_http_gets_500(fleet):
    with pytest.raises(WinRMTransportError) as info:
        session(fleet, "plain", message_encryption="never").run_cmd("cmd.exe", ["/c", "echo", "hi"])
    assert info.value.code == 500


def test_basic_over_http(fleet):
    result = session(fleet, "plain", transport="basic").run_cmd("cmd.exe", ["/c", "echo", "hi"])
    assert result.std_out == b"hi\r\n"


def test_operation_timeout_faults_are_retried_by_pywinrm(fleet):
    before = fleet.request_count("busy")
    started = time.monotonic()
    result = session(fleet, "busy", operation_timeout_sec=1, read_timeout_sec=2).run_cmd("sleep", ["2.5"])
    elapsed = time.monotonic() - started
    assert result.std_out == b"slept\r\n" and result.status_code == 0
    assert 2.4 < elapsed < 5
    # 3 auth POSTs + Create + Command + 3 Receives (two TimedOut faults) + Signal + Delete
    assert fleet.request_count("busy") - before == 10


def test_large_output_is_split_across_receives(fleet):
    before = fleet.request_count("plain")
    result = session(fleet, "plain").run_cmd("big")
    assert result.std_out == b"".join(BIG_OUTPUT)
    receives = fleet.request_count("plain") - before - 7  # 3 auth + Create, Command, Signal, Delete
    assert receives >= 400_000 * 4 // 3 // 153_600


def test_command_line_over_8191_characters_fails_like_cmd(fleet):
    result = session(fleet, "plain").run_cmd("cmd.exe", ["/c", "echo", "x" * 8200])
    assert (result.status_code, result.std_err) == (1, b"The command line is too long.\r\n")


def test_command_line_of_8191_characters_runs(fleet):
    result = session(fleet, "plain").run_cmd("sleep", ["0" * (8191 - len("sleep "))])
    assert result.std_out == b"slept\r\n"


def test_exception_in_run_is_an_internal_error_fault_and_the_host_survives(fleet):
    with pytest.raises(WSManFaultError) as info:
        session(fleet, "plain").run_cmd("explode")
    assert info.value.fault_subcode == "w:InternalError"
    assert session(fleet, "plain").run_cmd("cmd.exe", ["/c", "echo", "hi"]).std_out == b"hi\r\n"


def test_unknown_shell_id_is_an_invalid_selectors_fault(fleet):
    with pytest.raises(WSManFaultError) as info:
        protocol(fleet, "plain").run_command("11111111-1111-1111-1111-111111111111", "cmd.exe", ["/c", "echo"])
    assert info.value.wsman_fault_code == 2150858843
    assert info.value.fault_subcode == "w:InvalidSelectors"


def test_unknown_command_id_is_an_invalid_selectors_fault(fleet):
    client = protocol(fleet, "plain")
    shell_id = client.open_shell()
    try:
        with pytest.raises(WSManFaultError) as info:
            client.get_command_output_raw(shell_id, "22222222-2222-2222-2222-222222222222")
        assert info.value.wsman_fault_code == 2150858843
        assert "command identifier that does not exist" in info.value.response
    finally:
        client.close_shell(shell_id)


# ---------------------------------------------------------------- quotas and expiry


def test_max_shells_per_user_quota_and_release(fleet):
    client = protocol(fleet, "quota")
    shells = [client.open_shell() for _ in range(3)]
    assert fleet.open_shells("quota") == 3
    with pytest.raises(WSManFaultError) as info:
        client.open_shell()
    assert info.value.wsman_fault_code == 2150859173
    assert info.value.fault_subcode == "w:QuotaLimit"
    assert "maximum number of 3 concurrent shells" in info.value.response
    client.close_shell(shells.pop(), close_session=False)
    shells.append(client.open_shell())
    for shell_id in shells:
        client.close_shell(shell_id, close_session=False)
    assert fleet.open_shells("quota") == 0


def test_idle_shells_expire(fleet):
    client = protocol(fleet, "idle")
    shell_id = client.open_shell()
    assert fleet.open_shells("idle") == 1
    wait_until(lambda: fleet.open_shells("idle") == 0, 5, "the idle shell to expire")
    with pytest.raises(WSManFaultError) as info:
        client.run_command(shell_id, "cmd.exe", ["/c", "echo", "hi"])
    assert info.value.wsman_fault_code == 2150858843


def test_a_shorter_idle_timeout_asked_for_at_create_is_kept(fleet):
    client = protocol(fleet, "plain")
    shell_id = client.open_shell(idle_timeout="PT1.000S")
    kept = client.open_shell()
    both = fleet.open_shells("plain")
    wait_until(lambda: fleet.open_shells("plain") == both - 1, 5, "the shell with the short timeout to expire")
    with pytest.raises(WSManFaultError) as info:
        client.run_command(shell_id, "cmd.exe", ["/c", "echo", "hi"])
    assert info.value.wsman_fault_code == 2150858843
    client.close_shell(kept, close_session=False)  # the other shell still has the server's two-hour timeout


# ---------------------------------------------------------------- HTTPS


def test_https_ntlm_with_channel_binding_and_validated_certificate(fleet):
    result = session(fleet, "secure", server_cert_validation="validate", ca_trust_path=str(fleet.ca_file)).run_ps(
        "Write-Output tls"
    )
    assert result.std_out == b"Write-Output tls\n"


def certificate_session(fleet, username: str) -> winrm.Session:
    cert, key = fleet.client_certificate(username)
    return winrm.Session(url(fleet, "secure"), auth=(None, None), transport="certificate", cert_pem=str(cert),
                         cert_key_pem=str(key), server_cert_validation="validate", ca_trust_path=str(fleet.ca_file))


def test_certificate_authentication_maps_the_client_certificate_to_a_user(fleet):
    assert certificate_session(fleet, "localadmin").run_ps("Write-Output cert").std_out == b"Write-Output cert\n"


def test_certificate_of_an_unknown_user_is_rejected(fleet):
    with pytest.raises(winrm.exceptions.InvalidCredentialsError):
        certificate_session(fleet, "intruder").run_ps("x")


def test_certificate_header_without_a_client_certificate_is_rejected(fleet):
    answer = requests.post(url(fleet, "secure"), data=b"", verify=str(fleet.ca_file), timeout=10,
                           headers={"Authorization": "http://schemas.dmtf.org/wbem/wsman/1/wsman/secprofile/https/mutual",
                                    "Content-Type": "application/soap+xml;charset=UTF-8"})
    assert answer.status_code == 401


def test_https_with_the_wrong_ca_fails(fleet, tmp_path):
    other_ca = TestAuthority(tmp_path).ca_file
    with pytest.raises(requests.exceptions.SSLError):
        session(fleet, "secure", server_cert_validation="validate", ca_trust_path=str(other_ca)).run_ps("x")


def test_https_rejects_ntlm_with_wrong_channel_bindings(fleet):
    """Proves the server checks the binding: a client bound to another certificate is refused."""
    client = spnego.client(
        USER, PASSWORD, hostname="127.0.0.22", service="http", protocol="ntlm",
        channel_bindings=GssChannelBindings(application_data=b"tls-server-end-point:" + b"\x00" * 32),
    )
    with requests.Session() as http:
        ca = str(fleet.ca_file)  # per request: REQUESTS_CA_BUNDLE would override Session.verify
        first = http.post(url(fleet, "secure"), verify=ca, headers={"Authorization": "Negotiate " + base64.b64encode(client.step()).decode()})
        assert first.status_code == 401
        challenge = base64.b64decode(first.headers["WWW-Authenticate"].split()[1])
        final = http.post(url(fleet, "secure"), verify=ca, headers={"Authorization": "Negotiate " + base64.b64encode(client.step(challenge)).decode()})
        assert final.status_code == 401
        assert final.headers["Connection"] == "close"


# ---------------------------------------------------------------- pypsrp


@pytest.mark.parametrize("secure", [False, True])
@pytest.mark.parametrize("auth", ["ntlm", "negotiate"])  # negotiate = SPNEGO-wrapped NTLM with a final token
def test_pypsrp_winrs(fleet, secure, auth):
    host = fleet.hosts["secure" if secure else "plain"]
    wsman = WSMan(
        host.address, port=host.port, ssl=secure, auth=auth, username=USER, password=PASSWORD,
        encryption="auto" if secure else "always", cert_validation=str(fleet.ca_file) if secure else False,
    )
    with wsman, WinRS(wsman) as shell:
        process = Process(shell, "cmd.exe", ["/c", "echo", "hi"])
        process.invoke()
        process.signal(SignalCode.CTRL_C)
    assert (process.rc, process.stdout, process.stderr) == (0, b"hi\r\n", b"")


# ---------------------------------------------------------------- injected faults


def test_refused_connections_and_recovery(fleet, faulty):
    faulty.faults = Faults(refuse_connections=True)
    wait_until(lambda: not listening(faulty), 5, "the watcher to close the listener")
    with pytest.raises(requests.exceptions.ConnectionError):
        session(fleet, "faulty").run_cmd("cmd.exe", ["/c", "echo", "hi"])
    faulty.faults = Faults()
    wait_until(lambda: listening(faulty), 5, "the watcher to listen again")
    assert session(fleet, "faulty").run_cmd("cmd.exe", ["/c", "echo", "hi"]).std_out == b"hi\r\n"


def test_reset_mid_response_leaks_the_shell(fleet, faulty):
    faulty.faults = Faults(reset_mid_response=True)
    before = fleet.open_shells("faulty")
    with pytest.raises(requests.exceptions.ConnectionError):
        session(fleet, "faulty").run_cmd("cmd.exe", ["/c", "echo", "hi"])
    assert fleet.open_shells("faulty") == before + 1  # pywinrm never deletes it, as with Windows


def test_hang_gives_read_timeout(fleet, faulty):
    faulty.faults = Faults(hang=True)
    with pytest.raises(requests.exceptions.ReadTimeout):
        session(fleet, "faulty", operation_timeout_sec=1, read_timeout_sec=2).run_cmd("cmd.exe", ["/c", "echo", "hi"])


def test_unauthorized_rejects_valid_credentials(fleet, faulty):
    faulty.faults = Faults(unauthorized=True)
    with pytest.raises(InvalidCredentialsError):
        session(fleet, "faulty").run_cmd("cmd.exe", ["/c", "echo", "hi"])


def test_access_denied_fault(fleet, faulty):
    faulty.faults = Faults(fault_code=5)
    with pytest.raises(WSManFaultError) as info:
        session(fleet, "faulty").run_cmd("cmd.exe", ["/c", "echo", "hi"])
    assert (info.value.code, info.value.wsman_fault_code, info.value.fault_subcode) == (500, 5, "w:AccessDenied")
    assert info.value.reason.strip() == "Access is denied."


def test_latency_is_added_to_every_response(fleet, faulty):
    faulty.faults = Faults(latency_seconds=0.1)
    started = time.monotonic()
    session(fleet, "faulty").run_cmd("cmd.exe", ["/c", "echo", "hi"])
    assert time.monotonic() - started >= 0.8  # 8 HTTP round trips


# ---------------------------------------------------------------- raw HTTP robustness


def _basic_post(fleet, body: bytes, path: str = "/wsman") -> requests.Response:
    host = fleet.hosts["plain"]
    return requests.post(
        f"http://{host.address}:{host.port}{path}", data=body, auth=(USER, PASSWORD),
        headers={"Content-Type": "application/soap+xml;charset=UTF-8"}, timeout=5,
    )


def test_malformed_xml_is_a_schema_fault(fleet):
    response = _basic_post(fleet, b"<s:Envelope><unclosed>")
    assert response.status_code == 500
    assert 'Code="2150858817"' in response.text and response.headers["Server"] == "Microsoft-HTTPAPI/2.0"


def test_unknown_action_is_action_not_supported(fleet):
    envelope = (
        '<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
        'xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing"><s:Header>'
        "<a:Action>http://example.invalid/Frobnicate</a:Action><a:MessageID>uuid:1</a:MessageID>"
        "</s:Header><s:Body/></s:Envelope>"
    )
    response = _basic_post(fleet, envelope.encode())
    assert response.status_code == 500
    assert "a:ActionNotSupported" in response.text and "<a:RelatesTo>uuid:1</a:RelatesTo>" in response.text


def test_invalid_operation_timeout_is_a_header_fault(fleet):
    envelope = (
        '<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" '
        'xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing"><s:Header>'
        "<a:Action>http://schemas.xmlsoap.org/ws/2004/09/transfer/Create</a:Action><a:MessageID>uuid:2</a:MessageID>"
        "<w:OperationTimeout>PT-1S</w:OperationTimeout></s:Header><s:Body/></s:Envelope>"
    )
    response = _basic_post(fleet, envelope.encode())
    assert response.status_code == 500 and 'Code="2150858767"' in response.text and "PT-1S" in response.text


@pytest.mark.parametrize("text, seconds", [("PT20S", 20), ("PT20.000S", 20), ("PT1M30S", 90), ("P0DT0H0M5.5S", 5.5)])
def test_operation_timeout_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["PT", "PT-1S", "20", "PTxS", ""])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_output_is_cut_to_the_envelope_budget():
    command = Command(CommandOutput([b"a" * 3000, b"b" * 10]), started=0.0, stdout=[b"a" * 3000, b"b" * 10])
    first_out, _, done = command.take(2000)
    assert not done and sum(len(chunk) for chunk in first_out) <= 2000 * 3 // 4
    rest, _, done = command.take(100_000)
    assert done and b"".join(first_out + rest) == b"a" * 3000 + b"b" * 10


def test_other_paths_are_404_and_challenge_lists_negotiate_and_basic(fleet):
    assert _basic_post(fleet, b"", path="/other").status_code == 404
    host = fleet.hosts["plain"]
    response = requests.post(f"http://{host.address}:{host.port}/wsman", data=b"", timeout=5)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Negotiate, Basic realm="WSMAN"'


def test_oversized_body_and_headers_are_refused(fleet):
    assert _basic_post(fleet, b"x" * (1024 * 1024 + 1)).status_code == 413
    host = fleet.hosts["plain"]
    with socket.create_connection((host.address, host.port), timeout=5) as raw:
        raw.sendall(b"POST /wsman HTTP/1.1\r\nX-Junk: " + b"a" * 70_000 + b"\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 431")


# ---------------------------------------------------------------- observation and control


def test_stats_and_control_api(fleet, faulty):
    base = f"http://127.0.0.1:{fleet.control_port}"
    client = protocol(fleet, "faulty")
    shell_id = client.open_shell()
    state = requests.get(f"{base}/state", timeout=5).json()
    assert state == fleet.stats()
    assert state["hosts"]["faulty"]["open_shells"] == fleet.open_shells("faulty") >= 1
    assert state["hosts"]["faulty"]["requests"] == fleet.request_count("faulty") > 0
    client.close_shell(shell_id, close_session=False)

    response = requests.put(f"{base}/hosts/faulty/faults", data=json.dumps({"fault_code": 5}), timeout=5)
    assert response.status_code == 200 and faulty.faults == Faults(fault_code=5)
    with pytest.raises(WSManFaultError):
        session(fleet, "faulty").run_cmd("cmd.exe", ["/c", "echo", "hi"])
    assert requests.put(f"{base}/hosts/faulty/faults", data=b"{}", timeout=5).status_code == 200
    assert faulty.faults == Faults()

    bad = requests.put(f"{base}/hosts/faulty/faults", data=b'{"hang": "yes"}', timeout=5)
    assert bad.status_code == 400 and "hang" in bad.json()["error"]
    assert requests.put(f"{base}/hosts/faulty/faults", data=b'{"nope": 1}', timeout=5).status_code == 400
    assert requests.put(f"{base}/hosts/missing/faults", data=b"{}", timeout=5).status_code == 404


# ---------------------------------------------------------------- fleet options


def test_fleet_without_basic_and_with_unencrypted_allowed():
    host = _host("lenient", 27)
    with Fleet([host], {USER: PASSWORD}, allow_basic=False, allow_unencrypted=True) as lenient:
        target = f"http://{host.address}:{host.port}/wsman"
        with pytest.raises(InvalidCredentialsError):
            winrm.Session(target, auth=(USER, PASSWORD), transport="basic").run_cmd("cmd.exe", ["/c", "echo", "hi"])
        plain = winrm.Session(target, auth=(USER, PASSWORD), transport="ntlm", message_encryption="never")
        assert plain.run_cmd("cmd.exe", ["/c", "echo", "hi"]).std_out == b"hi\r\n"
        assert lenient.stats()["hosts"]["lenient"]["commands"] == 1


def test_fleet_refuses_non_loopback_addresses():
    with pytest.raises(ValueError, match="not a loopback address"):
        Fleet([SimulatedHost("x", "192.0.2.1", 5985, "http", run)], {USER: PASSWORD})


def _run_without_cmd(fleet, executable: str, arguments: list[str]) -> tuple[bytes, bytes, int]:
    p = protocol(fleet, "plain")
    shell = p.open_shell()
    try:
        command = p.run_command(shell, executable, arguments, skip_cmd_shell=True)
        out, err, code = p.get_command_output(shell, command)
        p.cleanup_command(shell, command)
        return out, err, code
    finally:
        p.close_shell(shell)


def test_without_cmd_shell_a_bare_program_name_is_file_not_found(fleet):
    """pypsrp's recorded test_winrs_no_cmd_shell: `powershell.exe` without a path gets 0x80070002."""
    with pytest.raises(WSManFaultError) as info:
        _run_without_cmd(fleet, "powershell.exe", ["Write-Host", "hi"])
    assert info.value.wsman_fault_code == 2147942402


def test_without_cmd_shell_a_line_over_8191_characters_runs(fleet):
    out, _, code = _run_without_cmd(fleet, r"C:\Windows\System32\sleep.exe", ["0" * 20000])
    assert code == 0


def test_without_cmd_shell_createprocess_limit_applies(fleet):
    program = r"C:\Windows\System32\sleep.exe"
    fits = 32766 - len(f'"{program}" ')
    assert _run_without_cmd(fleet, program, ["0" * fits])[2] == 0
    with pytest.raises(WSManFaultError) as info:
        _run_without_cmd(fleet, program, ["0" * (fits + 1)])
    assert info.value.wsman_fault_code == 2147942606
