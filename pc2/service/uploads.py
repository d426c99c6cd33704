"""Stream a multipart upload straight to disk, counting bytes so an oversize body stops early.

Starlette's ``request.form()`` would spool the whole body before we could refuse it; this parser
writes each file part to its own file in a staging directory as the bytes arrive.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

MAX_FIELD_BYTES = 64 * 1024  # plain form fields (the dataset name) are small


class UploadTooLarge(Exception):
    def __init__(self, limit: int):
        super().__init__(f"upload exceeds the limit of {limit} bytes")
        self.limit = limit


class BadUpload(ValueError):
    """The body is not the multipart form the endpoint expects."""


@dataclass
class UploadedFile:
    field: str
    filename: str
    path: Path
    size: int = 0


@dataclass
class UploadedForm:
    fields: dict[str, str] = field(default_factory=dict)
    files: list[UploadedFile] = field(default_factory=list)

    def files_for(self, name: str) -> list[UploadedFile]:
        return [f for f in self.files if f.field == name]


def _safe_name(name: str) -> str:
    base = os.path.basename(name.replace("\\", "/")) or "file"
    return re.sub(r"[^A-Za-z0-9._-]", "_", base)[:120]


class _Sink:
    def __init__(self, directory: Path):
        self.dir = directory
        self.form = UploadedForm()
        self._headers: dict[bytes, bytes] = {}
        self._hname = b""
        self._hvalue = b""
        self._file: UploadedFile | None = None
        self._fh = None
        self._field: str | None = None
        self._buf = bytearray()

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._add(d, s, e, "_hname"),
            "on_header_value": lambda d, s, e: self._add(d, s, e, "_hvalue"),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _add(self, data: bytes, start: int, end: int, attr: str) -> None:
        setattr(self, attr, getattr(self, attr) + data[start:end])

    def _part_begin(self) -> None:
        self._headers = {}
        self._file, self._field, self._buf = None, None, bytearray()

    def _header_end(self) -> None:
        self._headers[self._hname.lower()] = self._hvalue
        self._hname, self._hvalue = b"", b""

    def _headers_finished(self) -> None:
        _, opts = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = opts.get(b"name", b"").decode("utf-8", "replace")
        if not name:
            raise BadUpload("a multipart part has no name")
        filename = opts.get(b"filename")
        if filename is None:
            self._field = name
            return
        original = filename.decode("utf-8", "replace")
        path = self.dir / f"{len(self.form.files):03d}-{_safe_name(original)}"
        self._file = UploadedFile(field=name, filename=original, path=path)
        self._fh = open(path, "wb")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._fh is not None:
            self._fh.write(data[start:end])
            self._file.size += end - start  # type: ignore[union-attr]
        else:
            self._buf += data[start:end]
            if len(self._buf) > MAX_FIELD_BYTES:
                raise BadUpload(f"form field {self._field!r} is longer than {MAX_FIELD_BYTES} bytes")

    def _part_end(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None
            self.form.files.append(self._file)  # type: ignore[arg-type]
        elif self._field is not None:
            self.form.fields[self._field] = self._buf.decode("utf-8", "replace")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


async def receive_multipart(request: Request, directory: Path, *, limit: int) -> UploadedForm:
    """Parse the request body into ``directory``; raise ``UploadTooLarge`` past ``limit`` bytes.

    The caller owns ``directory`` and removes it on any error.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise UploadTooLarge(limit)  # refuse before reading a byte
    ctype, opts = parse_options_header(request.headers.get("content-type", ""))
    boundary = opts.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise BadUpload("expected multipart/form-data with a boundary")
    directory.mkdir(parents=True, exist_ok=True)
    sink = _Sink(directory)
    parser = MultipartParser(boundary, sink.callbacks())
    seen = 0
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > limit:
                raise UploadTooLarge(limit)
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise BadUpload(f"malformed multipart body: {exc}") from None
    finally:
        sink.close()
    return sink.form
