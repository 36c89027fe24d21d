"""Faults against a real node process: GPU out of memory (failpoint), disk full / file size
limit, concurrent clients, cancel in every stage (SIGKILL loops: test_node_kill_loop.py)."""

from __future__ import annotations

import json
import resource
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import node_hold_env

rclpy = pytest.importorskip("rclpy")

from action_msgs.msg import GoalStatus  # noqa: E402
from action_msgs.srv import CancelGoal  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402

from rvg_ros.core.failpoints import ENV as FAILPOINTS  # noqa: E402
from rvg_ros.core.session import CaptureSession  # noqa: E402
from rvg_ros.reliability.system import Rig, rig  # noqa: E402
from rvg_ros.ros.demo import DemoClient  # noqa: E402

# The node holds a reconstruction at the stage named in this file of its root (node_hold_env).
HOLD_FILE = "hold_stage"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    root = tmp_path_factory.mktemp("faults")
    # The first reconstruction on a non-CPU device runs out of "GPU" memory (device auto).
    # The node process also loads test/node_hooks/sitecustomize.py, which holds a
    # reconstruction at the stage named in root/hold_stage (no file: no hold) until cancelled;
    # see test_cancel_during_each_stage.
    with rig(
        root,
        "resolution:=160",
        "device:=auto",
        node_env={
            FAILPOINTS: "backend.reconstruct=cuda_oom*1",
            **node_hold_env(root / HOLD_FILE),
        },
    ) as r:
        yield r
        print((root / "node-001.log").read_text()[-3000:])


def _frames_everywhere(root: Path) -> int:
    return sum(
        len(json.loads((p / "transforms.json").read_text())["frames"])
        for p in root.iterdir()
        if p.name.startswith("session") and (p / "transforms.json").exists()
    )


def test_gpu_out_of_memory_is_retried_on_cpu(node: Rig) -> None:
    for i in range(3):
        assert node.capture_until_accepted(f"oom {i}", timeout=120).accepted
        time.sleep(0.5)
    request = node.client.reconstruct.srv_type.Request()
    response = node.client.call(node.client.reconstruct, request, timeout=240)
    assert response.success, response.message
    log = (node.root / "node-001.log").read_text()
    assert "CUDA out of memory (injected at failpoint" in log and "retried on CPU" in log


def _wait(future, timeout: float) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not future.done() and time.monotonic() < deadline:
        time.sleep(0.01)
    return future.done()


def test_concurrent_clients_no_deadlock_no_lost_frames(node: Rig) -> None:
    from rvg_ros.srv import Capture, Reconstruct, Reset

    before = _frames_everywhere(node.root)
    executor = MultiThreadedExecutor(num_threads=4)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    stop = threading.Event()
    results: list[tuple[str, str]] = []
    accepted: list[int] = []

    def worker(kind: str, srv_type, name: str, period: float) -> None:  # noqa: ANN001
        client_node = rclpy.create_node("concurrent_" + kind.replace(" ", "_"))
        executor.add_node(client_node)
        client = client_node.create_client(srv_type, f"/rvg_reconstruct/{name}")
        client.wait_for_service(timeout_sec=30)
        while not stop.is_set():
            future = client.call_async(srv_type.Request())
            if not _wait(future, 240):
                results.append((kind, "no answer: deadlock?"))
                return
            r = future.result()
            if kind.startswith("capture"):
                outcome = "accepted" if r.accepted else r.reason.split(":")[0]
                accepted.extend([1] if r.accepted else [])
            else:
                outcome = "ok" if r.success else r.message.split(":")[0]
            results.append((kind, outcome))
            time.sleep(period)

    spinner.start()
    threads = [
        threading.Thread(target=worker, args=("capture A", Capture, "capture", 0.05)),
        threading.Thread(target=worker, args=("capture B", Capture, "capture", 0.13)),
        # A 1 s pause after each reconstruction gives the resets a window: with back-to-back
        # reconstructions on a slow CI machine every reset in 20 s was answered "busy".
        threading.Thread(target=worker, args=("reconstruct", Reconstruct, "reconstruct", 1.0)),
        threading.Thread(target=worker, args=("reset", Reset, "reset", 0.7)),
    ]
    try:
        for t in threads:
            t.start()
        # At least 20 s of contention, then on until both a reconstruction and a reset have
        # succeeded (bounded), so a slow machine gets a longer run rather than a failure.
        start = time.monotonic()
        while time.monotonic() - start < 120:
            done = {(k, o) for k, o in results}
            if time.monotonic() - start > 20 and {("reconstruct", "ok"), ("reset", "ok")} <= done:
                break
            time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(timeout=300)
        executor.shutdown()
        outcomes = {(k, o) for k, o in results}
        print(sorted(outcomes), len(results))
        assert not any("deadlock" in o for _, o in results)
        assert all(not t.is_alive() for t in threads)
        allowed = {
            "capture": {"accepted", "blurred", "no frame yet", "session full"},
            "reconstruct": {"ok", "busy", "too few frames"},
            "reset": {"ok", "busy"},
        }
        for kind, outcome in outcomes:
            assert outcome in allowed[kind.split()[0]], (kind, outcome)
        assert ("reconstruct", "ok") in outcomes and ("reset", "ok") in outcomes
        # Every acknowledged frame is in exactly one session folder (current or archived).
        assert _frames_everywhere(node.root) == before + len(accepted)
        for folder in node.root.iterdir():
            if folder.name.startswith("session"):
                CaptureSession(folder, create=False).frames()
    finally:
        stop.set()
        for t in threads:
            if t.ident is not None:  # started
                t.join(timeout=300)
        # Leave the next tests room to capture even when this one failed: captures after the
        # last successful reset can fill the session (max_frames).
        reset = node.client.call(node.client.reset, node.client.reset.srv_type.Request(), 240)
        assert reset.success, reset.message


