"""`exchange-eems-simulator demo --psrp` (what `make demo-psrp` runs) against the WinRS demo: the same fleet over
PowerShell remoting only (the JEA endpoint windows-endpoint writes, Exchange's /PowerShell; no WinRS shell is
served, so nothing passes by falling back) gives the same build, cutoff and EEMS verdicts for every server. The
organization collector meets Exchange's endpoint, which takes Kerberos only: over NTLM it says so; with
`--kerberos` (a real MIT KDC) it succeeds, with no delegation, where WinRS meets the double hop."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request

import yaml

from ..conftest import PASSWORD_ENV, demo_scenario, free_port, relocate, stop_process

VERDICTS = ("exchange_up", "exchange_build_info", "exchange_eems_certificate_cutoff_compliant", "exchange_eems_supported",
            "exchange_service_state")


def start(tmp_path, name: str, *extra: str) -> tuple[subprocess.Popen, int]:
    scenario = tmp_path / f"{name}.yaml"
    scenario.write_text(yaml.safe_dump(relocate(demo_scenario())), encoding="utf-8")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != PASSWORD_ENV}
    process = subprocess.Popen([sys.executable, "-m", "simulator", "demo", "--scenario", str(scenario), "--listen",
                                f"127.0.0.1:{port}", "--interval", "10s", *extra],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    return process, port


def metrics(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return response.read().decode()
    except OSError:
        return ""


def series(text: str, name: str) -> set[str]:
    return set(re.findall(rf"^({name}(?:{{[^}}]*}})? \S+)$", text, re.MULTILINE))


def organization_state(text: str) -> str | None:
    if re.search(r'^exchange_collector_success\{collector="organization",[^}]*\} 1\.0$', text, re.MULTILINE):
        return "ok"
    found = re.search(r'^exchange_collector_error\{collector="organization",[^}]*reason="(\w+)"\} 1', text, re.MULTILINE)
    return found.group(1) if found else None


def test_the_psrp_demo_gives_the_winrs_demos_verdicts(tmp_path):
    demos = {"winrs": start(tmp_path, "winrs"), "psrp": start(tmp_path, "psrp", "--psrp"),
             "psrp_kerberos": start(tmp_path, "psrp_kerberos", "--psrp", "--kerberos")}
    try:
        deadline = time.monotonic() + 90
        texts = {}
        while time.monotonic() < deadline:
            time.sleep(0.5)
            texts = {name: metrics(port) for name, (_, port) in demos.items()}
            if all(len(series(t, "exchange_up")) == 15 and organization_state(t) for t in texts.values()):
                break
        for name, text in texts.items():
            assert len(series(text, "exchange_up")) == 15, f"{name}: not every server polled in 90 s"
        assert organization_state(texts["winrs"]) == "double_hop"  # over NTLM, as in production
        assert organization_state(texts["psrp"]) == "auth_failed"  # Exchange's endpoint: Kerberos only
        assert organization_state(texts["psrp_kerberos"]) == "ok"  # cmdlets under RBAC on the server, no second hop
        assert series(texts["psrp_kerberos"], "exchange_eems_mitigations_enabled")
        # ServerRole read from the deserialized objects: every Mailbox server listed and polled, the Edge one left out
        polled = series(texts["psrp_kerberos"], "exchange_organization_server_polled")
        assert len(polled) == 14 and all(s.endswith("} 1.0") and "EDGE01" not in s for s in polled), polled
        for metric in VERDICTS:
            winrs_series = series(texts["winrs"], metric)
            assert winrs_series, metric
            for name in ("psrp", "psrp_kerberos"):
                assert series(texts[name], metric) == winrs_series, (name, metric)
    finally:
        outputs = {name: stop_process(process)[0] for name, (process, _) in demos.items()}
    assert "PowerShell remoting" in outputs["psrp"] and "takes Kerberos only" in outputs["psrp"]
    assert "over Kerberos, with no delegation" in outputs["psrp_kerberos"]
    for name, output in outputs.items():
        assert "Traceback" not in output, f"{name}: {output[-2000:]}"
