"""Training data for the generator: procedural objects only (never YCB), rendered and turned
into priors by exactly the functions inference uses.

One sample = one object seen by 2-8 cameras. It is stored once with both modalities (RGB-D, and
RGB + masks) because the renders are shared; what differs per modality is the cube, the
evidence grid and the target occupancy in that cube. Views are stored already downsampled to
the encoder's input size (float16), so loading a batch is cheap.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from rvg_ros.core.target import make_capture_set
from rvg_ros.core.types import Frame, ReconstructionError, TargetCube
from rvg_ros.rvg.prior import (
    completion_cube,
    evidence_grid,
    support_plane,
    view_inputs,
    voxel_centres,
)
from rvg_ros.sim.capture import DepthNoise, render_frames
from rvg_ros.sim.objects import SimObject, make_object
from rvg_ros.sim.views import default_intrinsics, fit_radius, sample_views

MODALITIES = ("rgbd", "rgb")
# Seed ranges: training and validation objects never overlap, nor with the evaluation
# harness's procedural seeds (which start at 0).
TRAIN_SEED_OFFSET = 1_000_000
VAL_SEED_OFFSET = 9_000_000


@dataclass(frozen=True)
class DataConfig:
    resolution: int = 32
    render_size: int = 128
    min_views: int = 2
    max_views: int = 8
    samplers: tuple[str, ...] = ("one-sided", "one-sided", "orbit", "random")
    depth_noise_probability: float = 0.5
    supersample: int = 2  # occupancy target: fraction of 2^3 sub-samples inside


class Solid(Protocol):
    """What ``occupancy_grid`` needs of an object: a SimObject, or a mesh (rvg/oracle.py)."""

    def occupancy(self, points: np.ndarray) -> np.ndarray: ...


def occupancy_grid(obj: Solid, cube: TargetCube, resolution: int, supersample: int) -> np.ndarray:
    """Fraction of each voxel inside the object, (res, res, res) float32 in [0, 1]."""
    fine = resolution * supersample
    inside = obj.occupancy(voxel_centres(cube, fine)).reshape((fine,) * 3)
    s = supersample
    return (
        inside.reshape(resolution, s, resolution, s, resolution, s)
        .mean(axis=(1, 3, 5))
        .astype(np.float32)
    )


def render_sample_frames(seed: int, config: DataConfig) -> tuple[SimObject, list[Frame]]:
    obj = make_object(None, seed)
    rng = np.random.default_rng([seed, 7])
    n = int(rng.integers(config.min_views, config.max_views + 1))
    sampler = str(rng.choice(config.samplers))
    intrinsics = default_intrinsics(config.render_size, config.render_size, rng.uniform(40, 60))
    radius = fit_radius(
        np.linalg.norm(obj.bounds[1] - obj.bounds[0]), intrinsics, rng.uniform(0.45, 0.8)
    )
    centre = obj.bounds.mean(axis=0)
    poses = sample_views(sampler, n, radius, rng, centre)
    noise = DepthNoise() if rng.random() < config.depth_noise_probability else None
    frames = render_frames(
        obj.mesh, poses, intrinsics, depth=True, masks=True, depth_noise=noise, seed=seed
    )
    return obj, frames


def _without_depth(frames: list[Frame]) -> list[Frame]:
    return [
        Frame(rgb=f.rgb, intrinsics=f.intrinsics, camera_to_world=f.camera_to_world, mask=f.mask)
        for f in frames
    ]


def make_sample(seed: int, config: DataConfig) -> dict[str, np.ndarray]:
    """All arrays of one training sample (see the module docstring)."""
    obj, frames = render_sample_frames(seed, config)
    out: dict[str, np.ndarray] = {"seed": np.array(seed)}
    for modality in MODALITIES:
        use_depth = modality == "rgbd"
        capture = make_capture_set(frames if use_depth else _without_depth(frames), min_views=1)
        cube = completion_cube(capture)
        out[f"{modality}_cube"] = np.array([*cube.center, cube.side], dtype=np.float64)
        support = support_plane(capture) if use_depth else None
        out[f"{modality}_evidence"] = evidence_grid(
            capture, cube, config.resolution, use_depth, support
        )
        out[f"{modality}_occupancy"] = occupancy_grid(
            obj, cube, config.resolution, config.supersample
        )
        out[f"{modality}_views"] = view_inputs(capture, cube, use_depth).astype(np.float16)
    return out


def sample_path(root: Path, seed: int) -> Path:
    return Path(root) / f"{seed:08d}.npz"


def generate(
    root: Path, first_seed: int, count: int, config: DataConfig, stride: int = 1, offset: int = 0
) -> int:
    """Write samples for seeds first_seed + offset, + stride, ...; skips existing files.

    Resumable and parallelisable (run workers with the same stride and different offsets).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.txt").write_text(repr(asdict(config)) + "\n")
    written = 0
    for i in range(offset, count, stride):
        seed = first_seed + i
        path = sample_path(root, seed)
        if path.exists():
            continue
        try:
            sample = make_sample(seed, config)
        except ReconstructionError:
            continue  # e.g. an object too small to see in any view: not a training sample
        tmp = path.with_name(f".{path.stem}.tmp.npz")
        np.savez_compressed(tmp, **sample)
        os.replace(tmp, path)
        written += 1
    return written


def generate_parallel(
    root: Path, split: str, count: int, workers: int, config: DataConfig, skip: int = 0
) -> int:
    """``generate`` in ``workers`` processes (each takes every workers-th seed).

    ``skip`` starts at the split's skip-th seed: fresh objects for training on from weights
    that saw the first ones.
    """
    from concurrent.futures import ProcessPoolExecutor

    first = (TRAIN_SEED_OFFSET if split == "train" else VAL_SEED_OFFSET) + skip
    if workers <= 1:
        return generate(root, first, count, config)
    with ProcessPoolExecutor(workers) as pool:
        jobs = [
            pool.submit(generate, root, first, count, config, workers, k) for k in range(workers)
        ]
        return sum(job.result() for job in jobs)
