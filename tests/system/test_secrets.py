"""The WinRM password never leaves the exporter: not in logs, HTTP bodies or headers, CLI output or error text.

The exporter runs as a real process at debug log level against a simulated fleet in which every failure the
WinRM client can meet happens at least once, because error paths are where libraries echo requests and
credentials. Everything it writes is then searched for the password in every form that could carry it:
plain, UTF-16LE (NTLM, CredSSP), base64 at any alignment (Basic auth, encoded commands), URL- and
HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import http.client
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
import yaml

from ..conftest import PASSWORD, PASSWORD_ENV, USERNAME, SimulatedFleet, relocate, stop_process

ROOT = Path(__file__).resolve().parents[2]
BUILD = "15.2.2562.53"
STARTUP_SECONDS = 10
READY_SECONDS = 35

# server name -> (module, scenario settings, reasons the failed poll may report; None = must succeed)
FLEET = {
    "OK-HTTP": ("ntlm-http", {}, None),
    "OK-HTTPS": ("ntlm-https", {"scheme": "https"}, None),
    "OK-BASIC": ("basic-https", {"scheme": "https"}, None),
    "REFUSED": ("ntlm-http", {"faults": {"refuse_connections": True}}, {"connection_refused"}),
    "RESET": ("ntlm-http", {"faults": {"reset_mid_response": True}}, {"connection_error"}),
    "HANG": ("ntlm-http", {"faults": {"hang": True}}, {"timeout"}),
    "UNAUTH": ("ntlm-http", {"faults": {"unauthorized": True}}, {"auth_failed"}),
    "UNAUTH-BASIC": ("basic-https", {"scheme": "https", "faults": {"unauthorized": True}}, {"auth_failed"}),
    "DENIED": ("ntlm-https", {"scheme": "https", "faults": {"fault_code": 5}}, {"access_denied"}),
    "QUOTA": ("ntlm-http", {"faults": {"fault_code": 2150859173}}, {"quota_exceeded"}),
    "GARBAGE": ("ntlm-http", {"output_faults": {"garbage_output": True}}, {"bad_output"}),
    "TRUNCATED": ("ntlm-http", {"output_faults": {"truncated_output": True}}, {"truncated_output"}),
    "OVERSIZED": ("ntlm-http", {"output_faults": {"oversized_output": 200_000}}, {"output_too_large"}),
    "EXIT1": ("ntlm-http", {"output_faults": {"exit_code": 1}}, {"script_failed"}),
    "SLOW": ("ntlm-http", {"output_faults": {"script_runtime": 30}}, {"timeout"}),
}


# ---------------------------------------------------------------- what a leak looks like


def _base64_needles(data: bytes) -> set[bytes]:
    """The base64 characters that encode `data` whatever precedes it (3 alignments), minus the mixed edges."""
    needles = set()
    for offset in range(3):
        encoded = base64.b64encode(bytes(offset) + data)
        start = 4 if offset else 0
        end = len(encoded) - (4 if (offset + len(data)) % 3 else 0)
        needles.add(encoded[start:end])
    return needles


def leak_forms(secret: str) -> dict[bytes, str]:
    forms = {
        secret.encode(): "plain",
        secret.encode("utf-16-le"): "UTF-16LE",
        quote(secret, safe="").encode(): "URL-encoded",
        quote_plus(secret).encode(): "form-encoded",
        html.escape(secret).encode(): "HTML-escaped",
    }
    for needle in _base64_needles(secret.encode()):
        forms[needle] = "base64"
    for needle in _base64_needles(secret.encode("utf-16-le")):
        forms[needle] = "base64 of UTF-16LE"
    return forms


LEAK_FORMS = leak_forms(PASSWORD)


def assert_no_secret(outputs: dict[str, bytes]) -> None:
    leaks = [f"{where}: {form} password at byte {data.find(needle)}: "
             f"...{data[max(0, data.find(needle) - 120):data.find(needle)]!r}..."
             for where, data in outputs.items() for needle, form in LEAK_FORMS.items() if needle in data]
    assert not leaks, "the password leaked:\n" + "\n".join(leaks)


def test_the_search_finds_every_form():
    """The search above can fail: each encoding a library might use is recognised inside other text."""
    samples = {
        "plain": f"password={PASSWORD}&x".encode(),
        "basic": b"Authorization: Basic " + base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()),
        "utf16": b"\x00junk" + PASSWORD.encode("utf-16-le"),
        "encoded command": base64.b64encode(f"$c='{PASSWORD}'".encode("utf-16-le")),
        "url": f"GET /probe?target={quote(PASSWORD)}".encode(),
        "html": f"<td>{html.escape(PASSWORD)}</td>".encode(),
    }
    for name, data in samples.items():
        with pytest.raises(AssertionError, match="the password leaked"):
            assert_no_secret({name: data})
    half = len(PASSWORD) // 2
    assert_no_secret({"near miss": PASSWORD[:-1].encode() + b"?" + base64.b64encode(PASSWORD[:half].encode())})


# ---------------------------------------------------------------- the fleet and the exporter


def scenario() -> dict:
    servers = [{"name": name, "address": "127.0.0.1", "build": BUILD, **settings}
               for name, (_, settings, _) in FLEET.items()]
    return relocate({"organization": {"server": "OK-HTTP", "double_hop": True}, "servers": servers})


def exporter_config(fleet: SimulatedFleet, password_file: Path) -> dict:
    timeouts = {"operation_timeout": "2s", "read_timeout": "4s"}
    return {
        "poll": {"interval": "10s", "timeout": "5s", "concurrency": 16},
        "limits": {"max_response_bytes": 65536},
        "modules": {
            "ntlm-http": {"username": USERNAME, "password_env": PASSWORD_ENV, "scheme": "http", **timeouts},
            "ntlm-https": {"username": USERNAME, "password_file": str(password_file), "scheme": "https",
                           "ca_file": str(fleet.fleet.ca_file), **timeouts},
            "basic-https": {"transport": "basic", "username": USERNAME, "password_env": PASSWORD_ENV,
                            "scheme": "https", "ca_file": str(fleet.fleet.ca_file), **timeouts},
        },
        "servers": [{"name": h.name, "address": h.address, "port": h.port, "module": FLEET[h.name][0]}
                    for h in fleet.scenario.hosts],
        "organization": {"server": "OK-HTTP"},
    }


def exporter_env() -> dict[str, str]:
    return {**os.environ, PASSWORD_ENV: PASSWORD, "PYTHONPATH": str(ROOT)}


def run_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "exporter", *args], cwd=ROOT, env=exporter_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen, timeout: float = 30) -> tuple[int, bytes]:
    stdout, stderr = proc.communicate(timeout=timeout)
    return proc.returncode, stdout + b"\n--- stderr ---\n" + stderr


class Exporter:
    """`exchange-eems-exporter run` in a subprocess, its output in files, on a port the OS picks."""

    def __init__(self, config_file: Path, workdir: Path):
        self.stdout_file = workdir / "exporter.stdout"
        self.stderr_file = workdir / "exporter.stderr"
        self.config_file = config_file
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with self.stdout_file.open("wb") as out, self.stderr_file.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "exporter", "run", "--config.file", str(self.config_file),
                 "--web.listen-address", "127.0.0.1:0", "--log.level", "debug"],
                cwd=ROOT, env=exporter_env(), stdout=out, stderr=err)
        deadline = time.monotonic() + STARTUP_SECONDS
        while self.port is None:
            match = re.search(rb"listening on 127\.0\.0\.1:(\d+)", self.stderr_file.read_bytes())
            if match:
                self.port = int(match[1])
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the exporter did not start (exit {self.proc.poll()}):\n{self.log()[-3000:]}")
            else:
                time.sleep(0.1)

    def log(self) -> str:
        return (self.stdout_file.read_bytes() + self.stderr_file.read_bytes()).decode(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_process(self.proc, 10)

    def request(self, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """One request; returns the status and a transcript of the whole response (status line, headers, body)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            connection.request(method, path, headers=headers or {})
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        head = f"{method} {path}\n{response.status} {response.reason}\n{response.msg}".encode()
        return response.status, head + b"\n" + body

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_SECONDS
        while self.request("GET", "/-/ready")[0] != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"not every server was polled within {READY_SECONDS}s:\n{self.log()[-3000:]}")
            time.sleep(0.5)


