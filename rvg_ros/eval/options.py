"""``rvg-ros eval`` arguments. Kept free of heavy imports: the CLI builds its parser from this
module on every call, whichever subcommand runs."""

from __future__ import annotations

import argparse

DATASETS = ("procedural", "ycb")
SPLITS = ("dev", "test")
SAMPLERS = ("orbit", "one-sided", "random")
# rgbd: colour + depth + object masks (a segmented RGB-D camera); rgb: colour + masks, no
# depth; rgbd-unsegmented: colour + depth only, the pipeline finds the object itself.
MODALITIES = ("rgbd", "rgb", "rgbd-unsegmented")
POSE_INPUTS = ("tf", "none")
POSE_ORACLES = ("off", "cameras", "object")
# The seen/unseen split's side test (eval/visibility.py): front-facing, or either side (the
# test of every table before session 12).
VISIBILITY_SIDES = ("front", "either")
REFINE_CHOICES = ("auto", "on", "off")  # as rvg_ros.core.poses.REFINE_CHOICES
DEFAULT_BACKENDS = ("fusion", "hull", "fusion+convex", "fusion+carve", "fusion+mirror")


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", choices=DATASETS, default="procedural")
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="dev",
        help="dev (default) or test; the YCB test split is held out: evaluate on it only to "
        "report final numbers, never to tune",
    )
    parser.add_argument("--views", type=int, default=4, help="input views per object (2-16)")
    parser.add_argument("--sampler", choices=SAMPLERS, default="one-sided")
    parser.add_argument(
        "--backends",
        default=",".join(DEFAULT_BACKENDS),
        help="comma-separated backend names (default: %(default)s)",
    )
    parser.add_argument("--modality", choices=MODALITIES, default="rgbd")
    parser.add_argument("--out", required=True, help="output folder, e.g. results/NAME")
    parser.add_argument("--limit", type=int, default=None, help="first N objects only")
    parser.add_argument(
        "--objects",
        default=None,
        help="comma-separated object names: only these of the split (e.g. a subset for time)",
    )
    parser.add_argument("--seed", type=int, default=0, help="views, noise and sampling seed")
    parser.add_argument("--image-size", type=int, default=256, help="rendered views (pixels)")
    parser.add_argument("--resolution", type=int, default=96, help="backend voxels per side")
    parser.add_argument("--depth-noise", action="store_true", help="RealSense-like depth noise")
    parser.add_argument("--pose-noise-deg", type=float, default=0.0, help="rotation noise std")
    parser.add_argument("--pose-noise-mm", type=float, default=0.0, help="translation noise std")
    parser.add_argument(
        "--hand-eye-deg", type=float, default=0.0, help="constant camera offset: rotation (deg)"
    )
    parser.add_argument(
        "--hand-eye-mm", type=float, default=0.0, help="constant camera offset: translation"
    )
    parser.add_argument(
        "--pose-input",
        choices=POSE_INPUTS,
        default="tf",
        help="tf: frames carry (possibly perturbed) poses; none: unposed, poses are estimated",
    )
    parser.add_argument(
        "--pose-oracle",
        choices=POSE_ORACLES,
        default="off",
        help="the floor of --refine-poses: record the TRUE relative poses, placed where the "
        "perturbed TF poses put them on average (cameras: the camera fit refinement uses; "
        "object: mean rotation and mean placement of the object's centre) -- what a perfect "
        "refinement could give; run with --refine-poses off",
    )
    parser.add_argument(
        "--refine-poses",
        choices=REFINE_CHOICES,
        default="off",
        help="refinement of given poses against the depth (default off, as in the node)",
    )
    parser.add_argument(
        "--visibility",
        choices=VISIBILITY_SIDES,
        default="front",
        help="which GT surface counts as seen: front (facing an input camera; default) or "
        "either (either side within the occlusion slack: the test before session 12, which "
        "counted the back of walls under 1 mm as seen)",
    )
    parser.add_argument("--holdout-views", type=int, default=8, help="views for image metrics")
    parser.add_argument("--points", type=int, default=100_000, help="surface samples per shape")
    parser.add_argument("--grid-rows", type=int, default=8, help="objects shown in grid.png")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument(
        "--weights-dir", default=None, help="rvg weights folder (default: shipped with the package)"
    )
    parser.add_argument(
        "--occupancy-oracle",
        action="store_true",
        help="rvg backends: the coarse occupancy is the object's TRUE one instead of a sample "
        "-- what a perfect coarse generator would give after the same prior and decode "
        "(a diagnostic that tells the generator's errors from the decode's)",
    )
    parser.add_argument(
        "--fine-oracle",
        action="store_true",
        help="with --occupancy-oracle, for rvg backends with the fine stage: its latents are "
        "the true ones too (the mesh's signed distances at the fine sub-voxels)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an earlier evaluation in --out"
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite summary.md and plots/ of the evaluation in --out from its CSV; runs nothing",
    )
