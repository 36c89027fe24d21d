"""Structure from motion with pycolmap: SIFT features, exhaustive matching (the sets are small),
incremental mapping with the intrinsics held fixed (they are known from CameraInfo /
``transforms.json``).

The result is up to scale, in COLMAP's arbitrary world frame; ``rvg_ros.core.poses`` decides
the frame and the scale (depth or posed frames). COLMAP's pixel centres sit at +0.5 (the image
corner is the origin), ours at integer coordinates, hence the half-pixel shift of the principal
point.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from rvg_ros.core.geometry import invert_rigid
from rvg_ros.core.types import Frame, Intrinsics


@dataclass
class SfmResult:
    """Camera-to-world poses (OpenCV convention, COLMAP's units) of the registered frames, and
    for each registered frame its observations: pixel (u, v) in our convention and the 3D point
    (COLMAP world) seen there."""

    poses: dict[int, np.ndarray] = field(default_factory=dict)
    observations: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    reprojection_error_px: float = float("nan")
    num_points: int = 0


# Images smaller than this (shorter side) are upsampled for SIFT: a 256 px view of an object
# that fills half of it yields too few features to register views 45 degrees apart.
MIN_SIFT_SIDE = 512


def _upsampling(k: Intrinsics) -> int:
    return max(1, int(np.ceil(MIN_SIFT_SIDE / min(k.width, k.height))))


def _camera_params(k: Intrinsics, scale: int) -> str:
    # COLMAP's pixel centres are at +0.5; scaling by s maps our x to s * (x + 0.5) there.
    values = (k.fx * scale, k.fy * scale, (k.cx + 0.5) * scale, (k.cy + 0.5) * scale)
    return ",".join(repr(float(v)) for v in values)  # repr of a float: exact, no numpy type


def _rigid_matrix(rigid: object) -> np.ndarray:
    m = np.eye(4)
    m[:3, :4] = np.asarray(rigid.matrix())  # type: ignore[attr-defined]
    return m


def run_sfm(frames: list[Frame], seed: int = 0, threads: int = 1) -> SfmResult:
    """Reconstruct the cameras of ``frames``; frames COLMAP cannot register are left out.

    Masks, when present, restrict features to the object (the background of a real scene
    moves relative to a turntable object; for a static scene it would help, but a user who
    gives masks means the object).
    """
    import pycolmap

    pycolmap.logging.minloglevel = 2  # warnings and errors only: the node's log is not COLMAP's
    with tempfile.TemporaryDirectory(prefix="rvg_sfm_") as tmp:
        root = Path(tmp)
        images, masks = root / "images", root / "masks"
        images.mkdir()
        use_masks = all(f.mask is not None for f in frames)
        if use_masks:
            masks.mkdir()
        names = []
        scales = [_upsampling(f.intrinsics) for f in frames]
        for i, (f, s) in enumerate(zip(frames, scales, strict=True)):
            name = f"{i:05d}.png"
            names.append(name)
            size = (f.rgb.shape[1] * s, f.rgb.shape[0] * s)
            rgb = cv2.resize(f.rgb, size, interpolation=cv2.INTER_CUBIC)
            cv2.imwrite(str(images / name), rgb[:, :, ::-1])
            if use_masks:
                # Dilated: SIFT needs the object's outline, which lies just outside the mask.
                mask = cv2.resize(f.mask.astype(np.uint8) * 255, size, cv2.INTER_NEAREST)
                mask = cv2.dilate(mask, np.ones((7 * s, 7 * s), np.uint8))
                cv2.imwrite(str(masks / f"{name}.png"), mask)
        database = root / "database.db"
        same_camera = all(f.intrinsics == frames[0].intrinsics for f in frames)
        reader = pycolmap.ImageReaderOptions()
        reader.camera_model = "PINHOLE"
        if use_masks:
            reader.mask_path = str(masks)
        extraction = pycolmap.FeatureExtractionOptions()
        extraction.num_threads = threads
        extraction.use_gpu = False
        # Keep weak peaks: rendered and real objects are often smoothly textured.
        extraction.sift.peak_threshold = 0.003
        if same_camera:
            reader.camera_params = _camera_params(frames[0].intrinsics, scales[0])
            pycolmap.extract_features(
                database, images, names, pycolmap.CameraMode.SINGLE, reader, extraction,
                device=pycolmap.Device.cpu,
            )  # fmt: skip
        else:
            for name, f, scale in zip(names, frames, scales, strict=True):
                reader.camera_params = _camera_params(f.intrinsics, scale)
                pycolmap.extract_features(
                    database, images, [name], pycolmap.CameraMode.PER_IMAGE, reader, extraction,
                    device=pycolmap.Device.cpu,
                )  # fmt: skip
        matching = pycolmap.FeatureMatchingOptions()
        matching.num_threads = threads
        matching.use_gpu = False
        matching.sift.max_ratio = 0.85  # wide baselines: a looser ratio test, RANSAC cleans up
        verification = pycolmap.TwoViewGeometryOptions()
        verification.ransac.random_seed = seed
        pycolmap.match_exhaustive(
            database, matching, verification_options=verification, device=pycolmap.Device.cpu
        )
        options = pycolmap.IncrementalPipelineOptions()
        options.num_threads = threads
        options.random_seed = seed
        options.min_model_size = 2
        options.ba_refine_focal_length = False
        options.ba_refine_extra_params = False
        options.ba_refine_principal_point = False
        options.mapper.abs_pose_refine_focal_length = False
        options.mapper.abs_pose_refine_extra_params = False
        # Few, small views: fewer inliers are needed to start and to add an image.
        options.mapper.init_min_num_inliers = 30
        options.mapper.abs_pose_min_num_inliers = 12
        options.mapper.random_seed = seed
        options.triangulation.random_seed = seed
        out = root / "sparse"
        out.mkdir()
        models = pycolmap.incremental_mapping(database, images, out, options)
    if not models:
        return SfmResult()
    model = max(models.values(), key=lambda m: m.num_reg_images())
    result = SfmResult(
        reprojection_error_px=float(model.compute_mean_reprojection_error()),
        num_points=int(model.num_points3D()),
    )
    index_of = {name: i for i, name in enumerate(names)}
    for image in model.images.values():
        if not image.has_pose:
            continue
        i = index_of[image.name]
        scale = scales[i]
        result.poses[i] = invert_rigid(_rigid_matrix(image.cam_from_world()))
        uv, xyz = [], []
        for p2d in image.points2D:
            if p2d.has_point3D():
                uv.append(np.asarray(p2d.xy) / scale - 0.5)
                xyz.append(model.points3D[p2d.point3D_id].xyz)
        result.observations[i] = (np.reshape(uv, (-1, 2)), np.reshape(xyz, (-1, 3)))
    return result
