"""`catalog update` / `catalog diff` as an operator runs them: real processes, Microsoft's CSV format (an
excerpt in tests/fixtures), our TSV, an HTTP URL served from loopback, and a running exporter that picks
the written catalog_file up on reload. A bad list exits 2 with one clear line and writes nothing."""

from __future__ import annotations

import csv
import http.server
import json
import os
import stat
import subprocess
import sys
import threading
import time
from datetime import date, datetime, timezone
from pathlib import Path

import pytest

from exporter.catalog import Catalog
from exporter.catalog_data import CatalogError
from exporter.catalog_update import read_source
from exporter.config import load_config
from exporter.exporter import Exporter

from ..conftest import PASSWORD, PASSWORD_ENV, minimal_config
from .test_cli import REPO, assert_one_line_error, exporter

FIXTURE = Path(__file__).parent.parent / "fixtures" / "ExchangeBuildNumbers-excerpt.csv"
MICROSOFT_LIST = FIXTURE.with_name("ExchangeBuildNumbers-a2c819b.csv")  # the whole list, unchanged
OCT26 = "Exchange SE RTM Oct26SU,15.2.2562.60,10/13/2026,KB0000000,\n"  # a build newer than the packaged catalog
HEADER = "product\tcu\tupdate\tbuild\treleased\n"


def newer_list(tmp_path: Path, extra: str = OCT26) -> Path:
    path = tmp_path / "ExchangeBuildNumbers.csv"
    path.write_text(FIXTURE.read_text(encoding="utf-8") + extra, encoding="utf-8")
    return path


