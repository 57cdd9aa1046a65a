"""The command line as an operator runs it: a real `python -m exporter` process, its exit code, stdout and stderr.

Expected failures must end in one line on stderr and exit code 2, never a traceback: that line is all a
systemd journal or a CI log shows.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import PASSWORD, PASSWORD_ENV, SimulatedFleet, relocate, write_keytab
from ..pki import issue, write
from .test_config import BAD, GOOD

REPO = Path(__file__).resolve().parents[2]
BUILD_KEYS = {"version", "product", "cu", "update", "released", "known", "eems_supported", "cutoffs",
              "superseded_since", "product_support_end", "servicing", "cu_servicing_end", "next_build",
              "update_path_since"}


def exporter(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, *phrases: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


# ---------------------------------------------------------------- check-config

CHECKED = ["empty file", "list at top level", "invalid yaml names line and column", "unknown module key",
           "port too high", "duration in words", "password inline",
           "password_env unset", "password_file missing", "duplicate server names", "basic over http",
           "insecure_skip_verify with ca_file", "too many servers", "organization interval shorter than poll"]
CASES = {case[0]: case[1:] for case in BAD}


@pytest.mark.parametrize("name", CHECKED)
def test_check_config_rejects_with_one_line(tmp_path, name):
    text, key_path, phrase = CASES[name]
    (tmp_path / "ca.crt").write_text("placeholder\n")
    path = tmp_path / "exporter.yml"
    path.write_text(text.replace("{tmp}", str(tmp_path)))
    result = exporter("check-config", "--config.file", str(path))
    assert_one_line_error(result, "configuration error", phrase, f"{key_path}: " if key_path else "")
    assert result.stdout == ""
    assert "hunter2" not in result.stderr and PASSWORD not in result.stderr


@pytest.mark.skipif(os.name == "nt", reason="POSIX mode bits")
def test_check_config_warns_of_a_password_file_every_user_may_read(tmp_path):
    """check-config said OK to a password file of mode 0644 (and `run` logged nothing): the warning goes to stderr,
    the verdict stays OK with exit code 0."""
    password = tmp_path / "pw"
    password.write_text("a-secret\n")
    password.chmod(0o644)
    path = tmp_path / "exporter.yml"
    path.write_text("modules: {default: {username: u, password_file: pw}}\nservers: [EX01]\n")
    result = exporter("check-config", "--config.file", str(path))
    assert result.returncode == 0 and ": OK: 1 servers" in result.stdout, result.stderr
    assert result.stderr.startswith("warning: modules.default.password_file: ") and "(mode 0644)" in result.stderr
    password.chmod(0o600)
    assert exporter("check-config", "--config.file", str(path)).stderr == ""


@pytest.mark.skipif(os.name == "nt", reason="POSIX mode bits")
def test_check_config_checks_the_web_config_and_warns_of_a_key_every_user_may_read(tmp_path):
    """check-config took no web config, so a TLS key of mode 0644 that `run` now logs went unseen until the start:
    with --web.config.file it loads the file as `run` would, prints the same warning and says OK."""
    password = tmp_path / "pw"
    password.write_text("a-secret\n")
    password.chmod(0o600)
    path = tmp_path / "exporter.yml"
    path.write_text("modules: {default: {username: u, password_file: pw}}\nservers: [EX01]\n")
    cert, key = write(tmp_path, "server", *issue("server one", None, None, ca=False, server=True))
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config: {{cert_file: {cert}, key_file: {key}}}\n")
    key.chmod(0o644)
    result = exporter("check-config", "--config.file", str(path), "--web.config.file", str(web))
    assert result.returncode == 0 and result.stdout.endswith(f"{web}: OK: TLS on, 0 basic_auth users\n"), result.stderr
    assert result.stderr == (f"warning: web config tls_server_config.key_file: {str(key)!r} can be read by every user "
                             "of this host (mode 0644): chmod o-rwx it (in Kubernetes: the Secret volume's "
                             "defaultMode: 0440, with the pod's fsGroup)\n")
    key.chmod(0o600)
    assert exporter("check-config", "--config.file", str(path), "--web.config.file", str(web)).stderr == ""
    web.write_text("tls_server_config: {cert_file: missing.crt}\n")
    assert_one_line_error(exporter("check-config", "--config.file", str(path), "--web.config.file", str(web)),
                          "web config error", "tls_server_config.cert_file")


def test_check_config_prints_the_insecure_settings_run_would_log(tmp_path):
    """check-config said only OK to `insecure_skip_verify: true`, which `run` logs as a WARNING at start: it prints
    the same warning on stderr, and the verdict stays OK with exit code 0."""
    password = tmp_path / "pw"
    password.write_text("a-secret\n")
    password.chmod(0o600)
    path = tmp_path / "exporter.yml"
    path.write_text("modules: {default: {username: u, password_file: pw, insecure_skip_verify: true}}\n"
                    "servers: [EX01]\n")
    result = exporter("check-config", "--config.file", str(path))
    assert result.returncode == 0 and ": OK: 1 servers" in result.stdout, result.stderr
    assert result.stderr == ("warning: module default: WinRM server certificate validation is OFF "
                             "(insecure_skip_verify: true)\n")


def test_check_config_names_a_krb5_conf_mit_cannot_read(tmp_path):
    """A krb5.conf with a comment after a value (MIT reads comments only on lines of their own: the value is then
    invalid) made check-config of a keytab module end in a krb5 traceback: MIT's context is made before the
    keytab is read."""
    pytest.importorskip("krb5", reason="the kerberos extra")
    (tmp_path / "krb5.conf").write_text("[libdefaults]\n    default_realm = CONTOSO.COM\n"
                                        "    dns_canonicalize_hostname = false   # as given\n")
    write_keytab(tmp_path / "svc.keytab", "svc@CONTOSO.COM")
    path = tmp_path / "exporter.yml"
    path.write_text("modules:\n  default:\n    transport: kerberos\n    username: svc@CONTOSO.COM\n"
                    "    keytab_file: svc.keytab\nservers: [ex01.contoso.com]\n")
    result = exporter("check-config", "--config.file", str(path), env={"KRB5_CONFIG": str(tmp_path / "krb5.conf")})
    assert_one_line_error(result, "configuration error", "modules.default.keytab_file", "krb5.conf")


def test_check_config_missing_file(tmp_path):
    result = exporter("check-config", "--config.file", str(tmp_path / "nope.yml"))
    assert_one_line_error(result, "does not exist", "nope.yml")


def test_check_config_ok(tmp_path):
    path = tmp_path / "exporter.yml"
    path.write_text(GOOD)
    result = exporter("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{path}: OK: 1 servers, 1 modules, organization collector off")
    assert PASSWORD not in result.stdout + result.stderr


# ---------------------------------------------------------------- build


def build_json(version: str) -> dict:
    result = exporter("build", version, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_build_json_of_a_known_build():
    data = build_json("15.2.1544.36")
    assert set(data) == BUILD_KEYS
    assert data == {
        "version": "15.2.1544.36", "product": "Exchange2019", "cu": "CU14", "update": "Oct25SU",
        "released": "2025-10-14", "known": True, "eems_supported": True,
        "cutoffs": {"2023-03": True, "2026-06": False},
        "superseded_since": "2025-12-09",  # Dec25SU
        "product_support_end": "2025-10-14",  # Exchange 2019 end of support
        # ESU Period 2 ended 2026-10-31: no 2019 CU gets updates any more; the path leads to SE.
        "servicing": "out_of_support", "cu_servicing_end": "2026-11-01",
        "next_build": {"version": "15.2.2562.53", "product": "ExchangeSE", "cu": "RTM", "update": "Sep26SUv2",
                       "released": "2026-10-02"},
        "update_path_since": "2025-12-09",
    }


def test_build_with_the_june_2026_update_passes_both_cutoffs():
    data = build_json("15.2.2562.43")
    assert data["product"] == "ExchangeSE" and data["update"] == "Jun26SU" and data["known"] is True
    assert data["cutoffs"] == {"2023-03": True, "2026-06": True}


def test_build_before_the_june_2026_update_fails_that_cutoff():
    data = build_json("15.2.2562.41")
    assert data["cutoffs"]["2026-06"] is False
    assert data["cutoffs"]["2023-03"] is True


def test_unknown_build_is_marked_unknown():
    data = build_json("15.2.1544.99")
    assert data["known"] is False
    assert (data["product"], data["cu"], data["released"]) == ("Exchange2019", "CU14", None)


def test_build_of_a_newer_exchange_version_is_unknown_and_claims_nothing():
    """It was refused ("major.minor must be 15.0, 15.1 or 15.2"), as if the version were no Exchange build; the
    text must not print "EEMS on this build: no" for a product nothing is known of."""
    data = build_json("16.0.1.2")
    assert (data["product"], data["known"], data["eems_supported"], data["cutoffs"], data["servicing"]) == (
        "unknown", False, None, {}, "unknown")
    text = exporter("build", "15.3.100.1")
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("15.3.100.1: an Exchange version newer than every product this exporter knows")
    assert "EEMS on this build" not in text.stdout and "compliant" not in text.stdout


def test_build_text_output():
    result = exporter("build", "15.2.1118.25")
    assert result.returncode == 0, result.stderr
    assert "15.2.1118.25: Exchange2019 CU12" in result.stdout
    assert "2023-03 certificate cutoff: NOT compliant" in result.stdout


@pytest.mark.parametrize(("version", "phrase"), [
    ("15.2", "not a four-part Exchange build"),
    ("abc", "not a four-part Exchange build"),
    ("15.2.1544.4.1", "not a four-part Exchange build"),
    ("14.3.123.4", "major.minor must be 15.0, 15.1 or 15.2"),
    ("16.0.70000.1", "a part above 65535"),
    ("", "not a four-part Exchange build"),
])
def test_bad_build_versions(version, phrase):
    result = exporter("build", version)
    assert_one_line_error(result, phrase, repr(version))
    assert result.stdout == ""


# ---------------------------------------------------------------- poll

SCENARIO = {
    "servers": [
        {"name": "EX19-CU14", "address": "127.0.0.1", "build": "15.2.1544.36"},
        {"name": "EX-SE01", "address": "127.0.0.1", "build": "15.2.2562.53"},
    ],
}


@pytest.fixture(scope="module")
def fleet_config(tmp_path_factory):
    with SimulatedFleet(relocate(SCENARIO)) as fleet:
        path = tmp_path_factory.mktemp("cli") / "exporter.yml"
        path.write_text(fleet.config_text())
        yield fleet, path


def test_poll_prints_the_interpreted_facts(fleet_config):
    fleet, path = fleet_config
    before = fleet.fleet.request_count("EX19-CU14")
    result = exporter("poll", "--config.file", str(path), "EX19-CU14", env={PASSWORD_ENV: PASSWORD})
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    data = json.loads(result.stdout)
    assert data["name"] == "EX19-CU14"
    assert data["outcome"]["success"] is True and data["outcome"]["error_reason"] is None
    state = data["state"]
    assert state["build"]["version"] == "15.2.1544.36"
    assert state["build"]["cutoffs"] == {"2023-03": True, "2026-06": False}
    assert state["eems_supported"] is True
    assert state["service_state"] == "running"
    assert state["eems"]["last_error_reason"] == "unknown_issuer"  # CU14 Oct25SU fails the June 2026 cutoff
    assert fleet.fleet.request_count("EX19-CU14") > before
    assert fleet.fleet.request_count("EX-SE01") == 0
    assert PASSWORD not in result.stdout + result.stderr


def test_poll_with_the_wrong_password_fails_with_a_reason(fleet_config):
    _, path = fleet_config
    result = exporter("poll", "--config.file", str(path), "EX-SE01", env={PASSWORD_ENV: "not-the-password"})
    assert result.returncode == 1, result.stderr
    data = json.loads(result.stdout)
    assert data["outcome"]["success"] is False
    assert data["outcome"]["error_reason"] == "auth_failed"
    assert "Traceback" not in result.stderr


def test_poll_unknown_server(fleet_config):
    fleet, path = fleet_config
    result = exporter("poll", "--config.file", str(path), "EX-NOPE", env={PASSWORD_ENV: PASSWORD})
    assert_one_line_error(result, "'EX-NOPE' is not in")
    assert result.stdout == ""


def test_poll_without_the_password_variable(fleet_config):
    _, path = fleet_config
    env = {k: v for k, v in os.environ.items() if k != PASSWORD_ENV}
    result = subprocess.run([sys.executable, "-m", "exporter", "poll", "--config.file", str(path), "EX-SE01"],
                            capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert_one_line_error(result, "password_env: the environment variable it names is not set or empty")


# ---------------------------------------------------------------- run


def test_run_on_a_port_in_use(tmp_path):
    path = tmp_path / "exporter.yml"
    path.write_text(GOOD)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = exporter("run", "--config.file", str(path), "--web.listen-address", f"127.0.0.1:{port}",
                          timeout=30)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("exchange-eems-exporter:")]
    assert errors == [f"exchange-eems-exporter: cannot listen on 127.0.0.1:{port}: Address already in use"]


def test_run_with_a_bad_config_does_not_start(tmp_path):
    path = tmp_path / "exporter.yml"
    path.write_text(GOOD + "poll: {interval: 1s}\n")
    result = exporter("run", "--config.file", str(path), "--web.listen-address", "127.0.0.1:0", timeout=30)
    assert_one_line_error(result, "poll.interval: must be at least 10s")


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.1:99999", "127.0.0.1:http"])
def test_run_with_a_bad_listen_address(tmp_path, address):
    path = tmp_path / "exporter.yml"
    path.write_text(GOOD)
    result = exporter("run", "--config.file", str(path), "--web.listen-address", address, timeout=30)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "expected [host]:port" in result.stderr


@pytest.mark.parametrize("module, warning", [
    ("insecure_skip_verify: true", "certificate validation is OFF"),
    ("{transport: basic, scheme: http, allow_basic_over_http: true}", "clear text"),
    ("{transport: credssp, scheme: http, allow_credssp_ntlm_over_http: true}", "nothing verifies"),
])
def test_insecure_transport_settings_are_logged_at_start(tmp_path, module, warning):
    settings = {"insecure_skip_verify: true": "    insecure_skip_verify: true\n",
                "{transport: basic, scheme: http, allow_basic_over_http: true}":
                    "    transport: basic\n    scheme: http\n    allow_basic_over_http: true\n",
                "{transport: credssp, scheme: http, allow_credssp_ntlm_over_http: true}":
                    "    transport: credssp\n    scheme: http\n    allow_credssp_ntlm_over_http: true\n"}[module]
    path = tmp_path / "exporter.yml"
    path.write_text(f"modules:\n  default:\n    username: 'EXCH\\svc'\n    password_env: {PASSWORD_ENV}\n"
                    f"{settings}servers: [127.0.0.1]\n")
    with socket.socket() as busy:  # the warning comes before the listener: a busy port ends the run at once
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = exporter("run", "--config.file", str(path), "--web.listen-address",
                          f"127.0.0.1:{busy.getsockname()[1]}", env={PASSWORD_ENV: PASSWORD}, timeout=30)
    assert any("level=WARNING" in line and warning in line for line in result.stderr.splitlines()), result.stderr
    assert PASSWORD not in result.stderr


def test_a_reader_that_leaves_gets_no_traceback():
    """`exchange-eems-exporter build ... | head -0`: the reader closes the pipe before the output is written. The
    exporter printed a BrokenPipeError traceback and exited 1 (`poll ... | head` too); a shell tool ends quietly,
    as SIGPIPE would end it."""
    process = subprocess.Popen([sys.executable, "-m", "exporter", "build", "15.2.1544.36", "--json"], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # before the interpreter has even started: every write meets a closed pipe
    _, stderr = process.communicate(timeout=60)
    assert stderr.decode() == "" and process.returncode == 141, (process.returncode, stderr.decode())


# ---------------------------------------------------------------- hostile configuration files (round 3)

HOSTILE_CONFIGS = [
    # A mapping or a list as a key (`? [a, b]`, or an alias to one): the duplicate-key check put it in a set.
    ("complex key", "? [a, b]\n: 1\n", "", "not valid YAML at line 1, column 3: found unhashable key"),
    ("alias to a list as a key", "x: &x [a]\nmodules: {*x : 1}\n", "", "found unhashable key"),
    # A key with a newline or an escape sequence (double-quoted YAML escapes) was printed raw: two lines, colors.
    ("newline and escape in a key", '"poll\\n\\e[31mx": 1\n', "poll\\n\\x1b[31mx", "unknown key"),
    ("newline in a module name", 'modules:\n  "a\\nb": {}\n', "modules.a\\nb", "module names may use"),
]


@pytest.mark.parametrize("text, key_path, phrase", [case[1:] for case in HOSTILE_CONFIGS],
                         ids=[case[0] for case in HOSTILE_CONFIGS])
def test_check_config_of_a_hostile_file_is_one_clean_line(tmp_path, text, key_path, phrase):
    """Before: a complex key ended check-config in `TypeError: unhashable type` (a traceback; a reload said only
    "unexpected TypeError"), and a key's control characters went raw to the terminal and the log."""
    path = tmp_path / "exporter.yml"
    path.write_text(text)
    result = exporter("check-config", "--config.file", str(path))
    assert_one_line_error(result, "configuration error", phrase, f"{key_path}: " if key_path else "")
    assert "\x1b" not in result.stderr


