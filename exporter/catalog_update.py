"""`catalog update` and `catalog diff`: refresh the build catalog from a newer list without a new release.

A list is Microsoft's `ExchangeBuildNumbers.csv` (microsoft/Get-ExchangeBuildNumber: `Product Name,Build
Number,Date,KB,Blog`, e.g. `Exchange 2019 CU15 Feb26SU,15.2.1748.43,2/10/2026,...`) or our own TSV
(builds.tsv columns), read from a file or an http(s) URL. Nothing is written unless the whole list is
valid: every row names a product we know (Exchange 2007/2010 rows are skipped: no EEMS, never monitored),
has a real past date, and no row changes a verdict the packaged catalog ships (EEMS, certificate
cutoffs), since those are the facts an admin acts on and a list that contradicts them is wrong, not new.
The output holds only the rows that differ from the packaged catalog, so a later release's corrections
are not masked by an old copy; it is written atomically, so a reload never reads half a file.
"""

from __future__ import annotations

import csv
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from .catalog import (
    BUILD_COLUMNS,
    Catalog,
    CatalogError,
    _Build,
    _parse_builds,
    checked_build_parts,
    packaged_builds,
    today_utc,
)

MAX_LIST_BYTES = 4 << 20  # Microsoft's CSV is ~40 KB; anything near this is not a build list
FETCH_TIMEOUT_SECONDS = 20.0  # whole download, not per socket read
MICROSOFT_HEADER = ("Product Name", "Build Number", "Date")
_MICROSOFT_NAME = re.compile(
    r"Exchange (2013|2016|2019|SE) (RTM|Preview|SP[0-9]+|CU[0-9]+)(?: \([0-9]{4}H[12]\))?(?: ([A-Za-z0-9]+))?"
)  # "Exchange 2019 CU13 (2023H1)" names the release half-year
_NOT_MONITORED = re.compile(r"Exchange (2007|2010)\b.*")  # pre-2013 products: no EEMS, outside the catalog
_PRODUCTS = {"2013": "Exchange2013", "2016": "Exchange2016", "2019": "Exchange2019", "SE": "ExchangeSE"}

Builds = dict[tuple[int, int, int, int], _Build]


def display_source(source: str) -> str:
    """The source as it may be printed and written: a URL loses any user:password@ part."""
    parts = urlsplit(source)
    if parts.scheme in ("http", "https") and "@" in parts.netloc:
        return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return source


def read_source(source: str, *, max_bytes: int = MAX_LIST_BYTES, timeout: float = FETCH_TIMEOUT_SECONDS) -> str:
    """The list's text from a path or an http(s) URL, at most `max_bytes` and `timeout` seconds in all."""
    name = display_source(source)
    scheme = urlsplit(source).scheme
    if scheme in ("http", "https"):
        deadline = time.monotonic() + timeout
        try:
            with urllib.request.urlopen(source, timeout=timeout) as response:
                body = bytearray()
                while chunk := response.read1(65536):  # read() would wait for 64 KiB: no deadline check
                    body += chunk
                    if len(body) > max_bytes:
                        raise CatalogError(name, None, f"larger than {max_bytes} bytes: not a build list")
                    if time.monotonic() > deadline:
                        raise CatalogError(name, None, f"download took longer than {timeout:g} s")
        except urllib.error.HTTPError as err:
            raise CatalogError(name, None, f"HTTP {err.code} {err.reason}") from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise CatalogError(name, None, f"cannot download: {reason}") from None
        data = bytes(body)
    elif scheme and len(scheme) > 1:
        raise CatalogError(name, None, f"unsupported URL scheme {scheme!r} (a file path, http:// or https://)")
    else:
        try:
            with open(source, "rb") as f:
                data = f.read(max_bytes + 1)
        except OSError as err:
            raise CatalogError(name, None, f"cannot read: {err.strerror or err}") from None
        if len(data) > max_bytes:
            raise CatalogError(name, None, f"larger than {max_bytes} bytes: not a build list")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CatalogError(name, None, "not UTF-8 text") from None


def parse_build_list(name: str, text: str, *, today: date) -> Builds:
    """Rows of either format as catalog builds; the first problem raises CatalogError naming its line."""
    first = next((line for line in text.splitlines() if line.strip() and not line.startswith("#")), "")
    if tuple(c.strip() for c in first.split(",")[:3]) == MICROSOFT_HEADER:
        builds = _parse_microsoft_csv(name, text)
    elif tuple(c.strip() for c in first.split("\t")[: len(BUILD_COLUMNS)]) == BUILD_COLUMNS:
        builds = _parse_builds(name, text)
    else:
        raise CatalogError(name, None, "neither Microsoft's ExchangeBuildNumbers.csv (Product Name,Build Number,"
                                       "Date,...) nor the catalog TSV (product, cu, update, build, released)")
    if not builds:
        raise CatalogError(name, None, "no Exchange 2013/2016/2019/SE builds in the list")
    for build in builds.values():
        if build.released > today:
            raise CatalogError(name, None, f"build {_version(build)} has a release date in the future "
                                           f"({build.released.isoformat()})")
    return builds


