"""The kernel side of a stream: its socket's send buffer, its transport's buffer, its abort.

A client that stops reading (a phone in a tunnel) leaves everything we wrote
in two buffers that Herald's queues do not see: the asyncio transport's write
buffer (process memory) and the socket's send buffer (kernel memory, charged to
the container under cgroup v2). With Linux's autotuning the second grows to
``tcp_wmem``'s maximum, 4 MiB per socket on a stock kernel, and a graceful close
does not free it: the FIN waits behind the unsent bytes for as long as the peer
acknowledges with a zero window, which is forever.

Design decisions (read before changing):

1. Where the transport comes from: uvicorn puts neither the transport nor the
   socket in the ASGI scope, so Herald's HTTP protocols
   (:mod:`app.serving.protocols`, used by ``python -m app`` and the gunicorn
   worker) add it as ``scope["extensions"]["herald.transport"]``
   (:data:`TRANSPORT_EXTENSION`), and the stream's ``Connection`` keeps it for
   its lifetime (a later change may write frames to it directly). A server
   without those protocols (plain ``uvicorn app.main:app``) still streams, with
   the kernel's defaults and graceful closes; that is logged once.
2. The send buffer is capped when a *stream* opens, not for every accepted
   connection: only streams live long enough to stall, and ordinary responses
   keep the kernel's autotuning. Setting ``SO_SNDBUF`` turns autotuning off for
   that socket; the kernel doubles the value for its bookkeeping, so a stalled
   stream holds about ``2 x SSE_SOCKET_SEND_BUFFER_KB`` plus a few KB.
   ``0`` leaves autotuning on.
3. The transport's high-water mark is set explicitly (low-water a quarter of it,
   asyncio's own ratio) so its bound is a setting rather than an event loop's
   default. uvicorn checks it *before* each write, so one write may land on top.
4. An abort is ``SO_LINGER`` {on, 0} and then ``transport.abort()``: the
   transport drops its buffer and closes the socket at once, and with a zero
   linger the kernel answers with RST and frees the send queue immediately.
5. Which closes abort is the connection's business (``ABORTED_CLOSES`` in
   :mod:`app.sse.connection`): overflow and idleness, where the client is not
   taking what we send. Shutdown, max-requests drains and client-gone stay
   graceful (the last ``retry:`` must reach the client; a peer that left has
   nothing left to abort).
6. Socket options are best effort: the client may have gone between accept and
   here (``OSError``), and an odd transport may have no socket. A cap that
   cannot be set is no reason to refuse the stream. An abort may come from the
   hub's fan-out (an overflow found while pushing an event), where the client
   may have reset the connection first: uvloop then hands out a socket whose
   descriptor is -1, which raises ``ValueError``. Nothing is left to abort, and
   an exception escaping there would end the broker's reader that called the
   fan-out.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import socket
import struct
import termios
from collections.abc import Mapping
from typing import Any, cast

from app.core.config import Settings

__all__ = [
    "LINGER_ABORT",
    "TRANSPORT_EXTENSION",
    "abort_transport",
    "kernel_unsent_bytes",
    "open_stream_transport",
    "prepare_stream_transport",
    "stream_transport",
]

logger = logging.getLogger("herald.sse")

TRANSPORT_EXTENSION = "herald.transport"
"""Key of ``scope["extensions"]`` under which Herald's protocols put the transport."""
LINGER_ABORT = struct.pack("ii", 1, 0)
"""``struct linger`` {l_onoff=1, l_linger=0}: ``close()`` resets instead of lingering."""
_KB = 1024
_INT = struct.pack("i", 0)
_LOW_WATER_SHARE = 4  # asyncio's default ratio between high and low water

_missing_logged = False


def stream_transport(scope: Mapping[str, Any]) -> asyncio.Transport | None:
    """The transport Herald's protocol put in the scope, or ``None`` under another server."""
    extensions = scope.get("extensions")
    transport = extensions.get(TRANSPORT_EXTENSION) if extensions else None
    if transport is None:
        global _missing_logged
        if not _missing_logged:
            _missing_logged = True
            logger.warning(
                "no transport in the ASGI scope (not served by python -m app or the Herald"
                " gunicorn worker): stream socket buffers keep the kernel's defaults"
            )
        return None
    # No isinstance check: uvloop's transports implement asyncio.Transport's methods
    # without deriving from it.
    return cast(asyncio.Transport, transport)


def open_stream_transport(scope: Mapping[str, Any], settings: Settings) -> asyncio.Transport | None:
    """At stream open: the stream's transport with its buffers capped, if the server gave one."""
    transport = stream_transport(scope)
    if transport is not None:
        prepare_stream_transport(
            transport,
            send_buffer_kb=settings.sse_socket_send_buffer_kb,
            transport_buffer_kb=settings.sse_transport_buffer_kb,
        )
    return transport


def prepare_stream_transport(
    transport: asyncio.Transport, *, send_buffer_kb: int, transport_buffer_kb: int
) -> None:
    """Cap the socket's send buffer (unless 0) and set the transport's write buffer limits."""
    try:
        transport.set_write_buffer_limits(
            high=transport_buffer_kb * _KB, low=transport_buffer_kb * _KB // _LOW_WATER_SHARE
        )
    except RuntimeError:  # uvloop: the client left between accept and here (design note 6)
        return
    if send_buffer_kb:
        _setsockopt(transport, socket.SO_SNDBUF, send_buffer_kb * _KB)


def kernel_unsent_bytes(transport: asyncio.Transport) -> int:
    """Bytes written to the stream's socket that the client has not acknowledged yet
    (``SIOCOUTQ``); 0 where the socket or the ioctl is not there."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        unsent = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, _INT)
    except (OSError, ValueError):  # closed in between, or not a TCP socket
        return 0
    return int(struct.unpack("i", unsent)[0])


def abort_transport(transport: asyncio.Transport) -> None:
    """Close now with RST, discarding whatever the transport and the kernel still hold.
    Also after a graceful ``close()``, which would still wait for the buffer to drain."""
    _setsockopt(transport, socket.SO_LINGER, LINGER_ABORT)
    transport.abort()


def _setsockopt(transport: asyncio.Transport, option: int, value: int | bytes) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, option, value)
    except (OSError, ValueError) as exc:  # the client left in between (design note 6)
        logger.debug("setsockopt(%d) on a stream socket failed: %s", option, exc)
