"""What a compromised Exchange server or a hostile client costs the exporter (issue 10), one attack at a time.

The attacker runs in its own process (its own memory and descriptors); the exporter runs here, so this
process's peak RSS is the exporter's alone. For each server attack: one poll of the attacking server while
/metrics is scraped every 0.2 s. Prints one JSON object per attack: the poll's seconds and reason, the slowest
/metrics, the peak RSS growth, and how many MiB the attacker got the exporter to accept. `slowloris` opens
N trickling connections to the exporter's port (open-file limit 1024) while a visitor scrapes /metrics.

    python bench/hostile.py                    # every attack, about 4 minutes
    python bench/hostile.py nested_xml drip    # some of them

The round-2 cases in BEFORE_AFTER (diagnose, the debug log, catalog update) run the real command from the code
before their fixes (commit BEFORE, by `git archive`) and from this tree, and print both figures.

The client attacks of round 2 (issues 20, 22, 24; `python bench/hostile.py clients`, or one by name) run the
exporter as a separate `run` process of any checkout, so the same harness measures the code before and
after a fix:

    python bench/hostile.py clients                                  # this checkout
    python bench/hostile.py --exporter-root ../old-checkout clients  # another one (git archive of a commit)
"""

from __future__ import annotations

import contextlib
import http.client
import json
import multiprocessing
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from exporter.catalog import Catalog  # noqa: E402
from exporter.config import load_config_text  # noqa: E402
from exporter.exporter import Exporter  # noqa: E402
from exporter.web import serve  # noqa: E402
from tests.system.hostile_server import HostileServer, Output  # noqa: E402

import hostile_clients as clients  # noqa: E402  (bench/hostile_clients.py)

USER, PASSWORD, PASSWORD_ENV = "EXCH\\svc_bench", "bench-Passw0rd-not-a-secret", "EEMS_BENCH_PASSWORD"
# A log line of one pair and then 2^19 items separated by ';' (1 MiB), which the log reader appends to the pair's
# value: copied whole at every item, it took seconds of CPU, holding the GIL from every other poll and scrape.
SEMICOLON_LINE = "2026-11-26T11:00:00Z,FetchMitigation,S:LogLevel=Error;S:Message=a" + ";b" * (1 << 19)
SERVER_ATTACKS = {  # name -> (attack, server options, configuration sections beyond the bench's own)
    "quadratic_clixml": ("none", {"output": lambda _: Output(stderr=b"#< CLIXML\r\n" + b'<S S="Error">' * 16_000,
                                                            exit_code=1)}, {}),
    "drip": ("drip", {}, {}),
    "drip_receive": ("drip_receive", {"output": lambda _: Output(stdout=b'{"schema": 1}' + b" " * 200)}, {}),
    "huge_handshake_http": ("huge_handshake", {}, {}),
    "huge_handshake_https": ("huge_handshake", {"scheme": "https"}, {}),
    "nested_xml": ("nested_xml", {}, {"limits": {"max_response_bytes": 4 << 20}}),
    "bad_events": ("none", {"output": lambda _: Output(stdout=b'{"schema": 1, "events": [' + b"1," * 3_500_000
                                                       + b"1]}")}, {"limits": {"max_response_bytes": 16 << 20}}),
    "semicolon_log": ("none", {"output": lambda _: Output(stdout=json.dumps(
        {"schema": 1, "logs": [{"tail": SEMICOLON_LINE + "\n"}]}).encode())},
        {"poll": {"log_tail_bytes": 2 << 20}, "limits": {"max_response_bytes": 16 << 20}}),
    # issue 20 finding 1 and issue 24 finding 18 (round 2)
    "entity_expansion": ("entity_expansion", {"output": lambda _: Output(stdout=b'{"schema": 1}')}, {}),
    "endless_continue": ("endless_continue", {"output": lambda _: Output(stdout=b'{"schema": 1}')}, {}),
}
SLOWLORIS_CONNECTIONS = 1100
SLOWLORIS = r'''
import json, socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
socks, failed = [], 0
for _ in range(n):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
        s.settimeout(None)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        socks.append(s)
    except OSError:
        failed += 1
def held():
    count = 0
    for s in socks:
        try:
            count += s.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) != b""
        except BlockingIOError:
            count += 1
        except OSError:
            pass
    return count
started, report = time.monotonic(), {"opened": len(socks), "failed_to_open": failed}
while time.monotonic() - started < 14:
    for s in socks:
        try:
            s.send(b"X")
        except OSError:
            pass
    second = int(time.monotonic() - started)
    if second in (2, 12):
        report[f"held_after_{second}s"] = held()
    time.sleep(1)
print(json.dumps(report))
'''


def _rss_mib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) // 1024 for line in status if line.startswith("VmRSS:"))


