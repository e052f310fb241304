"""The in-memory multipart parser against Starlette's (python-multipart), and against bad bodies."""

import asyncio
import http.server
import re
import shutil
import subprocess
import threading
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartParser

from carinspect.serving import multipart
from carinspect.serving.multipart import MultipartError, NotMultipart

BOUNDARY_CHARS = "abcXYZ0123456789'()+_,-./:=?"
NAMES = st.text("abcxyz_-.0123456789éß", min_size=1, max_size=12)
# Contents that look like delimiters: CRLF, dashes, pieces of the boundary.
CONTENT = st.lists(
    st.one_of(
        st.binary(max_size=64), st.sampled_from([b"\r\n", b"--", b"\r\n--", b"\r\n\r\n", b"-"])
    ),
    max_size=12,
).map(b"".join)


def encode(boundary: str, parts: list[tuple[str, str | None, bytes]]) -> bytes:
    """A body the way browsers and curl write one (UTF-8 header values)."""
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if filename is not None:
            body += b"Content-Type: application/octet-stream\r\n"
        body += b"\r\n" + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def starlette_parts(body: bytes, content_type: str) -> list[tuple[str, str | None, bytes]]:
    """What Starlette's form parser (what FastAPI's ``UploadFile`` uses) makes of ``body``."""

    async def parse() -> list[tuple[str, str | None, bytes]]:
        async def stream():  # type: ignore[no-untyped-def]
            yield body

        headers = Headers({"content-type": content_type})
        form = await MultiPartParser(headers, stream()).parse()
        out: list[tuple[str, str | None, bytes]] = []
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                out.append((name, value.filename, await value.read()))
            else:
                out.append((name, None, value.encode()))
        return out

    return asyncio.run(parse())


def as_field(data: bytes) -> bytes:
    """A text field's value as Starlette returns it: UTF-8, or Latin-1 when it is not."""
    try:
        return data.decode("utf-8").encode()
    except UnicodeDecodeError:
        return data.decode("latin-1").encode()


def ours(body: bytes, content_type: str) -> list[tuple[str, str | None, bytes]]:
    """The parser's parts, text fields read as Starlette reads them."""
    return [
        (p.name, p.filename, p.data if p.filename is not None else as_field(p.data))
        for p in multipart.parse(body, content_type)
    ]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    boundary=st.text(BOUNDARY_CHARS, min_size=1, max_size=70),
    parts=st.lists(
        st.tuples(NAMES, st.one_of(st.none(), NAMES.map(lambda n: n + ".jpg")), CONTENT),
        max_size=5,
    ),
)
def test_same_parts_as_starlette(boundary: str, parts: list[tuple[str, str | None, bytes]]) -> None:
    # A sender picks a boundary that its contents do not hold (RFC 2046 5.1.1).
    assume(all(f"\r\n--{boundary}".encode() not in data for _, _, data in parts))
    assume(all(f"--{boundary}".encode() not in data[: len(boundary) + 2] for _, _, data in parts))
    content_type = f'multipart/form-data; boundary="{boundary}"'
    body = encode(boundary, parts)
    expected = starlette_parts(body, content_type)
    assert ours(body, content_type) == expected
    assert expected == [(n, f, d if f is not None else as_field(d)) for n, f, d in parts]


def test_real_client_encodings() -> None:
    """httpx (what most Python clients use) and curl write bodies the parser reads back."""
    photo = bytes(range(256)) * 40 + b"\r\n--not-the-boundary\r\n"
    request = httpx.Request(
        "POST", "http://x/predict/batch",
        files=[("files", ("a b.jpg", photo, "image/jpeg")), ("files", ("é.png", b"\x89PNG", "image/png"))],
        data={"note": "kept"},
    )  # fmt: skip
    body, content_type = request.read(), request.headers["content-type"]
    got = ours(body, content_type)
    assert got == starlette_parts(body, content_type)
    assert ("files", "a b.jpg", photo) in got and ("files", "é.png", b"\x89PNG") in got
    assert ("note", None, b"kept") in got


