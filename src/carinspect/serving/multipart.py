"""The file parts of a ``multipart/form-data`` body that is already in memory.

The upload routes read the whole body anyway (it is capped by ``BodyLimit``, and the decoder
needs every byte), so the parts are cut out of it with ``bytes.find`` instead of streaming it
through python-multipart's byte-by-byte state machine, Starlette's form parser and a
``SpooledTemporaryFile`` per file. On a 1 MB phone photo that machinery cost the event loop
about as much as the rest of the request together, and the event loop is the one thread that
every request passes through. Header parameters (quoting, ``name``, ``filename``) still go
through python-multipart's ``parse_options_header``, the function Starlette uses.

The format is RFC 7578 (RFC 2046 section 5.1.1 for the delimiters): a preamble, then parts
that each open with ``--boundary`` on a line of its own, headers, a blank line and the content,
and a last ``--boundary--``. Anything that does not follow it is refused with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from python_multipart.multipart import parse_options_header

# Starlette's own limits for a form (max_files, max_fields), and a bound on one part's headers.
MAX_PARTS = 1000
MAX_HEADER_BYTES = 16 * 1024
_CRLF = b"\r\n"


class MultipartError(ValueError):
    """The body is not well-formed ``multipart/form-data``; the message says where."""


class NotMultipart(MultipartError):
    """The request's content type is not ``multipart/form-data`` at all."""


@dataclass(frozen=True)
class Part:
    """One part of the form: its field name, the file name if one was sent, and its bytes."""

    name: str
    filename: str | None
    content_type: str | None
    data: bytes


def boundary_of(content_type: str | None) -> bytes:
    """The boundary of a ``multipart/form-data`` content type; NotMultipart for other types."""
    kind, params = parse_options_header(content_type or "")
    if kind != b"multipart/form-data":
        shown = kind.decode("latin-1") or "none"
        raise NotMultipart(f"content type is {shown}, not multipart/form-data")
    boundary = params.get(b"boundary", b"")
    # RFC 2046: 1-70 characters. Longer ones are refused rather than searched for.
    if not 1 <= len(boundary) <= 70:
        raise MultipartError("the multipart/form-data content type has no valid boundary")
    return boundary


def _text(raw: bytes) -> str:
    """Header values are UTF-8 from browsers and curl; anything else is read as Latin-1."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _headers(block: bytes, number: int) -> tuple[str, str | None, str | None]:
    """The field name, file name and content type from one part's header lines."""
    disposition = content_type = None
    for line in block.split(_CRLF) if block else ():
        name, colon, value = line.partition(b":")
        if not colon or not name.strip():
            raise MultipartError(f"part {number}: malformed header line {line[:60]!r}")
        key = name.strip().lower()
        if key == b"content-disposition":
            disposition = value.strip()
        elif key == b"content-type":
            content_type = _text(value.strip())
    if disposition is None:
        raise MultipartError(f"part {number}: no Content-Disposition header")
    kind, params = parse_options_header(disposition)
    if kind != b"form-data" or b"name" not in params:
        raise MultipartError(f"part {number}: Content-Disposition is not form-data with a name")
    filename = params.get(b"filename")
    return _text(params[b"name"]), None if filename is None else _text(filename), content_type


def parse(body: bytes | bytearray, content_type: str | None) -> list[Part]:
    """Every part of ``body``, in order. MultipartError says what is wrong with a bad body."""
    return parts(body, boundary_of(content_type))


def parts(body: bytes | bytearray, boundary: bytes) -> list[Part]:
    """Every part of ``body`` with a boundary already checked by :func:`boundary_of`.

    Each part's content is copied out once (as ``bytes``), so the body can be dropped after.
    """
    delimiter = b"--" + boundary
    # The first delimiter opens the body or follows a preamble that ends with CRLF.
    at = body.find(delimiter)
    while at > 0 and body[at - 2 : at] != _CRLF:
        at = body.find(delimiter, at + 1)
    if at < 0:
        raise MultipartError("the body does not contain the boundary of its content type")
    separator = _CRLF + delimiter
    found: list[Part] = []
    at += len(delimiter)
    while not body.startswith(b"--", at):  # "--boundary--" closes the body
        if len(found) == MAX_PARTS:
            raise MultipartError(f"more than {MAX_PARTS} parts")
        number = len(found) + 1
        line_end = body.find(_CRLF, at)
        if line_end < 0:
            raise MultipartError(f"part {number}: the body ends after its boundary")
        if body[at:line_end].strip(b" \t"):  # only transport padding may follow a delimiter
            raise MultipartError(f"part {number}: text after the boundary on the same line")
        # The headers end at the first blank line; a part may have none (then it is right here).
        head_end = body.find(_CRLF + _CRLF, line_end, line_end + MAX_HEADER_BYTES)
        if head_end < 0:
            raise MultipartError(f"part {number}: no blank line after its headers")
        name, filename, kind = _headers(bytes(body[line_end + 2 : head_end]), number)
        start = head_end + 4
        end = body.find(separator, start)
        if end < 0:
            raise MultipartError(f"part {number} ({name}): no closing boundary (truncated body?)")
        found.append(Part(name, filename, kind, bytes(memoryview(body)[start:end])))
        at = end + len(separator)
    return found
