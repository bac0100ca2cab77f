"""uvicorn's HTTP protocols, plus the connection's transport in every request's scope.

Why: bounding what a stalled client costs needs the stream's socket (to cap its
kernel send buffer and to abort it, see :mod:`app.sse.stream_socket`), and
uvicorn hands the application neither the transport nor the socket.

Design decisions (read before changing):

1. A subclass of each of uvicorn's two HTTP/1.1 protocols (httptools and h11),
   chosen like uvicorn's ``http="auto"`` (:data:`HeraldHttpProtocol`), and
   configured in both ways Herald is served: ``python -m app``
   (``uvicorn.run(http=...)``) and the gunicorn worker (``CONFIG_KWARGS``).
   Neither a middleware nor a wrapper around the app can reach the transport,
   and a wrapper would add a frame to every stream's stack for hours.
2. The transport goes in ``scope["extensions"]["herald.transport"]``: the ASGI
   spec's place for server-specific additions, so another server's scope simply
   lacks the key. One extensions dict per connection, shared by the requests of
   a kept-alive connection (they share the transport too): no allocation per
   request.
3. The scope is tagged right after uvicorn builds it and before the request's
   task first runs (httptools builds it in ``on_message_begin``; h11 builds it
   and creates the task inside ``handle_events``, and a task created there
   starts only on a later loop iteration), so the application always sees it.
4. The httptools protocol also answers, per response, whether its body chunks
   may be written straight to the transport
   (``scope["extensions"]["herald.chunked_body"]``, :mod:`app.sse.chunked_write`):
   yes, with the connection's ``FlowControl``, only while the current cycle is
   an HTTP/1.1 ``GET`` whose headers are out, whose body uvicorn frames as
   chunks and which is not complete. The h11 protocol always says no (h11
   chooses the framing itself); its streams keep the ASGI path.
5. One ``send()`` per small response (httptools): uvicorn writes a response's
   head and its body with two ``transport.write`` calls, two system calls that
   are a large share of a small publish's CPU (docs/performance.md, "Publishing").
   Each cycle writes
   through a :class:`_HeadHoldingTransport`: a head that carries a
   ``content-length`` (its body follows in the same task) is kept until the
   cycle's next write and both go out with one ``writelines``; a close sends it
   first. Any other first write (a stream's chunked head, whose first event may
   be minutes away, or a ``100 Continue``) goes out at once, so nothing needs a
   timer; an end-of-iteration callback per response was tried and cost more
   loop time than the saved system call. Direct chunk writes (note 4) only
   follow chunked heads, which are never held.
6. Detaching a stream's body (httptools only, ``scope["extensions"]["herald.detach_body"]``,
   :mod:`app.sse.chunked_write` design note 5). Offered exactly when note 4's
   direct path is, and only while nothing else is pending on the connection:
   not paused for writing or reading, no pipelined request, not closing. The
   protocol then puts a :class:`_DetachedStream` in its own place on the
   transport (``set_protocol``, as uvicorn does for a WebSocket upgrade) and in
   ``server_state.connections``, marks the cycle complete so that uvicorn's
   ``run_asgi`` returns without closing the transport or arming the keep-alive
   timer, and drops its parser, cycle, scope and headers: the uvicorn protocol
   object, its cycle and the whole ASGI task are freed when the app returns.
   The detached stream is a few slots: the owner, the transport, the server
   state and ``write_paused``. ``connection_lost`` and ``eof_received`` tell the
   owner the client left; ``resume_writing`` that a paused write may go on;
   uvicorn's graceful ``shutdown()`` (called on every connection in
   ``server_state.connections``, which it then waits to empty) asks the owner
   to end the body. Bytes a client sends on a detached connection are
   discarded: an event stream takes no request body, and a pipelined request
   behind a stream would never be answered on the ASGI path either. The
   response counts in ``total_requests`` (max-requests) when its last chunk is
   written, as uvicorn counts a completed response.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from app.memory.pressure import WRITE_PAUSES
from app.sse.chunked_write import (
    CHUNKED_BODY_EXTENSION,
    DETACH_BODY_EXTENSION,
    BodyOwner,
    DetachedBody,
    WriteFlow,
)
from app.sse.stream_socket import TRANSPORT_EXTENSION

# HeraldHttpToolsProtocol exists where httptools is installed (uvicorn[standard] brings it).
__all__ = ["HeraldH11Protocol", "HeraldHttpProtocol"]


class _TransportHandOver(asyncio.Protocol):
    """The connection's transport in one extensions dict, shared by its requests' scopes."""

    _herald_extensions: dict[str, Any]

    def connection_made(  # type: ignore[override, unused-ignore]  # uvicorn narrows the argument too
        self, transport: asyncio.Transport
    ) -> None:
        super().connection_made(transport)
        self._herald_extensions = {TRANSPORT_EXTENSION: transport}

    def pause_writing(self) -> None:
        super().pause_writing()
        # The client stopped reading: the memory guard weighs the box now (app.memory.pressure).
        WRITE_PAUSES.paused()


_SIZED = b"\r\ncontent-length: "  # uvicorn writes header names lowercased


class _HeadHoldingTransport:
    """What a request's cycle writes through: a first write that is a head with a
    ``content-length`` is held until the cycle's next write or its close (design note 5);
    everything else goes straight to the connection's transport."""

    __slots__ = ("_first", "_held", "transport")  # one per request: kept small

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._held: bytes | None = None
        self._first = True

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self.transport.writelines((held, data))
        elif self._first:
            self._first = False
            if _SIZED in data:
                # A head with its body's length: the body follows in the same task (no loop
                # callback to schedule: that cost a publish more than the saved send()).
                self._held = data
            else:
                # A stream's head, or a "100 Continue": its body may be long in coming.
                self.transport.write(data)
        else:
            self.transport.write(data)

    def release(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self.transport.is_closing():
                self.transport.write(held)

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def close(self) -> None:
        self.release()
        self.transport.close()


class _DetachedStream(asyncio.Protocol):
    """A stream's connection once its body left the ASGI path (design note 6): all the
    protocol an idle stream keeps."""

    __slots__ = ("owner", "server_state", "transport", "write_paused")

    def __init__(
        self, owner: BodyOwner, transport: asyncio.Transport, server_state: ServerState
    ) -> None:
        self.owner: BodyOwner | None = owner
        self.transport = transport
        self.server_state = server_state
        self.write_paused = False

    def data_received(self, data: bytes) -> None:
        pass  # an event stream takes no request body (design note 6)

    def eof_received(self) -> bool | None:
        self._lost()
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)  # type: ignore[arg-type, unused-ignore]
        self._lost()

    def _lost(self) -> None:
        owner, self.owner = self.owner, None
        if owner is not None:
            owner.body_lost()

    def pause_writing(self) -> None:
        self.write_paused = True
        # The client stopped reading: the memory guard weighs the box now (app.memory.pressure).
        WRITE_PAUSES.paused()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.owner is not None:
            self.owner.body_writable()

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: the owner ends the body (its last ``retry:``)."""
        if self.owner is not None:
            self.owner.body_shutdown()
        elif not self.transport.is_closing():
            self.transport.close()

    def end(self, last: bytes) -> None:
        self.owner = None
        transport = self.transport
        if transport.is_closing():
            return
        self.server_state.total_requests += 1
        transport.write(last)
        transport.close()


class HeraldH11Protocol(_TransportHandOver, H11Protocol):
    def handle_events(self) -> None:
        super().handle_events()
        scope: Any = self.scope
        if scope is not None and "extensions" not in scope:
            scope["extensions"] = self._herald_extensions


HeraldHttpProtocol: type[asyncio.Protocol]

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools not installed: uvicorn's "auto" would pick h11 too
    HeraldHttpProtocol = HeraldH11Protocol
else:

    class HeraldHttpToolsProtocol(_TransportHandOver, HttpToolsProtocol):
        def connection_made(  # type: ignore[override, unused-ignore]  # uvicorn narrows the argument too
            self, transport: asyncio.Transport
        ) -> None:
            super().connection_made(transport)
            self._herald_extensions[CHUNKED_BODY_EXTENSION] = self._chunked_body_flow
            self._herald_extensions[DETACH_BODY_EXTENSION] = self._detach_body

        def _detach_body(self, owner: BodyOwner) -> DetachedBody | None:
            # Design note 6: only when nothing but the stream's own chunks can follow.
            flow = self.flow
            transport = self.transport
            if (
                self._chunked_body_flow() is None
                or flow.write_paused
                or flow.read_paused
                or self.pipeline
                or transport.is_closing()
            ):
                return None
            detached = _DetachedStream(owner, transport, self.server_state)
            # run_asgi returns without closing the transport, on_response is never called
            # (no keep-alive timer), and any late send raises instead of writing.
            self.cycle.response_complete = True
            transport.set_protocol(detached)
            connections = self.connections
            connections.discard(self)
            connections.add(detached)  # type: ignore[arg-type, unused-ignore]
            # Nothing of this protocol is used again; its parser and extensions refer back
            # to it, so the cycles are broken here rather than left to the collector.
            self._herald_extensions.clear()
            self.parser = None  # type: ignore[assignment, unused-ignore]
            self.cycle = None  # type: ignore[assignment, unused-ignore]
            self.scope = None  # type: ignore[assignment, unused-ignore]
            self.headers = None  # type: ignore[assignment, unused-ignore]
            return detached

        def _chunked_body_flow(self) -> WriteFlow | None:
            # Exactly the case in which uvicorn's cycle.send writes b"%x\r\n" + body + b"\r\n".
            cycle = self.cycle
            if (
                cycle is None
                or not cycle.response_started
                or cycle.response_complete
                or cycle.disconnected
                or cycle.chunked_encoding is not True
                or cycle.scope["method"] != "GET"
                or cycle.scope["http_version"] != "1.1"
            ):
                return None
            return cycle.flow

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            cycle: Any = self.cycle
            if cycle is not None and cycle.transport is self.transport:
                cycle.transport = _HeadHoldingTransport(self.transport)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            scope: Any = self.scope
            scope["extensions"] = self._herald_extensions

    HeraldHttpProtocol = HeraldHttpToolsProtocol
