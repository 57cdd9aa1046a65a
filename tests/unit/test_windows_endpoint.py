"""`windows-endpoint`: the JEA endpoint files, checked with a PowerShell grammar nobody here wrote
(tree-sitter-powershell) and against the script WinRS sends. There is no PowerShell here, so the install
script's safety on a second run is checked on its structure: every change it makes is guarded by a test of
the state that change would produce."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import tree_sitter_powershell
from tree_sitter import Language, Node, Parser

from exporter import windows_endpoint
from exporter.scripts import _body

from .test_script_grammar import syntax_problems

PARSER = Parser(Language(tree_sitter_powershell.language()))
GROUP = "CONTOSO\\EEMS Monitoring"


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("endpoint")
    windows_endpoint.write(output, GROUP)
    return output


def read(path: Path) -> str:
    data = path.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf"), f"{path.name}: Windows PowerShell 5.1 needs the BOM to read UTF-8"
    return data[3:].decode("utf-8")


def test_every_file_parses_with_the_powershell_grammar(written):
    files = sorted(p for p in written.rglob("*") if p.is_file())
    assert {p.relative_to(written).as_posix() for p in files} == set(windows_endpoint.build(GROUP).files)
    for path in files:
        assert syntax_problems(read(path)) == [], path.name


def test_the_function_is_the_script_winrs_sends(written):
    role = read(written / "ExchangeEemsExporter" / "RoleCapabilities" / "ExchangeEemsReader.psrc").replace("\r\n", "\n")
    body = role.split("# >>> collect_server.ps1\n", 1)[1].split("\n# <<< collect_server.ps1", 1)[0]
    assert body == _body("collect_server.ps1").rstrip()
    assert f"VisibleFunctions = '{windows_endpoint.FUNCTION_NAME}'" in role
    assert f"Name = '{windows_endpoint.FUNCTION_NAME}'" in role
    # the function fills $P as the WinRS parameter line does, with every parameter the script reads
    assert "$P=@{LookbackHours=$LookbackHours;MaxEvents=$MaxEvents;LogTailBytes=$LogTailBytes;" \
           "CheckEndpoint=$CheckEndpoint;EndpointTimeoutSec=$EndpointTimeoutSec;Proxy='';ProxyDefaultCredentials=0}" in role
    read_by_script = set(re.findall(r"\$P\.(\w+)", body))
    assert read_by_script <= {name for name, _, _, _ in windows_endpoint.PARAMETERS} | {"Proxy", "ProxyDefaultCredentials"}
    assert f"\n'{windows_endpoint.endpoint_version()}'\n" in role  # its first output


def test_the_proxy_is_fixed_by_the_admin_not_the_caller(tmp_path):
    """The script sends the server's own credentials to its proxy: a caller must not choose where they go."""
    role = windows_endpoint.build(GROUP, proxy="http://proxy.contoso.com:8080").files[
        "ExchangeEemsExporter/RoleCapabilities/ExchangeEemsReader.psrc"]
    parameters = role.split("param(", 1)[1].split(")\n", 1)[0]
    assert "Proxy" not in parameters
    assert ";Proxy='http://proxy.contoso.com:8080';ProxyDefaultCredentials=0}" in role
    assert windows_endpoint.build(GROUP, proxy="http://proxy.contoso.com:8080").version == windows_endpoint.endpoint_version()
    for bad in ("http://x'; Remove-Item C:\\ -Recurse; '", "ftp://proxy", "http://user:pw@proxy:8080"):
        with pytest.raises(ValueError):
            windows_endpoint.build(GROUP, proxy=bad)


def test_the_parameters_are_bounded_as_the_configuration_is():
    """A stolen credential can ask for no more than the exporter's configuration allows."""
    from exporter.config import POLL_KEYS
    from exporter.config_keys import ConfigError

    bounds = {"MaxEvents": "max_events", "LogTailBytes": "log_tail_bytes"}
    for name, low, high, _ in windows_endpoint.PARAMETERS:
        assert 0 <= low <= high <= 16 << 20, name
        if name in bounds:
            read = next(k for k in POLL_KEYS if k.name == bounds[name]).read
            assert read(high, name) == high
            with pytest.raises(ConfigError):
                read(high + 1, name)