@pytest.fixture
def loopback_server():
    """Serves {path: (status, body[, headers])} on 127.0.0.1; yields the base URL and the route table."""
    routes: dict[str, tuple] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            status, body, *headers = routes.get(self.path, (404, b"not found"))
            self.send_response(status)
            for name, value in (headers[0] if headers else {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.path == "/slow":
                for byte in body:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.2)
            else:
                self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()  # shutdown() waits a poll
    yield f"http://127.0.0.1:{server.server_address[1]}", routes
    server.shutdown()
    server.server_close()


# ---------------------------------------------------------------- update


def test_microsofts_whole_list_agrees_with_the_packaged_catalog(tmp_path):
    """`catalog update` on Microsoft's whole list, as the ExchangeCatalogStale runbook has an admin run it: every
    Exchange 2013-SE row is read, each is a packaged build with Microsoft's name and date, so the written file holds
    no row (a row that differed would override the packaged one), and the rows docs/reference/exchange-builds.tsv
    credits to this list (`gebn`) are exactly its rows."""
    output = tmp_path / "catalog.tsv"
    result = exporter("catalog", "update", "--from", str(MICROSOFT_LIST), "--output", str(output))
    assert result.returncode == 0, result.stderr
    assert "0 builds new or different" in result.stdout
    assert output.read_text(encoding="utf-8").splitlines()[1:] == [
        "# 0 builds that are new or different from the packaged catalog.", HEADER.strip()]
    listed = {".".join(str(int(part)) for part in row["Build Number"].split("."))
              for row in csv.DictReader(MICROSOFT_LIST.read_text(encoding="utf-8").splitlines())
              if not row["Product Name"].startswith(("Exchange 2007", "Exchange 2010"))}
    with (REPO / "docs" / "reference" / "exchange-builds.tsv").open(encoding="utf-8", newline="") as f:
        credited = {row["build"] for row in csv.DictReader(f, delimiter="\t") if "gebn" in row["source"].split("+")}
    assert len(listed) == 225 and listed == credited
    packaged = {".".join(map(str, b.parts)) for b in Catalog.load().builds()}
    assert listed <= packaged


def test_update_from_microsoft_csv_writes_only_new_rows(tmp_path):
    output = tmp_path / "catalog.tsv"
    result = exporter("catalog", "update", "--from", str(newer_list(tmp_path)), "--output", str(output))
    assert result.returncode == 0, result.stderr
    assert "1 builds new or different" in result.stdout and "reload" in result.stdout
    rows = [line for line in output.read_text().splitlines() if not line.startswith("#")]
    assert rows == [HEADER.strip(), "ExchangeSE\tRTM\tOct26SU\t15.2.2562.60\t2026-10-13"]
    data = json.loads(exporter("build", "15.2.2562.60", "--json", "--catalog.file", str(output)).stdout)
    assert (data["known"], data["update"], data["cutoffs"]) == (True, "Oct26SU", {"2023-03": True, "2026-06": True})
    before = json.loads(exporter("build", "15.2.2562.53", "--json").stdout)
    after = json.loads(exporter("build", "15.2.2562.53", "--json", "--catalog.file", str(output)).stdout)
    assert before["next_build"] is None and after["next_build"]["version"] == "15.2.2562.60"


def test_update_from_our_own_tsv(tmp_path):
    source = tmp_path / "mine.tsv"
    source.write_text(HEADER + "ExchangeSE\tRTM\tOct26SU\t15.2.2562.60\t2026-10-13\n"
                      + "Exchange2019\tCU15\tOct25SU\t15.2.1748.39\t2025-10-14\n")  # same as packaged: not written
    output = tmp_path / "catalog.tsv"
    result = exporter("catalog", "update", "--from", str(source), "--output", str(output))
    assert result.returncode == 0, result.stderr
    assert Catalog.load(output).verdict("15.2.2562.60").known
    assert "15.2.1748.39" not in output.read_text()


def test_update_from_a_loopback_url(tmp_path, loopback_server):
    base, routes = loopback_server
    routes["/ExchangeBuildNumbers.csv"] = (200, newer_list(tmp_path).read_bytes())
    output = tmp_path / "catalog.tsv"
    result = exporter("catalog", "update", "--from", base + "/ExchangeBuildNumbers.csv", "--output", str(output))
    assert result.returncode == 0, result.stderr
    assert "15.2.2562.60" in output.read_text()
    routes["/gone"] = (404, b"no")
    failed = exporter("catalog", "update", "--from", base + "/gone", "--output", str(output))
    assert_one_line_error(failed, "nothing written", "HTTP 404")


def test_url_download_is_bounded_in_size_and_time(loopback_server):
    base, routes = loopback_server
    routes["/huge"] = (200, b"Product Name,Build Number,Date\n" + b"x" * 300_000)
    with pytest.raises(CatalogError, match="larger than 100000 bytes"):
        read_source(base + "/huge", max_bytes=100_000)
    routes["/slow"] = (200, b"Product Name,Build Number,Date\n" * 4)
    started = time.monotonic()
    with pytest.raises(CatalogError, match="longer than 1 s|cannot download"):
        read_source(base + "/slow", timeout=1.0)
    assert time.monotonic() - started < 5


BAD_LISTS = [
    ("unknown product", OCT26.replace("Exchange SE RTM", "Exchange 2030 RTM"), "unknown product 'Exchange 2030 RTM Oct26SU'"),
    ("impossible date", OCT26.replace("10/13/2026", "2/30/2026"), "date '2/30/2026' is not a real date"),
    ("future date", OCT26.replace("10/13/2026", "10/13/2031"), "release date in the future (2031-10-13)"),
    ("bad build", OCT26.replace("15.2.2562.60", "15.2.2562"), "not a four-part Exchange build"),
    ("wrong product for build", OCT26.replace("15.2.2562.60", "15.1.2562.60"), "belongs to Exchange2016"),
    ("twice", OCT26 + OCT26.replace("Oct26SU", "Oct26SUv2"), "is listed twice"),
    # A CU13 build named CU12 makes "CU12" two CUs: the 2023-03 minimum of CU12 no longer names one CU.
    ("contradicts a cutoff", "Exchange 2019 CU12 Foo,15.2.1258.13,5/3/2023,,\n", "breaks the shipped cutoff rules"),
]


@pytest.mark.parametrize("extra, phrase", [case[1:] for case in BAD_LISTS], ids=[case[0] for case in BAD_LISTS])
def test_bad_list_exits_2_and_leaves_the_catalog_file_untouched(tmp_path, extra, phrase):
    output = tmp_path / "catalog.tsv"
    output.write_text(HEADER + "ExchangeSE\tRTM\tmine\t15.2.2562.70\t2026-11-10\n")
    before = output.read_bytes()
    result = exporter("catalog", "update", "--from", str(newer_list(tmp_path, extra)), "--output", str(output))
    assert_one_line_error(result, "catalog not updated, nothing written", phrase)
    assert output.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ExchangeBuildNumbers.csv", "catalog.tsv"]  # no temp left


@pytest.mark.parametrize("content, phrase", [
    (b"", "neither Microsoft's ExchangeBuildNumbers.csv"),
    (b"<html>rate limited</html>\n", "neither Microsoft's ExchangeBuildNumbers.csv"),
    (b"\xff\xfe\x00garbage", "not UTF-8 text"),
    (b"Product Name,Build Number,Date,KB,Blog\nExchange 2010 SP3,14.3.123.4,2/12/2013,,\n", "no Exchange 2013/2016"),
])
def test_files_that_are_not_build_lists(tmp_path, content, phrase):
    source = tmp_path / "list.csv"
    source.write_bytes(content)
    result = exporter("catalog", "update", "--from", str(source), "--output", str(tmp_path / "out.tsv"))
    assert_one_line_error(result, phrase)
    assert not (tmp_path / "out.tsv").exists()


def test_missing_source_and_unwritable_output(tmp_path):
    assert_one_line_error(exporter("catalog", "update", "--from", str(tmp_path / "nope.csv"), "--output",
                                   str(tmp_path / "out.tsv")), "cannot read")
    assert_one_line_error(exporter("catalog", "update", "--from", "ftp://127.0.0.1/x.csv", "--output",
                                   str(tmp_path / "out.tsv")), "unsupported URL scheme 'ftp'")
    result = exporter("catalog", "update", "--from", str(FIXTURE), "--output", str(tmp_path / "no" / "out.tsv"))
    assert_one_line_error(result, "cannot write")


def test_running_exporter_picks_the_update_up_on_reload_and_keeps_it_after_a_bad_one(tmp_path):
    output = tmp_path / "catalog.tsv"
    output.write_text(HEADER)
    config_file = tmp_path / "exporter.yml"
    config_file.write_text(minimal_config(f"catalog_file: {output}\n"))
    running = Exporter(load_config(config_file), Catalog.load(output))
    assert not running.runtime.current().catalog.verdict("15.2.2562.60").known
    assert exporter("catalog", "update", "--from", str(newer_list(tmp_path)), "--output", str(output)).returncode == 0
    assert running.reload() == (True, "configuration reloaded")
    assert running.runtime.current().catalog.verdict("15.2.2562.60").known
    assert running.runtime.current().catalog.newest_release == date(2026, 10, 13)
    bad = newer_list(tmp_path, OCT26.replace("Exchange SE", "Exchange 2030"))
    assert exporter("catalog", "update", "--from", str(bad), "--output", str(output)).returncode == 2
    assert running.reload() == (True, "configuration unchanged")  # the failed update wrote nothing
    assert running.runtime.current().catalog.verdict("15.2.2562.60").known


# ---------------------------------------------------------------- diff


def test_diff_shows_new_builds_and_changed_verdicts(tmp_path):
    result = exporter("catalog", "diff", "--from", str(newer_list(tmp_path)))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["new builds: 1", "  15.2.2562.60  ExchangeSE RTM Oct26SU  released 2026-10-13"]
    assert "  15.2.2562.53  next_build none -> 15.2.2562.60" in lines
    assert "  15.2.2562.41  next_build 15.2.2562.53 -> 15.2.2562.60" in lines
    # 2019 is out of support: its path leads to SE's newest build, which moved too.
    assert "  15.2.1748.53  next_build 15.2.2562.53 -> 15.2.2562.60" in lines
    assert not any(line.startswith("  15.2.1748.53  servicing") for line in lines)


def test_diff_against_the_running_catalog_file(tmp_path):
    output = tmp_path / "catalog.tsv"
    assert exporter("catalog", "update", "--from", str(newer_list(tmp_path)), "--output", str(output)).returncode == 0
    result = exporter("catalog", "diff", "--from", str(newer_list(tmp_path)), "--catalog.file", str(output))
    assert result.stdout.splitlines() == ["new builds: 0", "changed verdicts: 0"]


def test_diff_of_a_bad_list_exits_2(tmp_path):
    result = exporter("catalog", "diff", "--from", str(newer_list(tmp_path, "Exchange 2030 RTM,15.2.1.1,1/1/2026,,\n")))
    assert_one_line_error(result, "unknown product 'Exchange 2030 RTM'", "ExchangeBuildNumbers.csv:17")


# ---------------------------------------------------------------- hostile input, round 2 (issue 24, findings 16 and 19)


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o027, 0o640)], ids=["umask 022", "umask 027"])
def test_a_new_catalog_file_is_0644_minus_the_umask(tmp_path, umask, expected):
    """Before: always 0600 (mkstemp), unreadable by an exporter running as its own user."""
    output = tmp_path / "catalog.tsv"
    result = subprocess.run([sys.executable, "-m", "exporter", "catalog", "update", "--from", str(newer_list(tmp_path)),
                             "--output", str(output)], capture_output=True, text=True, cwd=REPO, timeout=60,
                            preexec_fn=lambda: os.umask(umask))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(output.stat().st_mode) == expected


