#!/usr/bin/env python3
"""Compare our build catalog with Microsoft HealthChecker's and print every disagreement.

HealthChecker (microsoft/CSS-Exchange) keeps its own build table in
`Shared/Get-ExchangeBuildVersionInformation.ps1`: a hashtable `"Exchange2019" = @{ "CU14" = (NewCUAndSUObject
"15.2.1544.4" @{ "Mar24SU" = "15.2.1544.9" ... }) }`, and a `switch` that marks which CUs it calls
Supported (`$supportedBuildNumber = $true`, falling through from newer to older CUs), each CU's release
date, and the newest SU (`(GetBuildVersion $ex19 "CU15" -SU "Feb26SU") { $latestSUBuild = $true }`).
A peer table maintained by Microsoft is the best check we have that ours is complete and named right;
where the two disagree, docs/catalog.md says which one we trust (Microsoft Learn first) and why.

    python tools/compare_healthchecker.py PATH/TO/Get-ExchangeBuildVersionInformation.ps1 \\
        [--mitigation-analyzer PATH/TO/Invoke-AnalyzerSecurityMitigationService.ps1] \\
        [--flighting-analyzer PATH/TO/Invoke-AnalyzerExchangeInformation.ps1] [--today YYYY-MM-DD]

Only the file's text is read (nothing is executed). Exit 0 after printing, 2 if the file has no build table.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.catalog import Catalog, parse_build, today_utc  # noqa: E402
from exporter.catalog_data import CatalogError  # noqa: E402

_PRODUCT_KEY = re.compile(r'^\s*"(Exchange2013|Exchange2016|Exchange2019|ExchangeSE)"\s*=\s*@\{')
_CU_ENTRY = re.compile(r'^\s*"(\w+)"\s*=\s*\(NewCUAndSUObject\s+"([0-9.]+)"')
_SU_ENTRY = re.compile(r'^\s*"(\w+)"\s*=\s*"([0-9.]+)"\s*$')
_VARIABLE = re.compile(r'^\s*\$(\w+)\s*=\s*"(Exchange2013|Exchange2016|Exchange2019|ExchangeSE)"\s*$')
_MAJOR = re.compile(r'\$exchangeMajorVersion\s*=\s*"(Exchange2013|Exchange2016|Exchange2019|ExchangeSE)"')
_CU_LEVEL = re.compile(r'\$cuLevel\s*=\s*"(\w+)"')
_CU_DATE = re.compile(r'\$cuReleaseDate\s*=\s*"([0-9/]+)"')
_SUPPORTED = re.compile(r"\$supportedBuildNumber\s*=\s*\$(true|false)")
_LATEST_SU = re.compile(r'GetBuildVersion\s+\$(\w+)\s+"(\w+)"\s+-SU\s+"(\w+)"\)\s*\{\s*\$latestSUBuild\s*=\s*\$true')
_FIRST_CU = re.compile(r'-Version\s+"(Exchange\w+)"\s+-CU\s+"(\w+)"')


@dataclass(frozen=True)
class HcBuild:
    product: str
    cu: str
    update: str  # "" for the CU's own build
    version: str


@dataclass
class HcTable:
    builds: list[HcBuild]
    supported: dict[tuple[str, str], bool]  # (product, cu) -> HealthChecker's "Supported"
    cu_dates: dict[tuple[str, str], date]
    latest_su: dict[tuple[str, str], str]  # (product, cu) -> SU name flagged LatestSU


def read_table(text: str) -> HcTable:
    """The build dictionary and the Supported/LatestSU/release-date facts of the switch, from the file's text."""
    builds: list[HcBuild] = []
    product = cu = None
    variables: dict[str, str] = {}
    supported: dict[tuple[str, str], bool] = {}
    cu_dates: dict[tuple[str, str], date] = {}
    latest: dict[tuple[str, str], str] = {}
    major = level = None
    current_supported = False
    in_dictionary = False
    for line in text.splitlines():
        if "function GetExchangeBuildDictionary" in line:
            in_dictionary = True
        if (match := _VARIABLE.match(line)) and not in_dictionary:
            variables[match.group(1)] = match.group(2)
        if in_dictionary:
            if match := _PRODUCT_KEY.match(line):
                product, cu = match.group(1), None
            elif (match := _CU_ENTRY.match(line)) and product:
                cu = match.group(1)
                builds.append(HcBuild(product, cu, "", match.group(2)))
            elif (match := _SU_ENTRY.match(line)) and product and cu:
                builds.append(HcBuild(product, cu, match.group(1), match.group(2)))
            continue
        if match := _MAJOR.search(line):
            major, level, current_supported = match.group(1), None, False
        if (match := _CU_LEVEL.search(line)) and major:
            level = match.group(1)
            supported[(major, level)] = current_supported
        if (match := _SUPPORTED.search(line)) and major and level:
            current_supported = match.group(1) == "true"  # PowerShell's switch falls through: older CUs inherit
            supported[(major, level)] = current_supported
        if (match := _CU_DATE.search(line)) and major and level:
            cu_dates[(major, level)] = datetime.strptime(match.group(1), "%m/%d/%Y").date()
        if match := _LATEST_SU.search(line):
            latest[(variables.get(match.group(1), match.group(1)), match.group(2))] = match.group(3)
    return HcTable(builds, supported, cu_dates, latest)


