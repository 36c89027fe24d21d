"""Register RGB-D frames against each other with Open3D: pairwise initial alignment (SIFT
matches lifted to 3D by the depth, and FPFH geometric features, each by RANSAC), generalized
ICP from each, then multiway registration (a pose graph, optimised with robust edge pruning),
as in Open3D's multiway-registration pipeline.

Of a pair's ICP results the one kept overlaps most, agrees in colour and, above all, puts no
surface where the other view saw empty space (``free_space_violation``). When the overlap
leaves a rotation nearly unconstrained (a round body: a bowl, a pitcher, a cup), alignments
turned about that axis are tried too (``symmetry_axis``): on a round body the first ICP result
is as often turned about the axis as not, and only a spout, a handle or the texture tells.

Works without texture (FPFH on the geometry) and without any initial pose. The same pairwise
ICP + pose graph refines given poses (``refine.py``) when started from them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import open3d as o3d
from scipy.ndimage import distance_transform_edt, minimum_filter
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import minimum_spanning_tree
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from rvg_ros.core.geometry import invert_rigid, transform_points
from rvg_ros.core.types import Frame

reg = o3d.pipelines.registration

# A pair counts as overlapping when at least this share of the source points finds a partner
# within the ICP distance, with an RMSE below ``MAX_RMSE_VOXELS`` voxels.
MIN_FITNESS = 0.3
MAX_RMSE_VOXELS = 1.2
# ... and the overlapping points agree in chromaticity: at least this share of them, or this
# many times more often than colours paired at random do. Measured on rendered YCB views:
# right alignments agree 0.7-0.92, front-to-back flips of a bottle 0.60-0.66 (about chance).
MIN_COLOUR_AGREEMENT = 0.8
MIN_AGREEMENT_OVER_CHANCE = 1.3
# Colour pairs at random agreeing this often tell nothing (one colour all over).
INFORMATIVE_CHANCE = 0.9
# Minimum lifted SIFT matches worth a RANSAC.
MIN_FEATURE_MATCHES = 8
# Free-space violation (share of a view's points the other view saw through) that halves a
# candidate's score; a right alignment of rendered YCB views violates 0.000 (measured on the
# pitcher), one turned about the pitcher's axis 0.012-0.09 (its spout and handle).
VIOLATION_SCALE = 0.004
# A point violates free space when it is this many voxels in front of the measured depth.
VIOLATION_TOLERANCE_VOXELS = 1.0
# A pair whose best alignment still violates more than this is not trusted as an edge.
MAX_VIOLATION = 0.02
# The same for a pair refined from given (TF) poses. Started near the truth, what goes wrong is
# gross -- ICP matched opposite faces of a box, 0.50-0.63 -- while with depth noise right
# alignments of the small cups at close range reached 0.03 (8 one-sided views).
MAX_VIOLATION_REFINED = 0.1
# Background pixels nearer than this to the object (px) are not counted as seen empty (edges).
EDGE_PX = 2.0
# Symmetry search: the weakest constrained motion, if a rotation, with information below this
# share of the strongest, gets alignments turned about it in steps of ``SYMMETRY_STEP_DEG``;
# the ``SYMMETRY_REFINE`` best are polished by ICP.
SYMMETRY_SHARE = 0.05
SYMMETRY_STEP_DEG = 15.0
SYMMETRY_REFINE = 3
# A turned alignment must score this many times the first one to replace it.
SYMMETRY_MARGIN = 1.03
# ... and be turned at least this far from it (degrees).
SYMMETRY_MIN_TURN_DEG = 10.0
# A turn is ambiguous when an alignment turned at least ``AMBIGUITY_MIN_DEG`` from the best
# scores within ``AMBIGUITY`` of it.
AMBIGUITY = 0.03
AMBIGUITY_MIN_DEG = 45.0


@dataclass
class FrameCloud:
    """One frame's object points in its camera frame, downsampled, with normals, colours, FPFH
    features and SIFT keypoints lifted to 3D."""

    cloud: o3d.geometry.PointCloud
    fpfh: o3d.pipelines.registration.Feature
    keypoints: np.ndarray  # (K, 3) camera frame
    descriptors: np.ndarray  # (K, 128) float32
    # For free-space tests: the nearest depth around each pixel (inf off the object) and the
    # pixels seen as background (off the object by more than ``EDGE_PX``); None without a mask.
    near_depth: np.ndarray | None = None
    background: np.ndarray | None = None
    intrinsics: object = None


@dataclass
class PairResult:
    source: int
    target: int
    transformation: np.ndarray  # target_from_source (camera frames)
    fitness: float
    rmse: float
    agreement: float
    chance: float
    information: np.ndarray
    check_colour: bool = True  # colour (off when refining given poses; free space always)
    violation: float = 0.0  # free-space violation, mean of both directions
    # The overlap, colour and free space judge alignments turned far about the pair's weakly
    # constrained axis alike: the relative turn is unobservable (a plain bowl).
    ambiguous_turn: bool = False

    @property
    def ok(self) -> bool:
        if self.fitness < MIN_FITNESS:
            return False
        if self.violation > (MAX_VIOLATION if self.check_colour else MAX_VIOLATION_REFINED):
            return False
        if not self.check_colour:
            return True
        return (
            self.agreement >= MIN_COLOUR_AGREEMENT
            or self.agreement >= MIN_AGREEMENT_OVER_CHANCE * self.chance
        )

    @property
    def score(self) -> float:
        return candidate_score(self.fitness, self.agreement, self.violation)

    @property
    def tree_score(self) -> float:
        """The score with the colour agreement measured above chance (when colour can tell at
        all): for the spanning tree, where an alike-looking wrong turn must lose to a right
        pair of smaller overlap."""
        if self.chance >= INFORMATIVE_CHANCE:
            return self.score
        above = np.clip((self.agreement - self.chance) / (1.0 - self.chance), 0.0, 1.0)
        return candidate_score(self.fitness, float(above), self.violation)


def candidate_score(fitness: float, agreement: float, violation: float) -> float:
    """Overlap times colour agreement, halved for every ``VIOLATION_SCALE`` of free-space
    violation: a spout seen through outweighs any overlap gained by turning a round body."""
    return fitness * agreement * 0.5 ** (violation / VIOLATION_SCALE)


def object_pixels(frame: Frame) -> np.ndarray:
    """Valid depth pixels of the object (inside the mask when there is one)."""
    if frame.depth is None:
        raise ValueError("depth registration needs depth")
    valid = frame.depth > 0
    if frame.mask is not None:
        valid &= frame.mask
    return valid


def camera_points(frame: Frame, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Camera-frame points and colours (0..1) of the ``valid`` pixels."""
    k = frame.intrinsics
    v, u = np.nonzero(valid)
    z = frame.depth[v, u].astype(np.float64)
    points = np.stack([(u - k.cx) * z / k.fx, (v - k.cy) * z / k.fy, z], axis=1)
    return points, frame.rgb[v, u].astype(np.float64) / 255.0


