"""Downloads survive the network's blips and do not retry real answers: a local HTTP server on
127.0.0.1 that fails on purpose (5xx, a connection cut mid-body, an address nobody serves)."""

from __future__ import annotations

import contextlib
import http.server
import io
import socket
from collections.abc import Iterator

import pytest
import urllib3

from imagebuild import download
from imagebuild.errors import ImageBuildError
from tests.conftest import http_server

BODY = bytes(range(256)) * 4096  # 1 MiB


class _Flaky(http.server.BaseHTTPRequestHandler):
    """/503-N: 503 for the first N requests; /cut-N: the first N bodies cut off half-way;
    /missing: 404; /endless-0: a body with no length that never ends. Every request is counted
    per path."""

    hits: dict[str, int] = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        n = self.hits[self.path] = self.hits.get(self.path, 0) + 1
        kind, _, count = self.path.strip("/").partition("-")
        if kind == "missing":
            self.send_error(404)
            return
        if kind == "503" and n <= int(count):
            self.send_error(503)
            return
        if kind == "endless":  # no Content-Length: the body ends when the connection does
            self.send_response(200)
            self.end_headers()
            with contextlib.suppress(OSError):  # the client hangs up
                while True:
                    self.wfile.write(BODY)
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        if kind == "cut" and n <= int(count):
            self.wfile.write(BODY[: len(BODY) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(BODY)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _Flaky.hits = {}
    with http_server(_Flaky) as url:
        yield url


FAST = download.pool(attempts=4, backoff=0.01)


def test_5xx_is_asked_again_until_it_answers(server: str) -> None:
    out = io.BytesIO()
    assert download.fetch_to(f"{server}/503-2", out, pool=FAST) == len(BODY)
    assert out.getvalue() == BODY and _Flaky.hits["/503-2"] == 3


def test_a_body_cut_off_is_fetched_again_whole(server: str) -> None:
    out = io.BytesIO()
    out.write(b"stale bytes from before")
    download.fetch_to(f"{server}/cut-2", out, pool=FAST)
    assert out.getvalue() == BODY and _Flaky.hits["/cut-2"] == 3


def test_404_is_an_answer_not_a_blip(server: str) -> None:
    with pytest.raises(download.DownloadError) as e:
        download.fetch_to(f"{server}/missing", io.BytesIO(), pool=FAST)
    assert e.value.status == 404 and _Flaky.hits["/missing"] == 1


def test_blips_that_do_not_end_fail_after_the_last_attempt(server: str) -> None:
    with pytest.raises(download.DownloadError) as e:
        download.fetch_to(f"{server}/503-99", io.BytesIO(), pool=FAST)
    assert e.value.status == 503 and _Flaky.hits["/503-99"] == 4
    with pytest.raises(download.DownloadError) as e:
        download.fetch_to(f"{server}/cut-99", io.BytesIO(), pool=FAST)
    assert "cut off after 4 attempts" in str(e.value) and _Flaky.hits["/cut-99"] == 4


def test_nobody_listening_is_retried_then_named() -> None:
    with socket.socket() as s:  # a port that was free a moment ago: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(download.DownloadError) as e:
        download.fetch_to(f"http://127.0.0.1:{port}/x", io.BytesIO(), pool=FAST)
    assert e.value.status is None and f"127.0.0.1:{port}" in str(e.value)


def test_the_proxy_variables_apply(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """http_proxy is honoured (as by apt, pip, curl): a proxy that is not there fails the
    download; no_proxy for the host goes direct again."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("http_proxy", dead)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.setenv(download.ATTEMPTS_ENV, "2")
    monkeypatch.setattr(download, "BACKOFF", 0.01)
    download._pool.cache_clear()
    assert isinstance(download.pool_for(f"{server}/503-0"), urllib3.ProxyManager)
    with pytest.raises(download.DownloadError):
        download.fetch_to(f"{server}/503-0", io.BytesIO())
    assert "/503-0" not in _Flaky.hits  # it never reached the server
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    out = io.BytesIO()
    download.fetch_to(f"{server}/503-0", out)  # direct: the dead proxy is bypassed
    assert out.getvalue() == BODY


def test_the_attempts_can_be_set_and_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(download.ATTEMPTS_ENV, "1")
    assert download.pool_for("http://127.0.0.1:9/x").connection_pool_kw["retries"].total == 0
    for bad in ("0", "x", "99"):
        monkeypatch.setenv(download.ATTEMPTS_ENV, bad)
        with pytest.raises(ImageBuildError, match=download.ATTEMPTS_ENV):
            download.pool_for("http://127.0.0.1:9/x")


def test_a_body_longer_than_the_limit_is_refused_not_retried(server: str) -> None:
    """The lock's size caps a download: a body announcing more is refused before a byte is
    written; one that sends more without saying so (or never ends) stops at the limit (the
    output only grows within one attempt, so its final size is the most it ever held)."""
    out = io.BytesIO()
    with pytest.raises(download.TooLarge) as e:
        download.fetch_to(f"{server}/503-0", out, pool=FAST, limit=len(BODY) - 1)
    assert f"announces {len(BODY)} bytes" in str(e.value) and f"{server}/503-0" in str(e.value)
    assert out.getvalue() == b"" and _Flaky.hits["/503-0"] == 1
    limit = 3 * len(BODY) + 5
    with pytest.raises(download.TooLarge) as e:
        download.fetch_to(f"{server}/endless-0", out, pool=FAST, limit=limit)
    assert f"sends more than the {limit} bytes expected" in str(e.value)
    assert _Flaky.hits["/endless-0"] == 1
    assert 0 < len(out.getvalue()) <= limit
    # The pool is still good for the next download (the refused connection was closed).
    assert download.fetch_to(f"{server}/503-0", out, pool=FAST, limit=len(BODY)) == len(BODY)
    assert out.getvalue() == BODY
