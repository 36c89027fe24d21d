"""Time the network stages of ``rvg`` (GGC, sparse-structure sampling, fine stage, RVC) on any
torch device, apart from the rest of the pipeline.

``rvg-ros bench`` times whole reconstructions, but those need Open3D (fusion, target, decode),
which a GPU machine without our full install may lack. This splits the run: ``prepare`` renders
the bench captures and runs the backend's own prior stage (symmetry, cube, evidence, view
inputs) on this machine, writing what the generators take; ``run`` loads only torch-side code
(``rvg/generate.py``) and times each network stage on the device, median of ``--repeats`` after
one warm-up, with peak GPU memory on CUDA. Not a test: numbers depend on the machine.

    python -m rvg_ros.bench_network prepare --out results/bench_network/prepared
    python -m rvg_ros.bench_network run --prepared results/bench_network/prepared --device cuda
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

WEIGHTS_HELP = "folder with rvg_ss.safetensors (default: shipped)"


def prepare(out: Path, views: list[int], size: int, seed: int, weights_dir: str | None) -> None:
    """Render the bench capture for each view count; save the capture set's frames (as the
    backend sees them: chosen, masked) and the prior's arrays."""
    from rvg_ros.bench import render_bench_capture
    from rvg_ros.core.backends.base import BackendOptions
    from rvg_ros.core.session import CaptureSession
    from rvg_ros.core.target import make_capture_set
    from rvg_ros.rvg.backend import RVGBackend
    from rvg_ros.rvg.generate import load_model

    out.mkdir(parents=True, exist_ok=True)
    config = load_model(weights_dir, "cpu").config
    for v in views:
        capture_dir = render_bench_capture(out / f"capture_{v}", v, size, seed)
        capture = make_capture_set(CaptureSession(capture_dir).frames(), seed=seed)
        backend = RVGBackend(BackendOptions(weights_dir=weights_dir))
        _, virtual = backend.symmetric_views(capture)
        prior, _ = backend.prior(capture, virtual, config)
        prior.save(out / f"prior_{v}.npz")
        frames = CaptureSession(out / f"frames_{v}")
        if not len(frames):
            for frame in capture.frames:
                frames.append(frame)
        print(f"{v} views: {len(virtual)} symmetric, evidence + {len(prior.views)} encoded views")


def _timed(device: str, fn: Callable[..., Any], *args: object) -> tuple[Any, float]:
    """fn(*args) and its wall time, the device's queue drained before and after."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    value = fn(*args)
    if device == "cuda":
        torch.cuda.synchronize()
    return value, time.perf_counter() - t0


def run(
    prepared: Path,
    device_name: str,
    repeats: int,
    weights_dir: str | None,
    fine_weights: Path | None,
    threads: int,
) -> dict:
    import torch

    from rvg_ros.bench import machine_description
    from rvg_ros.core.devices import torch_device
    from rvg_ros.core.session import CaptureSession
    from rvg_ros.rvg.fine_model import FINE_WEIGHTS_NAME, FineModel
    from rvg_ros.rvg.generate import (
        SHIPPED_WEIGHTS,
        CoarseConfig,
        FineConfig,
        PriorInputs,
        coarse_condition,
        generate_fine,
        load_model,
        sample_coarse,
    )

    device = torch_device(device_name)
    torch.set_num_threads(threads)
    model = load_model(weights_dir, device)
    fine_path = fine_weights or Path(weights_dir or SHIPPED_WEIGHTS) / FINE_WEIGHTS_NAME
    fine_model = FineModel.load(fine_path, device) if fine_path.is_file() else None
    coarse, plain, rvc = CoarseConfig(), FineConfig(), FineConfig(rvc=True)  # the defaults
    rows = []
    for path in sorted(prepared.glob("prior_*.npz"), key=lambda p: int(p.stem.split("_")[1])):
        views = int(path.stem.split("_")[1])
        prior = PriorInputs.load(path)
        frames = CaptureSession(prepared / f"frames_{views}", create=False).frames()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times: dict[str, list[float]] = {}
        active = 0
        for k in range(repeats + 1):  # the first is the warm-up (CUDA context, kernels)
            (onehot, cond), t_cond = _timed(device, coarse_condition, model, prior, coarse, device)
            occ, t_samp = _timed(
                device, sample_coarse, model, prior, onehot, cond, coarse, 0, device
            )
            sample = {"condition": t_cond, "sampling": t_samp}
            if fine_model is not None:
                (fine, _), sample["fine"] = _timed(
                    device, generate_fine, fine_model, prior, occ, frames, plain, 0, device
                )
                active = len(fine.coords)
                _, sample["fine+rvc"] = _timed(
                    device, generate_fine, fine_model, prior, occ, frames, rvc, 0, device
                )
            if k == 0:
                warmup = sum(sample.values())
                continue
            for name, seconds in sample.items():
                times.setdefault(name, []).append(seconds)
        row = {
            "views": views,
            "encoded_views": len(prior.views),
            "active_voxels": active,
            "warmup_seconds": warmup,
            "stages": {name: statistics.median(v) for name, v in times.items()},
        }
        if device == "cuda":
            row["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rows.append(row)
        print(json.dumps(row))
    return {
        "machine": machine_description(),
        "device": device,
        "threads": threads,
        "repeats": repeats,
        "fine_weights": str(fine_path) if fine_model is not None else None,
        "settings": {"coarse": coarse.__dict__, "fine": plain.__dict__, "rvc": rvc.__dict__},
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rvg_ros.bench_network", description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("prepare", help="captures + prior arrays (needs the full install)")
    p.add_argument("--out", default="results/bench_network/prepared")
    p.add_argument("--views", default="2,4,8,16")
    p.add_argument("--size", type=int, default=256, help="image width and height")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights-dir", default=None, help=WEIGHTS_HELP)
    r = sub.add_parser("run", help="time the network stages (needs torch only)")
    r.add_argument("--prepared", default="results/bench_network/prepared")
    r.add_argument("--device", default="auto")
    r.add_argument("--repeats", type=int, default=3)
    r.add_argument("--threads", type=int, default=1, help="CPU intra-op threads")
    r.add_argument("--weights-dir", default=None, help=WEIGHTS_HELP)
    r.add_argument("--fine-weights", type=Path, default=None, help="rvg_fine.safetensors")
    r.add_argument("--out", type=Path, default=None, help="write the report (JSON) here")
    args = parser.parse_args(argv)
    if args.what == "prepare":
        views = [int(v) for v in args.views.split(",")]
        prepare(Path(args.out), views, args.size, args.seed, args.weights_dir)
        return 0
    report = run(
        Path(args.prepared),
        args.device,
        args.repeats,
        args.weights_dir,
        args.fine_weights,
        args.threads,
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
