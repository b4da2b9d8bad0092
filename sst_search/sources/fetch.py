"""Images by URL: fetched once into a content-addressed cache, IIIF-aware, politely.

A collection's images often live on a museum's web or IIIF image server. Before
segmentation every URL item is downloaded into a cache (beside the store unless told
otherwise): the bytes under their sha256 (``blobs/ab/abcd....jpg``), and one small record
per requested URL (``urls/<sha256 of the URL>.json``: sha256, ETag, Last-Modified, fetch
time). Both are written to a temporary name and renamed, so a job killed mid-fetch leaves
either a complete entry or none, and a re-run asks the server only for what is missing
(or, with ``revalidate``, sends ``If-None-Match``/``If-Modified-Since`` and takes a 304 as
"unchanged"). Requests run concurrently, at most ``max_per_host`` at a time per host,
retried with exponential backoff on timeouts, dropped connections, 429 and 5xx. Anything
else (404, HTML instead of an image, a body over the size limit, a truncated body after
the retries) becomes the item's recorded failure; the batch goes on.

IIIF Image API URLs (``.../{region}/{size}/{rotation}/{quality}.{format}``), ``info.json``
URLs and image service ids answering with an ``info.json`` are requested at the size the
model needs (``/full/!1024,1024/0/default.jpg``), not at full resolution. Their ``info.json``
(small, cached like the images) says how large the original is and which API version the
service speaks, so measurements can be converted to the original pixels without
downloading them, and the full image (``/full/max/`` in API 3, ``/full/full/`` in API 2) is
fetched only when a crop or an export asks for it (:meth:`Fetcher.get`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

from ..atomic_io import write_bytes_atomic
from ..config import FetchConfig
from .items import Item, Original

#: ``{base}/{region}/{size}/{rotation}/{quality}.{format}`` of the IIIF Image API (2.x and 3.0).
IIIF_IMAGE = re.compile(
    r"^(?P<base>https?://.+?)/(?P<region>full|square|\d+,\d+,\d+,\d+|pct:[\d.]+,[\d.]+,[\d.]+,[\d.]+)"
    r"/(?P<size>[^/]+)/(?P<rotation>!?\d+(?:\.\d+)?)/(?P<quality>default|color|colour|gray|grey|bitonal|native)"
    r"\.(?P<format>jpg|jpeg|png|tif|tiff|webp|gif)$"
)
JSON_TYPES = ("application/json", "application/ld+json")
EXTENSIONS = {"application/json": ".json", "image/jpeg": ".jpg", "image/png": ".png", "image/tiff": ".tif", "image/webp": ".webp",
              "image/gif": ".gif", "image/bmp": ".bmp"}


class FetchError(RuntimeError):
    """An image could not be fetched; the message says why (recorded as the item's error)."""


class _Transient(FetchError):
    """Worth another try: 429 and 5xx answers."""


def iiif_request_url(url: str, size: int | None) -> str:
    """The URL to request for ``url`` when the model needs at most ``size`` pixels a side:
    IIIF image requests get ``!size,size`` (fit within, no upscaling), ``info.json`` URLs
    the full region at that size; anything else is unchanged."""
    if not size:
        return url
    if url.endswith("/info.json"):
        return f"{url[: -len('/info.json')]}/full/!{size},{size}/0/default.jpg"
    m = IIIF_IMAGE.match(url)
    if m is None:
        return url
    return f"{m['base']}/{m['region']}/!{size},{size}/{m['rotation']}/{m['quality']}.{m['format']}"


def iiif_base(url: str) -> str | None:
    """The image service id of an IIIF image or ``info.json`` URL, else None."""
    if url.endswith("/info.json"):
        return url[: -len("/info.json")]
    m = IIIF_IMAGE.match(url)
    return m["base"] if m else None


def original_of(url: str, info: dict | None) -> Original:
    """The full-resolution request matching ``url`` (same region, rotation, quality and
    format; size ``max`` in Image API 3, ``full`` in 2) and its size from ``info``."""
    m = IIIF_IMAGE.match(url)
    region, rotation, quality, fmt = (m["region"], m["rotation"], m["quality"], m["format"]) if m else \
        ("full", "0", "default", "jpg")
    base = iiif_base(url) or url.rstrip("/")
    version3 = info is not None and ("image/3" in json.dumps(info.get("@context", "")) or info.get("type") == "ImageService3")
    full = f"{base}/{region}/{'max' if info is None or version3 else 'full'}/{rotation}/{quality}.{fmt}"
    return Original(full, _region_size(region, rotation, info))


def _region_size(region: str, rotation: str, info: dict | None) -> tuple[int, int] | None:
    """``(width, height)`` of ``region`` of the image ``info`` describes, after a rotation by a
    multiple of 90 degrees; None when the service did not say or the rotation is arbitrary."""
    try:
        width, height = int(info["width"]), int(info["height"])  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        return None
    if width <= 0 or height <= 0 or rotation.startswith("!") or float(rotation) % 90:
        return None
    if region == "square":
        width = height = min(width, height)
    elif region.startswith("pct:"):
        _, _, w, h = (float(v) for v in region[4:].split(","))
        width, height = round(width * min(w, 100) / 100), round(height * min(h, 100) / 100)
    elif region != "full":
        x, y, w, h = (int(v) for v in region.split(","))
        width, height = max(0, min(w, width - x)), max(0, min(h, height - y))
    return (height, width) if float(rotation) % 180 else (width, height)


class ImageCache:
    """Content-addressed image store; safe against kills (atomic renames) and shared by runs."""

    def __init__(self, root: str | Path):
        self.root = Path(os.path.abspath(root))

    def _record_path(self, url: str) -> Path:
        return self.root / "urls" / f"{hashlib.sha256(url.encode()).hexdigest()}.json"

    def lookup(self, url: str) -> dict | None:
        """The record of a completed fetch of ``url`` whose bytes are still there, else None."""
        try:
            record = json.loads(self._record_path(url).read_text())
        except (OSError, ValueError):
            return None
        return record if (self.root / record.get("blob", "")).is_file() else None

    def blob_path(self, record: dict) -> Path:
        return self.root / record["blob"]

    def put(self, url: str, data: bytes, content_type: str, headers: dict[str, str], service: str | None = None) -> dict:
        """Keep ``data`` fetched from ``url``; ``service``: the IIIF image service a bare service id named."""
        digest = hashlib.sha256(data).hexdigest()
        blob = Path("blobs") / digest[:2] / (digest + EXTENSIONS.get(content_type, ".img"))
        if not (self.root / blob).is_file():
            write_bytes_atomic(self.root / blob, data, suffix=".part")
        record = {"url": url, "blob": blob.as_posix(), "sha256": digest, "bytes": len(data),
                  "content_type": content_type, "etag": headers.get("etag"),
                  "last_modified": headers.get("last-modified"), "service": service,
                  "fetched_at": datetime.now(timezone.utc).replace(tzinfo=None).isoformat()}
        write_bytes_atomic(self._record_path(url), json.dumps(record).encode(), suffix=".part")
        return record


class _Deadline:
    """Ends a response that is still arriving at ``deadline``: a server trickling a byte at a
    time never trips a timeout between bytes, so the connection is shut down when the time
    is up (a blocked read returns at once) and the attempt ends in a ``ReadTimeout``, retried
    like any other. A response whose headers trickle in is bounded by the read timeout alone."""

    def __init__(self, response, deadline: float):
        self.response, self.deadline = response, deadline
        self.expired = threading.Event()
        self.timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._cut)
        self.timer.daemon = True

    def _cut(self) -> None:
        self.expired.set()
        stream = self.response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed
                pass

    def __enter__(self) -> _Deadline:
        self.timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.timer.cancel()
        if self.expired.is_set():
            import httpx

            raise httpx.ReadTimeout("the whole response did not arrive in time")