def test_check_config_of_a_huge_file_is_refused_by_its_size(tmp_path):
    """Before: read and parsed whole, however big (300 MB of comment: 107 s and 640 MB of memory), also at every
    reload; a file just over the bound was accepted."""
    from exporter.config import MAX_CONFIG_BYTES

    path = tmp_path / "exporter.yml"
    good = GOOD.encode()
    path.write_bytes(good + b"#" * (MAX_CONFIG_BYTES + 1 - len(good)))
    result = exporter("check-config", "--config.file", str(path), env={PASSWORD_ENV: PASSWORD})
    assert_one_line_error(result, "configuration error", f"larger than {MAX_CONFIG_BYTES} bytes", "exporter.yml")


def test_poll_by_a_short_name_says_how_the_server_is_configured(tmp_path):
    """The README's `poll EX01` against its own `servers: [ex01.contoso.com]` said only "not in": name the server
    as the configuration lists it."""
    path = tmp_path / "config.yml"
    path.write_text("modules: {default: {username: u, password_env: EXCHANGE_TEST_PASSWORD}}\n"
                    "servers: [ex01.contoso.com]\n")
    for command in ("poll", "diagnose"):
        result = exporter(command, "--config.file", str(path), "EX01", env={"EXCHANGE_TEST_PASSWORD": "p"})
        assert_one_line_error(result, "'EX01' is not in")
        assert "'ex01.contoso.com'" in result.stderr, result.stderr