def test_an_updated_catalog_file_keeps_its_mode_and_owner(tmp_path):
    output = tmp_path / "catalog.tsv"
    output.write_text(HEADER)
    output.chmod(0o604)
    owner = (65534, 65534) if os.geteuid() == 0 else (os.getuid(), os.getgid())  # only root can give a file away
    os.chown(output, *owner)
    assert exporter("catalog", "update", "--from", str(newer_list(tmp_path)), "--output", str(output)).returncode == 0
    assert "15.2.2562.60" in output.read_text()
    assert stat.S_IMODE(output.stat().st_mode) == 0o604
    assert (output.stat().st_uid, output.stat().st_gid) == owner


def test_control_characters_in_a_source_are_escaped_in_the_file_and_on_the_terminal(tmp_path):
    """Before: a newline in the --from path went raw into the comment line, so the written file failed to load
    (and the next restart with it), and the terminal got the raw bytes."""
    source = tmp_path / "list\n\x1b[2J\u202e.csv"
    source.write_bytes(newer_list(tmp_path).read_bytes())
    output = tmp_path / "catalog.tsv"
    result = exporter("catalog", "update", "--from", str(source), "--output", str(output))
    assert result.returncode == 0, result.stderr
    assert Catalog.load(output).verdict("15.2.2562.60").known  # the file loads
    first = output.read_text().splitlines()[0]
    assert first.endswith("list\\n\\x1b[2J\\u202e.csv"), first
    assert result.stdout.count("\n") == 1 and "\x1b" not in result.stdout and "\u202e" not in result.stdout
    failed = exporter("catalog", "update", "--from", "http://127.0.0.1:1/x\x1b[2J\r\nSpoofed: yes", "--output",
                      str(output))
    assert_one_line_error(failed, "nothing written", "x\\x1b[2J\\r\\nSpoofed: yes")
    assert "\x1b" not in failed.stderr


