"""The exporter on a Windows management server: no POSIX-only module or signal is needed to import any of its
modules, or to run it. Without a Windows machine, the interpreter is made to look like Windows's: the POSIX-only
modules cannot be imported and the POSIX-only signals do not exist (signal.SIGHUP is absent on Windows)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

from ..conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
# Not `posix` itself: the standard library imports it wherever os.name is "posix", and picks `nt` on Windows.
POSIX_ONLY_MODULES = ["resource", "fcntl", "pwd", "grp", "termios", "tty", "pty", "syslog", "crypt", "spwd", "nis"]
POSIX_ONLY_SIGNALS = ["SIGHUP", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGQUIT", "SIGCHLD", "SIGPIPE", "SIGKILL",
                      "SIGSTOP", "SIGTSTP", "SIGCONT", "SIGWINCH", "SIGTTIN", "SIGTTOU", "SIGVTALRM", "SIGPROF"]

WINDOWS_LIKE = textwrap.dedent(f"""
    import signal, sys
    for name in {POSIX_ONLY_MODULES!r}:
        sys.modules[name] = None  # `import name` now raises ImportError, as on Windows
    for name in {POSIX_ONLY_SIGNALS!r}:
        if hasattr(signal, name):
            delattr(signal, name)
""")


def run_windows_like(code: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WINDOWS_LIKE + textwrap.dedent(code)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def test_every_exporter_module_imports_without_posix_only_modules_and_signals():
    process = run_windows_like("""
        import importlib, pkgutil, exporter
        names = [m.name for m in pkgutil.walk_packages(exporter.__path__, "exporter.") if m.name != "exporter.__main__"]
        for name in names:
            importlib.import_module(name)
        print("imported", len(names))
        try:
            import resource  # the simulation itself must hold
        except ImportError:
            print("resource unavailable")
    """)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0 and "Traceback" not in output, output
    assert "resource unavailable" in output
    assert int(output.split("imported ")[1].split()[0]) > 20, output


def test_the_exporter_runs_and_stops_without_them(tmp_path):
    config = tmp_path / "config.yml"
    config.write_text("poll: {background: false}\nmodules:\n  default:\n    username: 'C\\\\u'\n"
                      "    password_env: EEMS_PORTABILITY_PASSWORD\nservers: [ex01.contoso.com]\n")
    port = free_port()
    process = run_windows_like(f"""
        from exporter.cli import main
        raise SystemExit(main(["run", "--config.file", {str(config)!r}, "--web.listen-address", "127.0.0.1:{port}"]))
    """, env={**os.environ, "EEMS_PORTABILITY_PASSWORD": "x"})
    try:
        deadline = time.monotonic() + 30
        healthy = False
        while time.monotonic() < deadline and not healthy and process.poll() is None:
            try:
                with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                        f"http://127.0.0.1:{port}/-/healthy", timeout=2) as response:
                    healthy = response.status == 200
            except OSError:
                time.sleep(0.2)
        assert healthy, process.communicate(timeout=10)[0] if process.poll() is not None else "no answer in 30 s"
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "Traceback" not in output, output