def test_every_configuration_key_the_help_names_exists():
    """`windows-endpoint --help` said its proxy was "as poll.endpoint_proxy", a key that does not exist (the
    per-server key is servers[].endpoint_proxy): an admin who set it got a configuration error."""
    import argparse
    import re
    from pathlib import Path

    from exporter import config
    from exporter.cli import build_parser

    keys = {"poll": config.POLL_KEYS, "limits": config.LIMITS_KEYS, "servers[]": config.SERVER_KEYS,
            "organization": config.ORGANIZATION_KEYS, "modules.NAME": config.module_keys(Path("."))}
    known = {f"{section}.{key.name}" for section, section_keys in keys.items() for key in section_keys}
    parser = build_parser()
    texts = [parser.format_help()]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            texts += [sub.format_help() for sub in action.choices.values()]
    named = {m for text in texts for m in re.findall(
        r"\b((?:poll|limits|organization|servers\[\]|modules\.NAME)\.[a-z_]+)", " ".join(text.split()))}
    assert named, "the help names configuration keys"
    assert named <= known, sorted(named - known)


def test_the_top_level_help_names_every_command():
    """`exchange-eems-exporter --help` lists the commands in its description; `windows-endpoint`, the command the
    README's JEA path starts with, was missing from it."""
    from exporter.cli import build_parser

    parser = build_parser()
    (commands,) = re.findall(r"\{([a-z,-]+)\}", parser.format_usage())  # argparse's own list: {run,check-config,...}
    missing = [name for name in commands.split(",") if f"`{name}" not in parser.description]
    assert "windows-endpoint" in commands.split(",") and missing == []
