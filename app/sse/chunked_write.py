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
5. Detaching (:data:`DETACH_BODY_EXTENSION`): an idle stream's ASGI request —
   its task, the chain of coroutine frames, the response object, uvicorn's
   cycle, scope and parser — is most of what the stream costs, and once the
   body is only direct chunk writes none of it is used. So where the server
   offers it, a live stream hands its body to the server's protocol: the ASGI
   app returns without finishing the response, the protocol keeps only a small
   :class:`DetachedBody` and reports to the stream's :class:`BodyOwner` what the
   ASGI machinery used to tell it (the client left, the socket drained, the
   server shuts down). The owner then writes every chunk directly and ends the
   body with :meth:`DetachedBody.end`. A server without the extension (plain
   uvicorn, h11) keeps the ASGI path for the stream's whole life.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

__all__ = [
    "CHUNKED_BODY_EXTENSION",
    "DETACH_BODY_EXTENSION",
    "BodyOwner",
    "DetachedBody",
    "WriteFlow",
    "body_detacher",
    "chunked_body_flow",
    "frame_chunk",
    "last_chunks",
]

CHUNKED_BODY_EXTENSION = "herald.chunked_body"
"""Key of ``scope["extensions"]``: a callable returning the connection's
:class:`WriteFlow` when the response being sent is a chunked HTTP/1.1 body, else ``None``."""


DETACH_BODY_EXTENSION = "herald.detach_body"
"""Key of ``scope["extensions"]``: a callable taking the stream's :class:`BodyOwner` and
returning the :class:`DetachedBody` the body now belongs to, or ``None`` when the response
cannot leave the ASGI path now (design note 5)."""


class WriteFlow(Protocol):
    """What the direct path reads of uvicorn's ``FlowControl``."""

    write_paused: bool


class DetachedBody(Protocol):
    """A chunked body the server's protocol handed to its owner: its flow control, and its end."""

    write_paused: bool

    def end(self, last: bytes) -> None:
        """Write ``last`` (the body's last chunks, :func:`last_chunks`) unless the
        connection is closing, count the response as complete, and close the connection
        (a detached connection serves no further request)."""


class BodyOwner(Protocol):
    """What the server's protocol tells a detached body's owner."""

    def body_lost(self) -> None:
        """The client closed the connection, or half-closed it (EOF)."""

    def body_writable(self) -> None:
        """The transport's buffer drained below its low-water mark after a pause."""

    def body_shutdown(self) -> None:
        """The server is shutting down gracefully: end the body now."""


def body_detacher(
    scope: Mapping[str, Any],
) -> Callable[[BodyOwner], DetachedBody | None] | None:
    """The server's offer to take a stream's body off the ASGI path, or ``None``."""
    extensions = scope.get("extensions")
    return extensions.get(DETACH_BODY_EXTENSION) if extensions else None


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


def last_chunks(payload: bytes) -> bytes:
    """A chunked body's end: ``payload`` as a chunk (when not empty), then the last chunk."""
    return (frame_chunk(payload) if payload else b"") + b"0\r\n\r\n"