def _attacker(name: str, ready, stop, sent) -> None:
    attack, options, _ = SERVER_ATTACKS[name]
    with HostileServer(attack, {USER: PASSWORD}, **options) as server:
        ready.put((server.port, server.scheme, str(server.ca_file) if server.ca_file else None))
        stop.wait()
        sent.put(server.bytes_sent)


def _scrape(port: int, source: str = "127.0.0.1") -> float:
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120, source_address=(source, 0))
    connection.request("GET", "/metrics")
    connection.getresponse().read()
    connection.close()
    return time.monotonic() - started


def server_attack(name: str) -> dict:
    context = multiprocessing.get_context("fork")  # before this process starts threads of its own
    ready, stop, sent = context.Queue(), context.Event(), context.Queue()
    child = context.Process(target=_attacker, args=(name, ready, stop, sent))
    child.start()
    port, scheme, ca_file = ready.get(timeout=30)
    module = {"username": USER, "password_env": PASSWORD_ENV, "scheme": scheme, "operation_timeout": "3s",
              "read_timeout": "4s", **({"ca_file": ca_file} if ca_file else {})}
    doc = {"poll": {"interval": "60s", "timeout": "5s"}, "modules": {"m": module},
           "servers": [{"name": "VICTIM", "address": "127.0.0.1", "port": port}]}
    for section, values in SERVER_ATTACKS[name][2].items():
        doc.setdefault(section, {}).update(values)
    exporter = Exporter(load_config_text(yaml.safe_dump(doc), Path(".")), Catalog.load())
    http_server = serve(exporter, "127.0.0.1", 0, None)
    before = _rss_mib()
    result: dict = {}

    def poll() -> None:
        started = time.monotonic()
        outcome = exporter.poller.poll_server("VICTIM").outcome
        result.update(poll_seconds=round(time.monotonic() - started, 1), reason=outcome.error_reason)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    slowest = 0.0
    while thread.is_alive():
        slowest = max(slowest, _scrape(http_server.server_address[1]))
        time.sleep(0.2)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    stop.set()
    accepted = sent.get(timeout=30)
    child.join(10)
    http_server.shutdown()
    http_server.server_close()
    return {"attack": name, **result, "slowest_metrics_seconds": round(slowest, 2),
            "peak_rss_growth_mib": peak - before, "attacker_bytes_accepted_mib": round(accepted / 2**20, 1)}


