"""deploy/servicemonitor.yaml's metricRelabelings, run by Debian's Prometheus rather than a copy of its relabelling.

The Prometheus Operator gives every target of a ServiceMonitor endpoint target labels, `endpoint` (the port name)
among them; with honor_labels false, Prometheus renames the exporter's own `endpoint` label (exchange_eems_endpoint_*:
mitigations, flighting) to exported_endpoint. Without the relabelling, both alerts of a server said endpoint="http",
ExchangeEEMSEndpointUnreachable's reason lookup found nothing and Alertmanager grouped them as one endpoint.
"""

from __future__ import annotations

import re
import threading
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

import yaml

from ..artifacts.test_deploy import _one
from ..conftest import free_port
from .test_integration import JOB, Program, get_json, prometheus_command, wait_until

# The target labels the Prometheus Operator gives every target of a ServiceMonitor endpoint with `port:`, beside
# job and instance.
OPERATOR_TARGET_LABELS = {"namespace": "monitoring", "service": "exchange-eems-exporter",
                          "pod": "exchange-eems-exporter-0", "container": "exporter", "endpoint": "http"}
EXPOSED = (b'exchange_eems_endpoint_reachable{server="EX01",endpoint="mitigations"} 1\n'
           b'exchange_up{server="EX01"} 1\n')


class _Metrics(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(EXPOSED)))
        self.end_headers()
        self.wfile.write(EXPOSED)

    def log_message(self, *args):
        pass


def _snake(config: dict) -> dict:
    """A ServiceMonitor relabelling (camelCase: sourceLabels, targetLabel) as Prometheus' metric_relabel_configs."""
    return {re.sub(r"[A-Z]", lambda m: "_" + m[0].lower(), key): value for key, value in config.items()}


def test_the_exporters_own_endpoint_label_survives_the_operators_target_labels(tmp_path):
    (endpoint,) = _one("ServiceMonitor")["spec"]["endpoints"]
    with ExitStack() as cleanup:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        cleanup.callback(server.server_close)
        cleanup.callback(server.shutdown)
        port = free_port()
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [{
                "job_name": JOB,
                "static_configs": [{"targets": [f"127.0.0.1:{server.server_address[1]}"],
                                    "labels": OPERATOR_TARGET_LABELS}],
                "metric_relabel_configs": [_snake(c) for c in endpoint.get("metricRelabelings", [])],
            }],
        }, sort_keys=False))
        prometheus = Program("prometheus", prometheus_command(tmp_path, port), tmp_path)
        cleanup.callback(prometheus.stop)
        prometheus.wait_ready(f"http://127.0.0.1:{port}/-/ready")

        def series(name: str) -> list[dict]:
            answer = get_json(f"http://127.0.0.1:{port}/api/v1/query?query={quote(name)}")
            return [s["metric"] for s in answer["data"]["result"]]

        assert wait_until(lambda: series("exchange_eems_endpoint_reachable") and series("exchange_up"), 30,
                          [prometheus]), prometheus.log_tail()
        (reachable,) = series("exchange_eems_endpoint_reachable")
        assert reachable["endpoint"] == "mitigations" and "exported_endpoint" not in reachable, reachable
        (up,) = series("exchange_up")
        assert up["endpoint"] == "http", "a series without the label keeps the target's"