def test_the_version_follows_the_script():
    script = _body("collect_server.ps1")
    assert windows_endpoint.endpoint_version(script) == windows_endpoint.endpoint_version()
    assert windows_endpoint.endpoint_version(script + "\n# changed\n") != windows_endpoint.endpoint_version()
    assert windows_endpoint.endpoint_version().startswith(windows_endpoint.VERSION_PREFIX)


@pytest.mark.parametrize("release, module", [("0.1.0", "0.1.0"), ("0.2.0rc1", "0.2.0"), ("0.2.0.dev1", "0.2.0"),
                                             ("3", "3.0"), ("2026.12.7.1.5", "2026.12.7.1"), ("1.0.post2", "1.0")])
def test_the_module_version_is_a_system_version(monkeypatch, release, module):
    """PowerShell reads ModuleVersion as [System.Version] (two to four numbers): a pre-release of the exporter
    written as it is would make the manifest unloadable, and the endpoint's installation fail on Windows."""
    monkeypatch.setattr(windows_endpoint, "EXPORTER_VERSION", release)
    manifest = windows_endpoint.build(GROUP).files["ExchangeEemsExporter/ExchangeEemsExporter.psd1"]
    assert re.search(r"^    ModuleVersion = '(\d+(?:\.\d+){1,3})'$", manifest, re.M).group(1) == module


def test_the_session_configuration(written):
    session = read(written / "ExchangeEemsExporter.pssc")
    for line in ("SessionType = 'RestrictedRemoteServer'", "RunAsVirtualAccount = $true",
                 "'CONTOSO\\EEMS Monitoring' = @{ RoleCapabilities = 'ExchangeEemsReader' }"):
        assert line in session
    assert "LanguageMode" not in session and "VisibleCmdlets" not in session  # nothing beyond the one function
    manifest = read(written / "ExchangeEemsExporter" / "ExchangeEemsExporter.psd1")
    assert "FunctionsToExport = @()" in manifest


def test_virtual_account_groups_and_transcripts():
    files = windows_endpoint.build(GROUP, virtual_account_groups=("Event Log Readers",),
                                   transcript_directory="C:\\ProgramData\\EEMS\\Transcripts").files
    session = files["ExchangeEemsExporter.pssc"]
    assert "RunAsVirtualAccountGroups = 'Event Log Readers'" in session
    assert "TranscriptDirectory = 'C:\\ProgramData\\EEMS\\Transcripts'" in session
    assert syntax_problems(session) == []
    assert "RunAsVirtualAccountGroups" not in windows_endpoint.build(GROUP).files["ExchangeEemsExporter.pssc"]
    with pytest.raises(ValueError):
        windows_endpoint.build(GROUP, virtual_account_groups=("x'; evil",))


@pytest.mark.parametrize("group", ["CONTOSO\\it's", "A$(whoami)", "x`y", "line\nbreak", "", 'q"uote', "x" * 300])
def test_a_group_that_could_break_out_of_its_string_is_refused(group):
    with pytest.raises(ValueError):
        windows_endpoint.build(group)


