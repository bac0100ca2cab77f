"""A Lua script call with its command packed in C.

redis-py's asyncio connection packs every command in Python, one argument at a
time: on a 1,000-event batch (about 8,000 script arguments) that packing is a large
share of the worker's CPU (docs/performance.md, "Publishing"). hiredis, already
installed as the reply parser, packs the same RESP bytes in C, and the call then
goes straight to a pooled connection, skipping the per-call retry and command-name
machinery that a single publish pays for as well.

Errors behave as redis-py's own call does: a connection that failed or was cut in
the middle of a reply is disconnected before it returns to the pool, a script that
Redis no longer has (a restarted server) is loaded and the call made again, and
``RedisError``/``OSError`` reach the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import hiredis
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError

__all__ = ["call_script"]


def _pack(*parts: Any) -> bytes:
    # hiredis's stub types the command as a one-element tuple: any tuple of these is packed.
    packed: bytes = hiredis.pack_command(cast(Any, parts))
    return packed


async def call_script(
    client: Redis, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]
) -> Any:
    """``EVALSHA`` of ``script`` on one of ``client``'s pooled connections."""
    pool = client.connection_pool
    connection = await pool.get_connection()  # type: ignore[no-untyped-call, unused-ignore]
    try:
        try:
            await connection.send_packed_command(
                _pack("EVALSHA", script.sha, len(keys), *keys, *args)
            )
            return await connection.read_response()
        except NoScriptError:
            # A Redis that restarted (or never saw the script): load it, then call again.
            await connection.send_packed_command(_pack("SCRIPT", "LOAD", script.script))
            script.sha = (await connection.read_response()).decode()
            await connection.send_packed_command(
                _pack("EVALSHA", script.sha, len(keys), *keys, *args)
            )
            return await connection.read_response()
    except ResponseError:
        raise  # a whole reply was read: the connection is in a clean state
    except BaseException:
        # Cut mid-call (an error, a timeout, a cancellation): its next reply is unknown.
        await connection.disconnect()
        raise
    finally:
        await pool.release(connection)
