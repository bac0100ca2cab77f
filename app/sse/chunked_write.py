"""Body chunks written straight to the stream's transport, past the ASGI ``send`` chain.

Why: in a write pass each stream's ``send`` is a stack of coroutines (uvicorn's
cycle under every middleware that wraps ``send``), a message dict, and the
chunk framing — measured as most of the Python a delivery costs
(``python -m load_tests.flush_cost``). The stream's transport is at hand
(:mod:`app.sse.stream_socket`), so the hub's flush pass writes the frame to it
with one ``transport.write``, while the ASGI response still owns everything
else: the headers, replay, heartbeats, the last chunk and the close.

Design decisions (read before changing):

1. Exactly uvicorn's bytes. The server says, once per stream and after the
   headers went out, whether the direct path is allowed
   (:data:`CHUNKED_BODY_EXTENSION`, provided by :mod:`app.serving.protocols`):
   only for an HTTP/1.1 ``GET`` response whose body uvicorn frames with chunked
   transfer coding, in which case a body chunk is ``<hex length>\\r\\n<data>\\r\\n``
   (:func:`frame_chunk`), as uvicorn's httptools cycle writes it. Any other case
   (plain uvicorn without Herald's protocol, the h11 protocol, HTTP/1.0, a
   ``Content-Length`` body) gets ``None`` and keeps the ASGI path for good.
2. The same flow control as uvicorn's ``send``, checked before each write:
   the connection's ``FlowControl`` (``write_paused``, set when the transport's
   buffer passes its high-water mark, :mod:`app.sse.stream_socket`) and
   ``transport.is_closing()``. When either says no, the write goes through
   ``send`` instead, which waits for the drain or drops the write of a client
   that left — the hand-back of :mod:`app.sse.direct_write`. As with uvicorn,
   one write may land on top of the high-water mark, not more.
3. No reordering: a direct write happens only while the stream's writer task
   is parked with nothing in flight (:meth:`app.sse.connection.Connection.flush`);
   anything the task writes itself goes through ``send`` and has reached the
   transport before the task parks again.
4. One framed chunk per event per pass, shared: streams that get a single
   event in a pass get the same ``bytes`` object (the pass's ``chunks`` map,
   dropped when the pass ends), so most streams cost one dict lookup and one
   ``transport.write`` — what a bare hub does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

__all__ = ["CHUNKED_BODY_EXTENSION", "WriteFlow", "chunked_body_flow", "frame_chunk"]

CHUNKED_BODY_EXTENSION = "herald.chunked_body"
"""Key of ``scope["extensions"]``: a callable returning the connection's
:class:`WriteFlow` when the response being sent is a chunked HTTP/1.1 body, else ``None``."""


class WriteFlow(Protocol):
    """What the direct path reads of uvicorn's ``FlowControl``."""

    write_paused: bool


def chunked_body_flow(scope: Mapping[str, Any]) -> WriteFlow | None:
    """After ``http.response.start``: the flow to check before writing chunks directly, or
    ``None`` when this server or this response must keep the ASGI path (design note 1)."""
    extensions = scope.get("extensions")
    ask: Callable[[], WriteFlow | None] | None = (
        extensions.get(CHUNKED_BODY_EXTENSION) if extensions else None
    )
    return None if ask is None else ask()


def frame_chunk(payload: bytes) -> bytes:
    """``payload`` as one chunk of a chunked HTTP/1.1 body (never empty: the last chunk
    is the ASGI response's)."""
    return b"%x\r\n%b\r\n" % (len(payload), payload)
