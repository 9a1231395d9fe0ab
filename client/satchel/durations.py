"""Durations as satchelctl and satcheld take them: `500ms`, `90s`, `10m`, `1h30m`, `1.5h`, `7d`.

A public module, so that the server's flags parse durations exactly as the CLI's do.
"""

from __future__ import annotations

import re
from datetime import timedelta

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """One or more NUMBER UNIT parts with nothing between them, summed: units `ms`, `s`, `m`,
    `h`, `d`; numbers non-negative, with an optional fraction (`1.5h`). Raises ValueError on
    anything else (also on an empty string, a sign, spaces or a bare number)."""
    pos, total = 0, 0.0
    for m in _PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not text or pos != len(text):
        raise ValueError(f"invalid duration {text!r} (use e.g. 500ms, 10s, 5m, 1h30m, 7d)")
    try:
        return timedelta(seconds=total)
    except OverflowError:
        raise ValueError(f"duration {text!r} is too long") from None


__all__ = ["parse_duration"]
