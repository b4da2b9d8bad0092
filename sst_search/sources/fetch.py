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
model needs (``/full/!1024,1024/0/default.jpg``), not at full resolution.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

from ..atomic_io import write_bytes_atomic
from .items import Item

#: ``{base}/{region}/{size}/{rotation}/{quality}.{format}`` of the IIIF Image API (2.x and 3.0).
IIIF_IMAGE = re.compile(
    r"^(?P<base>https?://.+?)/(?P<region>full|square|\d+,\d+,\d+,\d+|pct:[\d.]+,[\d.]+,[\d.]+,[\d.]+)"
    r"/(?P<size>[^/]+)/(?P<rotation>!?\d+(?:\.\d+)?)/(?P<quality>default|color|colour|gray|grey|bitonal|native)"
    r"\.(?P<format>jpg|jpeg|png|tif|tiff|webp|gif)$"
)
EXTENSIONS = {"image/jpeg": ".jpg", "image/png": ".png", "image/tiff": ".tif", "image/webp": ".webp",
              "image/gif": ".gif", "image/bmp": ".bmp"}


class FetchError(RuntimeError):
    """An image could not be fetched; the message says why (recorded as the item's error)."""


class _Transient(FetchError):
    """Worth another try: 429 and 5xx answers."""


@dataclass(frozen=True)
class FetchLimits:
    """How politely and how far to fetch (see :class:`sst_search.config.FetchConfig`)."""

    concurrency: int = 8
    max_per_host: int = 2
    timeout: float = 30.0
    retries: int = 4
    backoff: float = 0.5
    max_bytes: int = 100_000_000
    iiif_size: int | None = 1024
    revalidate: bool = False


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

    def put(self, url: str, data: bytes, content_type: str, headers: dict[str, str]) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        blob = Path("blobs") / digest[:2] / (digest + EXTENSIONS.get(content_type, ".img"))
        if not (self.root / blob).is_file():
            write_bytes_atomic(self.root / blob, data, suffix=".part")
        record = {"url": url, "blob": blob.as_posix(), "sha256": digest, "bytes": len(data),
                  "content_type": content_type, "etag": headers.get("etag"),
                  "last_modified": headers.get("last-modified"),
                  "fetched_at": datetime.now(timezone.utc).replace(tzinfo=None).isoformat()}
        write_bytes_atomic(self._record_path(url), json.dumps(record).encode(), suffix=".part")
        return record


