"""Camera poses for a capture: estimate them when frames are unposed, refine them when given.

Entry point: ``prepare_poses(frames, settings, seed)`` returns the frames to reconstruct from
(each with its final camera-to-world pose; unregistrable or rejected frames left out) and a
``PoseReport`` saying what was done to every frame and why.

Frames and scale:
- all frames posed (TF): the world frame of the poses, metric; with depth (and refinement on)
  the poses are refined against each other, bounded by a maximum correction;
- none posed: the **first registered frame's camera coordinates** (OpenCV axes: x right,
  y down, z forward), metric when the frames have depth, otherwise up to scale
  (``metric_scale`` false);
- some posed: the unposed frames are registered into the posed frames' world (a similarity
  from the cameras both sets share), metric when there is depth or two posed frames.

Methods: structure from motion (pycolmap, needs texture) and, with depth, depth registration
(Open3D ICP + pose graph, works without texture). With depth both run (SfM scaled by the depth
and polished by ICP) and the one whose poses agree best with the depth and colour
(``quality.depth_consistency`` times the share of frames registered) is kept; the report says
which.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from rvg_ros.core.geometry import invert_rigid
from rvg_ros.core.poses.align import (
    align_cameras,
    apply_similarity,
    pose_difference,
    robust_scale,
    similarity_matrix,
)
from rvg_ros.core.poses.depth_registration import register_depth, voxel_size_for
from rvg_ros.core.poses.quality import depth_consistency
from rvg_ros.core.poses.refine import refine_given
from rvg_ros.core.poses.sfm import SfmResult, run_sfm
from rvg_ros.core.types import Frame, ReconstructionError

REFINE_CHOICES = ("auto", "on", "off")
METHOD_CHOICES = ("auto", "sfm", "depth")
NO_TEXTURE_MESSAGE = (
    "pose estimation failed: structure from motion registered {registered} of {total} frames "
    "(the object shows too little texture to match features) and the frames have no depth to "
    "register instead; give camera poses (TF) or use an RGB-D camera"
)


@dataclass
class PoseSettings:
    """How poses are obtained. ``refine``: on | off | auto (= on when every frame has depth).

    Off by default: on exact poses, refinement of 4 orbiting RGB-D views moved cameras by up
    to 6.6 mm / 1.7 degrees (see docs/results.md), more than good TF is off by."""

    refine: str = "off"
    max_correction_m: float = 0.05
    max_correction_deg: float = 10.0
    method: str = "auto"

    def validate(self) -> None:
        if self.refine not in REFINE_CHOICES:
            raise ValueError(f"refine must be one of {REFINE_CHOICES}, got {self.refine!r}")
        if self.method not in METHOD_CHOICES:
            raise ValueError(f"pose method must be one of {METHOD_CHOICES}, got {self.method!r}")
        if self.max_correction_m <= 0 or self.max_correction_deg <= 0:
            raise ValueError("maximum pose corrections must be positive")


@dataclass
class FramePose:
    """What happened to one input frame's pose."""

    status: str  # given | refined | estimated | dropped
    reason: str = ""
    correction_m: float | None = None
    correction_deg: float | None = None
    tf_pose: np.ndarray | None = None  # the pose the frame came with (None: unposed)
    pose: np.ndarray | None = None  # the pose used (None: dropped)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"status": self.status}
        if self.reason:
            out["reason"] = self.reason
        if self.correction_m is not None:
            out["correction_m"] = round(self.correction_m, 6)
            out["correction_deg"] = round(float(self.correction_deg or 0.0), 4)
        return out


@dataclass
class PoseReport:
    method: str  # given | refined | sfm | depth
    metric_scale: bool
    frame: str  # "world" | "first camera (frame N)"
    frames: list[FramePose]
    quality: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def dropped(self) -> dict[int, str]:
        return {i: f.reason for i, f in enumerate(self.frames) if f.status == "dropped"}

    def summary(self) -> dict[str, object]:
        """Scalars for result.json extras and logs."""
        kept = sum(f.status != "dropped" for f in self.frames)
        out: dict[str, object] = {
            "pose_method": self.method,
            "pose_frame": self.frame,
            "pose_frames_used": kept,
            "pose_frames_dropped": len(self.frames) - kept,
            "pose_seconds": round(self.seconds, 3),
        }
        for k, v in self.quality.items():
            out[f"pose_quality_{k}"] = round(float(v), 4)
        return out

    def to_json(self) -> dict[str, object]:
        return {
            **self.summary(),
            "metric_scale": self.metric_scale,
            "frames": [f.to_json() for f in self.frames],
        }


