"""The README's promise about proxies: WinRM polls never use HTTP_PROXY/HTTPS_PROXY, while `catalog update
--from https://...` does. A recording "proxy" on loopback sees every connection made to it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

from ..conftest import PASSWORD, PASSWORD_ENV, SimulatedFleet, demo_scenario, free_port, relocate


class RecordingProxy:
    """Accepts connections, keeps each one's first line, answers 502."""

    def __init__(self):
        self.lines: list[str] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    self.lines.append(conn.recv(4096).decode("latin-1").split("\r\n", 1)[0])
                    conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                except OSError:
                    pass

    def close(self) -> None:
        self.server.close()


def environment(proxy: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "http_proxy", "https_proxy",
                                                                    "all_proxy")}
    return {**env, "HTTP_PROXY": proxy, "HTTPS_PROXY": proxy, "ALL_PROXY": proxy, "http_proxy": proxy,
            "https_proxy": proxy, PASSWORD_ENV: PASSWORD}


def test_winrm_polls_ignore_proxy_variables_and_catalog_update_uses_them(tmp_path):
    proxy = RecordingProxy()
    scenario = demo_scenario()
    scenario["servers"] = scenario["servers"][:1]
    try:
        with SimulatedFleet(relocate(scenario)) as fleet:
            config = tmp_path / "config.yml"
            config.write_text(fleet.config_text())
            poll = subprocess.run([sys.executable, "-m", "exporter", "poll", "EX-SE01", "--config.file", str(config)],
                                  capture_output=True, text=True, timeout=120, env=environment(proxy.url))
        assert poll.returncode == 0, poll.stderr[-2000:]
        assert proxy.lines == [], "a WinRM poll went through the proxy"

        update = subprocess.run([sys.executable, "-m", "exporter", "catalog", "update", "--from",
                                 f"https://127.0.0.1:{free_port()}/ExchangeBuildNumbers.csv",
                                 "--output", str(tmp_path / "catalog.tsv")],
                                capture_output=True, text=True, timeout=120, env=environment(proxy.url))
        assert update.returncode != 0
        assert [line.split()[0] for line in proxy.lines] == ["CONNECT"], proxy.lines
    finally:
        proxy.close()
