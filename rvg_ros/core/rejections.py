"""Counting rejected inputs by reason, with bounded memory.

A hostile or broken publisher can produce endless distinct error texts (sizes, encodings,
stamps in the message); counting by the raw text would grow without bound. Reasons are
reduced to their template (numbers and quoted names replaced) and at most ``max_reasons``
distinct ones are kept; the rest count under "other".
"""

from __future__ import annotations

import re
import threading
from collections import Counter

_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_NUMBER = re.compile(r"[-+]?\d+(\.\d+)?([eE][-+]?\d+)?")
_DETAIL = re.compile(r"\s*[(\[].*$")


def reason_key(reason: str, max_chars: int = 80) -> str:
    """The template of a rejection reason: 'image step 11 is smaller than ... (3 * 4 = 12)'
    -> 'image step N is smaller than width * bytes per pixel'."""
    text = _QUOTED.sub("'…'", str(reason))
    text = _NUMBER.sub("N", text)
    text = _DETAIL.sub("", text)
    return text[:max_chars].strip() or "unknown"


class RejectionCounts:
    """Thread-safe counts of rejections by (source, reason template)."""

    def __init__(self, max_reasons: int = 64) -> None:
        self.max_reasons = max_reasons
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, source: str, reason: str) -> str:
        """Count one rejection; returns the key it was counted under."""
        key = f"{source}: {reason_key(reason)}"
        with self._lock:
            if key not in self._counts and len(self._counts) >= self.max_reasons:
                key = f"{source}: other"
            self._counts[key] += 1
        return key

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())


__all__ = ["RejectionCounts", "reason_key"]
