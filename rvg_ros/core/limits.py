"""Resource limits for what comes from outside (messages, capture folders), as plain config.

A node on a robot runs for days next to drivers that misbehave: every input that can grow
(image sizes, frames held, bytes on disk, free-text notes) has a ceiling with a safe default,
and exceeding it is a rejection with a reason, never an unbounded allocation.
"""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path


class LimitExceeded(ValueError):
    """An input that is well-formed but larger than a configured limit."""


@dataclass(frozen=True)
class Limits:
    # 16.7 Mpx: above any RGB-D camera a robot carries (and 67 MB as float32 depth).
    max_image_pixels: int = 4096 * 4096
    max_frames: int = 64
    # A 64-frame 1280x720 RGB-D session is ~200 MB of PNG; 2 GB leaves room for results.
    max_session_mb: float = 2048.0
    # Free text from requests (capture notes) is stored in transforms.json.
    max_note_chars: int = 256


def check_image_size(width: int, height: int, max_pixels: int) -> None:
    """Raise LimitExceeded when a ``width`` x ``height`` image is larger than ``max_pixels``."""
    pixels = int(width) * int(height)
    if max_pixels > 0 and pixels > max_pixels:
        raise LimitExceeded(
            f"image too large: {width}x{height} = {pixels} pixels > max_image_pixels={max_pixels}"
        )


def folder_bytes(root: Path) -> int:
    """Bytes of the regular files under ``root`` (symlinks are not followed or counted)."""
    total = 0
    stack = [Path(root)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:  # removed while we walked: it no longer counts
                continue
    return total


def check_session_room(used_bytes: int, adding_bytes: int, max_mb: float) -> None:
    """Raise LimitExceeded when ``adding_bytes`` more would take the session past ``max_mb``."""
    limit = int(max_mb * 1024 * 1024)
    if max_mb > 0 and used_bytes + adding_bytes > limit:
        raise LimitExceeded(
            f"session full: {used_bytes / 2**20:.1f} MB on disk + this frame "
            f"(up to {adding_bytes / 2**20:.1f} MB) > max_session_mb={max_mb:g}"
        )


def sanitize_text(text: str, max_chars: int) -> str:
    """Printable text only (control and format characters become spaces), at most
    ``max_chars`` characters: notes end up in files and logs that people read."""
    cleaned = "".join(
        " " if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn") else c
        for c in str(text)[: max_chars * 4]
    )
    return cleaned[:max_chars]


__all__ = [
    "LimitExceeded",
    "Limits",
    "check_image_size",
    "check_session_room",
    "folder_bytes",
    "sanitize_text",
]