def slowloris() -> dict:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    exporter = Exporter(load_config_text(yaml.safe_dump({"modules": {"m": {"username": USER, "password_env":
                                                                         PASSWORD_ENV}}, "servers": ["ex01"]}),
                                         Path(".")), Catalog.load())
    http_server = serve(exporter, "127.0.0.1", 0, None)
    port = http_server.server_address[1]
    attacker = subprocess.Popen([sys.executable, "-c", SLOWLORIS, str(port), str(SLOWLORIS_CONNECTIONS)],
                                stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    slowest, failures, scrapes = 0.0, 0, 0
    while attacker.poll() is None:
        try:
            slowest = max(slowest, _scrape(port, source="127.0.0.2"))
        except OSError:
            failures += 1
        scrapes += 1
        time.sleep(0.2)
    report = json.loads(attacker.stdout.read())
    return {"attack": "slowloris", "connections": SLOWLORIS_CONNECTIONS, **report, "visitor_scrapes": scrapes,
            "visitor_failures": failures, "visitor_slowest_metrics_seconds": round(slowest, 2)}


# ---------------------------------------------------------------- round 2: diagnose, debug log, catalog update (misc)
# Each case runs the real command from two source trees, the code before the round-2 fixes (BEFORE, extracted
# with `git archive`) and this one, against the same hostile party, and reports both.

BEFORE = "909346d5b9bd9a01688928e70b1645c3c14b602b"  # main before issues 20.6, 20.8, 20.9, 22.13, 24.16, 24.19
COMMAND_CAP_SECONDS = 45  # a command still running then is stopped and reported as such


@contextlib.contextmanager
def _trees():
    """{"before": tree or why not, "after": this tree}; the extracted tree is removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="eems-bench-before-") as target:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", BEFORE], capture_output=True)
        if archive.returncode != 0:
            yield {"before": f"not measured: git archive {BEFORE[:7]} failed: {archive.stderr.decode().strip()[:80]}",
                   "after": REPO}
            return
        subprocess.run(["tar", "-x", "-C", target], input=archive.stdout, check=True)
        yield {"before": Path(target), "after": REPO}


def _command(tree: Path, *args: str, env: dict | None = None, umask: int | None = None) -> dict:
    """`exchange-eems-exporter ARGS` from `tree`: exit code, seconds, stdout, stderr (None while still running)."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "exporter", *args], cwd=tree, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(tree), **(env or {})},
                            preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)
    try:
        out, err = proc.communicate(timeout=COMMAND_CAP_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return {"exit": None, "seconds": f"still running after {COMMAND_CAP_SECONDS} s", "stdout": out.decode(),
                "stderr": err.decode(errors="replace")}
    return {"exit": proc.returncode, "seconds": round(time.monotonic() - started, 1), "stdout": out.decode(),
            "stderr": err.decode(errors="replace")}


def _before_and_after(name: str, measure) -> dict:
    result: dict = {"attack": name, "before_commit": BEFORE[:7]}
    with _trees() as trees:
        for label, tree in trees.items():
            result[label] = measure(tree) if isinstance(tree, Path) else tree
    return result


def _workdir():
    return tempfile.TemporaryDirectory(prefix="eems-bench-")


def diagnose_password_forms() -> dict:
    """20.6: the password, in 7 forms, in a simulated server's EEMS log and events; how many forms `diagnose`
    prints, without and with --redact-names (where a cut host name hid the rest of it)."""
    from tests.system import test_hostile as t  # noqa: PLC0415 - the leaky server and the forms, as the test has them

    forms = t._leaky_forms(t.LEAKY_PASSWORD)
    utf16_name = "\x00".join(t.LEAKY_SERVER)

    def shown(form: str) -> set[str]:
        """The form as a report line shows it (NULs as \\x00), whole or with the host name cut out of it."""
        cut = form.replace(t.LEAKY_SERVER, "<host>").replace(utf16_name, "<host>")
        return {v for f in (form, cut) for v in (f, f.replace("\x00", "\\x00"))}

    def measure(tree: Path) -> dict:
        found = {}
        with t._leaky_fleet() as fleet, _workdir() as work:
            workdir = Path(work)
            config = yaml.safe_load(fleet.config_text())
            for module in config["modules"].values():
                module.update(username=t.LEAKY_USER, password_env=t.LEAKY_PASSWORD_ENV)
            (workdir / "config.yml").write_text(yaml.safe_dump(config))
            for flag in ((), ("--redact-names",)):
                run = _command(tree, "diagnose", "--config.file", str(workdir / "config.yml"), t.LEAKY_SERVER, *flag,
                               env={t.LEAKY_PASSWORD_ENV: t.LEAKY_PASSWORD})
                report = run["stdout"].partition("## 5.")[0].lower()  # the key: value lines, before the raw output
                leaked = sorted(n for n, f in forms.items() if any(v.lower() in report for v in shown(f)))
                found["redact_names" if flag else "plain"] = {"forms_printed": f"{len(leaked)} of {len(forms)}",
                                                              "which": leaked}
        return found

    return _before_and_after("diagnose_password_forms", measure)


def debug_log_tokens() -> dict:
    """22.13: `poll --log.level debug` over NTLM: NTLM messages (base64) and library DEBUG records in the log."""
    from tests.conftest import PASSWORD as TEST_PASSWORD, PASSWORD_ENV as TEST_PASSWORD_ENV  # noqa: PLC0415
    from tests.conftest import SimulatedFleet, relocate  # noqa: PLC0415

    def measure(tree: Path) -> dict:
        scenario = relocate({"servers": [{"name": "EX-TOKENS", "address": "127.0.0.1", "build": "15.2.2562.53"}]})
        with SimulatedFleet(scenario) as fleet, _workdir() as work:
            workdir = Path(work)
            (workdir / "config.yml").write_text(fleet.config_text())
            run = _command(tree, "poll", "--config.file", str(workdir / "config.yml"), "--log.level", "debug", "EX-TOKENS",
                           env={TEST_PASSWORD_ENV: TEST_PASSWORD})
        log = run["stderr"]
        return {"exit": run["exit"], "ntlm_messages_logged": log.count("TlRMTVNTUA"),
                "library_debug_records": len(re.findall(r"level=DEBUG logger=(?:spnego|urllib3|requests_ntlm|winrm)", log))}

    return _before_and_after("debug_log_tokens", measure)


def catalog_drip_headers() -> dict:
    """20.8: `catalog update --from URL` against a server that drips its headers a byte every 0.1 s."""
    from tests.system.test_hostile import BUILD_LIST, ListServer  # noqa: PLC0415

    def measure(tree: Path) -> dict:
        with ListServer({"/list.csv": (200, {}, BUILD_LIST, None)}) as server, _workdir() as work:
            run = _command(tree, "catalog", "update", "--from", f"{server.base}/list.csv", "--output",
                           str(Path(work) / "catalog.tsv"))
        return {"exit": run["exit"], "seconds": run["seconds"], "message": run["stderr"].strip()[-120:]}

    return _before_and_after("catalog_drip_headers", measure)


def catalog_https_downgrade() -> dict:
    """20.9: an https list URL that redirects to http: is the list written, and which URL does the output name?"""
    from tests.system.test_hostile import BUILD_LIST, ListServer  # noqa: PLC0415

    def measure(tree: Path) -> dict:
        with _workdir() as work, ListServer({"/list.csv": (200, {}, BUILD_LIST, 0)}) as plain, \
                ListServer({}, tls_dir=Path(work)) as secure:
            workdir = Path(work)
            secure.routes["/list.csv"] = (302, {"Location": f"{plain.base}/list.csv"}, b"", 0)
            run = _command(tree, "catalog", "update", "--from", f"{secure.base}/list.csv", "--output",
                           str(workdir / "catalog.tsv"), env={"SSL_CERT_FILE": str(secure.ca_file)})
            written = (workdir / "catalog.tsv").exists()
        return {"exit": run["exit"], "list_written_from_http": written,
                "output_names_the_http_url": plain.base in run["stdout"],
                "message": (run["stdout"] + run["stderr"]).strip()[:160]}

    return _before_and_after("catalog_https_downgrade", measure)


def catalog_file_mode() -> dict:
    """24.16: the mode of the written catalog file: over an existing 0644 file, and a new file with umask 022."""
    fixture = REPO / "tests" / "fixtures" / "ExchangeBuildNumbers-excerpt.csv"

    def measure(tree: Path) -> dict:
        with _workdir() as work:
            workdir = Path(work)
            existing = workdir / "existing.tsv"
            existing.write_text("product\tcu\tupdate\tbuild\treleased\n")
            existing.chmod(0o644)
            _command(tree, "catalog", "update", "--from", str(fixture), "--output", str(existing), umask=0o022)
            _command(tree, "catalog", "update", "--from", str(fixture), "--output", str(workdir / "new.tsv"), umask=0o022)
            return {"over_a_0644_file": oct(existing.stat().st_mode & 0o777),
                    "new_file_umask_022": oct((workdir / "new.tsv").stat().st_mode & 0o777)}

    return _before_and_after("catalog_file_mode", measure)


def catalog_control_characters() -> dict:
    """24.19: a --from path with a newline and a terminal escape: does the written file still load, and do raw
    control characters reach the terminal?"""
    fixture = REPO / "tests" / "fixtures" / "ExchangeBuildNumbers-excerpt.csv"

    def measure(tree: Path) -> dict:
        with _workdir() as work:
            workdir = Path(work)
            source = workdir / "list\n\x1b[2J.csv"
            source.write_bytes(fixture.read_bytes())
            output = workdir / "catalog.tsv"
            run = _command(tree, "catalog", "update", "--from", str(source), "--output", str(output))
            try:
                Catalog.load(output)
                loads = True
            except Exception as err:  # noqa: BLE001 - what fails is the figure
                loads = f"no: {str(err)[-90:]}"
        return {"exit": run["exit"], "written_file_loads": loads,
                "raw_control_characters_on_terminal": sum(not c.isprintable() for c in run["stdout"].rstrip("\n"))}

    return _before_and_after("catalog_control_characters", measure)


BEFORE_AFTER = {"diagnose_password_forms": diagnose_password_forms, "debug_log_tokens": debug_log_tokens,
                "catalog_drip_headers": catalog_drip_headers, "catalog_https_downgrade": catalog_https_downgrade,
                "catalog_file_mode": catalog_file_mode, "catalog_control_characters": catalog_control_characters}


def main() -> None:
    """Each attack in a fresh process: peak RSS is a high-water mark, so one attack must not inherit another's."""
    os.environ[PASSWORD_ENV] = PASSWORD
    args = sys.argv[1:]
    if args[:1] == ["--exporter-root"]:
        clients.EXPORTER_ROOT = Path(args[1]).resolve()
        args = args[2:]
    known = [*SERVER_ATTACKS, "slowloris", *BEFORE_AFTER, "clients", *clients.ATTACKS]
    unknown = [name for name in args[1 if args[:1] == ["--one"] else 0:] if name not in known]
    if unknown:
        sys.exit(f"{__doc__}\nunknown attack {unknown[0]!r}; the attacks: {', '.join(known)}")
    if args[:1] == ["--one"]:
        name = args[1]
        if name in BEFORE_AFTER:
            print(json.dumps(BEFORE_AFTER[name]()), flush=True)
            os._exit(0)
        print(json.dumps(slowloris() if name == "slowloris" else server_attack(name)), flush=True)
        os._exit(0)  # the attacked poll's leftovers (a cleanup in flight) need not be waited for
    for name in args or [*SERVER_ATTACKS, "slowloris", *BEFORE_AFTER, "clients"]:
        if name == "clients" or name in clients.ATTACKS:
            for client_attack in clients.ATTACKS if name == "clients" else [name]:
                print(json.dumps(clients.run(client_attack)), flush=True)
        else:
            subprocess.run([sys.executable, __file__, "--one", name], check=True, timeout=600)


if __name__ == "__main__":
    main()
