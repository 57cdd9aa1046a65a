"""Exchange build catalog: which release a build is, how old, and whether it can still get EEMS mitigations.

The facts live in `exporter/data/` (builds.tsv, lifecycle.tsv, servicing.tsv, cutoffs.yaml) so updating
Microsoft's release list is a data change; `catalog_data.py` reads and checks them, at start and at a reload.
This module only applies the rules below, on every poll.

Build numbers only order releases *within* one CU: major.minor.build names the CU (15.2.1748 = 2019 CU15),
the fourth part the update. Verdicts for builds the catalog does not list (known=False):

- A build of a known CU (newer than its newest known build, between two known builds, or older than its
  first known build) takes the CU's name; update "unknown"; released None; superseded_since is the release
  of the first known newer build of that CU. A cutoff with a minimum for that CU compares the fourth part
  with it, so a build newer than every known build is judged as the newest known build is.
- A build of an unknown CU takes cu "unknown" and update "unknown". Its place among the product's CUs is
  its third part: at or after the product's first EEMS CU it has EEMS; past the product's final CU
  (servicing.tsv `final_cu`: 2013 CU23, 2016 CU23, 2019 CU15) it is no Microsoft release and fails every cutoff;
  it passes a cutoff whose `all_from`
  CU it reaches; if it is newer than every CU of the packaged catalog (the list cutoffs.yaml was written
  against) of a product with EEMS it passes every cutoff (a future CU); otherwise (older than the first known
  CU, or between known CUs that only have a per-CU minimum) it fails, since we cannot know it carries the fix.
  A future CU an operator's catalog_file lists (`catalog update`) is still a future CU: listing it names it,
  it does not make it fail a cutoff it passed unlisted (a CU is cumulative: one released after a cutoff's
  fix carries it).
- A build of an Exchange version past every product the catalog knows (major.minor above 15.2: a future
  Subscription Edition release numbered 15.3 or 16.0) cannot be placed: product, cu and update "unknown",
  servicing "unknown", EEMS unknown (None) and no cutoff verdict at all, neither pass nor fail. Only a build a
  server reports is judged so (`parse_reported_build`); the catalog's own data keep refusing it (`parse_build`),
  since no rule of a product we do not know can be written.
- Exchange 2013 never had EEMS, so every 2013 build fails every cutoff whatever its number.
- A build without EEMS (2016 <= CU21, 2019 <= CU10, 2013) fails every cutoff: it cannot receive mitigations.
- A CU-level build (from AdminDisplayVersion, which names the CU but not its update) is judged as the
  oldest known build of its CU: it passes a cutoff when every build of that CU does, fails it when none
  does, and otherwise has no verdict for that cutoff (its update decides; review R12).

Thresholds (EEMS's first CU, a cutoff's `all_from` CU and `minimum` build) compare all four parts of
the build, as HealthChecker does (`>= 15.1.2375.7`), never the third part alone.

Servicing (servicing.tsv) is a rule plus the release history:
- a CU is serviced while it is one of the product's `serviced_cus` newest CUs and the product's
  `updates_end` (ESU included) has not passed; once that has passed the product is out of support;
- a CU that left that window stopped being serviced when the window moved past it (the release of the
  CU `serviced_cus` places newer), or, if Microsoft kept shipping updates for it after that (2016 CU22
  got SUs until Nov22SU), on the product's first release after its last update.
- the update path leads to the newest build of the CU while it is serviced, else to the newest build
  of the product's newest CU, else (out of support) to the newest build of `migrate_to`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from .model import BuildVerdict, NextBuild

# Where each product's version range starts (major, minor, build). A build belongs to the last product
# whose start it reaches within the same major.minor; HealthChecker's rule (SE = 15.2 with build >= 2562).
PRODUCT_FIRST_BUILD: dict[str, tuple[int, int, int]] = {
    "Exchange2013": (15, 0, 0),
    "Exchange2016": (15, 1, 0),
    "Exchange2019": (15, 2, 0),
    "ExchangeSE": (15, 2, 2562),
}
SERVICED, CU_NOT_SERVICED, OUT_OF_SUPPORT = "serviced", "cu_not_serviced", "out_of_support"
UNKNOWN = "unknown"
# The newest major.minor of the products above. A server may report a newer one (a future Exchange release):
# a build the catalog does not know, judged unknown, unlike a version older than Exchange 2013 (no EEMS, no
# collection script on its PowerShell 2.0) or one that is no Windows file version.
NEWEST_MAJOR_MINOR = max(start[:2] for start in PRODUCT_FIRST_BUILD.values())
FILE_VERSION_PART_MAX = 65535  # a Windows file version is four 16-bit numbers (VS_FIXEDFILEINFO)

VERDICTS_KEPT = 1024  # distinct (build, cu_level, day) verdicts a Catalog keeps; far more than an organization has
_VERSION = re.compile(r"([0-9]{1,9})\.([0-9]{1,9})\.([0-9]{1,9})\.([0-9]{1,9})")
_VERSION_EXAMPLE = "expected e.g. 15.2.1544.4"
_ADMIN_DISPLAY_VERSION = re.compile(r"Version ([0-9]{1,9})\.([0-9]{1,9}) \(Build ([0-9]{1,9})\.([0-9]{1,9})\)")


class BuildVersionError(ValueError):
    """A version string that is not an Exchange 2013/2016/2019/SE build."""


def short_repr(value: object) -> str:
    """A value as an error message quotes it: repr, cut to 40 characters (a data file may hold anything)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_build(version: object) -> tuple[int, int, int, int]:
    """Split a build into its four numbers, refusing anything that is not Exchange 15.0-15.2. A part no Windows file
    version holds is refused whatever the product: a known product's would be judged a future CU, passing cutoffs."""
    parts = _four_parts(version)
    if parts[:2] not in {start[:2] for start in PRODUCT_FIRST_BUILD.values()}:
        raise BuildVersionError(
            f"{short_repr(version)} is not an Exchange 2013/2016/2019/SE build (major.minor must be 15.0, 15.1 or 15.2)"
        )
    return parts  # type: ignore[return-value]


