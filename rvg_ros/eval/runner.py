"""``rvg-ros eval``: render each object, reconstruct it with each backend the way a user would
(``reconstruct_folder`` on the capture folder), score, and write the report.

Output folder layout::

    per_object.csv   one row per (object, backend), SI units
    summary.md       mean ± std per backend and metric
    plots/*.png      a bar chart per metric
    grid.png         input views | ground truth | backends, seen from the unseen side
    config.json      the settings and the command that reproduce the run
    run.json         the whole run's wall time
    captures/NAME/   the rendered capture folders (with gt_mesh.ply)   -- large
    recon/NAME/BACKEND/  what ``rvg-ros reconstruct`` writes            -- large
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import open3d as o3d

from rvg_ros.core.backends import BACKENDS, is_known_backend, parse_backend_spec
from rvg_ros.core.pipeline import ReconstructSettings, reconstruct_folder
from rvg_ros.core.poses import PoseSettings
from rvg_ros.core.types import ReconstructionError
from rvg_ros.eval.datasets import load_dataset
from rvg_ros.eval.grid import GridRow, render_thumbnail, save_grid
from rvg_ros.eval.options import DEFAULT_BACKENDS, VISIBILITY_SIDES
from rvg_ros.eval.poses import first_camera_score, pose_scores
from rvg_ros.eval.report import bar_charts, read_csv, summary_markdown, write_csv
from rvg_ros.eval.scenes import RenderedCapture, ViewSpec, render_object
from rvg_ros.eval.score import GroundTruth, score_reconstruction

Log = Callable[[str], None]


def print_line(line: str) -> None:
    print(line, flush=True)  # progress must show even when stdout is a file or a pipe


@dataclass
class EvalConfig:
    dataset: str = "procedural"
    split: str = "dev"
    backends: tuple[str, ...] = DEFAULT_BACKENDS
    views: ViewSpec = field(default_factory=ViewSpec)
    out: Path = Path("results/eval")
    limit: int | None = None
    objects: tuple[str, ...] | None = None  # only these names of the split
    seed: int = 0
    resolution: int = 96
    points: int = 100_000
    grid_rows: int = 8
    device: str = "auto"
    overwrite: bool = False
    refine_poses: str = "off"
    weights_dir: str | None = None  # rvg's weights (default: shipped)
    occupancy_oracle: bool = False  # rvg: the true coarse occupancy (rvg/oracle.py)
    fine_oracle: bool = False  # rvg: the true fine latents too (needs occupancy_oracle)
    # Seen/unseen split: GT surface facing a camera ("front"), or on either side of it within
    # the occlusion slack ("either": every table before session 12; eval/visibility.py).
    visibility: str = "front"

    def validate(self) -> None:
        self.views.validate()
        unknown = [b for b in self.backends if not is_known_backend(b)]
        if unknown or not self.backends:
            known = ", ".join(sorted(BACKENDS))
            raise ValueError(f"unknown backend(s) {unknown or '(none given)'}; known: {known}")
        if self.fine_oracle and not self.occupancy_oracle:
            raise ValueError("--fine-oracle needs --occupancy-oracle")
        if self.visibility not in VISIBILITY_SIDES:
            raise ValueError(f"visibility must be one of {VISIBILITY_SIDES}")
        if self.resolution < 8 or self.points < 100:
            raise ValueError("resolution must be at least 8 and points at least 100")

    def command(self) -> str:
        """The ``rvg-ros eval`` command line that reproduces this run."""
        v = self.views
        args = [
            "rvg-ros", "eval", "--dataset", self.dataset, "--split", self.split,
            "--views", str(v.views), "--sampler", v.sampler,
            "--backends", ",".join(self.backends), "--modality", v.modality,
            "--out", str(self.out), "--seed", str(self.seed),
        ]  # fmt: skip
        if self.limit is not None:
            args += ["--limit", str(self.limit)]
        if self.objects:
            args += ["--objects", ",".join(self.objects)]
        defaults = EvalConfig()
        for flag, value, default in (
            ("--image-size", v.image_size, defaults.views.image_size),
            ("--resolution", self.resolution, defaults.resolution),
            ("--holdout-views", v.holdout_views, defaults.views.holdout_views),
            ("--points", self.points, defaults.points),
            ("--pose-noise-deg", v.pose_noise_deg, 0.0),
            ("--pose-noise-mm", v.pose_noise_m * 1000.0, 0.0),
        ):
            if value != default:
                args += [flag, f"{value:g}"]
        for flag, value, default in (
            ("--hand-eye-deg", v.hand_eye_deg, 0.0),
            ("--hand-eye-mm", v.hand_eye_m * 1000.0, 0.0),
        ):
            if value != default:
                args += [flag, f"{value:g}"]
        if v.pose_input != "tf":
            args += ["--pose-input", v.pose_input]
        if v.pose_oracle != "off":
            args += ["--pose-oracle", v.pose_oracle]
        if self.refine_poses != "off":
            args += ["--refine-poses", self.refine_poses]
        if v.depth_noise:
            args.append("--depth-noise")
        if self.weights_dir:
            args += ["--weights-dir", self.weights_dir]
        if self.occupancy_oracle:
            args.append("--occupancy-oracle")
        if self.fine_oracle:
            args.append("--fine-oracle")
        if self.visibility != "front":
            args += ["--visibility", self.visibility]
        return shlex.join(args)


@dataclass
class EvalOutputs:
    csv: Path
    summary: Path
    plots: list[Path]
    grid: Path | None
    rows: list[dict[str, object]]


def _prepare_out(config: EvalConfig) -> None:
    out = config.out
    if (out / "per_object.csv").exists() or (out / "captures").exists():
        if not config.overwrite:
            raise ValueError(f"{out} already holds an evaluation; pass --overwrite or a new --out")
        for sub in ("captures", "recon", "plots"):
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def _reconstruct(
    capture: RenderedCapture, backend: str, out: Path, config: EvalConfig
) -> tuple[object, dict[str, object]]:
    """Run one backend through the user's path; returns (result or None, status fields)."""
    # Open3D's RANSAC (support-plane search) draws from a global generator.
    o3d.utility.random.seed(config.seed)
    oracle = config.occupancy_oracle and parse_backend_spec(backend)[0] == "rvg"
    settings = ReconstructSettings(
        backend=backend,
        device=config.device,
        seed=config.seed,
        resolution=config.resolution,
        poses=PoseSettings(refine=config.refine_poses),
        weights_dir=config.weights_dir,
        backend_options={
            "occupancy_oracle": str(capture.gt_path),
            "fine_oracle": config.fine_oracle,
        }
        if oracle
        else {},
    )
    start = time.perf_counter()
    try:
        result = reconstruct_folder(capture.folder, out, settings)
    except ReconstructionError as exc:
        return None, {"status": "error", "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - one broken backend must not end the whole run
        traceback.print_exc(file=sys.stderr)
        return None, {"status": "crash", "error": f"{type(exc).__name__}: {exc}"}
    return result, {"status": "ok", "error": "", "wall_seconds": time.perf_counter() - start}


def run_eval(config: EvalConfig, log: Log = print_line) -> EvalOutputs:
    config.validate()
    _prepare_out(config)
    objects = load_dataset(config.dataset, config.split, config.limit, config.seed)
    if config.objects:
        unknown = sorted(set(config.objects) - {o.name for o in objects})
        if unknown:
            raise ValueError(f"--objects: not in {config.dataset} {config.split}: {unknown}")
        objects = [o for o in objects if o.name in config.objects]
    (config.out / "config.json").write_text(
        json.dumps(
            {"command": config.command(), **asdict(config), "out": str(config.out)},
            indent=2,
            default=str,
        )
    )
    rows: list[dict[str, object]] = []
    grid_rows: list[GridRow] = []
    csv_path = config.out / "per_object.csv"
    started = time.perf_counter()
    for index, obj in enumerate(objects):
        capture = render_object(obj, config.views, config.out / "captures" / obj.name, config.seed)
        truth = GroundTruth(capture, config.visibility)
        if truth.visibility != config.visibility:
            log(f"{obj.name}: GT winding inconsistent; seen split on either side")
        grid_row = None
        if index < config.grid_rows:
            grid_row = GridRow(
                obj.name, capture.input_rgb, render_thumbnail(truth.mesh, capture.unseen_pose)
            )
            grid_rows.append(grid_row)
        for backend in config.backends:
            out = config.out / "recon" / obj.name / backend
            result, status = _reconstruct(capture, backend, out, config)
            row: dict[str, object] = {
                "object": obj.name,
                "source": obj.source,
                "family": obj.family,
                "backend": backend,
                **status,
            }
            if result is not None:
                pose_row, moved = pose_scores(result, capture.true_poses)
                row.update(pose_row)
                row.update(
                    first_camera_score(
                        result, capture.true_poses, truth.mesh, config.points, config.seed
                    )
                )
                result = moved
                row.update(score_reconstruction(result, truth, config.points, config.seed))
                row["gt_seen_front_facing"] = float(truth.visibility == "front")
                unseen = row.get("completeness_unseen", float("nan"))
                log(
                    f"{obj.name:28s} {backend:14s} F@0.1 {row['f@0.1_unit']:.3f}  "
                    f"F@5mm {row['f@0.005']:.3f}  unseen {unseen:.3f}  "
                    f"{row['wall_seconds']:.1f} s"
                )
            else:
                log(f"{obj.name:28s} {backend:14s} {status['status']}: {status['error']}")
            if grid_row is not None:
                grid_row.backends[backend] = (
                    render_thumbnail(result.mesh, capture.unseen_pose)
                    if result is not None and not result.mesh.is_empty
                    else None
                )
            rows.append(row)
        write_csv(rows, csv_path)  # after every object: a long run that stops keeps its rows
    elapsed = time.perf_counter() - started
    (config.out / "run.json").write_text(json.dumps({"elapsed_seconds": elapsed}))
    summary, plots = write_report(config, rows, elapsed)
    grid = save_grid(grid_rows, config.backends, config.out / "grid.png") if grid_rows else None
    log(f"{len(rows)} rows in {elapsed:.0f} s -> {config.out}")
    return EvalOutputs(csv_path, summary, plots, grid, rows)


def write_report(
    config: EvalConfig, rows: list[dict[str, object]], elapsed: float
) -> tuple[Path, list[Path]]:
    """summary.md and the bar charts, from the rows."""
    objects = len({r["object"] for r in rows})
    notes = _notes(config, objects, elapsed)
    summary = config.out / "summary.md"
    summary.write_text(
        summary_markdown(rows, config.backends, f"Evaluation: {config.out.name}", notes) + "\n"
    )
    shutil.rmtree(config.out / "plots", ignore_errors=True)
    return summary, bar_charts(rows, config.backends, config.out / "plots")


def rebuild_report(config: EvalConfig) -> tuple[Path, list[Path]]:
    """Rewrite summary.md and the plots of an earlier run in ``config.out`` from its CSV (after
    a change to the report format; nothing is re-run). The backends are taken from the run."""
    csv_path = config.out / "per_object.csv"
    if not csv_path.exists():
        raise ValueError(f"{config.out} holds no per_object.csv to report on")
    stored = json.loads((config.out / "config.json").read_text())
    run = config.out / "run.json"
    elapsed = json.loads(run.read_text())["elapsed_seconds"] if run.exists() else float("nan")
    rows = read_csv(csv_path)
    views = ViewSpec(**stored["views"])
    keys = ("dataset", "split", "limit", "seed", "resolution", "points", "grid_rows", "device")
    original = EvalConfig(
        **{k: stored[k] for k in keys},
        backends=tuple(stored["backends"]),
        views=views,
        out=config.out,
        refine_poses=stored.get("refine_poses", "off"),
        weights_dir=stored.get("weights_dir"),
        occupancy_oracle=stored.get("occupancy_oracle", False),
        fine_oracle=stored.get("fine_oracle", False),
        objects=tuple(stored["objects"]) if stored.get("objects") else None,
        # Runs from before the option was added used the either-side test.
        visibility=stored.get("visibility", "either"),
    )
    return write_report(original, rows, elapsed)


def _notes(config: EvalConfig, count: int, elapsed: float) -> str:
    v = config.views
    noise = ", depth noise" if v.depth_noise else ""
    if v.pose_noise_deg or v.pose_noise_m:
        noise += f", pose noise {v.pose_noise_deg:g}° / {v.pose_noise_m * 1000:g} mm"
    if v.hand_eye_deg or v.hand_eye_m:
        noise += f", hand-eye offset {v.hand_eye_deg:g}° / {v.hand_eye_m * 1000:g} mm"
    if v.pose_input == "none":
        noise += ", unposed (poses estimated)"
    if v.pose_oracle != "off":
        noise += f", oracle poses (true relative poses anchored on the TF, {v.pose_oracle})"
    if config.refine_poses != "off":
        noise += f", pose refinement {config.refine_poses}"
    if config.occupancy_oracle:
        noise += ", rvg's coarse occupancy replaced by the true one (occupancy oracle)"
    if config.fine_oracle:
        noise += " and its fine latents too (fine oracle)"
    seen = (
        "front-facing"
        if config.visibility == "front"
        else "either side (the test before session 12)"
    )
    return (
        f"{count} objects ({config.dataset} {config.split}), {v.views} {v.sampler} views "
        f"at {v.image_size} px, modality `{v.modality}`{noise}, {config.resolution}³ voxels, "
        f"seed {config.seed}; seen GT surface: {seen}. Mean ± std over the objects a backend "
        f"succeeded on; best mean in bold. Whole run: {elapsed:.0f} s.\n\n"
        f"Reproduce: `{config.command()}`"
    )


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    return EvalConfig(
        dataset=args.dataset,
        split=args.split,
        backends=tuple(b.strip() for b in args.backends.split(",") if b.strip()),
        views=ViewSpec(
            views=args.views,
            sampler=args.sampler,
            image_size=args.image_size,
            modality=args.modality,
            depth_noise=args.depth_noise,
            pose_noise_deg=args.pose_noise_deg,
            pose_noise_m=args.pose_noise_mm / 1000.0,
            hand_eye_deg=args.hand_eye_deg,
            hand_eye_m=args.hand_eye_mm / 1000.0,
            pose_input=args.pose_input,
            pose_oracle=args.pose_oracle,
            holdout_views=args.holdout_views,
        ),
        out=Path(args.out),
        limit=args.limit,
        objects=tuple(n.strip() for n in args.objects.split(",") if n.strip())
        if getattr(args, "objects", None)
        else None,
        seed=args.seed,
        resolution=args.resolution,
        points=args.points,
        grid_rows=args.grid_rows,
        device=args.device,
        overwrite=args.overwrite,
        refine_poses=args.refine_poses,
        weights_dir=getattr(args, "weights_dir", None),
        occupancy_oracle=getattr(args, "occupancy_oracle", False),
        fine_oracle=getattr(args, "fine_oracle", False),
        visibility=getattr(args, "visibility", "front"),
    )


def run_from_args(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.report_only:
        summary, _ = rebuild_report(config)
        print(f"rewrote {summary} and its plots")
        return 0
    run_eval(config)
    return 0
