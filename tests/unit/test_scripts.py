"""The PowerShell the exporter sends: it fits Windows' command-line limit, runs without cmd.exe, decides on
invariant error ids rather than localized texts, and no value can break out of its quoting."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from exporter.config import ConfigError, load_config_text
from exporter.scripts import (
    CREATE_PROCESS_LIMIT,
    POWERSHELL,
    SERVER_MARKER,
    ServerScriptParameters,
    organization_script,
    powershell_command,
    server_script,
)

from ..conftest import PASSWORD_ENV

CMD_EXE_LIMIT = 8191


def params(proxy: str = "") -> ServerScriptParameters:
    return ServerScriptParameters(lookback_hours=24, max_events=200, log_tail_bytes=65536, check_endpoint=True,
                                  endpoint_timeout_seconds=10, proxy=proxy)


def test_marker_and_parameter_line():
    lines = server_script(params("http://proxy.contoso.com:8080/")).splitlines()
    assert lines[0] == SERVER_MARKER
    assert lines[1] == ("$P=@{LookbackHours=24;MaxEvents=200;LogTailBytes=65536;CheckEndpoint=1;"
                        "EndpointTimeoutSec=10;Proxy='http://proxy.contoso.com:8080/';ProxyDefaultCredentials=0}")


def test_command_is_utf16_base64_of_the_script():
    script = organization_script()
    command = powershell_command(script)
    assert command.arguments[:3] == ("-NoProfile", "-NonInteractive", "-EncodedCommand")
    assert base64.b64decode(command.arguments[-1]).decode("utf-16-le") == script


def test_powershell_runs_without_cmd_exe_from_its_absolute_path():
    """Without cmd.exe WinRS needs the program's full path; with it the server command would not fit."""
    command = powershell_command(server_script(params()))
    assert command.executable == POWERSHELL
    assert command.executable.startswith("C:\\") and command.executable.endswith("\\powershell.exe")
    assert command.line.startswith(f'"{POWERSHELL}" -NoProfile')


def test_worst_case_fits_createprocess_limit():
    longest = ServerScriptParameters(lookback_hours=8760, max_events=5000, log_tail_bytes=16 << 20,
                                     check_endpoint=True, endpoint_timeout_seconds=600,
                                     proxy="http://a-rather-long-proxy-name.corp.contoso.example.com:65535/")
    assert CREATE_PROCESS_LIMIT == 32767
    assert len(powershell_command(server_script(longest)).line) < CREATE_PROCESS_LIMIT


def test_a_script_over_the_limit_is_refused_here():
    import pytest

    with pytest.raises(ValueError, match="32766"):
        powershell_command("#" * 13000)


def test_server_script_ignores_no_events_by_its_invariant_id_not_its_english_text():
    """Get-WinEvent's "No events were found" is localized (GetEventResources.de/fr/ja.resx); the error id is not."""
    script = server_script(params())
    assert "No events were found" not in script
    assert "FullyQualifiedErrorId" in script


def test_server_script_does_not_hide_service_errors():
    """5.1's Get-Service turns access denied into "not found"; -EA SilentlyContinue would hide both."""
    script = server_script(params())
    assert "Get-Service MSExchangeMitigation -ErrorAction SilentlyContinue" not in script
    assert "HKLM:\\SYSTEM\\CurrentControlSet\\Services\\MSExchangeMitigation" in script


def test_server_script_keeps_good_events_when_one_cannot_be_read():
    """Under $ErrorActionPreference='Stop' one bad event would abort the whole Get-WinEvent read."""
    line = next(l for l in server_script(params()).splitlines() if "Get-WinEvent -LogName" in l)
    assert "-ErrorAction SilentlyContinue -ErrorVariable" in line


def test_server_script_reads_whole_lines_of_log_files_and_their_own_write_time():
    """Get-Content -Tail (no .NET calls, so Constrained Language Mode runs it); the write time from the file
    itself, not its directory entry; only *.log files (review R15)."""
    script = server_script(params())
    assert "last_write=$f.LastWriteTimeUtc" not in script
    assert "(Microsoft.PowerShell.Management\\Get-Item -LiteralPath $f.FullName).LastWriteTimeUtc" in script
    assert "Get-Content -LiteralPath $f.FullName -Tail" in script and "-Filter *.log" in script
    assert "[IO.File]" not in script


def test_server_script_checks_both_ocs_endpoints_with_revocation():
    script = server_script(params())
    assert "GetExchangeMitigations" in script and "GetExchangeConfig" in script
    assert "CheckCertificateRevocationList=$true" in script and "WinHttpSettings" in script


def test_a_hostile_proxy_value_never_reaches_the_script():
    for hostile in ("http://x';Remove-Item C:\\ -Recurse;'", "http://x\u2019;calc;\u2018", "http://a b/",
                    "http://user:secret@proxy:8080/", "javascript:alert(1)"):
        line = server_script(params(hostile)).splitlines()[1]
        assert ";Proxy='';" in line, hostile


# Proxy URLs the configuration (servers[].endpoint_proxy) and Active Directory (InternetWebProxy) may give.
PROXY_URLS_ACCEPTED = ("http://proxy.contoso.com:8080/", "http://proxy:8080", "https://10.0.0.1:3128", "http://proxy",
                       "http://[::1]:8080/", "http://[fd00::10]/", "http://proxy.contoso.com.:80")
