"""Bad input reaching a real node process: every rejection says why, the node stays up."""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from rvg_ros.core.render import MeshRenderer  # noqa: E402
from rvg_ros.ros.camera_info import intrinsics_to_camera_info  # noqa: E402
from rvg_ros.ros.demo import DemoClient, start_process, stop_process  # noqa: E402
from rvg_ros.ros.environment import PACKAGE_ROOT, isolated_ros_env  # noqa: E402
from rvg_ros.ros.image import depth_to_image, rgb_to_image  # noqa: E402
from rvg_ros.ros.tf import make_transform_stamped  # noqa: E402
from rvg_ros.sim.objects import demo_object  # noqa: E402
from rvg_ros.sim.views import default_intrinsics, look_at  # noqa: E402

PARAMS = str(PACKAGE_ROOT / "config" / "reconstruct.yaml")


class FramePublisher:
    """Publishes one chosen (colour, depth, info, tf) set at 20 Hz from the test process."""

    def __init__(self) -> None:
        from tf2_msgs.msg import TFMessage

        self.node = rclpy.create_node("rejection_test_publisher")
        self.colour = self.node.create_publisher(
            Image, "/camera/color/image_raw", qos_profile_sensor_data
        )
        self.depth = self.node.create_publisher(
            Image, "/camera/aligned_depth_to_color/image_raw", qos_profile_sensor_data
        )
        self.info = self.node.create_publisher(
            CameraInfo, "/camera/color/camera_info", qos_profile_sensor_data
        )
        self.tf = self.node.create_publisher(TFMessage, "/tf", 100)
        self.tf_type = TFMessage
        k = default_intrinsics(128, 128)
        pose = look_at([0.3, 0.0, 0.15], [0.0, 0.0, 0.05])
        view = MeshRenderer(demo_object().mesh).render(k, pose)
        self.good = {
            "rgb": view.rgb,
            "depth": view.depth,
            "k": k,
            "pose": pose,
            "tf": True,
            "encoding": "rgb8",
        }
        self.current = dict(self.good)
        self.node.create_timer(0.05, self._tick)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def set(self, **changes: object) -> None:
        self.current = {**self.good, **changes}
        time.sleep(0.4)  # let a few matched sets reach the node

    def _tick(self) -> None:
        c = self.current
        header = Header(
            frame_id="camera_color_optical_frame", stamp=self.node.get_clock().now().to_msg()
        )
        if c["tf"]:
            tf = make_transform_stamped(
                "world", "camera_color_optical_frame", c["pose"], header.stamp
            )
            self.tf.publish(self.tf_type(transforms=[tf]))
        self.info.publish(intrinsics_to_camera_info(c["k"], header))
        self.depth.publish(depth_to_image(c["depth"], "16UC1", header))
        if c["encoding"] == "rgb8":
            self.colour.publish(rgb_to_image(c["rgb"], "rgb8", header))
        else:
            msg = rgb_to_image(c["rgb"], "rgb8", header)
            msg.encoding = c["encoding"]
            self.colour.publish(msg)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DemoClient, FramePublisher]]:
    env = isolated_ros_env(random.randint(1, 200))
    saved = dict(os.environ)
    os.environ.update(env)
    rclpy.init()
    root = tmp_path_factory.mktemp("rejections")
    node = start_process(
        "rvg_ros.ros.reconstruct_node",
        [
            "--params-file",
            PARAMS,
            "-p",
            f"session_dir:={root / 'session'}",
            "-p",
            "tf_timeout:=0.2",
        ],
        env,
        root / "node.log",
    )
    client = DemoClient()
    publisher = FramePublisher()
    try:
        client.wait_ready(timeout=60.0)
        yield client, publisher
    finally:
        publisher.close()
        client.close()
        stop_process(node)
        rclpy.try_shutdown()
        os.environ.clear()
        os.environ.update(saved)
        print((root / "node.log").read_text()[-2000:])


def _capture_until_answer(
    client: DemoClient, expect_accepted: bool, timeout: float = 15.0, reason: str = ""
):
    """Discovery and first matches take a moment, and the previous case's frame stays the
    latest until it is max_frame_age old: retry until the expected answer. A bad frame must
    never be accepted meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.capture_frame()
        if not expect_accepted:
            assert not response.accepted, "a bad frame was accepted"
        done = response.accepted == expect_accepted and "no frame yet" not in response.reason
        if done and reason in response.reason:
            return response
        if time.monotonic() > deadline:
            return response
        time.sleep(0.2)


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"tf": False}, "no pose"),
        ({"rgb": np.full((128, 128, 3), 128, np.uint8)}, "blurred"),
        ({"depth": np.zeros((128, 128), np.float32)}, "no valid depth"),
        ({"depth": np.full((128, 128), np.nan, np.float32)}, "no valid depth"),
        ({"rgb": np.zeros((64, 128, 3), np.uint8)}, "size mismatch"),
        ({"encoding": "yuv422_weird"}, "bad message"),
    ],
)
def test_bad_frames_are_rejected_with_reason(rig, changes: dict, reason: str) -> None:
    client, publisher = rig
    publisher.set(**changes)
    response = _capture_until_answer(client, expect_accepted=False, reason=reason)
    assert not response.accepted, "a bad frame was accepted"
    assert reason in response.reason, response.reason
    assert response.frame_index == -1


def test_good_frame_still_accepted_after_bad_ones(rig) -> None:
    client, publisher = rig
    publisher.set()
    response = _capture_until_answer(client, expect_accepted=True)
    assert response.accepted, response.reason
    assert response.num_frames == 1