def first_cus(text: str) -> dict[str, str]:
    """product -> first CU of a feature, from the HealthChecker analyzer that shows it only from that CU on
    (`Test-ExchangeBuildGreaterOrEqualThanBuild ... -Version "Exchange2019" -CU "CU11"`): EEMS in the mitigation-service
    analyzer, Feature Flighting in the Exchange-information one (its only such calls)."""
    return {product: cu for product, cu in _FIRST_CU.findall(text)}


def compare(table: HcTable, catalog: Catalog, today: date, eems_from: dict[str, str] | None,
            flighting_from: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """(kind, detail) for every disagreement."""
    out: list[tuple[str, str]] = []
    ours = {".".join(map(str, b.parts)): b for b in catalog.builds()}
    hc_versions: set[str] = set()
    cu_build = {(b.product, b.cu): b.version for b in table.builds if not b.update}
    for hc in table.builds:
        version = ".".join(map(str, parse_build(hc.version)))
        if hc.update and version == cu_build.get((hc.product, hc.cu)):
            out.append(("hc-update-is-cu-build", f"{hc.product} {hc.cu} {hc.update} = {version}, the CU's own build"))
            continue
        hc_versions.add(version)
        mine = ours.get(version)
        if mine is None:
            out.append(("missing-in-ours", f"{version} ({hc.product} {hc.cu} {hc.update})".replace(" )", ")")))
        elif (mine.product, mine.cu, mine.update) != (hc.product, hc.cu, hc.update):
            out.append(("named-differently", f"{version}: ours {mine.product} {mine.cu} {mine.update or '(CU)'}, "
                                             f"HealthChecker {hc.product} {hc.cu} {hc.update or '(CU)'}"))
    unlisted_cus: Counter[tuple[str, str]] = Counter()
    for version, mine in ours.items():
        if version in hc_versions:
            continue
        if (mine.product, mine.cu) in cu_build:
            out.append(("missing-in-healthchecker", f"{version} ({mine.product} {mine.cu} {mine.update})"
                        .replace(" )", ")")))
        else:
            unlisted_cus[(mine.product, mine.cu)] += 1
    for (product, cu), count in sorted(unlisted_cus.items()):
        out.append(("cu-missing-in-healthchecker", f"{product} {cu} ({count} builds)"))
    for (product, cu), hc_date in sorted(table.cu_dates.items()):
        version = cu_build.get((product, cu))
        mine = ours.get(".".join(map(str, parse_build(version)))) if version else None
        if mine is not None and mine.released != hc_date:
            out.append(("cu-release-date", f"{product} {cu} {version}: ours {mine.released}, HealthChecker {hc_date}"))
    for (product, cu), hc_supported in sorted(table.supported.items()):
        version = cu_build.get((product, cu))
        if version is None:
            continue
        serviced = catalog.verdict(version, today=today).servicing == "serviced"
        if serviced != hc_supported:
            out.append(("supported", f"{product} {cu}: ours {'serviced' if serviced else 'not serviced'} on {today}, "
                                     f"HealthChecker Supported={hc_supported}"))
    for (product, cu), su in sorted(table.latest_su.items()):
        hc_latest = next((b.version for b in table.builds if (b.product, b.cu, b.update) == (product, cu, su)), None)
        newest = max((b for b in ours.values() if b.product == product and b.cu == cu), key=lambda b: b.parts,
                     default=None)
        newest_version = ".".join(map(str, newest.parts)) if newest else None
        if hc_latest and newest_version and hc_latest != newest_version:
            out.append(("latest-su", f"{product} {cu}: ours {newest_version} ({newest.update}), HealthChecker "
                                     f"{hc_latest} ({su})"))
    for kind, first_from, field in (("eems", eems_from, "eems_supported"),
                                    ("flighting", flighting_from, "flighting_supported")):
        # HealthChecker compares a build only with the first CU of its own product (MajorVersion), 2013 has neither
        first = {product: cu_build.get((product, cu)) for product, cu in (first_from or {}).items()}
        for hc in (table.builds if first_from else ()):
            start = first.get(hc.product)
            hc_has = start is not None and parse_build(hc.version) >= parse_build(start)
            mine = getattr(catalog.verdict(hc.version, today=today), field)
            if mine != hc_has:
                out.append((kind, f"{hc.version}: ours {mine}, HealthChecker {hc_has}"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build_table", type=Path, help="HealthChecker's Get-ExchangeBuildVersionInformation.ps1")
    parser.add_argument("--mitigation-analyzer", type=Path,
                        help="Invoke-AnalyzerSecurityMitigationService.ps1: also compare which builds have EEMS")
    parser.add_argument("--flighting-analyzer", type=Path,
                        help="Invoke-AnalyzerExchangeInformation.ps1: also compare which builds have Feature Flighting")
    parser.add_argument("--catalog.file", dest="catalog_file", type=Path, help="an extra catalog_file to include")
    parser.add_argument("--today", type=date.fromisoformat, default=None, help="date for servicing verdicts")
    args = parser.parse_args(argv)
    try:
        table = read_table(args.build_table.read_text(encoding="utf-8-sig"))
        eems_from, flighting_from = (first_cus(path.read_text(encoding="utf-8-sig")) if path else None
                                     for path in (args.mitigation_analyzer, args.flighting_analyzer))
        catalog = Catalog.load(args.catalog_file)
    except (OSError, UnicodeDecodeError, CatalogError) as err:
        print(f"compare_healthchecker: {err}", file=sys.stderr)
        return 2
    if not table.builds:
        print(f"compare_healthchecker: {args.build_table}: no GetExchangeBuildDictionary build table found",
              file=sys.stderr)
        return 2
    disagreements = compare(table, catalog, args.today or today_utc(), eems_from, flighting_from)
    for kind, detail in disagreements:
        print(f"{kind}: {detail}")
    counts = Counter(kind for kind, _ in disagreements)
    checked = ("builds, names, CU dates, Supported, LatestSU" + (", EEMS" if eems_from else "")
               + (", Feature Flighting" if flighting_from else ""))
    print(f"summary: {len(table.builds)} HealthChecker builds, {len(catalog.builds())} catalog builds; checked "
          f"{checked}; " + (", ".join(f"{kind} {n}" for kind, n in sorted(counts.items())) or "no disagreements"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
