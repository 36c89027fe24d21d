"""The one path from frames to files: choose views, find the target, run a backend, export.

The node, the CLI, the demo and the evaluation harness all call ``reconstruct_frames``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rvg_ros.core import failpoints
from rvg_ros.core.backends import Backend, BackendOptions, ProgressFn, make_backend, no_progress
from rvg_ros.core.devices import check_device, is_out_of_memory, release_gpu_memory
from rvg_ros.core.export import export_reconstruction
from rvg_ros.core.poses import PoseReport, PoseSettings, prepare_poses
from rvg_ros.core.session import CaptureSession, write_atomic
from rvg_ros.core.target import make_capture_set
from rvg_ros.core.types import CaptureSet, Frame, Reconstruction


@dataclass
class ReconstructSettings:
    backend: str = "fusion"
    device: str = "auto"
    max_views: int | None = None
    seed: int = 0
    min_views: int = 2
    resolution: int = 96
    cloud_points: int = 50_000
    weights_dir: str | None = None
    # Region of interest in the world frame: (min corner, max corner); None = find the object.
    roi: tuple[np.ndarray, np.ndarray] | None = None
    frame_id: str = "world"
    # Backend-specific options (e.g. rvg: steps, cfg_scale, use_condition).
    backend_options: dict[str, object] = field(default_factory=dict)
    # Pose estimation (unposed frames) and refinement (given poses): see rvg_ros.core.poses.
    poses: PoseSettings = field(default_factory=PoseSettings)
    # A GPU run that runs out of memory is run again on the CPU (slower, but an answer).
    cpu_fallback: bool = False


def reconstruct_frames(
    frames: list[Frame], settings: ReconstructSettings, progress: ProgressFn = no_progress
) -> tuple[Reconstruction, CaptureSet]:
    """Reconstruct; also returns the capture set used (the chosen views, the target)."""
    check_device(settings.device)
    backend = _make_backend(settings, settings.device)
    progress("poses", 0.0)
    frames, poses = prepare_poses(frames, settings.poses, settings.seed, settings.min_views)
    capture = make_capture_set(
        frames, settings.roi, settings.max_views, settings.seed, settings.min_views
    )
    try:
        failpoints.hit("backend.reconstruct", settings.device)
        result = backend.reconstruct(capture, progress)
    except Exception as exc:
        if not (settings.cpu_fallback and settings.device != "cpu" and is_out_of_memory(exc)):
            raise
        release_gpu_memory()
        progress("retry on cpu", 0.0)
        result = _make_backend(settings, "cpu").reconstruct(capture, progress)
        result.extras["device_fallback"] = f"{type(exc).__name__}: {exc}; retried on CPU"
    result.frame_id = settings.frame_id
    # Up to scale when the poses are (unposed RGB), whatever the backend assumed.
    result.metric_scale = result.metric_scale and poses.metric_scale
    result.stage_seconds = {"poses": poses.seconds, **result.stage_seconds}
    result.extras.update(poses.summary())
    result.extras["pose_report"] = poses
    result.extras["target_center"] = capture.target.center.tolist()
    result.extras["target_side"] = capture.target.side
    return result, capture


def _make_backend(settings: ReconstructSettings, device: str) -> Backend:
    return make_backend(
        settings.backend,
        BackendOptions(
            device=device,
            resolution=settings.resolution,
            cloud_points=settings.cloud_points,
            weights_dir=settings.weights_dir,
            extra=dict(settings.backend_options),
        ),
    )


def reconstruct_folder(
    input_dir: Path,
    output_dir: Path,
    settings: ReconstructSettings,
    progress: ProgressFn = no_progress,
) -> Reconstruction:
    """Read a ``transforms.json`` capture folder, reconstruct, and write the output files."""
    session = CaptureSession(input_dir, create=False)
    if settings.frame_id == "world":
        settings.frame_id = session.frame_id
    frames = session.frames()
    result, capture = reconstruct_frames(frames, settings, progress)
    report = result.extras["pose_report"]
    if isinstance(report, PoseReport) and report.method != "given":
        session.record_poses(report)
    export_reconstruction(result, capture.frames, output_dir)
    if isinstance(report, PoseReport):
        write_poses_json(report, frames, Path(output_dir) / "poses.json")
    return result


def write_poses_json(report: PoseReport, frames: list[Frame], path: Path) -> None:
    """The poses used, per input frame (camera-to-world, OpenCV axes, in ``report.frame``),
    with what was done to each and why dropped ones were dropped."""
    entries = []
    for index, (frame, pose) in enumerate(zip(frames, report.frames, strict=True)):
        entry: dict[str, object] = {"index": index, "note": frame.note, **pose.to_json()}
        if pose.pose is not None:
            entry["camera_to_world"] = np.asarray(pose.pose).tolist()
        if pose.tf_pose is not None:
            entry["given_camera_to_world"] = np.asarray(pose.tf_pose).tolist()
        entries.append(entry)
    doc = {**report.to_json(), "convention": "camera_to_world, OpenCV axes", "frames": entries}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(doc, indent=1).encode("utf-8"))
