"""Meshes and camera frusta as visualization_msgs / shape_msgs messages.

Marker points are lists of geometry_msgs/Point objects, which rclpy builds one Python object at a
time (~3 us each). A TRIANGLE_LIST needs three points per triangle, so the Point (and ColorRGBA)
objects are built once per *vertex* and the triangle list refers to them: the message serialises
the same object several times, and building a marker costs O(vertices) objects, not
O(3 * triangles).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from geometry_msgs.msg import Point
from shape_msgs.msg import Mesh as MeshMsg
from shape_msgs.msg import MeshTriangle
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from rvg_ros.core.types import Frame, Intrinsics, Mesh

DEFAULT_MESH_COLOR = (0.7, 0.7, 0.7)  # vertices without colour are drawn light grey


def check_mesh(mesh: Mesh) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (N, 3) float64 and triangles (M, 3) int64, or ValueError saying what is wrong."""
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    triangles = np.asarray(mesh.triangles)
    if vertices.size == 0:
        vertices = vertices.reshape(0, 3)
    if triangles.size == 0:
        triangles = triangles.reshape(0, 3)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"mesh vertices must be (N, 3), got {vertices.shape}")
    if triangles.ndim != 2 or triangles.shape[1] != 3:
        raise ValueError(f"mesh triangles must be (M, 3), got {triangles.shape}")
    if not np.issubdtype(triangles.dtype, np.integer):
        raise ValueError(f"mesh triangles must be integer indices, got {triangles.dtype}")
    triangles = triangles.astype(np.int64)
    if triangles.size and (triangles.min() < 0 or triangles.max() >= len(vertices)):
        raise ValueError(
            f"mesh triangle indices must be in [0, {len(vertices)}), "
            f"got [{triangles.min()}, {triangles.max()}]"
        )
    bad = ~np.all(np.isfinite(vertices), axis=1)
    if bad.any():
        raise ValueError(f"mesh has {int(bad.sum())} non-finite vertices")
    return vertices, triangles


