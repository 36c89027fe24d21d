"""SIGKILL the node at random moments during capture writes and during a reconstruction,
restart it on the same session_dir: every acknowledged frame is on disk and readable, and no
half-written frame or result is visible.

The loop runs as its own process (``python -m rvg_ros.reliability.kill_loop``, as in
docs/reliability.md): its DDS participants must load the UDP-only profile, and Fast DDS reads
profiles once per process, so this test process (which other tests' clients have used) cannot.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rclpy")


@pytest.mark.timeout(600)
def test_sigkill_loop_during_captures_and_reconstructions(tmp_path: Path) -> None:
    """Larger counts: the same command with --kills 20 (docs/reliability.md)."""
    command = [sys.executable, "-m", "rvg_ros.reliability.kill_loop", "--kills", "3"]
    command += ["--seed", "7", "--reconstruct-every", "3", "--out", str(tmp_path)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=560, env=os.environ)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    stats = json.loads((tmp_path / "kill_loop.json").read_text())
    print(stats)
    assert stats["kills"] == 3 and stats["kills_during_reconstruct"] == 1
    assert stats["lost"] == 0 and stats["frames_on_disk"] >= stats["acknowledged"] > 0
