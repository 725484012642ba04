"""HTTP GETs that outlive the network's blips. A mirror or index that cannot be resolved for a
moment, refuses a connection, times out, answers 429/5xx or drops a connection mid-body is asked
again with exponential backoff (urllib3's Retry, the policy pip and requests use); a 404 is an
answer, not a blip, and is returned at once. CI runners see such blips: one DNS failure for
deb.debian.org once failed a whole suite."""

from __future__ import annotations

import functools
import io
import os
import time
import urllib.parse
import urllib.request
from typing import BinaryIO

import urllib3
from urllib3.exceptions import HTTPError, MaxRetryError
from urllib3.util import Retry, Timeout

from imagebuild.errors import ImageBuildError

# urllib3 sleeps 0, 2, 4, 8, 16 s between its attempts (backoff_factor * 2**(n-1), the first at
# once): a blip of up to ~30 s is survived, a mirror that is really down fails within a minute.
# $IMAGEBUILD_DOWNLOAD_ATTEMPTS changes the count (as pip's --retries, apt's Acquire::Retries):
# 1 fails at the first error, for a machine that knows it is offline.
ATTEMPTS_ENV = "IMAGEBUILD_DOWNLOAD_ATTEMPTS"
BACKOFF = 1.0


def attempts() -> int:
    value = os.environ.get(ATTEMPTS_ENV, "6")
    if not value.isdigit() or not 1 <= int(value) <= 20:
        raise ImageBuildError(f"${ATTEMPTS_ENV}={value!r}: expected a whole number from 1 to 20")
    return int(value)


TRANSIENT = (429, 500, 502, 503, 504)


class DownloadError(Exception):
    """The last attempt's failure; `status` is the HTTP status when the server answered."""

    def __init__(self, url: str, reason: str, status: int | None = None) -> None:
        super().__init__(f"{url}: {reason}")
        self.url, self.reason, self.status = url, reason, status


class TooLarge(DownloadError):
    """The body is longer than the caller said it is (the lock's size): an answer, not a blip,
    so never asked again."""


def pool(attempts: int, backoff: float, proxy: str | None = None) -> urllib3.PoolManager:
    retry = Retry(
        total=attempts - 1,
        backoff_factor=backoff,
        status_forcelist=TRANSIENT,
        allowed_methods={"GET"},
        raise_on_status=False,
    )
    timeout = Timeout(connect=20, read=120)
    if proxy:
        return urllib3.ProxyManager(proxy, retries=retry, timeout=timeout)
    return urllib3.PoolManager(retries=retry, timeout=timeout)


@functools.cache
def _pool(count: int, proxy: str | None) -> urllib3.PoolManager:
    return pool(count, BACKOFF, proxy)


def pool_for(url: str) -> urllib3.PoolManager:
    """The standard proxy variables apply as they do for apt, pip and curl (http_proxy,
    https_proxy, no_proxy): urllib3 itself reads none of them."""
    proxies = urllib.request.getproxies_environment()
    u = urllib.parse.urlsplit(url)
    proxy = proxies.get(u.scheme)
    if not proxy or urllib.request.proxy_bypass(u.hostname or ""):
        proxy = None
    return _pool(attempts(), proxy)


def fetch_to(
    url: str,
    out: BinaryIO,
    headers: dict[str, str] | None = None,
    *,
    pool: urllib3.PoolManager | None = None,
    limit: int | None = None,
) -> int:
    """The body of `url` into `out` (from its start: a body cut off mid-way is fetched again
    whole, never appended to); returns its size. Raises DownloadError after the last attempt,
    or at once for a status that is not a blip (404, 403, ...); TooLarge, with no more than
    `limit` bytes written, for a body that announces or sends more than `limit`."""
    pool = pool or pool_for(url)
    attempts = pool.connection_pool_kw["retries"].total + 1
    for attempt in range(attempts):
        try:
            r = pool.request("GET", url, headers=headers, preload_content=False)
        except MaxRetryError as e:  # connect/read/status retries all spent
            raise DownloadError(url, str(e.reason)) from None
        try:
            if r.status >= 400:
                raise DownloadError(url, f"HTTP {r.status} {r.reason}", r.status)
            announced = r.headers.get("Content-Length", "")
            if limit is not None and announced.isdigit() and int(announced) > limit:
                raise _too_large(r, url, f"announces {announced} bytes, more than the {limit}")
            out.seek(0)
            out.truncate()
            for chunk in r.stream(1 << 20):
                if limit is not None and out.tell() + len(chunk) > limit:
                    raise _too_large(r, url, f"sends more than the {limit} bytes")
                out.write(chunk)
            return out.tell()
        except HTTPError as e:  # the body: a dropped connection, a read timeout, a short read
            if attempt == attempts - 1:
                raise DownloadError(url, f"body cut off after {attempts} attempts: {e}") from None
            time.sleep(pool.connection_pool_kw["retries"].backoff_factor * 2**attempt)
        finally:
            r.release_conn()
    raise AssertionError("unreachable")


def _too_large(r: urllib3.BaseHTTPResponse, url: str, what: str) -> TooLarge:
    # The rest is never read (it may not end): the connection is closed, not drained for reuse.
    r.close()
    return TooLarge(url, f"{what} expected")


def read(url: str, headers: dict[str, str] | None = None) -> bytes:
    """A small body (an index page, a JSON document) in memory, with the same retries."""
    buf = io.BytesIO()
    fetch_to(url, buf, headers)
    return buf.getvalue()
