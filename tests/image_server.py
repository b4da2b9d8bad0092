"""A real HTTP image server on 127.0.0.1 for fetch tests: plain images with ETags, IIIF-style
paths and info.json, IIIF Presentation manifests, and the failures real servers produce (404, 500, flaky 503, slow,
truncated body, HTML, oversize), and hostile ones (a body trickled a byte at a time, an IIIF service answering every
path with its info.json, an info.json lying about the size). Counts every request per path."""

from __future__ import annotations

import io
import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image

IIIF = re.compile(r"^/iiif/(?P<id>[^/]+)/(?P<region>[^/]+)/(?P<size>[^/]+)/0/default\.jpg$")


class ImageServer:
    """``images``: name -> file. ``/img/<name>`` serves the file's bytes; ``/iiif/<name>/...``
    renders it at the requested IIIF size; ``/iiif/<name>`` and ``.../info.json`` answer info.json."""

    def __init__(self, images: dict[str, Path]):
        self.images = dict(images)
        self.requests: Counter[str] = Counter()
        self.sizes: list[str] = []
        self.slow_seconds = 5.0
        self.flaky_left = 1
        self.iiif_version = 2
        #: ``/fail/trickle``: seconds between bytes, and how many bytes at most (the server stays bounded)
        self.trickle_seconds, self.trickle_bytes = 0.2, 100
        #: name -> fields that replace those of its info.json (a service that lies about its size)
        self.info_overrides: dict[str, dict] = {}
        #: path -> JSON document (IIIF Presentation manifests and collections)
        self.documents: dict[str, dict] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests[self.path] += 1
                server.handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None  # clients killed mid-response on purpose
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        # A short poll: shutdown() waits for the loop to notice, up to one interval (0.5 s by default).
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path
        if path.startswith("/img/") and path[5:] in self.images:
            data = self.images[path[5:]].read_bytes()
            etag = f'"{hash(data) & 0xFFFFFFFF:x}"'
            if h.headers.get("If-None-Match") == etag:
                return self._send(h, 304, b"", None, {"ETag": etag})
            return self._send(h, 200, data, "image/png", {"ETag": etag})
        if path in self.documents:
            return self._send(h, 200, json.dumps(self.documents[path]).encode(), "application/ld+json")
        if m := IIIF.match(path):
            return self._iiif_image(h, m)
        if path.startswith("/iiif/"):
            name = path[len("/iiif/"):].removesuffix("/info.json")
            if name in self.images:
                return self._send(h, 200, json.dumps(self.info(name)).encode(), "application/json")
        if path.startswith("/loop/"):  # every path answers with an info.json naming itself
            info = {"@context": "http://iiif.io/api/image/2/context.json", "@id": f"{self.url}/loop/x",
                    "protocol": "http://iiif.io/api/image", "width": 100, "height": 100}
            return self._send(h, 200, json.dumps(info).encode(), "application/json")
        if path == "/fail/trickle":
            h.send_response(200)
            h.send_header("Content-Type", "image/png")
            h.send_header("Content-Length", str(self.trickle_bytes))
            h.end_headers()
            try:
                for _ in range(self.trickle_bytes):
                    h.wfile.write(b"\0")
                    h.wfile.flush()
                    time.sleep(self.trickle_seconds)
            except OSError:  # the client gave up
                pass
            h.close_connection = True
            return None
        if path == "/fail/500":
            return self._send(h, 500, b"boom", "text/plain")
        if path == "/fail/flaky":
            if self.flaky_left > 0:
                self.flaky_left -= 1
                return self._send(h, 503, b"busy", "text/plain")
            return self._send(h, 200, next(iter(self.images.values())).read_bytes(), "image/png")
        if path == "/fail/slow":
            time.sleep(self.slow_seconds)
            return self._send(h, 200, next(iter(self.images.values())).read_bytes(), "image/png")
        if path == "/fail/truncated":
            h.send_response(200)
            h.send_header("Content-Type", "image/png")
            h.send_header("Content-Length", "100000")
            h.end_headers()
            h.wfile.write(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
            h.wfile.flush()
            h.close_connection = True
            return None
        if path == "/fail/html":
            return self._send(h, 200, b"<html><body>Log in to view this image</body></html>", "text/html; charset=utf-8")
        if path == "/fail/huge":
            return self._send(h, 200, b"\0" * 5000, "image/png")
        return self._send(h, 404, b"not found", "text/plain")

    def info(self, name: str) -> dict:
        """The image's ``info.json`` in the Image API version of ``self.iiif_version``."""
        width, height = Image.open(self.images[name]).size
        service = f"{self.url}/iiif/{name}"
        if self.iiif_version == 3:
            return {"@context": "http://iiif.io/api/image/3/context.json", "id": service, "type": "ImageService3",
                    "protocol": "http://iiif.io/api/image", "profile": "level1", "width": width, "height": height,
                    **self.info_overrides.get(name, {})}
        return {"@context": "http://iiif.io/api/image/2/context.json", "@id": service,
                "protocol": "http://iiif.io/api/image", "width": width, "height": height,
                **self.info_overrides.get(name, {})}

    def _iiif_image(self, h: BaseHTTPRequestHandler, m: re.Match) -> None:
        if m["id"] not in self.images:
            return self._send(h, 404, b"not found", "text/plain")
        self.sizes.append(m["size"])
        img = Image.open(self.images[m["id"]]).convert("RGB")
        if m["size"].startswith("!"):
            w, h_ = (int(v) for v in m["size"][1:].split(","))
            img.thumbnail((w, h_))
        out = io.BytesIO()
        img.save(out, "JPEG", quality=95)
        return self._send(h, 200, out.getvalue(), "image/jpeg")

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, code: int, body: bytes, content_type: str | None, headers: dict | None = None):
        h.send_response(code)
        if content_type:
            h.send_header("Content-Type", content_type)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if body:
            h.wfile.write(body)
