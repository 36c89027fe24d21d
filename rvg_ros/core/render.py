"""Headless mesh renderer on Open3D's ``RaycastingScene`` (CPU, no GL/Vulkan needed).

Used by the simulator (camera images), by previews of reconstructions and by evaluation
(held-out view renders). ``OffscreenRenderer`` would need Vulkan, which a bare machine or a CI
runner does not have, so everything here is ray casting plus numpy shading.

Pixel convention (the project's, as in OpenCV and ROS ``CameraInfo``): the ray of pixel
``(u, v)`` passes through image point ``(u, v)``, i.e. pixel centres sit at integer coordinates
and a centred principal point is ``((W - 1) / 2, (H - 1) / 2)``. Open3D's own ray generator and
TSDF integration put centres at ``u + 0.5`` instead, so rays are built here rather than with
``create_rays_pinhole``. Distortion in the intrinsics is ignored: renders are ideal pinhole
images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import open3d as o3d

from rvg_ros.core.types import Intrinsics, check_rigid

# Open3D marks a missed ray with this primitive id.
_INVALID_ID = np.uint32(0xFFFFFFFF)
# Colour used when a mesh has no vertex colours: a light neutral grey.
_DEFAULT_COLOR = np.array([0.7, 0.7, 0.7], dtype=np.float32)


@dataclass
class RenderedView:
    """One rendered image.

    ``depth`` is z-depth (distance along the optical axis, what depth cameras report), not ray
    length. ``normals`` are unit world-frame *geometric* (face) normals, zero where the ray
    missed. ``triangle_ids`` is -1 where the ray missed.
    """

    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 metres, 0 = background
    mask: np.ndarray  # (H, W) bool
    normals: np.ndarray  # (H, W, 3) float32, world frame
    triangle_ids: np.ndarray  # (H, W) int64

    def points_world(self, intrinsics: Intrinsics, camera_to_world: np.ndarray) -> np.ndarray:
        """Back-project the valid depth pixels to world points, (N, 3)."""
        return backproject_depth(self.depth, intrinsics, camera_to_world)


def mesh_arrays(mesh: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertices float64 (N,3), triangles int64 (M,3), colours float32 (N,3) in 0..1).

    Accepts a ``trimesh.Trimesh``, our ``types.Mesh`` (or anything with ``vertices`` and
    ``triangles``/``faces`` and optional ``vertex_colors``), or an ``open3d.geometry.TriangleMesh``.
    Colours stored as uint8 (trimesh keeps RGBA 0..255) are rescaled to 0..1.
    """
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    # trimesh's ``triangles`` is (M, 3, 3) corner coordinates, not indices: prefer ``faces``.
    faces = getattr(mesh, "faces", None)
    index_array = faces if faces is not None else mesh.triangles
    triangles = np.asarray(index_array, dtype=np.int64).reshape(-1, 3)

    colors = _vertex_colors(mesh)
    if colors is None or len(colors) != len(vertices):
        colors = np.broadcast_to(_DEFAULT_COLOR, vertices.shape).copy()
    return vertices, triangles, colors


def _vertex_colors(mesh: Any) -> np.ndarray | None:
    visual = getattr(mesh, "visual", None)
    raw = None
    if visual is not None:  # trimesh
        if getattr(visual, "kind", None) == "vertex":
            raw = visual.vertex_colors
    else:
        raw = getattr(mesh, "vertex_colors", None)
    if raw is None:
        return None
    arr = np.asarray(raw)
    if arr.size == 0:
        return None
    arr = arr[:, :3]
    if arr.dtype == np.uint8 or arr.max() > 1.0:
        return (arr.astype(np.float32) / 255.0).clip(0.0, 1.0)
    return arr.astype(np.float32).clip(0.0, 1.0)