class Fetcher:
    """Fetches URLs into an :class:`ImageCache`; one instance per job (it holds the HTTP client).

    ``size`` is the model's input size: IIIF images are requested to fit in it; None asks
    for IIIF images exactly as written."""

    def __init__(self, cache: ImageCache, config: FetchConfig = FetchConfig(), size: int | None = None):
        import httpx

        self.cache = cache
        self.config = config
        self.size = size
        self._httpx = httpx
        self._client: httpx.Client | None = None  # made on the first request: a local collection needs none
        self._hosts: dict[str, threading.Semaphore] = {}
        self._lock = threading.Lock()
        #: Bytes downloaded and requests answered with a body, for progress and benchmarks.
        self.downloaded_bytes = 0
        self.downloads = 0

    def _http(self):
        """The HTTP client, made once, when the first URL is fetched (setting up its TLS
        context costs a tenth of a second, which every run of a local collection paid)."""
        with self._lock:
            if self._client is None:
                self._client = self._httpx.Client(
                    timeout=self.config.timeout, follow_redirects=True,
                    headers={"User-Agent": "sst-search (natural-history image indexer)"},
                    limits=self._httpx.Limits(max_connections=max(self.config.concurrency, 1)))
            return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def fetch(self, url: str) -> dict:
        """The cache record of ``url`` at the model's size (fetched now unless cached); raises :class:`FetchError`."""
        return self.get(self._image_request(url), follow_info=True)

    def _image_request(self, url: str) -> str:
        """The URL :meth:`fetch` requests for ``url``: IIIF at the model's size, else as written."""
        if self.size:
            return iiif_request_url(url, self.size)
        base = iiif_base(url)
        return f"{base}/full/max/0/default.jpg" if url.endswith("/info.json") and base else url

    def get(self, url: str, follow_info: bool = False) -> dict:
        """The cache record of exactly ``url`` (fetched now unless cached): how a crop or an
        export gets an item's full-resolution image (:attr:`Original.url`)."""
        cached = self.cache.lookup(url)
        if cached is not None and not self.config.revalidate:
            return cached
        return self._get(url, cached, follow_info=follow_info)

    def original(self, url: str) -> Original | None:
        """Where the full-resolution image of ``url`` is when :meth:`fetch` downsampled it
        (an IIIF image, ``info.json`` or service id), else None. Asks the service's
        ``info.json`` once (cached) for its size and API version; a service without one
        still gets a full-size request (``max``), only its size stays unknown."""
        if not self.size:
            return None
        service = iiif_base(url) or (self.cache.lookup(url) or {}).get("service")
        if service is None:
            return None
        try:
            record = self.get(url if url.endswith("/info.json") else f"{service}/info.json")
            info = json.loads(self.cache.blob_path(record).read_text())
        except (FetchError, OSError, ValueError):
            info = None
        return original_of(url if IIIF_IMAGE.match(url) else f"{service}/info.json", info)

    def _host(self, url: str) -> threading.Semaphore:
        host = urlsplit(url).netloc.lower()
        with self._lock:
            return self._hosts.setdefault(host, threading.Semaphore(self.config.max_per_host))

    def json(self, url: str) -> dict:
        """The JSON document at ``url`` (an IIIF Presentation manifest or collection), with the
        same politeness, limits and retries as images; not cached, since manifests change."""
        body = self._retried(url, None)
        if isinstance(body, dict):
            raise FetchError(f"{url}: server returned {body['content_type']} instead of JSON")
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise FetchError(f"{url}: not valid JSON ({exc})") from exc
        if not isinstance(doc, dict):
            raise FetchError(f"{url}: JSON is a {type(doc).__name__}, not an object")
        return doc

    def _get(self, url: str, cached: dict | None, follow_info: bool) -> dict:
        result = self._retried(url, cached)
        if isinstance(result, dict):
            return result
        # A bare IIIF image service id answered with its info.json: request the image it describes.
        service = self._iiif_service(url, result)
        if not follow_info:
            raise FetchError(f"{url}: server returned JSON instead of an image")
        # One hop only: a server answering the image request with an info.json again would
        # send the fetcher round forever.
        try:
            image = self.get(self._image_request(f"{service}/info.json"))
        except FetchError as exc:
            raise FetchError(f"{url}: the IIIF service {service} it names gave no image ({exc})") from exc
        return self.cache.put(url, self.cache.blob_path(image).read_bytes(), image["content_type"], image, service)

    def _retried(self, url: str, cached: dict | None) -> dict | bytes:
        """:meth:`_attempt` with backoff retries; every failure becomes a :class:`FetchError` saying why."""
        from tenacity import (
            Retrying,
            retry_if_exception,
            stop_after_attempt,
            wait_exponential,
        )

        httpx = self._httpx
        transient = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError, _Transient)
        retries = self.config.retries
        retrying = Retrying(
            stop=stop_after_attempt(max(1, retries)),
            wait=wait_exponential(multiplier=self.config.backoff, max=30),
            retry=retry_if_exception(lambda e: isinstance(e, transient)),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    result = self._attempt(url, cached)
        except httpx.TimeoutException as exc:
            raise FetchError(f"{url}: timed out after {retries} attempts ({type(exc).__name__})") from exc
        except httpx.RemoteProtocolError as exc:
            raise FetchError(f"{url}: truncated or malformed response after {retries} attempts ({exc})") from exc
        except httpx.HTTPError as exc:
            raise FetchError(f"{url}: {type(exc).__name__}: {exc}") from exc
        except _Transient as exc:
            raise FetchError(f"{exc} (after {retries} attempts)") from exc
        return result

    def _attempt(self, url: str, cached: dict | None) -> dict | bytes:
        """The cache record of the answer; the body of a JSON answer to anything but an
        ``info.json`` URL (a service id: the caller decides), which is not cached."""
        headers = {}
        if cached is not None:
            if cached.get("etag"):
                headers["If-None-Match"] = cached["etag"]
            if cached.get("last_modified"):
                headers["If-Modified-Since"] = cached["last_modified"]
        with self._host(url):
            deadline = time.monotonic() + self.config.timeout
            with self._http().stream("GET", url, headers=headers) as response, _Deadline(response, deadline):
                result = self._read(url, cached, response)
        if isinstance(result, tuple):
            content_type, body = result
        else:
            return result
        if content_type in JSON_TYPES and not url.endswith("/info.json"):
            return bytes(body)
        with self._lock:
            self.downloaded_bytes += len(body)
            self.downloads += 1
        return self.cache.put(url, bytes(body), content_type, dict(response.headers))

    def _read(self, url: str, cached: dict | None, response) -> dict | tuple[str, bytearray]:
        """The cached record a 304 confirms, else the content type and body of a usable answer."""
        code = response.status_code
        if code == 304 and cached is not None:
            return cached
        if code == 429 or code >= 500:
            raise _Transient(f"{url}: HTTP {code} {response.reason_phrase}")
        if code >= 400:
            raise FetchError(f"{url}: HTTP {code} {response.reason_phrase}")
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        length = response.headers.get("content-length")
        limit = self.config.max_bytes
        if length and length.isdigit() and int(length) > limit:
            raise FetchError(f"{url}: {int(length):,} bytes exceeds the limit of {limit:,}")
        if not content_type.startswith("image/") and content_type not in JSON_TYPES:
            raise FetchError(f"{url}: server returned {content_type or 'no content type'} instead of an image")
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > limit:
                raise FetchError(f"{url}: body exceeds the limit of {limit:,} bytes")
        if length and length.isdigit() and len(body) != int(length):
            raise self._httpx.RemoteProtocolError(f"got {len(body)} of {length} bytes")
        return content_type, body

    @staticmethod
    def _iiif_service(url: str, data: bytes) -> str:
        try:
            info = json.loads(data)
            service = info.get("id") or info.get("@id")
        except (ValueError, AttributeError):
            service = None
        if not isinstance(service, str) or "iiif" not in json.dumps(info.get("@context", "")) + json.dumps(info.get("protocol", "")):
            raise FetchError(f"{url}: server returned JSON that is not an IIIF image service (info.json)")
        return service.rstrip("/")


def _checked(original: Original | None, received: Path, url: str) -> Original | None:
    """``original`` if the size its ``info.json`` declares is one the received image is a
    downscale of (same shape, no larger, to a pixel's rounding); a service declaring a width
    of 1e9 would otherwise turn every measurement into nonsense."""
    if original is None or original.size is None:
        return original
    from ..images import ImageLoadError, image_size

    try:
        h, w = image_size(received)
    except ImageLoadError as exc:
        raise FetchError(f"{url}: {exc.reason}") from exc
    width, height = original.size
    if w > width + 1 or h > height + 1 or abs(w * height - h * width) > width + height:
        raise FetchError(f"{url}: info.json declares {width}x{height} pixels, but the image received is {w}x{h}, "
                         "not a downscale of it")
    return original


def fetch_items(items: list[Item], cache: ImageCache, config: FetchConfig = FetchConfig(), size: int | None = None,
                quiet: bool = True) -> list[Item]:
    """``items`` with every URL item's ``path`` set to its cached file (and ``fetched_at``,
    and ``original`` when the cached image is a downsampled IIIF image), or its ``error`` set
    to why it could not be fetched; local items unchanged. Order kept. ``size``: see :class:`Fetcher`."""
    from tqdm import tqdm

    todo = [i for i, item in enumerate(items) if item.source and item.path is None and not item.error]
    if not todo:
        return items
    out = list(items)
    with Fetcher(cache, config, size) as fetcher, tqdm(total=len(todo), desc="fetch", unit="img", disable=quiet) as bar:
        def one(i: int) -> Item:
            item = items[i]
            try:
                record = fetcher.fetch(item.source)
                original = _checked(fetcher.original(item.source), fetcher.cache.blob_path(record), item.source)
            except FetchError as exc:
                return replace(item, error=f"fetch failed: {exc}")
            finally:
                bar.update(1)
            return replace(item, path=fetcher.cache.blob_path(record), original=original,
                           fetched_at=datetime.fromisoformat(record["fetched_at"]))

        with ThreadPoolExecutor(max_workers=max(1, config.concurrency)) as pool:
            for i, item in zip(todo, pool.map(one, todo)):
                out[i] = item
    return out
