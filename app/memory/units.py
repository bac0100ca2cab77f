"""Human-readable byte counts for log lines and reports (binary units, as ``free -h``)."""

from __future__ import annotations

__all__ = ["format_bytes"]

_UNITS = ("B", "KB", "MB", "GB", "TB")
_STEP = 1024.0


def format_bytes(count: float) -> str:
    """``1536`` → ``"1.5 KB"``; whole bytes are shown without decimals."""
    value = float(count)
    for unit in _UNITS[:-1]:
        if abs(value) < _STEP:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= _STEP
    return f"{value:.1f} {_UNITS[-1]}"