def _parse_microsoft_csv(name: str, text: str) -> Builds:
    builds: Builds = {}
    rows = csv.reader(text.splitlines())
    next(rows)
    for row in rows:
        line = rows.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < 3:
            raise CatalogError(name, line, f"expected at least 3 comma-separated columns, got {len(row)}")
        product_name, version, released = (cell.strip() for cell in row[:3])
        if _NOT_MONITORED.fullmatch(product_name):
            continue
        match = _MICROSOFT_NAME.fullmatch(product_name)
        if match is None:
            raise CatalogError(name, line, f"unknown product {product_name[:60]!r} (Exchange 2013/2016/2019/SE "
                                           "followed by RTM, CUn, SPn or Preview and an optional update name)")
        product = _PRODUCTS[match.group(1)]
        parts = checked_build_parts(name, line, product, version, builds)
        try:
            day = datetime.strptime(released, "%m/%d/%Y").date()
        except ValueError:
            raise CatalogError(name, line, f"date {released[:30]!r} is not a real date (M/D/YYYY)") from None
        builds[parts] = _Build(product, match.group(2), match.group(3) or "", parts, day)
    return builds


def _version(build: _Build) -> str:
    return ".".join(map(str, build.parts))


@dataclass(frozen=True)
class Change:
    version: str
    what: str


def verdict_changes(before: Catalog, after: Catalog, builds: list[_Build], today: date) -> list[Change]:
    """Every difference, build by build, in what the exporter would report for that build."""
    changes = []
    for build in builds:
        version = _version(build)
        old, new = before.verdict(version, today=today), after.verdict(version, today=today)
        for field, show in _VERDICT_FIELDS.items():
            if show(old) != show(new):
                changes.append(Change(version, f"{field} {show(old)} -> {show(new)}"))
    return changes


def _iso(value: date | None) -> str:
    return value.isoformat() if value else "none"


_VERDICT_FIELDS = {
    "name": lambda v: f"{v.product} {v.cu} {v.update}".strip(),
    "released": lambda v: _iso(v.released),
    "eems": lambda v: "yes" if v.eems_supported else "no",
    "cutoffs": lambda v: ",".join(f"{c}={'compliant' if ok else 'not-compliant'}" for c, ok in v.cutoffs.items()),
    "servicing": lambda v: f"{v.servicing} (ended {_iso(v.cu_servicing_end)})" if v.cu_servicing_end else v.servicing,
    "next_build": lambda v: v.next_build.version if v.next_build else "none",
    "update_path_since": lambda v: _iso(v.update_path_since),
}
SHIPPED_VERDICT_FIELDS = ("eems", "cutoffs")


def validated_update(source: str, *, today: date | None = None) -> tuple[Builds, Builds]:
    """(rows to write: new or different from the packaged catalog, the packaged builds); raises CatalogError."""
    today = today or today_utc()
    name = display_source(source)
    listed = parse_build_list(name, read_source(source), today=today)
    packaged = packaged_builds()
    shipped = Catalog.from_builds(packaged)
    try:
        candidate = Catalog.from_builds({**packaged, **listed})
    except CatalogError as err:
        raise CatalogError(name, None, f"the list breaks the shipped cutoff rules: {err}") from None
    contradictions = [c for c in verdict_changes(shipped, candidate, list(packaged.values()), today)
                      if c.what.split(" ", 1)[0] in SHIPPED_VERDICT_FIELDS]
    if contradictions:
        first = contradictions[0]
        raise CatalogError(name, None, f"contradicts the shipped catalog: build {first.version}: {first.what}"
                                       + (f" (and {len(contradictions) - 1} more)" if len(contradictions) > 1 else ""))
    rows = {parts: b for parts, b in listed.items() if packaged.get(parts) != b}
    return rows, packaged


def write_catalog_file(output: Path, rows: Builds, source: str, today: date) -> None:
    """Write the TSV atomically (temp file in the same folder, then rename): a reload sees old or new, never half."""
    lines = [f"# Written by exchange-eems-exporter catalog update on {today.isoformat()} from {display_source(source)}",
             f"# {len(rows)} builds that are new or different from the packaged catalog.",
             "\t".join(BUILD_COLUMNS)]
    lines += ["\t".join((b.product, b.cu, b.update, _version(b), b.released.isoformat()))
              for b in sorted(rows.values(), key=lambda b: b.parts)]
    output = Path(output)
    handle, temporary = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent or Path("."))
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(temporary, output)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def diff(current_builds: Builds, source: str, *, today: date | None = None) -> list[str]:
    """What the list changes against the running catalog: new builds, then every changed verdict."""
    today = today or today_utc()
    current = Catalog.from_builds(current_builds)
    listed = parse_build_list(display_source(source), read_source(source), today=today)
    candidate = Catalog.from_builds({**current_builds, **listed})
    new = [b for parts, b in sorted(listed.items()) if parts not in current_builds]
    out = [f"new builds: {len(new)}"]
    out += [f"  {_version(b)}  {b.product} {b.cu} {b.update}".rstrip() + f"  released {b.released}" for b in new]
    changes = verdict_changes(current, candidate, sorted(current_builds.values(), key=lambda b: b.parts), today)
    out.append(f"changed verdicts: {len(changes)}")
    out += [f"  {c.version}  {c.what}" for c in changes]
    return out

