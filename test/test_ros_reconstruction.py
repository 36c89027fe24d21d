"""Reconstruction -> rvg_ros/msg/Reconstruction and back."""

from __future__ import annotations

import array

import numpy as np
import pytest
from geometry_msgs.msg import Pose, Vector3
from sensor_msgs.msg import PointCloud2
from shape_msgs.msg import Mesh as MeshMsg
from std_msgs.msg import Header

import rvg_ros.ros.reconstruction as conversion
from rvg_ros.core.types import Mesh, PointCloud, Reconstruction


def _reconstruction() -> Reconstruction:
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 2, 0], [0, 0, 3]], dtype=np.float64)
    triangles = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], dtype=np.int32)
    colors = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], dtype=np.float32)
    mesh = Mesh(vertices, triangles, colors, np.array([1, 0.5, 0.25, 0], np.float32))
    cloud = PointCloud(vertices.copy(), colors.copy(), mesh.vertex_confidence.copy())
    return Reconstruction(
        mesh=mesh,
        cloud=cloud,
        backend="fusion",
        num_views=8,
        metric_scale=True,
        frame_id="table",
        stage_seconds={"integrate": 0.5, "extract": 0.25},
        files={"mesh.ply": "/tmp/out/mesh.ply", "result.json": "/tmp/out/result.json"},
    )


class _StandInMessage:
    """Same fields as msg/Reconstruction.msg, for testing before the interfaces are built."""

    def __init__(self) -> None:
        self.header = Header()
        self.mesh = MeshMsg()
        self.vertex_colors: list = []
        self.vertex_confidence = array.array("f")
        self.cloud = PointCloud2()
        self.object_pose = Pose()
        self.bounding_box_size = Vector3()
        self.metric_scale = False
        self.backend = ""
        self.num_views = 0
        self.stage_names: list = []
        self.stage_seconds: list = []
        self.file_paths: list = []


@pytest.fixture(params=["generated", "stand-in"])
def message_class(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.param == "generated":
        # rvg_ros.msg comes from the interface build; skip until it exists here.
        pytest.importorskip("rvg_ros.msg")
    else:
        monkeypatch.setattr(conversion, "_message_class", lambda: _StandInMessage)


def test_reconstruction_message_round_trip(message_class: None) -> None:
    recon = _reconstruction()
    msg = conversion.reconstruction_to_msg(recon)
    assert msg.header.frame_id == "table" and msg.cloud.header.frame_id == "table"
    assert len(msg.mesh.vertices) == 4 and len(msg.mesh.triangles) == 4
    assert len(msg.vertex_colors) == 4 and msg.vertex_colors[3].a == 1.0
    assert list(msg.vertex_confidence) == [1.0, 0.5, 0.25, 0.0]
    assert msg.cloud.width == 4 and msg.cloud.point_step == 20
    p = msg.object_pose
    assert (p.position.x, p.position.y, p.position.z) == (0.5, 1.0, 1.5)
    assert (p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w) == (0, 0, 0, 1)
    s = msg.bounding_box_size
    assert (s.x, s.y, s.z) == (1.0, 2.0, 3.0)
    assert msg.metric_scale and msg.backend == "fusion" and msg.num_views == 8
    assert list(msg.stage_names) == ["integrate", "extract"]
    np.testing.assert_allclose(list(msg.stage_seconds), [0.5, 0.25])
    assert list(msg.file_paths) == ["/tmp/out/mesh.ply", "/tmp/out/result.json"]

    if not isinstance(msg, _StandInMessage):
        # The real message must also survive serialisation (what a subscriber receives).
        from rclpy.serialization import deserialize_message, serialize_message

        msg = deserialize_message(serialize_message(msg), type(msg))
    back = conversion.msg_to_reconstruction(msg)
    np.testing.assert_array_equal(back.mesh.vertices, recon.mesh.vertices)
    np.testing.assert_array_equal(back.mesh.triangles, recon.mesh.triangles)
    np.testing.assert_allclose(back.mesh.vertex_colors, recon.mesh.vertex_colors)
    np.testing.assert_allclose(back.mesh.vertex_confidence, recon.mesh.vertex_confidence)
    np.testing.assert_allclose(back.cloud.points, recon.cloud.points)
    assert back.files == recon.files and back.stage_seconds == recon.stage_seconds
    assert (back.backend, back.num_views, back.metric_scale) == ("fusion", 8, True)
    assert back.frame_id == "table"


def test_stamp_and_frame_override(message_class: None) -> None:
    from builtin_interfaces.msg import Time

    msg = conversion.reconstruction_to_msg(
        _reconstruction(), stamp=Time(sec=12, nanosec=5), frame_id="world"
    )
    assert msg.header.frame_id == "world" and msg.header.stamp.sec == 12
    assert msg.cloud.header.stamp.nanosec == 5


def test_empty_reconstruction(message_class: None) -> None:
    empty = Reconstruction(
        mesh=Mesh(np.zeros((0, 3)), np.zeros((0, 3), np.int32), np.zeros((0, 3)), np.zeros(0)),
        cloud=PointCloud(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0)),
        backend="hull",
        num_views=0,
        metric_scale=False,
    )
    msg = conversion.reconstruction_to_msg(empty)
    assert not msg.mesh.vertices and msg.cloud.width == 0
    assert (msg.bounding_box_size.x, msg.object_pose.orientation.w) == (0.0, 1.0)
    back = conversion.msg_to_reconstruction(msg)
    assert back.mesh.is_empty and len(back.cloud.points) == 0


def test_bad_reconstruction_is_a_value_error(message_class: None) -> None:
    recon = _reconstruction()
    recon.mesh.vertex_confidence = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="confidence"):
        conversion.reconstruction_to_msg(recon)
    recon = _reconstruction()
    recon.mesh.triangles[0, 0] = 99
    with pytest.raises(ValueError, match="indices"):
        conversion.reconstruction_to_msg(recon)


def test_missing_interfaces_is_a_clear_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "rvg_ros.msg", None)  # makes the import fail
    with pytest.raises(ImportError, match="build the package's interfaces"):
        conversion.reconstruction_to_msg(_reconstruction())
