"""Loaded into the node process of test_node.py and test_node_faults.py: holds a reconstruction
at one stage until the node's own cancel check stops it.

Python imports ``sitecustomize`` at start-up from the first ``sys.path`` entry that has one;
the tests put this folder on the node's ``PYTHONPATH`` (how coverage.py instruments
subprocesses; ``node_hold_env`` in test/conftest.py). It does nothing unless ``HOLD_FILE_ENV`` is
set.

Why a hold: unheld, the stages of a small fusion reconstruction take 30-200 ms, while a cancel
sent on the feedback that announces a stage takes one or two 100 ms polls of the node's action
loop (one publishes the stage, one relays the cancel to the worker) plus DDS round trips to
reach the worker, and is only seen at the next progress checkpoint. Whether a stage is announced
at all, and whether its cancel lands before the last checkpoint, was a race with the machine's
load.

The export (``export_reconstruction_atomic``, after the pipeline) is held by waiting for the
node's cancel event instead, without reporting a stage: hold file "export" before the files are
written, "export-end" after.

What it changes: nothing in the node's code paths. At the stage named in the hold file, it calls
the node's real progress callback again and again (each call reports the stage, which the
feedback then announces, and raises ``Cancelled`` once the node has relayed the client's
cancel), so the stage lasts until the cancel has arrived instead of a few tens of ms. If no
cancel arrives within ``HOLD_LIMIT_S`` the reconstruction goes on and succeeds, and the test
fails on the status.
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import os
import sys
import time
from pathlib import Path

# The tests set this (conftest.node_hold_env) to a file holding the stage to hold (read at each
# reconstruction; missing or empty = no hold), so their modules' other tests run the node unheld.
HOLD_FILE_ENV = "RVG_ROS_TEST_HOLD_FILE"
# Far above the cancel latency (under a second here, also with both cores loaded), far below the
# test's wait for the result.
HOLD_LIMIT_S = 30.0
POLL_S = 0.02


def _install(hold_file: Path) -> None:
    from rvg_ros.core import export, pipeline
    from rvg_ros.core.backends import ProgressFn, no_progress
    from rvg_ros.core.types import CaptureSet, Frame, Reconstruction

    original = pipeline.reconstruct_frames
    original_export = export.export_reconstruction_atomic
    # The node's progress callback of the reconstruction running now: the export hold calls it.
    node_progress: list[ProgressFn] = [no_progress]

    def held_stage() -> str:
        try:
            return hold_file.read_text().strip()
        except FileNotFoundError:
            return ""

    def hold(progress: ProgressFn, stage: str, fraction: float) -> None:
        print(f"[test hold] at {stage!r} until cancelled", file=sys.stderr, flush=True)
        deadline = time.monotonic() + HOLD_LIMIT_S
        while time.monotonic() < deadline:
            progress(stage, fraction)  # the node's checkpoint: raises Cancelled once cancelled
            time.sleep(POLL_S)
        print(f"[test hold] no cancel at {stage!r} in {HOLD_LIMIT_S:.0f} s", file=sys.stderr)

    @functools.wraps(original)
    def reconstruct_frames(
        frames: list[Frame],
        settings: pipeline.ReconstructSettings,
        progress: ProgressFn = no_progress,
    ) -> tuple[Reconstruction, CaptureSet]:
        node_progress[0] = progress
        stage = held_stage()
        if not stage:
            return original(frames, settings, progress)
        held = False
        if stage == "load":
            # The node reports "load" itself, then reads the frames and calls the pipeline.
            held = True
            hold(progress, stage, 0.0)

        def held_progress(name: str, fraction: float) -> None:
            nonlocal held
            progress(name, fraction)
            if name == stage and not held:  # once: a stage's own sub-steps repeat its name
                held = True
                hold(progress, name, fraction)

        return original(frames, settings, held_progress)

    def wait_for_cancel(progress: ProgressFn) -> None:
        """Block until the node's worker sees the cancel, without reporting a stage (the
        node's own report must have announced it). The event is the node's, read from the
        closure of its progress callback."""
        names = progress.__code__.co_freevars if hasattr(progress, "__code__") else ()
        if "cancel" not in names:
            return
        event = progress.__closure__[names.index("cancel")].cell_contents
        print("[test hold] in the export until cancelled", file=sys.stderr, flush=True)
        if not event.wait(HOLD_LIMIT_S):
            print(f"[test hold] no cancel in the export in {HOLD_LIMIT_S:.0f} s", file=sys.stderr)

    @functools.wraps(original_export)
    def export_reconstruction_atomic(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        # "export": hold before the files are written; "export-end": after (a slow export's
        # end). Either way only once the node itself has announced "export": nothing here
        # reports a stage before the cancel has arrived.
        stage = held_stage()
        if stage == "export":
            wait_for_cancel(node_progress[0])
            node_progress[0]("export", 1.0)  # the node's checkpoint: raises Cancelled
        files = original_export(*args, **kwargs)
        if stage == "export-end":
            wait_for_cancel(node_progress[0])
        return files

    # Before the node module runs: it imports the names from these modules.
    pipeline.reconstruct_frames = reconstruct_frames
    export.export_reconstruction_atomic = export_reconstruction_atomic


def _chain() -> None:
    """Run the ``sitecustomize`` this one shadows, if any (some distributions ship one)."""
    here = Path(__file__).resolve().parent
    path = [p for p in sys.path if Path(p or ".").resolve() != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


_chain()
if os.environ.get(HOLD_FILE_ENV):
    _install(Path(os.environ[HOLD_FILE_ENV]))
