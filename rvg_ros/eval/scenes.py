"""Render one evaluation object into a capture folder, plus the views it is judged from.

The folder is what a user's camera would have written (``transforms.json`` via
``CaptureSession``, ``gt_mesh.ply`` beside it), so every backend is evaluated through
``reconstruct_folder``, the path a user takes. With pose noise, frames are rendered from the
true poses and *recorded* with perturbed ones, as a miscalibrated arm would report them.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from rvg_ros.core.geometry import invert_rigid
from rvg_ros.core.poses.align import align_cameras, apply_similarity
from rvg_ros.core.session import CaptureSession
from rvg_ros.core.types import Frame, Intrinsics
from rvg_ros.eval.datasets import EvalObject
from rvg_ros.eval.options import MODALITIES, POSE_ORACLES
from rvg_ros.sim.capture import GT_MESH_NAME, DepthNoise, render_frames, write_gt_mesh
from rvg_ros.sim.views import SAMPLERS, default_intrinsics, fit_radius, orbit, perturb_poses
from rvg_ros.sim.views import sample_views as sample_view_poses

MIN_VIEWS, MAX_VIEWS = 2, 16
# Held-out views orbit at this elevation; the first one looks from straight opposite the
# input views' mean azimuth (the side no input view saw).
HOLDOUT_ELEVATION_DEG = 30.0


@dataclass(frozen=True)
class ViewSpec:
    views: int = 4
    sampler: str = "one-sided"
    image_size: int = 256
    modality: str = "rgbd"
    depth_noise: bool = False
    pose_noise_deg: float = 0.0
    pose_noise_m: float = 0.0
    holdout_views: int = 8
    # A constant camera offset (a hand-eye calibration error), applied to every recorded pose.
    hand_eye_deg: float = 0.0
    hand_eye_m: float = 0.0
    pose_input: str = "tf"  # "none": frames are written without poses
    # Not "off": the perturbed poses are replaced by the true relative poses placed where the
    # perturbed ones are on average (``eval.poses.oracle_poses``): a perfect refinement.
    pose_oracle: str = "off"

    def validate(self) -> None:
        if self.pose_oracle not in POSE_ORACLES:
            raise ValueError(f"pose oracle must be one of {POSE_ORACLES}, got {self.pose_oracle!r}")
        if not MIN_VIEWS <= self.views <= MAX_VIEWS:
            raise ValueError(f"views must be {MIN_VIEWS}-{MAX_VIEWS}, got {self.views}")
        if self.sampler.replace("_", "-") not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; expected one of {SAMPLERS}")
        if self.modality not in MODALITIES:
            raise ValueError(f"unknown modality {self.modality!r}; expected one of {MODALITIES}")
        if self.image_size < 32:
            raise ValueError(f"image size must be at least 32, got {self.image_size}")
        if self.holdout_views < 1:
            raise ValueError("at least one held-out view is needed")


@dataclass
class RenderedCapture:
    folder: Path
    intrinsics: Intrinsics
    true_poses: np.ndarray  # (n, 4, 4) what the camera really did
    holdout_poses: np.ndarray  # (k, 4, 4) judged-from views; [0] faces the unseen side
    input_rgb: list[np.ndarray]

    @property
    def gt_path(self) -> Path:
        return self.folder / GT_MESH_NAME

    @property
    def unseen_pose(self) -> np.ndarray:
        return self.holdout_poses[0]


def object_rng(seed: int, name: str) -> np.random.Generator:
    """Per-object randomness that does not depend on which other objects are evaluated."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def mean_azimuth_deg(poses: np.ndarray, target: np.ndarray) -> float:
    offsets = poses[:, :3, 3] - target
    mean = offsets[:, :2].mean(axis=0)
    return math.degrees(math.atan2(mean[1], mean[0]))


def hand_eye_offset(rng: np.random.Generator, degrees: float, metres: float) -> np.ndarray:
    """A camera-frame offset of exactly ``degrees`` about a random axis and ``metres`` along a
    random direction: what a hand-eye calibration that is off by that much adds to every pose."""
    axis, direction = rng.normal(size=3), rng.normal(size=3)
    offset = np.eye(4)
    offset[:3, :3] = Rotation.from_rotvec(
        axis / np.linalg.norm(axis) * math.radians(degrees)
    ).as_matrix()
    offset[:3, 3] = direction / np.linalg.norm(direction) * metres
    return offset


