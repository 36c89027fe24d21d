"""The reconstruction prior: what the cameras tell us, in the normalised object cube.

ReconViaGen conditions its generator on a multi-view reconstructor (VGGT). A robot knows more
than VGGT has to guess - poses, often depth - so our prior is explicit geometry plus learned
per-view features (METHOD.md, "How rvg_ros maps it onto a robot"):

- ``completion_cube``: the cube the generator works in, [-0.5, 0.5]^3 after normalisation.
  It must hold the *whole* object, including the side no camera saw, so it is larger than the
  observed bounding box and shifted away from the cameras.
- ``evidence_grid``: per coarse voxel, observed surface / observed free space / unknown.
- ``view_inputs``: per view, a small image stack (colour, mask, depth, Plücker rays in the cube
  frame) that the multi-view encoder turns into tokens.

Training data is made by the same functions, so the generator sees at training time exactly
what it sees on a robot.
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np
from scipy.ndimage import binary_erosion

from rvg_ros.core.geometry import backproject_depth, lookup_pixels, project
from rvg_ros.core.types import CaptureSet, Frame, TargetCube

UNKNOWN, FREE, SURFACE = 0, 1, 2
# Cube side relative to the observed extent, and shift away from the cameras (fraction of the
# observed extent): room for the unseen back of the object.
CUBE_SIDE_FACTOR = 1.4
CUBE_BACK_SHIFT = 0.12
VIEW_SIZE = 64
INSIDE_EROSION_VOXELS = 1
# Coarse voxels of the filled inside given back to the generator under space a view saw into
# the object through (``under_open_space``); 0 = none. YCB dev, 4 one-sided RGB-D views (decode
# replays, 18 objects, seed 0): nearest-GT seen accuracy 0.516 / 0.507 / 0.507 / 0.505 mm for
# 0 / 2 / 3 / 4, but the mug 0.50 / 0.60 / 0.63 from 2 to 4.
OPEN_TOP_VOXELS = 2
VIEW_CHANNELS = 12  # rgb 3, mask 1, depth 1, depth-valid 1, Plücker 6


def completion_cube(capture: CaptureSet) -> TargetCube:
    """The generation cube: observed extent enlarged, centred a little behind the seen side."""
    frames = capture.frames
    if capture.has_depth:
        points = np.concatenate([backproject_depth(f) for f in frames])
    else:
        points = np.zeros((0, 3))
    if len(points) < 20:
        # RGB + masks: the silhouette-triangulated target is all we have.
        return TargetCube(center=capture.target.center.copy(), side=capture.target.side * 1.1)
    lo, hi = np.percentile(points, 0.5, axis=0), np.percentile(points, 99.5, axis=0)
    extent = float(np.max(hi - lo))
    centre = (lo + hi) / 2.0
    towards_cameras = np.mean([f.camera_to_world[:3, 3] for f in frames], axis=0) - centre
    towards_cameras[2] = 0.0  # objects rest on a support: the unseen side is horizontal
    norm = np.linalg.norm(towards_cameras)
    if norm > 1e-9:
        centre = centre - towards_cameras / norm * CUBE_BACK_SHIFT * extent
    return TargetCube(center=centre, side=extent * CUBE_SIDE_FACTOR)


def support_plane(capture: CaptureSet) -> np.ndarray | None:
    """The plane the object rests on, (a, b, c, d) with a x + b y + c z + d > 0 above it.

    The support found with the target when the scene shows it; otherwise, with depth and every
    camera looking from above, the horizontal plane through the lowest measured point (the
    world's z is up, as in ``completion_cube``): the unseen underside of an object standing on
    something does not reach below what the side views saw. None without depth.
    """
    if capture.support_plane is not None:
        return np.asarray(capture.support_plane, dtype=np.float64)
    if not capture.has_depth:
        return None
    points = np.concatenate([backproject_depth(f) for f in capture.frames])
    if len(points) < 20:
        return None
    lowest = float(np.percentile(points[:, 2], 0.2))
    if min(f.camera_to_world[2, 3] for f in capture.frames) <= lowest:
        return None  # a camera at or below the object: it would have seen the underside
    return np.array([0.0, 0.0, 1.0, -lowest])


def voxel_centres(cube: TargetCube, resolution: int) -> np.ndarray:
    """World coordinates of voxel centres, (res^3, 3), C order over (x, y, z)."""
    axis = (np.arange(resolution) + 0.5) / resolution - 0.5
    unit = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    return cube.to_world(unit)


def _silhouette(frame: Frame) -> np.ndarray:
    """Object silhouette for free-space carving; closed so depth dropouts don't punch holes."""
    if frame.mask is None:
        return np.ones(frame.rgb.shape[:2], dtype=bool)
    mask = frame.mask.astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    return cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel).astype(bool)


