"""CPU per HTTP request at each layer of the client stack the exporter uses, on one kept loopback connection.

A steady poll is five POSTs of a few KiB answered with up to tens of KiB. This sends the same exchange
(3 KiB up, 20 KiB down, keep-alive) through a raw socket, http.client, urllib3, and requests, and prints
this thread's CPU time (user + system) per request for each: the difference between the rows is what
each library layer costs, and the first row is about what the exchange itself costs the kernel.

    python bench/http_layers.py [--requests 1000]
"""

from __future__ import annotations

import argparse
import http.client
import socket
import subprocess
import sys
import time

import requests
import urllib3

SERVER = """
import http.server, sys
body = b"x" * 20000
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.wfile.write(b"HTTP/1.1 200 OK\\r\\nContent-Type: multipart/encrypted\\r\\nContent-Length: %d\\r\\n\\r\\n%s"
                         % (len(body), body))
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""
REQUEST = b"<s:Envelope>" + b"A" * 3000 + b"</s:Envelope>"
HEADERS = {"Content-Type": "application/soap+xml;charset=UTF-8"}


def cpu_per_request(send, count: int) -> float:
    send()  # connect
    started = time.thread_time()
    for _ in range(count):
        send()
    return (time.thread_time() - started) / count


def layers(port: int) -> dict:
    url = f"http://127.0.0.1:{port}/wsman"
    raw = socket.create_connection(("127.0.0.1", port))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    raw.settimeout(30)

    def raw_socket() -> None:
        raw.sendall(b"POST /wsman HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(REQUEST), REQUEST))
        data = b""
        while b"\r\n\r\n" not in data:
            data += raw.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += raw.recv(65536)

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def stdlib() -> None:
        connection.request("POST", "/wsman", body=REQUEST, headers=HEADERS)
        connection.getresponse().read()

    pool = urllib3.HTTPConnectionPool("127.0.0.1", port, maxsize=1)

    def pooled() -> None:
        pool.urlopen("POST", "/wsman", body=REQUEST, headers=HEADERS, retries=False, timeout=30).data

    session = requests.Session()
    session.trust_env = False
    template = session.prepare_request(requests.Request("POST", url, data=REQUEST, headers=HEADERS))

    def from_template() -> None:
        session.send(template.copy(), timeout=30).content

    pywinrm_session = requests.Session()
    pywinrm_session.proxies = {"no_proxy": "*"}  # what pywinrm sets for proxy=None

    def prepared_each_time() -> None:
        request = pywinrm_session.prepare_request(requests.Request("POST", url, data=REQUEST, headers=HEADERS))
        pywinrm_session.send(request, timeout=30).content

    return {
        "raw socket (one send, one parse)": raw_socket,
        "http.client": stdlib,
        "urllib3 connection pool": pooled,
        "requests, a copy of one prepared request, trust_env off (WinRSProtocol)": from_template,
        "requests, prepared per message, trust_env on (pywinrm's transport)": prepared_each_time,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        for name, send in layers(port).items():
            print(f"{cpu_per_request(send, args.requests) * 1e6:8.0f} us  {name}", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
