"""A request body as Cortex v0.17+ handed it to `predict(payload)`, by its Content-Type:

- application/json (and +json): the parsed JSON;
- text/*: a str, in the charset the header names (UTF-8 by default);
- application/x-www-form-urlencoded and multipart/form-data: a FormData (a read-only mapping
  of field name to its last value; `getlist` gives them all; a file field is an UploadFile
  with `filename`, `content_type`, `file` and `read()`);
- anything else, or no Content-Type: the raw bytes.

The December 2019 dialect and Cortex v0.11-v0.16 parsed every body as JSON; the replica
keeps that for them (cortexd/replica/bodies.py).
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import parse_qsl

from cortexd.replica.bodies import BodyError, parse_body


@dataclass
class UploadFile:
    filename: str
    content_type: str
    file: io.BytesIO

    def read(self) -> bytes:
        return self.file.read()


class FormData(Mapping[str, Any]):
    def __init__(self, items: list[tuple[str, Any]]) -> None:
        self._items = items
        self._last = dict(items)

    def __getitem__(self, key: str) -> Any:
        return self._last[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._last)

    def __len__(self) -> int:
        return len(self._last)

    def getlist(self, key: str) -> list[Any]:
        return [value for name, value in self._items if name == key]

    def multi_items(self) -> list[tuple[str, Any]]:
        return list(self._items)


def header(headers: list[tuple[str, str]] | None, name: str) -> str:
    for key, value in headers or ():
        if key.lower() == name:
            return value
    return ""


def payload_of(body: bytes, content_type: str) -> Any:
    media, _, params = content_type.partition(";")
    media = media.strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return parse_body(body)
    if media.startswith("text/"):
        charset = _param(params, "charset") or "utf-8"
        try:
            return body.decode(charset)
        except (LookupError, UnicodeDecodeError) as exc:
            raise BodyError(f"the body is not {charset} text: {exc}") from None
    if media == "application/x-www-form-urlencoded":
        try:
            return FormData(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        except UnicodeDecodeError as exc:
            raise BodyError(f"the form is not UTF-8: {exc}") from None
    if media == "multipart/form-data":
        return _multipart(body, content_type)
    return body


def _param(params: str, name: str) -> str | None:
    for part in params.split(";"):
        key, _, value = part.strip().partition("=")
        if key.lower() == name:
            return value.strip().strip('"')
    return None


def _multipart(body: bytes, content_type: str) -> FormData:
    head = b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n"
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise BodyError("the multipart/form-data body has no parts (is its boundary right?)")
    items: list[tuple[str, Any]] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)  # bytes; None for a part that is itself multipart
        data = payload if isinstance(payload, bytes) else b""
        filename = part.get_filename()
        if filename is not None:
            items.append((name, UploadFile(filename, part.get_content_type(), io.BytesIO(data))))
        else:
            charset = part.get_content_charset() or "utf-8"
            items.append((name, data.decode(charset, "replace")))
    return FormData(items)
