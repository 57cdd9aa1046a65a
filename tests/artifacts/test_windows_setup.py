"""docs/windows-setup.md and the README's PowerShell: every block parses under tree-sitter-powershell (a grammar no
one here wrote), and every Windows fact the page cites has a source or says UNCONFIRMED."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ..unit.test_script_grammar import syntax_problems

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "windows-setup.md"


def powershell_blocks() -> list[tuple[str, str]]:
    found = []
    for path in (PAGE, ROOT / "README.md", ROOT / "docs" / "security.md"):
        text = path.read_text()
        for match in re.finditer(r"```powershell\n(.*?)```", text, re.S):
            found.append((f"{path.name}:{text[:match.start()].count(chr(10)) + 1}", match.group(1)))
    return found


def test_the_page_has_the_fleet_steps():
    text = PAGE.read_text()
    for needed in ("RootSDDL", "sc.exe sdset", "icacls", "Restricted Groups", "New-NetFirewallRule",
                   "WSMan:\\localhost\\Listener", "exchange-eems-exporter poll", "| from | to | port |"):
        assert needed in text, needed
    assert len([b for w, b in powershell_blocks() if w.startswith(PAGE.name)]) >= 6


@pytest.mark.parametrize("where, block", powershell_blocks(), ids=[w for w, _ in powershell_blocks()])
def test_every_powershell_block_parses(where, block):
    assert syntax_problems(block) == [], where


def _facts() -> dict[str, str]:
    rows = re.findall(r"^\| (F\d+) \| (.*?) \| (.*?) \|$", PAGE.read_text(), re.M)
    return {number: source for number, _, source in rows}


def test_every_cited_fact_has_a_source_or_says_unconfirmed():
    facts = _facts()
    assert facts, "no facts table"
    cited = set(re.findall(r"\bF\d+\b", PAGE.read_text().split("## What this page relies on")[0]))
    cited |= set(re.findall(r"windows-setup\.md, (F\d+)", (ROOT / "README.md").read_text()))
    assert cited - set(facts) == set(), "cited facts missing from the table"
    assert set(facts) - cited == set(), "facts in the table that no step cites"
    unsourced = {n for n, source in facts.items() if not re.search(r"https?://|UNCONFIRMED", source)}
    assert unsourced == set()


def test_the_startup_script_steps_check_before_they_change():
    """The page makes sections 1.1 to 1.3 and 1.5 a GPO startup script, run at every start, "harmless" because
    each step checks before it changes. New-NetFirewallRule did not: every start added one more copy of the rule
    (its Name is a new GUID each time)."""
    text = PAGE.read_text()
    section = text.split("## 1. ", 1)[1].split("\n## 2. ", 1)[0]
    assert "Each step checks before it changes" in section
    changers = {"Set-Item": "Get-Item", "sc.exe sdset": "sc.exe sdshow", "New-NetFirewallRule": "Get-NetFirewallRule"}
    blocks = re.findall(r"```powershell\n(.*?)```", section, re.S)
    for changer, reader in changers.items():
        found = [b for b in blocks if changer in b]
        assert found, changer
        for block in found:
            before = block.split(changer, 1)[0]
            assert reader in before and re.search(r"\bif\s*\(", before), f"{changer} without a check ({reader})"


def test_every_event_log_readers_grant_finds_the_group_by_its_sid():
    """The group's name is localized ("Ereignisprotokollleser" on German Windows, like the demo's EX-SE06-DE, whose
    ExchangeCollectorBlind{part="events"} sends the admin to this runbook row): `-Group 'Event Log Readers'` fails
    there with "group not found". windows-setup.md finds it by its well-known SID (F19); every page must."""
    for path in (PAGE, ROOT / "docs" / "runbooks.md", ROOT / "docs" / "security.md", ROOT / "README.md"):
        for line in re.findall(r"Add-LocalGroupMember[^`\n]*-Member[^`\n]*", path.read_text()):
            assert "-SID 'S-1-5-32-573'" in line, f"{path.name}: {line}"


def test_the_page_says_what_powershell_remoting_needs_of_it():
    """The page called itself the WinRS page only, so an admin setting up the JEA endpoint (`protocol: psrp`, on
    the default https:5986) skipped it, and with it the HTTPS listener and the firewall rule the endpoint is reached
    through: every poll then failed with connection_refused."""
    intro = PAGE.read_text().split("\n## ", 1)[0]
    assert "protocol: psrp" in intro
    for section in ("(1.5)", "(2)", "(3)", "(4)"):
        assert section in intro, section


def test_the_readmes_server_list_leaves_out_what_discovery_leaves_out():
    """The README built `servers:` from every server Get-ExchangeServer lists, Edge Transport and Exchange 2010 ones
    included: discovery leaves those out (exporter/model.py, OrgServerInfo.may_run_eems) because they have no EEMS
    and an Edge server, outside the domain, refuses the account; two refusing paused its polls on every server."""
    (line,) = [b for w, b in powershell_blocks() if w.startswith("README.md") and "Get-ExchangeServer" in b]
    assert "$_.ServerRole -ne 'Edge'" in line
    assert "$_.AdminDisplayVersion -like 'Version 15*'" in line


def test_the_closing_check_says_what_a_failed_poll_means_over_powershell_remoting():
    """The page sends JEA users to its closing check (4), which read every failure as a WinRS grant of 1.1 to 1.4, the
    sections that do not apply to them: a poll of an endpoint never installed (configuration_not_found) or of an older
    one (endpoint_outdated) was left unexplained, and access_denied pointed at the WinRM root SDDL instead of the
    endpoint's group."""
    closing = PAGE.read_text().split("## 4. Closing check", 1)[1].split("\n## ", 1)[0]
    for phrase in ("protocol: psrp", "configuration_not_found", "endpoint_outdated", "--group",
                   "Install-ExchangeEemsEndpoint.ps1"):
        assert phrase in closing, phrase


def test_the_listener_certificate_is_found_by_the_server_authentication_oid():
    """Section 2 picked the listener's certificate by `EnhancedKeyUsageList.FriendlyName -contains 'Server
    Authentication'`: a display name, which Windows gives in its own language (F24), as it does the group names
    that the page already finds by SID. Where it does not match, `$Cert` is empty and `New-Item` is handed no
    thumbprint. The OID is the same everywhere."""
    blocks = [(w, b) for w, b in powershell_blocks() if "EnhancedKeyUsageList" in b]
    assert blocks
    for where, block in blocks:
        assert "ObjectId -contains '1.3.6.1.5.5.7.3.1'" in block, where
        assert "FriendlyName" not in block, where
        assert re.search(r"if\s*\(-not \$Cert\)", block), f"{where}: New-Item without a certificate"


def test_the_startup_script_goes_where_windows_runs_it_as_powershell():
    """A GPO keeps Windows PowerShell startup scripts apart from the others (F25): the startup properties have a
    Scripts tab and a PowerShell Scripts tab. The page said only "Scripts > Startup"; a `.ps1` added on the Scripts
    tab is not run by PowerShell, and nothing of sections 1.1 to 1.5 is applied, with no error on the page's side."""
    gpo = " ".join(PAGE.read_text().split("### As a Group Policy", 1)[1].split("\n## ", 1)[0].split())
    assert "**PowerShell Scripts** tab" in gpo and "(F25)" in gpo, gpo
