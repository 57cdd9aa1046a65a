"""The simulator's Windows + EEMS side, called directly (no network): scenarios -> command lines -> PowerShell output."""

from __future__ import annotations

import base64
import json
import re
import zoneinfo
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator import eems, timezones
from simulator.host import CommandOutput
from simulator.scenario import ScenarioError, load_scenario, scenario_from_dict

ROOT = Path(__file__).resolve().parents[2]
SIMULATOR = ROOT / "simulator"
NOW = datetime(2026, 11, 26, 12, 30, tzinfo=timezone.utc)
SERVER_MARKER = "# exchange-eems-exporter:collect-server:v1"
ORG_MARKER = "# exchange-eems-exporter:collect-organization:v1"
# The simulator answers the event query the script sends (simulator/eventlog.py): this stand-in asks as the
# exporter's script does.
EVENT_QUERY = "$r.events=@(Get-WinEvent -LogName Application -FilterXPath $q -MaxEvents $P.MaxEvents)"
LOG_READ = "$t=@(Get-ChildItem -LiteralPath $d -Filter *.log -File|%{Get-Content -LiteralPath $_.FullName -Tail 9})"
BODY = (f"$ProgressPreference='SilentlyContinue'\r\n$r=[ordered]@{{schema=1}}\r\n{EVENT_QUERY}\r\n{LOG_READ}\r\n"
        "ConvertTo-Json -InputObject $r -Compress\r\n")


def server_script(lookback=24, max_events=50, tail=32768, endpoint=0, proxy="") -> str:
    line = f"$P=@{{LookbackHours={lookback};MaxEvents={max_events};LogTailBytes={tail};CheckEndpoint={endpoint};EndpointTimeoutSec=10;Proxy='{proxy}'}}"
    return f"{SERVER_MARKER}\r\n{line}\r\n{BODY}"


def encode(script: str, flag: str = "-EncodedCommand") -> str:
    """The way the exporter (and pywinrm's run_ps) builds the command line."""
    return f"powershell -NoProfile -NonInteractive {flag} {base64.b64encode(script.encode('utf-16-le')).decode()}"


def fleet(*servers: dict, clock: datetime | str = NOW, **top) -> object:
    entries = [{"address": f"127.0.0.{10 + i}", **s} for i, s in enumerate(servers)]
    data = {"clock": clock, "credentials": [{"username": "EXCH\\svc_monitor", "password": "s3cret-demo"}], "servers": entries, **top}
    return scenario_from_dict(data)


def run(scenario, command: str, index: int = 0) -> CommandOutput:
    return scenario.hosts[index].run(command)


def stdout(out: CommandOutput) -> str:
    return b"".join(out.stdout_chunks).decode("ascii")


def facts(scenario, index: int = 0, **params) -> dict:
    out = run(scenario, encode(server_script(**params)), index)
    assert out.exit_code == 0, out.stderr
    return json.loads(stdout(out))


def as_list(value) -> list:
    return [] if value is None else value if isinstance(value, list) else [value]


def log_text(doc) -> str:
    """Every log tail the script read, oldest file first."""
    return "".join(log["tail"] for log in reversed(doc["logs"]))


def ms(value: str) -> int:
    match = re.fullmatch(r"/Date\((-?\d+)\)/", value)
    assert match, value
    return int(match.group(1))


# ---------------------------------------------------------------- command lines


@pytest.mark.parametrize("flag", ["-EncodedCommand", "-encodedcommand", "-ENC", "-enc", "-e", "-ec", "-EncodedC"])
def test_every_spelling_of_the_encoded_command_flag_runs_the_script(flag):
    sc = fleet({"name": "EX01", "build": "15.2.2562.53"})
    assert facts_from(run(sc, encode(server_script(), flag)))["computer"] == "EX01"


def facts_from(out: CommandOutput) -> dict:
    assert out.exit_code == 0, out.stderr
    return json.loads(stdout(out))


def test_full_path_and_exe_suffix_are_powershell_too():
    sc = fleet({"name": "EX01", "build": "15.2.2562.53"})
    b64 = base64.b64encode(server_script().encode("utf-16-le")).decode()
    line = f'"C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe" -ExecutionPolicy Bypass -NoP -NonI -Enc {b64}'
    assert facts_from(run(sc, line))["schema"] == 1


def test_the_exporters_own_command_lines_are_answered():
    from exporter import scripts  # the test (not the simulator) may use the exporter: it checks the contract

    sc = fleet({"name": "EX01", "build": "15.2.2562.53"})
    params = scripts.ServerScriptParameters(6, 3, 2000, True, 10, "http://o'brien-proxy:8080/")
    doc = facts_from(run(sc, scripts.powershell_command(scripts.server_script(params)).line))
    sent = sum(len(log["tail"]) + 2 for log in doc["logs"] if log["tail"])
    assert doc["events"] == [] and 1700 < sent <= 2000  # whole lines, LogTailBytes characters at most
    assert [e["status"] for e in doc["endpoints"]] == [200, 200]
    org = facts_from(run(sc, scripts.powershell_command(scripts.organization_script()).line))
    assert [server["name"] for server in org["servers"]] == ["EX01"]


def test_stdout_is_one_json_line_with_crlf_and_ascii_only():
    sc = fleet({"name": "EX01", "build": "15.2.2562.53"})
    out = run(sc, encode(server_script()))
    raw = b"".join(out.stdout_chunks)
    assert raw.endswith(b"}\r\n") and raw.count(b"\r\n") == 1
    assert all(byte < 0x80 for byte in raw)


def test_unknown_cmd_command_fails_like_cmd_exe():
    out = run(fleet({"name": "EX01", "build": "15.2.2562.53"}), "foo /x")
    assert out.exit_code == 1 and out.stdout_chunks == []
    assert out.stderr == b"'foo' is not recognized as an internal or external command,\r\noperable program or batch file.\r\n"


