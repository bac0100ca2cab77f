"""Capturing Herald's log records in tests ("herald" does not propagate to the root logger)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

__all__ = ["capture_logs"]


class _RecordingHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def capture_logs(name: str) -> Iterator[list[logging.LogRecord]]:
    """Every record of logger ``name`` (DEBUG and up) while the block runs."""
    logger = logging.getLogger(name)
    handler = _RecordingHandler()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
