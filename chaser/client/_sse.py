"""A Server-Sent Events parser (the WHATWG event-stream rules, minus `retry`)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class ServerSentEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None

    def json(self) -> Any:
        return json.loads(self.data)


def iter_sse(lines: Iterable[str]) -> Iterator[ServerSentEvent]:
    """Yield one event per blank-line-terminated block of `lines` (no line endings)."""
    event = ""
    data: list[str] = []
    last_id: str | None = None
    have_fields = False
    for line in lines:
        line = line.rstrip("\r\n")
        if not line:
            if data:
                yield ServerSentEvent(event=event or "message", data="\n".join(data), id=last_id)
            event, data, have_fields = "", [], False
            continue
        if line.startswith(":"):
            continue  # comment / keep-alive
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        have_fields = True
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id" and "\0" not in value:
            last_id = value
    # A stream that ends without the final blank line still delivers its last event.
    if have_fields and data:
        yield ServerSentEvent(event=event or "message", data="\n".join(data), id=last_id)


def decode_output(data: dict[str, Any]) -> bytes:
    """The bytes of a command `output` event's data (`{"offset","data","encoding"}`)."""
    chunk = data.get("data") or ""
    if data.get("encoding") == "base64":
        return base64.b64decode(chunk)
    return chunk.encode("utf-8")
