"""The PowerShell the exporter sends: it fits cmd.exe's limit and no value can break out of its quoting."""

from __future__ import annotations

import base64

from exporter.scripts import (
    CMD_LINE_LIMIT,
    SERVER_MARKER,
    ServerScriptParameters,
    command_line,
    organization_script,
    server_script,
)


def params(proxy: str = "") -> ServerScriptParameters:
    return ServerScriptParameters(lookback_hours=24, max_events=200, log_tail_bytes=65536, check_endpoint=True,
                                  endpoint_timeout_seconds=10, proxy=proxy)


def test_marker_and_parameter_line():
    lines = server_script(params("http://proxy.contoso.com:8080/")).splitlines()
    assert lines[0] == SERVER_MARKER
    assert lines[1] == ("$P=@{LookbackHours=24;MaxEvents=200;LogTailBytes=65536;CheckEndpoint=1;"
                        "EndpointTimeoutSec=10;Proxy='http://proxy.contoso.com:8080/'}")


def test_command_line_is_utf16_base64_of_the_script():
    script = organization_script()
    line = command_line(script)
    assert line.startswith("powershell -NoProfile -NonInteractive -EncodedCommand ")
    assert base64.b64decode(line.split()[-1]).decode("utf-16-le") == script


def test_worst_case_fits_the_windows_command_line():
    longest = ServerScriptParameters(lookback_hours=8760, max_events=5000, log_tail_bytes=16 << 20,
                                     check_endpoint=True, endpoint_timeout_seconds=600,
                                     proxy="http://a-rather-long-proxy-name.corp.contoso.example.com:65535/")
    assert len(command_line(server_script(longest))) <= CMD_LINE_LIMIT


def test_a_hostile_proxy_value_never_reaches_the_script():
    for hostile in ("http://x';Remove-Item C:\\ -Recurse;'", "http://x\u2019;calc;\u2018", "http://a b/",
                    "http://user:secret@proxy:8080/", "javascript:alert(1)"):
        line = server_script(params(hostile)).splitlines()[1]
        assert line.endswith(";Proxy=''}"), hostile


def test_script_text_is_ascii():
    for script in (server_script(params()), organization_script()):
        script.encode("ascii")