def oracle_poses(
    true: np.ndarray, recorded: np.ndarray, anchor: str, centre: np.ndarray
) -> np.ndarray:
    """What a perfect refinement of the ``recorded`` (perturbed) poses could give: the true
    relative poses, put where the recorded ones are on average -- the pose graph knows only
    relative poses, so where the rig sits comes from the TF alone.

    ``cameras``: the rigid fit of the true cameras onto the recorded ones that
    ``poses.refine.refine_given`` uses (``align_cameras``). ``object``: the mean of the
    rotations each recorded pose implies and the mean of where each puts the object's
    ``centre`` (anchored at the object instead of the cameras, so a rotation error does not
    act on a lever arm)."""
    if anchor == "cameras":
        back = align_cameras(list(true), list(recorded), with_scale=False)
    elif anchor == "object":
        implied = [r @ invert_rigid(t) for t, r in zip(true, recorded, strict=True)]
        rotation = Rotation.from_matrix([m[:3, :3] for m in implied]).mean().as_matrix()
        placed = np.mean([m[:3, :3] @ centre + m[:3, 3] for m in implied], axis=0)
        back = np.eye(4)
        back[:3, :3] = rotation
        back[:3, 3] = placed - rotation @ centre
    else:
        raise ValueError(f"unknown pose oracle anchor {anchor!r}")
    return np.stack([apply_similarity(back, t) for t in true])


def render_object(obj: EvalObject, spec: ViewSpec, folder: Path, seed: int = 0) -> RenderedCapture:
    """Write ``obj``'s capture folder (and ``gt_mesh.ply``) and return what scoring needs."""
    spec.validate()
    rng = object_rng(seed, obj.name)
    intrinsics = default_intrinsics(spec.image_size, spec.image_size)
    lo, hi = obj.mesh.bounds
    target = (lo + hi) / 2.0
    radius = fit_radius(float(np.linalg.norm(hi - lo)), intrinsics)
    poses = sample_view_poses(spec.sampler, spec.views, radius, rng, target)
    noise = DepthNoise() if spec.depth_noise else None
    frames = render_frames(
        obj.mesh,
        poses,
        intrinsics,
        depth=spec.modality != "rgb",
        masks=spec.modality != "rgbd-unsegmented",
        depth_noise=noise,
        seed=int(rng.integers(2**31)),
    )
    recorded = poses
    if spec.pose_noise_deg > 0 or spec.pose_noise_m > 0:
        recorded = perturb_poses(poses, rng, spec.pose_noise_deg, spec.pose_noise_m)
    if spec.hand_eye_deg > 0 or spec.hand_eye_m > 0:
        recorded = recorded @ hand_eye_offset(rng, spec.hand_eye_deg, spec.hand_eye_m)
    if spec.pose_oracle != "off":
        recorded = oracle_poses(poses, recorded, spec.pose_oracle, target)
    session = CaptureSession(folder)
    if len(session):
        raise ValueError(f"{folder} already holds a capture; use a fresh output folder")
    for frame, pose in zip(frames, recorded, strict=True):
        session.append(
            Frame(
                rgb=frame.rgb,
                intrinsics=frame.intrinsics,
                camera_to_world=pose if spec.pose_input == "tf" else None,
                depth=frame.depth,
                mask=frame.mask,
                stamp=frame.stamp,
                note=frame.note,
            )
        )
    write_gt_mesh(obj.mesh, folder / GT_MESH_NAME)
    behind = mean_azimuth_deg(poses, target) + 180.0
    holdout = orbit(spec.holdout_views, radius, HOLDOUT_ELEVATION_DEG, target, behind)
    return RenderedCapture(
        folder=folder,
        intrinsics=intrinsics,
        true_poses=poses,
        holdout_poses=holdout,
        input_rgb=[f.rgb for f in frames],
    )
