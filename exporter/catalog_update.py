"""`catalog update` and `catalog diff`: refresh the build catalog from a newer list without a new release.

A list is Microsoft's `ExchangeBuildNumbers.csv` (microsoft/Get-ExchangeBuildNumber: `Product Name,Build
Number,Date,KB,Blog`, e.g. `Exchange 2019 CU15 Feb26SU,15.2.1748.43,2/10/2026,...`) or our own TSV
(builds.tsv columns), read from a file or an http(s) URL. Nothing is written unless the whole list is
valid: every row names a product we know (Exchange 2007/2010 rows are skipped: no EEMS, never monitored),
has a real past date, and no row changes a verdict the packaged catalog ships (EEMS, certificate
cutoffs), since those are the facts an admin acts on and a list that contradicts them is wrong, not new, nor
a threshold they are judged by (a row older than a CU's first build would make every build between pass).
The output holds only the rows that differ from the packaged catalog, so a later release's corrections
are not masked by an old copy; it is written atomically, so a reload never reads half a file.
"""

from __future__ import annotations

import csv
import http.client
import os
import re
import secrets
import stat
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from urllib.parse import urlsplit

from .addresses import without_userinfo
from .catalog import Build, Catalog, today_utc
from .catalog_data import (
    BUILD_COLUMNS,
    MAX_CATALOG_FILE_BYTES,
    CatalogError,
    checked_build_parts,
    packaged_builds,
    parse_builds,
    refuse_moved_thresholds,
    threshold_changes,
)
from .files import read_regular_file
from .redact import masking
from .terminal import printable

MAX_LIST_BYTES = MAX_CATALOG_FILE_BYTES  # Microsoft's CSV is ~40 KB; anything near this is not a build list
FETCH_TIMEOUT_SECONDS = 20.0  # the whole download, redirects included, not per socket read
MAX_REDIRECTS = 5
MICROSOFT_HEADER = ("Product Name", "Build Number", "Date")
_MICROSOFT_NAME = re.compile(
    r"Exchange (2013|2016|2019|SE) (RTM|Preview|SP[0-9]+|CU[0-9]+)(?: \([0-9]{4}H[12]\))?(?: ([A-Za-z0-9]+))?"
)  # "Exchange 2019 CU13 (2023H1)" names the release half-year
_NOT_MONITORED = re.compile(r"Exchange (2007|2010)\b.*")  # pre-2013 products: no EEMS, outside the catalog
_PRODUCTS = {"2013": "Exchange2013", "2016": "Exchange2016", "2019": "Exchange2019", "SE": "ExchangeSE"}

Builds = dict[tuple[int, int, int, int], Build]


def display_source(source: str) -> str:
    """The source as it may be printed and written: a URL loses any user:password@ part, and control and format
    characters (a newline, a terminal escape, a bidi override) are shown escaped, so that neither the catalog
    file's comment line nor the terminal gets them raw."""
    try:
        url = urlsplit(source).scheme in ("http", "https")
    except ValueError:  # no valid URL ("http://user:pw@[::1"): what comes before an @ may be a password
        url = True
    if url:
        source = without_userinfo(source)
    return printable(source)


def describe_origin(source: str, origin: str) -> str:
    """Where a list came from, for the terminal and the file: the final URL, and the one asked for if redirected."""
    if origin == source:
        return display_source(source)
    return f"{display_source(origin)} (redirected from {display_source(source)})"


def read_source(source: str, *, max_bytes: int = MAX_LIST_BYTES, timeout: float = FETCH_TIMEOUT_SECONDS) -> tuple[str, str]:
    """(the list's text, where it came from: the path, or the URL after redirects) from a path or an http(s) URL,
    at most `max_bytes` and `timeout` seconds in all."""
    name = display_source(source)
    try:
        scheme = urlsplit(source).scheme
    except ValueError as err:
        raise CatalogError(name, None, f"not a valid URL: {printable(str(err))}") from None
    if scheme in ("http", "https"):
        parts = urlsplit(source)
        if "@" in parts.path + parts.query + parts.fragment:
            # a password holding / ? or #, unescaped: urllib would take the user name for the host and the
            # password's start for the port (and print it), or with digits first connect to that host and send the
            # rest of the password in the request line. An '@' before that character leaves one in the user info
            # too ("user:Cat@S3cret/x@host"): only the part up to the first '@' was masked, the rest printed.
            raise CatalogError(name, None, "an '@' outside the URL's user info: percent-encode / ? # and @ in a "
                                           "user name or password (%2F %3F %23 %40)")
        data, origin = _download(source, name, max_bytes, timeout)
    elif scheme and len(scheme) > 1:
        raise CatalogError(name, None, f"unsupported URL scheme {printable(scheme)!r} (a file path, http:// or https://)")
    else:
        origin = source
        try:
            data = read_regular_file(source, max_bytes)
        except OSError as err:
            raise CatalogError(name, None, f"cannot read: {err.strerror or err}") from None
        if len(data) > max_bytes:
            raise CatalogError(name, None, f"larger than {max_bytes} bytes: not a build list")
    try:
        return data.decode("utf-8-sig"), origin
    except UnicodeDecodeError:
        raise CatalogError(name, None, "not UTF-8 text") from None


