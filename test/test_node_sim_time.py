"""Bag replay / simulation time: TF gaps and clock jumps (back, as when a bag loops, and
forward) never crash the node; captures in a gap are rejected with the reason, and capture
works again once TF is back."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")

from builtin_interfaces.msg import Time  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from rvg_ros.core.render import MeshRenderer  # noqa: E402
from rvg_ros.core.session import CaptureSession  # noqa: E402
from rvg_ros.reliability.system import rig  # noqa: E402
from rvg_ros.ros.camera_info import intrinsics_to_camera_info  # noqa: E402
from rvg_ros.ros.image import depth_to_image, rgb_to_image  # noqa: E402
from rvg_ros.ros.tf import make_transform_stamped  # noqa: E402
from rvg_ros.sim.objects import demo_object  # noqa: E402
from rvg_ros.sim.views import default_intrinsics, look_at  # noqa: E402


class BagPlayer:
    """Publishes /clock, /tf and a camera at 20 Hz of simulated time, like `ros2 bag play
    --clock`; ``now`` can jump and TF can be switched off."""

    def __init__(self, start: float) -> None:
        from tf2_msgs.msg import TFMessage

        self.node = rclpy.create_node("bag_player")
        self.clock = self.node.create_publisher(Clock, "/clock", 10)
        self.tf = self.node.create_publisher(TFMessage, "/tf", 100)
        self.colour = self.node.create_publisher(
            Image, "/camera/color/image_raw", qos_profile_sensor_data
        )
        self.depth = self.node.create_publisher(
            Image, "/camera/aligned_depth_to_color/image_raw", qos_profile_sensor_data
        )
        self.info = self.node.create_publisher(
            CameraInfo, "/camera/color/camera_info", qos_profile_sensor_data
        )
        self.tf_type = TFMessage
        self.k = default_intrinsics(128, 128)
        self.pose = look_at([0.3, 0.0, 0.15], [0.0, 0.0, 0.05])
        self.view = MeshRenderer(demo_object().mesh).render(self.k, self.pose)
        self.now, self.with_tf = start, True
        self.node.create_timer(0.05, self._tick)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        threading.Thread(target=self.executor.spin, daemon=True).start()

    def _tick(self) -> None:
        self.now += 0.05
        stamp = Time(sec=int(self.now), nanosec=int((self.now % 1) * 1e9))
        self.clock.publish(Clock(clock=stamp))
        header = Header(frame_id="camera_color_optical_frame", stamp=stamp)
        if self.with_tf:
            tf = make_transform_stamped("world", header.frame_id, self.pose, stamp)
            self.tf.publish(self.tf_type(transforms=[tf]))
        self.info.publish(intrinsics_to_camera_info(self.k, header))
        self.depth.publish(depth_to_image(self.view.depth, "16UC1", header))
        self.colour.publish(rgb_to_image(self.view.rgb, "rgb8", header))

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


@pytest.mark.timeout(300)
def test_tf_gaps_and_clock_jumps(tmp_path: Path) -> None:
    with rig(tmp_path, "use_sim_time:=true", "tf_timeout:=0.2", camera=None) as r:
        player = BagPlayer(start=1000.0)
        try:
            answers: list[tuple[str, bool, str]] = []

            def capture(phase: str, expect: bool, timeout: float = 20.0) -> None:
                deadline = time.monotonic() + timeout
                while True:
                    response = r.client.capture_frame(phase)
                    answers.append((phase, response.accepted, response.reason))
                    if response.accepted == expect and "no frame yet" not in response.reason:
                        return
                    assert time.monotonic() < deadline, answers[-3:]
                    time.sleep(0.2)

            capture("normal", True, timeout=60.0)
            player.with_tf = False  # a TF gap: the driver's TF stops, images go on
            time.sleep(1.0)
            capture("tf gap", False)
            assert "no pose" in answers[-1][2], answers[-1]
            player.with_tf = True
            capture("tf back", True)
            player.now = 10.0  # the bag loops: time jumps back by ~1000 s
            time.sleep(1.0)
            capture("jumped back", True)
            player.now += 3600.0  # and forward by an hour
            time.sleep(1.0)
            capture("jumped forward", True)
            assert r.node.poll() is None, "the node died"
            print(answers)
            for _, accepted, reason in answers:
                assert accepted or reason  # every rejection says why
            stamps = [f.stamp for f in CaptureSession(tmp_path / "session").frames()]
            # Frames carry the simulated stamps: before, after the jump back, after the jump on.
            assert stamps[0] > 1000 and 10 < stamps[2] < 100 and stamps[3] > 3600, stamps
        finally:
            player.close()