# Every stage the node announces in the action feedback of a fusion RGB-D reconstruction, in
# order ("retry on cpu" only comes after a GPU out-of-memory): "load" from the node, "poses"
# from the pipeline, the backend's up to "done", then the node's "export" (before it writes the
# result folder; its "publish" checkpoint follows the export, see the "export-end" case).
STAGES = ("load", "poses", "integrate", "extract", "colour", "sample", "done", "export")


@dataclass
class GoalOutcome:
    status: int  # GoalStatus.STATUS_*
    message: str  # of the result
    announced: list[str]  # the stages the feedback announced, in order (each change once)
    # The answer to the cancel (None when none was sent); its repr is long and says little.
    cancel: CancelGoal.Response | None = field(repr=False)


def _run_goal(client: DemoClient, cancel_on: Callable[[str], bool]) -> GoalOutcome:
    """Send a reconstruct goal; cancel it on the first feedback whose stage ``cancel_on``
    accepts."""
    announced: list[str] = []

    def feedback(msg: Any) -> None:
        if not announced or announced[-1] != msg.feedback.stage:
            announced.append(msg.feedback.stage)

    send = client.action.send_goal_async(
        client.action_type.Goal(seed=-1), feedback_callback=feedback
    )
    rclpy.spin_until_future_complete(client.node, send, timeout_sec=30)
    handle = send.result()
    assert handle is not None and handle.accepted
    result = handle.get_result_async()
    cancel = None
    deadline = time.monotonic() + 240
    # The cancel is sent from this loop, not from the feedback callback: rclpy can hand the
    # goal response and the first feedback to one spin, before send.result() is read here.
    while not result.done():
        assert time.monotonic() < deadline, ("no result in 240 s", announced)
        rclpy.spin_once(client.node, timeout_sec=0.05)
        if cancel is None and any(cancel_on(s) for s in announced):
            cancel = handle.cancel_goal_async()
    if cancel is not None:
        rclpy.spin_until_future_complete(client.node, cancel, timeout_sec=30)
    response = result.result()
    return GoalOutcome(
        response.status,
        response.result.message,
        announced,
        cancel.result() if cancel is not None else None,
    )


