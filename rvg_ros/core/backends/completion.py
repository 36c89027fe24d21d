"""Shared machinery of the geometric completion baselines (``fusion+convex|carve|mirror``).

Each of them builds one signed field on the voxel centres of the target cube (negative inside,
metres) from two kinds of evidence, then extracts its zero level set:

- the **convex hull** of the fused surface (an upper bound on a convex object);
- **observed free space**: along every pixel ray, what lies in front of the measured depth
  (or anywhere along a ray that missed the object) is empty.

Free space is kept as a continuous projective distance (measured depth minus the point's depth)
instead of a boolean carve (``hull.carve``): its zero crossing is the measured surface itself,
so observed parts come out with sub-voxel accuracy rather than voxel stair-steps.
"""

from __future__ import annotations

import numpy as np
import open3d as o3d
from scipy.ndimage import (
    binary_closing,
    distance_transform_edt,
    maximum_filter,
    minimum_filter,
)
from scipy.spatial import ConvexHull, QhullError

from rvg_ros.core.backends.base import (
    BackendOptions,
    ProgressFn,
    StageTimer,
    no_progress,
    peak_rss_mb,
)
from rvg_ros.core.backends.fusion import fused_surface
from rvg_ros.core.backends.hull import HullBackend, voxel_centres
from rvg_ros.core.geometry import lookup_pixels, project
from rvg_ros.core.surface import finish_mesh, mesh_from_field, sample_cloud
from rvg_ros.core.types import CaptureSet, Frame, Reconstruction, ReconstructionError

# Free-space distances are clipped to this many voxels: beyond it the exact value never
# changes which side of the surface a voxel is on.
TRUNCATION_VOXELS = 3.0
# Extra allowance (voxels) before a voxel in front of the measured depth counts as free;
# absorbs depth noise and the nearest-pixel lookup.
FREE_MARGIN_VOXELS = 0.25
# Support directions for the hull: the hull of the extreme points in this many directions is
# within ~0.3 % of the object's radius of the exact hull, with ~1000 facets instead of ~30k.
HULL_DIRECTIONS = 600


def fibonacci_sphere(n: int) -> np.ndarray:
    """``n`` nearly uniform unit vectors (a Fibonacci lattice), (n, 3)."""
    i = np.arange(n) + 0.5
    polar = np.arccos(1.0 - 2.0 * i / n)
    azimuth = np.pi * (1.0 + 5.0**0.5) * i
    return np.stack(
        [np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], axis=1
    )


def support_points(points: np.ndarray) -> np.ndarray:
    """The extreme points of ``points`` in ``HULL_DIRECTIONS`` directions: their convex hull
    approximates that of all points (see ``HULL_DIRECTIONS``) at a fraction of the cost."""
    directions = fibonacci_sphere(HULL_DIRECTIONS)
    return points[np.unique(np.argmax(points @ directions.T, axis=0))]


def hull_without_depth(
    name: str, capture: CaptureSet, options: BackendOptions, progress: ProgressFn
) -> Reconstruction:
    """Without depth there is no fused surface to take a hull of, and the only free space is
    outside the silhouettes: every completion baseline reduces to the visual hull."""
    result = HullBackend(options).reconstruct(capture, progress)
    result.backend = name
    result.extras["method"] = "silhouette carving (no depth)"
    return result


def hull_field(points: np.ndarray, centres: np.ndarray, voxel: float) -> np.ndarray:
    """Signed distance (metres, negative inside) of ``centres`` to the convex hull of
    ``points``: exact within 1.5 voxels of the hull's surface, voxel-accurate elsewhere."""
    support = support_points(points)
    try:
        hull = ConvexHull(support)
    except (QhullError, ValueError) as exc:
        raise ReconstructionError("the observed surface is flat or too small to fill") from exc
    # Qhull orients facets outwards but not the vertex order of a simplex: fix it per facet.
    tri = hull.simplices.copy()
    a, b, c = (support[tri[:, i]] for i in range(3))
    flip = np.einsum("ij,ij->i", np.cross(b - a, c - a), hull.equations[:, :3]) < 0
    tri[flip] = tri[flip][:, ::-1]
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(
        o3d.core.Tensor(support.astype(np.float32)), o3d.core.Tensor(tri.astype(np.uint32))
    )
    query = o3d.core.Tensor(centres.astype(np.float32))
    inside = scene.compute_occupancy(query).numpy() > 0.5
    res = round(len(centres) ** (1.0 / 3.0))
    grid = inside.reshape(res, res, res)
    # Voxel-accurate signed distance everywhere (cheap), exact only near the surface (where the
    # zero crossing is taken): a full exact query costs ~10x more.
    field = distance_transform_edt(~grid) - distance_transform_edt(grid) + np.where(grid, 0.5, -0.5)
    field = (field * voxel).reshape(-1)
    band = np.abs(field) < 1.5 * voxel
    if band.any():
        field[band] = scene.compute_signed_distance(
            o3d.core.Tensor(centres[band].astype(np.float32))
        ).numpy()
    return field


