"""A simulated RGB-D camera orbiting an object: colour, depth, camera info and TF.

Publishes what a real driver + robot publish (``sensor_msgs/Image`` colour and 16UC1 depth
registered to it, ``CameraInfo``, and the camera's optical frame on ``/tf``, all with the same
stamp), so the reconstruct node cannot tell it from hardware. Rendering uses the same Open3D
ray-casting renderer as the evaluation harness.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from rvg_ros.core.render import MeshRenderer
from rvg_ros.ros.camera_info import intrinsics_to_camera_info
from rvg_ros.ros.image import depth_to_image, rgb_to_image
from rvg_ros.ros.tf import make_transform_stamped
from rvg_ros.sim.objects import SimObject, demo_object, load_mesh_object, make_object
from rvg_ros.sim.views import default_intrinsics, fit_radius, look_at, spherical_eye

PARAMETERS: tuple[tuple[str, Any, str], ...] = (
    ("object", "demo", "'demo', 'FAMILY:SEED' (procedural, e.g. mug:3) or a PLY/OBJ/STL path."),
    ("world_frame", "world", "Frame the object rests in (z up, object on z = 0)."),
    ("camera_frame", "camera_color_optical_frame", "Optical frame id of the images."),
    ("color_topic", "/camera/color/image_raw", "Colour topic (rgb8)."),
    ("depth_topic", "/camera/aligned_depth_to_color/image_raw", "Depth topic; empty = no depth."),
    ("camera_info_topic", "/camera/color/camera_info", "CameraInfo topic."),
    ("depth_encoding", "16UC1", "16UC1 (millimetres) or 32FC1 (metres)."),
    ("rate", 10.0, "Frames per second."),
    ("width", 256, "Image width in pixels."),
    ("height", 256, "Image height in pixels."),
    ("fov_deg", 50.0, "Horizontal field of view."),
    ("elevation_deg", 30.0, "Orbit elevation above the object's centre."),
    ("orbit_speed_deg", 30.0, "Orbit angular speed (degrees per second)."),
    ("radius", 0.0, "Orbit radius in metres; 0 = fit the object to ~60 % of the image."),
)


def load_sim_object(spec: str) -> SimObject:
    """'demo', 'FAMILY:SEED' or a mesh path."""
    if spec == "demo":
        return demo_object()
    if ":" in spec and not spec.lower().endswith((".ply", ".obj", ".stl")):
        family, seed = spec.split(":", 1)
        return make_object(family, int(seed))
    return load_mesh_object(spec)


class SimCameraNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("rvg_sim_camera", **kwargs)
        for name, default, description in PARAMETERS:
            self.declare_parameter(name, default, ParameterDescriptor(description=description))
        p = self.p
        self.object = load_sim_object(p("object"))
        self.renderer = MeshRenderer(self.object.mesh)
        self.intrinsics = default_intrinsics(int(p("width")), int(p("height")), float(p("fov_deg")))
        lo, hi = self.object.bounds
        self.centre = (lo + hi) / 2.0
        extent = float(np.linalg.norm(hi - lo))
        self.radius = float(p("radius")) or fit_radius(extent, self.intrinsics)

        from tf2_msgs.msg import TFMessage

        self._tf_type = TFMessage
        # Sensor-data QoS, as camera drivers use: best effort, keep last few.
        self.color_pub = self.create_publisher(Image, p("color_topic"), qos_profile_sensor_data)
        self.info_pub = self.create_publisher(
            CameraInfo, p("camera_info_topic"), qos_profile_sensor_data
        )
        self.depth_pub = (
            self.create_publisher(Image, p("depth_topic"), qos_profile_sensor_data)
            if p("depth_topic")
            else None
        )
        self.tf_pub = self.create_publisher(TFMessage, "/tf", 100)
        self._t0 = self.get_clock().now()
        self.create_timer(1.0 / float(p("rate")), self._tick)
        self.get_logger().info(
            f"simulating {self.object.name} ({extent * 100:.1f} cm), orbit radius "
            f"{self.radius:.3f} m at {p('orbit_speed_deg')} deg/s"
        )

    def p(self, name: str) -> Any:
        return self.get_parameter(name).value

    def pose_at(self, seconds: float) -> np.ndarray:
        """Camera-to-world (OpenCV / optical frame convention) at time ``seconds``."""
        azimuth = float(self.p("orbit_speed_deg")) * seconds
        eye = spherical_eye(self.radius, azimuth, float(self.p("elevation_deg")), self.centre)
        return look_at(eye, self.centre)

    def _tick(self) -> None:
        now = self.get_clock().now()
        seconds = (now - self._t0).nanoseconds * 1e-9
        pose = self.pose_at(seconds)
        view = self.renderer.render(self.intrinsics, pose)
        header = Header(frame_id=self.p("camera_frame"), stamp=now.to_msg())
        # TF first, so the pose is in the receiver's buffer when the image arrives.
        tf = make_transform_stamped(
            self.p("world_frame"), self.p("camera_frame"), pose, header.stamp
        )
        self.tf_pub.publish(self._tf_type(transforms=[tf]))
        self.info_pub.publish(intrinsics_to_camera_info(self.intrinsics, header))
        if self.depth_pub is not None:
            self.depth_pub.publish(depth_to_image(view.depth, self.p("depth_encoding"), header))
        self.color_pub.publish(rgb_to_image(view.rgb, "rgb8", header))


def main(argv: list[str] | None = None) -> int:
    rclpy.init(args=argv if argv is not None else sys.argv)
    node = SimCameraNode()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


__all__ = ["SimCameraNode", "load_sim_object", "main"]


if __name__ == "__main__":
    sys.exit(main())
