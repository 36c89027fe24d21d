"""Find the target object: its cube in the world frame, and per-frame object masks.

Three cases, in order of preference:
1. a region of interest (axis-aligned box in the world frame) given by the user;
2. depth: back-project, drop the support plane (RANSAC), cluster, keep the cluster nearest
   the first camera's optical axis ("the object nearest the image centre");
3. masks without depth: triangulate the silhouette centres, size from silhouette extents.
"""

from __future__ import annotations

import numpy as np
import open3d as o3d

from rvg_ros.core.geometry import backproject_depth, project, transform_points
from rvg_ros.core.types import CaptureSet, Frame, ReconstructionError, TargetCube

# Margin around the object's bounding box, so completion has room and fusion doesn't clip.
CUBE_MARGIN = 1.2
# Points this close to the support plane belong to it, not to the object.
PLANE_TOLERANCE = 0.006


def cube_from_box(
    box_min: np.ndarray, box_max: np.ndarray, margin: float = CUBE_MARGIN
) -> TargetCube:
    box_min, box_max = np.asarray(box_min, float), np.asarray(box_max, float)
    side = float(np.max(box_max - box_min)) * margin
    if not np.isfinite(side) or side <= 0:
        raise ReconstructionError(f"region of interest is empty: {box_min} .. {box_max}")
    return TargetCube(center=(box_min + box_max) / 2.0, side=side)


def _posed(frames: list[Frame]) -> list[Frame]:
    posed = [f for f in frames if f.camera_to_world is not None]
    if not posed:
        raise ReconstructionError("no frame has a camera pose")
    return posed


def _surrounds(plane_points: np.ndarray, rest: np.ndarray, normal: np.ndarray) -> bool:
    """Whether a plane patch reaches past the rest of the scene along its longest direction,
    as a table does around what stands on it. A flat face of the object itself (a box side,
    the flat band of a mug in a scene without a floor) lies within the object's extent."""
    if len(rest) < 10:
        return True
    centred = plane_points - plane_points.mean(axis=0)
    in_plane = centred - np.outer(centred @ normal, normal)
    axis = np.linalg.svd(in_plane, full_matrices=False)[2][0]
    lo, hi = np.percentile(plane_points @ axis, [2, 98])
    rest_lo, rest_hi = np.percentile(rest @ axis, [2, 98])
    return bool(lo < rest_lo and hi > rest_hi)


def _object_points_from_depth(frames: list[Frame]) -> tuple[np.ndarray, np.ndarray | None]:
    """Object points and the support plane (a, b, c, d) if one was removed."""
    clouds = [backproject_depth(f, f.mask) for f in frames]
    points = np.concatenate(clouds) if clouds else np.zeros((0, 3))
    if len(points) < 50:
        raise ReconstructionError("too few valid depth pixels to find the object")
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    pcd = pcd.voxel_down_sample(0.004)
    if all(f.mask is not None for f in frames):
        return np.asarray(pcd.points), None

    plane = None
    if len(pcd.points) > 200:
        # Open3D's RANSAC draws from a global generator: seed it, or the same capture can
        # give different targets (found by the soak runs, docs/reliability.md).
        o3d.utility.random.seed(0)
        model, inliers = pcd.segment_plane(PLANE_TOLERANCE, 3, 300, probability=0.9999)
        candidate = np.asarray(model, dtype=np.float64)
        # Orient the normal towards the cameras so "above the plane" means positive.
        if candidate[:3] @ frames[0].camera_to_world[:3, 3] + candidate[3] < 0:
            candidate = -candidate
        rest = np.delete(np.asarray(pcd.points), inliers, axis=0)
        above = rest @ candidate[:3] + candidate[3] > -PLANE_TOLERANCE
        # A support surface holds a good share of the scene and has everything else on the
        # camera side. A flat-ish patch of the object itself (a box face, a band of a can)
        # has object points on both sides, and must not be cut away.
        if (
            len(inliers) > 0.2 * len(pcd.points)
            and (len(rest) == 0 or above.mean() > 0.97)
            and _surrounds(np.asarray(pcd.points)[inliers], rest, candidate[:3])
        ):
            plane = candidate
            pcd = pcd.select_by_index(inliers, invert=True)
            pts = np.asarray(pcd.points)
            pcd = pcd.select_by_index(np.nonzero(pts @ plane[:3] + plane[3] > PLANE_TOLERANCE)[0])
    if len(pcd.points) < 20:
        raise ReconstructionError("nothing left above the support plane: no object in view")
    labels = np.asarray(pcd.cluster_dbscan(eps=0.012, min_points=10))
    pts = np.asarray(pcd.points)
    if labels.max() < 0:
        return pts, plane
    # The object nearest the first camera's optical axis.
    c2w = frames[0].camera_to_world
    origin, axis = c2w[:3, 3], c2w[:3, 2]
    best, best_dist = 0, np.inf
    for label in range(labels.max() + 1):
        centroid = pts[labels == label].mean(axis=0)
        offset = centroid - origin
        dist = np.linalg.norm(offset - (offset @ axis) * axis)
        if dist < best_dist:
            best, best_dist = label, dist
    return pts[labels == best], plane


