"""deploy/systemd's system-call filter and MemoryDenyWriteExecute= against what the exporter really does.

systemd cannot run here (no systemd as PID 1), so the unit's sandbox is checked from the other side: the real
`exchange-eems-exporter run` runs under strace while it polls a simulated fleet over http and https (NTLM), serves
its pages and /probe, and reloads on SIGHUP and POST /-/reload; then every system call it made must be in the
unit's allow list and in none of its deny lists (each group expanded by Debian's `systemd-analyze syscall-filter`),
and no memory it mapped may have been writable and executable at once. A call the unit denies would fail with
EPERM under systemd (SystemCallErrorNumber=); a W+X mapping would fail outright.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from ..artifacts.test_systemd import UNIT, unit
from ..conftest import PASSWORD, PASSWORD_ENV, SimulatedFleet, free_port, relocate, samples, stop_process
from .test_reload import wait_for

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = {
    "servers": [
        {"name": "EX47", "address": "127.0.0.1", "build": "15.2.2562.53"},
        {"name": "EX78", "address": "127.0.0.1", "build": "15.2.1544.36", "scheme": "https"},
    ],
}
_CALL = re.compile(r"^\d+\s+([a-z_0-9]+)\((.*)")


def required(found: str | None, name: str, package: str) -> str:
    """A program's path from shutil.which, written out at each lookup so tests/artifacts/test_ci.py sees it."""
    if found is None:
        pytest.fail(f"{name} is missing (Debian package {package}; make system-deps installs it)")
    return found


@functools.cache
def syscall_group(group: str) -> frozenset[str]:
    """The system calls of a systemd group such as @system-service, its nested groups expanded."""
    analyze = required(shutil.which("systemd-analyze"), "systemd-analyze", "systemd")
    listing = subprocess.run([analyze, "syscall-filter", group], capture_output=True, text=True, timeout=60,
                             check=True).stdout
    names: set[str] = set()
    for line in listing.splitlines()[1:]:  # the first line names the group
        word = line.strip()
        if not word or word.startswith("#"):
            continue
        names |= syscall_group(word) if word.startswith("@") else {word}
    return frozenset(names)


def unit_filter() -> tuple[frozenset[str], frozenset[str], bool]:
    """The unit's allowed and denied system calls, and whether it sets MemoryDenyWriteExecute=yes."""
    allowed: set[str] = set()
    denied: set[str] = set()
    for line in UNIT.read_text().splitlines():  # each line: unit() would keep only the last SystemCallFilter=
        if line.startswith("SystemCallFilter="):
            value = line.split("=", 1)[1]
            into, value = (denied, value[1:]) if value.startswith("~") else (allowed, value)
            for word in value.split():
                into |= syscall_group(word) if word.startswith("@") else {word}
    return frozenset(allowed), frozenset(denied), unit()["Service"].get("MemoryDenyWriteExecute") == "yes"


def traced(trace: Path) -> tuple[set[str], list[str]]:
    """The system calls a strace log shows, and the calls in it that MemoryDenyWriteExecute= refuses: a mapping
    both writable and executable, or making memory executable afterwards."""
    calls, write_execute = set(), []
    for line in trace.read_text().splitlines():
        match = _CALL.match(line)
        if not match:  # "<... resumed>", "+++ exited", signals
            continue
        name, arguments = match.groups()
        calls.add(name)
        if (name == "mmap" and "PROT_WRITE" in arguments and "PROT_EXEC" in arguments) or \
                (name in ("mprotect", "pkey_mprotect") and "PROT_EXEC" in arguments):
            write_execute.append(line)
    return calls, write_execute


def strace_command(trace: Path, *command: str) -> list[str]:
    return [required(shutil.which("strace"), "strace", "strace"), "-f", "-qq", "-o", str(trace), *command]


def violations(trace: Path) -> list[str]:
    allowed, denied, deny_write_execute = unit_filter()
    calls, write_execute = traced(trace)
    found = [f"{name}: not in the unit's allow list" for name in sorted(calls - allowed)]
    found += [f"{name}: in a group the unit denies" for name in sorted(calls & denied)]
    if deny_write_execute:
        found += [f"W+X: {line}" for line in write_execute]
    return found


def get(url: str, data: bytes | None = None) -> str:
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read().decode()


def test_the_unit_denies_what_it_is_checked_against():
    """The check below means something only if the unit names deny lists and MemoryDenyWriteExecute=."""
    allowed, denied, deny_write_execute = unit_filter()
    assert {"execve", "connect", "prlimit64"} <= allowed
    assert {"chown", "setuid", "setrlimit", "sched_setaffinity"} <= denied
    assert deny_write_execute


def test_the_trace_finds_a_denied_call_and_a_writable_executable_mapping(tmp_path):
    """The check can fail: os.nice() calls setpriority (@resources) and the mmap asks for W+X memory."""
    trace = tmp_path / "strace.txt"
    program = "import mmap, os; os.nice(0); mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)"
    subprocess.run(strace_command(trace, sys.executable, "-c", program), check=True, timeout=60)
    found = violations(trace)
    assert "setpriority: in a group the unit denies" in found
    assert any(line.startswith("W+X: ") and "mmap(" in line for line in found), found


def test_the_exporter_runs_inside_the_units_system_call_filter(tmp_path):
    trace = tmp_path / "strace.txt"
    with SimulatedFleet(relocate(SCENARIO)) as fleet:
        config = tmp_path / "exporter.yml"
        config.write_text(fleet.config_text(interval="10s", timeout="5s"))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        process = subprocess.Popen(
            strace_command(trace, sys.executable, "-m", "exporter", "run", "--config.file", str(config),
                           "--web.listen-address", f"127.0.0.1:{port}"),
            cwd=ROOT, env={**os.environ, PASSWORD_ENV: PASSWORD}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        try:
            def both_up() -> bool:
                metrics = samples(get(base + "/metrics"))
                return all(metrics.get(("exchange_up", frozenset({"server": name}.items()))) == 1
                           for name in ("EX47", "EX78"))

            wait_for(both_up, "the first poll of both servers", 60)  # under strace
            for path in ("/-/healthy", "/-/ready", "/", "/server?name=EX47&debug=true", "/probe?target=EX78"):
                get(base + path)
            # strace's one child is the exporter
            (exporter,) = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
            before = samples(get(base + "/metrics"))[("exchange_exporter_config_last_reload_success_timestamp_seconds",
                                                      frozenset())]
            os.kill(int(exporter), signal.SIGHUP)
            wait_for(lambda: samples(get(base + "/metrics"))[
                ("exchange_exporter_config_last_reload_success_timestamp_seconds", frozenset())] > before,
                "the reload on SIGHUP", 60)
            get(base + "/-/reload", data=b"")
            os.kill(int(exporter), signal.SIGTERM)
            process.wait(timeout=30)
        finally:
            stderr = stop_process(process, 15)[1]
    assert process.returncode == 0, stderr
    calls, _ = traced(trace)
    assert {"connect", "accept4", "prlimit64"} <= calls, "the trace shows the exporter's polls and its port"
    assert not violations(trace), violations(trace)