def _depth_tolerance(depth: np.ndarray) -> np.ndarray:
    """Per-pixel half range of valid depth in the 3x3 neighbourhood: how far off a
    nearest-pixel lookup can be on a slanted surface."""
    valid = depth > 0
    high = maximum_filter(np.where(valid, depth, -np.inf), size=3)
    low = minimum_filter(np.where(valid, depth, np.inf), size=3)
    return np.where(valid, 0.5 * (high - low), 0.0).astype(np.float32)


def free_space_field(
    frames: list[Frame], points: np.ndarray, margin: float, truncation: float
) -> np.ndarray:
    """Observed free space as a signed distance (positive = seen empty), clipped to
    ``[-truncation, truncation]``; ``-truncation`` where no view knows anything.

    Per view: a ray that missed the object (outside the mask) is free all along; otherwise a
    point more than ``margin`` in front of the measured depth is free. Masks are closed first
    so that depth dropout inside the object does not punch holes through it.
    """
    field = np.full(len(points), -truncation, dtype=np.float32)
    for frame in frames:
        if frame.depth is None or frame.mask is None:
            raise ReconstructionError("free-space carving needs depth and a mask in every view")
        # Per pixel, the depth up to which its ray is known to be empty: +inf off the object,
        # -inf where the object has no depth reading, else the (slack-reduced) measurement.
        on_object = binary_closing(frame.mask, iterations=2) | frame.mask
        depth = frame.depth.astype(np.float32)
        limit = np.where(depth > 0, depth - margin - _depth_tolerance(depth), -np.inf)
        limit = np.where(on_object, limit, np.inf).astype(np.float32)
        uv, z = project(points, frame.intrinsics, frame.camera_to_world)
        free_to, seen = lookup_pixels(limit, uv, z > 0)
        value = np.where(seen, np.clip(free_to - z, -truncation, truncation), -truncation)
        np.maximum(field, value, out=field)
    return field


def evidence_fields(
    capture: CaptureSet, resolution: int, options: BackendOptions
) -> tuple[np.ndarray, np.ndarray, float]:
    """(voxel centres, free-space field, voxel size) for the capture's target cube."""
    voxel = capture.target.side / resolution
    centres = voxel_centres(capture.target, resolution)
    margin = float(options.extra.get("free_margin_voxels", FREE_MARGIN_VOXELS)) * voxel
    free = free_space_field(capture.frames, centres, margin, TRUNCATION_VOXELS * voxel)
    return centres, free, voxel


def outward(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Triangles wound so that normals point out of the closed surface (positive signed
    volume). Confidence needs it: ``finish_mesh`` only counts front-facing vertices as seen,
    and marching cubes' winding depends on the field's sign convention."""
    if len(triangles) == 0:
        return triangles
    a, b, c = (vertices[triangles[:, i]] for i in range(3))
    signed_volume = np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0
    return triangles if signed_volume >= 0 else triangles[:, ::-1].copy()


def surface_reconstruction(
    name: str,
    field: np.ndarray,
    capture: CaptureSet,
    options: BackendOptions,
    timer: StageTimer,
    progress: ProgressFn,
    extras: dict[str, object],
) -> Reconstruction:
    """Zero level set of ``field`` (negative inside), coloured, with confidence and a cloud.

    Confidence comes from ``finish_mesh``: surface backed by some view's depth is observed
    (1.0), everything the completion added is not (``UNOBSERVED_CONFIDENCE``).
    """
    res = options.resolution
    voxel = capture.target.side / res
    with timer.stage("surface"):
        vertices, triangles = mesh_from_field(-field.reshape(res, res, res), capture.target, 0.0)
        triangles = outward(vertices, triangles)
    if len(triangles) == 0:
        raise ReconstructionError(f"{name}: the completed volume is empty")
    with timer.stage("colour"):
        mesh = finish_mesh(vertices, triangles, capture.frames, 3.0 * voxel)
    with timer.stage("sample"):
        cloud = sample_cloud(mesh, options.cloud_points, capture.seed)
    progress("done", 1.0)
    return Reconstruction(
        mesh=mesh,
        cloud=cloud,
        backend=name,
        num_views=len(capture.frames),
        metric_scale=True,
        stage_seconds=timer.seconds,
        peak_memory_mb=peak_rss_mb(),
        extras={"voxel_size": voxel, **extras},
    )


def fused_vertices(capture: CaptureSet, options: BackendOptions) -> np.ndarray:
    """The fused surface's vertices, in a deterministic order."""
    if not capture.has_depth:  # what ``fusion`` does without depth: silhouette carving
        vertices = HullBackend(options).reconstruct(capture, no_progress).mesh.vertices
        return vertices[np.lexsort(vertices.T[::-1])]
    vertices, triangles = fused_surface(capture, options)  # its surface, without the colour
    if len(triangles) == 0:
        raise ReconstructionError("fusion produced an empty surface (no depth on the object?)")
    # Open3D's voxel hash map returns the same vertices in a run-dependent order: sort them so
    # that everything downstream (subsampling, tie-breaks) is deterministic.
    return vertices[np.lexsort(vertices.T[::-1])]


def fused_points(capture: CaptureSet, options: BackendOptions, timer: StageTimer) -> np.ndarray:
    """Run fusion as the ``fuse`` stage; returns the fused surface's vertices."""
    with timer.stage("fuse"):
        return fused_vertices(capture, options)
