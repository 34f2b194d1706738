"""Loopback servers for the remote-dataset tests: a counting HTTP file server and moto's S3 server.

Nothing here reaches beyond 127.0.0.1.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import http.server
import os
import socket
import threading
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def _answer(self, head: bool):
        server = self.server
        path = self.path.split("?", 1)[0]
        with server.lock:
            server.requests[(self.command, path)] += 1
            server.log.append((self.command, path))
        if any(path.endswith(suffix) for suffix in server.fail):
            self.send_error(500, "injected failure")
            return
        if server.latency:
            time.sleep(server.latency)
        if head:
            super().do_HEAD()
        else:
            super().do_GET()

    def do_GET(self):
        self._answer(False)

    def do_HEAD(self):
        self._answer(True)

    def copyfile(self, source, outputfile):
        rate = self.server.bytes_per_s
        if not rate:
            return super().copyfile(source, outputfile)
        chunk = 256 * 1024
        while True:
            started = time.monotonic()
            data = source.read(chunk)
            if not data:
                return
            outputfile.write(data)
            rest = len(data) / rate - (time.monotonic() - started)
            if rest > 0:
                time.sleep(rest)


class FileServer(http.server.ThreadingHTTPServer):
    """Serves ``root`` on 127.0.0.1; counts requests per (method, path); answers 500 for paths ending in ``fail``.

    ``latency`` (seconds per request) and ``bytes_per_s`` (per connection) throttle it.
    """

    daemon_threads = True

    def __init__(self, root: str, *, latency: float = 0.0, bytes_per_s: float = 0.0):
        super().__init__(("127.0.0.1", 0), functools.partial(_Handler, directory=root))
        self.root = root
        self.lock = threading.Lock()
        self.requests: collections.Counter = collections.Counter()
        self.log: list[tuple[str, str]] = []
        self.fail: set[str] = set()
        self.latency = latency
        self.bytes_per_s = bytes_per_s
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def gets(self, suffix: str = "") -> dict[str, int]:
        """GET counts per path, for paths ending in ``suffix``."""
        with self.lock:
            return {p: n for (m, p), n in self.requests.items() if m == "GET" and p.endswith(suffix)}


@contextlib.contextmanager
def file_server(root: str, **kwargs):
    server = FileServer(root, **kwargs)
    server.thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def moto_s3():
    """A moto S3 server on 127.0.0.1; yields fsspec storage_options for it."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    # moto keeps its state in the process, across servers: start each test from none.
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/moto-api/reset", method="POST")).read()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    try:
        yield {"endpoint_url": f"http://127.0.0.1:{port}", "key": "testing", "secret": "testing"}
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
