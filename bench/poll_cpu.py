"""Thread CPU of one steady poll and of its stages: sequential polls of one simulated server.

bench.py measures a whole fleet's cycle, where a hundred threads share the GIL and a sampling profiler sees
only part of the CPU (bench/stages.py). Here one thread polls one server (the simulator in its own process,
no added latency, no script runtime) again and again, and `time.thread_time()` around each stage gives
its CPU exactly, the kernel's share of its socket calls included. Stages nest (the HTTP layers inside
`ServerConnection.run`); a stage the checkout does not have is left out, so the same command measures old code too.

    python bench/poll_cpu.py [--polls 300]
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import shutil
import sys
import tempfile
import time
import xml.etree.ElementTree
from pathlib import Path

import exporter.interpret
import exporter.parse
from bench import fleet_of, start_simulator, write_exporter_config
from exporter.catalog import Catalog
from exporter.config import load_config
from exporter.exporter import Exporter

try:  # the WinRM package (issue 19)
    from exporter.winrm import client, connection, session, wsman
    WINRM_STAGES = (
        ("WinRM: the whole command (ServerConnection.run)", client.ServerConnection, "run"),
        ("  HTTP: write, read and parse each exchange (Connection.post)", connection.Connection, "post"),
        ("    of it http.client's answer parsing (HTTPResponse.begin)", __import__("http.client").client.HTTPResponse,
         "begin"),
        ("  NTLM seal and MIME framing", session.MessageSeal, "wrap"),
        ("  NTLM unseal and MIME split", session.MessageSeal, "unwrap"),
        ("  XML checks and ElementTree parse", wsman, "parse"),
    )
except ImportError:  # a checkout from before it: pywinrm, requests and the kept connection
    import requests
    import urllib3.connectionpool
    import winrm.encryption

    import exporter.winrm_client
    try:
        from exporter.kept_connection import KeptConnection
    except ImportError:  # a checkout from before the kept connection
        KeptConnection = None
    WINRM_STAGES = (
        ("WinRM: the whole command (ServerConnection.run)", exporter.winrm_client.ServerConnection, "run"),
        ("  requests Session.send", requests.Session, "send"),
        ("    urllib3 urlopen", urllib3.connectionpool.HTTPConnectionPool, "urlopen"),
        ("  kept connection exchange", KeptConnection, "exchange"),
        ("  NTLM seal and MIME framing", winrm.encryption.Encryption, "_encrypt_message"),
        ("  NTLM unseal and MIME split", winrm.encryption.Encryption, "_decrypt_response"),
        ("  ElementTree parse", xml.etree.ElementTree, "fromstring"),
    )

STAGES = (
    *WINRM_STAGES,
    ("parse the output (parse_server_output)", exporter.parse, "parse_server_output"),
    ("judge it (interpret_server)", exporter.interpret, "interpret_server"),
)


def timed(spent: collections.Counter, label: str, function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        started = time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            spent[label] += time.thread_time() - started
    return wrapper


def instrument(spent: collections.Counter) -> None:
    """Wrap each stage's function where it is defined and wherever an exporter module imported it by name."""
    for label, owner, name in STAGES:
        if owner is None:
            continue
        original = getattr(owner, name)
        wrapper = timed(spent, label, original)
        setattr(owner, name, wrapper)
        for module_name, module in list(sys.modules.items()):
            if module_name.startswith("exporter.") and getattr(module, name, None) is original:
                setattr(module, name, wrapper)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=300)
    parser.add_argument("--simulator-python", default=sys.executable,
                        help="the Python that runs the simulator (to measure another checkout's exporter against this one's)")
    args = parser.parse_args()
    spent: collections.Counter = collections.Counter()
    instrument(spent)
    fleet = argparse.Namespace(servers=1, latency=0.0, runtime=0.0, concurrency=1, address_base="127.1.0.1",
                               simulator_python=args.simulator_python)
    workdir = Path(tempfile.mkdtemp(prefix="eems-poll-cpu-"))
    simulator, config_file, _ = start_simulator(fleet, workdir)
    try:
        write_exporter_config(config_file, fleet)
        instance = Exporter(load_config(config_file), Catalog.load())
        name = fleet_of(instance)[0][0].name
        for _ in range(5):  # connect, authenticate, warm up
            result = instance.poller.poll_server(name)
        if not result.outcome.success:
            raise SystemExit(f"the poll failed: {result.outcome.error_reason}")
        spent.clear()
        started = time.thread_time()
        for _ in range(args.polls):
            instance.poller.poll_server(name)
        total = time.thread_time() - started
        instance.stop()
    finally:
        simulator.terminate()
        simulator.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)  # the fleet's password file among them
    report = {"polls": args.polls, "cpu_ms_per_poll": round(total / args.polls * 1e3, 3),
              "stages_ms_per_poll": {label: round(spent[label] / args.polls * 1e3, 3)
                                     for label, owner, _ in STAGES if owner is not None}}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