class ViewSamples(NamedTuple):
    """What one view says about each of a set of points (``sample_view``)."""

    z: np.ndarray  # depth along the camera's axis (metres)
    seen: np.ndarray  # in front of the camera and inside the image
    on_object: np.ndarray  # on the object's silhouette (``_silhouette``)
    depth: np.ndarray | None  # measured depth at the point's pixel (0: none); None: no depth


def sample_view(frame: Frame, centres: np.ndarray) -> ViewSamples:
    """Project ``centres`` into ``frame`` and look up its silhouette and depth there: the
    evidence grid, the hidden inside and the seen-through space all start from this."""
    uv, z = project(centres, frame.intrinsics, frame.camera_to_world)
    on_object, seen = lookup_pixels(_silhouette(frame), uv, z > 0)
    depth = None if frame.depth is None else lookup_pixels(frame.depth, uv, seen)[0]
    return ViewSamples(z, seen, on_object, depth)


def evidence_grid(
    capture: CaptureSet,
    cube: TargetCube,
    resolution: int,
    use_depth: bool,
    support: np.ndarray | None = None,
) -> np.ndarray:
    """(res, res, res) uint8 of UNKNOWN / FREE / SURFACE.

    FREE: some view saw through the voxel (outside the silhouette, or in front of the measured
    depth), or it lies below the ``support`` plane. SURFACE: a measured depth point falls in
    the voxel (depth only); it overrides FREE because a measurement beats a ray passing near it.
    """
    centres = voxel_centres(cube, resolution)
    voxel = cube.side / resolution
    free = np.zeros(len(centres), dtype=bool)
    surface = np.zeros(len(centres), dtype=bool)
    for frame in capture.frames:
        z, seen, on_object, depth = sample_view(frame, centres)
        free |= seen & ~on_object
        if use_depth and depth is not None:
            free |= seen & (depth > 0) & (z < depth - voxel)
            points = cube.to_unit(backproject_depth(frame))
            index = np.floor((points + 0.5) * resolution).astype(np.int64)
            inside = np.all((index >= 0) & (index < resolution), axis=1)
            flat = np.ravel_multi_index(index[inside].T, (resolution,) * 3)
            surface[flat] = True
    if support is not None:
        free |= centres @ support[:3] + support[3] < -0.5 * voxel
    grid = np.full(len(centres), UNKNOWN, dtype=np.uint8)
    grid[free] = FREE
    grid[surface] = SURFACE
    return grid.reshape((resolution,) * 3)


def hidden_everywhere(
    real: list[Frame], virtual: list[Frame], cube: TargetCube, resolution: int
) -> np.ndarray:
    """(res, res, res) bool: voxels behind the measured surface in every view that sees them,
    real and virtual, and in at least one of each -- the inside of an object seen all round.

    With symmetric views the evidence grid encloses an unknown pocket (the object's inside),
    which the generator never met in training and may leave empty. Behind every depth map,
    including the views from the far side, can only be inside.
    """
    centres = voxel_centres(cube, resolution)
    margin = cube.side / resolution
    hidden = np.ones(len(centres), dtype=bool)
    behind_real = np.zeros(len(centres), dtype=bool)
    behind_virtual = np.zeros(len(centres), dtype=bool)
    for frames, behind_any in ((real, behind_real), (virtual, behind_virtual)):
        for frame in frames:
            if frame.depth is None:
                continue
            z, seen, on_object, depth = sample_view(frame, centres)
            measured = seen & on_object & (depth > 0)
            behind = measured & (z > depth + margin)
            # Seen past the silhouette, or in front of the depth: not hidden. Inside the
            # silhouette without a depth reading: this view cannot tell.
            hidden &= behind | (seen & on_object & (depth <= 0)) | ~seen
            behind_any |= behind
    inside = (hidden & behind_real & behind_virtual).reshape((resolution,) * 3)
    # Only the deep inside: next to the surface, "behind every view" also holds in the seams
    # that no view (real or virtual) saw, and there the generator knows better.
    return binary_erosion(inside, iterations=INSIDE_EROSION_VOXELS)


