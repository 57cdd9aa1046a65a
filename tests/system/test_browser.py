"""The fleet page in a real browser (Debian's headless chromium): the demo fleet's rows and states, a server's
link followed to its page and on to its debug page (the last poll's raw output), no script run, and a screenshot
that renders.

bench/pages.py takes the README's screenshot (docs/img/status.png) the same way.
"""

from __future__ import annotations

from selenium.webdriver.common.by import By

from ..browser import chromium
from .test_pages import demo  # noqa: F401  (the demo fleet, polled once, served)


def test_the_fleet_page_in_chromium(demo, tmp_path):  # noqa: F811
    fleet, _, port = demo
    with chromium() as browser:
        browser.get(f"http://127.0.0.1:{port}/")
        assert browser.title == "Exchange EEMS exporter"
        rows = browser.find_elements(By.CSS_SELECTOR, "tbody tr")
        names = [row.find_element(By.CSS_SELECTOR, "td a").text for row in rows]
        states = {name: row.find_element(By.CSS_SELECTOR, "td:nth-child(2) span").text for name, row in zip(names, rows)}
        assert sorted(names) == sorted(fleet.hosts)
        assert states["EX-SE01"] == "ok" and states["EX16-CU21"] == "critical"
        assert browser.execute_script("return document.scripts.length") == 0
        shot = tmp_path / "status.png"
        assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        browser.find_element(By.LINK_TEXT, "EX-SE02-STOPPED").click()
        assert browser.find_element(By.TAG_NAME, "h1").text == "EX-SE02-STOPPED"
        assert "ExchangeEEMSServiceNotRunning" in browser.find_element(By.TAG_NAME, "body").text
        browser.find_element(By.LINK_TEXT, "Raw output of the last poll").click()  # its debug page
        assert browser.current_url.endswith("/server?name=EX-SE02-STOPPED&debug=true")
        assert "Raw output of the last poll" in [h.text for h in browser.find_elements(By.TAG_NAME, "h2")]
        stdout = browser.find_elements(By.TAG_NAME, "pre")[0].text  # the script's JSON, as received
        assert stdout.startswith('{"schema":1,"computer":"EX-SE02-STOPPED"')
        browser.back()
        browser.find_element(By.PARTIAL_LINK_TEXT, "all servers").click()
        assert browser.find_element(By.TAG_NAME, "h1").text == "Exchange EEMS exporter"

        browser.find_element(By.CSS_SELECTOR, "nav a span.critical").click()
        assert {s.text for s in browser.find_elements(By.CSS_SELECTOR, "tbody td:nth-child(2) span")} == {"critical"}
