"""How much of the seen surface the fine stage (and so RVC) can reach, per object.

The fine flow generates sub-voxel SDF only inside the coarse stage's active voxels; elsewhere
the field is the coarse fill. So rendering-aware velocity compensation can move the surface a
camera saw only where the true surface lies in those voxels. For each object of an evaluation
run's captures (``rvg-ros eval ... --out RUN`` keeps them under RUN/captures), this runs `rvg`
with the fine stage, casts each input view's rays (at RVC's render size) against the ground
truth mesh, and reports the share of the seen ground-truth surface that lies in an active voxel
and the rendered fine field's depth error there and elsewhere (median, mm).

    python scripts/fine_reach.py results/ycb_dev_rgb_rvg_fine_tuned [--objects a,b] [--size 64]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import open3d as o3d
import torch
import trimesh

import rvg_ros.rvg.generate as generate
from rvg_ros.core.pipeline import ReconstructSettings, reconstruct_frames
from rvg_ros.core.session import CaptureSession
from rvg_ros.eval.visibility import gt_scene
from rvg_ros.rvg.fine_decode import fine_field
from rvg_ros.rvg.prior import completion_cube
from rvg_ros.rvg.render import camera_rays, render_views


def reach(capture_dir: Path, size: int) -> dict[str, float]:
    spied: dict[str, Any] = {}
    original = generate.sample_fine

    def spy(*args: Any, **kwargs: Any) -> Any:
        sample = original(*args, **kwargs)
        spied.update(model=args[0], occupancy=args[1], views=args[5], sample=sample)
        return sample

    generate.sample_fine = spy  # the only way in without changing the backend for a diagnostic
    try:
        # RVC on at strength 0: the render targets are built, the sample is plain sampling's.
        options = {"fine": True, "rvc": True, "rvc_strength": 0.0, "rvc_view_size": size}
        frames = CaptureSession(capture_dir, create=False).frames()
        _, capture = reconstruct_frames(
            frames, ReconstructSettings(backend="rvg", backend_options=options)
        )
    finally:
        generate.sample_fine = original
    cube = completion_cube(capture)
    sample, views = spied["sample"], spied["views"]
    occupancy = torch.as_tensor(np.asarray(spied["occupancy"], np.float32))
    with torch.no_grad():
        field = fine_field(sample.coords, sample.latent, occupancy, spied["model"].config.latent)
        renders = render_views(field, [v.camera for v in views])
    res = occupancy.shape[0]
    active = np.zeros((res,) * 3, bool)
    c = sample.coords.cpu().numpy()
    active[c[:, 0], c[:, 1], c[:, 2]] = True
    gt = trimesh.load(capture_dir / "gt_mesh.ply", force="mesh")
    scene = gt_scene(
        trimesh.Trimesh(cube.to_unit(np.asarray(gt.vertices)), gt.faces, process=False)
    )
    inside, err_in, err_out = [], [], []
    for view, rendering in zip(views, renders, strict=True):
        origins, dirs = camera_rays(view.camera, "cpu")
        rays = torch.cat([origins, dirs], 1).numpy().astype(np.float32)
        t = scene.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
        seen = np.isfinite(t) & (view.mask.numpy().reshape(-1) > 0.5)
        points = origins.numpy()[seen] + dirs.numpy()[seen] * t[seen, None]
        cell = np.clip(np.floor((points + 0.5) * res).astype(int), 0, res - 1)
        hit = active[cell[:, 0], cell[:, 1], cell[:, 2]]
        depth = rendering.depth.numpy().reshape(-1)[seen]
        error = np.abs(depth - t[seen]) * cube.side * 1000.0
        drawn = depth > 0
        inside.append(hit)
        err_in.append(error[hit & drawn])
        err_out.append(error[~hit & drawn])
    share = float(np.concatenate(inside).mean())
    e_in, e_out = np.concatenate(err_in), np.concatenate(err_out)
    return {
        "in_active": share,
        "err_in_mm": float(np.median(e_in)) if len(e_in) else float("nan"),
        "err_out_mm": float(np.median(e_out)) if len(e_out) else float("nan"),
        "coarse_voxel_mm": cube.side / res * 1000.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="an eval output folder with captures/")
    parser.add_argument("--objects", default="", help="comma-separated; default: all")
    parser.add_argument("--size", type=int, default=64, help="render size (RVC's default 64)")
    args = parser.parse_args(argv)
    names = [n for n in args.objects.split(",") if n] or sorted(
        p.name for p in (args.run / "captures").iterdir() if p.is_dir()
    )
    print("object,in_active,err_in_mm,err_out_mm,coarse_voxel_mm")
    rows = []
    for name in names:
        r = reach(args.run / "captures" / name, args.size)
        rows.append(r)
        print(
            f"{name},{r['in_active']:.3f},{r['err_in_mm']:.1f},{r['err_out_mm']:.1f},"
            f"{r['coarse_voxel_mm']:.1f}",
            flush=True,
        )
    mean = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}
    print(
        f"MEAN,{mean['in_active']:.3f},{mean['err_in_mm']:.1f},{mean['err_out_mm']:.1f},"
        f"{mean['coarse_voxel_mm']:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
