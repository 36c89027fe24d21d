"""Hostile publisher run: the simulated camera publishes good frames while
``rvg_ros.sim.hostile_publisher`` floods the same topics with malformed messages; a client
keeps capturing. Reports the flood rate, frames captured, node RSS and the rejections by
reason from /diagnostics.

    python -m rvg_ros.reliability.flood --seconds 120 --out out/flood
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from rvg_ros.core.session import CaptureSession
from rvg_ros.reliability.system import rig, rss_mb
from rvg_ros.ros.demo import start_process, stop_process


def run_flood(root: Path, seconds: float, capture_period: float = 0.7) -> dict:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray

    from rvg_ros.ros.diagnostics import diagnostics_values

    root = Path(root)
    with rig(root) as r:
        reports: list[DiagnosticArray] = []
        r.client.node.create_subscription(DiagnosticArray, "/diagnostics", reports.append, 10)
        first = r.capture_until_accepted("before", timeout=120.0)
        if not first.accepted:
            raise RuntimeError(f"no good frame before the flood: {first.reason}")
        rss_before = rss_mb(r.node.pid)
        flood = start_process(
            "rvg_ros.sim.hostile_publisher",
            ["-p", f"duration:={seconds}"],
            r.env,
            root / "hostile.log",
        )
        accepted, rejected, rss = 0, [], []
        try:
            t0 = time.monotonic()
            while flood.poll() is None and time.monotonic() - t0 < seconds + 60:
                response = r.client.capture_frame(f"flood {accepted}")
                if response.accepted:
                    accepted += 1
                else:
                    rejected.append(response.reason)
                rss.append(rss_mb(r.node.pid))
                time.sleep(capture_period)
            flood_rc = flood.wait(timeout=60)
        finally:
            stop_process(flood)
        node_alive = r.node.poll() is None
        after = r.capture_until_accepted("after", timeout=30.0)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not reports:
            rclpy.spin_once(r.client.node, timeout_sec=0.1)
        rclpy.spin_once(r.client.node, timeout_sec=1.5)
        values = diagnostics_values(reports[-1]) if reports else {}
        frames = CaptureSession(root / "session", create=False).frames()
    log = (root / "hostile.log").read_text()
    sent = re.search(r"sent (\d+) malformed messages in ([\d.]+) s", log)
    return {
        "flood_seconds": seconds,
        "flood_exit_code": flood_rc,
        "malformed_sent": int(sent.group(1)) if sent else None,
        "malformed_rate_per_s": int(sent.group(1)) / float(sent.group(2)) if sent else None,
        "node_alive": node_alive,
        "captures_accepted_during_flood": accepted,
        "captures_rejected_during_flood": len(rejected),
        "capture_after_flood_accepted": bool(after.accepted),
        "frames_on_disk": len(frames),
        "frames_acknowledged": accepted + 1 + int(after.accepted),
        "all_frames_from_good_camera": all(f.rgb.shape == (256, 256, 3) for f in frames),
        "rss_mb_before": rss_before,
        "rss_mb_max_during": max(rss) if rss else None,
        "rss_mb_end": rss[-1] if rss else None,
        "rejected_by_reason": {
            k[len("rejected ") :]: int(v) for k, v in values.items() if k.startswith("rejected ")
        },
        "received_by_input": {
            k[len("received ") :]: int(v) for k, v in values.items() if k.startswith("received ")
        },
        "last_rejections": rejected[-3:],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--out", default="out/flood")
    args = parser.parse_args(argv)
    report = run_flood(Path(args.out).resolve(), args.seconds)
    print(json.dumps(report, indent=2))
    Path(args.out, "flood.json").write_text(json.dumps(report, indent=2))
    return 0 if report["node_alive"] and report["capture_after_flood_accepted"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