def seen_through(frames: list[Frame], cube: TargetCube, resolution: int) -> np.ndarray:
    """(res, res, res) bool: voxels a depth view's ray crossed *inside the object's outline*
    before reaching the measured surface -- space seen into (an opening, a concavity), as
    against space seen past the object's edge."""
    centres = voxel_centres(cube, resolution)
    voxel = cube.side / resolution
    through = np.zeros(len(centres), dtype=bool)
    for frame in frames:
        if frame.depth is None:
            continue
        z, seen, on_object, depth = sample_view(frame, centres)
        through |= seen & on_object & (depth > 0) & (z < depth - voxel)
    return through.reshape((resolution,) * 3)


def under_open_space(through: np.ndarray, evidence: np.ndarray, voxels: int) -> np.ndarray:
    """(res, res, res) bool: voxels with space seen into the object (``seen_through``) at most
    ``voxels`` voxels straight above them (world z up, as in ``support_plane``) and no measured
    surface (``evidence`` SURFACE) in between.

    ``hidden_everywhere`` cannot tell a closed object's inside from an open container's hidden
    bottom: both lie behind the surface in every view. But the container's hidden part lies
    under its opening, where the cameras saw into the object (down to the sight line over the
    near rim), while a closed object's inside lies under its measured top, and the free space
    beside or above its edges was seen past the object, not into it. Filling the cup up to the
    sight line built a false floor there (YCB cups: 0.66 mm seen accuracy against fusion's
    0.26). Taking those voxels out of the fill leaves them to the generator.
    """
    surface = evidence == SURFACE
    under = np.zeros_like(through)
    # A measured surface in between (a closed object's top) blocks the column above it.
    blocked = np.zeros_like(through)
    for step in range(1, voxels + 1):  # axis 2 of the grid is world z
        under[:, :, :-step] |= through[:, :, step:] & ~blocked[:, :, :-step]
        blocked[:, :, :-step] |= surface[:, :, step:]
    return under


def plucker_rays(frame: Frame, cube: TargetCube, size: int) -> np.ndarray:
    """(6, size, size) Plücker coordinates (direction, moment) of the rays of a size x size
    resampling of the image, in the normalised cube frame."""
    k = frame.intrinsics
    scale_u, scale_v = k.width / size, k.height / size
    # Centre of small pixel j covers original pixels [j*s, (j+1)*s): centre at (j+0.5)*s - 0.5.
    u = (np.arange(size) + 0.5) * scale_u - 0.5
    v = (np.arange(size) + 0.5) * scale_v - 0.5
    uu, vv = np.meshgrid(u, v)
    dirs_cam = np.stack([(uu - k.cx) / k.fx, (vv - k.cy) / k.fy, np.ones_like(uu)], axis=-1)
    dirs = dirs_cam @ frame.camera_to_world[:3, :3].T
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    origin = cube.to_unit(frame.camera_to_world[:3, 3][None])[0]
    moment = np.cross(np.broadcast_to(origin, dirs.shape), dirs)
    return np.concatenate([dirs, moment], axis=-1).transpose(2, 0, 1).astype(np.float32)


def view_inputs(
    capture: CaptureSet, cube: TargetCube, use_depth: bool, size: int = VIEW_SIZE
) -> np.ndarray:
    """(V, VIEW_CHANNELS, size, size) float32 network input for every view."""
    out = np.zeros((len(capture.frames), VIEW_CHANNELS, size, size), dtype=np.float32)
    for i, frame in enumerate(capture.frames):
        rgb = cv2.resize(frame.rgb, (size, size), interpolation=cv2.INTER_AREA)
        out[i, 0:3] = rgb.transpose(2, 0, 1) / 255.0
        mask = frame.mask if frame.mask is not None else np.ones(frame.rgb.shape[:2], bool)
        out[i, 3] = cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
        if use_depth and frame.depth is not None:
            depth = cv2.resize(frame.depth, (size, size), interpolation=cv2.INTER_NEAREST)
            valid = depth > 0
            # Depth relative to the cube centre's distance, in cube units: O(1) for any scene.
            centre_distance = np.linalg.norm(frame.camera_to_world[:3, 3] - cube.center)
            out[i, 4] = np.where(valid, (depth - centre_distance) / cube.side, 0.0)
            out[i, 5] = valid
        out[i, 6:12] = plucker_rays(frame, cube, size)
    return out