def _wants_refinement(frames: list[Frame], settings: PoseSettings) -> bool:
    with_depth = all(f.depth is not None for f in frames)
    if settings.refine == "on" and not with_depth:
        raise ReconstructionError("pose refinement needs depth in every frame (refine=on)")
    return settings.refine == "on" or (settings.refine == "auto" and with_depth)


def _sfm_candidate(frames: list[Frame], seed: int) -> tuple[dict[int, np.ndarray], SfmResult, bool]:
    """SfM poses; with depth, scaled to metres (median of measured depth over SfM depth of the
    triangulated points, a robust similarity whose rotation and translation SfM already
    fixes). Returns (poses, raw result, metric)."""
    result = run_sfm(frames, seed=seed)
    if not result.poses or any(f.depth is None for f in frames):
        return result.poses, result, False
    ratios = []
    for i, (uv, xyz) in result.observations.items():
        cam = (xyz - result.poses[i][:3, 3]) @ result.poses[i][:3, :3]
        ui = np.clip(np.round(uv[:, 0]).astype(int), 0, frames[i].intrinsics.width - 1)
        vi = np.clip(np.round(uv[:, 1]).astype(int), 0, frames[i].intrinsics.height - 1)
        measured = frames[i].depth[vi, ui]
        ratios.append(np.where(measured > 0, measured / np.maximum(cam[:, 2], 1e-9), np.nan))
    scale = robust_scale(np.concatenate(ratios)) if ratios else None
    if scale is None:
        return {}, result, False
    sim = similarity_matrix(scale, np.eye(3), np.zeros(3))
    scaled = {i: apply_similarity(sim, p) for i, p in result.poses.items()}
    if len(scaled) >= 2:
        # Polish on the depth (SfM on small views is good to a few millimetres at best).
        refined = refine_given(frames, scaled, 0.05, 10.0, seed)
        scaled = {i: refined.poses.get(i, p) for i, p in scaled.items()}
    return scaled, result, True


def _to_first_camera(poses: dict[int, np.ndarray]) -> tuple[dict[int, np.ndarray], int]:
    first = min(poses)
    base = invert_rigid(poses[first])
    return {i: base @ p for i, p in poses.items()}, first


def _estimate(
    frames: list[Frame], settings: PoseSettings, seed: int
) -> tuple[dict[int, np.ndarray], str, bool, dict[str, float], dict[int, str]]:
    """Relative poses of all frames: (poses, method, metric, quality, reasons for the rest)."""
    with_depth = all(f.depth is not None for f in frames)
    n = len(frames)
    candidates: dict[str, tuple[dict[int, np.ndarray], bool, dict[int, str]]] = {}
    if settings.method in ("auto", "sfm"):
        poses, raw, metric = _sfm_candidate(frames, seed)
        reason = "structure from motion could not register it (too few feature matches)"
        if raw.poses and not poses:
            reason = "too few triangulated points with depth to fix the scale"
        candidates["sfm"] = (poses, metric, {i: reason for i in range(n) if i not in poses})
    ambiguous_share = 0.0
    if with_depth and settings.method in ("auto", "depth"):
        registration = register_depth(frames, seed)
        candidates["depth"] = (registration.poses, True, registration.dropped)
        ambiguous_share = registration.ambiguous_share
    if not with_depth and settings.method == "depth":
        raise ReconstructionError("pose method 'depth' needs depth in every frame")
    quality: dict[str, float] = {}
    best, best_score = "", -1.0
    tolerance = 2.0 * voxel_size_for(frames) if with_depth else 0.0
    for name, (poses, _, _) in candidates.items():
        share = len(poses) / n
        score = share
        if with_depth and len(poses) >= 2:
            consistency = depth_consistency(frames, poses, tolerance, seed)
            quality[f"{name}_consistency"] = consistency
            score = share * (consistency if np.isfinite(consistency) else 0.0)
        quality[f"{name}_registered"] = share
        if len(poses) < 2:
            score = 0.0
        # Ties go to SfM: it used the texture, which tells apart poses a symmetric shape can't.
        if score > best_score + (0.02 if name == "depth" else 0.0):
            best, best_score = name, score
    poses, metric, reasons = candidates[best]
    if len(poses) < 2 and len(candidates) > 1:
        # Nothing usable: say why each method failed, not only the one kept.
        reasons = {
            i: "; ".join(c[2][i] for c in candidates.values() if i in c[2])
            for i in range(n)
            if i not in poses
        }
    if best == "depth":
        # Pairs whose turn about a round body's axis is unobservable (see DepthRegistration).
        quality["depth_turn_ambiguous"] = ambiguous_share
    return poses, best, metric, quality, reasons