def test_unknown_powershell_script_is_a_clixml_error_record():
    out = run(fleet({"name": "EX01", "build": "15.2.2562.53"}), encode("Get-Mailbox -ResultSize 1"))
    assert out.exit_code == 1
    assert out.stderr.startswith(b"#< CLIXML\r\n<Objs ")
    assert b"The term 'Get-Mailbox' is not recognized" in out.stderr.replace(b"_x000D__x000A_</S><S S=\"Error\">", b"")


def test_invalid_base64_gets_powershells_encoding_error():
    out = run(fleet({"name": "EX01", "build": "15.2.2562.53"}), "powershell -EncodedCommand not*base64")
    assert out.exit_code == 1 and b"not properly encoded" in out.stderr


@pytest.mark.parametrize(
    "line, expected",
    [
        ("$P=@{LookbackHours=24;MaxEvents=50}", b"LogTailBytes"),
        ("$P=@{LookbackHours=24;MaxEvents=0;LogTailBytes=1;CheckEndpoint=0;EndpointTimeoutSec=10;Proxy=''}", b"MaxEvents"),
        ("$P=@{LookbackHours=24 MaxEvents=50}", b"ParserError"),
        ("Write-Host hello", b"$P"),
    ],
)
def test_broken_parameter_line_is_a_powershell_error(line, expected):
    out = run(fleet({"name": "EX01", "build": "15.2.2562.53"}), encode(f"{SERVER_MARKER}\n{line}\n{BODY}"))
    assert out.exit_code == 1 and out.stdout_chunks == []
    assert out.stderr.startswith(b"#< CLIXML") and expected in out.stderr


def test_first_run_writes_a_progress_record_and_still_exits_zero():
    sc = fleet({"name": "EX01", "build": "15.2.2562.53"})
    first, second = run(sc, encode(server_script())), run(sc, encode(server_script()))
    assert first.exit_code == 0 and b'S="progress"' in first.stderr and b'S="Error"' not in first.stderr
    assert second.stderr == b""


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300))
def test_the_answer_function_never_raises(command):
    sc = fleet({"name": "EX01", "build": "15.2.2562.53"})
    out = run(sc, command)
    assert isinstance(out, CommandOutput) and isinstance(out.exit_code, int)
    encoded = run(sc, "powershell -e " + base64.b64encode(command.encode("utf-16-le", "surrogatepass")).decode())
    assert isinstance(encoded, CommandOutput)


# ---------------------------------------------------------------- JSON shape


def test_dates_are_powershell_ms_dates_and_now_is_the_pinned_clock():
    sc = fleet({"name": "EX01", "build": "15.2.2562.53"})
    text = stdout(run(sc, encode(server_script())))
    assert '"now":"\\/Date(1795696200000)\\/"' in text
    doc = json.loads(text)
    assert ms(doc["now"]) == int(NOW.timestamp() * 1000)
    assert all(ms(e["time"]) <= ms(doc["now"]) for e in doc["events"])


def test_one_element_arrays_stay_arrays_as_in_a_dictionary():
    """5.1 unwraps only pipeline output; arrays held in the result dictionary stay arrays: [x]."""
    sc = fleet({"name": "EX01", "build": "15.2.2562.53", "build_source": "none", "success_events": True})
    doc = facts(sc, max_events=1)
    assert isinstance(doc["events"], list) and doc["events"][0]["id"] == 1006
    assert [e["part"] for e in doc["errors"]] == ["build"] and doc["errors"][0]["id"].startswith("PathNotFound,")
    assert doc["exsetup_version"] is None and doc["build_source"] is None


def test_the_unwrapped_style_imitates_piped_arrays():
    sc = fleet({"name": "EX01", "build": "15.2.2562.53", "success_events": True, "output_style": {"arrays": "unwrapped"}})
    assert isinstance(facts(sc, max_events=1)["events"], dict)


def test_file_version_is_zero_padded_like_exsetup():
    assert facts(fleet({"name": "EX01", "build": "15.2.1544.4"}))["exsetup_version"] == "15.02.1544.004"
    plain = fleet({"name": "EX01", "build": "15.2.1544.4", "output_style": {"versions": "plain"}})
    assert facts(plain)["exsetup_version"] == "15.2.1544.4"


def test_apostrophes_are_escaped_like_convertto_json():
    sc = fleet({"name": "EX01", "build": "15.2.1544.36"})
    text = stdout(run(sc, encode(server_script())))
    assert "xml\\u0027s leaf certificate" in text and "'" not in text


@pytest.mark.parametrize(
    "style, pattern",
    [
        ("ms_offset", r'"now":"\\/Date\(\d+\+0100\)\\/"'),
        ("iso", r'"now":"2026-11-26T12:30:00\.0000000Z"'),
        ("getdate", r'"now":\{"value":"\\/Date\(\d+\)\\/","DisplayHint":2,"DateTime":"Thursday, November 26, 2026 12:30:00 PM"\}'),
    ],
)
def test_other_date_shapes_the_parser_must_accept(style, pattern):
    sc = fleet({"name": "EX01", "build": "15.2.2562.53", "output_style": {"dates": style}})
    assert re.search(pattern, stdout(run(sc, encode(server_script()))))


def test_service_enums_as_integers():
    sc = fleet({"name": "EX01", "build": "15.2.2562.53", "service": {"status": "Stopped", "start_type": "Manual"}, "output_style": {"service_enums": "integers"}})
    assert facts(sc)["service"] == {"status": 1, "start_type": 3}


def test_endpoints_are_reported_only_when_asked():
    sc = fleet({"name": "EX01", "build": "15.2.2562.53"},
               {"name": "EX02", "build": "15.2.2562.53", "winhttp_proxy": {"proxy": "proxy.contoso.com:8080", "answers": 407}})
    assert "endpoints" not in facts(sc)
    assert [(e["name"], e["status"], e["error"]) for e in facts(sc, endpoint=1)["endpoints"]] == [
        ("GetExchangeMitigations", 200, None), ("GetExchangeConfig", 200, None)]
    for blocked in facts(sc, 1, endpoint=1)["endpoints"]:
        assert (blocked["status"], blocked["web_status"]) == (407, "ProtocolError")
        assert "(407) Proxy Authentication Required" in blocked["error"]


