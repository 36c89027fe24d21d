"""A hostile publisher floods the camera topics while the simulated camera publishes good
frames: the node stays up, memory stays bounded, good frames are still captured, and the
rejections are counted by reason on /diagnostics."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402

from rvg_ros.core.session import CaptureSession  # noqa: E402
from rvg_ros.reliability.system import rig, rss_mb  # noqa: E402
from rvg_ros.ros.demo import start_process, stop_process  # noqa: E402
from rvg_ros.ros.diagnostics import diagnostics_values  # noqa: E402

FLOOD_SECONDS = 15.0


@pytest.mark.timeout(400)
def test_flood_of_malformed_messages(tmp_path: Path) -> None:
    with rig(tmp_path) as r:
        reports: list[DiagnosticArray] = []
        r.client.node.create_subscription(DiagnosticArray, "/diagnostics", reports.append, 10)
        first = r.capture_until_accepted("before", timeout=120.0)
        assert first.accepted, first.reason
        rss_before = rss_mb(r.node.pid)
        flood = start_process(
            "rvg_ros.sim.hostile_publisher",
            ["-p", f"duration:={FLOOD_SECONDS}"],
            r.env,
            tmp_path / "hostile.log",
        )
        accepted, reasons, rss = [], [], []
        try:
            t0 = time.monotonic()
            while flood.poll() is None and time.monotonic() - t0 < FLOOD_SECONDS + 60:
                response = r.client.capture_frame(f"flood {len(accepted)}")
                (accepted if response.accepted else reasons).append(
                    response.frame_index if response.accepted else response.reason
                )
                rss.append(rss_mb(r.node.pid))
                time.sleep(0.7)
            assert flood.wait(timeout=60) == 0
        finally:
            stop_process(flood)
        sent = (tmp_path / "hostile.log").read_text()
        print(
            sent,
            f"accepted {len(accepted)}, rejected {reasons[-5:]}, RSS {rss_before:.0f} "
            f"-> max {max(rss):.0f} MB",
        )
        assert r.node.poll() is None, "the node died under the flood"
        # The good camera's frames still get through while the flood runs.
        assert len(accepted) >= 5, reasons[-5:]
        after = r.capture_until_accepted("after", timeout=30.0)
        assert after.accepted, after.reason
        # Memory bounded: malformed messages are dropped on arrival, never queued.
        assert max(rss) < rss_before * 1.25 + 50, (rss_before, rss)
        # Every acknowledged frame is on disk, whole, and from the good camera.
        frames = CaptureSession(tmp_path / "session", create=False).frames()
        assert len(frames) == len(accepted) + 2
        assert all(f.rgb.shape == (256, 256, 3) for f in frames)
        # Rejections by reason, on /diagnostics.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not reports:
            rclpy.spin_once(r.client.node, timeout_sec=0.1)
        rclpy.spin_once(r.client.node, timeout_sec=1.5)
        values = diagnostics_values(reports[-1])
        rejected = {k: int(v) for k, v in values.items() if k.startswith("rejected ")}
        print(rejected)
        assert int(values["rejected total"]) > 1000
        for reason in (
            "rejected colour message: image step N is smaller than width * bytes per pixel",
            "rejected colour message: unsupported image encoding '…' here",
            "rejected colour message: image too large: N",
            "rejected depth message: unsupported image encoding '…' here",
            "rejected camera_info message: camera info focal lengths must be positive",
            "rejected camera_info message: camera info has non-finite fx",
            "rejected camera_info message: camera info has zero image size",
        ):
            assert any(k.startswith(reason) and n > 0 for k, n in rejected.items()), reason
        assert any(s.status[0].level == DiagnosticStatus.WARN for s in reports)
