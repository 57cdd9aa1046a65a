"""Replay real-world shapes (tests/fixtures/real/) through the parser and the interpretation.

The simulator answers with what we believe Windows prints; these fixtures carry what real servers and
published posts show (HealthChecker captures, Microsoft's and MVPs' event and log texts), so a belief that
differs from the real shape fails here. Each fixture names its public source; see the README there.
"""

from __future__ import annotations

import re
from dataclasses import fields, is_dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml

from exporter.eems_log import classify_fetch_error, parse_log_line
from exporter.interpret import interpret_server
from exporter.parse import parse_organization_output, parse_server_output

FIXTURES = sorted((Path(__file__).parent.parent / "fixtures" / "real").glob("*.yaml"))
LOOKBACK = timedelta(hours=24)
_COMMIT = re.compile(r"[0-9a-f]{40}")


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def resolve(value, dotted: str):
    """`a.b.0.c` into dataclasses, dicts and sequences."""
    for part in dotted.split("."):
        if is_dataclass(value):
            if part not in {f.name for f in fields(value)}:
                raise KeyError(f"{dotted}: no field {part!r} in {type(value).__name__}")
            value = getattr(value, part)
        elif isinstance(value, dict):
            value = value[part]
        else:
            value = value[int(part)]
    return value


def comparable(value):
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple):
        return [comparable(v) for v in value]
    return value


def replay(fixture: dict, catalog):
    output = fixture["output"].strip().encode("utf-8")
    if fixture["collector"] == "organization":
        return parse_organization_output(output)
    facts = parse_server_output(output)
    return interpret_server("fixture", facts, catalog, lookback=LOOKBACK, now=facts.now,
                            admin_display_version=fixture.get("admin_display_version"))


def test_the_corpus_is_there():
    collectors = {load(p)["collector"] for p in FIXTURES}
    assert len(FIXTURES) >= 10 and collectors == {"server", "organization", "log_lines"}


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_fixture_names_its_public_source(path):
    sources = load(path)["sources"]
    assert sources
    for source in sources:
        assert source.get("value"), f"{path.name}: say which value comes from {source}"
        if "url" in source:
            assert source["url"].startswith("https://")
        else:
            assert source["repository"].count("/") == 1 and source["path"]
            assert _COMMIT.fullmatch(source["commit"]), f"{path.name}: a full commit hash"


def mismatches(fixture: dict, catalog) -> dict:
    """dotted path -> (expected, got) for every expectation the replay does not meet."""
    result = replay(fixture, catalog)
    found = {}
    for dotted, expected in fixture["expect"].items():
        actual = comparable(resolve(result, dotted))
        if actual != expected:
            found[dotted] = (expected, actual)
    return found


@pytest.mark.parametrize("path", [p for p in FIXTURES if load(p)["collector"] != "log_lines"], ids=lambda p: p.stem)
def test_replay_through_parse_and_interpret(path, catalog):
    assert mismatches(load(path), catalog) == {}, path.name


@pytest.mark.parametrize("path", [p for p in FIXTURES if load(p)["collector"] == "log_lines"], ids=lambda p: p.stem)
def test_published_log_lines(path):
    for case in load(path)["lines"]:
        record = parse_log_line(case["line"])
        assert record is not None, case["line"]
        got = {"level": record.level, "message": record.message, "problem": record.is_problem,
               "check_start": record.is_check_start, "operation": record.operation,
               "reason": classify_fetch_error(record.message) if record.is_problem else None}
        expected = {"check_start": False, "operation": None, "reason": None,
                    **{k: v for k, v in case.items() if k != "line"}}
        assert got == expected, case["line"]


def test_a_wrong_expectation_is_reported(catalog):
    """The replay can fail: a real shape with a wrong expected value (the padded text kept as is) is reported."""
    fixture = load(next(p for p in FIXTURES if p.name.startswith("exsetup-2019-cu11")))
    fixture["expect"] = {"build.version": "15.02.0986.005", "eems.last_success": "2021-10-02T11:10:00+00:00"}
    assert mismatches(fixture, catalog) == {
        "build.version": ("15.02.0986.005", "15.2.986.5"),
        "eems.last_success": ("2021-10-02T11:10:00+00:00", None),
    }
