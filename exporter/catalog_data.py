"""The catalog's data files, read and checked: the build list (`exporter/data/builds.tsv`, with an operator's
`catalog_file` laid over it), `lifecycle.tsv`, `servicing.tsv` and `cutoffs.yaml`.

They are read at start, at a reload and by `catalog update`/`catalog diff`, never by a poll; `catalog.py`
judges builds with the tables they give. A file the exporter cannot trust is a `CatalogError` that names the
file, the line and the problem, so a reload keeps the catalog it has instead of judging with a broken one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date
from functools import cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType

import yaml

from .catalog import (
    PRODUCT_FIRST_BUILD,
    Build,
    BuildVersionError,
    Cutoff,
    Servicing,
    parse_build,
    product_of,
    short_repr,
    today_utc,
)
from .files import read_regular_file

BUILD_COLUMNS = ("product", "cu", "update", "build", "released")
LIFECYCLE_COLUMNS = ("product", "released", "mainstream_end", "extended_end")
SERVICING_COLUMNS = ("product", "serviced_cus", "updates_end", "migrate_to", "final_cu")
Builds = dict[tuple[int, int, int, int], Build]
MAX_CATALOG_FILE_BYTES = 4 << 20  # what `catalog update` reads at most (MAX_LIST_BYTES); the packaged list is ~20 KB


class CatalogError(Exception):
    """A catalog file the exporter cannot trust; the message names the file, the line and the problem."""

    def __init__(self, path: str, line: int | None, message: str):
        self.path, self.line, self.message = path, line, message
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {message}")


def _data_rows(path: str, text: str, columns: tuple[str, ...]):
    """Yield (line number, cells) of a TSV with a header that starts with `columns`; '#' lines are comments."""
    header_seen = False
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        cells = [c.strip() for c in line.split("\t")]
        if not header_seen:
            if tuple(cells[: len(columns)]) != columns:
                raise CatalogError(path, number, f"header must start with {', '.join(columns)} (tab-separated)")
            header_seen = True
            continue
        if len(cells) < len(columns):
            raise CatalogError(
                path, number, f"expected {len(columns)} tab-separated columns ({', '.join(columns)}), got {len(cells)}"
            )
        yield number, cells
    if not header_seen:
        raise CatalogError(path, None, f"no header line ({', '.join(columns)})")


def _parse_date(path: str, line: int | None, what: str, value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise CatalogError(path, line, f"{what} {short_repr(value)} is not a date (YYYY-MM-DD)") from None


def _read_text(path: Path) -> str:
    try:
        data = read_regular_file(path, MAX_CATALOG_FILE_BYTES)
        if len(data) > MAX_CATALOG_FILE_BYTES:  # read at start and at every reload
            raise CatalogError(str(path), None, f"larger than {MAX_CATALOG_FILE_BYTES} bytes: not a build list")
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CatalogError(str(path), None, "not UTF-8 text") from None
    except OSError as e:
        raise CatalogError(str(path), None, f"cannot read: {e.strerror or e}") from None


MAX_NAME_CHARS = 40  # a cu or update name ("CU15", "Sep26SUv2"): shown on pages, labels and the terminal


def parse_builds(path: str, text: str, *, latest: date | None = None) -> dict[tuple[int, int, int, int], Build]:
    """The rows of a build list; `latest`: the last release date allowed (an operator's file: today)."""
    builds: dict[tuple[int, int, int, int], Build] = {}
    for line, (product, cu, update, version, released, *_) in _data_rows(path, text, BUILD_COLUMNS):
        if product not in PRODUCT_FIRST_BUILD:
            raise CatalogError(path, line, f"unknown product {short_repr(product)} (one of {', '.join(PRODUCT_FIRST_BUILD)})")
        if not cu:
            raise CatalogError(path, line, "empty cu")
        for what, name in (("cu", cu), ("update", update)):  # an escape sequence would reach the terminal raw
            if not name.isprintable() or len(name) > MAX_NAME_CHARS:
                raise CatalogError(path, line, f"{what} {short_repr(name)} is not printable text of at most "
                                               f"{MAX_NAME_CHARS} characters")
        parts = checked_build_parts(path, line, product, version, builds)
        day = _parse_date(path, line, "released", released)
        if latest is not None and day > latest:
            raise CatalogError(path, line, f"build {version} has a release date in the future ({day.isoformat()})")
        builds[parts] = Build(product, cu, update, parts, day)
    return builds


def checked_build_parts(path: str, line: int, product: str, version: str, builds: dict) -> tuple[int, int, int, int]:
    """A build list row's build: four parts, of the product the row names, not listed before."""
    try:
        parts = parse_build(version)
    except BuildVersionError as e:
        raise CatalogError(path, line, str(e)) from None
    if product_of(parts) != product:
        raise CatalogError(path, line, f"build {version} belongs to {product_of(parts)}, not {product}")
    if parts in builds:
        raise CatalogError(path, line, f"build {version} is listed twice")
    return parts


def packaged_builds() -> dict[tuple[int, int, int, int], Build]:
    """The packaged build list, a copy the caller may change. It is part of the installed package, so it is read
    once: a catalog with a catalog_file needs it three times (the list laid over, the thresholds it may not move,
    the newest CU the cutoffs know), and `catalog update` at every verdict it compares."""
    return dict(_packaged_builds())


@cache
def _packaged_builds() -> Mapping[tuple[int, int, int, int], Build]:
    data = resources.files("exporter") / "data"
    return MappingProxyType(parse_builds("exporter/data/builds.tsv", (data / "builds.tsv").read_text(encoding="utf-8")))


def load_builds(extra_file: Path | None = None) -> dict[tuple[int, int, int, int], Build]:
    """The packaged build list with an operator's catalog_file (same columns) laid over it."""
    return load_builds_checked(extra_file)[0]


# The line `catalog update` writes first: the day it compared the catalog with Microsoft's list (write_catalog_file)
CHECKED_LINE = re.compile(r"# Written by exchange-eems-exporter catalog update on ([0-9]{4}-[0-9]{2}-[0-9]{2}) ")


def load_builds_checked(extra_file: Path | None = None) -> tuple[dict[tuple[int, int, int, int], Build], date | None]:
    """`load_builds`, and the day the catalog_file says `catalog update` wrote it (None: not written by it, or no
    file): the catalog was as current as Microsoft's list that day, even where the list had nothing new."""
    builds, checked = packaged_builds(), None
    if extra_file is not None:
        extra = Path(extra_file)
        text, today = _read_text(extra), today_utc()
        # no future date: it would be the catalog's newest release, and ExchangeCatalogStale could not fire
        builds.update(parse_builds(str(extra), text, latest=today))
        for number, line in enumerate(text.splitlines(), start=1):
            match = CHECKED_LINE.match(line)
            if match:
                checked = _parse_date(str(extra), number, "catalog update date", match.group(1))
                if checked > today:
                    raise CatalogError(str(extra), number, f"written by catalog update in the future "
                                                           f"({checked.isoformat()}): ExchangeCatalogStale could not fire")
                break
    return builds, checked


def _parse_servicing(path: str, text: str) -> dict[str, Servicing]:
    rules: dict[str, Servicing] = {}
    for line, (product, count, end, migrate_to, final_cu, *_) in _data_rows(path, text, SERVICING_COLUMNS):
        if product not in PRODUCT_FIRST_BUILD or (migrate_to and migrate_to not in PRODUCT_FIRST_BUILD):
            raise CatalogError(path, line, f"unknown product {short_repr(product)} or {short_repr(migrate_to)}")
        if not count.isdigit() or int(count) < 1:
            raise CatalogError(path, line, f"serviced_cus {short_repr(count)} is not a whole number >= 1")
        rules[product] = Servicing(int(count), _parse_date(path, line, "updates_end", end) if end else None,
                                    migrate_to or None, final_cu or None)
    missing = set(PRODUCT_FIRST_BUILD) - set(rules)
    if missing:
        raise CatalogError(path, None, f"no servicing rule for {', '.join(sorted(missing))}")
    return rules


def _parse_lifecycle(path: str, text: str) -> dict[str, date | None]:
    ends: dict[str, date | None] = {}
    for line, (product, _released, _mainstream, extended, *_) in _data_rows(path, text, LIFECYCLE_COLUMNS):
        if product not in PRODUCT_FIRST_BUILD:
            raise CatalogError(path, line, f"unknown product {short_repr(product)}")
        ends[product] = _parse_date(path, line, "extended_end", extended) if extended else None
    return ends


def _cu_triple(path: str, name: object, builds: dict) -> tuple[str, tuple[int, int, int]]:
    """Resolve 'Exchange2019/CU14' to its product and major.minor.build."""
    product, _, cu = str(name).partition("/")
    triples = {b.parts[:3] for b in builds.values() if b.product == product and b.cu == cu}
    if len(triples) != 1:
        raise CatalogError(path, None, f"CU {short_repr(name)} matches {len(triples)} CUs in the build list, expected 1")
    return product, triples.pop()


def _cu_first_build(path: str, name: str, builds: dict) -> tuple[int, int, int, int]:
    """The oldest listed build of a CU: the full build a `>=` threshold on that CU compares with."""
    product, triple = _cu_triple(path, name, builds)
    return min(parts for parts in builds if parts[:3] == triple and builds[parts].product == product)


def _parse_cutoffs(path: str, text: str, builds: dict) -> tuple[dict[str, tuple], dict[str, tuple], dict[str, Cutoff]]:
    """(EEMS's first build per product, Feature Flighting's, the cutoffs)."""
    try:
        doc = yaml.safe_load(text)
        eems_first, flighting_first = (
            {product: _cu_first_build(path, f"{product}/{cu}", builds) for product, cu in doc[key]["first_cu"].items()}
            for key in ("eems", "flighting"))
        cutoffs: dict[str, Cutoff] = {}
        for cid, spec in doc["cutoffs"].items():
            minimum = {}
            for name, version in (spec.get("minimum") or {}).items():
                product, triple = _cu_triple(path, name, builds)
                parts = parse_build(str(version))
                if parts not in builds or parts[:3] != triple:
                    raise CatalogError(path, None, f"cutoff {cid}: minimum {version} is not a listed build of {name}")
                minimum[(product, triple)] = parts
            all_from = {
                product: _cu_first_build(path, f"{product}/{cu}", builds)
                for product, cu in (spec.get("all_from") or {}).items()
            }
            cutoffs[str(cid)] = Cutoff(minimum, all_from)
    except (yaml.YAMLError, KeyError, TypeError, AttributeError, BuildVersionError) as e:
        raise CatalogError(path, None, f"malformed cutoffs file: {type(e).__name__}: {e}") from None
    return eems_first, flighting_first, cutoffs


def packaged_rules(builds: dict[tuple[int, int, int, int], Build]) -> tuple[
        dict[str, date | None], dict[str, Servicing], dict[str, tuple[int, int, int, int]],
        dict[str, tuple[int, int, int, int]], dict[str, Cutoff]]:
    """What a `Catalog` takes besides its build list: the packaged support ends, servicing rules, EEMS's and Feature
    Flighting's first builds and cutoffs, the last three resolved against `builds` (they name CUs, the list gives
    their builds)."""
    data = resources.files("exporter") / "data"
    support_end = _parse_lifecycle("exporter/data/lifecycle.tsv", (data / "lifecycle.tsv").read_text("utf-8"))
    servicing = _parse_servicing("exporter/data/servicing.tsv", (data / "servicing.tsv").read_text("utf-8"))
    for product, rule in servicing.items():  # a final CU the build list does not have is a typo, not a fact
        if rule.final_cu is not None:
            _cu_triple("exporter/data/servicing.tsv", f"{product}/{rule.final_cu}", builds)
    eems_first, flighting_first, cutoffs = _parse_cutoffs("exporter/data/cutoffs.yaml",
                                                          (data / "cutoffs.yaml").read_text("utf-8"), builds)
    return support_end, servicing, eems_first, flighting_first, cutoffs


def _thresholds(builds: Builds) -> dict[str, tuple[int, int, int, int]]:
    """Every full build a `>=` compares with, by what it is: cutoffs.yaml names CUs, and a CU's threshold is its
    oldest listed build, so it comes from the build list."""
    _, _, eems_first, flighting_first, cutoffs = packaged_rules(builds)
    named = {f"EEMS from {product}": parts for product, parts in eems_first.items()}
    named.update({f"Feature Flighting from {product}": parts for product, parts in flighting_first.items()})
    for cid, cutoff in cutoffs.items():
        named.update({f"cutoff {cid} from {product}": parts for product, parts in cutoff.all_from.items()})
        named.update({f"cutoff {cid} minimum of {product} CU {'.'.join(map(str, triple))}": parts
                      for (product, triple), parts in cutoff.minimum.items()})
    return named


def threshold_changes(before: Builds, after: Builds) -> list[str]:
    """The thresholds `after` moves. A row older than the first build of a threshold's CU moves it down: every
    listed build keeps its verdict, but each unlisted build between the two would turn compliant."""
    old, new = _thresholds(before), _thresholds(after)
    return [f"{what} {_dotted(old[what])} -> {_dotted(new.get(what))}" for what in old if old[what] != new.get(what)]


def refuse_moved_thresholds(name: str, packaged: Builds, merged: Builds) -> None:
    """CatalogError if `merged` (the packaged list with a list laid over it) moves a threshold of the packaged one:
    by `catalog update`, and by `Catalog.load` for a catalog_file written by hand or before this check."""
    moved = threshold_changes(packaged, merged)
    if moved:
        raise CatalogError(name, None, f"moves a shipped threshold: {moved[0]} (a build older than the first build "
                                       "of its CU: builds between would pass)"
                                       + (f" (and {len(moved) - 1} more)" if len(moved) > 1 else ""))


def _dotted(parts: tuple[int, ...] | None) -> str:
    return ".".join(map(str, parts)) if parts else "none"
