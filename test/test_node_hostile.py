"""A hostile publisher floods the camera topics while the simulated camera publishes good
frames: the node stays up, memory stays bounded, good frames are still captured, and the
rejections are counted by reason on /diagnostics. Longer runs: python -m
rvg_ros.reliability.flood --seconds 120 (docs/reliability.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("rclpy")

from rvg_ros.reliability.flood import run_flood  # noqa: E402


@pytest.mark.timeout(400)
def test_flood_of_malformed_messages(tmp_path: Path) -> None:
    report = run_flood(tmp_path, seconds=15.0)
    print(report)
    assert report["node_alive"], "the node died under the flood"
    assert report["flood_exit_code"] == 0 and report["malformed_sent"] > 1000
    # The good camera's frames still get through while the flood runs, and after it.
    assert report["captures_accepted_during_flood"] >= 4, report["last_rejections"]
    assert report["capture_after_flood_accepted"]
    # Memory bounded: malformed messages are dropped on arrival, never queued.
    assert report["rss_mb_max_during"] < report["rss_mb_before"] * 1.25 + 50, report
    # Every acknowledged frame is on disk, whole, and from the good camera.
    assert report["frames_on_disk"] == report["frames_acknowledged"]
    assert report["all_frames_from_good_camera"]
    # Rejections by reason, on /diagnostics.
    rejected = report["rejected_by_reason"]
    assert rejected["total"] > 500
    for reason in (
        "colour message: image step N is smaller than width * bytes per pixel",
        "colour message: unsupported image encoding '…' here",
        "colour message: image too large: N",
        "depth message: unsupported image encoding '…' here",
        "camera_info message: camera info focal lengths must be positive",
        "camera_info message: camera info has non-finite fx",
        "camera_info message: camera info has zero image size",
    ):
        assert any(k.startswith(reason) and n > 0 for k, n in rejected.items()), reason
