"""Ready to publish: a LICENSE for the license pyproject.toml declares, a changelog entry for its version, a
security policy, and `make dist` building an sdist and a wheel that hold the exporter only and pass twine check."""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def pyproject(path: Path = ROOT / "pyproject.toml") -> dict:
    return tomllib.loads(path.read_text())["project"]


def test_license_file_is_the_declared_license():
    assert pyproject()["license"] == pyproject(ROOT / "simulator" / "pyproject.toml")["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert re.match(r"\s*Apache License\s+Version 2\.0, January 2004", text)
    assert "END OF TERMS AND CONDITIONS" in text


def test_changelog_has_the_version_and_security_policy_says_how_to_report():
    version = pyproject()["version"]
    assert re.search(rf"^## \[{re.escape(version)}\]", (ROOT / "CHANGELOG.md").read_text(), re.M)
    security = (ROOT / "SECURITY.md").read_text()
    assert "## Reporting a vulnerability" in security and "do **not** open a public issue" in security


def test_make_dist_builds_an_sdist_and_a_wheel_of_the_exporter_only_that_twine_accepts(tmp_path):
    result = subprocess.run(["make", "-s", "dist", f"DIST={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("PASSED") == 2, result.stdout  # twine check --strict, both files
    version = pyproject()["version"]
    (wheel,) = tmp_path.glob(f"exchange_eems_exporter-{version}-py3-none-any.whl")
    (sdist,) = tmp_path.glob(f"exchange_eems_exporter-{version}.tar.gz")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = f"exchange_eems_exporter-{version}.dist-info"
        metadata = Parser().parsestr(archive.read(f"{info}/METADATA").decode())
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
    assert {name.split("/")[0] for name in names} == {"exporter", info}
    assert {"exporter/data/alert_rules.yml", "exporter/data/builds.tsv", "exporter/scripts/collect_server.ps1",
            f"{info}/licenses/LICENSE"} <= set(names)
    assert metadata["License-Expression"] == "Apache-2.0"
    assert "exchange-eems-simulator" not in entry_points and "exchange-eems-exporter = exporter.cli:main" in entry_points
    with tarfile.open(sdist) as archive:
        top = {Path(m.name).parts[1] for m in archive.getmembers() if len(Path(m.name).parts) > 1}
    assert "simulator" not in top and {"exporter", "LICENSE", "README.md", "pyproject.toml"} <= top


def _data_files(package: str) -> set[str]:
    """The files of `package` that are not Python: what its wheel must carry for the code that reads them."""
    listed = subprocess.run(["git", "ls-files", package], cwd=ROOT, capture_output=True, text=True, check=True)
    return {name for name in listed.stdout.split() if not name.endswith(".py") and not name.endswith("pyproject.toml")}


def test_each_wheel_carries_every_data_file_its_package_reads(tmp_path):
    """A file the code reads through importlib.resources but missing from package-data works in a clone (an
    editable install reads the tree) and fails in an installed wheel: simulator/data/core_types.txt was left out
    of the simulator's wheel, so its Constrained Language Mode could not start there."""
    for source, package in ((ROOT, "exporter"), (ROOT / "simulator", "simulator")):
        out = tmp_path / package
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                        "--wheel-dir", str(out), str(source)], check=True, capture_output=True, timeout=300)
        (wheel,) = out.glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            names = set(archive.namelist())
        assert _data_files(package) - names == set(), f"{package}'s wheel lacks these files"
