"""A misbehaving driver: floods the camera topics with malformed messages, as fast as it can.

Every message is one a broken or hostile publisher could send and the node must refuse:
wrong ``step``, data shorter than ``height * step``, unknown or mismatched encodings, zero
and 4-gigapixel sizes, big-endian depth with an odd step, CameraInfo with zero / NaN /
negative focal lengths. Stamps are "now", so they compete with the good camera's messages.

    python -m rvg_ros.sim.hostile_publisher --ros-args -p duration:=20.0
"""

from __future__ import annotations

import array
import sys
import time
from collections.abc import Callable
from typing import Any

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

PARAMETERS: tuple[tuple[str, Any, str], ...] = (
    ("color_topic", "/camera/color/image_raw", "Colour topic to flood."),
    ("depth_topic", "/camera/aligned_depth_to_color/image_raw", "Depth topic to flood."),
    ("camera_info_topic", "/camera/color/camera_info", "CameraInfo topic to flood."),
    ("duration", 10.0, "Seconds to flood for, then exit."),
    ("frame_id", "camera_color_optical_frame", "frame_id of the malformed messages."),
)


def _image(header: Header, **fields: Any) -> Image:
    msg = Image(header=header)
    data = fields.pop("data", b"")
    for key, value in fields.items():
        setattr(msg, key, value)
    msg.data = array.array("B", data)
    return msg


def _info(header: Header, fx: float, fy: float, width: int = 256, height: int = 256) -> CameraInfo:
    return CameraInfo(
        header=header, width=width, height=height, k=[fx, 0.0, 127.5, 0.0, fy, 127.5, 0, 0, 1]
    )


# (topic kind, name, factory(header) -> message)
MALFORMED: tuple[tuple[str, str, Callable[[Header], Any]], ...] = (
    (
        "colour",
        "step too small",
        lambda h: _image(h, height=4, width=4, encoding="rgb8", step=5, data=bytes(48)),
    ),
    (
        "colour",
        "data too short",
        lambda h: _image(h, height=480, width=640, encoding="rgb8", step=1920, data=bytes(1000)),
    ),
    (
        "colour",
        "unknown encoding",
        lambda h: _image(h, height=2, width=2, encoding="yuv422_weird", step=4, data=bytes(8)),
    ),
    ("colour", "zero size", lambda h: _image(h, height=0, width=0, encoding="rgb8", step=0)),
    (
        "colour",
        "4 gigapixel",
        lambda h: _image(
            h, height=65536, width=65536, encoding="rgb8", step=196608, data=bytes(64)
        ),
    ),
    (
        "colour",
        "depth encoding",
        lambda h: _image(h, height=2, width=2, encoding="32FC1", step=8, data=bytes(16)),
    ),
    (
        "colour",
        "big image, short rows",
        lambda h: _image(
            h, height=480, width=640, encoding="bgr8", step=1000, data=bytes(480 * 1000)
        ),
    ),
    (
        "depth",
        "big-endian odd step",
        lambda h: _image(
            h, height=3, width=3, encoding="16UC1", is_bigendian=1, step=5, data=bytes(15)
        ),
    ),
    (
        "depth",
        "colour encoding",
        lambda h: _image(h, height=2, width=2, encoding="rgb8", step=6, data=bytes(12)),
    ),
    ("camera_info", "zero K", lambda h: _info(h, 0.0, 0.0)),
    ("camera_info", "NaN focal", lambda h: _info(h, float("nan"), 200.0)),
    ("camera_info", "negative focal", lambda h: _info(h, -200.0, 200.0)),
    ("camera_info", "zero size", lambda h: _info(h, 200.0, 200.0, 0, 0)),
)


class HostilePublisher(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("rvg_hostile_publisher", **kwargs)
        for name, default, description in PARAMETERS:
            self.declare_parameter(name, default, ParameterDescriptor(description=description))
        p = lambda n: self.get_parameter(n).value  # noqa: E731
        self.pubs = {
            "colour": self.create_publisher(Image, p("color_topic"), qos_profile_sensor_data),
            "depth": self.create_publisher(Image, p("depth_topic"), qos_profile_sensor_data),
            "camera_info": self.create_publisher(
                CameraInfo, p("camera_info_topic"), qos_profile_sensor_data
            ),
        }
        self.duration = float(p("duration"))
        self.frame_id = str(p("frame_id"))
        self.sent = 0

    def flood(self) -> float:
        """Publish round-robin until ``duration`` is over; returns the seconds it ran."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.duration:
            header = Header(frame_id=self.frame_id, stamp=self.get_clock().now().to_msg())
            for kind, _, make in MALFORMED:
                self.pubs[kind].publish(make(header))
                self.sent += 1
        return time.monotonic() - t0


def main(argv: list[str] | None = None) -> int:
    rclpy.init(args=argv if argv is not None else sys.argv)
    node = HostilePublisher()
    time.sleep(1.0)  # discovery, so the first messages are not lost to nobody
    seconds = node.flood()
    print(
        f"hostile publisher: sent {node.sent} malformed messages in {seconds:.1f} s "
        f"({node.sent / seconds:.0f}/s)",
        flush=True,
    )
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


__all__ = ["MALFORMED", "HostilePublisher", "main"]


if __name__ == "__main__":
    sys.exit(main())
