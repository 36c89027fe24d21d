"""SIGKILL the node at random moments during capture writes and during a reconstruction,
restart it on the same session_dir: every acknowledged frame is on disk and readable, and no
half-written frame or result is visible. (Its own module: the rig initialises rclpy.)"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("rclpy")

from rvg_ros.reliability.kill_loop import run_kill_loop  # noqa: E402


@pytest.mark.timeout(600)
def test_sigkill_loop_during_captures_and_reconstructions(tmp_path: Path) -> None:
    """Larger counts: python -m rvg_ros.reliability.kill_loop (docs/reliability.md)."""
    stats = run_kill_loop(tmp_path, kills=3, seed=7, reconstruct_every=3)
    print(stats)
    assert stats["kills"] == 3 and stats["kills_during_reconstruct"] == 1
    assert stats["lost"] == 0 and stats["frames_on_disk"] >= stats["acknowledged"]