def parse_reported_build(version: object) -> tuple[int, int, int, int]:
    """A build a server reports: one of a known product (`parse_build`), or a well-formed build of an Exchange
    version newer than every product the catalog knows (major.minor above 15.2, each part within a Windows file
    version's 16 bits), which `Catalog.verdict` judges unknown. Anything else is refused as `parse_build` refuses it."""
    parts = _four_parts(version)
    if is_placed(parts):
        return parse_build(version)
    return parts


def _four_parts(version: object) -> tuple[int, int, int, int]:
    """The four numbers of a Windows file version (each at most FILE_VERSION_PART_MAX), of any product."""
    match = _VERSION.fullmatch(version.strip()) if isinstance(version, str) else None
    if match is None:
        raise BuildVersionError(f"{short_repr(version)} is not a four-part Exchange build ({_VERSION_EXAMPLE})")
    parts = tuple(int(p) for p in match.groups())
    if max(parts) > FILE_VERSION_PART_MAX:
        raise BuildVersionError(f"{short_repr(version)} is not an Exchange build (a part above "
                                f"{FILE_VERSION_PART_MAX}, more than a Windows file version holds)")
    return parts  # type: ignore[return-value]


def is_placed(parts: tuple[int, int, int, int]) -> bool:
    """Whether the build belongs to a product the catalog knows (else it is of a newer Exchange version)."""
    return parts[:2] <= NEWEST_MAJOR_MINOR


def parse_admin_display_version(text: object) -> str:
    """`Version 15.2 (Build 1544.36)` (Get-ExchangeServer, deserialized) -> `15.2.1544.36`."""
    match = _ADMIN_DISPLAY_VERSION.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise BuildVersionError(f"AdminDisplayVersion {short_repr(text)} is not like 'Version 15.2 (Build 1544.36)'")
    version = ".".join(match.groups())
    parse_reported_build(version)
    return version


def product_of(parts: tuple[int, int, int, int]) -> str:
    starts = [(start, name) for name, start in PRODUCT_FIRST_BUILD.items() if start[:2] == parts[:2]]
    return max((s for s in starts if s[0] <= parts[:3]))[1]


@dataclass(frozen=True)
class Build:
    product: str
    cu: str
    update: str
    parts: tuple[int, int, int, int]
    released: date


@dataclass(frozen=True)
class Cutoff:
    minimum: dict[tuple[str, tuple[int, int, int]], tuple[int, int, int, int]]  # (product, CU) -> first passing build
    all_from: dict[str, tuple[int, int, int, int]]  # product -> first build of the first CU whose builds all pass


@dataclass(frozen=True)
class Servicing:
    serviced_cus: int
    updates_end: date | None
    migrate_to: str | None
    final_cu: str | None = None  # the product's last CU (no CU follows it), by name; None while CUs still ship


def today_utc() -> date:
    return datetime.now(timezone.utc).date()