def test_curl_body(tmp_path: Path) -> None:
    """A body written by ``curl -F``, caught by a local HTTP server."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("no curl on this machine")
    photo = tmp_path / "car photo.jpg"
    photo.write_bytes(b"\xff\xd8" + bytes(range(256)) * 64 + b"\xff\xd9")

    seen: dict[str, bytes | str] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen["type"] = self.headers["content-type"]
            seen["body"] = self.rfile.read(int(self.headers["content-length"]))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.handle_request)
    thread.start()
    try:
        subprocess.run(
            [curl, "-sS", "-F", f"file=@{photo}", "-F", "note=hello",
             f"http://127.0.0.1:{server.server_port}/"],
            check=True, timeout=30,
        )  # fmt: skip
    finally:
        thread.join(timeout=30)
        server.server_close()
    body, content_type = seen["body"], seen["type"]
    assert isinstance(body, bytes) and isinstance(content_type, str)
    got = ours(body, content_type)
    assert got == starlette_parts(body, content_type)
    assert got[0] == ("file", "car photo.jpg", photo.read_bytes())


OK = "multipart/form-data; boundary=b"
BAD: list[tuple[str, bytes, str, str]] = [
    ("no boundary parameter", b"", "multipart/form-data", "no valid boundary"),
    ("boundary over 70 characters", b"", "multipart/form-data; boundary=" + "x" * 71, "no valid boundary"),
    ("empty body", b"", OK, "does not contain the boundary"),
    ("boundary only inside a line", b"x--b\r\n", OK, "does not contain the boundary"),
    ("ends after the boundary", b"--b", OK, "ends after its boundary"),
    ("text after the boundary", b"--bx\r\n\r\nhi\r\n--b--", OK, "text after the boundary"),
    ("no blank line", b'--b\r\nContent-Disposition: form-data; name="f"\r\nhi', OK, "no blank line"),
    ("no disposition", b"--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b--", OK, "no Content-Disposition"),
    ("no headers", b"--b\r\n\r\nhi\r\n--b--", OK, "no Content-Disposition"),
    ("header without colon", b"--b\r\nnonsense\r\n\r\nhi\r\n--b--", OK, "malformed header line"),
    ("disposition without name", b"--b\r\nContent-Disposition: form-data\r\n\r\nhi\r\n--b--", OK, "with a name"),
    ("attachment, not form-data", b'--b\r\nContent-Disposition: attachment; name="f"\r\n\r\nhi\r\n--b--', OK, "not form-data"),
    ("truncated content", b'--b\r\nContent-Disposition: form-data; name="f"\r\n\r\nhi', OK, "part 1 (f): no closing boundary"),
    ("headers past 16 KiB", b"--b\r\nX: " + b"y" * 20000 + b"\r\n\r\nhi\r\n--b--", OK, "no blank line"),
    ("too many parts", b'--b\r\nContent-Disposition: form-data; name="f"\r\n\r\n\r\n' * 1001 + b"--b--", OK, "more than 1000 parts"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "content_type", "fragment"), [c[1:] for c in BAD], ids=[c[0] for c in BAD]
)
def test_bad_bodies_are_refused_with_a_reason(
    body: bytes, content_type: str, fragment: str
) -> None:
    with pytest.raises(MultipartError, match=re.escape(fragment)):
        multipart.parse(body, content_type)


@pytest.mark.parametrize(
    "content_type", [None, "", "application/json", "image/jpeg", "multipart/mixed; boundary=b"]
)
def test_other_content_types_are_not_forms(content_type: str | None) -> None:
    with pytest.raises(NotMultipart, match="not multipart/form-data"):
        multipart.parse(b"--b\r\n\r\n--b--", content_type)


def test_empty_form_padding_and_preamble() -> None:
    """What RFC 2046 allows and python-multipart refuses: no parts, padding, a preamble."""
    assert multipart.parse(b"--b--\r\n", OK) == []
    body = b'--b  \r\nContent-Disposition: form-data; name="f"; filename="x"\r\n\r\n\r\n--b--'
    (part,) = multipart.parse(body, OK)
    assert (part.name, part.filename, part.data) == ("f", "x", b"")
    preamble = b"This is a preamble.\r\nb--\r\n" + body
    assert multipart.parse(preamble, OK) == [part]
