"""A client-side SSE parser that follows the WHATWG "event stream interpretation".

Herald does not need it to serve; Python consumers, the test suite and the load
tools do, and they must all read the stream the way a browser does: lines end
at CRLF, LF or CR; ``data`` lines join with ``\\n``; an ``id`` containing NUL is
ignored; the last event id persists across events; a leading BOM is dropped.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

__all__ = ["SSEMessage", "SSEParser"]


@dataclass(frozen=True, slots=True)
class SSEMessage:
    event: str
    data: str
    id: str


class SSEParser:
    """Feed bytes, get messages. Comments and ``retry`` are kept for inspection."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self._skip_lf = False
        self._started = False
        self._data: list[str] = []
        self._event = ""
        self._has_data = False
        self.last_event_id = ""
        self.retry: int | None = None
        self.comments: list[str] = []

    def feed(self, chunk: bytes) -> list[SSEMessage]:
        decoded = self._decoder.decode(chunk)
        if self._skip_lf and decoded:
            # The previous chunk ended in CR: a browser dispatched then; an LF
            # right after it belongs to that CRLF, not to a new (empty) line.
            self._skip_lf = False
            decoded = decoded.removeprefix("\n")
        text = self._pending + decoded
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        messages: list[SSEMessage] = []
        start = 0
        length = len(text)
        while True:
            cr = text.find("\r", start)
            lf = text.find("\n", start)
            if cr == -1 and lf == -1:
                break
            end = lf if cr == -1 else cr if lf == -1 else min(cr, lf)
            if text[end] == "\r":
                if end + 1 == length:
                    self._skip_lf = True
                    step = 1
                else:
                    step = 2 if text[end + 1] == "\n" else 1
            else:
                step = 1
            message = self._line(text[start:end])
            if message is not None:
                messages.append(message)
            start = end + step
        self._pending = text[start:]
        return messages

    def _line(self, line: str) -> SSEMessage | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            self.comments.append(line[1:].removeprefix(" "))
            return None
        name, colon, value = line.partition(":")
        if colon:
            value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
            self._has_data = True
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
        return None

    def _dispatch(self) -> SSEMessage | None:
        if not self._has_data:
            self._event = ""
            return None
        message = SSEMessage(
            event=self._event or "message", data="\n".join(self._data), id=self.last_event_id
        )
        self._data = []
        self._has_data = False
        self._event = ""
        return message