def _vertex_colors(mesh: Mesh, n: int) -> np.ndarray:
    colors = np.asarray(mesh.vertex_colors, dtype=np.float64)
    if colors.size == 0:
        return np.tile(np.asarray(DEFAULT_MESH_COLOR, dtype=np.float64), (n, 1))
    colors = colors.reshape(-1, colors.shape[-1])
    if len(colors) != n or colors.shape[1] not in (3, 4):
        raise ValueError(f"mesh has {n} vertices but vertex colours of shape {colors.shape}")
    colors = np.nan_to_num(colors[:, :3], nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(colors, 0.0, 1.0)


def _points(xyz: np.ndarray) -> list[Point]:
    return [Point(x=x, y=y, z=z) for x, y, z in np.asarray(xyz, dtype=np.float64).tolist()]


def mesh_to_marker(
    mesh: Mesh,
    header: Header | None = None,
    ns: str = "mesh",
    marker_id: int = 0,
    alpha: float = 1.0,
) -> Marker:
    """A TRIANGLE_LIST marker with per-vertex colours, in ``header.frame_id``.

    An empty mesh gives a DELETE marker for the same ns/id, so a stale mesh disappears from RViz
    instead of lingering (RViz also complains about a TRIANGLE_LIST with no points).
    """
    vertices, triangles = check_mesh(mesh)
    marker = Marker()
    if header is not None:
        marker.header = header
    marker.ns = ns
    marker.id = int(marker_id)
    marker.type = Marker.TRIANGLE_LIST
    marker.pose.orientation.w = 1.0
    marker.scale.x = marker.scale.y = marker.scale.z = 1.0
    a = float(np.clip(alpha, 0.0, 1.0))
    marker.color = ColorRGBA(r=1.0, g=1.0, b=1.0, a=a)
    if len(vertices) == 0 or len(triangles) == 0:
        marker.action = Marker.DELETE
        return marker
    marker.action = Marker.ADD
    colors = _vertex_colors(mesh, len(vertices))
    # Only the vertices some triangle uses get a Point object (see the module docstring).
    used, remap = np.unique(triangles.reshape(-1), return_inverse=True)
    vertex_points = _points(vertices[used])
    vertex_colors = [ColorRGBA(r=r, g=g, b=b, a=a) for r, g, b in colors[used].tolist()]
    marker.points = [vertex_points[i] for i in remap.tolist()]
    marker.colors = [vertex_colors[i] for i in remap.tolist()]
    return marker


def mesh_to_shape_msg(mesh: Mesh) -> MeshMsg:
    """shape_msgs/Mesh (vertices in metres + index triangles); colours do not fit in it."""
    vertices, triangles = check_mesh(mesh)
    msg = MeshMsg()
    msg.vertices = _points(vertices)
    tri32 = triangles.astype(np.uint32)
    msg.triangles = [MeshTriangle(vertex_indices=t) for t in tri32]
    return msg


def shape_msg_to_mesh(
    msg: MeshMsg,
    vertex_colors: np.ndarray | None = None,
    vertex_confidence: np.ndarray | None = None,
) -> Mesh:
    """shape_msgs/Mesh (+ optional per-vertex colours and confidence) -> core Mesh."""
    vertices = np.array([(p.x, p.y, p.z) for p in msg.vertices], dtype=np.float64).reshape(-1, 3)
    if msg.triangles:
        triangles = np.stack([np.asarray(t.vertex_indices) for t in msg.triangles])
    else:
        triangles = np.zeros((0, 3))
    triangles = triangles.astype(np.int64)
    n = len(vertices)
    colors = (
        np.full((n, 3), DEFAULT_MESH_COLOR, dtype=np.float32)
        if vertex_colors is None or len(vertex_colors) == 0
        else np.asarray(vertex_colors, dtype=np.float32).reshape(n, -1)[:, :3]
    )
    confidence = (
        np.ones(n, dtype=np.float32)
        if vertex_confidence is None or len(vertex_confidence) == 0
        else np.asarray(vertex_confidence, dtype=np.float32).reshape(n)
    )
    mesh = Mesh(
        vertices=vertices,
        triangles=triangles.astype(np.int32),
        vertex_colors=colors,
        vertex_confidence=confidence,
    )
    check_mesh(mesh)
    return mesh


def frustum_lines(intrinsics: Intrinsics, camera_to_world: np.ndarray, scale: float) -> np.ndarray:
    """``(2K, 3)`` segment endpoints (world frame) of a camera frustum ``scale`` metres deep.

    Four edges from the optical centre to the image corners back-projected to depth ``scale``,
    the rectangle joining them, and a small triangle on the top edge marking image "up" (-y in
    the OpenCV camera convention) so the roll of each view is visible.
    """
    intrinsics.validate()
    pose = np.asarray(camera_to_world, dtype=np.float64)
    if pose.shape != (4, 4) or not np.all(np.isfinite(pose)):
        raise ValueError(f"camera_to_world must be a finite 4x4 matrix, got shape {pose.shape}")
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"frustum scale must be a positive number of metres, got {scale}")
    w, h = float(intrinsics.width), float(intrinsics.height)
    pixels = np.array([[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]])
    corners = np.column_stack(
        [
            (pixels[:, 0] - intrinsics.cx) / intrinsics.fx * scale,
            (pixels[:, 1] - intrinsics.cy) / intrinsics.fy * scale,
            np.full(4, scale),
        ]
    )
    centre = np.zeros(3)
    top_left, top_right = corners[0], corners[1]
    up_height = 0.2 * (corners[3, 1] - corners[0, 1])
    up_tip = 0.5 * (top_left + top_right) - np.array([0.0, up_height, 0.0])
    segments = [(centre, c) for c in corners]
    segments += [(corners[i], corners[(i + 1) % 4]) for i in range(4)]
    segments += [(top_left, up_tip), (up_tip, top_right)]
    local = np.array([p for seg in segments for p in seg])
    return local @ pose[:3, :3].T + pose[:3, 3]


def camera_frusta_to_marker_array(
    cameras: Sequence[Frame | tuple[Intrinsics, np.ndarray | None]],
    header: Header | None = None,
    scale: float = 0.05,
    line_width: float = 0.002,
    color: tuple[float, float, float, float] = (0.1, 0.6, 1.0, 1.0),
    ns: str = "frusta",
) -> MarkerArray:
    """One LINE_LIST marker per posed camera (frames or (intrinsics, camera_to_world) pairs).

    ``camera_to_world`` is in the OpenCV camera convention, in ``header.frame_id``; ``scale`` is
    the frustum depth and ``line_width`` the line thickness, both in metres. Unposed cameras are
    skipped. The array starts with a DELETEALL so frusta of frames dropped since the last
    publication (e.g. after a reset) disappear.
    """
    header = header if header is not None else Header()
    clear = Marker(header=header, ns=ns, id=0, action=Marker.DELETEALL)
    markers = [clear]
    rgba = ColorRGBA(r=float(color[0]), g=float(color[1]), b=float(color[2]), a=float(color[3]))
    for index, camera in enumerate(cameras):
        if isinstance(camera, Frame):
            intrinsics, pose = camera.intrinsics, camera.camera_to_world
        else:
            intrinsics, pose = camera
        if pose is None:
            continue
        marker = Marker(header=header, ns=ns, id=index, type=Marker.LINE_LIST, action=Marker.ADD)
        marker.pose.orientation.w = 1.0
        marker.scale.x = float(line_width)
        marker.color = rgba
        marker.points = _points(frustum_lines(intrinsics, pose, scale))
        markers.append(marker)
    return MarkerArray(markers=markers)