class Fetcher:
    """Fetches URLs into an :class:`ImageCache`; one instance per job (it holds the HTTP client)."""

    def __init__(self, cache: ImageCache, limits: FetchLimits = FetchLimits()):
        import httpx

        self.cache = cache
        self.limits = limits
        self._httpx = httpx
        self._client = httpx.Client(timeout=limits.timeout, follow_redirects=True,
                                    headers={"User-Agent": "sst-search (natural-history image indexer)"},
                                    limits=httpx.Limits(max_connections=max(limits.concurrency, 1)))
        self._hosts: dict[str, threading.Semaphore] = {}
        self._lock = threading.Lock()
        #: Bytes downloaded and requests answered with a body, for progress and benchmarks.
        self.downloaded_bytes = 0
        self.downloads = 0

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def fetch(self, url: str) -> dict:
        """The cache record of ``url`` (fetched now unless cached); raises :class:`FetchError`."""
        requested = iiif_request_url(url, self.limits.iiif_size)
        cached = self.cache.lookup(requested)
        if cached is not None and not self.limits.revalidate:
            return cached
        return self._get(requested, cached, follow_info=True)

    def _host(self, url: str) -> threading.Semaphore:
        host = urlsplit(url).netloc.lower()
        with self._lock:
            return self._hosts.setdefault(host, threading.Semaphore(self.limits.max_per_host))

    def _get(self, url: str, cached: dict | None, follow_info: bool) -> dict:
        from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

        httpx = self._httpx
        transient = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError, _Transient)
        retrying = Retrying(
            stop=stop_after_attempt(max(1, self.limits.retries)),
            wait=wait_exponential(multiplier=self.limits.backoff, max=30),
            retry=retry_if_exception(lambda e: isinstance(e, transient)),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    result = self._attempt(url, cached)
        except httpx.TimeoutException as exc:
            raise FetchError(f"{url}: timed out after {self.limits.retries} attempts ({type(exc).__name__})") from exc
        except httpx.RemoteProtocolError as exc:
            raise FetchError(f"{url}: truncated or malformed response after {self.limits.retries} attempts ({exc})") from exc
        except httpx.HTTPError as exc:
            raise FetchError(f"{url}: {type(exc).__name__}: {exc}") from exc
        except _Transient as exc:
            raise FetchError(f"{exc} (after {self.limits.retries} attempts)") from exc
        if isinstance(result, str):  # an IIIF info.json: request the image it describes, at our size
            if not follow_info:
                raise FetchError(f"{url}: server returned JSON instead of an image")
            image_url = iiif_request_url(result.rstrip("/") + "/info.json", self.limits.iiif_size or 0)
            if image_url.endswith("/info.json"):  # no size limit: the whole image
                image_url = result.rstrip("/") + "/full/max/0/default.jpg"
            cached_image = self.cache.lookup(image_url)
            record = cached_image if cached_image is not None and not self.limits.revalidate else \
                self._get(image_url, cached_image, follow_info=False)
            self.cache.put(url, self.cache.blob_path(record).read_bytes(), record["content_type"], record)
            return record
        return result

    def _attempt(self, url: str, cached: dict | None) -> dict | str:
        headers = {}
        if cached is not None:
            if cached.get("etag"):
                headers["If-None-Match"] = cached["etag"]
            if cached.get("last_modified"):
                headers["If-Modified-Since"] = cached["last_modified"]
        with self._host(url), self._client.stream("GET", url, headers=headers) as response:
            code = response.status_code
            if code == 304 and cached is not None:
                return cached
            if code == 429 or code >= 500:
                raise _Transient(f"{url}: HTTP {code} {response.reason_phrase}")
            if code >= 400:
                raise FetchError(f"{url}: HTTP {code} {response.reason_phrase}")
            content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
            length = response.headers.get("content-length")
            if length and length.isdigit() and int(length) > self.limits.max_bytes:
                raise FetchError(f"{url}: {int(length):,} bytes exceeds the limit of {self.limits.max_bytes:,}")
            if content_type in ("application/json", "application/ld+json"):
                return self._iiif_service(url, response.read())
            if not content_type.startswith("image/"):
                raise FetchError(f"{url}: server returned {content_type or 'no content type'} instead of an image")
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > self.limits.max_bytes:
                    raise FetchError(f"{url}: body exceeds the limit of {self.limits.max_bytes:,} bytes")
            if length and length.isdigit() and len(body) != int(length):
                raise self._httpx.RemoteProtocolError(f"got {len(body)} of {length} bytes")
        with self._lock:
            self.downloaded_bytes += len(body)
            self.downloads += 1
        return self.cache.put(url, bytes(body), content_type, dict(response.headers))

    @staticmethod
    def _iiif_service(url: str, data: bytes) -> str:
        try:
            info = json.loads(data)
            service = info.get("id") or info.get("@id")
        except (ValueError, AttributeError):
            service = None
        if not isinstance(service, str) or "iiif" not in json.dumps(info.get("@context", "")) + json.dumps(info.get("protocol", "")):
            raise FetchError(f"{url}: server returned JSON that is not an IIIF image service (info.json)")
        return service


def fetch_items(items: list[Item], cache: ImageCache, limits: FetchLimits = FetchLimits(), quiet: bool = True) -> list[Item]:
    """``items`` with every URL item's ``path`` set to its cached file (and ``fetched_at``),
    or its ``error`` set to why it could not be fetched; local items unchanged. Order kept."""
    from tqdm import tqdm

    todo = [i for i, item in enumerate(items) if item.source and item.path is None and not item.error]
    if not todo:
        return items
    out = list(items)
    with Fetcher(cache, limits) as fetcher, tqdm(total=len(todo), desc="fetch", unit="img", disable=quiet) as bar:
        def one(i: int) -> Item:
            item = items[i]
            try:
                record = fetcher.fetch(item.source)
            except FetchError as exc:
                return replace(item, error=f"fetch failed: {exc}")
            finally:
                bar.update(1)
            return replace(item, path=fetcher.cache.blob_path(record),
                           fetched_at=datetime.fromisoformat(record["fetched_at"]))

        with ThreadPoolExecutor(max_workers=max(1, limits.concurrency)) as pool:
            for i, item in zip(todo, pool.map(one, todo)):
                out[i] = item
    return out
