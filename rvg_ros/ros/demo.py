"""``rvg-ros demo``: the whole loop, as a user runs it, on a simulated camera.

Starts the reconstruct node and the simulated camera as separate processes on a private DDS
domain, captures frames through the capture service while the camera orbits (by default four
views over a 120 degree arc, as a wrist camera that cannot go round the object), reconstructs
through the action (printing its feedback), receives the cloud and mesh on their topics, and
scores the result against the simulated object's ground-truth mesh. The baseline backend is then
run offline (``reconstruct_folder``) on the very session the node saved, and both are printed
side by side.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rvg_ros.ros.environment import isolated_ros_env, share_file

NODE_NAME = "rvg_reconstruct"


class DemoError(RuntimeError):
    pass


def start_process(
    module: str, ros_args: list[str], env: dict[str, str], log: Path
) -> subprocess.Popen:
    """Start ``python -m module --ros-args ...`` with its output in ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    handle = open(log, "wb")  # noqa: SIM115 - closed with the process by stop_process
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "--ros-args", *ros_args],
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
    )
    proc.log_handle = handle  # type: ignore[attr-defined]
    return proc


def stop_process(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    if proc.poll() is None:
        proc.send_signal(2)  # SIGINT: let rclpy shut down cleanly
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    proc.log_handle.close()  # type: ignore[attr-defined]


class DemoClient:
    """Service/action client and topic listener for the demo (and the integration tests)."""

    def __init__(self, namespace: str = f"/{NODE_NAME}") -> None:
        import rclpy
        from rclpy.action import ActionClient
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import PointCloud2
        from visualization_msgs.msg import Marker

        from rvg_ros.action import Reconstruct as ReconstructAction
        from rvg_ros.srv import Capture, LoadSession, Reconstruct, Reset

        self.node = rclpy.create_node("rvg_demo_client")
        ns = namespace.rstrip("/")
        self.capture = self.node.create_client(Capture, f"{ns}/capture")
        self.reconstruct = self.node.create_client(Reconstruct, f"{ns}/reconstruct")
        self.reset = self.node.create_client(Reset, f"{ns}/reset")
        self.load_session = self.node.create_client(LoadSession, f"{ns}/load_session")
        self.action = ActionClient(self.node, ReconstructAction, f"{ns}/reconstruct_action")
        self.action_type = ReconstructAction
        latched = QoSProfile(
            depth=1,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        self.received: dict[str, Any] = {}
        self.node.create_subscription(
            PointCloud2, f"{ns}/cloud", lambda m: self.received.__setitem__("cloud", m), latched
        )
        self.node.create_subscription(
            Marker, f"{ns}/mesh_marker", lambda m: self.received.__setitem__("mesh", m), latched
        )
        self._rclpy = rclpy

    def wait_ready(self, timeout: float = 120.0) -> None:
        # Generous: the node imports torch, Open3D and scipy, which takes tens of seconds on a
        # loaded 2-core machine.
        deadline = time.monotonic() + timeout
        for client in (self.capture, self.reconstruct, self.reset):
            if not client.wait_for_service(timeout_sec=max(deadline - time.monotonic(), 0.1)):
                raise DemoError(f"service {client.srv_name} did not appear in {timeout:.0f} s")
        if not self.action.wait_for_server(timeout_sec=max(deadline - time.monotonic(), 0.1)):
            raise DemoError("reconstruct action server did not appear")

    def call(
        self,
        client: Any,
        request: Any,
        timeout: float = 60.0,
        give_up: Callable[[], bool] | None = None,
    ) -> Any:
        """The answer; DemoError after ``timeout`` or as soon as ``give_up()`` is true
        (checked 4 times a second: e.g. the server's process has exited)."""
        future = client.call_async(request)
        deadline = time.monotonic() + timeout
        gave_up = False
        while not future.done():
            left = deadline - time.monotonic()
            gave_up = give_up is not None and give_up()
            if left <= 0 or gave_up:
                break
            slice_s = left if give_up is None else min(left, 0.25)
            self._rclpy.spin_until_future_complete(self.node, future, timeout_sec=slice_s)
        if not future.done():
            client.remove_pending_request(future)  # a late answer is dropped, not kept
            why = "given up (server gone)" if gave_up else f"no answer in {timeout:.0f} s"
            raise DemoError(f"{client.srv_name}: {why}")
        return future.result()

    def capture_frame(self, note: str = "") -> Any:
        request = self.capture.srv_type.Request()
        request.note = note
        return self.call(self.capture, request)

    def run_action(
        self,
        on_feedback: Any = None,
        cancel_after: float | None = None,
        timeout: float = 300.0,
        backend: str = "",
    ) -> tuple[Any, int]:
        """Send a reconstruct goal; returns (result, GoalStatus code)."""
        goal = self.action_type.Goal()
        goal.backend = backend
        goal.seed = -1
        send = self.action.send_goal_async(goal, feedback_callback=on_feedback)
        self._rclpy.spin_until_future_complete(self.node, send, timeout_sec=30.0)
        handle = send.result()
        if handle is None or not handle.accepted:
            raise DemoError("reconstruct goal was not accepted")
        result_future = handle.get_result_async()
        t0 = time.monotonic()
        cancelled = False
        while not result_future.done():
            self._rclpy.spin_once(self.node, timeout_sec=0.05)
            if cancel_after is not None and not cancelled and time.monotonic() - t0 > cancel_after:
                handle.cancel_goal_async()
                cancelled = True
            if time.monotonic() - t0 > timeout:
                raise DemoError(f"reconstruction did not finish in {timeout:.0f} s")
        response = result_future.result()
        return response.result, response.status

    def wait_for_topics(
        self, names: tuple[str, ...] = ("cloud", "mesh"), timeout: float = 10.0
    ) -> None:
        deadline = time.monotonic() + timeout
        while not all(n in self.received for n in names):
            if time.monotonic() > deadline:
                missing = [n for n in names if n not in self.received]
                raise DemoError(f"no message on {missing} within {timeout:.0f} s")
            self._rclpy.spin_once(self.node, timeout_sec=0.05)

    def close(self) -> None:
        self.action.destroy()
        self.node.destroy_node()


def _scores(vertices: np.ndarray, triangles: np.ndarray, gt: Any) -> dict[str, float]:
    from rvg_ros.core.metrics import mesh_metrics

    metrics = mesh_metrics((vertices, triangles), gt, radii=(0.005, 0.01))
    return {
        "chamfer_l2_m2": metrics.chamfer_l2,
        "accuracy_mm": 1000 * metrics.accuracy,
        "f_score_5mm": metrics.fscore[0.005],
        "f_score_10mm": metrics.fscore[0.01],
        "completeness_5mm": metrics.completeness,
    }


def run_baseline(session_dir: Path, out_dir: Path, backend: str, gt: Any) -> dict[str, Any]:
    """The same captured session reconstructed offline by another backend (the ROS-free core)."""
    from rvg_ros.core.pipeline import ReconstructSettings, reconstruct_folder

    result = reconstruct_folder(session_dir, out_dir, ReconstructSettings(backend=backend))
    return {
        "backend": backend,
        "seconds": float(sum(result.stage_seconds.values())),
        **_scores(result.mesh.vertices, result.mesh.triangles, gt),
    }


_ROWS = (
    ("F-score @ 5 mm", "f_score_5mm", "{:.3f}"),
    ("F-score @ 10 mm", "f_score_10mm", "{:.3f}"),
    ("completeness @5mm", "completeness_5mm", "{:.3f}"),
    ("accuracy (mm)", "accuracy_mm", "{:.2f}"),
    ("chamfer L2 (m^2)", "chamfer_l2_m2", "{:.2e}"),
)


def run_demo(
    out_dir: Path,
    views: int = 4,
    backend: str = "rvg",
    orbit_speed_deg: float = 40.0,
    arc_deg: float = 120.0,
    baseline: str | None = "fusion",
) -> int:
    import rclpy

    from rvg_ros.ros.point_cloud2 import point_cloud2_to_cloud
    from rvg_ros.sim.objects import demo_object

    out_dir = Path(out_dir).resolve()
    session_dir = out_dir / "session"
    shutil.rmtree(session_dir, ignore_errors=True)
    env = isolated_ros_env()
    params = share_file("config/reconstruct.yaml")
    node_args = ["--params-file", str(params)] if params else []
    node_args += [
        "-p",
        f"session_dir:={session_dir}",
        "-p",
        f"output_dir:={out_dir}",
        "-p",
        f"backend:={backend}",
    ]
    print(f"rvg_ros demo: DDS domain {env['ROS_DOMAIN_ID']}, output in {out_dir}")
    t_start = time.monotonic()
    procs = [
        start_process(
            "rvg_ros.ros.reconstruct_node", node_args, env, out_dir / "logs" / "node.log"
        ),
        start_process(
            "rvg_ros.sim.camera_node",
            ["-p", f"orbit_speed_deg:={orbit_speed_deg}"],
            env,
            out_dir / "logs" / "sim_camera.log",
        ),
    ]
    # The client runs in this process: give it the same private domain.
    import os

    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
    if "FASTDDS_DEFAULT_PROFILES_FILE" in env:
        os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = env["FASTDDS_DEFAULT_PROFILES_FILE"]
    rclpy.init()
    client = DemoClient()
    try:
        client.wait_ready()
        # Seconds between captures: ``views`` evenly over ``arc_deg`` of the orbit.
        step = min(arc_deg, 360.0 - 360.0 / views) / max(views - 1, 1) / orbit_speed_deg
        captured = 0
        deadline = time.monotonic() + views * step + 30.0
        while captured < views and time.monotonic() < deadline:
            response = client.capture_frame(f"demo view {captured}")
            if response.accepted:
                captured += 1
                print(f"  captured frame {response.frame_index} ({response.num_frames} held)")
                time.sleep(step)
            else:
                print(f"  capture rejected: {response.reason}")
                time.sleep(0.3)
        if captured < views:
            raise DemoError(f"only {captured} of {views} frames captured")

        last_stage = [""]

        def on_feedback(msg: Any) -> None:
            fb = msg.feedback
            if fb.stage != last_stage[0]:
                last_stage[0] = fb.stage
                print(f"  [{fb.elapsed:5.2f} s] {fb.stage:<10} {100 * fb.progress:5.1f} %")

        result, _status = client.run_action(on_feedback)
        if not result.success:
            raise DemoError(result.message)
        client.wait_for_topics()
        rec = result.reconstruction
        cloud = point_cloud2_to_cloud(client.received["cloud"])
        gt = demo_object().mesh
        vertices = np.array([[p.x, p.y, p.z] for p in rec.mesh.vertices])
        triangles = np.array([t.vertex_indices for t in rec.mesh.triangles], dtype=np.int64)
        summary = {
            "backend": rec.backend,
            "views": int(rec.num_views),
            "stages": dict(
                zip(rec.stage_names, (round(float(s), 3) for s in rec.stage_seconds), strict=True)
            ),
            "points": len(cloud.points),
            "mesh_marker_triangles": len(client.received["mesh"].points) // 3,
            **_scores(vertices, triangles, gt),
            "files": list(rec.file_paths),
            "wall_seconds": time.monotonic() - t_start,
        }
        if baseline and baseline != rec.backend:
            print(f"  baseline: {baseline} on the same session, offline")
            summary["baseline"] = run_baseline(session_dir, out_dir / baseline, baseline, gt)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        print("\nrvg_ros demo summary")
        print(f"  backend            {summary['backend']}")
        print(f"  views              {summary['views']}")
        for stage, seconds in summary["stages"].items():
            print(f"  time {stage:<13} {seconds:.3f} s")
        print(f"  points             {summary['points']} (PointCloud2 on /{NODE_NAME}/cloud)")
        print(f"  files              {Path(summary['files'][0]).parent}")
        base = summary.get("baseline")
        header = f"  {'vs. ground truth':<19}{summary['backend']:>10}"
        print(header + (f"{base['backend']:>10}" if base else ""))
        for label, key, fmt in _ROWS:
            line = f"  {label:<19}{fmt.format(summary[key]):>10}"
            print(line + (f"{fmt.format(base[key]):>10}" if base else ""))
        print(f"  total wall time    {summary['wall_seconds']:.1f} s")
        return 0
    except DemoError as exc:
        print(f"rvg_ros demo failed: {exc} (logs in {out_dir / 'logs'})", file=sys.stderr)
        return 1
    finally:
        client.close()
        rclpy.try_shutdown()
        for proc in procs:
            stop_process(proc)
