"""Mesh -> Marker / shape_msgs, camera frusta -> MarkerArray."""

from __future__ import annotations

import numpy as np
import pytest
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from rvg_ros.core.types import Frame, Intrinsics, Mesh
from rvg_ros.ros.marker import (
    camera_frusta_to_marker_array,
    frustum_lines,
    mesh_to_marker,
    mesh_to_shape_msg,
    shape_msg_to_mesh,
)


def _tetrahedron() -> Mesh:
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float64)
    triangles = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], dtype=np.int32)
    colors = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], dtype=np.float32)
    return Mesh(vertices, triangles, colors, np.array([1, 0.5, 0.25, 0], np.float32))


def _xyz(points: list) -> np.ndarray:
    return np.array([(p.x, p.y, p.z) for p in points])


def test_mesh_marker_expands_triangles_with_vertex_colours() -> None:
    mesh = _tetrahedron()
    marker = mesh_to_marker(mesh, Header(frame_id="world"), ns="recon", marker_id=3, alpha=0.5)
    assert marker.type == Marker.TRIANGLE_LIST and marker.action == Marker.ADD
    assert (marker.ns, marker.id, marker.header.frame_id) == ("recon", 3, "world")
    assert marker.pose.orientation.w == 1.0 and marker.scale.x == 1.0
    assert len(marker.points) == len(marker.colors) == 12
    np.testing.assert_array_equal(_xyz(marker.points), mesh.vertices[mesh.triangles.reshape(-1)])
    colors = np.array([(c.r, c.g, c.b, c.a) for c in marker.colors])
    np.testing.assert_allclose(colors[:, :3], mesh.vertex_colors[mesh.triangles.reshape(-1)])
    assert np.all(colors[:, 3] == 0.5)


def test_empty_mesh_marker_deletes() -> None:
    empty = Mesh(np.zeros((0, 3)), np.zeros((0, 3), np.int32), np.zeros((0, 3)), np.zeros(0))
    marker = mesh_to_marker(empty)
    assert marker.action == Marker.DELETE and not marker.points
    shape = mesh_to_shape_msg(empty)
    assert not shape.vertices and not shape.triangles


def test_mesh_without_colours_is_grey() -> None:
    mesh = _tetrahedron()
    mesh.vertex_colors = np.zeros((0, 3), np.float32)
    marker = mesh_to_marker(mesh)
    assert {(c.r, c.g, c.b) for c in marker.colors} == {(0.7, 0.7, 0.7)}


def test_bad_meshes_rejected() -> None:
    mesh = _tetrahedron()
    mesh.triangles = np.array([[0, 1, 4]], np.int32)
    with pytest.raises(ValueError, match="indices"):
        mesh_to_marker(mesh)
    mesh = _tetrahedron()
    mesh.vertices[2, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        mesh_to_shape_msg(mesh)
    mesh = _tetrahedron()
    mesh.vertex_colors = np.ones((2, 3))
    with pytest.raises(ValueError, match="colours"):
        mesh_to_marker(mesh)
    mesh = _tetrahedron()
    mesh.triangles = mesh.triangles.astype(np.float32)
    with pytest.raises(ValueError, match="integer"):
        mesh_to_marker(mesh)


def test_shape_msg_round_trip() -> None:
    mesh = _tetrahedron()
    msg = mesh_to_shape_msg(mesh)
    assert len(msg.vertices) == 4 and len(msg.triangles) == 4
    assert list(msg.triangles[0].vertex_indices) == [0, 2, 1]
    back = shape_msg_to_mesh(msg, mesh.vertex_colors, mesh.vertex_confidence)
    np.testing.assert_array_equal(back.vertices, mesh.vertices)
    np.testing.assert_array_equal(back.triangles, mesh.triangles)
    np.testing.assert_array_equal(back.vertex_colors, mesh.vertex_colors)
    np.testing.assert_array_equal(back.vertex_confidence, mesh.vertex_confidence)


def test_frustum_geometry() -> None:
    intr = Intrinsics(fx=100.0, fy=100.0, cx=50.0, cy=40.0, width=100, height=80)
    pose = np.eye(4)
    pose[:3, 3] = [1.0, 2.0, 3.0]
    lines = frustum_lines(intr, pose, scale=0.2)
    assert lines.shape == (20, 3)  # 4 edges + 4 rectangle sides + 2 "up" sides
    np.testing.assert_allclose(lines[0], [1.0, 2.0, 3.0])  # starts at the optical centre
    # Corner (0, 0) back-projected to depth 0.2: x = -50/100*0.2, y = -40/100*0.2.
    np.testing.assert_allclose(lines[1], [1.0 - 0.1, 2.0 - 0.08, 3.2])
    # All corners lie at depth scale along the optical axis (+z in OpenCV).
    np.testing.assert_allclose(lines[1:8:2, 2], 3.2)
    # The "up" tip is above the top edge: smaller y (image up is -y).
    assert lines[-1 - 1, 1] < 2.0 - 0.08


def test_frusta_marker_array() -> None:
    intr = Intrinsics(fx=100.0, fy=100.0, cx=50.0, cy=40.0, width=100, height=80)
    rot = np.eye(4)
    rot[:3, :3] = [[0, 0, 1], [-1, 0, 0], [0, -1, 0]]
    frames = [
        Frame(rgb=np.zeros((80, 100, 3), np.uint8), intrinsics=intr, camera_to_world=np.eye(4)),
        Frame(rgb=np.zeros((80, 100, 3), np.uint8), intrinsics=intr),  # unposed: skipped
        (intr, rot),
    ]
    array = camera_frusta_to_marker_array(frames, Header(frame_id="world"), scale=0.1)
    assert array.markers[0].action == Marker.DELETEALL
    lines = array.markers[1:]
    assert [m.id for m in lines] == [0, 2]
    for m in lines:
        assert m.type == Marker.LINE_LIST and m.header.frame_id == "world"
        assert len(m.points) % 2 == 0 and m.scale.x > 0
    # The second camera looks along world +x: its far corners are at x = 0.1.
    far = _xyz(lines[1].points)[1:8:2]
    np.testing.assert_allclose(far[:, 0], 0.1)
    with pytest.raises(ValueError, match="scale"):
        camera_frusta_to_marker_array([(intr, np.eye(4))], scale=0.0)
    with pytest.raises(ValueError, match="finite 4x4"):
        camera_frusta_to_marker_array([(intr, np.full((4, 4), np.nan))])