def test_cancel_during_each_stage(node: Rig) -> None:
    """A cancel sent when the action feedback announces a stage stops the reconstruction in
    that stage, for every stage; the node is usable afterwards.

    Unheld, the stages last 30-200 ms and the node publishes feedback and relays cancels in a
    10 Hz loop, so whether a stage is announced and its cancel lands in time is a race (CI: 1
    of 5 stages once). Here the node process holds the reconstruction at the stage under test
    (test/node_hooks/sitecustomize.py) by calling the node's own progress checkpoint until the
    cancel stops it, so every outcome is determined: status CANCELED and "cancelled during
    <stage>". If the node does not announce the stage, does not accept the cancel, does not
    relay it to the worker, or does not turn it into CANCELED, the hold gives up after 30 s,
    the reconstruction succeeds and this fails.

    The export holds differently: it waits for the node's cancel event without reporting a
    stage, so "export" is announced only if the node reports it before writing. A cancel then
    stops the goal before the folder is written; one that arrives while the folder is written
    stops it at the node's "publish" checkpoint, with the complete folder kept (before these
    checkpoints such cancels were ignored and the goal SUCCEEDED; checked on that code).
    """
    client = node.client
    while len(CaptureSession(node.root / "session").frames()) < 3:
        assert node.capture_until_accepted("cancel", timeout=60).accepted
        time.sleep(0.4)
    hold_file = node.root / HOLD_FILE
    try:
        results = node.root / "session" / "reconstructions"
        # (hold at, cancel when announced, stage the cancel lands in, result folders written)
        cases = [(stage, stage, stage, 0) for stage in STAGES]
        # A cancel that arrives while the export writes: the folder is complete and stays, and
        # the node stops before publishing instead of reporting success.
        cases.append(("export-end", "export", "publish", 1))
        for hold_at, announced, stage, expect_written in cases:
            hold_file.write_text(hold_at)
            before = len(list(results.glob("[0-9]*")))
            goal = _run_goal(client, announced.__eq__)
            print(stage, goal)
            assert goal.cancel is not None, (stage, "stage never announced", goal)
            # Accepted: the goal is listed as canceling (rclpy answers a rejected cancel with
            # ERROR_NONE and an empty list).
            assert goal.cancel.return_code == CancelGoal.Response.ERROR_NONE, (stage, goal.cancel)
            assert len(goal.cancel.goals_canceling) == 1, (stage, goal.cancel)
            assert goal.status == GoalStatus.STATUS_CANCELED, (stage, goal)
            assert goal.message == f"cancelled during {stage}", (stage, goal)
            written = len(list(results.glob("[0-9]*"))) - before
            assert written == expect_written, (hold_at, written)
    finally:
        hold_file.unlink(missing_ok=True)
    # Unheld, a cancel on the first stage announced may land in any stage or too late (after
    # the last checkpoint): either outcome is defined, nothing else is.
    goal = _run_goal(client, lambda stage: stage in STAGES)
    print("unheld", goal)
    assert goal.cancel is not None, goal
    if goal.status == GoalStatus.STATUS_CANCELED:
        assert goal.message.startswith("cancelled during "), goal
    else:
        assert goal.status == GoalStatus.STATUS_SUCCEEDED, goal
    # Nothing is stuck after the cancels: the next reconstruction succeeds.
    response = client.call(client.reconstruct, client.reconstruct.srv_type.Request(), 240)
    assert response.success, response.message


def test_file_size_limit_rejects_capture_and_node_recovers(node: Rig) -> None:
    session = node.root / "session"
    assert node.capture_until_accepted("before", timeout=120).accepted  # frames are flowing
    held = len(CaptureSession(session, create=False))
    # Lower the node's soft RLIMIT_FSIZE (a write error mid-frame, like a full disk: writes
    # past 4 kB fail with EFBIG), then restore it: prlimit acts on the running process.
    soft, hard = resource.prlimit(node.node.pid, resource.RLIMIT_FSIZE)
    resource.prlimit(node.node.pid, resource.RLIMIT_FSIZE, (4096, hard))
    try:
        response = node.client.capture_frame("too big")
    finally:
        resource.prlimit(node.node.pid, resource.RLIMIT_FSIZE, (soft, hard))
    assert not response.accepted and "write failed" in response.reason, response.reason
    assert "File too large" in response.reason
    assert node.node.poll() is None
    frames = CaptureSession(session, create=False).frames()
    assert len(frames) == held  # the session is as it was before the failed capture
    assert not list(session.rglob(".*.tmp")), "a partial temporary was left behind"
    assert node.capture_until_accepted("after", timeout=30).accepted


def test_full_disk_rejects_capture_and_node_recovers(node: Rig) -> None:
    full = node.root / "session-tmpfs"
    full.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(full)],
        capture_output=True,
        text=True,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mount.stderr.strip()}")
    try:
        CaptureSession(full).set_frame_id("world")
        load = node.client.load_session.srv_type.Request(path=str(full))
        assert node.client.call(node.client.load_session, load).success
        reasons, accepted = [], 1
        assert node.capture_until_accepted("fill 0", timeout=30).accepted
        for i in range(1, 20):
            response = node.client.capture_frame(f"fill {i}")
            accepted += response.accepted
            if not response.accepted:
                reasons.append(response.reason)
                if "No space left" in response.reason:
                    break
            time.sleep(0.1)
        assert reasons and "write failed" in reasons[-1] and "No space left" in reasons[-1]
        assert node.node.poll() is None
        frames = CaptureSession(full, create=False).frames()  # consistent, all readable
        assert len(frames) == accepted
        load.path = str(node.root / "session")
        assert node.client.call(node.client.load_session, load).success
        assert node.capture_until_accepted("back", timeout=30).accepted
    finally:
        subprocess.run(["umount", str(full)], check=False)


def test_load_session_outside_the_sessions_folder_is_refused(node: Rig, tmp_path: Path) -> None:
    CaptureSession(tmp_path / "elsewhere")
    request = node.client.load_session.srv_type.Request(path=str(tmp_path / "elsewhere"))
    response = node.client.call(node.client.load_session, request)
    assert not response.success and "outside the sessions folder" in response.message
