"""tools/compare_healthchecker.py on an excerpt of HealthChecker's build table (tests/fixtures): every kind of
disagreement it reports, as a real process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
TOOL = REPO / "tools" / "compare_healthchecker.py"


def compare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=60)


def test_every_disagreement_with_the_excerpt(tmp_path):
    # On 2026-04-02 (the HealthChecker snapshot's date) 2016/2019 were still serviced under ESU.
    result = compare(str(FIXTURES / "healthchecker-excerpt.ps1"), "--today", "2026-04-02")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "named-differently: 15.0.847.32: ours Exchange2013 SP1 (CU), HealthChecker Exchange2013 CU4 (CU)" in lines
    assert "missing-in-ours: 15.1.1415.8 (Exchange2016 CU8 Mar21SU)" in lines  # Learn and Microsoft's CSV say .10
    assert "cu-release-date: Exchange2013 CU17 15.0.1320.4: ours 2017-06-27, HealthChecker 2017-06-24" in lines
    assert "latest-su: ExchangeSE RTM: ours 15.2.2562.53 (Sep26SUv2), HealthChecker 15.2.2562.37 (Feb26SU)" in lines
    assert "latest-su: Exchange2019 CU15: ours 15.2.1748.53 (Sep26SUv2), HealthChecker 15.2.1748.43 (Feb26SU)" in lines
    # Supported agrees: SE RTM, 2019 CU15 and CU14 (falling through) yes; CU13 no, CU12 inherits no.
    assert not any(line.startswith("supported:") for line in lines)
    assert "missing-in-healthchecker: 15.1.1415.10 (Exchange2016 CU8 Mar21SU)" in lines
    assert "cu-missing-in-healthchecker: Exchange2016 CU23 (29 builds)" in lines
    assert lines[-1] == ("summary: 15 HealthChecker builds, 349 catalog builds; checked builds, names, CU dates, "
                         "Supported, LatestSU; cu-missing-in-healthchecker 60, cu-release-date 1, latest-su 2, "
                         "missing-in-healthchecker 59, missing-in-ours 1, named-differently 1")


def test_supported_after_esu_ended_disagrees():
    result = compare(str(FIXTURES / "healthchecker-excerpt.ps1"), "--today", "2026-11-29")
    supported = [line for line in result.stdout.splitlines() if line.startswith("supported:")]
    assert supported == [
        "supported: Exchange2019 CU14: ours not serviced on 2026-11-29, HealthChecker Supported=True",
        "supported: Exchange2019 CU15: ours not serviced on 2026-11-29, HealthChecker Supported=True",
    ]


def test_eems_rule_disagreement():
    # The excerpt claims EEMS starts at 2019 CU13; ours (and HealthChecker's real file) say CU11.
    result = compare(str(FIXTURES / "healthchecker-excerpt.ps1"), "--today", "2026-04-02",
                     "--mitigation-analyzer", str(FIXTURES / "healthchecker-mitigation-excerpt.ps1"))
    eems = [line for line in result.stdout.splitlines() if line.startswith("eems:")]
    assert eems == ["eems: 15.2.1118.7: ours True, HealthChecker False",
                    "eems: 15.2.1118.40: ours True, HealthChecker False"]


def test_flighting_rule_disagreement():
    # The excerpt claims Feature Flighting starts at 2019 CU14; ours (cutoffs.yaml) and HealthChecker's real file
    # (f88378b1e) say CU15: only the CU14 builds disagree, 2019 CU15 and SE agree, 2013/2016 have none on either side.
    result = compare(str(FIXTURES / "healthchecker-excerpt.ps1"), "--today", "2026-04-02",
                     "--flighting-analyzer", str(FIXTURES / "healthchecker-flighting-excerpt.ps1"))
    lines = result.stdout.splitlines()
    assert [line for line in lines if line.startswith("flighting:")] == [
        "flighting: 15.2.1544.4: ours False, HealthChecker True",
        "flighting: 15.2.1544.39: ours False, HealthChecker True"]
    assert "checked builds, names, CU dates, Supported, LatestSU, Feature Flighting;" in lines[-1]


def test_a_file_without_a_build_table(tmp_path):
    empty = tmp_path / "other.ps1"
    empty.write_text("function Foo { }\n")
    result = compare(str(empty))
    assert result.returncode == 2 and "no GetExchangeBuildDictionary build table" in result.stderr
    assert compare(str(tmp_path / "missing.ps1")).returncode == 2
