"""The exporter's own pages at fleet size: page weight and render time of `/` at N servers (default 2,000), and
the README's screenshot.

The fleet is bench/bench.py's generated one (this checkout's simulator in its own process, every server on
the same old build, so every row carries alerts); the exporter runs here, polls every server once, and serves.
Render time is measured twice: the server's (GET / on loopback, median of 5, and its ratio to GET /metrics in the
same run, median of 5: the baseline every scrape pays) and the browser's (Debian's headless chromium: navigation
start to load event, median of 3). Also the memory the last polls' raw outputs take (kept for
/server?debug=true). Prints one JSON object.

    python bench/pages.py                               # 2,000 servers, about 2 minutes
    python bench/pages.py --servers 200
    python bench/pages.py --screenshot docs/img/status.png   # the demo fleet's / (the README's picture)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from bench import start_simulator  # noqa: E402
from exporter.catalog import Catalog  # noqa: E402
from exporter.config import load_config_text  # noqa: E402
from exporter.exporter import Exporter  # noqa: E402
from exporter.web import serve  # noqa: E402
from exporter.web.pages import ROWS_PER_PAGE  # noqa: E402
from tests.browser import chromium  # noqa: E402
from tests.conftest import PASSWORD, PASSWORD_ENV, SimulatedFleet, demo_scenario, poll_all, relocate  # noqa: E402


def fetch(port: int, path: str, headers: dict | None = None) -> tuple[bytes, float]:
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.request("GET", path, headers=headers or {})
    body = connection.getresponse().read()
    connection.close()
    return body, time.perf_counter() - started


def browser_seconds(port: int, path: str) -> float:
    with chromium() as browser:
        times = []
        for _ in range(3):
            browser.get(f"http://127.0.0.1:{port}{path}")
            times.append(browser.execute_script(
                "const t = performance.getEntriesByType('navigation')[0]; return t.loadEventEnd - t.startTime") / 1000)
        return statistics.median(times)


def at_fleet_size(servers: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="eems-pages-") as directory:
        options = argparse.Namespace(servers=servers, address_base="127.1.0.1", latency=0.0, runtime=0.0,
                                     simulator_python=sys.executable)
        simulator, config_file, _ = start_simulator(options, Path(directory))
        try:
            config = yaml.safe_load(config_file.read_text())
            config["poll"] = {"interval": "300s", "timeout": "60s", "concurrency": 100}
            config.pop("organization", None)
            exporter = Exporter(load_config_text(yaml.safe_dump(config), Path(directory)), Catalog.load())
            poll_all(exporter.poller)
            server = serve(exporter, "127.0.0.1", 0, None)
            port = server.server_address[1]
            try:
                page, first_seconds = fetch(port, "/")  # every row made
                seconds = statistics.median(fetch(port, "/")[1] for _ in range(5))  # rows kept: a reload
                # what an admin's reload 10 s later meets: the polls of 10 s (2,000 servers every 5 minutes)
                list(ThreadPoolExecutor(16).map(exporter.poller.poll_server,
                                                [t.name for t in exporter.targets()[:servers * 10 // 300]]))
                _, after_polls_seconds = fetch(port, "/")
                last_page, _ = fetch(port, f"/?page={-(-servers // ROWS_PER_PAGE)}")
                zipped, _ = fetch(port, "/", {"Accept-Encoding": "gzip"})
                metrics, _ = fetch(port, "/metrics")
                metrics_seconds = statistics.median(fetch(port, "/metrics")[1] for _ in range(5))
                kept = exporter.poller.store.outputs
                outputs = [kept.get(t.name) for t in exporter.targets()]
                detail, detail_seconds = fetch(port, f"/server?name={exporter.targets()[0].name}")
                browser = browser_seconds(port, "/")
            finally:
                server.shutdown()
                server.server_close()
                exporter.stop()
        finally:
            simulator.terminate()
            simulator.wait()
    assert page.count(b"<tr class=") == min(servers, ROWS_PER_PAGE), "a page of rows"
    assert f"Servers ({servers:,} of {servers:,})".encode() in page
    assert last_page.count(b"<tr class=") == servers - (-(-servers // ROWS_PER_PAGE) - 1) * ROWS_PER_PAGE
    return {"servers": servers, "rows_per_page": ROWS_PER_PAGE, "page_bytes": len(page), "page_gzip_bytes": len(zipped),
            "metrics_bytes": len(metrics), "first_render_seconds": round(first_seconds, 3),
            "server_render_seconds": round(seconds, 3),
            "render_after_10s_of_polls_seconds": round(after_polls_seconds, 3),
            "metrics_render_seconds": round(metrics_seconds, 3), "page_to_metrics_ratio": round(seconds / metrics_seconds, 2),
            "kept_outputs": sum(1 for o in outputs if o), "kept_output_bytes": kept.total,
            "raw_output_bytes": sum(o.stdout_bytes + o.stderr_bytes for o in outputs if o),
            "browser_load_seconds": round(browser, 3), "server_page_bytes": len(detail),
            "server_page_seconds": round(detail_seconds, 3), "load_average": os.getloadavg()}


def screenshot(path: Path) -> dict:
    os.environ[PASSWORD_ENV] = PASSWORD
    with SimulatedFleet(relocate(demo_scenario())) as fleet:
        exporter = Exporter(load_config_text(fleet.config_text(timeout="20s"), Path(".")), Catalog.load())
        poll_all(exporter.poller)
        server = serve(exporter, "127.0.0.1", 0, None)
        try:
            with chromium(1400, 1100) as browser:
                browser.get(f"http://127.0.0.1:{server.server_address[1]}/")
                browser.save_screenshot(str(path))
        finally:
            server.shutdown()
            server.server_close()
            exporter.stop()
    return {"screenshot": str(path), "bytes": path.stat().st_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=2000)
    parser.add_argument("--screenshot", type=Path, help="write a screenshot of the demo fleet's / here instead")
    args = parser.parse_args()
    result = screenshot(args.screenshot) if args.screenshot else at_fleet_size(args.servers)
    print(json.dumps(result), flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