# ---------------------------------------------------------------- hostile input, round 3: thresholds


# Each row is older than the first build of a CU that a `>=` threshold starts from (cutoffs.yaml names CUs; the
# threshold is the CU's oldest listed build), so it moves the threshold down: the packaged builds keep their
# verdicts, but every unlisted build between the row and the old first build turns compliant.
LOWERED_THRESHOLDS = [
    ("2019 CU13 before its first build: cutoff 2023-03 all_from", "Exchange 2019 CU13 Early,15.2.1258.1,4/1/2023,,\n",
     "15.2.1258.5", "cutoff 2023-03 from Exchange2019 15.2.1258.12 -> 15.2.1258.1"),
    ("SE RTM before its first build: EEMS and cutoff 2023-03", "Exchange SE RTM Early,15.2.2562.1,6/1/2025,,\n",
     "15.2.2562.5", "EEMS from ExchangeSE 15.2.2562.17 -> 15.2.2562.1"),
]


@pytest.mark.parametrize("extra, server_build, phrase", [case[1:] for case in LOWERED_THRESHOLDS],
                         ids=[case[0] for case in LOWERED_THRESHOLDS])
def test_a_row_that_lowers_a_shipped_threshold_is_refused_and_shown(tmp_path, extra, server_build, phrase):
    """Before: written without a word (and `catalog diff` showed no changed verdict, since it only judged listed
    builds), and a server on `server_build`, not compliant with the 2023-03 cutoff, then read as compliant."""
    before = json.loads(exporter("build", server_build, "--json").stdout)
    assert before["cutoffs"]["2023-03"] is False
    output = tmp_path / "catalog.tsv"
    result = exporter("catalog", "update", "--from", str(newer_list(tmp_path, extra)), "--output", str(output))
    assert_one_line_error(result, "catalog not updated, nothing written", "moves a shipped threshold", phrase)
    assert not output.exists()
    shown = exporter("catalog", "diff", "--from", str(newer_list(tmp_path, extra)))
    assert shown.returncode == 0, shown.stderr
    assert f"  {phrase}" in shown.stdout.splitlines(), shown.stdout