def outcomes(metrics: str) -> dict[str, tuple[int | None, set[str]]]:
    """server -> (exchange_up, failure reasons) from the text exposition."""
    up: dict[str, int] = {}
    reasons: dict[str, set[str]] = {}
    for name, block, value in re.findall(r"^(exchange_up|exchange_collector_error)\{([^}]*)\} (\S+)$", metrics, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', block))
        if name == "exchange_up":
            up[labels["server"]] = int(float(value))
        elif labels.get("collector") == "server" and float(value) == 1:
            reasons.setdefault(labels["server"], set()).add(labels["reason"])
    return {server: (up.get(server), reasons.get(server, set())) for server in up.keys() | reasons.keys()}


# ---------------------------------------------------------------- the test


def test_no_output_of_the_exporter_contains_the_password(tmp_path):
    password_file = tmp_path / "winrm-password"
    password_file.write_text(PASSWORD + "\n")
    outputs: dict[str, bytes] = {}

    with SimulatedFleet(scenario()) as fleet:
        config = exporter_config(fleet, password_file)
        config_file = tmp_path / "config.yml"
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        exporter = Exporter(config_file, tmp_path)
        try:
            exporter.start()
            polls = {name: run_cli("poll", "--config.file", str(config_file), "--log.level", "debug", name)
                     for name in ("OK-BASIC", "UNAUTH", "UNAUTH-BASIC", "GARBAGE", "EXIT1")}
            exporter.wait_ready()

            status, transcript = exporter.request("GET", "/metrics")
            outputs["GET /metrics"] = transcript
            assert status == 200, transcript[-500:]
            seen = outcomes(transcript.decode())
            for name, (_, _, reasons) in FLEET.items():
                up, failures = seen.get(name, (None, set()))
                if reasons is None:
                    assert (up, failures) == (1, set()), f"{name} should have been polled successfully"
                else:
                    assert up == 0 and failures and failures <= reasons, \
                        f"{name}: expected a failure in {sorted(reasons)}, got up={up} {sorted(failures)}"

            requests = [("GET", "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"}),
                        ("GET", "/", {}), ("HEAD", "/metrics", {}), ("GET", "/-/healthy", {}),
                        ("GET", "/nowhere", {}), ("PUT", "/-/reload", {}),
                        ("GET", "/probe?target=EX-UNKNOWN", {}), ("GET", "/probe", {}),
                        ("GET", "/probe?target=OK-HTTP&module=no-such-module", {}),
                        ("GET", "/probe?target=OK-HTTP", {"X-Prometheus-Scrape-Timeout-Seconds": "soon"})]
            requests += [("GET", f"/probe?target={name}", {"X-Prometheus-Scrape-Timeout-Seconds": "6"})
                         for name in FLEET]
            requests += [("GET", f"/probe?target=OK-HTTP&module={module}", {}) for module in config["modules"]]
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(lambda r: exporter.request(*r), requests))
            for (method, path, _), (status, transcript) in zip(requests, answers):
                outputs[f"{method} {path}"] = transcript
            statuses = {f"{m} {p}": s for (m, p, _), (s, _) in zip(requests, answers)}
            assert statuses["GET /probe?target=EX-UNKNOWN"] == 400
            assert statuses["GET /probe?target=OK-HTTP&module=no-such-module"] == 400
            assert statuses["GET /probe?target=OK-BASIC"] == 200

            broken = broken_configs(config, tmp_path)
            for label, text in broken.items():
                config_file.write_text(text)
                status, transcript = exporter.request("POST", "/-/reload")
                outputs[f"POST /-/reload ({label})"] = transcript
                assert status == 500, f"reload with {label} should fail: {transcript[-300:]!r}"
            config_file.write_text(yaml.safe_dump(config, sort_keys=False))
            status, transcript = exporter.request("POST", "/-/reload")
            outputs["POST /-/reload (good again)"] = transcript
            assert status == 200, transcript

            for name, proc in polls.items():
                code, output = finish(proc)
                outputs[f"poll {name}"] = output
                assert code == (0 if FLEET[name][2] is None else 1), output.decode(errors="replace")[-2000:]
        finally:
            exporter.stop()

    outputs["exporter stdout"] = exporter.stdout_file.read_bytes()
    outputs["exporter stderr"] = exporter.stderr_file.read_bytes()
    log = outputs["exporter stderr"].decode(errors="replace")
    assert "level=DEBUG" in log and "reload failed, the running configuration is kept" in log, log[-2000:]
    assert_no_secret(outputs)