def pixel_rays(
    intrinsics: Intrinsics, camera_to_world: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Ray origins and directions (H, W, 3) in the world frame.

    Directions are *not* normalised: they have unit z in the camera frame, so the ray parameter
    of a hit is its z-depth.
    """
    c2w = np.asarray(camera_to_world, dtype=np.float64)
    u = (np.arange(intrinsics.width) - intrinsics.cx) / intrinsics.fx
    v = (np.arange(intrinsics.height) - intrinsics.cy) / intrinsics.fy
    uu, vv = np.meshgrid(u, v)
    dirs_cam = np.stack([uu, vv, np.ones_like(uu)], axis=-1)
    dirs = dirs_cam @ c2w[:3, :3].T
    origins = np.broadcast_to(c2w[:3, 3], dirs.shape)
    return origins, dirs


def backproject_depth(
    depth: np.ndarray, intrinsics: Intrinsics, camera_to_world: np.ndarray
) -> np.ndarray:
    """World points of the pixels with depth > 0, in the renderer's pixel convention."""
    origins, dirs = pixel_rays(intrinsics, camera_to_world)
    valid = depth > 0
    return origins[valid] + dirs[valid] * depth[valid, None].astype(np.float64)


class MeshRenderer:
    """Holds one mesh in a ray-casting scene so that many views of it are cheap.

    Shading: vertex colours interpolated with the hit's barycentric coordinates, times
    ``ambient + (1 - ambient) * |n . l|`` with a headlight (light at the camera), where ``n`` is
    the interpolated vertex normal (smooth shading; the absolute value lights back faces of
    open meshes instead of leaving them black).
    """

    def __init__(self, mesh: Any, ambient: float = 0.35) -> None:
        vertices, triangles, colors = mesh_arrays(mesh)
        if len(vertices) == 0 or len(triangles) == 0:
            raise ValueError("cannot render an empty mesh")
        self.vertices = vertices
        self.triangles = triangles
        self.colors = colors
        self.ambient = float(ambient)
        self.vertex_normals = _vertex_normals(vertices, triangles)
        self.scene = o3d.t.geometry.RaycastingScene()
        self.scene.add_triangles(
            o3d.core.Tensor(vertices.astype(np.float32)),
            o3d.core.Tensor(triangles.astype(np.uint32)),
        )

    def render(
        self,
        intrinsics: Intrinsics,
        camera_to_world: np.ndarray,
        background: tuple[int, int, int] = (0, 0, 0),
    ) -> RenderedView:
        check_rigid(camera_to_world)
        h, w = intrinsics.height, intrinsics.width
        origins, dirs = pixel_rays(intrinsics, camera_to_world)
        rays = np.concatenate([origins, dirs], axis=-1).reshape(-1, 6).astype(np.float32)
        hits = self.scene.cast_rays(o3d.core.Tensor(rays))

        prim = hits["primitive_ids"].numpy()
        mask_flat = prim != _INVALID_ID
        t_hit = hits["t_hit"].numpy()

        depth = np.zeros(h * w, dtype=np.float32)
        depth[mask_flat] = t_hit[mask_flat]
        tri_ids = np.full(h * w, -1, dtype=np.int64)
        tri_ids[mask_flat] = prim[mask_flat].astype(np.int64)

        normals = np.zeros((h * w, 3), dtype=np.float32)
        normals[mask_flat] = hits["primitive_normals"].numpy()[mask_flat]

        rgb = np.empty((h * w, 3), dtype=np.float32)
        rgb[:] = np.asarray(background, dtype=np.float32) / 255.0
        if mask_flat.any():
            rgb[mask_flat] = self._shade(
                tri_ids[mask_flat],
                hits["primitive_uvs"].numpy()[mask_flat],
                dirs.reshape(-1, 3)[mask_flat],
            )
        rgb8 = np.round(rgb * 255.0).clip(0, 255).astype(np.uint8)
        return RenderedView(
            rgb=rgb8.reshape(h, w, 3),
            depth=depth.reshape(h, w),
            mask=mask_flat.reshape(h, w),
            normals=normals.reshape(h, w, 3),
            triangle_ids=tri_ids.reshape(h, w),
        )

    def _shade(self, tri: np.ndarray, uv: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        corners = self.triangles[tri]  # (K, 3)
        # Open3D's uv: hit = (1-u-v) * v0 + u * v1 + v * v2.
        bary = np.stack([1.0 - uv[:, 0] - uv[:, 1], uv[:, 0], uv[:, 1]], axis=1)[..., None]
        color = (self.colors[corners] * bary).sum(axis=1)
        normal = (self.vertex_normals[corners] * bary).sum(axis=1)
        normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-12
        view = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
        lambert = np.abs((normal * view).sum(axis=1))
        shade = self.ambient + (1.0 - self.ambient) * lambert
        return (color * shade[:, None]).astype(np.float32)


def _vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals (the cross product's length is twice the face area)."""
    v0, v1, v2 = (vertices[triangles[:, i]] for i in range(3))
    face_n = np.cross(v1 - v0, v2 - v0)
    normals = np.zeros_like(vertices)
    for i in range(3):
        np.add.at(normals, triangles[:, i], face_n)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return normals / np.where(length > 0, length, 1.0)


def render_view(
    mesh: Any,
    intrinsics: Intrinsics,
    camera_to_world: np.ndarray,
    background: tuple[int, int, int] = (0, 0, 0),
) -> RenderedView:
    """Render one view. For many views of one mesh, build a ``MeshRenderer`` once instead."""
    return MeshRenderer(mesh).render(intrinsics, camera_to_world, background=background)