def test_a_catalog_file_that_lowers_a_shipped_threshold_is_refused_at_start_and_at_a_reload(tmp_path):
    """`catalog update` refuses such a row, but a catalog_file written by hand, or by a version before that check,
    was laid over the packaged list as it was: a server on 15.2.2562.5 (no EEMS, not compliant) read as
    compliant, at start and after a reload, without a word."""
    output = tmp_path / "catalog.tsv"
    output.write_text(HEADER + "ExchangeSE\tRTM\tOct26SU\t15.2.2562.60\t2026-10-13\n")
    config_file = tmp_path / "exporter.yml"
    config_file.write_text(minimal_config(f"catalog_file: {output}\n"))
    running = Exporter(load_config(config_file), Catalog.load(output))
    output.write_text(HEADER + "ExchangeSE\tRTM\tEarly\t15.2.2562.1\t2025-06-01\n")
    ok, message = running.reload()
    assert not ok and "moves a shipped threshold: EEMS from ExchangeSE 15.2.2562.17 -> 15.2.2562.1" in message
    assert running.runtime.current().catalog.verdict("15.2.2562.5").cutoffs["2023-03"] is False
    assert running.runtime.current().catalog.verdict("15.2.2562.60").known  # the catalog it had
    assert_one_line_error(exporter("build", "15.2.2562.5", "--catalog.file", str(output)), "moves a shipped threshold")
    assert_one_line_error(exporter("check-config", "--config.file", str(config_file), env={PASSWORD_ENV: PASSWORD}),
                          "configuration error", "catalog.tsv", "moves a shipped threshold")


