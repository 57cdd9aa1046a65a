"""Command line: `run` (default), `check-config`, `poll`, `diagnose`, `build`, `catalog update|diff`, `rules`,
`windows-endpoint`, `demo`.

Arguments only: every command hands over to the module that does the work. Expected failures (a bad
config, a bad version) print one line and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
from datetime import date, datetime
from importlib.util import find_spec
from pathlib import Path

from . import __version__
from .catalog import BuildVersionError, Catalog
from .catalog_data import CatalogError
from .config import DEFAULT_LISTEN_PORT, Config, ConfigError, config_warnings, load_config
from .model import BuildVerdict
from .redact import Redactor
from .sharding import parse_shard

log = logging.getLogger("exporter")
EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 141  # what a shell reports for a program that SIGPIPE ended


class _Fail(Exception):
    """An expected error: message for the user, exit code 2."""


def _listen_address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected [host]:port, got {value!r}")
    return host, int(port)


def _setup_logging(level: str, redactor: Redactor) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="ts=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)s",
        stream=sys.stderr,
    )
    redactor.install()
    logging.captureWarnings(True)


def _load(path: Path, shard: str | None) -> tuple[Config, Catalog]:
    try:
        config = load_config(path, parse_shard(shard) if shard is not None else None)
        catalog = Catalog.load(config.catalog_file)
    except (ConfigError, CatalogError, ValueError) as err:
        raise _Fail(f"configuration error: {err}") from None
    return config, catalog


def _warn_insecure(config: Config) -> None:
    for warning in config_warnings(config):
        log.warning("%s", warning)


def raise_open_file_limit() -> None:
    """Raise the soft limit on open files to the hard limit, as Go's runtime does for every Go exporter: polls,
    scrapes and kept WinRM connections need a descriptor each, and the common soft limit of 1,024 is less
    than a fleet of a thousand servers can use (issue 22, finding 10). Before the HTTP server sizes its
    connection cap from it."""
    try:
        import resource  # POSIX only
    except ImportError:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as error:  # e.g. an unlimited hard limit the kernel caps lower
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, error)


def cmd_run(args: argparse.Namespace) -> int:
    from .exporter import Exporter
    from .web import serve
    from .webconfig import WebConfigError, WebConfigWatcher

    redactor = Redactor()
    _setup_logging(args.log_level, redactor)
    raise_open_file_limit()
    config, catalog = _load(args.config_file, args.shard)
    redactor.add(config.secrets())
    _warn_insecure(config)
    watcher = None
    if args.web_config_file:
        try:
            watcher = WebConfigWatcher(args.web_config_file)
            watcher.current()
        except WebConfigError as err:
            raise _Fail(f"web config error: {err}") from None
    exporter = Exporter(config, catalog, redactor)
    if watcher is not None:
        exporter.registry.register(watcher)  # exchange_exporter_web_config_* on /metrics
    # Before the port opens: a reloader that signals as soon as the exporter answers must not find the
    # default SIGHUP action (terminate, or a lost reload where the parent ignores SIGHUP).
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if hasattr(signal, "SIGHUP"):  # not on Windows, where POST /-/reload is the way
        signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=exporter.reload, daemon=True).start())
    host, port = args.web_listen_address
    try:
        server = serve(exporter, host, port, watcher)
    except OSError as err:
        raise _Fail(f"cannot listen on {host}:{port}: {err.strerror}") from None
    exporter.start()
    log.info("exchange-eems-exporter %s listening on %s:%d (%d servers, shard %d/%d)", __version__,
             host, server.server_address[1], len(exporter.targets()), *config.shard)

    # Python runs signal handlers in the main thread only, and a signal delivered to a poll thread does not
    # wake a blocked wait: wake up regularly so a SIGHUP reload is not delayed until the next SIGTERM.
    while not stop.wait(0.5):
        pass
    log.info("shutting down")
    server.shutdown()
    exporter.stop()
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    config, catalog = _load(args.config_file, None)
    for warning in config_warnings(config):  # what `run` would log
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{args.config_file}: OK: {len(config.servers)} servers, {len(config.modules)} modules, "
          f"organization collector {'on' if config.organization else 'off'}, catalog newest build "
          f"{catalog.newest_release.isoformat()}")
    if args.web_config_file:
        _check_web_config(args.web_config_file)
    return 0


def _check_web_config(path: Path) -> None:
    """`check-config --web.config.file`: the web config as `run` would load it, with the warnings `run` would log."""
    from .webconfig import WebConfig, WebConfigError, exposed_secret_files

    try:
        web = WebConfig.load(path)
    except WebConfigError as err:
        raise _Fail(f"web config error: {err}") from None
    for warning in exposed_secret_files(web):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{path}: OK: TLS {'on' if web.ssl_context() else 'off'}, {len(web.users)} basic_auth users")


def _jsonable(value):
    if dataclasses.is_dataclass(value):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _one_server_command(args: argparse.Namespace) -> tuple[Config, Catalog, Redactor]:
    """What `poll` and `diagnose` share: logging with the secrets redacted, the config, its warnings."""
    redactor = Redactor()
    _setup_logging(args.log_level, redactor)
    config, catalog = _load(args.config_file, None)
    redactor.add(config.secrets())
    _warn_insecure(config)
    return config, catalog, redactor


def _named_as(name: str, config) -> str:
    """A hint when `name` is a configured server's short name (`EX01` for `ex01.contoso.com`): servers are found
    by the name `servers:` gives them, exactly."""
    short = name.lower().split(".")[0]
    similar = sorted(s.name for s in config.servers if s.name.lower().split(".")[0] == short)
    return f" (servers are named as `servers:` lists them: {', '.join(map(repr, similar[:3]))})" if similar else ""


def cmd_poll(args: argparse.Namespace) -> int:
    from .poller import Poller
    from .runtime import SafeRuntime

    config, catalog, redactor = _one_server_command(args)
    poller = Poller(SafeRuntime(config, catalog))
    if poller.runtime.current().targets.get(args.server) is None:
        raise _Fail(f"server {args.server!r} is not in {args.config_file}{_named_as(args.server, config)}")
    result = poller.poll_server(args.server)
    print(redactor.scrub(json.dumps(_jsonable(result), indent=2)))
    poller.stop()
    return 0 if result.outcome and result.outcome.success else 1


def cmd_diagnose(args: argparse.Namespace) -> int:
    from .diagnose import field_report

    config, catalog, _ = _one_server_command(args)
    try:
        report = field_report(config, catalog, args.server, redact_names=args.redact_names,
                              diagnose_module=args.diagnose_module)
    except KeyError as missing:
        what = "module" if missing.args[0] == args.diagnose_module else "server"
        hint = _named_as(args.server, config) if what == "server" else ""
        raise _Fail(f"{what} {missing.args[0]!r} is not in {args.config_file}{hint}") from None
    sys.stdout.flush()
    sys.stdout.buffer.write(report.encode("utf-8"))  # not the console's code page: a report of a Japanese server
    return 0


def _iso(value: date | None) -> str | None:
    return value.isoformat() if value is not None else None


def verdict_to_json(v: BuildVerdict) -> dict:
    """The verdict as plain JSON types, for `build --json` and the text `build` prints."""
    return {
        "version": v.version,
        "product": v.product,
        "cu": v.cu,
        "update": v.update,
        "released": _iso(v.released),
        "known": v.known,
        "eems_supported": v.eems_supported,
        "cutoffs": dict(v.cutoffs),
        "superseded_since": _iso(v.superseded_since),
        "product_support_end": _iso(v.product_support_end),
        "servicing": v.servicing,
        "cu_servicing_end": _iso(v.cu_servicing_end),
        "next_build": None if v.next_build is None else {
            "version": v.next_build.version,
            "product": v.next_build.product,
            "cu": v.next_build.cu,
            "update": v.next_build.update,
            "released": _iso(v.next_build.released),
        },
        "update_path_since": _iso(v.update_path_since),
    }


def cmd_build(args: argparse.Namespace) -> int:
    try:
        catalog = Catalog.load(args.catalog_file)
        verdict = catalog.verdict(args.version)
    except (BuildVersionError, CatalogError) as err:
        raise _Fail(str(err)) from None
    data = verdict_to_json(verdict)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    if data["product"] == "unknown":
        print(f"{data['version']}: an Exchange version newer than every product this exporter knows: nothing "
              "is judged of it (age, servicing, EEMS, certificate cutoffs); a newer exporter release is needed, "
              "`catalog update` cannot add a new product")
        return 0
    update = f" {data['update']}" if data["update"] else ""
    print(f"{data['version']}: {data['product']} {data['cu']}{update}"
          f"{'' if data['known'] else ' (not in the catalog: judged from its CU)'}")
    print(f"  released:          {data['released'] or 'unknown'}")
    print(f"  superseded since:  {data['superseded_since'] or 'no: newest known build of its CU'}")
    print(f"  support ends:      {data.get('product_support_end') or 'no fixed date'}")
    print(f"  servicing:         {_servicing_text(data)}")
    target = data["next_build"]
    if target is None:
        print("  next build:        none: newest build of its update path")
    else:
        update = f" {target['update']}" if target["update"] else ""
        print(f"  next build:        {target['version']} ({target['product']} {target['cu']}{update}, "
              f"released {target['released']}); a newer build exists since {data['update_path_since']}")
    print(f"  EEMS on this build: {'yes' if data['eems_supported'] else 'no'}")
    for cutoff, ok in data["cutoffs"].items():
        print(f"  {cutoff} certificate cutoff: {'compliant' if ok else 'NOT compliant: cannot use new mitigations'}")
    return 0


def cmd_catalog_update(args: argparse.Namespace) -> int:
    from .catalog_update import describe_origin, validated_update, write_catalog_file
    from .terminal import printable
    from .catalog import today_utc

    output = printable(str(args.output))
    try:
        rows, origin = validated_update(args.source)
        write_catalog_file(args.output, rows, args.source, origin, today_utc())
    except CatalogError as err:
        raise _Fail(f"catalog not updated, nothing written: {err}") from None
    except OSError as err:
        raise _Fail(f"catalog not updated: cannot write {output}: {printable(err.strerror or str(err))}") from None
    print(f"{output}: {len(rows)} builds new or different from the packaged catalog, from "
          f"{describe_origin(args.source, origin)}. Set catalog_file: {output} in the configuration (if not yet) and "
          "reload the exporter (SIGHUP or POST /-/reload).")
    return 0


def cmd_catalog_diff(args: argparse.Namespace) -> int:
    from .catalog_data import load_builds
    from .catalog_update import diff

    try:
        lines = diff(load_builds(args.catalog_file), args.source)
    except CatalogError as err:
        raise _Fail(str(err)) from None
    print("\n".join(lines))
    return 0


def cmd_rules(args: argparse.Namespace) -> int:
    from .alert_rules import Options, RulesError, parse_pair, render

    try:
        options = Options(
            job_selector=args.job_selector, runbook_base=args.runbook_base,
            labels=tuple(parse_pair(p, "--label") for p in args.label),
            severity_map=tuple(parse_pair(p, "--severity") for p in args.severity),
            alert_severity=tuple(parse_pair(p, "--alert-severity") for p in args.alert_severity),
            resource_labels=tuple(parse_pair(p, "--resource-label") for p in args.resource_label),
            keep_firing_for=args.keep_firing_for)
        text = render(options, args.format)
    except RulesError as err:
        raise _Fail(str(err)) from None
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        args.output.write_text(text, encoding="utf-8")
    except OSError as err:
        raise _Fail(f"cannot write {args.output}: {err.strerror or err}") from None
    return 0


def cmd_windows_endpoint(args: argparse.Namespace) -> int:
    from . import windows_endpoint

    try:
        endpoint = windows_endpoint.write(args.output, args.group, args.endpoint_proxy,
                                          tuple(args.virtual_account_group), args.transcript_directory)
    except ValueError as err:
        raise _Fail(str(err)) from None
    except OSError as err:
        raise _Fail(f"cannot write {args.output}: {err.strerror or err}") from None
    for relative in endpoint.files:
        print(args.output / relative)
    print(f"Endpoint version {endpoint.version}. On each Exchange server, as an administrator, from a copy of "
          f"{args.output}: .\\{windows_endpoint.INSTALL_SCRIPT}")
    return 0


def run_demo(arguments: list[str]) -> int:
    """`demo` belongs to the simulator, a separate package that is not in the image: this command hands over to
    `exchange-eems-simulator demo` in the same interpreter, without importing it (the exporter never does)."""
    if find_spec("simulator") is None:
        print("exchange-eems-exporter: the demo needs the simulator, which is not installed. From a clone of the "
              "repository: make demo (or pip install -e '.[simulator]' -e ./simulator, then exchange-eems-simulator demo)",
              file=sys.stderr)
        return EXIT_USAGE
    os.execv(sys.executable, [sys.executable, "-m", "simulator", "demo", *arguments])


def _servicing_text(data: dict) -> str:
    if data["servicing"] == "serviced":
        return "its CU receives security updates"
    if data["servicing"] == "cu_not_serviced":
        return f"its CU gets NO security updates since {data['cu_servicing_end']}: move to the newest CU"
    return (f"its CU gets NO security updates since {data['cu_servicing_end']} and the product is out of support: "
            "migrate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="exchange-eems-exporter",
                                     description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config.file", "--config", dest="config_file", type=Path,
                       default=Path("exchange-eems-exporter.yml"), help="YAML configuration")
        p.add_argument("--log.level", dest="log_level", default="info",
                       choices=["debug", "info", "warning", "error"])

    def web_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--web.config.file", dest="web_config_file", type=Path,
                       help="exporter-toolkit web config: TLS and basic auth")

    run = sub.add_parser("run", help="poll the servers and serve metrics (default)")
    common(run)
    run.add_argument("--web.listen-address", dest="web_listen_address", type=_listen_address,
                     default=("0.0.0.0", DEFAULT_LISTEN_PORT), help=f"[host]:port, default :{DEFAULT_LISTEN_PORT}")
    web_config(run)
    run.add_argument("--shard", help="K/N: poll only shard K of N (overrides the config's shard)")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="validate the configuration (and the web config) and exit")
    common(check)
    web_config(check)
    check.set_defaults(func=cmd_check_config)

    poll = sub.add_parser("poll", help="poll one server once and print the interpreted facts")
    common(poll)
    poll.add_argument("server")
    poll.set_defaults(func=cmd_poll)

    diagnose = sub.add_parser("diagnose", help="poll one server and write a field report to attach to a bug")
    common(diagnose)
    diagnose.add_argument("server")
    diagnose.add_argument("--redact-names", action="store_true",
                          help="also remove host names and IP addresses (secrets are always removed)")
    diagnose.add_argument("--diagnose-module", metavar="NAME",
                          help="run the diagnose script through this module, e.g. when the server's is the JEA "
                               "endpoint, which runs the collection only (default: the server's module)")
    diagnose.set_defaults(func=cmd_diagnose)

    build = sub.add_parser("build", help="explain an Exchange build number")
    build.add_argument("version")
    build.add_argument("--json", action="store_true")
    build.add_argument("--catalog.file", "--catalog-file", dest="catalog_file", type=Path,
                       help="your own catalog file with newer builds (catalog_file in the configuration)")
    build.set_defaults(func=cmd_build)

    catalog = sub.add_parser("catalog", help="refresh the build catalog from Microsoft's list without a new release")
    catalog_sub = catalog.add_subparsers(dest="catalog_command", required=True)
    update = catalog_sub.add_parser("update", help="validate a build list and write it as a catalog_file")
    update.add_argument("--from", dest="source", required=True,
                        help="ExchangeBuildNumbers.csv or a catalog TSV: a file path or an http(s) URL")
    update.add_argument("--output", type=Path, required=True, help="the catalog_file to write")
    update.set_defaults(func=cmd_catalog_update)
    difference = catalog_sub.add_parser("diff", help="show what a build list would change")
    difference.add_argument("--from", dest="source", required=True, help="file path or http(s) URL")
    difference.add_argument("--catalog.file", "--catalog-file", dest="catalog_file", type=Path,
                            help="the catalog_file the exporter runs with now")
    difference.set_defaults(func=cmd_catalog_diff)

    from .alert_rules import DEFAULT_JOB_SELECTOR, DEFAULT_RUNBOOK_BASE

    rules = sub.add_parser("rules", help="write the Prometheus alert rules (or a PrometheusRule) for your site",
                           description="The shipped alerts/exchange-eems.rules.yml and deploy/prometheusrule.yaml "
                                       "are this command's output with the defaults. Run it again after each "
                                       "upgrade with your options instead of editing the files.")
    rules.add_argument("--format", choices=["rules", "prometheusrule"], default="rules",
                       help="a rule file for rule_files: (default), or a Prometheus Operator PrometheusRule")
    rules.add_argument("--output", "-o", type=Path, help="file to write (default: standard output)")
    rules.add_argument("--job-selector", default=DEFAULT_JOB_SELECTOR, metavar="MATCHERS",
                       help=f"label matchers added to every series selector, naming this exporter's jobs "
                            f"(default {DEFAULT_JOB_SELECTOR})")
    rules.add_argument("--runbook-base", default=DEFAULT_RUNBOOK_BASE, metavar="URL",
                       help="your copy of docs/runbooks.md; each alert links to URL#<alert name in lower case>. "
                            "A URL with %%s is a pattern: %%s becomes the lower-case alert name")
    rules.add_argument("--label", action="append", default=[], metavar="NAME=VALUE",
                       help="a label added to every alert, e.g. team=messaging (repeatable)")
    rules.add_argument("--severity", action="append", default=[], metavar="FROM=TO",
                       help="rename a severity on every alert that has it, e.g. critical=page (repeatable)")
    rules.add_argument("--alert-severity", action="append", default=[], metavar="ALERT=SEVERITY",
                       help="set one alert's severity before --severity applies, e.g. "
                            "ExchangeEEMSMitigationsDisabled=critical (repeatable)")
    rules.add_argument("--resource-label", action="append", default=[], metavar="NAME=VALUE",
                       help="with --format prometheusrule: a label on the PrometheusRule itself, e.g. "
                            "release=kube-prometheus-stack for its ruleSelector (repeatable)")
    rules.add_argument("--keep-firing-for", default="", metavar="DURATION",
                       help="keep every alert firing this long after its condition stops holding (Prometheus 2.42+), "
                            "e.g. 10m: a restart of the exporter, or a resharding, that leaves a server without series "
                            "for a poll interval then neither resolves a page nor restarts its for: wait")
    rules.set_defaults(func=cmd_rules)

    endpoint = sub.add_parser(
        "windows-endpoint", help="write the JEA endpoint (one read-only function) to install on each Exchange server",
        description="Writes a PowerShell module with the role capability (its one function is the collection "
                    "script WinRS sends), the session configuration (RestrictedRemoteServer, a virtual account, "
                    "one group) and Install-ExchangeEemsEndpoint.ps1, which registers, updates or (-Remove) removes "
                    "the endpoint and is safe to run again. Run it again after each upgrade and reinstall.")
    endpoint.add_argument("--output", "-o", type=Path, required=True, help="folder to write into (created)")
    endpoint.add_argument("--group", required=True, metavar="DOMAIN\\GROUP",
                          help="the group whose members may connect (the monitoring account's group)")
    endpoint.add_argument("--endpoint-proxy", default="", metavar="URL",
                          help="the proxy the endpoint check goes through (as servers[].endpoint_proxy over WinRS); fixed in the "
                               "endpoint, not chosen by the caller. Default: the server's WinHTTP proxy")
    endpoint.add_argument("--virtual-account-group", action="append", default=[], metavar="LOCAL_GROUP",
                          help="run the session's virtual account in this local group instead of Administrators "
                               "(repeatable; e.g. 'Event Log Readers': what that account can then read, the service state "
                               "included, is UNCONFIRMED, docs/security.md)")
    endpoint.add_argument("--transcript-directory", default="", metavar="PATH",
                          help="write a transcript of every session there (one per poll without keep_runspace)")
    endpoint.set_defaults(func=cmd_windows_endpoint)

    # Listed for --help only: main() hands `demo` and all its arguments to the simulator before parsing.
    sub.add_parser("demo", add_help=False, help="the demo, from the simulator: exchange-eems-simulator demo --help")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:
        return run_demo(argv[1:])
    parser = build_parser()
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv.insert(0, "run")
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a reader that left (`poll ... | head`) shows here, inside the try, not at exit
        return code
    except BrokenPipeError:  # as a shell tool killed by SIGPIPE: no traceback, status 128 + 13
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the flush at exit writes nowhere
        return EXIT_BROKEN_PIPE
    except _Fail as err:
        print(f"exchange-eems-exporter: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