PROXY_URLS_REFUSED = ("socks5://proxy:1080", "http://proxy:99999", "http://proxy:0", "http://user@proxy/",
                      "http://proxy/path", "http://proxy:8080?x=1", "http://[::1", "http://::1:8080/",
                      "http://a:b:c/", "http://[not-an-address]/", "http://-proxy/", "http://proxy..contoso/")


def test_the_script_keeps_every_proxy_url_the_configuration_accepts():
    """One rule for both: a proxy the configuration accepts must never be dropped silently on its way to the
    script (it was for an IPv6 proxy), and one it refuses must never reach the script from Active Directory."""
    module = f"modules: {{default: {{username: svc, password_env: {PASSWORD_ENV}}}}}\n"
    for url in (*PROXY_URLS_ACCEPTED, *PROXY_URLS_REFUSED):
        try:
            load_config_text(module + f"servers: [{{name: ex01, endpoint_proxy: '{url}'}}]\n", Path("."))
            configured = True
        except ConfigError:
            configured = False
        kept = f";Proxy='{url}';" in server_script(params(url)).splitlines()[1]
        assert (configured, kept) == (url in PROXY_URLS_ACCEPTED,) * 2, url


def test_script_text_is_ascii():
    for script in (server_script(params()), organization_script()):
        script.encode("ascii")


@pytest.mark.parametrize("script", ["collect_server.ps1", "collect_organization.ps1", "diagnose_server.ps1"])
def test_scripts_need_no_more_than_powershell_3(script):
    """Review R16: Windows Server 2012 R2 runs Exchange 2016 with its in-box PowerShell 4.0; the scripts use
    nothing of 5.0 (docs/design.md, "Which PowerShell")."""
    from exporter.scripts import _body

    text = _body(script)
    for construct in (r"::new\(", r"^\s*class\s", r"^\s*enum\s", r"^\s*using\s", r"\bConvertFrom-Json\b.*-AsHashtable",
                      r"\bGet-ComputerInfo\b", r"\bGet-TimeZone\b", r"\b-Depth\s+\d+\s+-AsArray\b"):
        assert not re.search(construct, text, re.MULTILINE | re.IGNORECASE), (script, construct)


def _escape_as_windows_powershell(script: str, text: str) -> str:
    """What the script's last step (`-split` on a non-ASCII class, `-match` on each piece, `\\uXXXX` for a match)
    makes of `text` under Windows PowerShell 5.1. `-split` and `-match` without the `c` prefix pass
    RegexOptions.IgnoreCase (PowerShell's parserutils.cs SplitOperatorImpl, MatchOperator), and .NET Framework's
    interpreter then lowers each input character with Char.ToLower(ch, culture) before testing it against the class
    (referencesource RegexInterpreter.Forwardcharnext): a letter whose lower case is ASCII is then no match."""
    line = next(line for line in script.splitlines() if "ConvertTo-Json" in line and "-join" in line)
    split_prefix, split_pattern = re.search(r"-([ci]?)split '([^']*)'", line).groups()
    match_prefix, match_pattern = re.search(r"-([ci]?)match '([^']*)'", line).groups()

    def matches(prefix: str, pattern: str, ch: str) -> bool:
        return re.fullmatch(pattern, ch.lower()[:1] if prefix != "c" else ch) is not None

    pieces, run = [], ""
    for ch in text:
        if matches(split_prefix, split_pattern, ch):
            pieces += [run, ch]
            run = ""
        else:
            run += ch
    pieces.append(run)
    return "".join(f"\\u{ord(p):04x}" if len(p) == 1 and matches(match_prefix, match_pattern, p) else p
                   for p in pieces)


@pytest.mark.parametrize("name", ["collect_server.ps1", "collect_organization.ps1", "diagnose_server.ps1"])
def test_every_non_ascii_character_is_escaped_whatever_its_case(name):
    """U+212A (Kelvin sign) lowers to ASCII 'k' and U+0130 to 'i': through case-insensitive `-split`/`-match` they
    escaped the escaping and reached stdout raw, where the OEM code page turned them into another character."""
    from exporter.scripts import _body

    text = "K 5\u212a \u0130stanbul \u00e9t\u00e9 \u65e5\u672c Information"
    escaped = _escape_as_windows_powershell(_body(name), text)
    escaped.encode("ascii")
    assert json.loads(f'"{escaped}"') == text


def test_the_diagnose_script_gathers_utc_offsets_with_the_collection_scripts_lines():
    """The field report reads log times as the poll does, from the same `utc_offsets`: the diagnose script
    computes them with the collection script's own lines, its try/catch and null fallback included."""
    from exporter.scripts import _body

    def block(name: str) -> list[str]:
        lines = _body(name).splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("try{function UtcOffset("))
        return lines[start : start + 3]

    collected = block("collect_server.ps1")
    assert collected[-1].endswith("catch{$r.utc_offsets=$null}")
    assert block("diagnose_server.ps1") == collected


def test_the_diagnose_script_reads_serverwideoffline_with_the_collection_scripts_expression():
    """The field report's `component_state_format` judges what the poll reads: the diagnose script reads the
    registry's ServerWideOffline values with the collection script's own expression (only what a failure does
    differs: the collection records it with Fail, the diagnose script beside the values)."""
    from exporter.scripts import _body

    def expression(name: str) -> str:
        line = next(line for line in _body(name).splitlines() if "ServerComponentStates\\ServerWideOffline" in line)
        return line[line.index("$r.component_states=@(") : line.index("}catch{")]

    collected = expression("collect_server.ps1")
    assert "requester=$v.Name" in collected
    assert expression("diagnose_server.ps1") == collected
