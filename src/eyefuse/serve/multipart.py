"""Reading the service's ``multipart/form-data`` uploads: in memory, bounded, strict.

`read_multipart` parses a request body with python-multipart's streaming parser and keeps every part
in memory (never on disk, whatever its file name). It refuses, as a `RequestError` with the HTTP
status the service answers:

- 415: a body that is not ``multipart/form-data``;
- 400: a malformed body (no boundary, a part without a name, a parser error) or Content-Length;
- 413: a body over the limit, by its Content-Length before reading, or counted while reading, so an
  unbounded chunked body is cut off early;
- 422: an unknown or repeated form field, more than `MAX_PARTS` parts, a text field over
  `MAX_TEXT_FIELD` bytes.

`form_schema` describes the same form in the OpenAPI schema (the endpoints parse the body themselves,
so FastAPI cannot infer it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from eyefuse.errors import EyefuseError

MIB = 1 << 20
#: Largest text form field (``id``, ``labels``), in bytes.
MAX_TEXT_FIELD = 1024
#: Most parts a multipart body may hold (left, right, id, labels, with room for mistakes to be named).
MAX_PARTS = 8
#: File names are echoed in error messages; longer ones are shortened.
_NAME_SHOWN = 80

#: The form fields the service's endpoints accept, for the OpenAPI schema.
FORM_FIELDS: dict[str, dict[str, str]] = {
    "left": {"type": "string", "format": "binary", "description": "left eye photograph"},
    "right": {"type": "string", "format": "binary", "description": "right eye photograph"},
    "id": {"type": "string", "description": "patient ID (default: from {ID}_left/right file names)"},
    "labels": {"type": "string", "description": "labels to explain, e.g. D,G (default: those predicted)"},
}


def form_schema(*fields: str) -> dict[str, Any]:
    """OpenAPI `requestBody` for a multipart form of `fields` (names of `FORM_FIELDS`)."""
    properties = {name: FORM_FIELDS[name] for name in fields}
    form = {"schema": {"type": "object", "properties": properties}}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": form}}}


class RequestError(EyefuseError):
    """A request the service cannot serve: answered with `status` and ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})


@dataclass
class Upload:
    """One part of a multipart body: the form field, the client's file name (None for a text
    field; used in messages and for the patient ID only, never as a path) and the bytes."""

    field: str
    filename: str | None
    data: bytearray = field(default_factory=bytearray)


def shown_name(name: str) -> str:
    """`name` as echoed in an error message: shortened to `_NAME_SHOWN` characters."""
    return name if len(name) <= _NAME_SHOWN else name[: _NAME_SHOWN - 3] + "..."


class _PartCollector:
    """python-multipart callbacks that gather the parts in memory and refuse unexpected ones."""

    def __init__(self, allowed: Sequence[str], files: Sequence[str]) -> None:
        self.allowed = tuple(allowed)
        self.files = tuple(files)
        self.parts: dict[str, Upload] = {}
        self._headers: dict[bytes, bytes] = {}
        self._name = b""
        self._value = b""
        self._current: Upload | None = None
        self._count = 0

    def on_part_begin(self) -> None:
        self._headers = {}
        self._current = None
        self._count += 1
        if self._count > MAX_PARTS:
            raise RequestError(
                422, f"too many form fields (more than {MAX_PARTS}); expected {self._expected()}"
            )

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._name.strip().lower()] = self._value.strip()
        self._name, self._value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if b"name" not in options:
            raise RequestError(400, "malformed multipart body: a part has no Content-Disposition name")
        name = options[b"name"].decode("utf-8", "replace")
        if name not in self.allowed:
            raise RequestError(422, f"unknown form field {shown_name(name)!r}; expected {self._expected()}")
        if name in self.parts:
            raise RequestError(422, f"form field {name!r} is given twice; send each field once")
        filename = options.get(b"filename")
        self._current = Upload(name, None if filename is None else filename.decode("utf-8", "replace"))
        self.parts[name] = self._current

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        assert self._current is not None
        part = self._current
        part.data += data[start:end]
        if part.field not in self.files and len(part.data) > MAX_TEXT_FIELD:
            raise RequestError(422, f"form field {part.field!r} is longer than {MAX_TEXT_FIELD} bytes")

    def on_part_end(self) -> None:
        self._current = None

    def _expected(self) -> str:
        return ", ".join(repr(a) for a in self.allowed)

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            name: getattr(self, name)
            for name in (
                "on_part_begin",
                "on_part_data",
                "on_part_end",
                "on_header_field",
                "on_header_value",
                "on_header_end",
                "on_headers_finished",
            )
        }


async def read_multipart(
    request: Request, limit: int, allowed: Sequence[str], *, files: Sequence[str]
) -> dict[str, Upload]:
    """Parse a ``multipart/form-data`` body in memory, refusing it (413) as soon as it exceeds
    `limit` bytes: by its Content-Length before reading, and by counting while reading.

    Args:
        request: the incoming request.
        limit: largest body, in bytes.
        allowed: the form fields accepted (any other is refused, 422).
        files: those of `allowed` that hold files; the others are text, at most `MAX_TEXT_FIELD`
            bytes each.

    Returns:
        The parts by field name.
    """
    media, params = parse_options_header(request.headers.get("content-type", ""))
    if media != b"multipart/form-data":
        shown = media.decode("latin-1") or "none"
        raise RequestError(
            415,
            "expected a multipart/form-data body with the files 'left' and/or 'right' "
            f"(content type: {shown})",
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise RequestError(400, "malformed multipart body: the Content-Type header has no boundary")
    too_large = f"request body larger than the limit of {limit / MIB:g} MB"
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise RequestError(400, f"invalid Content-Length header {shown_name(declared)!r}") from None
        if size > limit:
            raise RequestError(413, f"{too_large} ({size / MIB:.1f} MB declared)")
    collector = _PartCollector(allowed, files)
    parser = MultipartParser(boundary, collector.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise RequestError(413, too_large)
            parser.write(chunk)
        parser.finalize()
    except FormParserError as e:
        raise RequestError(400, f"malformed multipart body ({e})") from None
    return collector.parts


__all__ = [
    "FORM_FIELDS",
    "MAX_PARTS",
    "MAX_TEXT_FIELD",
    "MIB",
    "RequestError",
    "Upload",
    "form_schema",
    "read_multipart",
    "shown_name",
]