def _cube_from_silhouettes(frames: list[Frame]) -> TargetCube:
    """Least-squares point closest to every silhouette-centre ray, sized from the silhouettes."""
    a = np.zeros((3, 3))
    b = np.zeros(3)
    rays = []
    for f in frames:
        if f.mask is None or not f.mask.any():
            continue
        v, u = np.nonzero(f.mask)
        k = f.intrinsics
        direction_cam = np.array([(u.mean() - k.cx) / k.fx, (v.mean() - k.cy) / k.fy, 1.0])
        d = f.camera_to_world[:3, :3] @ direction_cam
        d /= np.linalg.norm(d)
        o = f.camera_to_world[:3, 3]
        p = np.eye(3) - np.outer(d, d)
        a += p
        b += p @ o
        extent_px = max(u.max() - u.min(), v.max() - v.min()) + 1
        rays.append((o, extent_px / min(k.fx, k.fy)))
    if len(rays) < 2:
        raise ReconstructionError("RGB without depth needs masks in at least 2 posed views")
    centre = np.linalg.lstsq(a, b, rcond=None)[0]
    side = max(np.linalg.norm(centre - o) * angular for o, angular in rays)
    return TargetCube(center=centre, side=float(side) * CUBE_MARGIN)


def estimate_target(
    frames: list[Frame], roi: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[TargetCube, np.ndarray | None]:
    """The target cube and the support plane (or None) for a list of posed frames."""
    posed = _posed(frames)
    if roi is not None:
        return cube_from_box(*roi), None
    if all(f.depth is not None for f in posed):
        points, plane = _object_points_from_depth(posed)
        return cube_from_box(points.min(axis=0), points.max(axis=0)), plane
    if all(f.mask is not None for f in posed):
        return _cube_from_silhouettes(posed), None
    raise ReconstructionError(
        "cannot find the object: frames have neither depth nor masks; give a region of interest"
    )


def object_masks(frame: Frame, target: TargetCube, plane: np.ndarray | None) -> np.ndarray:
    """Pixels whose depth lies inside the target cube and above the support plane."""
    if frame.depth is None:
        raise ValueError("object_masks needs depth")
    k = frame.intrinsics
    v, u = np.nonzero(frame.depth > 0)
    z = frame.depth[v, u].astype(np.float64)
    cam = np.stack([(u - k.cx) * z / k.fx, (v - k.cy) * z / k.fy, z], axis=1)
    world = transform_points(frame.camera_to_world, cam)
    inside = np.all(np.abs(world - target.center) <= target.side / 2.0, axis=1)
    if plane is not None:
        inside &= world @ plane[:3] + plane[3] > PLANE_TOLERANCE
    mask = np.zeros(frame.depth.shape, dtype=bool)
    mask[v[inside], u[inside]] = True
    if frame.mask is not None:
        mask &= frame.mask
    return mask


def select_views(frames: list[Frame], max_views: int | None) -> list[Frame]:
    """Up to ``max_views`` frames spread around the object (farthest-point on camera centres).

    Deterministic: starts from the first frame, so the same capture gives the same choice.
    """
    if not max_views or max_views >= len(frames):
        return list(frames)
    centres = np.array([f.camera_to_world[:3, 3] for f in frames])
    chosen = [0]
    dist = np.linalg.norm(centres - centres[0], axis=1)
    while len(chosen) < max_views:
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(centres - centres[nxt], axis=1))
    return [frames[i] for i in sorted(chosen)]


def make_capture_set(
    frames: list[Frame],
    roi: tuple[np.ndarray, np.ndarray] | None = None,
    max_views: int | None = None,
    seed: int = 0,
    min_views: int = 1,
) -> CaptureSet:
    """Choose views, find the target, and give depth frames object masks.

    Depth outside the object mask is zeroed so that backends fuse only the object (not the
    table it stands on).
    """
    posed = [f for f in frames if f.camera_to_world is not None]
    if len(posed) < min_views:
        raise ReconstructionError(f"too few posed frames: {len(posed)} (need at least {min_views})")
    chosen = select_views(posed, max_views)
    target, plane = estimate_target(chosen, roi)
    prepared = []
    for f in chosen:
        if f.depth is not None:
            mask = object_masks(f, target, plane)
            depth = np.where(mask, f.depth, 0.0).astype(np.float32)
            # Silhouettes from depth are only trusted where the sensor saw something;
            # keep a given mask if there is one.
            f = Frame(
                rgb=f.rgb,
                intrinsics=f.intrinsics,
                camera_to_world=f.camera_to_world,
                depth=depth,
                mask=f.mask if f.mask is not None else mask,
                stamp=f.stamp,
                note=f.note,
            )
        prepared.append(f)
    return CaptureSet(frames=prepared, target=target, seed=seed, support_plane=plane)


def visible_in(frame: Frame, points: np.ndarray) -> np.ndarray:
    """Points that project inside the frame's image and lie in front of the camera."""
    uv, z = project(points, frame.intrinsics, frame.camera_to_world)
    k = frame.intrinsics
    return (
        (z > 0)
        & (uv[:, 0] >= -0.5)
        & (uv[:, 0] < k.width - 0.5)
        & (uv[:, 1] >= -0.5)
        & (uv[:, 1] < k.height - 0.5)
    )
