"""``rvg-ros bench``: time and memory of reconstructions, per stage, by number of views.

Each run is a fresh ``rvg-ros reconstruct`` process on a rendered capture folder (the user's
path), so peak RSS is that of one reconstruction and start-up cost is visible separately.
Not a test: numbers depend on the machine; the report says which one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = "no CUDA"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {gpu}, Python {platform.python_version()}"


def render_bench_capture(
    out: Path, views: int, size: int, seed: int, unposed: bool = False, depth: bool = True
) -> Path:
    import numpy as np

    from rvg_ros.core.session import CaptureSession
    from rvg_ros.core.types import Frame
    from rvg_ros.sim.capture import GT_MESH_NAME, render_frames, write_gt_mesh
    from rvg_ros.sim.objects import demo_object
    from rvg_ros.sim.views import default_intrinsics, fit_radius, one_sided

    obj = demo_object()
    intrinsics = default_intrinsics(size, size)
    radius = fit_radius(np.linalg.norm(obj.bounds[1] - obj.bounds[0]), intrinsics)
    poses = one_sided(views, radius, np.random.default_rng(seed), obj.bounds.mean(axis=0))
    session = CaptureSession(out)
    if len(session):  # a capture from an earlier run: start afresh
        shutil.rmtree(out)
        session = CaptureSession(out)
    for f in render_frames(obj.mesh, poses, intrinsics, depth=depth, seed=seed):
        # Unposed: the pose stage estimates every camera (the "poses" stage in the table).
        pose = None if unposed else f.camera_to_world
        session.append(Frame(f.rgb, f.intrinsics, pose, f.depth, f.mask, f.stamp, f.note))
    write_gt_mesh(obj.mesh, out / GT_MESH_NAME)
    return out


def run_once(capture: Path, out: Path, backend: str, device: str, extra: list[str]) -> dict:
    t0 = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rvg_ros.core.cli",
            "reconstruct",
            "--input",
            str(capture),
            "--output",
            str(out),
            "--backend",
            backend,
            "--device",
            device,
            *extra,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{backend} failed: {proc.stderr.strip()}")
    result = json.loads((out / "result.json").read_text())
    result["process_seconds"] = time.monotonic() - t0
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rvg-ros bench", description=__doc__)
    parser.add_argument("--backends", default="fusion,rvg")
    parser.add_argument("--views", default="2,4,8,16")
    parser.add_argument("--size", type=int, default=256, help="image width and height")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="results/bench")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--unposed", action="store_true", help="frames without poses: time pose estimation"
    )
    parser.add_argument("--rgb", action="store_true", help="colour + masks only, no depth")
    parser.add_argument("extra", nargs="*", help="extra arguments for rvg-ros reconstruct")
    args = parser.parse_args(argv)
    out = Path(args.out)
    rows = []
    for views in [int(v) for v in args.views.split(",")]:
        capture = render_bench_capture(
            out / f"capture_{views}", views, args.size, args.seed, args.unposed, not args.rgb
        )
        for backend in args.backends.split(","):
            runs = [
                run_once(capture, out / f"{backend}_{views}", backend, args.device, args.extra)
                for _ in range(args.repeats)
            ]
            stages = {
                k: statistics.median(r["stage_seconds"][k] for r in runs)
                for k in runs[0]["stage_seconds"]
            }
            row = {
                "backend": backend,
                "views": views,
                "median_seconds": statistics.median(r["total_seconds"] for r in runs),
                "process_seconds": statistics.median(r["process_seconds"] for r in runs),
                "peak_rss_mb": max(r["peak_memory_mb"] for r in runs),
                "stages": stages,
            }
            rows.append(row)
            print(json.dumps(row))
    (out / "bench.json").write_text(
        json.dumps({"machine": machine_description(), "rows": rows}, indent=2)
    )
    lines = [
        f"Machine: {machine_description()}; images {args.size}x{args.size}, "
        f"median of {args.repeats} runs, device {args.device}"
        f"{', unposed (poses estimated)' if args.unposed else ''}"
        f"{', RGB + masks' if args.rgb else ', RGB-D'}.",
        "",
        "| backend | views | reconstruct s (median) | process s (with start-up) | peak RSS MB "
        "| stages (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        stages = ", ".join(f"{k} {v:.2f}" for k, v in r["stages"].items())
        lines.append(
            f"| {r['backend']} | {r['views']} | {r['median_seconds']:.2f} | "
            f"{r['process_seconds']:.1f} | {r['peak_rss_mb']:.0f} | {stages} |"
        )
    (out / "bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
