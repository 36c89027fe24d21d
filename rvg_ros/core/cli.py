"""``rvg-ros``: the command-line entry point (ROS-free except the ``node`` and ``demo`` verbs)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rvg_ros.core.devices import DEVICES


def _progress_bar(enabled: bool):  # noqa: ANN202 - returns a ProgressFn
    """A tqdm bar on a terminal; silent otherwise (logs and CI stay clean)."""
    if not enabled:
        return lambda stage, fraction: None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=100, unit="%", bar_format="{desc:<12} {bar} {percentage:3.0f}% {elapsed}")

    def update(stage: str, fraction: float) -> None:
        bar.set_description_str(stage)
        bar.n = round(100 * fraction)
        bar.refresh()

    return update, bar.close


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    from rvg_ros.core.pipeline import ReconstructSettings, reconstruct_folder
    from rvg_ros.core.poses import PoseSettings

    settings = ReconstructSettings(
        backend=args.backend,
        device=args.device,
        max_views=args.max_views,
        seed=args.seed,
        resolution=args.resolution,
        weights_dir=args.weights_dir,
        backend_options={"steps": args.steps, "cfg_scale": args.cfg_scale},
        poses=PoseSettings(refine=args.refine_poses),
    )
    progress, close = _progress_bar(sys.stderr.isatty())
    try:
        result = reconstruct_folder(Path(args.input), Path(args.output), settings, progress)
    finally:
        close()
    seconds = sum(result.stage_seconds.values())
    print(
        f"{result.backend}: {result.num_views} views, {len(result.mesh.vertices)} vertices, "
        f"{len(result.cloud.points)} points, {seconds:.2f} s -> {args.output}"
    )
    return 0


PASSTHROUGH = {
    "train": ("rvg_ros.rvg.train", "make rvg training data / train the generator"),
    "bench": ("rvg_ros.bench", "time and memory per stage by number of views"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rvg-ros", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    rec = sub.add_parser("reconstruct", help="reconstruct a transforms.json capture folder")
    rec.add_argument("--input", required=True, help="capture folder with transforms.json")
    rec.add_argument("--output", required=True, help="output folder")
    rec.add_argument("--backend", default="fusion")
    rec.add_argument("--device", default="auto", choices=DEVICES)
    rec.add_argument("--max-views", type=int, default=None)
    rec.add_argument("--seed", type=int, default=0)
    rec.add_argument("--resolution", type=int, default=96, help="voxels along the target cube")
    rec.add_argument("--weights-dir", default=None, help="rvg weights (default: shipped)")
    rec.add_argument("--steps", type=int, default=30, help="rvg: flow sampling steps")
    rec.add_argument("--cfg-scale", type=float, default=7.5, help="rvg: classifier-free guidance")
    rec.add_argument(
        "--refine-poses",
        choices=("off", "on", "auto"),
        default="off",
        help="refine given poses on the depth (auto: when every frame has depth)",
    )
    rec.set_defaults(func=_cmd_reconstruct)

    node = sub.add_parser("node", help="run the ROS 2 node (what the launch file runs)")
    node.add_argument("ros_args", nargs=argparse.REMAINDER)
    node.set_defaults(func=lambda a: _run_ros("rvg_ros.ros.reconstruct_node", a.ros_args))

    from rvg_ros.eval.options import add_eval_arguments

    ev = sub.add_parser(
        "eval", help="render objects, reconstruct with each backend, score, write a report"
    )
    add_eval_arguments(ev)
    ev.set_defaults(func=_cmd_eval)

    # Listed for --help; main() hands their arguments to their own parsers.
    for verb, (_, text) in PASSTHROUGH.items():
        sub.add_parser(verb, help=text, add_help=False)

    demo = sub.add_parser(
        "demo", help="simulated camera + node + capture + reconstruct, end to end"
    )
    demo.add_argument("--out", default="out/demo")
    demo.add_argument("--views", type=int, default=4)
    demo.add_argument("--arc", type=float, default=120.0, help="degrees of orbit the views span")
    demo.add_argument("--backend", default="rvg")
    demo.add_argument("--baseline", default="fusion", help="also run offline; 'none' to skip")
    demo.set_defaults(func=_cmd_demo)
    return parser


def _run_main(module: str, argv: list[str]) -> int:
    """Sub-commands with their own argument parsers (train, bench)."""
    import importlib

    return int(importlib.import_module(module).main(argv) or 0)


def _run_ros(module: str, ros_args: list[str]) -> int:
    import importlib

    return int(importlib.import_module(module).main(["rvg-ros", *ros_args]) or 0)


def _cmd_eval(args: argparse.Namespace) -> int:
    from rvg_ros.eval.runner import run_from_args

    return run_from_args(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from rvg_ros.ros.demo import run_demo

    baseline = None if args.baseline == "none" else args.baseline
    return run_demo(
        Path(args.out), views=args.views, backend=args.backend, arc_deg=args.arc, baseline=baseline
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASSTHROUGH:
        return _run_main(PASSTHROUGH[argv[0]][0], argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, RuntimeError, OSError) as exc:
        # One line, non-zero exit: bad input is the user's to fix, not a traceback to read.
        print(f"rvg-ros: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