def test_writing_twice_gives_the_same_files(tmp_path):
    first = windows_endpoint.write(tmp_path, GROUP)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    second = windows_endpoint.write(tmp_path, GROUP)
    assert first == second and {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


# ---------------------------------------------------------------- the install script

MUTATIONS = {  # command -> what the enclosing `if` conditions must test (the state the command changes)
    "Unregister-PSSessionConfiguration": "$Registered",
    "Register-PSSessionConfiguration": "-not $Current",
    "Remove-Item": "Test-Path -LiteralPath $Target",
    "Copy-Item": "(Get-FolderDigest $Source) -ne (Get-FolderDigest $Target)",
    "New-Item": "-not (Test-Path -LiteralPath $Transcripts)",
    "icacls.exe": "$TranscriptDacl -cnotmatch",
}


def _commands(node: Node, conditions: tuple[str, ...], found: list) -> None:
    if node.type == "flow_control_statement" and node.children[0].type == "throw":
        found.append(("throw", conditions))
    if node.type == "if_statement":
        condition = next(c for c in node.children if c.type == "pipeline").text.decode()
        for child in node.children:
            _commands(child, conditions + (condition,) if child.type == "statement_block" else conditions, found)
        return
    if node.type == "command":
        name = next((c for c in node.children if c.type == "command_name"), None)
        if name is not None:
            found.append((name.text.decode(), conditions))
    for child in node.children:
        _commands(child, conditions, found)


def install_commands(text: str) -> list[tuple[str, tuple[str, ...]]]:
    found: list = []
    _commands(PARSER.parse(text.encode()).root_node, (), found)
    return found


def test_every_change_the_install_script_makes_is_guarded_by_its_state(written):
    """A second run finds each guard false: the registration equal, the module folder equal (digests), nothing
    registered or present to remove. Each change sits under the test of exactly that state."""
    commands = install_commands(read(written / windows_endpoint.INSTALL_SCRIPT))
    changes = [(name, conditions) for name, conditions in commands if name in MUTATIONS]
    assert {name for name, _ in changes} == set(MUTATIONS)
    for name, conditions in changes:
        assert any(MUTATIONS[name] in c for c in conditions), (name, conditions)
    assert "Get-PSSessionConfiguration" in [n for n, _ in commands]


def test_the_guard_check_can_fail():
    broken = "Register-PSSessionConfiguration -Name X -Path y -Force\nif ($Registered) { Remove-Item -LiteralPath $Target }"
    commands = dict(install_commands(broken))
    assert commands["Register-PSSessionConfiguration"] == ()
    assert not any(MUTATIONS["Remove-Item"] in c for c in commands["Remove-Item"])


def test_the_command_line(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "exporter", "windows-endpoint", "--output", str(tmp_path / "out"),
                         "--group", GROUP], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert windows_endpoint.endpoint_version() in ok.stdout and (tmp_path / "out" / "ExchangeEemsExporter.pssc").exists()
    bad = subprocess.run([sys.executable, "-m", "exporter", "windows-endpoint", "--output", str(tmp_path / "bad"),
                          "--group", "it's"], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "--group" in bad.stderr and not (tmp_path / "bad").exists()


def _command_lines(text: str, name: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith(name + " ")]


def test_on_a_domain_controller_the_install_script_refuses_a_domain_admin_virtual_account(written):
    """Without RunAsVirtualAccountGroups a virtual account is in Administrators, and on a domain controller in Domain
    Admins (Microsoft Learn, "JEA Security Considerations", Run-As account; "JEA Session Configurations"). Exchange
    may be installed on a domain controller; a read-only function must not run there as a domain administrator.
    Before, the script registered the endpoint there without a word."""
    commands = install_commands(read(written / windows_endpoint.INSTALL_SCRIPT))
    names = [name for name, _ in commands]
    refusals = [i for i, (name, conditions) in enumerate(commands) if name == "throw" and any(
        "$DomainRole -ge 4" in c and "-not $Settings.RunAsVirtualAccountGroups" in c for c in conditions)]
    assert refusals, "no refusal of a domain controller without RunAsVirtualAccountGroups"
    # before anything it would install: the module and the registration
    assert refusals[0] < names.index("Copy-Item") and refusals[0] < names.index("Register-PSSessionConfiguration")
    text = read(written / windows_endpoint.INSTALL_SCRIPT)
    assert "$DomainRole = (Get-CimInstance -ClassName Win32_ComputerSystem).DomainRole" in text
    assert "$Settings = Import-PowerShellDataFile -LiteralPath $SessionFile" in text


def test_the_transcript_folder_is_closed_to_standard_users(written):
    """"Transcripts are written to the folder by the Local System account [...] Standard users should have no
    access to the folder" (Microsoft Learn, "JEA Session Configurations", Session transcripts). Before, the
    folder was left to PowerShell to create, with whatever ACL it inherited (under ProgramData, Users may read)."""
    text = read(written / windows_endpoint.INSTALL_SCRIPT)
    commands = install_commands(text)
    icacls = [conditions for name, conditions in commands if name == "icacls.exe"]
    assert len(icacls) == 2 and all(any(c == "$Transcripts" for c in conditions) for conditions in icacls)
    reset, grant = _command_lines(text, "icacls.exe")
    assert reset.split()[1:4] == ["$Transcripts", "/reset", "/T"]
    arguments = grant.split("|")[0].split()[1:]
    assert arguments[:3] == ["$Transcripts", "/inheritance:r", "/grant:r"]
    # SYSTEM (it writes the transcripts) and Administrators (who audit them), by SID: no other entry
    assert arguments[3:] == ["'*S-1-5-18:(OI)(CI)F'", "'*S-1-5-32-544:(OI)(CI)F'"]
    assert "$Transcripts = $Settings.TranscriptDirectory" in text
    # the guard accepts exactly the folder icacls leaves, in either order, and nothing broader
    guard = re.search(r"-cnotmatch '([^']+)'", text).group(1)
    for dacl, closed in (("PAI(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)", True), ("PAI(A;OICI;FA;;;BA)(A;OICI;FA;;;SY)", True),
                         ("AI(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)", False),  # inheriting
                         ("PAI(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)(A;OICI;0x1200a9;;;BU)", False),  # Users may read
                         ("PAI(A;OICI;FA;;;SY)", False)):
        assert bool(re.fullmatch(guard.replace("^", "").replace("$", ""), dacl)) is closed, dacl


def test_the_session_file_is_tested_by_its_literal_path(written):
    """Test-PSSessionConfigurationFile has no -LiteralPath; its -Path is resolved as a wildcard ("Wildcard characters
    are supported", Microsoft Learn; GetResolvedProviderPathFromPSPath in TestPSSessionConfigurationFile.cs). Before,
    the script passed $SessionFile unescaped: run from a folder like 'endpoint[1]' it stopped with "not found"."""
    text = read(written / windows_endpoint.INSTALL_SCRIPT)
    assert "Test-PSSessionConfigurationFile" in [name for name, _ in install_commands(text)]
    assert "Test-PSSessionConfigurationFile -Path ($SessionFile -replace '([*?`\\[\\]])', '`$1')" in text
    # the other -Path uses take the path literally: New-Item ("works like the LiteralPath parameter", Microsoft
    # Learn) and Register-PSSessionConfiguration (GetUnresolvedProviderPathFromPSPath, CustomShellCommands.cs)
    users = {line.split()[0] for line in text.splitlines()
             if re.search(r"\s-Path\s+\$", line) and not line.lstrip().startswith("#")}
    assert users <= {"New-Item", "Register-PSSessionConfiguration"}, users


def test_a_transcript_directory_with_a_trailing_backslash_is_refused():
    """Windows PowerShell 5.1 quotes an argument with a space without doubling a trailing backslash, so icacls would
    get 'C:\\EEMS Transcripts\\' as `C:\\EEMS Transcripts" /reset /T /Q` (PowerShell/PowerShell issues 4358 and 7400,
    NativeCommandParameterBinder.cs); 'C:\\' would reset a whole drive. Before, both were written and installed."""
    for bad in ("C:\\EEMS Transcripts\\", "C:\\"):
        with pytest.raises(ValueError, match="trailing backslash"):
            windows_endpoint.build(GROUP, transcript_directory=bad)
    windows_endpoint.build(GROUP, transcript_directory="C:\\EEMS Transcripts")
    text = windows_endpoint.build(GROUP).files[windows_endpoint.INSTALL_SCRIPT]
    commands = install_commands(text)
    names = [name for name, _ in commands]
    refusals = [i for i, (name, conditions) in enumerate(commands) if name == "throw" and any(
        "$Settings.TranscriptDirectory -match '\\\\$'" in c for c in conditions)]
    assert refusals and refusals[0] < names.index("Copy-Item") and refusals[0] < names.index("icacls.exe")


def test_the_install_script_closes_only_a_folder_of_transcripts(written):
    """`icacls /reset /T` and `/inheritance:r` reach everything below the folder. A --transcript-directory naming
    a folder that exists for other things (C:\\ProgramData, a shared log folder) had every ACL below it replaced by
    SYSTEM and Administrators only, breaking whatever else reads or writes there. The script now refuses, before
    icacls, a folder holding anything but transcripts (per-day folders, yyyyMMdd, or PowerShell_transcript files)."""
    text = read(written / windows_endpoint.INSTALL_SCRIPT)
    commands = install_commands(text)
    names = [name for name, _ in commands]
    refusals = [i for i, (name, conditions) in enumerate(commands) if name == "throw" and any(
        "$Foreign.Count -gt 0" in c for c in conditions) and any("$TranscriptDacl -cnotmatch" in c for c in conditions)]
    assert refusals and refusals[0] < names.index("icacls.exe"), commands
    start = text.index("$Foreign = ")
    foreign = text[start:text.index("{ $Entry } })", start)]
    assert "Get-ChildItem -LiteralPath $Transcripts -Force" in foreign, foreign
    assert "($Entry.PSIsContainer -and $Entry.Name -match '^\\d{8}$')" in foreign, foreign
    assert "(-not $Entry.PSIsContainer -and $Entry.Name -match '^PowerShell_transcript\\..+\\.txt$')" in foreign, foreign


def test_the_function_sends_the_offset_changes_and_an_endpoint_without_them_is_outdated():
    """The function is the collection script, `utc_offsets` included; an endpoint installed from the script before it
    reports another version, so the exporter calls it outdated instead of reading its output as current."""
    role = windows_endpoint.build(GROUP).files["ExchangeEemsExporter/RoleCapabilities/ExchangeEemsReader.psrc"]
    assert "$r.utc_offsets=@(@{since=$a;minutes=$o})" in role
    before = "\n".join(line for line in _body("collect_server.ps1").splitlines()
                       if "utc_offsets" not in line and "UtcOffset" not in line)
    assert windows_endpoint.endpoint_version(before) != windows_endpoint.endpoint_version()


def test_an_update_does_not_quietly_drop_the_virtual_account_groups_or_the_transcripts(written):
    """The `endpoint_outdated` hint said to run `windows-endpoint --output DIR --group GROUP` again: an endpoint first
    written with `--virtual-account-group` (its virtual account in that local group only) and followed literally came
    back without RunAsVirtualAccountGroups, i.e. a member of the local Administrators group (Microsoft Learn, "JEA
    Security Considerations", Run-As account), and one written with `--transcript-directory` stopped recording
    sessions, without a word. The hint now says to write it with the same options (docs/runbooks.md names them), and
    the install script refuses such an update before it changes anything unless -AllowWeaker says it is meant."""
    hint = windows_endpoint.update_command()
    assert "with its original options" in hint, hint
    text = read(written / windows_endpoint.INSTALL_SCRIPT)
    assert re.search(r"param\(\s*\[switch\]\$Remove,\s*\[switch\]\$AllowWeaker\s*\)", text), "no -AllowWeaker switch"
    # what the registered configuration was: the copy Register-PSSessionConfiguration keeps (ConfigFilePath)
    assert "$Before = Import-PowerShellDataFile -LiteralPath $Registered.ConfigFilePath -ErrorAction Stop" in text
    commands = install_commands(text)
    names = [name for name, _ in commands]
    refusals = [i for i, (name, conditions) in enumerate(commands) if name == "throw"
                and any("$Lost.Count -gt 0" in c for c in conditions)
                and any("-not $AllowWeaker" in c for c in conditions)]
    assert refusals, "no refusal of an update that drops the virtual-account groups or the transcripts"
    for change in ("Copy-Item", "Register-PSSessionConfiguration", "icacls.exe", "New-Item"):
        assert refusals[0] < names.index(change), change
    # the update's own Unregister and Remove-Item come after it too (the -Remove branch returns before it)
    assert refusals[0] < max(i for i, (name, _) in enumerate(commands) if name == "Unregister-PSSessionConfiguration")
    for kept in ("$Before.RunAsVirtualAccountGroups -and $Was -ne $Now",
                 "$Before.TranscriptDirectory -and -not $Settings.TranscriptDirectory"):
        assert f"if ({kept})" in text, kept
    # a changed group list counts, not only a missing one: the sorted lists are compared
    assert '$Now = (@($Settings.RunAsVirtualAccountGroups) | Sort-Object) -join' in text


def test_an_update_that_cannot_read_the_registered_options_is_refused(written):
    """The comparison above was skipped when the registered configuration file was missing (no ConfigFilePath, a file
    deleted) or did not parse (Import-PowerShellDataFile writes a non-terminating error): the update then went ahead
    without a word, whatever it dropped. It is refused before any change unless -AllowWeaker says it is meant."""
    text = read(written / windows_endpoint.INSTALL_SCRIPT)
    commands = install_commands(text)
    names = [name for name, _ in commands]
    refusals = [i for i, (name, conditions) in enumerate(commands) if name == "throw"
                and any("-not $Before" in c for c in conditions) and any("-not $AllowWeaker" in c for c in conditions)]
    assert refusals, "no refusal when the registered configuration cannot be read"
    for change in ("Copy-Item", "Register-PSSessionConfiguration", "icacls.exe", "New-Item"):
        assert refusals[0] < names.index(change), change
    assert refusals[0] < max(i for i, (name, _) in enumerate(commands) if name == "Unregister-PSSessionConfiguration")


def test_the_install_script_refuses_a_32_bit_powershell(written):
    """In a 32-bit process on 64-bit Windows (WOW64), $env:ProgramFiles is 'C:\\Program Files (x86)' and
    the process is not 64-bit (Microsoft Learn, "WOW64 Implementation Details"; Environment.Is64BitProcess). The
    script copied the module to Program Files (x86)\\WindowsPowerShell\\Modules, while the endpoint's session runs
    64-bit by default (Register-PSSessionConfiguration -ProcessorArchitecture: "determined by the processor
    architecture of the computer") and finds role capabilities through its own PSModulePath, whose AllUsers folder is
    $Env:ProgramFiles\\WindowsPowerShell\\Modules (about_PSModulePath): the role capability was not found there, and
    -Remove looked in the wrong folder. It now refuses before it reads or changes anything. It asks .NET
    ([Environment]::Is64BitProcess), not PROCESSOR_ARCHITEW6432: a 64-bit PowerShell started from a 32-bit process may
    inherit that variable and would be refused wrongly."""
    text = read(written / windows_endpoint.INSTALL_SCRIPT)
    commands = install_commands(text)
    names = [name for name, _ in commands]
    refusals = [i for i, (name, conditions) in enumerate(commands) if name == "throw"
                and any("-not [Environment]::Is64BitProcess" in c for c in conditions)]
    assert refusals, "no refusal of a 32-bit Windows PowerShell"
    for change in ("Get-PSSessionConfiguration", "Unregister-PSSessionConfiguration", "Remove-Item", "Copy-Item",
                   "Register-PSSessionConfiguration"):
        assert refusals[0] < names.index(change), change


def test_the_outdated_endpoint_hint_survives_the_message_bound():
    """A poll failure's message is cut at MAX_MESSAGE_CHARS (300). The hint after the server name and both 48-character
    versions already lost its end with a long server name; a longer hint lost `Install-ExchangeEemsEndpoint.ps1` even
    for `EX02`. The found version is now shown by its hash, and the hint is whole for a 60-character server name."""
    from exporter.winrm.errors import PollFailure
    from exporter.winrm.psrp import outdated_message

    server = "exchange-mailbox-server-01.emea.datacenter-north.contoso.com"[:60]
    old = windows_endpoint.VERSION_PREFIX + "0" * 16
    for found in (old, None, "garbage" * 40):
        failure = PollFailure("endpoint_outdated", outdated_message("ExchangeEemsExporter", server, found))
        assert failure.message.endswith(windows_endpoint.update_command()), failure.message
        assert windows_endpoint.endpoint_version() in failure.message and server in failure.message
    assert "version 0000000000000000" in outdated_message("ExchangeEemsExporter", server, old)