class Catalog:
    """The merged build list, cutoffs and servicing rule, indexed for verdicts."""

    def __init__(
        self,
        builds: dict[tuple[int, int, int, int], Build],
        support_end: dict[str, date | None],
        servicing: dict[str, Servicing],
        eems_first: dict[str, tuple[int, int, int, int]],
        flighting_first: dict[str, tuple[int, int, int, int]],
        cutoffs: dict[str, Cutoff],
        future_after: dict[str, tuple[int, int, int]],
        checked: date | None = None,
    ):
        """`future_after`: per product, the newest CU the cutoffs were written against (the packaged list's);
        a CU newer than it passes every cutoff. `checked`: the day `catalog update` last compared the catalog with
        Microsoft's list, if it did."""
        self._builds = builds
        self._support_end = support_end
        self._servicing = servicing
        self._eems_first = eems_first
        self._flighting_first = flighting_first
        self._cutoffs = cutoffs
        self._cus: dict[tuple[str, tuple[int, int, int]], list[Build]] = {}
        for build in sorted(builds.values(), key=lambda b: b.parts):
            self._cus.setdefault((build.product, build.parts[:3]), []).append(build)
        self._product_cus: dict[str, list[tuple[int, int, int]]] = {}
        for product, triple in sorted(self._cus):
            self._product_cus.setdefault(product, []).append(triple)
        self._future_after = future_after
        # A product whose last CU is known has no future CU: a build of a later CU was never released (servicing.tsv)
        self._final_cu: dict[str, tuple[int, int, int]] = {
            product: triple for (product, triple), cu_builds in self._cus.items()
            if servicing.get(product) is not None and cu_builds[0].cu == servicing[product].final_cu}
        self._releases: dict[str, list[date]] = {}  # each product's release dates, in order
        for build in sorted(builds.values(), key=lambda b: b.released):
            self._releases.setdefault(build.product, []).append(build.released)
        self.newest_release: date = max(b.released for b in builds.values())
        # Since when the catalog is known to be current: a list with nothing new still says nothing was missing
        self.checked: date = max(self.newest_release, checked or self.newest_release)
        self.cutoff_ids: tuple[str, ...] = tuple(cutoffs)
        self._verdicts: dict[tuple[tuple[int, int, int, int], bool, date], BuildVerdict] = {}

    @classmethod
    def load(cls, extra_file: Path | None = None) -> "Catalog":
        """Packaged data plus an operator's TSV (same columns) that adds builds or overrides packaged rows."""
        from .catalog_data import load_builds_checked, packaged_builds, refuse_moved_thresholds  # uses this module's rules

        builds, checked = load_builds_checked(extra_file)
        if extra_file is not None:  # what `catalog update` refuses to write is refused when written by other means
            refuse_moved_thresholds(str(extra_file), packaged_builds(), builds)
        return cls.from_builds(builds, checked=checked)

    @classmethod
    def from_builds(cls, builds: dict[tuple[int, int, int, int], Build], *, checked: date | None = None) -> "Catalog":
        """The packaged lifecycle, servicing rule and cutoffs applied to this build list."""
        from .catalog_data import packaged_builds, packaged_rules

        future_after: dict[str, tuple[int, int, int]] = {}
        for build in packaged_builds().values():
            future_after[build.product] = max(future_after.get(build.product, build.parts[:3]), build.parts[:3])
        return cls(builds, *packaged_rules(builds), future_after=future_after, checked=checked)

    def builds(self) -> list[Build]:
        return sorted(self._builds.values(), key=lambda b: b.parts)

    def verdict(self, version: str, *, cu_level: bool = False, today: date | None = None) -> BuildVerdict:
        """Judge a build a server reports (`parse_reported_build`). `cu_level`: the version names only its CU
        (AdminDisplayVersion), its update is unknown.

        Every poll of a server judges its build again, the same build on the same day: the verdict is kept
        (at most VERDICTS_KEPT, four numbers a key, so a server reporting ever new builds costs nothing)."""
        key = (parse_reported_build(version), cu_level, today or today_utc())
        found = self._verdicts.get(key)
        if found is None:
            if len(self._verdicts) >= VERDICTS_KEPT:
                self._verdicts.clear()
            found = self._verdicts[key] = self._judge(*key)
        return found

    def _judge(self, build: tuple[int, int, int, int], cu_level: bool, today: date) -> BuildVerdict:
        if not is_placed(build):
            return _unplaced(build)
        parts = build  # what is judged: a CU-level version is judged as its CU's oldest build (below)
        product = product_of(parts)
        same_cu = self._cus.get((product, parts[:3]), [])
        exact = None if cu_level else self._builds.get(parts)
        if exact is not None:
            cu, update, released = exact.cu, exact.update, exact.released
        elif same_cu:
            older = [b for b in same_cu if b.parts < parts]
            cu, update, released = (older[-1] if older else same_cu[0]).cu, UNKNOWN, None
        else:
            cu, update, released = UNKNOWN, UNKNOWN, None
        if cu_level:  # judged as the CU's oldest build: compliant only if every build of the CU is
            parts = same_cu[0].parts if same_cu else parts[:3] + (0,)
        newer = [b for b in same_cu if b.parts > parts]
        superseded_since = newer[0].released if newer and not cu_level else None
        eems = product in self._eems_first and parts >= self._eems_first[product]
        flighting = product in self._flighting_first and parts >= self._flighting_first[product]
        servicing, servicing_end = self._servicing_state(product, parts[:3], today)
        next_build = self._next_build(product, servicing, same_cu, parts, cu_level)
        if servicing == SERVICED:
            path_since = superseded_since
        else:
            path_since = min(d for d in (superseded_since, servicing_end) if d is not None)
        return BuildVerdict(
            version=".".join(map(str, build)),
            product=product,
            cu=cu,
            update=update,
            released=released,
            known=exact is not None,
            eems_supported=eems,
            flighting_supported=flighting,
            cutoffs=self._cutoff_verdicts(eems, product, parts, same_cu if cu_level else None),
            superseded_since=superseded_since,
            product_support_end=self._support_end.get(product),
            servicing=servicing,
            cu_servicing_end=servicing_end,
            next_build=next_build,
            update_path_since=path_since if next_build is not None else None,
        )

    def _servicing_state(self, product: str, triple: tuple[int, int, int], today: date) -> tuple[str, date | None]:
        """(servicing, first day without updates) of a CU, from the rule in servicing.tsv and the release history."""
        rule = self._servicing[product]
        product_end = rule.updates_end + timedelta(days=1) if rule.updates_end is not None else None
        newer_cus = [t for t in self._product_cus.get(product, []) if t > triple]
        end = None
        if len(newer_cus) >= rule.serviced_cus:
            end = self._cus[(product, newer_cus[rule.serviced_cus - 1])][0].released
            own = self._cus.get((product, triple))
            if own is not None:
                last_update = max(b.released for b in own)
                later = [d for d in self._releases[product] if d > last_update]
                if later:
                    end = max(end, later[0])
        if product_end is not None and product_end <= today:
            return OUT_OF_SUPPORT, min(d for d in (end, product_end) if d is not None)
        if end is not None and end <= today:
            return CU_NOT_SERVICED, end
        return SERVICED, None

    def _next_build(self, product: str, servicing: str, same_cu: list[Build], parts: tuple[int, int, int, int],
                    cu_level: bool) -> NextBuild | None:
        if servicing == SERVICED:
            if not same_cu or (same_cu[-1].parts <= parts and not cu_level):
                return None
            target = same_cu[-1]
        else:
            if servicing == OUT_OF_SUPPORT:
                product = self._servicing[product].migrate_to or product
            cus = self._product_cus.get(product)
            if not cus:
                return None
            target = self._cus[(product, cus[-1])][-1]
            if target.parts <= parts:
                return None
        return NextBuild(".".join(map(str, target.parts)), target.product, target.cu, target.update, target.released)

    def _cutoff_verdicts(self, eems: bool, product: str, parts: tuple[int, int, int, int],
                         cu_builds: list[Build] | None) -> dict[str, bool]:
        """Per cutoff, whether the build passes. A CU-level build (`cu_builds`: its CU's known builds) passes when
        the CU's oldest build does and fails when its newest does; between, its update decides, which is unknown,
        so that cutoff is left out rather than judged on the CU's oldest build (review R12: a CU-level build
        must not page a cutoff that its security update may pass)."""
        verdicts = {}
        for cid, cutoff in self._cutoffs.items():
            passes = eems and self._passes(cutoff, product, parts)
            if cu_builds and not passes and eems and self._passes(cutoff, product, cu_builds[-1].parts):
                continue
            verdicts[cid] = passes
        return verdicts

    def _passes(self, cutoff: Cutoff, product: str, parts: tuple[int, int, int, int]) -> bool:
        final = self._final_cu.get(product)
        if final is not None and parts[:3] > final:  # no such CU was released: nothing says it carries the fix
            return False
        minimum = cutoff.minimum.get((product, parts[:3]))
        if minimum is not None:
            return parts >= minimum
        if product in cutoff.all_from and parts >= cutoff.all_from[product]:
            return True
        future_after = self._future_after.get(product)
        return future_after is not None and parts[:3] > future_after


def _unplaced(build: tuple[int, int, int, int]) -> BuildVerdict:
    """The verdict on a build of an Exchange version newer than every product the catalog knows: unknown, and
    nothing judged of it. Not "no EEMS" and no cutoff failed (each would page on a guess), nor a cutoff passed."""
    return BuildVerdict(
        version=".".join(map(str, build)),
        product=UNKNOWN,
        cu=UNKNOWN,
        update=UNKNOWN,
        released=None,
        known=False,
        eems_supported=None,
        flighting_supported=None,
        cutoffs={},
        superseded_since=None,
        product_support_end=None,
        servicing=UNKNOWN,
        cu_servicing_end=None,
        next_build=None,
        update_path_since=None,
    )
