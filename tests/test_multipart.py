"""Tests for eyefuse.serve.multipart on its own (no model, no torch): the bounded in-memory parser
and the status of every refusal (the service's answers to the same bodies are in test_app.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from starlette.requests import Request

from eyefuse.serve.multipart import MAX_PARTS, MAX_TEXT_FIELD, RequestError, Upload, read_multipart

BOUNDARY = "eyefuse-test-boundary"
FIELDS = ("left", "right", "id")
FILES = ("left", "right")


def body(parts: Sequence[tuple[str, str | None, bytes]], boundary: str = BOUNDARY) -> bytes:
    """A multipart/form-data body of `(field, filename or None for text, bytes)` parts."""
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + ("" if filename is None else f'; filename="{filename}"')
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def read(
    data: bytes,
    *,
    content_type: str = f"multipart/form-data; boundary={BOUNDARY}",
    declare_length: bool = True,
    limit: int = 1 << 20,
    chunk: int = 64,
) -> dict[str, Upload]:
    """`read_multipart` on a request carrying `data` in chunks of `chunk` bytes."""
    headers = [(b"content-type", content_type.encode())]
    if declare_length:
        headers.append((b"content-length", str(len(data)).encode()))
    chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)] or [b""]

    async def receive() -> dict[str, object]:
        if chunks:
            piece = chunks.pop(0)
            return {"type": "http.request", "body": piece, "more_body": bool(chunks)}
        return {"type": "http.disconnect"}

    scope = {"type": "http", "method": "POST", "path": "/", "query_string": b"", "headers": headers}
    return asyncio.run(read_multipart(Request(scope, receive), limit, FIELDS, files=FILES))


def status_of(data: bytes, **kw: object) -> tuple[int, str]:
    with pytest.raises(RequestError) as info:
        read(data, **kw)  # type: ignore[arg-type]
    return info.value.status, str(info.value)


def test_parts_are_gathered_in_memory_with_file_names() -> None:
    photo = bytes(range(256)) * 40  # binary, longer than a text field may be
    parts = read(body([("left", "3_left.jpg", photo), ("id", None, b"3")]))
    assert set(parts) == {"left", "id"}
    assert parts["left"].filename == "3_left.jpg" and bytes(parts["left"].data) == photo
    assert parts["id"].filename is None and bytes(parts["id"].data) == b"3"


def test_a_body_that_is_not_multipart_is_415_and_one_without_boundary_400() -> None:
    assert status_of(b"{}", content_type="application/json")[0] == 415
    status, message = status_of(body([("id", None, b"3")]), content_type="multipart/form-data")
    assert status == 400 and "no boundary" in message


def test_a_body_over_the_limit_is_413_declared_or_counted() -> None:
    data = body([("left", "a.jpg", b"x" * 5000)])
    status, message = status_of(data, limit=1000)
    assert status == 413 and "declared" in message
    status, message = status_of(data, limit=1000, declare_length=False)  # chunked: counted
    assert status == 413 and "larger than the limit" in message


def test_unknown_repeated_too_many_and_too_long_fields_are_422() -> None:
    status, message = status_of(body([("photo", "a.jpg", b"x")]))
    assert status == 422 and "unknown form field 'photo'" in message
    status, message = status_of(body([("id", None, b"1"), ("id", None, b"2")]))
    assert status == 422 and "given twice" in message
    status, message = status_of(body([("id", None, b"x" * (MAX_TEXT_FIELD + 1))]))
    assert status == 422 and "longer than" in message
    many = [("left", "a.jpg", b"x")] + [("photo", None, b"")] * MAX_PARTS
    assert status_of(body(many))[0] == 422


def test_a_malformed_body_or_length_is_400() -> None:
    status, message = status_of(b"--" + BOUNDARY.encode() + b"\r\nnot a header line\r\n\r\n")
    assert status == 400 and "malformed multipart body" in message
    headers_bad = (
        b"--"
        + BOUNDARY.encode()
        + b"\r\nContent-Type: text/plain\r\n\r\nx\r\n--"
        + BOUNDARY.encode()
        + b"--\r\n"
    )
    status, message = status_of(headers_bad)
    assert status == 400 and "no Content-Disposition name" in message
