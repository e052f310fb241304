"""/predict/url: SSRF vectors refused before any connection; redirects, caps, DNS rebinding."""

import asyncio
import contextlib
import gzip
import ipaddress
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import httpx
import pytest

from carinspect.serving.urlfetch import UrlFetchError, fetch, refusal
from tests.serving.conftest import Server, image_bytes

JPEG = image_bytes("JPEG")


class _Handler(BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.hits.append(f"{self.server.server_address[0]}{self.path}")
        if self.path == "/car.jpg":
            self._answer(200, JPEG, "image/jpeg")
        elif self.path == "/hop":
            self.send_response(302)
            self.send_header("Location", _Recorder.url + "/secret")
            self.end_headers()
        elif self.path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.end_headers()
        elif self.path == "/big":
            self._answer(200, b"\xff" * (2 * 1024 * 1024), "image/jpeg")
        elif self.path == "/bomb.jpg":  # 1 MiB of zeros gzipped twice: ~1 KB on the wire
            once = gzip.compress(b"\0" * (1 << 20))
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Encoding", "gzip, gzip")
            body = gzip.compress(once)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/slow":
            time.sleep(3)
            self._answer(200, JPEG, "image/jpeg")
        else:
            self._answer(200, b"you reached a private service", "text/plain")

    def _answer(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client hung up
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Recorder:
    url = ""


def _start(host: str) -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer((host, 0), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://{host}:{server.server_port}"


@pytest.fixture()
def http_servers() -> Iterator[tuple[str, str]]:
    """A 'private' recorder on 127.0.0.1 and an image host on 127.0.0.2 (allow-listed)."""
    _Handler.hits.clear()
    recorder, recorder_url = _start("127.0.0.1")
    images, images_url = _start("127.0.0.2")
    _Recorder.url = recorder_url
    yield recorder_url, images_url
    recorder.shutdown()
    images.shutdown()


def _recorder_hits(recorder_url: str) -> list[str]:
    return [h for h in _Handler.hits if h.startswith("127.0.0.1")]


def test_ssrf_vectors_are_refused_without_a_connection(
    serve: Callable[..., Server], upstream: dict, http_servers: tuple[str, str]
) -> None:
    recorder_url, _ = http_servers
    port = recorder_url.rsplit(":", 1)[1]
    s = serve(MODEL_URI=str(upstream["export"]), ALLOW_URL_FETCH="true")
    assert "/predict/url" in httpx.get(s.url + "/openapi.json").json()["paths"]  # on: in /docs
    vectors = {
        f"http://127.0.0.1:{port}/x.jpg": "loopback",
        f"http://localhost:{port}/x.jpg": "loopback",
        f"http://[::1]:{port}/x.jpg": "loopback",
        f"http://0.0.0.0:{port}/x.jpg": "unspecified",
        f"http://2130706433:{port}/x.jpg": "loopback",
        f"http://0x7f000001:{port}/x.jpg": "loopback",
        f"http://127.1:{port}/x.jpg": "loopback",
        f"http://[::ffff:127.0.0.1]:{port}/x.jpg": "loopback",
        "http://169.254.169.254/latest/meta-data/": "link-local",
        "http://[fe80::1]/x.jpg": "link-local",
        "http://10.0.0.1/x.jpg": "private",
        "http://192.168.1.10/x.jpg": "private",
        "http://[fd00::1]/x.jpg": "private",
        "http://224.0.0.1/x.jpg": "multicast",
        "file:///etc/passwd": "only http and https",
        "gopher://127.0.0.1:70/_x": "only http and https",
        "ftp://example.com/car.jpg": "only http and https",
        "http://user:pw@example.com/car.jpg": "credentials",
    }
    for url, reason in vectors.items():
        r = httpx.post(s.url + "/predict/url", json={"url": url}, timeout=30)
        assert r.status_code == 400, (url, r.status_code, r.text)
        assert reason in r.json()["detail"], (url, r.text)
    assert _recorder_hits(recorder_url) == []
    assert s.proc.poll() is None


def test_allowed_host_redirects_caps_and_timeouts(
    serve: Callable[..., Server], upstream: dict, http_servers: tuple[str, str]
) -> None:
    recorder_url, images_url = http_servers
    s = serve(
        MODEL_URI=str(upstream["export"]), ALLOW_URL_FETCH="true",
        URL_FETCH_ALLOW_CIDRS="127.0.0.2/32", URL_FETCH_TIMEOUT_S="1", MAX_UPLOAD_MB="1",
    )  # fmt: skip

    def post(path: str) -> httpx.Response:
        return httpx.post(s.url + "/predict/url", json={"url": images_url + path}, timeout=30)

    ok = post("/car.jpg")
    assert ok.status_code == 200, ok.text
    assert ok.json()["filename"] == images_url + "/car.jpg"
    hop = post("/hop")  # 302 to the recorder on 127.0.0.1: checked again, refused
    assert hop.status_code == 400 and "loopback" in hop.json()["detail"]
    assert _recorder_hits(recorder_url) == []
    loop = post("/loop")
    assert loop.status_code == 422 and "more than 3 redirects" in loop.json()["detail"]
    big = post("/big")
    assert big.status_code == 413 and "exceeds" in big.json()["detail"]
    slow = post("/slow")
    assert slow.status_code == 422 and "within 1 s" in slow.json()["detail"]
    missing = post("/nothing-here.txt")
    assert missing.status_code == 415  # fetched, but not an image


def test_the_connection_goes_to_the_checked_address(http_servers: tuple[str, str]) -> None:
    recorder_url, images_url = http_servers
    port = int(images_url.rsplit(":", 1)[1])
    calls: list[str] = []

    async def rebinding(host: str, _port: int) -> list[str]:
        calls.append(host)  # first answer allowed, any later one points inside
        return ["127.0.0.2"] if len(calls) == 1 else ["127.0.0.1"]

    allowed = [ipaddress.ip_network("127.0.0.2/32")]
    body = asyncio.run(
        fetch(f"http://images.test:{port}/car.jpg", timeout_s=5, max_bytes=10**6,
              allowed=allowed, resolver=rebinding)
    )  # fmt: skip
    assert body == JPEG and calls == ["images.test"]
    assert _recorder_hits(recorder_url) == []

    async def mixed(host: str, _port: int) -> list[str]:
        return ["127.0.0.2", "127.0.0.1"]

    with pytest.raises(UrlFetchError, match=r"127\.0\.0\.1 \(loopback\)"):
        asyncio.run(
            fetch(f"http://images.test:{port}/car.jpg", timeout_s=5, max_bytes=10**6,
                  allowed=allowed, resolver=mixed)
        )  # fmt: skip


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("127.0.0.1", "loopback"),
        ("100.64.0.1", "not globally routable"),
        ("::ffff:10.0.0.1", "private"),
        ("2002:7f00:1::", "loopback"),  # 6to4 wrapping 127.0.0.1
        ("ff02::1", "multicast"),
        ("240.0.0.1", "private"),
        ("fec0::1", "site-local"),  # is_global in Python's ipaddress
        ("192.0.0.8", "IETF protocol assignments"),
        ("192.0.0.170", "private"),
        ("192.88.99.1", "6to4 relay anycast"),
        ("64:ff9b::7f00:1", "loopback"),  # NAT64 wrapping 127.0.0.1
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 wrapping 169.254.169.254
        ("64:ff9b::808:808", "reserved"),  # NAT64 to a public address: still not fetched
        ("64:ff9b:1::1", "reserved"),
        ("3fff::1", "documentation"),
        ("::127.0.0.1", "reserved"),  # IPv4-compatible (deprecated)
        ("198.18.0.1", "private"),
    ],
)
def test_refusal_classes(address: str, reason: str | None) -> None:
    why = refusal(ipaddress.ip_address(address))
    assert (why is None) if reason is None else (why is not None and reason in why)


def test_an_encoded_answer_is_refused_before_it_is_inflated(http_servers: tuple[str, str]) -> None:
    _, images_url = http_servers
    allowed = [ipaddress.ip_network("127.0.0.2/32")]
    with pytest.raises(UrlFetchError) as refused:
        asyncio.run(fetch(images_url + "/bomb.jpg", timeout_s=5, max_bytes=4096, allowed=allowed))
    assert refused.value.status == 422
    assert "Content-Encoding 'gzip, gzip'" in str(refused.value)
