"""PowerShell remoting (exporter/winrm/psrp.py) against simulated servers over real HTTP with NTLM and message
encryption: the JEA endpoint answers with the facts WinRS gets, Exchange's endpoint with the organization
script's, and each failure has its reason. The endpoint the simulator serves is the one windows-endpoint writes."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest

from exporter import windows_endpoint
from exporter.collectors import script_failure
from exporter.config import MAX_LOOKBACK_HOURS
from exporter.parse import parse_organization_output
from exporter.scripts import ServerScriptParameters, organization_script, powershell_command, server_script
from exporter.secret import Secret
from exporter.winrm import PollFailure, ServerConnection, connect
from exporter.winrm.psrp import PsrpConnection

from ..conftest import SimulatedFleet, relocate

SE = "15.2.2562.53"
PARAMETERS = ServerScriptParameters(24, 50, 32768, True, 10, "")
SERVER = powershell_command(server_script(PARAMETERS))
ORGANIZATION = powershell_command(organization_script())


def scenario(role_capability: Path, **remoting) -> dict:
    """Three servers; Exchange's /PowerShell opened to NTLM (`kerberos_only: false`) unless a test says otherwise:
    test_exchange_endpoint_over_kerberos_and_the_reason_over_ntlm runs it as real Exchange does, Kerberos only, with
    a real KDC."""
    servers = [{"name": "EX01", "build": SE}, {"name": "EX02", "build": "15.2.1544.4", "locale": "de-DE"},
               {"name": "EX03", "build": "15.1.2507.6", "mitigations": {"applied": ["M1.1"], "blocked": ["PING1"]}}]
    for server in servers:
        # scripts answer at once unless a test says otherwise (the simulator's default: 0.3 s, the organization's 2 s)
        server.update({"address": "127.0.0.1", "output_faults": {"script_runtime": 0}})
    jea = {"role_capability": str(role_capability), **remoting.pop("jea", {})}
    exchange = {"kerberos_only": False, **remoting.pop("exchange", {})}
    return relocate({"clock": "2026-12-06T12:00:00Z", "servers": servers,
                     "remoting": {"jea": jea, "exchange": exchange, **remoting}})


@pytest.fixture(scope="module")
def role_capability(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("endpoint")
    windows_endpoint.write(output, "CONTOSO\\EEMS Monitoring")
    return output / "ExchangeEemsExporter" / "RoleCapabilities" / "ExchangeEemsReader.psrc"


@pytest.fixture(scope="module")
def fleet(role_capability):
    with SimulatedFleet(scenario(role_capability, jea={"outdated": ["EX02"]},
                                 exchange={"rbac_denied": []})) as fleet:
        yield fleet


def connection(fleet: SimulatedFleet, name: str, **module_changes):
    config = fleet.config()
    server = next(s for s in config.servers if s.name == name)
    module = dataclasses.replace(config.modules[server.module], **module_changes)
    target = f"{module.scheme}://{server.address}:{server.port}/wsman"
    return connect(target, module, max_response_bytes=config.limits.max_response_bytes,
                   max_poll_bytes=config.limits.max_poll_bytes, server_name=name)


def psrp(fleet, name, **changes):
    return connection(fleet, name, protocol="psrp", **changes)


def test_the_jea_endpoint_gives_the_facts_winrs_gets(fleet):
    winrs = connection(fleet, "EX01")
    assert isinstance(winrs, ServerConnection)
    expected = winrs.run(SERVER, time.monotonic() + 20)
    conn = psrp(fleet, "EX01")
    result = conn.run(SERVER, time.monotonic() + 20)
    conn.close()
    assert result.exit_code == 0 and result.stdout == expected.stdout.rstrip(b"\r\n")
    assert json.loads(result.stdout)["computer"] == "EX01"
    assert fleet.fleet.open_pools("EX01") == 0  # close() deletes the kept pool


def test_a_kept_runspace_costs_a_command_and_its_receive(fleet):
    conn = psrp(fleet, "EX03")
    conn.run(SERVER, time.monotonic() + 20)
    before = fleet.fleet.request_count("EX03")
    conn.run(SERVER, time.monotonic() + 20)
    steady = fleet.fleet.request_count("EX03") - before
    assert fleet.fleet.open_pools("EX03") == 1
    conn.close()
    assert fleet.fleet.open_pools("EX03") == 0
    # Command, then the Receive that long-polls until the function is done (WinRS: Create, Command, Receive,
    # Signal, Delete)
    assert steady == 2


def test_without_keep_runspace_the_pool_is_deleted_after_each_poll(fleet):
    conn = psrp(fleet, "EX01", keep_runspace=False)
    conn.run(SERVER, time.monotonic() + 20)
    assert fleet.fleet.open_pools("EX01") == 0


def test_an_outdated_endpoint_gives_no_verdict(fleet):
    conn = psrp(fleet, "EX02")
    with pytest.raises(PollFailure) as failure:
        conn.run(SERVER, time.monotonic() + 20)
    assert failure.value.reason == "endpoint_outdated"
    assert windows_endpoint.endpoint_version() in failure.value.message
    assert "windows-endpoint" in failure.value.message and "Install-ExchangeEemsEndpoint.ps1" in failure.value.message


def test_a_missing_endpoint_is_configuration_not_found(role_capability):
    with SimulatedFleet(scenario(role_capability, jea={"absent": ["EX01"]})) as fleet:
        with pytest.raises(PollFailure) as failure:
            psrp(fleet, "EX01").run(SERVER, time.monotonic() + 20)
    assert failure.value.reason == "configuration_not_found"
    assert "windows-endpoint" in failure.value.message


def test_exchange_endpoint_gives_the_organization_scripts_facts(fleet):
    expected = parse_organization_output(connection(fleet, "EX01").run(ORGANIZATION, time.monotonic() + 20).stdout)
    conn = psrp(fleet, "EX01", configuration_name="Microsoft.Exchange", path="PowerShell")
    result = conn.run(ORGANIZATION, time.monotonic() + 20)
    conn.close()
    facts = parse_organization_output(result.stdout)
    assert facts.mitigations_enabled is True and facts.error_stage is None
    assert [s.name for s in facts.servers] == ["EX01", "EX02", "EX03"]
    assert facts.servers == expected.servers


def test_rbac_denied(role_capability):
    with SimulatedFleet(scenario(role_capability, exchange={"rbac_denied": ["Get-ExchangeServer"]})) as fleet:
        conn = psrp(fleet, "EX01", configuration_name="Microsoft.Exchange", path="PowerShell")
        with pytest.raises(PollFailure) as failure:
            conn.run(ORGANIZATION, time.monotonic() + 20)
        conn.close()
    assert failure.value.reason == "rbac_denied" and "Get-ExchangeServer" in failure.value.message


def test_without_select_object_the_full_objects_are_read(role_capability, caplog, monkeypatch):
    """UNCONFIRMED whether Exchange's /PowerShell offers Select-Object to a View-Only Organization Management account.
    Where it answers CommandNotFoundException for it (simulator: `select_object: false`), the collector asks for the
    full objects: the same facts as WinRS, said once in the log, and the next poll asks for them at once."""
    asked: list[list[tuple[str, ...]]] = []  # per invocation, what each statement piped into Select-Object
    invoke = PsrpConnection._invoke

    def recorded(self, statements, deadline):
        asked.append([statement.select for statement in statements])
        return invoke(self, statements, deadline)

    monkeypatch.setattr(PsrpConnection, "_invoke", recorded)
    with SimulatedFleet(scenario(role_capability, exchange={"select_object": False})) as fleet:
        expected = parse_organization_output(connection(fleet, "EX01").run(ORGANIZATION, time.monotonic() + 20).stdout)
        conn = psrp(fleet, "EX01", configuration_name="Microsoft.Exchange", path="PowerShell")
        first = parse_organization_output(conn.run(ORGANIZATION, time.monotonic() + 20).stdout)
        second = parse_organization_output(conn.run(ORGANIZATION, time.monotonic() + 20).stdout)
        conn.close()
    assert first.servers == second.servers == expected.servers and first.mitigations_enabled is True
    assert [s.name for s in first.servers] == ["EX01", "EX02", "EX03"]
    assert [all(selects) for selects in asked] == [True, False, False]  # one try with Select-Object, then none
    assert [not any(selects) for selects in asked] == [False, True, True]
    assert sum("has no Select-Object" in r.getMessage() for r in caplog.records) == 1


def test_full_objects_beyond_the_poll_bound_say_why(role_capability):
    """The full objects are bounded like any answer; over limits.max_poll_bytes the reason says what to change."""
    with SimulatedFleet(scenario(role_capability, exchange={"select_object": False})) as fleet:
        config = fleet.config()
        server = next(s for s in config.servers if s.name == "EX01")
        module = dataclasses.replace(config.modules[server.module], protocol="psrp",
                                     configuration_name="Microsoft.Exchange", path="PowerShell")
        conn = connect(f"{module.scheme}://{server.address}:{server.port}/wsman", module,
                       max_response_bytes=config.limits.max_response_bytes, max_poll_bytes=200_000, server_name="EX01")
        with pytest.raises(PollFailure) as failure:
            conn.run(ORGANIZATION, time.monotonic() + 20)
        conn.close()
    assert failure.value.reason == "output_too_large"
    assert "has no Select-Object" in failure.value.message and "limits.max_poll_bytes (200000 bytes)" in failure.value.message


BEFORE_ISSUE_17 = Path(__file__).resolve().parents[1] / "fixtures" / "collect_server_before_issue_17.ps1"


def test_error_text_keeps_its_letters_over_psrp(role_capability):
    """Review R14 on the PSRP path: the parser reads stderr in the WinRS shell's code page (437), while a PSRP error
    is Unicode text; a German Constrained Language refusal (of the script before issue 17, in a full-language
    configuration) kept its umlauts over WinRS and lost them over PSRP, on the simulator's side and the client's."""
    servers = scenario(role_capability)
    for server in servers["servers"]:
        server["language_mode"] = "constrained"
    old = powershell_command("\n".join(server_script(PARAMETERS).split("\n")[:2]
                                        + BEFORE_ISSUE_17.read_text(encoding="utf-8").splitlines()))
    with SimulatedFleet(servers) as fleet:
        winrs = connection(fleet, "EX02").run(old, time.monotonic() + 20)
        conn = psrp(fleet, "EX02", configuration_name="Microsoft.PowerShell")
        result = conn.run(old, time.monotonic() + 20)
        conn.close()
    for answer in (winrs, result):
        failure = script_failure(answer.exit_code, answer.stderr)
        assert failure.reason == "constrained_language", failure
        assert "nur für Kerntypen unterstützt" in failure.message and "\ufffd" not in failure.message, failure.message


def test_exchange_endpoint_refuses_the_server_script(fleet):
    with pytest.raises(PollFailure) as failure:
        psrp(fleet, "EX01", configuration_name="Microsoft.Exchange", path="PowerShell").run(SERVER, time.monotonic() + 20)
    assert failure.value.reason == "configuration_not_found"


def test_proxies_in_the_environment_are_not_used(fleet, monkeypatch):
    """The WinRS path ignores proxy variables; so does PSRP (pypsrp's session would have trusted them)."""
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # discard port: a used proxy fails the poll
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    conn = psrp(fleet, "EX01", keep_runspace=False)
    assert conn.run(SERVER, time.monotonic() + 20).exit_code == 0


def test_a_slow_function_fails_by_the_deadline(role_capability):
    scenario_ = scenario(role_capability)
    scenario_["servers"][0]["output_faults"] = {"script_runtime": 30}
    with SimulatedFleet(scenario_) as fleet:
        conn = psrp(fleet, "EX01", operation_timeout=1.0, read_timeout=2.0)
        started = time.monotonic()
        with pytest.raises(PollFailure) as failure:
            conn.run(SERVER, started + 3)
        took = time.monotonic() - started
        conn.close()
    assert failure.value.reason == "timeout" and took < 4.5  # slow, not trickling: as over WinRS


KERBEROS_PASSWORD = "Kerb3ros!psrp-test"


def test_exchange_endpoint_over_kerberos_and_the_reason_over_ntlm(role_capability, kdc_factory):
    """As real Exchange: /PowerShell takes Kerberos only. With a ticket from a real MIT KDC the organization
    collector gets every server's facts without delegation; over NTLM a clear reason names Kerberos."""
    kdc = kdc_factory()
    kdc.add_principal("svc_monitor", password=KERBEROS_PASSWORD)
    data = scenario(role_capability, exchange={"kerberos_only": True})
    for server in data["servers"]:
        server["fqdn"] = f"{server['name'].lower()}.contoso.test"
        server["auth"] = ["ntlm", "kerberos"]
    fqdns = [server["fqdn"] for server in data["servers"]]
    keytab = kdc.service_keytab(kdc.directory / "keytabs" / "listeners.keytab", fqdns)
    with SimulatedFleet(data, kerberos_keytab=keytab) as fleet:
        config = fleet.config()
        server = config.servers[0]
        module = dataclasses.replace(config.modules[server.module], protocol="psrp",
                                     configuration_name="Microsoft.Exchange", path="PowerShell")
        target = f"http://{server.address}:{server.port}/wsman"

        def run(**changes):
            conn = connect(target, dataclasses.replace(module, **changes), max_response_bytes=4 << 20,
                           max_poll_bytes=8 << 20, server_name="ex01.contoso.test")
            try:
                return conn.run(ORGANIZATION, time.monotonic() + 20)
            finally:
                conn.close()

        facts = parse_organization_output(run(transport="kerberos", username="svc_monitor@CONTOSO.TEST",
                                              password=Secret(KERBEROS_PASSWORD)).stdout)
        with pytest.raises(PollFailure) as ntlm:
            run()
    assert [s.name for s in facts.servers] == ["EX01", "EX02", "EX03"] and facts.error_stage is None
    assert ntlm.value.reason == "auth_failed" and "takes Kerberos only" in ntlm.value.message


def test_parameters_beyond_the_functions_bounds_are_cut_to_them(fleet):
    """A lookback of two years is more than the JEA function accepts (one year): the poll asks for a year."""
    command = powershell_command(server_script(ServerScriptParameters(2 * 8760, 50, 32768, False, 600, "")))
    conn = psrp(fleet, "EX01")
    result = conn.run(command, time.monotonic() + 20)
    conn.close()
    assert result.exit_code == 0 and json.loads(result.stdout)["computer"] == "EX01"


def test_the_longest_lookback_the_configuration_takes_is_asked_of_the_jea_endpoint_as_it_is(fleet):
    """poll.lookback took up to 8784h (366 days) where the JEA function's ValidateRange stops at 8760h: such a poll
    asked the endpoint for 8760h (cut to the bound) and judged the answer as 8784h, a window a day longer than the
    facts behind it (over WinRS the same configuration got all 8784h; `utc_offsets` starts at the window's start)."""
    command = powershell_command(server_script(dataclasses.replace(PARAMETERS, lookback_hours=MAX_LOOKBACK_HOURS)))
    winrs = connection(fleet, "EX01")
    expected = winrs.run(command, time.monotonic() + 20)
    winrs.close()
    conn = psrp(fleet, "EX01")
    result = conn.run(command, time.monotonic() + 20)
    conn.close()
    assert json.loads(result.stdout)["utc_offsets"] == json.loads(expected.stdout)["utc_offsets"]
    assert result.exit_code == 0 and result.stdout == expected.stdout.rstrip(b"\r\n")


def test_an_error_of_get_organizationconfig_is_the_organizations_error(role_capability, monkeypatch):
    """Get-OrganizationConfig failing (its statement ends; Get-ExchangeServer runs on): the organization script
    over WinRS stops there ($ErrorActionPreference='Stop') and says so. Over PSRP the error record was dropped,
    and the organization's MitigationsEnabled read as unknown with no error."""
    from simulator import remoting
    from simulator.host import Answer, ErrorSpec

    exchange = remoting.Endpoints._exchange

    def failing(self, name, parameters):
        if name == "Get-OrganizationConfig":
            return Answer(failure=ErrorSpec("Active Directory operation failed on DC01.contoso.test.",
                                            "D5E6F7A8,Microsoft.Exchange.Management.SystemConfigurationTasks."
                                            "GetOrganizationConfig", 1, ("Microsoft.Exchange.Data.Directory."
                                                                        "ADOperationException", "System.Exception")))
        return exchange(self, name, parameters)

    monkeypatch.setattr(remoting.Endpoints, "_exchange", failing)
    with SimulatedFleet(scenario(role_capability)) as fleet:
        conn = psrp(fleet, "EX01", configuration_name="Microsoft.Exchange", path="PowerShell")
        facts = parse_organization_output(conn.run(ORGANIZATION, time.monotonic() + 20).stdout)
        conn.close()
    assert facts.error_stage == "organization"
    assert facts.error_message.startswith("Active Directory operation failed on DC01.contoso.test.")


def _psrp_message(pool, pipeline, kind: int, data: bytes) -> bytes:
    import struct

    body = struct.pack("<II", 1, kind) + pool.bytes_le + pipeline.bytes_le + data
    return struct.pack(">QQBI", 100, 0, 3, len(body)) + body


# CLIXML that psrpcore cannot read, and the exception it raises for it (not ValueError, KeyError or TypeError)
UNREADABLE = {
    "overflow": (0x00041004, b"<TS>P999999999999999999D</TS>"),  # OverflowError
    "decimal": (0x00041004, b"<D>NaNx</D>"),  # decimal.InvalidOperation
    "error_record": (0x00041004, b'<Obj RefId="0"><TN RefId="0"><T>System.Management.Automation.ErrorRecord</T></TN>'
                                 b'<MS><B N="SerializeExtendedInfo">true</B></MS></Obj>'),  # AttributeError
    "state_without_state": (0x00041006, b'<Obj RefId="0"><MS></MS></Obj>'),  # AttributeError
}


@pytest.mark.parametrize("name", list(UNREADABLE))
def test_clixml_psrpcore_cannot_read_is_bad_output_not_internal_error(fleet, monkeypatch, name):
    """A server's message that psrpcore fails on with an exception other than the ValueError family is the
    server's bad output, as every other unreadable message is: not internal_error, the exporter's own bug."""
    import asyncio

    from simulator import psrp as simulated

    kind, data = UNREADABLE[name]

    async def hostile_run(self, pool, command, powershell):
        command.queue.fragments.append(_psrp_message(pool.runspace.runspace_pool_id, command.pipeline.pipeline_id,
                                                     kind, data))
        await simulated._notify(pool)
        await asyncio.sleep(3600)  # never completes

    monkeypatch.setattr(simulated.PsrpService, "_run", hostile_run)
    conn = psrp(fleet, "EX01", keep_runspace=False)
    with pytest.raises(PollFailure) as failure:
        conn.run(SERVER, time.monotonic() + 15)
    conn.close()
    assert failure.value.reason == "bad_output", failure.value.message
    assert "unreadable PSRP message" in failure.value.message


def test_many_tiny_fragments_cost_time_in_proportion_to_their_bytes(fleet, monkeypatch):
    """psrpcore cuts each fragment off the front of its whole receive buffer (a copy of the rest), so one answer
    of N fragments costs N times its size: 3 MiB of empty 21-byte fragments (150,000) took 16 s of CPU in one call,
    past any deadline, within limits.max_response_bytes. Here the endpoint's version line comes in N empty
    fragments and one that ends it, then Completed, for N of 30,000 and 4 times as many: read in linear time, the
    second takes about 4 times the CPU of the first (16 times, quadratic, before: the ratio of this thread's CPU,
    measured in the same run, holds on any machine and under any load)."""
    import struct

    from simulator import psrp as simulated

    def took(empties: int) -> float:
        async def hostile_run(self, pool, command, powershell):
            pool_id, pipe_id = pool.runspace.runspace_pool_id, command.pipeline.pipeline_id
            head = struct.pack("<II", 1, 0x00041004) + pool_id.bytes_le + pipe_id.bytes_le + b"<S>"
            tail = f"{windows_endpoint.endpoint_version()}</S>".encode()
            empty = b"".join(struct.pack(">QQBI", 100, n, 0, 0) for n in range(1, empties + 1))
            state = _psrp_message(pool_id, pipe_id, 0x00041006, b'<Obj RefId="0"><MS><I32 N="PipelineState">4</I32>'
                                                               b'</MS></Obj>')
            command.queue.fragments.append(struct.pack(">QQBI", 100, 0, 1, len(head)) + head + empty
                                           + struct.pack(">QQBI", 100, empties + 1, 2, len(tail)) + tail
                                           + state.replace(struct.pack(">Q", 100), struct.pack(">Q", 101), 1))
            command.queue.done = True
            await simulated._notify(pool)

        monkeypatch.setattr(simulated.PsrpService, "_run", hostile_run)
        conn = psrp(fleet, "EX01", keep_runspace=False)
        started, cpu = time.monotonic(), time.thread_time()
        result = conn.run(SERVER, started + 60)
        elapsed = time.thread_time() - cpu  # this thread's CPU: where psrpcore reads, whatever else the machine runs
        conn.close()
        assert result.exit_code == 0, result
        return elapsed

    small, large = took(30_000), took(120_000)
    assert large / small < 8, (small, large)


# An ErrorRecord without <ToString>: psrpcore makes its text with ErrorRecord.__str__, from its Exception's Message
_RECORD = (b'<Obj RefId="0"><TN RefId="0"><T>System.Management.Automation.ErrorRecord</T><T>System.Object</T></TN><MS>'
           b'<Obj RefId="1" N="Exception"><TN RefId="1"><T>System.Exception</T></TN><Props>%s<Nil N="Data" />'
           b'<Nil N="HelpLink" /><I32 N="HResult">-2146233087</I32><Nil N="InnerException" /><Nil N="Source" />'
           b'<Nil N="StackTrace" /><Nil N="TargetSite" /></Props></Obj><Nil N="TargetObject" />'
           b'<S N="FullyQualifiedErrorId">Boom</S><Nil N="InvocationInfo" /><I32 N="ErrorCategory_Category">1</I32>'
           b'<Nil N="ErrorCategory_Activity" /><S N="ErrorCategory_Reason" /><S N="ErrorCategory_TargetName" />'
           b'<S N="ErrorCategory_TargetType" /><S N="ErrorCategory_Message">OpenError (:) [], </S>'
           b'<B N="SerializeExtendedInfo">false</B></MS></Obj>')


@pytest.mark.parametrize("message", [
    pytest.param(b"", id="no_message"),  # AttributeError
    pytest.param(b'<I32 N="Message">5</I32>', id="number_message"),  # TypeError: __str__ returned non-string
])
def test_an_error_record_whose_text_cannot_be_made_is_bad_output_not_internal_error(fleet, monkeypatch, message):
    """Found by fuzzing: psrpcore reads such a record, and its text is made only when the exporter asks for it,
    outside the reading of the message: the poll ended internal_error."""
    import asyncio

    from simulator import psrp as simulated

    async def hostile_run(self, pool, command, powershell):
        pool_id, pipe_id = pool.runspace.runspace_pool_id, command.pipeline.pipeline_id
        record = _psrp_message(pool_id, pipe_id, 0x00041005, _RECORD % message)
        state = _psrp_message(pool_id, pipe_id, 0x00041006, b'<Obj RefId="0"><MS><I32 N="PipelineState">4</I32>'
                                                           b'</MS></Obj>')
        command.queue.fragments.append(record + state.replace(struct.pack(">Q", 100), struct.pack(">Q", 101), 1))
        command.queue.done = True
        await simulated._notify(pool)

    import struct

    monkeypatch.setattr(simulated.PsrpService, "_run", hostile_run)
    for configuration in ({}, {"configuration_name": "Microsoft.Exchange", "path": "PowerShell"}):
        conn = psrp(fleet, "EX01", keep_runspace=False, **configuration)
        with pytest.raises(PollFailure) as failure:
            conn.run(ORGANIZATION if configuration else SERVER, time.monotonic() + 15)
        conn.close()
        assert failure.value.reason == "bad_output", failure.value.message
        assert "text cannot be made" in failure.value.message


def test_a_lone_surrogate_in_the_output_is_replaced_not_an_internal_error(fleet, monkeypatch):
    """Found by fuzzing: CLIXML escapes any UTF-16 unit (`_xD800_`), psrpcore gives it as a lone surrogate, and the
    output's encoding to UTF-8 raised UnicodeEncodeError (internal_error). A pair is still one character."""
    import struct

    from simulator import psrp as simulated

    async def hostile_run(self, pool, command, powershell):
        pool_id, pipe_id = pool.runspace.runspace_pool_id, command.pipeline.pipeline_id
        version = _psrp_message(pool_id, pipe_id, 0x00041004, f"<S>{windows_endpoint.endpoint_version()}</S>".encode())
        text = _psrp_message(pool_id, pipe_id, 0x00041004, b"<S>a_xD800_b_xD83D__xDE00_c</S>")
        state = _psrp_message(pool_id, pipe_id, 0x00041006, b'<Obj RefId="0"><MS><I32 N="PipelineState">4</I32>'
                                                           b'</MS></Obj>')
        command.queue.fragments.append(version + text.replace(struct.pack(">Q", 100), struct.pack(">Q", 101), 1)
                                       + state.replace(struct.pack(">Q", 100), struct.pack(">Q", 102), 1))
        command.queue.done = True
        await simulated._notify(pool)

    monkeypatch.setattr(simulated.PsrpService, "_run", hostile_run)
    conn = psrp(fleet, "EX01", keep_runspace=False)
    result = conn.run(SERVER, time.monotonic() + 15)
    conn.close()
    assert result.stdout.decode("utf-8") == "a\ufffdb\U0001f600c"