def prepare_poses(
    frames: list[Frame], settings: PoseSettings, seed: int = 0, min_views: int = 2
) -> tuple[list[Frame], PoseReport]:
    """The frames to reconstruct from, each with its pose, and what was done (see module)."""
    settings.validate()
    start = time.perf_counter()
    report = [FramePose("given", tf_pose=f.camera_to_world) for f in frames]
    posed = [i for i, f in enumerate(frames) if f.camera_to_world is not None]
    final: dict[int, np.ndarray] = {i: frames[i].camera_to_world for i in posed}
    method, frame_name, metric, quality = "given", "world", True, {}
    if len(posed) == len(frames):
        if _wants_refinement(frames, settings) and len(frames) >= 2:
            refined = refine_given(
                frames, final, settings.max_correction_m, settings.max_correction_deg, seed
            )
            method = "refined"
            final = refined.poses
            quality = {"refine_groups": float(refined.groups)}
            if refined.hand_eye is not None:
                # A constant camera offset was found and removed (see refine.py).
                metres, degrees = pose_difference(np.eye(4), refined.hand_eye)
                quality.update(hand_eye_m=metres, hand_eye_deg=degrees)
            for i, (metres, deg) in refined.corrections.items():
                report[i].correction_m, report[i].correction_deg = metres, deg
            for i in posed:
                if i in refined.rejected:
                    report[i].status, report[i].reason = "dropped", refined.rejected[i]
                else:
                    report[i].status = "refined"
    else:
        with_depth = all(f.depth is not None for f in frames)
        estimated, method, metric, quality, reasons = _estimate(frames, settings, seed)
        if len(estimated) < 2 and not with_depth:
            raise ReconstructionError(
                NO_TEXTURE_MESSAGE.format(registered=len(estimated), total=len(frames))
            )
        shared = [i for i in posed if i in estimated]
        if shared:
            # Into the posed frames' world: scale too when the estimate is not metric.
            with_scale = not metric
            if with_scale and len(shared) < 2:
                shared = []
            else:
                sim = align_cameras(
                    [estimated[i] for i in shared], [final[i] for i in shared], with_scale
                )
                metric = True
                for i, p in estimated.items():
                    if i not in posed:
                        final[i] = apply_similarity(sim, p)
        if not shared:
            if posed:
                for i in posed:
                    reasons.setdefault(i, "its given pose cannot be related to the estimated ones")
            if estimated:
                final, first = _to_first_camera(estimated)
                frame_name = f"first camera (frame {first})"
            else:  # nothing registered: every frame is dropped with its reason (below)
                final, frame_name = {}, "none"
            posed = []
        for i in range(len(frames)):
            if i not in final:
                report[i].status = "dropped"
                report[i].reason = reasons.get(i, "not registered")
            elif i not in posed:
                report[i].status = "estimated"
    for i, pose in final.items():
        report[i].pose = pose
    kept = [i for i in range(len(frames)) if report[i].status != "dropped" and i in final]
    out = PoseReport(
        method=method,
        metric_scale=metric,
        frame=frame_name,
        frames=report,
        quality=quality,
        seconds=time.perf_counter() - start,
    )
    if len(kept) < min_views:
        reasons = "; ".join(f"frame {i}: {r}" for i, r in out.dropped.items())
        raise ReconstructionError(
            f"too few frames with usable poses: {len(kept)} (need at least {min_views}); {reasons}"
        )
    used = [
        Frame(
            rgb=frames[i].rgb,
            intrinsics=frames[i].intrinsics,
            camera_to_world=final[i],
            depth=frames[i].depth,
            mask=frames[i].mask,
            stamp=frames[i].stamp,
            note=frames[i].note,
        )
        for i in kept
    ]
    return used, out