def _download(url: str, name: str, max_bytes: int, timeout: float) -> tuple[bytes, str]:
    """The body and the final URL. urllib's timeout bounds each socket read, not the download: a server that
    drips its headers, or redirects to one that does, would hold the command for ever. The download therefore
    runs in a worker thread, and the command stops waiting for it at the deadline (the worker, a daemon,
    goes with the process)."""
    deadline = time.monotonic() + timeout
    outcome: dict = {}

    def work() -> None:
        try:
            outcome["result"] = _get(url, name, max_bytes, timeout, deadline)
        except BaseException as err:  # handed to the waiting thread, which raises it
            outcome["error"] = err

    worker = threading.Thread(target=work, name="catalog-download", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise CatalogError(name, None, f"download took longer than {timeout:g} s (redirects included)")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _get(url: str, name: str, max_bytes: int, timeout: float, deadline: float) -> tuple[bytes, str]:
    opener = urllib.request.build_opener(_Redirects(name))  # proxies from the environment, as before
    try:
        with opener.open(url, timeout=timeout) as response:
            final = response.geturl()
            body = bytearray()
            while chunk := response.read1(65536):  # read() would wait for 64 KiB: no deadline check
                body += chunk
                if len(body) > max_bytes:
                    raise CatalogError(name, None, f"larger than {max_bytes} bytes: not a build list")
                if time.monotonic() > deadline:
                    raise CatalogError(name, None, f"download took longer than {timeout:g} s (redirects included)")
    except urllib.error.HTTPError as err:
        at = "" if err.url == url else f" at {display_source(err.url)}"
        raise CatalogError(name, None, f"HTTP {err.code} {printable(str(err.reason))}{at}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as err:  # ValueError: a URL
        # urllib cannot send (a non-ASCII path) or parse (a redirect to http://[::1)
        reason = str(err if isinstance(err, UnicodeError) else getattr(err, "reason", err))  # UnicodeError.reason: no what
        password = urlsplit(url).password
        if password:  # http.client quotes a URL's user info when it takes it for part of the host
            reason = masking([password])(reason)
        raise CatalogError(name, None, f"cannot download: {printable(reason)}") from None
    return bytes(body), final


class _Redirects(urllib.request.HTTPRedirectHandler):
    """urllib's redirects, with two limits: only to http(s), never from https to anything else (urllib follows
    https to http and ftp: the list would come unauthenticated while the command says https), and at most
    MAX_REDIRECTS. A redirect's own body is not read (urllib would read all of it, unbounded)."""

    max_redirections = MAX_REDIRECTS

    def __init__(self, name: str):
        super().__init__()
        self._name = name

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        old, new = urlsplit(req.full_url).scheme.lower(), urlsplit(newurl).scheme.lower()
        if new not in ("http", "https") or (old == "https" and new != "https"):
            raise CatalogError(self._name, None, f"refused a redirect from {old} to {printable(new) or 'no scheme'}: "
                                                 f"{display_source(newurl)} (only https to https, or http to http(s))")
        fp.close()
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def parse_build_list(name: str, text: str, *, today: date) -> Builds:
    """Rows of either format as catalog builds; the first problem raises CatalogError naming its line."""
    first = next((line for line in text.splitlines() if line.strip() and not line.startswith("#")), "")
    if tuple(c.strip() for c in next(csv.reader([first[:1000]]), [])[:3]) == MICROSOFT_HEADER:  # quoted or not
        builds = _parse_microsoft_csv(name, text)
    elif tuple(c.strip() for c in first.split("\t")[: len(BUILD_COLUMNS)]) == BUILD_COLUMNS:
        builds = parse_builds(name, text)
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
    rows = csv.reader(text.splitlines())
    try:
        return _microsoft_rows(name, rows)
    except csv.Error as err:  # a field over csv.field_size_limit(), a NUL in strict mode
        raise CatalogError(name, rows.line_num, f"not CSV: {printable(str(err))}") from None


def _microsoft_rows(name: str, rows) -> Builds:
    builds: Builds = {}
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
        builds[parts] = Build(product, match.group(2), match.group(3) or "", parts, day)
    return builds


def _version(build: Build) -> str:
    return ".".join(map(str, build.parts))


@dataclass(frozen=True)
class Change:
    version: str
    what: str


def verdict_changes(before: Catalog, after: Catalog, builds: list[Build], today: date) -> list[Change]:
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


def validated_update(source: str, *, today: date | None = None) -> tuple[Builds, str]:
    """(rows to write: new or different from the packaged catalog, where the list came from: the path or the
    URL after redirects); raises CatalogError."""
    today = today or today_utc()
    name = display_source(source)
    text, origin = read_source(source)
    listed = parse_build_list(name, text, today=today)
    packaged = packaged_builds()
    shipped = Catalog.from_builds(packaged)
    try:
        candidate = Catalog.from_builds({**packaged, **listed})
    except CatalogError as err:
        raise CatalogError(name, None, f"the list breaks the shipped cutoff rules: {err}") from None
    refuse_moved_thresholds(name, packaged, {**packaged, **listed})
    contradictions = [c for c in verdict_changes(shipped, candidate, list(packaged.values()), today)
                      if c.what.split(" ", 1)[0] in SHIPPED_VERDICT_FIELDS]
    if contradictions:
        first = contradictions[0]
        raise CatalogError(name, None, f"contradicts the shipped catalog: build {first.version}: {first.what}"
                                       + (f" (and {len(contradictions) - 1} more)" if len(contradictions) > 1 else ""))
    rows = {parts: b for parts, b in listed.items() if packaged.get(parts) != b}
    return rows, origin


def write_catalog_file(output: Path, rows: Builds, source: str, origin: str, today: date) -> None:
    """Write the TSV atomically (temp file in the same folder, then rename): a reload sees old or new, never half.
    The new file keeps the old one's mode (and owner, where allowed), or is 0644 minus the umask: the exporter,
    often another user than the one running this, must still read it."""
    lines = [f"# Written by exchange-eems-exporter catalog update on {today.isoformat()} from "
             f"{describe_origin(source, origin)}",
             f"# {len(rows)} builds that are new or different from the packaged catalog.",
             "\t".join(BUILD_COLUMNS)]
    lines += ["\t".join((b.product, b.cu, b.update, _version(b), b.released.isoformat()))
              for b in sorted(rows.values(), key=lambda b: b.parts)]
    output = Path(output)
    handle, temporary = _new_file_beside(output)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as f:
            _keep_mode_and_owner(f.fileno(), output)
            f.write("\n".join(lines) + "\n")
        os.replace(temporary, output)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _new_file_beside(output: Path) -> tuple[int, Path]:
    """A new file next to `output` with a random name, mode 0644 less the umask (mkstemp would make it 0600)."""
    while True:
        temporary = output.parent / f".{output.name}.{secrets.token_hex(6)}"
        try:
            return os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), temporary
        except FileExistsError:
            continue


def _keep_mode_and_owner(handle: int, output: Path) -> None:
    """Give the new file the mode, and if allowed the owner and group, of the file it replaces (if any)."""
    try:
        old = os.stat(output)
    except FileNotFoundError:
        return
    os.fchmod(handle, stat.S_IMODE(old.st_mode) & 0o777)
    for owner in ((old.st_uid, old.st_gid), (-1, old.st_gid)):  # root may keep both; others their group at most
        try:
            os.fchown(handle, *owner)
            return
        except PermissionError:
            continue


def diff(current_builds: Builds, source: str, *, today: date | None = None) -> list[str]:
    """What the list changes against the running catalog: new builds, then every changed verdict."""
    today = today or today_utc()
    current = Catalog.from_builds(current_builds)
    listed = parse_build_list(display_source(source), read_source(source)[0], today=today)
    candidate = Catalog.from_builds({**current_builds, **listed})
    new = [b for parts, b in sorted(listed.items()) if parts not in current_builds]
    out = [f"new builds: {len(new)}"]
    out += [f"  {_version(b)}  {b.product} {b.cu} {b.update}".rstrip() + f"  released {b.released}" for b in new]
    changes = verdict_changes(current, candidate, sorted(current_builds.values(), key=lambda b: b.parts), today)
    out.append(f"changed verdicts: {len(changes)}")
    out += [f"  {c.version}  {c.what}" for c in changes]
    moved = threshold_changes(current_builds, {**current_builds, **listed})
    if moved:  # `catalog update` refuses such a list; shown here so that the diff says why
        out.append(f"changed thresholds: {len(moved)} (catalog update refuses these)")
        out += [f"  {line}" for line in moved]
    return out