def test_control_characters_in_a_tsv_list_are_refused(tmp_path):
    """Microsoft's CSV names are matched by a pattern, but a TSV's cu and update were taken as any text: an escape
    sequence in one (clear the screen, retitle the window) went raw to the terminal in `catalog diff`, into the
    written catalog_file, and from there into every `build` the exporter explained."""
    source = tmp_path / "list.tsv"
    source.write_text(HEADER + "ExchangeSE\tRTM\tOct26SU\x1b[2J\x1b]0;pwned\x07\t15.2.2562.60\t2026-10-13\n")
    for command in (("diff",), ("update", "--output", str(tmp_path / "out.tsv"))):
        result = exporter("catalog", *command, "--from", str(source))
        assert_one_line_error(result, "list.tsv:2", "update 'Oct26SU\\x1b[2J")
        assert "\x1b" not in result.stdout + result.stderr
    assert not (tmp_path / "out.tsv").exists()
    result = exporter("build", "15.2.2562.60", "--catalog.file", str(source))  # a catalog_file written by hand
    assert_one_line_error(result, "list.tsv:2", "not printable")


def test_a_catalog_file_row_dated_in_the_future_is_refused(tmp_path):
    """`catalog update` refuses a release date in the future, but a catalog_file was read as it was: a typo
    (2062 for 2026) made the newest release 2062, so ExchangeCatalogStale (newest release older than 90 days)
    could not fire for 36 years, and check-config said OK."""
    catalog_file = tmp_path / "catalog.tsv"
    catalog_file.write_text(HEADER + "ExchangeSE\tRTM\tOct26SU\t15.2.2562.60\t2062-10-13\n")
    config_file = tmp_path / "exporter.yml"
    config_file.write_text(minimal_config(f"catalog_file: {catalog_file}\n"))
    result = exporter("check-config", "--config.file", str(config_file), env={PASSWORD_ENV: PASSWORD})
    assert_one_line_error(result, "configuration error", "catalog.tsv:2", "release date in the future (2062-10-13)")


def test_a_csv_field_over_the_csv_modules_limit_is_one_line(tmp_path):
    """A field of more than 131,072 characters (csv's field_size_limit) ended `catalog update` and `catalog diff`
    in a `_csv.Error` traceback."""
    source = newer_list(tmp_path, '"' + "A" * 200_000 + '",15.2.2562.60,10/13/2026,,\n')
    result = exporter("catalog", "update", "--from", str(source), "--output", str(tmp_path / "out.tsv"))
    assert_one_line_error(result, "nothing written", "ExchangeBuildNumbers.csv:17", "field larger than field limit")
    assert_one_line_error(exporter("catalog", "diff", "--from", str(source)), "field larger than field limit")


def test_a_list_whose_every_field_is_quoted_is_read(tmp_path):
    """PowerShell's Export-Csv quotes every field, header included; the header was compared as raw text, so such a
    copy of Microsoft's list was refused as "neither Microsoft's ExchangeBuildNumbers.csv nor the catalog TSV"."""
    rows = list(csv.reader(newer_list(tmp_path).read_text(encoding="utf-8").splitlines()))
    source = tmp_path / "quoted.csv"
    source.write_text("".join(",".join(f'"{cell}"' for cell in row) + "\r\n" for row in rows), encoding="utf-8-sig")
    result = exporter("catalog", "diff", "--from", str(source))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:2] == ["new builds: 1", "  15.2.2562.60  ExchangeSE RTM Oct26SU  released 2026-10-13"]


@pytest.mark.parametrize("path, phrase", [
    ("/caf\u00e9.csv", "cannot download"),  # http.client sends ASCII only: UnicodeEncodeError
    ("/moved", "cannot download: Invalid IPv6 URL"),  # a redirect to a URL urlsplit refuses: ValueError
], ids=["non-ASCII path", "redirect to an invalid URL"])
def test_a_url_urllib_cannot_send_is_one_line(tmp_path, loopback_server, path, phrase):
    """Before: the ValueError of urllib (a non-ASCII path; a Location such as http://[::1) came out of the
    download thread as a traceback, exit 1."""
    base, routes = loopback_server
    routes["/moved"] = (302, b"", {"Location": "http://user:hunter2@[::1/list.csv"})
    result = exporter("catalog", "update", "--from", base + path, "--output", str(tmp_path / "out.tsv"))
    assert_one_line_error(result, "nothing written", phrase)
    assert "hunter2" not in result.stderr