def broken_configs(good: dict, tmp_path: Path) -> dict[str, str]:
    """Configurations that fail to load in ways whose error text could carry the password."""

    def with_module(**change) -> str:
        modules = {**good["modules"], "ntlm-http": {**good["modules"]["ntlm-http"], **change}}
        return yaml.safe_dump({**good, "modules": modules}, sort_keys=False)

    empty = tmp_path / "empty-password"
    empty.write_bytes(b"")
    not_utf8 = tmp_path / "latin1-password"
    not_utf8.write_bytes(PASSWORD.encode() + b"\xff\n")
    return {
        "inline password": with_module(password=PASSWORD),
        "YAML syntax error next to the password": f"modules:\n  x: {{password: '{PASSWORD}'\n  - [\n",
        "unset password_env": with_module(password_env="EEMS_TEST_UNSET_VARIABLE"),
        "missing password_file": with_module(password_env=None, password_file=str(tmp_path / "missing")),
        "empty password_file": with_module(password_env=None, password_file=str(empty)),
        "password_file not UTF-8": with_module(password_env=None, password_file=str(not_utf8)),
    }


def test_check_config_errors_do_not_echo_the_password(tmp_path):
    """`check-config` prints before any redaction is set up, so its error text must be clean on its own."""
    good_file = tmp_path / "good-password"
    good_file.write_text(PASSWORD + "\n")
    not_utf8 = tmp_path / "latin1-password"
    not_utf8.write_bytes(PASSWORD.encode() + b"\xff\n")
    empty = tmp_path / "empty-password"
    empty.write_bytes(b"")
    a_directory = tmp_path / "a-directory"
    a_directory.mkdir()

    def config(**module) -> str:
        base = {"username": USERNAME, "scheme": "http", "operation_timeout": "2s", "read_timeout": "4s"}
        return yaml.safe_dump({"modules": {"default": {**base, **module}}, "servers": ["ex01.contoso.com"]})

    cases = {
        "good password_file": (0, config(password_file=str(good_file))),
        "missing password_file": (2, config(password_file=str(tmp_path / "missing"))),
        "empty password_file": (2, config(password_file=str(empty))),
        "password_file not UTF-8": (2, config(password_file=str(not_utf8))),
        "password_file is a directory": (2, config(password_file=str(a_directory))),
        "inline password": (2, config(password=PASSWORD)),
        "both password_env and password_file": (2, config(password_env=PASSWORD_ENV, password_file=str(good_file))),
        "YAML error on the password's line": (2, f"modules:\n  default: {{password: {PASSWORD}, [\n"),
    }
    running = {}
    for index, (label, (expected, text)) in enumerate(cases.items()):
        config_file = tmp_path / f"config-{index}.yml"
        config_file.write_text(text)
        running[label] = (expected, run_cli("check-config", "--config.file", str(config_file)))
    outputs = {}
    for label, (expected, proc) in running.items():
        code, output = finish(proc)
        outputs[f"check-config ({label})"] = output
        assert code == expected, f"{label}: exit {code}: {output.decode(errors='replace')}"
        if expected:
            assert b"Traceback" not in output and b"exchange-eems-exporter: configuration error: " in output, \
                f"{label}: no clear error: {output.decode(errors='replace')}"
    assert_no_secret(outputs)


def test_a_password_pasted_where_its_name_belongs_is_not_echoed(tmp_path):
    """A common slip: the password itself written as password_env or password_file. Echoing the value back
    in the error puts it in pod logs, CI output and the /-/reload response, where no redaction applies."""
    outputs = {}
    running = {}
    for key in ("password_env", "password_file"):
        config_file = tmp_path / f"{key}.yml"
        config_file.write_text(yaml.safe_dump({"modules": {"default": {"username": USERNAME, key: PASSWORD}},
                                               "servers": ["ex01.contoso.com"]}))
        running[key] = run_cli("check-config", "--config.file", str(config_file))
    for key, proc in running.items():
        code, output = finish(proc)
        outputs[f"check-config ({key}: <the password>)"] = output
        assert code == 2 and f"modules.default.{key}".encode() in output, output.decode(errors="replace")
    assert_no_secret(outputs)