def voxel_size_for(frames: list[Frame]) -> float:
    """A registration voxel from the object's size in the first frame: about 1/50 of its
    diagonal, within 2 mm .. 2 cm."""
    points, _ = camera_points(frames[0], object_pixels(frames[0]))
    if len(points) < 10:
        return 0.005
    diagonal = float(np.linalg.norm(np.percentile(points, 98, 0) - np.percentile(points, 2, 0)))
    return float(np.clip(diagonal / 50.0, 0.002, 0.02))


def _sift(frame: Frame, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SIFT on the 2x-upsampled grey image within the object; keypoints lifted by the depth."""
    scale = 2
    grey = cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2GRAY)
    grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    mask = cv2.resize(valid.astype(np.uint8) * 255, grey.shape[::-1], cv2.INTER_NEAREST)
    keypoints, descriptors = cv2.SIFT_create(contrastThreshold=0.02).detectAndCompute(grey, mask)
    if descriptors is None or not keypoints:
        return np.zeros((0, 3)), np.zeros((0, 128), np.float32)
    uv = np.array([kp.pt for kp in keypoints]) / scale - 0.5 * (1 - 1 / scale)
    ui = np.clip(np.round(uv[:, 0]).astype(int), 0, frame.intrinsics.width - 1)
    vi = np.clip(np.round(uv[:, 1]).astype(int), 0, frame.intrinsics.height - 1)
    z = frame.depth[vi, ui].astype(np.float64)
    keep = (z > 0) & valid[vi, ui]
    k = frame.intrinsics
    pts = np.stack([(uv[:, 0] - k.cx) * z / k.fx, (uv[:, 1] - k.cy) * z / k.fy, z], axis=1)[keep]
    return pts, descriptors[keep]


def prepare_cloud(frame: Frame, voxel: float) -> FrameCloud:
    valid = object_pixels(frame)
    points, colours = camera_points(frame, valid)
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    pcd.colors = o3d.utility.Vector3dVector(colours)
    pcd = pcd.voxel_down_sample(voxel)
    pcd.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=2.5 * voxel, max_nn=30))
    # Normals towards the camera (at the origin): ICP and FPFH need consistent sides.
    pcd.orient_normals_towards_camera_location(np.zeros(3))
    fpfh = reg.compute_fpfh_feature(
        pcd, o3d.geometry.KDTreeSearchParamHybrid(radius=5.0 * voxel, max_nn=100)
    )
    keypoints, descriptors = _sift(frame, valid)
    near_depth = minimum_filter(np.where(valid, frame.depth, np.inf), size=5)
    background = distance_transform_edt(~valid) > EDGE_PX if frame.mask is not None else None
    return FrameCloud(pcd, fpfh, keypoints, descriptors, near_depth, background, frame.intrinsics)


def free_space_violation(
    src: FrameCloud, tgt: FrameCloud, transformation: np.ndarray, tolerance: float
) -> float:
    """Share of the source points (moved into the target camera) that the target camera saw
    through: clearly in front of every depth it measured around that pixel, or on background
    away from the object's edge (only with a mask). A right alignment has next to none; one
    that matches a round body turned about its axis puts the spout or the handle where the
    other view saw empty space."""
    if tgt.near_depth is None or tgt.intrinsics is None:
        return 0.0
    cam = transform_points(transformation, np.asarray(src.cloud.points))
    cam = cam[cam[:, 2] > 1e-6]
    if len(cam) == 0:
        return 0.0
    k = tgt.intrinsics
    u = np.round(k.fx * cam[:, 0] / cam[:, 2] + k.cx).astype(int)
    v = np.round(k.fy * cam[:, 1] / cam[:, 2] + k.cy).astype(int)
    inside = (u >= 0) & (u < k.width) & (v >= 0) & (v < k.height)
    if not inside.any():
        return 0.0
    u, v, z = u[inside], v[inside], cam[inside, 2]
    near = tgt.near_depth[v, u]
    violated = np.isfinite(near) & (z < near - tolerance)
    if tgt.background is not None:
        violated |= tgt.background[v, u]
    return float(violated.sum() / len(cam))


def symmetry_axis(
    src: FrameCloud, tgt: FrameCloud, transformation: np.ndarray, voxel: float
) -> tuple[np.ndarray, np.ndarray] | None:
    """(direction, point) of the rotation, in the target camera frame, that the overlap of the
    aligned clouds constrains least, when it constrains it weakly (a round body); else None."""
    info = plane_information(src, tgt, transformation, voxel)
    points = np.asarray(tgt.cloud.points)
    if len(points) < 10 or not np.any(info):
        return None
    to_metres = _to_metres(points)
    values, vectors = np.linalg.eigh(to_metres.T @ info @ to_metres)
    if values[0] > SYMMETRY_SHARE * values[-1]:
        return None
    weakest = vectors[:, 0]
    if np.linalg.norm(weakest[:3]) < 0.7:  # mostly a translation: not a turn about an axis
        return None
    twist = to_metres @ weakest  # about the camera origin: (omega, v), v = p x omega
    omega, shift = twist[:3], twist[3:]
    norm = float(np.linalg.norm(omega))
    if norm < 1e-12:
        return None
    direction = omega / norm
    point = np.cross(direction, shift / norm)  # the axis point nearest the origin
    return direction, point


def plane_information(
    src: FrameCloud, tgt: FrameCloud, transformation: np.ndarray, voxel: float
) -> np.ndarray:
    """Point-to-plane information (6x6, Open3D's twist order: rotation, then translation, about
    the target camera's origin) of the aligned overlap. Unlike Open3D's point-to-point
    information it is (near) singular for the motions a surface does not constrain: a turn of
    a round body about its axis slides every point along its own surface."""
    moved = transform_points(transformation, np.asarray(src.cloud.points))
    target_points = np.asarray(tgt.cloud.points)
    if len(moved) == 0 or len(target_points) == 0:
        return np.zeros((6, 6))
    distance, index = cKDTree(target_points).query(moved, distance_upper_bound=1.5 * voxel)
    index = index[np.isfinite(distance)]
    if len(index) == 0:
        return np.zeros((6, 6))
    points, normals = target_points[index], np.asarray(tgt.cloud.normals)[index]
    jacobian = np.concatenate([np.cross(points, normals), normals], axis=1)
    return jacobian.T @ jacobian


def _to_metres(points: np.ndarray) -> np.ndarray:
    """Open3D's twist (rotation, translation about the camera origin) from one about the
    points' centroid with rotations scaled by the object's size, so that the information of
    rotations and translations compares in metres (see ``constrained_update``)."""
    centre = points.mean(axis=0)
    cross = np.array(
        [[0.0, -centre[2], centre[1]], [centre[2], 0.0, -centre[0]], [-centre[1], centre[0], 0.0]]
    )
    about_centre = np.eye(6)
    about_centre[3:, :3] = cross  # origin twist = about_centre @ (rotation, centroid shift)
    size = float(np.linalg.norm(points.std(axis=0))) or 1.0
    scale = np.diag([1.0 / size] * 3 + [1.0] * 3)
    return about_centre @ scale


def turned(transformation: np.ndarray, axis: tuple[np.ndarray, np.ndarray], deg: float):
    """``transformation`` followed by a turn of ``deg`` about ``axis`` (target frame)."""
    direction, point = axis
    turn = np.eye(4)
    turn[:3, :3] = Rotation.from_rotvec(np.radians(deg) * direction).as_matrix()
    turn[:3, 3] = point - turn[:3, :3] @ point
    return turn @ np.asarray(transformation)


def _feature_candidate(
    src: FrameCloud, tgt: FrameCloud, voxel: float, seed: int
) -> np.ndarray | None:
    """target_from_source from SIFT matches lifted to 3D, by RANSAC; None if too few."""
    if len(src.descriptors) < MIN_FEATURE_MATCHES or len(tgt.descriptors) < MIN_FEATURE_MATCHES:
        return None
    matches = cv2.BFMatcher().knnMatch(src.descriptors, tgt.descriptors, k=2)
    good = [m[0] for m in matches if len(m) == 2 and m[0].distance < 0.85 * m[1].distance]
    if len(good) < MIN_FEATURE_MATCHES:
        return None
    corres = np.array([[m.queryIdx, m.trainIdx] for m in good], dtype=np.int32)
    source = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(src.keypoints))
    target = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(tgt.keypoints))
    o3d.utility.random.seed(seed)
    result = reg.registration_ransac_based_on_correspondence(
        source, target, o3d.utility.Vector2iVector(corres), 1.5 * voxel,
        reg.TransformationEstimationPointToPoint(False), 3,
        [reg.CorrespondenceCheckerBasedOnEdgeLength(0.9)],
        reg.RANSACConvergenceCriteria(20000, 0.999),
    )  # fmt: skip
    inliers = len(result.correspondence_set)
    return result.transformation if inliers >= max(5, MIN_FEATURE_MATCHES // 2) else None


def _fpfh_candidate(src: FrameCloud, tgt: FrameCloud, voxel: float, seed: int) -> np.ndarray:
    o3d.utility.random.seed(seed)
    result = reg.registration_ransac_based_on_feature_matching(
        src.cloud, tgt.cloud, src.fpfh, tgt.fpfh, True, 1.5 * voxel,
        reg.TransformationEstimationPointToPoint(False), 3,
        [reg.CorrespondenceCheckerBasedOnEdgeLength(0.9),
         reg.CorrespondenceCheckerBasedOnDistance(1.5 * voxel)],
        reg.RANSACConvergenceCriteria(20000, 0.999),
    )  # fmt: skip
    return result.transformation


def icp(
    src: FrameCloud,
    tgt: FrameCloud,
    init: np.ndarray,
    voxel: float,
    max_distance: float,
    max_change: tuple[float, float] | None = None,
) -> tuple[np.ndarray, float, float]:
    """Coarse-to-fine generalized ICP; (target_from_source, fitness, rmse) at the finest level.

    Generalized (plane-to-plane) ICP, not colored ICP: with a headlight the shading of a surface
    changes from view to view, and colored ICP was seen to slide 20 cm away from the true pose
    of two views 45 degrees apart. Colour is used instead to tell apart geometrically alike
    candidates (``colour_agreement``).
    """
    transformation = np.asarray(init, dtype=np.float64)
    before = reg.evaluate_registration(src.cloud, tgt.cloud, 1.5 * voxel, transformation)
    for distance in (max(max_distance, 1.5 * voxel), 1.5 * voxel):
        result = reg.registration_generalized_icp(
            src.cloud, tgt.cloud, distance, transformation,
            reg.TransformationEstimationForGeneralizedICP(),
            reg.ICPConvergenceCriteria(1e-6, 1e-6, 30),
        )  # fmt: skip
        transformation = result.transformation
    if max_change is not None:
        transformation = constrained_update(src, tgt, init, transformation, voxel)
    final = reg.evaluate_registration(src.cloud, tgt.cloud, 1.5 * voxel, transformation)
    if max_change is not None:
        # Moving further than a pose may be corrected means ICP slid: on a symmetric surface (a
        # sphere, a can) it follows the motions the shape does not constrain, to overlap more.
        # Keep the initial guess, judged as it is.
        delta = invert_rigid(np.asarray(init)) @ transformation
        metres = float(np.linalg.norm(delta[:3, 3]))
        angle = float(np.degrees(np.arccos(np.clip((np.trace(delta[:3, :3]) - 1) / 2, -1, 1))))
        if metres > max_change[0] or angle > max_change[1]:
            return np.asarray(init, np.float64), float(before.fitness), float(before.inlier_rmse)
    return transformation, float(final.fitness), float(final.inlier_rmse)


# Directions of motion whose (size-normalised) information is below this share of the best
# constrained one are treated as unobservable by the surfaces (degeneracy-aware ICP).
DEGENERATE_SHARE = 0.03
# The same for the point-to-plane information, which also sees the slide of a surface along
# itself (a turn of a round body about its axis, which point-to-point information does not).
# Measured on the trusted pairs of 8 one-sided views with 2 deg / 1 cm TF noise: the cups'
# pairs that ICP turned by 6-19 deg 0.0008-0.0009; every pair of the cracker box (its largest
# face alone in view) 0.0029 or more, of the banana 0.011 or more. Hence 0.0015, a factor of
# two from both.
DEGENERATE_SHARE_PLANE = 0.0015


def point_to_plane_information(
    src: FrameCloud, tgt: FrameCloud, transformation: np.ndarray, voxel: float
) -> np.ndarray:
    """6x6 information (Open3D's order: rotation, translation about the target camera's
    origin) of the point-to-plane distances of the aligned overlap: rows (q x n, n) for each
    correspondence's target point q and normal n. Open3D offers only the point-to-point one."""
    result = reg.evaluate_registration(src.cloud, tgt.cloud, 1.5 * voxel, transformation)
    pairs = np.asarray(result.correspondence_set)
    if len(pairs) == 0 or not tgt.cloud.has_normals():
        return np.zeros((6, 6))
    q = np.asarray(tgt.cloud.points)[pairs[:, 1]]
    n = np.asarray(tgt.cloud.normals)[pairs[:, 1]]
    rows = np.concatenate([np.cross(q, n), n], axis=1)
    return rows.T @ rows


def constrained_update(
    src: FrameCloud, tgt: FrameCloud, init: np.ndarray, result: np.ndarray, voxel: float
) -> np.ndarray:
    """The ICP update from ``init`` to ``result`` restricted to the motions the overlapping
    surfaces constrain (Zhang, Kaess, Singh 2016: degeneracy in optimisation-based state
    estimation). On a cylinder or sphere, ICP from a good initial pose otherwise slides along
    the free rotation to overlap more, which turns exact poses into wrong ones."""
    info = np.asarray(
        reg.get_information_matrix_from_point_clouds(src.cloud, tgt.cloud, 1.5 * voxel, result)
    )
    points = np.asarray(tgt.cloud.points)
    if len(points) < 10 or not np.any(info):
        return np.asarray(init, dtype=np.float64)
    # Open3D's parameters: rotation (rx, ry, rz) then translation, about the target camera's
    # origin. Re-expressed about the points' centroid (else a rotation is mostly a translation
    # at the object's distance), rotations scaled by the object's size to compare in metres.
    to_metres = _to_metres(points)
    values, vectors = np.linalg.eigh(to_metres.T @ info @ to_metres)
    good = vectors[:, values >= DEGENERATE_SHARE * values.max()]
    plane = to_metres.T @ point_to_plane_information(src, tgt, result, voxel) @ to_metres
    values, vectors = np.linalg.eigh(plane)
    weak = vectors[:, values < DEGENERATE_SHARE_PLANE * max(float(values.max()), 1e-12)]
    delta = np.asarray(result) @ invert_rigid(np.asarray(init))  # result = delta @ init
    twist = np.concatenate([Rotation.from_matrix(delta[:3, :3]).as_rotvec(), delta[:3, 3]])
    # Keep the constrained part of the update, then take out what the surfaces let slide.
    normalised = good @ good.T @ np.linalg.inv(to_metres) @ twist
    kept = to_metres @ (normalised - weak @ (weak.T @ normalised))
    update = np.eye(4)
    update[:3, :3] = Rotation.from_rotvec(kept[:3]).as_matrix()
    update[:3, 3] = kept[3:]
    return update @ np.asarray(init, dtype=np.float64)


def colour_agreement(
    src: FrameCloud, tgt: FrameCloud, transformation: np.ndarray, voxel: float
) -> tuple[float, float]:
    """Share of the overlapping points whose chromaticity matches (shading-invariant), and the
    share expected by chance (the same colours paired at random): a front and a back that look
    alike in shape (a bottle, a can) rarely look alike in colour."""
    result = reg.evaluate_registration(src.cloud, tgt.cloud, 1.5 * voxel, transformation)
    corres = np.asarray(result.correspondence_set)
    if len(corres) == 0:
        return 0.0, 0.0
    a = np.asarray(src.cloud.colors)[corres[:, 0]]
    b = np.asarray(tgt.cloud.colors)[corres[:, 1]]
    chroma_a = a / (a.sum(axis=1, keepdims=True) + 0.05)
    chroma_b = b / (b.sum(axis=1, keepdims=True) + 0.05)
    agree = float(np.mean(np.abs(chroma_a - chroma_b).sum(axis=1) < 0.12))
    shuffled = chroma_b[np.random.default_rng(0).permutation(len(chroma_b))]
    chance = float(np.mean(np.abs(chroma_a - shuffled).sum(axis=1) < 0.12))
    return agree, chance


def _pair(
    i: int,
    j: int,
    clouds: list[FrameCloud],
    inits: list[np.ndarray],
    voxel: float,
    max_distance: float,
    check_colour: bool = True,
    max_change: tuple[float, float] | None = None,
) -> PairResult:
    """Best ICP over the initial guesses: target i, source j. From scratch (``check_colour``),
    judged by overlap, colour and free space, with alignments turned about a weakly constrained
    axis tried too; from given poses, by overlap and free space. (Free space matters there too:
    with views 45 degrees apart, pairwise ICP from TF poses 2 cm off matched the opposite faces
    of a box, 4-11 cm from the truth with 40-50 % overlap, while the other view had seen
    through 50-63 % of the moved points; right alignments 0.000.)"""
    src, tgt = clouds[j], clouds[i]
    tolerance = VIOLATION_TOLERANCE_VOXELS * voxel

    def judge(transformation: np.ndarray, fitness: float) -> tuple[float, float, float, float]:
        """(score, agreement, chance, violation) of an alignment."""
        agreement, chance = colour_agreement(src, tgt, transformation, voxel)
        violation = 0.5 * (
            free_space_violation(src, tgt, transformation, tolerance)
            + free_space_violation(tgt, src, invert_rigid(transformation), tolerance)
        )
        if not check_colour:
            return fitness * agreement, agreement, chance, violation
        return candidate_score(fitness, agreement, violation), agreement, chance, violation

    best: Candidate | None = None
    for init in inits:
        transformation, fitness, rmse = icp(src, tgt, init, voxel, max_distance, max_change)
        score, agreement, chance, violation = judge(transformation, fitness)
        if best is None or score > best[0]:
            best = (score, transformation, fitness, rmse, agreement, chance, violation)
    assert best is not None
    ambiguous = False
    if check_colour and max_change is None:
        axis = symmetry_axis(src, tgt, best[1], voxel)
        if axis is not None:
            best, ambiguous = _turned_candidates(src, tgt, best, axis, voxel, max_distance, judge)
    _, transformation, fitness, rmse, agreement, chance, violation = best
    if rmse > MAX_RMSE_VOXELS * voxel:
        fitness = 0.0
    info = reg.get_information_matrix_from_point_clouds(
        src.cloud, tgt.cloud, 1.5 * voxel, transformation
    )
    # A symmetric surface (a sphere, a can) leaves some motions unconstrained: the information
    # is singular there and the pose graph would drift freely along them. A small isotropic
    # term keeps the measured relative pose (i.e. the initial one) in those directions.
    info = info + 0.01 * max(float(np.trace(info)) / 6.0, 1.0) * np.eye(6)
    return PairResult(
        j, i, transformation, fitness, rmse, agreement, chance, info, check_colour, violation,
        ambiguous,
    )  # fmt: skip


Candidate = tuple[float, np.ndarray, float, float, float, float, float]
# (score, transformation, fitness, rmse, agreement, chance, violation)


def _turned_candidates(
    src: FrameCloud,
    tgt: FrameCloud,
    best: Candidate,
    axis: tuple[np.ndarray, np.ndarray],
    voxel: float,
    max_distance: float,
    judge: Callable[[np.ndarray, float], tuple[float, float, float, float]],
) -> tuple[Candidate, bool]:
    """The best of ``best`` and the alignments turned about ``axis``: a full turn in coarse
    steps, the most promising refined by halving the step, then polished by ICP (and, as ICP
    slides freely about such an axis, also the polished one turned back by what ICP turned).
    Also whether the turn is ambiguous: a coarse turn far from the best scores as well."""

    def quick(deg: float) -> tuple[float, float]:
        guess = turned(best[1], axis, deg)
        fitness = reg.evaluate_registration(src.cloud, tgt.cloud, 1.5 * voxel, guess).fitness
        return judge(guess, float(fitness))[0], deg

    coarse = sorted(
        (quick(float(d)) for d in np.arange(0.0, 360.0 - 1e-6, SYMMETRY_STEP_DEG)), reverse=True
    )
    top_score, top_deg = coarse[0]
    ambiguous = any(
        score >= (1.0 - AMBIGUITY) * top_score
        and abs((deg - top_deg + 180.0) % 360.0 - 180.0) >= AMBIGUITY_MIN_DEG
        for score, deg in coarse[1:]
    )
    original, first = best[0], best[1]
    for score, deg in coarse[:SYMMETRY_REFINE]:
        step = SYMMETRY_STEP_DEG / 2
        while step >= 0.5:  # ties keep the current angle
            score, deg = max([(score, deg), quick(deg - step), quick(deg + step)], key=_first)
            step /= 2
        guess = turned(best[1], axis, deg)
        polished, fitness, rmse = icp(src, tgt, guess, voxel, max_distance)
        delta = polished @ invert_rigid(guess)
        slid = float(np.degrees(Rotation.from_matrix(delta[:3, :3]).as_rotvec() @ axis[0]))
        score, agreement, chance, violation = judge(polished, fitness)
        found = (score, polished, fitness, rmse, agreement, chance, violation)
        back = turned(polished, axis, -slid)
        result = reg.evaluate_registration(src.cloud, tgt.cloud, 1.5 * voxel, back)
        fitness, rmse = float(result.fitness), float(result.inlier_rmse)
        score, agreement, chance, violation = judge(back, fitness)
        if score > SYMMETRY_MARGIN * found[0]:  # ICP slid off what the colour had found
            found = (score, back, fitness, rmse, agreement, chance, violation)
        # Only a clearly better, clearly different turn replaces the first alignment: near
        # the right one the overlap can grow a little by sliding a few degrees (a banana),
        # and a shape that does constrain the turn (a spout) is left to ICP.
        change = found[1] @ invert_rigid(first)
        angle = float(np.degrees(Rotation.from_matrix(change[:3, :3]).magnitude()))
        if (
            found[0] > SYMMETRY_MARGIN * original
            and found[0] > best[0]
            and angle >= SYMMETRY_MIN_TURN_DEG
        ):
            best = found
    return best, ambiguous


def _first(candidate: tuple[float, float]) -> float:
    return candidate[0]


def optimise_pose_graph(
    n: int, pairs: list[PairResult], initial: dict[int, np.ndarray], voxel: float, reference: int
) -> dict[int, np.ndarray]:
    """Open3D global optimisation (Levenberg-Marquardt, robust pruning of wrong edges) of the
    camera-to-reference poses of the nodes in ``initial``; returns the optimised poses."""
    graph = reg.PoseGraph()
    nodes = sorted(initial)
    index = {node: k for k, node in enumerate(nodes)}
    for node in nodes:
        graph.nodes.append(reg.PoseGraphNode(initial[node]))
    for p in pairs:
        if p.ok and p.source in index and p.target in index:
            graph.edges.append(
                reg.PoseGraphEdge(
                    index[p.source], index[p.target], p.transformation, p.information,
                    uncertain=True,
                )
            )  # fmt: skip
    option = reg.GlobalOptimizationOption(
        max_correspondence_distance=1.5 * voxel,
        edge_prune_threshold=0.25,
        reference_node=index[reference],
    )
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        reg.global_optimization(
            graph,
            reg.GlobalOptimizationLevenbergMarquardt(),
            reg.GlobalOptimizationConvergenceCriteria(),
            option,
        )
    del n
    return {node: np.asarray(graph.nodes[index[node]].pose) for node in nodes}


@dataclass
class DepthRegistration:
    """Camera-to-first-camera poses (metres) of the frames registered to frame 0, the pairs
    tried, and a reason for every frame left out."""

    poses: dict[int, np.ndarray]
    pairs: list[PairResult]
    dropped: dict[int, str]
    voxel: float

    @property
    def ambiguous_share(self) -> float:
        """Share of the trusted pairs whose relative turn about a round body's axis nothing
        in the views tells (a plain bowl): the poses are then known only up to such turns,
        though the surfaces still fit together (the reconstruction in the first camera's frame
        is right)."""
        trusted = [p for p in self.pairs if p.ok]
        return sum(p.ambiguous_turn for p in trusted) / len(trusted) if trusted else 0.0


def spanning_tree_poses(
    pairs: list[PairResult], n: int, root: int, score: Callable[[PairResult], float]
) -> tuple[dict[int, np.ndarray], set[tuple[int, int]]]:
    """Camera-to-``root`` poses of the nodes the maximum spanning tree of ``pairs`` (by
    ``score``, in [0, 1]) reaches from ``root``, chained along it, and the tree's pairs as
    (target, source)."""
    weight = np.zeros((n, n))
    for p in pairs:
        # Higher score, lower weight: a minimum spanning tree of 2 - score (0 means no edge).
        weight[p.target, p.source] = weight[p.source, p.target] = 2.0 - score(p)
    tree = minimum_spanning_tree(csr_matrix(weight)).toarray()
    tree = (tree + tree.T) > 0
    by_key = {(p.target, p.source): p for p in pairs}
    poses = {root: np.eye(4)}
    stack = [root]
    while stack:
        a = stack.pop()
        for b in np.nonzero(tree[a])[0]:
            b = int(b)
            if b in poses:
                continue
            if (a, b) in by_key:  # target a, source b: cam_a_from_cam_b
                poses[b] = poses[a] @ by_key[(a, b)].transformation
            else:
                poses[b] = poses[a] @ invert_rigid(by_key[(b, a)].transformation)
            stack.append(b)
    return poses, {key for key in by_key if tree[key]}


def register_depth(frames: list[Frame], seed: int = 0) -> DepthRegistration:
    """Register every frame to every other from scratch; poses relative to frame 0."""
    n = len(frames)
    voxel = voxel_size_for(frames)
    clouds = [prepare_cloud(f, voxel) for f in frames]
    pairs = []
    for i in range(n):
        for j in range(i + 1, n):
            inits = [_fpfh_candidate(clouds[j], clouds[i], voxel, seed)]
            feature = _feature_candidate(clouds[j], clouds[i], voxel, seed)
            if feature is not None:
                inits.append(feature)
            pairs.append(_pair(i, j, clouds, inits, voxel, 2.0 * voxel))
    # The most overlapping pairs form a spanning tree that gives every node its initial pose.
    trusted = [p for p in pairs if p.ok]
    poses, _ = spanning_tree_poses(trusted, n, 0, lambda p: p.tree_score)
    dropped = {
        i: "its depth overlaps no registered frame (no pair passed ICP)"
        for i in range(n)
        if i not in poses
    }
    if len(poses) > 1:
        poses = optimise_pose_graph(n, pairs, poses, voxel, reference=0)
    return DepthRegistration(poses=poses, pairs=pairs, dropped=dropped, voxel=voxel)