def test_a_source_that_is_no_valid_url_is_one_line_without_its_password(tmp_path):
    """Before: `--from 'http://user:hunter2@[::1'` ended in `ValueError: Invalid IPv6 URL` (a traceback)."""
    result = exporter("catalog", "update", "--from", "http://user:hunter2@[::1/x.csv", "--output",
                      str(tmp_path / "out.tsv"))
    assert_one_line_error(result, "nothing written", "not a valid URL")
    assert "hunter2" not in result.stderr


def test_a_catalog_file_over_the_list_bound_is_refused(tmp_path):
    """`catalog update` reads at most 4 MiB, but a catalog_file was read whole at start and at every reload,
    however big."""
    from exporter.catalog_data import MAX_CATALOG_FILE_BYTES

    catalog_file = tmp_path / "catalog.tsv"
    catalog_file.write_text(HEADER + "#" * MAX_CATALOG_FILE_BYTES + "\n")
    config_file = tmp_path / "exporter.yml"
    config_file.write_text(minimal_config(f"catalog_file: {catalog_file}\n"))
    result = exporter("check-config", "--config.file", str(config_file), env={PASSWORD_ENV: PASSWORD})
    assert_one_line_error(result, "configuration error", "catalog.tsv", f"larger than {MAX_CATALOG_FILE_BYTES} bytes")


def test_a_catalog_update_that_finds_nothing_new_still_says_the_catalog_is_current(tmp_path):
    """Staleness is the age of the last comparison with Microsoft's list, not of Microsoft's newest build: when
    Microsoft ships nothing for 90 days, `catalog update` adds no row, and ExchangeCatalogStale (measured from the
    newest release) kept firing for every site with nothing left to do (runbook: "the alert stays")."""
    from exporter.catalog_update import write_catalog_file
    from exporter.metrics import SelfStatus, self_families
    from exporter.web import alerts

    checked = date(2026, 11, 20)  # the day the operator ran `catalog update`; in the past, whatever the wall clock
    output = tmp_path / "catalog.tsv"
    write_catalog_file(output, {}, "ExchangeBuildNumbers.csv", "ExchangeBuildNumbers.csv", checked)
    catalog = Catalog.load(output)
    assert catalog.newest_release == Catalog.load().newest_release < checked  # nothing new
    assert catalog.checked == checked
    assert Catalog.load().checked == Catalog.load().newest_release  # the packaged list: as of its newest build

    status = SelfStatus(catalog.newest_release, 300.0, True, 0.0, catalog_checked=catalog.checked)
    samples = [(s.name, s.labels, s.value) for f in self_families(status) for s in f.samples]
    midnight = datetime(checked.year, checked.month, checked.day, tzinfo=timezone.utc).timestamp()
    assert ("exchange_catalog_checked_timestamp_seconds", {}, midnight) in samples
    day = 86400.0
    stale = {f.alert for f in alerts.evaluated(samples, midnight + 89 * day)[0]}
    assert "ExchangeCatalogStale" not in stale  # newest release 2026-10-02: 138 days old by then
    assert "ExchangeCatalogStale" in {f.alert for f in alerts.evaluated(samples, midnight + 91 * day)[0]}


def test_a_catalog_file_checked_in_the_future_is_refused(tmp_path):
    """A date after today would keep ExchangeCatalogStale silent until then."""
    from exporter.catalog_update import write_catalog_file

    output = tmp_path / "catalog.tsv"
    write_catalog_file(output, {}, "x.csv", "x.csv", date(9999, 1, 1))
    with pytest.raises(CatalogError, match="future"):
        Catalog.load(output)
