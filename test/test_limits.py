"""Resource limits: sizes, session bytes on disk, sanitised free text."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rvg_ros.core.limits import (
    LimitExceeded,
    check_image_size,
    check_session_room,
    folder_bytes,
    sanitize_text,
)


def test_image_size_limit() -> None:
    check_image_size(4096, 4096, 4096 * 4096)
    with pytest.raises(LimitExceeded, match="4097x4096 = 16781312 pixels > max_image_pixels"):
        check_image_size(4097, 4096, 4096 * 4096)
    check_image_size(10**6, 10**6, 0)  # 0 = no limit


def test_folder_bytes_counts_files_not_symlinks(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(b"1" * 1000)
    (tmp_path / "y.bin").write_bytes(b"1" * 24)
    (tmp_path / "outside").symlink_to("/usr")
    (tmp_path / "a" / "link.bin").symlink_to(tmp_path / "y.bin")
    assert folder_bytes(tmp_path) == 1024
    assert folder_bytes(tmp_path / "missing") == 0


def test_session_room() -> None:
    check_session_room(500 * 2**20, 10 * 2**20, 1024)
    with pytest.raises(LimitExceeded, match="session full: 1020.0 MB on disk"):
        check_session_room(1020 * 2**20, 10 * 2**20, 1024)
    check_session_room(10**15, 10**12, 0)


@settings(max_examples=200)
@given(text=st.text(max_size=2000), limit=st.integers(1, 300))
def test_sanitised_text_is_printable_and_bounded(text: str, limit: int) -> None:
    out = sanitize_text(text, limit)
    assert len(out) <= limit
    assert "\n" not in out and "\x1b" not in out and "\x00" not in out and "\u202e" not in out
    out.encode("utf-8")  # no lone surrogates left (would raise)


def test_sanitised_text_keeps_ordinary_notes() -> None:
    assert sanitize_text("front view, 30° — mug", 256) == "front view, 30° — mug"
    assert sanitize_text("a\nb\x1b[31mc", 256) == "a b [31mc"