# ---------------------------------------------------------------- EEMS history by build class


def failures(doc) -> set[str]:
    return {e["message"] for e in as_list(doc["events"]) if e["id"] == 1008}


def test_current_se_succeeds_every_hour():
    doc = facts(fleet({"name": "EX01", "build": "15.2.2562.53", "success_events": True}))
    events = as_list(doc["events"])
    assert len(events) == 24 and {e["id"] for e in events} == {1006}
    assert "Fetching mitigations from https://officeclient.microsoft.com/getexchangemitigations" in log_text(doc)
    assert "LogLevel=Warning" not in log_text(doc) and "LogLevel=Error" not in log_text(doc)
    times = [ms(e["time"]) // 1000 for e in events]
    assert times == sorted(times, reverse=True)
    assert all(round((a - b) / 3600) == 1 and abs(a - b - 3600) < 2 for a, b in zip(times, times[1:]))


def test_build_failing_2026_cutoff_logs_unknown_issuer():
    doc = facts(fleet({"name": "EX01", "build": "15.2.1544.36"}))
    (message,) = failures(doc)
    assert message.endswith("leaf certificate is from unknown issuer or has EKU mismatch")
    assert "FetchMitigation,S:LogLevel=Error;S:Message=Exception encountered while fetching mitigations : This XML is not deemed safe" in log_text(doc)


@pytest.mark.parametrize("build", ["15.2.1118.25", "15.1.2375.37", "15.2.986.41"])
def test_build_failing_2023_cutoff_logs_untrusted_endpoint(build):
    doc = facts(fleet({"name": "EX01", "build": build}))
    assert failures(doc) == {"An unexpected exception occurred.\r\nDiagnostic information: Exception encountered while fetching mitigations."}
    assert "FetchMitigation,S:LogLevel=Warning;S:Message=Connection attempted against untrusted endpoint" in log_text(doc)


@pytest.mark.parametrize(
    "build, clock, ok",
    [
        ("15.2.1118.25", "2025-01-23T12:00:00Z", True),  # before the January 2025 certificate retirement
        ("15.2.1118.26", "2026-03-01T12:00:00Z", True),  # Mar23SU passes 2023
        ("15.2.1544.36", "2026-06-30T12:00:00Z", True),  # 2026 cutoff not yet effective
        ("15.2.1544.41", "2026-11-26T12:00:00Z", True),  # Jun26SU passes 2026
        ("15.1.2507.23", "2026-11-26T12:00:00Z", False),
        ("15.2.2562.41", "2026-11-26T12:00:00Z", False),  # SE May26HU is before the cutoff
    ],
)
def test_cutoffs_apply_from_their_effective_dates(build, clock, ok):
    doc = facts(fleet({"name": "EX01", "build": build}, clock=clock))
    assert bool(failures(doc)) is not ok


@pytest.mark.parametrize(
    "failure, event_text, log_line",
    [
        ("tls_validation", "Could not establish trust relationship for the SSL/TLS secure channel", "S:LogLevel=Warning;S:Message=TLS certificate or its chain validation failed"),
        ("signature_invalid", "signing cert is invalid or not from microsoft", "signing cert is invalid or not from microsoft"),
    ],
)
def test_forced_failures_use_the_field_texts(failure, event_text, log_line):
    doc = facts(fleet({"name": "EX01", "build": "15.2.2562.53", "eems_failure": failure, "internet_web_proxy": "http://proxy.contoso.com:8080/"}))
    (message,) = failures(doc)
    assert event_text in message and log_line in log_text(doc)
    assert "S:Message=Using Proxy http://proxy.contoso.com:8080/ To Fetch Configurations" in log_text(doc)


def test_eems_failure_none_overrides_the_build():
    assert not failures(facts(fleet({"name": "EX01", "build": "15.2.1118.25", "eems_failure": "none"})))


HASHTABLE_QUERY = "$r.events=@(Get-WinEvent -FilterHashtable @{LogName='Application';ProviderName=$n} -MaxEvents 5)"


@pytest.mark.parametrize("server", [{"build": "15.2.1748.39", "role": "Edge"}, {"build": "15.1.2308.27"}, {"build": "15.2.922.27"}, {"build": "15.0.1497.48"}])
def test_no_eems_means_the_errors_windows_gives(server):
    """Edge and pre-EEMS builds: no service key, Get-Service "not found", no log folder, and no EEMS event: asked
    with -LogName and -FilterXPath, no provider is looked up, so it is simply "no events"."""
    doc = facts(fleet({"name": "EX01", **server}))
    assert doc["service"] is None and doc["service_key"] is None and doc["logs"] == [] and doc["events"] == []
    assert doc["log_folder"] is False and doc["edge"] is (server.get("role") == "Edge")
    assert [(e["part"], e["id"].split(",")[0]) for e in doc["errors"]] == [
        ("service_key", "PathNotFound"), ("service", "NoServiceFoundForGivenName"), ("events", "NoMatchingEventsFound")]


def run_body(scenario, body: str) -> dict:
    out = run(scenario, encode(server_script().replace(BODY, body)))
    assert out.exit_code == 0, out.stderr
    return json.loads(stdout(out))


def test_a_hashtable_query_gets_two_errors_where_the_provider_is_missing():
    """R10: -FilterHashtable looks the provider up, then drops the log from its query (GetEventCommand.cs
    BuildStructuredQuery; PowerShell/PowerShell#15713 shows both errors together)."""
    doc = run_body(fleet({"name": "EX01", "build": "15.2.1748.39", "role": "Edge"}), BODY.replace(EVENT_QUERY, HASHTABLE_QUERY))
    assert [(e["id"].split(",")[0], e["category"]) for e in doc["errors"] if e["part"] == "events"] == [
        ("NoMatchingProvidersFound", "ObjectNotFound"), ("LogsAndProvidersDontOverlap", "InvalidArgument")]


@pytest.mark.parametrize("query, expected", [
    (EVENT_QUERY, [("LogInfoUnavailable", "System.Exception", "System.UnauthorizedAccessException"),
                   ("NoMatchingLogsFound", "System.Exception", "")]),
    (HASHTABLE_QUERY, [("NoMatchingEventsFound", "System.Exception", "")]),
])
def test_a_denied_application_log_answers_as_the_query_asks(query, expected):
    """R2: -FilterHashtable runs with TolerateQueryErrors, so a denied channel is "no events". One log asked with
    -FilterXPath is first found by name, opening its configuration: the refusal is LogInfoUnavailable around the
    UnauthorizedAccessException, then NoMatchingLogsFound, nothing thrown (GetEventCommand.cs ProcessHashQuery /
    ProcessGetLog, FindLogNamesMatchingWildcards; PowerShell/PowerShell#10637, dsccommunity/xWinEventLog#25)."""
    sc = fleet({"name": "EX01", "build": "15.2.2562.53", "account": "least_privilege", "unreadable": ["events"]})
    doc = run_body(sc, BODY.replace(EVENT_QUERY, query))
    assert [(e["id"].split(",")[0], e["type"], e["inner"]) for e in doc["errors"] if e["part"] == "events"] == expected


def test_a_script_without_an_event_query_gets_no_events():
    doc = run_body(fleet({"name": "EX01", "build": "15.2.2562.53", "success_events": True}), BODY.replace(EVENT_QUERY, ""))
    assert doc["events"] == [] and not [e for e in doc["errors"] if e["part"] == "events"]


def test_a_script_that_does_not_read_the_component_states_gets_no_error_of_them():
    """A script without the ServerWideOffline read (an endpoint installed before it) meets no missing key: the
    simulator wrote a component_state PathNotFound record into every script's errors."""
    doc = run_body(fleet({"name": "EX01", "build": "15.2.2562.53", "maintenance": "absent"}), BODY)
    assert "component_states" not in doc and not [e for e in doc["errors"] if e["part"] == "component_state"]


def test_success_events_are_off_by_default():
    """Learn: 1005/1006 are logged "for successful actions such as when a mitigation is applied", not hourly."""
    doc = facts(fleet({"name": "EX01", "build": "15.2.2562.53"}))
    assert doc["events"] == [] and "Fetching mitigations" in log_text(doc)
    assert [e["id"].split(",")[0] for e in doc["errors"]] == ["NoMatchingEventsFound"]


@pytest.mark.parametrize("locale, text", [
    ("de-DE", "Es wurden keine Ereignisse gefunden"), ("fr-FR", "Aucun événement"), ("ja-JP", "指定された選択条件"),
])
def test_no_events_is_localized_but_its_id_is_not(locale, text):
    doc = facts(fleet({"name": "EX01", "build": "15.2.2562.53", "locale": locale}))
    (error,) = doc["errors"]
    assert error["id"] == "NoMatchingEventsFound,Microsoft.PowerShell.Commands.GetWinEventCommand"
    assert error["message"].startswith(text)


def test_least_privilege_account_cannot_query_the_service_nor_read_what_it_is_denied():
    sc = fleet({"name": "EX01", "build": "15.2.2562.53", "account": "least_privilege", "unreadable": ["events", "log"]})
    doc = facts(sc)
    assert doc["service"] is None and doc["service_key"] == {"start": 2}
    assert [(e["part"], e["type"], e["inner"]) for e in doc["errors"]] == [
        ("service", "Microsoft.PowerShell.Commands.ServiceCommandException", ""),
        ("events", "System.Exception", "System.UnauthorizedAccessException"), ("events", "System.Exception", ""),
        ("log", "System.UnauthorizedAccessException", "")]
    assert doc["logs"] == [] and doc["log_folder"] is True


def test_hourly_utf16_culture_time_log_with_a_csv_header_first():
    sc = fleet({"name": "EX01", "build": "15.2.2562.53", "locale": "de-DE", "log_encoding": "utf-16", "log_time": "culture"})
    doc = facts(sc)
    newest = doc["logs"][0]
    assert newest["name"] == "MitigationService_2026112612-1.LOG"
    lines = newest["tail"].splitlines()  # Get-Content decoded it by its byte order mark
    assert lines[0] == "DateTime,EventName,CustomData" and lines[1] == "#Software: Microsoft Exchange Server"
    assert re.match(r"26\.11\.2026 12:\d\d:\d\d,FetchMitigation,", lines[6])
    assert 24 <= len(doc["logs"]) <= 26


def test_non_fetch_errors_and_an_unreadable_event():
    sc = fleet({"name": "EX01", "build": "15.2.2562.53", "non_fetch_errors": True, "unreadable_event": True,
                "success_events": True})
    doc = facts(sc)
    assert sum(1 for e in doc["events"] if e["id"] == 1008) == 4
    assert doc["events"][0]["message"] == "Cannot retrieve event message text."
    (error,) = doc["errors"]
    assert error["part"] == "events" and error["id"].endswith(",Microsoft.PowerShell.Commands.GetWinEventCommand")


def test_log_other_errors_writes_a_problem_line_per_check_that_is_not_about_fetching():
    doc = facts(fleet({"name": "EX01", "build": "15.2.2562.53", "log_other_errors": True}))
    lines = log_text(doc).splitlines()
    checks = sum("S:Message=Fetching mitigations from" in line for line in lines)
    problems = [line for line in lines if "S:LogLevel=Warning" in line or "S:LogLevel=Error" in line]
    assert checks >= 24 and len(problems) == checks
    assert {"Warning", "Error"} == {line.split("S:LogLevel=")[1].split(";")[0] for line in problems}
    assert not any("fetching mitigations" in line.lower() for line in problems)


def test_a_file_held_open_shows_the_write_time_of_its_first_line():
    """log_last_write: at_open (Microsoft: the last write time may not move until the writer closes the file)."""
    at_write = facts(fleet({"name": "EX01", "build": "15.2.2562.53", "log_rotation": "daily"}))
    at_open = facts(fleet({"name": "EX01", "build": "15.2.2562.53", "log_rotation": "daily", "log_last_write": "at_open"}))
    assert at_write["logs"][0]["tail"] == at_open["logs"][0]["tail"]
    first = re.search(r"^(\S+Z),", at_open["logs"][0]["tail"].split("#Fields")[1].split("\n", 1)[1], re.MULTILINE).group(1)
    assert ms(at_open["logs"][0]["last_write"]) == int(datetime.fromisoformat(first).timestamp() * 1000)
    assert ms(at_write["logs"][0]["last_write"]) > ms(at_open["logs"][0]["last_write"]) + 11 * 3600 * 1000
    assert at_open["logs"][1]["last_write"] == at_write["logs"][1]["last_write"]  # closed files: their last line


def test_culture_times_in_a_time_zone():
    doc = facts(fleet({"name": "EX01", "build": "15.2.2562.53", "log_time": "culture", "log_time_zone": "+01:00"}))
    assert doc["utc_offset_minutes"] == 60
    assert re.search(r"^11/26/2026 1:\d\d:\d\d PM,FetchMitigation,", doc["logs"][0]["tail"], re.MULTILINE)
    with pytest.raises(ScenarioError, match="log_time_zone: expected a UTC offset"):
        fleet({"name": "EX01", "build": "15.2.2562.53", "log_time_zone": "+15:00"})


def test_stopped_service_has_no_checks_after_it_stopped():
    stopped = NOW - timedelta(hours=6)
    sc = fleet({"name": "EX01", "build": "15.2.2562.53", "service": {"status": "Stopped", "start_type": "Automatic"}, "service_stopped_since": "-6h", "success_events": True})
    doc = facts(sc)
    assert doc["service"] == {"status": "Stopped", "start_type": "Automatic"}
    events = as_list(doc["events"])
    assert 17 <= len(events) <= 18
    assert all(ms(e["time"]) <= stopped.timestamp() * 1000 for e in events)
    assert ms(doc["logs"][0]["last_write"]) <= stopped.timestamp() * 1000


def test_first_check_is_ten_minutes_after_the_service_started():
    started = NOW - timedelta(hours=2, minutes=30)
    doc = facts(fleet({"name": "EX01", "build": "15.2.2562.53", "installed_since": started.isoformat(), "success_events": True}))
    times = sorted(ms(e["time"]) / 1000 for e in as_list(doc["events"]))
    assert len(times) == 3
    assert 0 < times[0] - (started + timedelta(minutes=10)).timestamp() < 3
    assert "S:Message=Started MSExchangeMitigation" in log_text(doc)


def test_default_check_minute_differs_per_server():
    sc = fleet(*({"name": f"EX{i:02d}", "build": "15.2.2562.53", "success_events": True} for i in range(6)))
    minutes = {datetime.fromtimestamp(ms(as_list(facts(sc, i)["events"])[0]["time"]) / 1000, timezone.utc).minute for i in range(6)}
    assert len(minutes) > 1


# ---------------------------------------------------------------- bounds


def test_lookback_bounds_the_events():
    doc = facts(fleet({"name": "EX01", "build": "15.2.2562.53", "success_events": True}), lookback=5)
    events = as_list(doc["events"])
    assert len(events) == 5
    assert all(ms(e["time"]) >= (NOW - timedelta(hours=5)).timestamp() * 1000 for e in events)


def test_max_events_keeps_the_newest():
    sc = fleet({"name": "EX01", "build": "15.2.2562.53", "success_events": True})
    all_events, two = as_list(facts(sc)["events"]), as_list(facts(sc, max_events=2)["events"])
    assert two == all_events[:2]


def test_log_tail_is_the_newest_whole_lines_of_the_newest_files():
    """Get-Content -Tail: whole lines from the end; the script keeps those that fit LogTailBytes characters."""
    sc = fleet({"name": "EX01", "build": "15.2.2562.53", "log_rotation": "daily"})
    full, tail = facts(sc)["logs"][0], facts(sc, tail=300)["logs"]
    assert full["name"] == "MitigationService_20261126-1.LOG" and "length" not in full
    assert full["tail"].startswith("DateTime,EventName,CustomData\r\n#Software: Microsoft Exchange Server\r\n")
    lines = full["tail"].split("\r\n")
    kept = tail[0]["tail"].split("\r\n")
    assert kept == lines[-len(kept):] and sum(len(line) + 2 for line in kept) <= 300
    assert [log["tail"] for log in tail[1:]] == [""]  # the next file: its newest line did not fit, so listed alone
    assert sum(len(line) + 2 for line in lines[-len(kept) - 1:]) > 300
    w3c = facts(fleet({"name": "EX01", "build": "15.2.2562.53", "log_header": "w3c"}))["logs"][0]
    assert w3c["tail"].startswith("#Software: Microsoft Exchange Server\r\n")


def test_before_the_first_check_of_the_day_the_newest_file_is_yesterdays():
    server = {"name": "EX01", "build": "15.2.2562.53", "installed_since": "2026-11-20T00:30:00Z", "log_rotation": "daily"}
    log = facts(fleet(server, clock="2026-11-26T00:05:00Z"))["logs"][0]
    assert log["name"] == "MitigationService_20261125-1.LOG"
    assert log["tail"].rstrip().splitlines()[-1].startswith("2026-11-25T23:40:0")


def test_no_log_file_before_the_service_ever_started():
    server = {"name": "EX01", "build": "15.2.2562.53", "installed_since": "2026-11-26T13:00:00Z"}
    doc = facts(fleet(server))
    assert doc["logs"] == [] and as_list(doc["events"]) == []


@pytest.mark.parametrize("key", ["log_file", "events"])
def test_either_source_can_be_missing(key):
    doc = facts(fleet({"name": "EX01", "build": "15.2.2562.53", "success_events": True, key: "absent"}))
    if key == "log_file":
        assert doc["logs"] == [] and as_list(doc["events"])
    else:
        assert doc["events"] == [] and doc["logs"]


# ---------------------------------------------------------------- output faults


def test_garbage_output_is_not_json():
    out = run(fleet({"name": "EX01", "build": "15.2.2562.53", "output_faults": {"garbage_output": True}}), encode(server_script()))
    assert out.exit_code == 0
    with pytest.raises(json.JSONDecodeError):
        json.loads(stdout(out))


def test_truncated_output_stops_mid_json():
    out = run(fleet({"name": "EX01", "build": "15.2.2562.53", "output_faults": {"truncated_output": True}}), encode(server_script()))
    text = stdout(out)
    assert text.startswith('{"schema":1') and not text.endswith("\r\n")
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_oversized_output_is_valid_json_of_at_least_the_given_size():
    out = run(fleet({"name": "EX01", "build": "15.2.2562.53", "output_faults": {"oversized_output": 3_000_000}}), encode(server_script()))
    raw = b"".join(out.stdout_chunks)
    assert len(raw) >= 3_000_000 and len(out.stdout_chunks) > 1
    assert json.loads(raw)["computer"] == "EX01"


def test_exit_code_and_runtime_faults():
    sc = fleet({"name": "EX01", "build": "15.2.2562.53", "output_faults": {"exit_code": 3, "script_runtime": 7.5}}, {"name": "EX02", "build": "15.2.2562.53"})
    out = run(sc, encode(server_script()))
    assert (out.exit_code, out.runtime_seconds) == (3, 7.5)
    assert run(sc, encode(server_script()), 1).runtime_seconds == 0.3
    assert run(sc, encode(ORG_MARKER + "\r\n" + BODY), 1).runtime_seconds == 2.0


# ---------------------------------------------------------------- organization script


def org_facts(scenario, index: int = 0) -> dict:
    out = run(scenario, encode(ORG_MARKER + "\r\n" + BODY), index)
    assert out.exit_code == 0, out.stderr
    return json.loads(stdout(out))


def test_organization_lists_every_server_with_real_empty_shapes():
    sc = fleet(
        {"name": "EX01", "build": "15.2.2562.53", "mitigations": {"applied": ["PING1"], "blocked": ["M2.1.0"]}},
        {"name": "EX02", "build": "15.2.1544.36", "mitigations": {"applied": ["PING1", "M2.1.0"]}},
        {"name": "EDGE01", "build": "15.2.1748.39", "role": "Edge"},
        organization={"mitigations_enabled": False},
    )
    doc = org_facts(sc)
    assert doc["organization"] == {"mitigations_enabled": False} and doc["error"] is None
    ex01, ex02, edge = doc["servers"]
    assert ex01["mitigations_applied"] == ["PING1"] and ex01["mitigations_blocked"] == ["M2.1.0"]
    assert ex02["mitigations_applied"] == ["PING1", "M2.1.0"] and ex02["mitigations_blocked"] == [None]
    assert ex01["internet_web_proxy"] == ""
    assert ex02["admin_display_version"] == "Version 15.2 (Build 1544.36)" and ex02["fqdn"] == "ex02.contoso.com"
    assert ms(ex02["mitigations_applied_time"]) < datetime(2026, 7, 1, tzinfo=timezone.utc).timestamp() * 1000
    assert ms(ex01["mitigations_applied_time"]) > (NOW - timedelta(hours=1)).timestamp() * 1000
    assert edge["roles"] == "Edge" and "mitigations_applied_time" not in edge


def test_a_single_server_organization_is_still_an_array():
    doc = org_facts(fleet({"name": "EX01", "build": "15.2.2562.53"}))
    assert [server["name"] for server in doc["servers"]] == ["EX01"]


def test_double_hop_fails_reaching_active_directory():
    doc = org_facts(fleet({"name": "EX01", "build": "15.2.2562.53"}, organization={"double_hop": True, "domain": "fabrikam.local"}))
    assert doc["error"]["stage"] == "organization"
    assert "Active Directory operation failed on DC01.fabrikam.local" in doc["error"]["message"]
    assert doc["organization"] is None


# ---------------------------------------------------------------- scenario files


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(text, encoding="utf-8")
    return path


GOOD = """
clock: 2026-11-26T12:30:00Z
credentials:
  - {username: 'EXCH\\svc_monitor', password: 'hunter2-secret'}
servers:
  - {name: EX01, address: 127.0.0.10, build: 15.2.2562.53}
"""


def test_a_scenario_file_loads_with_defaults(tmp_path):
    sc = load_scenario(write(tmp_path, GOOD))
    (host,) = sc.hosts
    assert (host.address, host.port, host.scheme, host.max_shells_per_user) == ("127.0.0.10", 5985, "http", 30)
    assert sc.credentials == {"EXCH\\svc_monitor": "hunter2-secret"}
    assert sc.clock.now() == NOW and sc.organization.server == "EX01" and sc.tls is None
    assert "hunter2" not in repr(sc)


@pytest.mark.parametrize(
    "edit, key_path, words",
    [
        (("build: 15.2.2562.53", "build: 15.2.x"), "servers[0].build", "four-part"),
        (("address: 127.0.0.10", "address: 10.0.0.5"), "servers[0].address", "not a loopback"),
        (("name: EX01,", "name: EX01, colour: red,"), "servers[0].colour", "unknown key"),
        (("build: 15.2.2562.53}", "build: 15.2.2562.53, role: Hub}"), "servers[0].role", "Mailbox, Edge"),
        (("build: 15.2.2562.53}", "build: 15.2.2562.53, port: 70000}"), "servers[0].port", "between 1 and 65535"),
        (("build: 15.2.2562.53}", "build: 15.2.2562.53, service_stopped_since: -2h}"), "servers[0].service_stopped_since", "not Running"),
        (("build: 15.2.2562.53}", "build: 15.2.2562.53, installed_since: yesterday}"), "servers[0].installed_since", "ISO time"),
        (("build: 15.2.2562.53}", "build: 15.2.2562.53, faults: {latency: -1}}"), "servers[0].faults.latency", ">= 0"),
        (("build: 15.2.2562.53}", "build: 15.2.2562.53, eems_failure: dns}"), "servers[0].eems_failure", "tls_validation"),
        (("build: 15.2.2562.53}", "build: 15.2.2562.53, mitigations: {applied: [M1], blocked: [M1]}}"), "servers[0].mitigations", "both applied and blocked"),
        (("build: 15.2.2562.53}", "build: 15.2.1748.39, role: Edge, service: {status: Running}}"), "servers[0].service", "no EEMS service"),
        (("build: 15.2.2562.53}", "build: 15.2.2562.53, clock_offset: 367d}"), "servers[0].clock_offset", "at most a year"),
        # beyond timedelta's range (OverflowError), and beyond a float's (infinity)
        (("build: 15.2.2562.53}", "build: 15.2.2562.53, clock_offset: 99999999999d}"), "servers[0].clock_offset", "at most a year"),
        (("build: 15.2.2562.53}", "build: 15.2.2562.53, clock_offset: -" + "9" * 400 + "s}"), "servers[0].clock_offset", "at most a year"),
        (("clock: 2026-11-26T12:30:00Z", "clock: soon"), "clock", "ISO time"),
        (("password: 'hunter2-secret'", "password: 12345"), "credentials[0].password", "non-empty string"),
    ],
)
def test_bad_scenarios_name_the_key_path(tmp_path, edit, key_path, words):
    path = write(tmp_path, GOOD.replace(*edit))
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert caught.value.key_path == key_path
    assert words in str(caught.value) and str(path) in str(caught.value)
    assert "hunter2" not in str(caught.value) and "12345" not in str(caught.value)


def test_auth_and_channel_binding_hardening_per_host(tmp_path):
    text = GOOD.replace("servers:", "defaults: {auth: kerberos}\nservers:") + (
        "  - {name: EX02, address: 127.0.0.11, build: 15.2.2562.53, auth: [ntlm, kerberos], cbt_hardening: strict}\n")
    ex01, ex02 = load_scenario(write(tmp_path, text)).hosts
    assert (ex01.auth, ex01.cbt_hardening, ex01.fqdn) == (("kerberos",), "relaxed", "ex01.contoso.com")
    assert (ex02.auth, ex02.cbt_hardening) == (("ntlm", "kerberos"), "strict")
    for bad, key_path in (("auth: [ntlm, smb]", "servers[0].auth"), ("auth: []", "servers[0].auth"),
                          ("cbt_hardening: none", "servers[0].cbt_hardening")):
        with pytest.raises(ScenarioError) as caught:
            load_scenario(write(tmp_path, GOOD.replace("build: 15.2.2562.53}", f"build: 15.2.2562.53, {bad}}}")))
        assert caught.value.key_path == key_path


def test_duplicate_names_and_endpoints_are_rejected(tmp_path):
    twice = GOOD + "  - {name: ex01, address: 127.0.0.11, build: 15.2.2562.53}\n"
    with pytest.raises(ScenarioError, match=r"servers\[1\]\.name: 'ex01' is already used by servers\[0\]"):
        load_scenario(write(tmp_path, twice))
    same_port = GOOD + "  - {name: EX02, address: 127.0.0.10, build: 15.2.2562.53}\n"
    with pytest.raises(ScenarioError, match=r"servers\[1\]\.address: 127\.0\.0\.10 port 5985 is already used"):
        load_scenario(write(tmp_path, same_port))


def test_missing_credentials_and_broken_yaml_and_missing_file(tmp_path):
    with pytest.raises(ScenarioError, match="credentials: at least one credential is required"):
        load_scenario(write(tmp_path, "servers: []\n"))
    with pytest.raises(ScenarioError, match=r"not valid YAML at line 4, column 3"):
        load_scenario(write(tmp_path, "credentials:\n  - {username: a, password: b}\nservers: [\n  - {name: [}\n"))
    with pytest.raises(ScenarioError, match="cannot read the scenario file"):
        load_scenario(tmp_path / "nope.yaml")
    with pytest.raises(ScenarioError, match="no servers"):
        load_scenario(write(tmp_path, "credentials:\n  - {username: a, password: b}\n"))


def test_unknown_organization_server_is_rejected(tmp_path):
    with pytest.raises(ScenarioError, match=r"organization\.server: 'EX99' is not one of"):
        load_scenario(write(tmp_path, GOOD + "organization: {server: EX99}\n"))


def test_generated_fleet_skips_0_and_255_octets(tmp_path):
    text = GOOD + "generate:\n  count: 300\n  address_base: 127.1.0.250\n  template: {build: 15.2.1544.36, port: 15985}\n"
    sc = load_scenario(write(tmp_path, text))
    generated = sc.hosts[1:]
    assert len(generated) == 300 and generated[0].name == "EXBENCH0001" and generated[-1].name == "EXBENCH0300"
    addresses = [h.address for h in generated]
    assert addresses[:7] == ["127.1.0.250", "127.1.0.251", "127.1.0.252", "127.1.0.253", "127.1.0.254", "127.1.1.1", "127.1.1.2"]
    assert len(set(addresses)) == 300 and not any(a.endswith((".0", ".255")) for a in addresses)
    assert {h.port for h in generated} == {15985}
    assert facts(sc, 1)["exsetup_version"] == "15.02.1544.036"


def test_generated_fleet_must_stay_in_loopback(tmp_path):
    text = GOOD + "generate: {count: 10, address_base: 127.255.255.250}\n"
    with pytest.raises(ScenarioError, match=r"generate\.count: .*past 127\.255\.255\.254"):
        load_scenario(write(tmp_path, text))


# ---------------------------------------------------------------- the demo fleet


def test_demo_fleet_has_the_documented_states():
    sc = load_scenario(SIMULATOR / "scenarios" / "demo.yaml")
    sc.clock.pinned = NOW  # judge the real-time demo at a fixed moment
    by_name = {h.name: (h, s) for h, s in zip(sc.hosts, sc.servers)}
    assert len(by_name) == 15 and sc.clock.pinned is NOW
    assert list(sc.credentials) == ["EXCH\\svc_monitor"]
    assert sc.organization.server == "EX-SE01" and sc.organization.mitigations_enabled
    assert len({(h.address, h.port) for h in sc.hosts}) == 15
    assert all(h.address.startswith(("127.0.0.", "127.0.1.")) and h.port == 15985 and h.scheme == "http" for h in sc.hosts)

    def doc(name):
        return facts(sc, sc.hosts.index(by_name[name][0]))

    assert doc("EX-SE01")["exsetup_version"] == "15.02.2562.053" and not failures(doc("EX-SE01"))
    assert doc("EX19-CU15ESU")["exsetup_version"] == "15.02.1748.049" and not failures(doc("EX19-CU15ESU"))
    assert "unknown issuer" in failures(doc("EX19-CU14")).pop()
    assert "unknown issuer" in failures(doc("EX16-CU23")).pop()
    assert "untrusted endpoint" in log_text(doc("EX19-CU12"))
    assert "untrusted endpoint" in log_text(doc("EX16-CU22"))
    assert doc("EDGE01")["edge"] is True and doc("EDGE01")["service"] is None
    assert doc("EX-SE02-STOPPED")["service"]["status"] == "Stopped"
    assert by_name["EX-SE03-BLOCKED"][1].blocked == ("M2.1.0",) and by_name["EX-SE03-BLOCKED"][1].applied == ("PING1",)
    assert "Could not establish trust relationship" in failures(doc("EX-SE04-PROXY")).pop()
    assert by_name["EX-SE05-NOWINRM"][0].faults.refuse_connections
    german = doc("EX-SE06-DE")
    assert german["service"] is None and german["culture"]["name"] == "de-DE" and "FetchMitigation" in german["logs"][0]["tail"]
    # events: LogInfoUnavailable, then NoMatchingLogsFound
    assert [e["part"] for e in german["errors"]] == ["service", "events", "events"]
    assert doc("EX-SE07-JA")["culture"]["name"] == "ja-JP"
    assert {e["status"] for e in facts(sc, sc.hosts.index(by_name["EX-SE08-FR"][0]), endpoint=1)["endpoints"]} == {407}
    assert doc("EX16-CU21")["log_folder"] is False


def test_eems_build_table_matches_the_reference_cutoffs():
    assert eems.passes_cutoff((15, 2, 1258, 12), "2023-03") and not eems.passes_cutoff((15, 2, 1118, 25), "2023-03")
    assert eems.passes_cutoff((15, 2, 2562, 43), "2026-06") and not eems.passes_cutoff((15, 2, 1258, 32), "2026-06")
    assert not eems.has_eems((15, 1, 2308, 27)) and eems.has_eems((15, 1, 2375, 7)) and not eems.has_eems((15, 0, 1497, 48))


AUTUMN_2026 = datetime(2026, 10, 25, 1, tzinfo=timezone.utc)  # Europe/Berlin: 03:00 CEST -> 02:00 CET


def test_a_time_zone_with_daylight_saving_writes_local_times_and_sends_its_changes():
    """`time_zone`: culture times in the zone's local time of each line's instant, `utc_offset_minutes` now, and
    `utc_offsets` (the offset at the lookback's start, then each change) from a script that asks for them."""
    sc = fleet({"name": "EX01", "build": "15.2.2562.53", "log_time": "culture", "time_zone": "Europe/Berlin",
                "log_rotation": "daily"}, clock=AUTUMN_2026 + timedelta(minutes=30))
    out = run(sc, encode(server_script() + "$r.utc_offsets=@()\r\n"))
    doc = facts_from(out)
    assert doc["utc_offset_minutes"] == 60
    (start, change) = doc["utc_offsets"]
    assert start["minutes"] == 120 and ms(start["since"]) == int((AUTUMN_2026 - timedelta(hours=23, minutes=30)).timestamp() * 1000)
    assert (ms(change["since"]), change["minutes"]) == (int(AUTUMN_2026.timestamp() * 1000), 60)
    times = re.findall(r"^10/25/2026 (\d+):(\d\d):\d\d AM,FetchMitigation", doc["logs"][0]["tail"], re.MULTILINE)
    hours = [int(h) for h, _ in times]
    assert hours.count(2) >= 2 and hours[-1] == 2  # 02:xx local twice: before and after the clocks went back
    assert "utc_offsets" not in facts(sc)  # a script before it sent them


def test_time_zone_and_a_fixed_offset_are_not_both_given():
    with pytest.raises(ScenarioError, match="not both"):
        fleet({"name": "EX01", "build": "15.2.2562.53", "time_zone": "Europe/Berlin", "log_time_zone": "+01:00"})
    with pytest.raises(ScenarioError, match="time_zone: unknown time zone"):
        fleet({"name": "EX01", "build": "15.2.2562.53", "time_zone": "Mars/Olympus_Mons"})


@pytest.mark.parametrize("name", sorted(timezones.RULES))
def test_the_built_in_rules_agree_with_zoneinfo(name):
    """Where no tz database is installed the simulator's own rules stand in; they match it hour by hour from 2015 to
    2030 (the changes are on the hour in UTC)."""
    try:
        zone = zoneinfo.ZoneInfo(name)
    except zoneinfo.ZoneInfoNotFoundError:
        pytest.skip("no zoneinfo data here")
    t = datetime(2015, 1, 1, tzinfo=timezone.utc)
    while t.year < 2031:
        assert timezones.RULES[name](t) == t.astimezone(zone).utcoffset(), t
        t += timedelta(hours=1)
