"""Render a mesh from given poses into a capture folder (the format the node writes).

Evaluation and tests go through the same path a user does: rendered frames are appended with
``CaptureSession``, and the ground-truth mesh is saved beside them as ``gt_mesh.ply``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import trimesh

from rvg_ros.core.render import MeshRenderer, RenderedView, pixel_rays
from rvg_ros.core.types import Frame, Intrinsics

GT_MESH_NAME = "gt_mesh.ply"


@dataclass(frozen=True)
class DepthNoise:
    """A RealSense-like depth error model.

    - Gaussian noise with sigma = ``sigma_per_m2`` * z^2 (stereo depth error grows with the
      square of distance; 0.003 gives ~0.75 mm at 0.5 m, close to a D435 at its best).
    - Dropout at grazing angles: the probability of losing a pixel rises linearly from 0 at
      ``grazing_start_deg`` to 1 at ``grazing_full_deg`` between the surface normal and the ray.
    - Random dropout of ``dropout`` of the remaining pixels.
    - Quantisation to ``quantum_m`` (the capture format stores millimetres anyway).
    """

    sigma_per_m2: float = 0.003
    grazing_start_deg: float = 70.0
    grazing_full_deg: float = 85.0
    dropout: float = 0.005
    quantum_m: float = 0.001

    def apply(
        self, view: RenderedView, rays_world: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        depth = view.depth.astype(np.float64).copy()
        valid = view.mask & (depth > 0)
        rays = rays_world / np.linalg.norm(rays_world, axis=-1, keepdims=True)
        cos = np.abs((rays * view.normals).sum(axis=-1))
        angle = np.degrees(np.arccos(np.clip(cos, 0.0, 1.0)))
        span = max(self.grazing_full_deg - self.grazing_start_deg, 1e-6)
        p_drop = np.clip((angle - self.grazing_start_deg) / span, 0.0, 1.0)
        p_drop = 1.0 - (1.0 - p_drop) * (1.0 - self.dropout)
        keep = valid & (rng.random(depth.shape) >= p_drop)
        noisy = depth + rng.normal(size=depth.shape) * self.sigma_per_m2 * depth**2
        if self.quantum_m > 0:
            noisy = np.round(noisy / self.quantum_m) * self.quantum_m
        out = np.where(keep & (noisy > 0), noisy, 0.0)
        return out.astype(np.float32)


def render_frames(
    obj_mesh: Any,
    poses: Iterable[np.ndarray],
    intrinsics: Intrinsics,
    depth: bool = True,
    masks: bool = True,
    depth_noise: DepthNoise | bool | None = None,
    seed: int = 0,
    background: tuple[int, int, int] = (0, 0, 0),
) -> list[Frame]:
    """Render ``obj_mesh`` from each pose into ``Frame`` objects (no disk access)."""
    renderer = MeshRenderer(obj_mesh)
    noise = DepthNoise() if depth_noise is True else (depth_noise or None)
    rng = np.random.default_rng(seed)
    frames = []
    for i, pose in enumerate(poses):
        pose = np.asarray(pose, dtype=np.float64)
        view = renderer.render(intrinsics, pose, background=background)
        frame_depth = None
        if depth:
            frame_depth = view.depth
            if noise is not None:
                frame_depth = noise.apply(view, pixel_rays(intrinsics, pose)[1], rng)
        frames.append(
            Frame(
                rgb=view.rgb,
                intrinsics=intrinsics,
                camera_to_world=pose,
                depth=frame_depth,
                mask=view.mask if masks else None,
                stamp=float(i),
                note=f"sim view {i}",
            )
        )
    return frames


def render_capture(
    obj_mesh: Any,
    poses: Iterable[np.ndarray],
    intrinsics: Intrinsics,
    out_dir: str | Path,
    depth: bool = True,
    masks: bool = True,
    depth_noise: DepthNoise | bool | None = None,
    seed: int = 0,
    background: tuple[int, int, int] = (0, 0, 0),
) -> Path:
    """Render views of ``obj_mesh`` and write them as a capture folder with ``gt_mesh.ply``.

    ``depth_noise``: None/False for perfect depth, True for the default ``DepthNoise``, or a
    ``DepthNoise``. Noise is seeded by ``seed`` so a capture is reproducible. Returns the folder.
    """
    from rvg_ros.core.session import CaptureSession  # the lead's module; imported on use

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frames = render_frames(obj_mesh, poses, intrinsics, depth, masks, depth_noise, seed, background)
    session = CaptureSession(out)
    for frame in frames:
        session.append(frame)
    write_gt_mesh(obj_mesh, out / GT_MESH_NAME)
    return out


def write_gt_mesh(obj_mesh: Any, path: str | Path) -> Path:
    """Save the ground truth as PLY (metres, vertex colours), atomically."""
    from rvg_ros.core.render import mesh_arrays

    vertices, triangles, colors = mesh_arrays(obj_mesh)
    rgba = np.full((len(colors), 4), 255, dtype=np.uint8)
    rgba[:, :3] = np.round(colors * 255.0).astype(np.uint8)
    mesh = trimesh.Trimesh(vertices, triangles, vertex_colors=rgba, process=False)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(mesh.export(file_type="ply"))
    tmp.replace(path)
    return path
