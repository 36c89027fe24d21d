"""CaptureSession: round trip, resume, foreign folders, hostile paths, kills mid-write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from rvg_ros.core.session import CaptureSession, SessionError
from rvg_ros.core.types import Frame


def _frames(sphere_views) -> list[Frame]:
    return sphere_views[0]


def test_round_trip_keeps_pose_intrinsics_depth_mask(tmp_path: Path, sphere_views) -> None:
    frames = _frames(sphere_views)
    session = CaptureSession(tmp_path / "s")
    for i, f in enumerate(frames[:3]):
        f.note = "hello"
        assert session.append(f) == i
    back = CaptureSession(tmp_path / "s", create=False).frames()
    assert len(back) == 3
    for a, b in zip(frames[:3], back, strict=True):
        np.testing.assert_array_equal(a.rgb, b.rgb)
        np.testing.assert_allclose(a.camera_to_world, b.camera_to_world, atol=1e-12)
        assert a.intrinsics == b.intrinsics
        # 16-bit millimetres: half a millimetre quantisation.
        assert np.max(np.abs(a.depth - b.depth)) <= 0.0005 + 1e-6
        np.testing.assert_array_equal(a.mask, b.mask)
        assert b.note == "hello"


def test_transforms_json_is_nerfstudio_layout(tmp_path: Path, sphere_views) -> None:
    frame = _frames(sphere_views)[0]
    CaptureSession(tmp_path).append(frame)
    doc = json.loads((tmp_path / "transforms.json").read_text())
    for key in ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_model"):
        assert key in doc
    entry = doc["frames"][0]
    assert entry["file_path"] == "images/frame_00000.png"
    assert entry["depth_file_path"] == "depth/frame_00000.png"
    assert entry["mask_path"] == "masks/frame_00000.png"
    gl = np.array(entry["transform_matrix"])
    # OpenGL convention: the camera looks down its -z axis, so -z points at the object.
    to_object = sphere_views[1] - gl[:3, 3]
    assert np.dot(-gl[:3, 2], to_object / np.linalg.norm(to_object)) > 0.99


def test_unposed_frames_omit_transform_matrix(tmp_path: Path, sphere_views) -> None:
    f = _frames(sphere_views)[0]
    CaptureSession(tmp_path).append(Frame(rgb=f.rgb, intrinsics=f.intrinsics))
    entry = json.loads((tmp_path / "transforms.json").read_text())["frames"][0]
    assert "transform_matrix" not in entry
    assert CaptureSession(tmp_path).frame(0).camera_to_world is None


def test_resume_appends_after_existing_frames(tmp_path: Path, sphere_views) -> None:
    frames = _frames(sphere_views)
    CaptureSession(tmp_path).append(frames[0])
    resumed = CaptureSession(tmp_path)
    assert len(resumed) == 1
    assert resumed.append(frames[1]) == 1
    assert len(CaptureSession(tmp_path).frames()) == 2


def test_reads_foreign_folder_with_per_frame_intrinsics(tmp_path: Path, sphere_views) -> None:
    import cv2

    f = _frames(sphere_views)[0]
    (tmp_path / "rgb").mkdir()
    cv2.imwrite(str(tmp_path / "rgb" / "a.jpg"), f.rgb[:, :, ::-1])
    k = f.intrinsics
    doc = {
        "frames": [
            {
                "file_path": "./rgb/a.jpg",
                "fl_x": k.fx,
                "fl_y": k.fy,
                "cx": k.cx,
                "cy": k.cy,
                "w": k.width,
                "h": k.height,
                "transform_matrix": np.eye(4).tolist(),
            }
        ]
    }
    (tmp_path / "transforms.json").write_text(json.dumps(doc))
    frame = CaptureSession(tmp_path, create=False).frame(0)
    assert frame.rgb.shape == (k.height, k.width, 3)
    np.testing.assert_allclose(frame.camera_to_world, np.diag([1.0, -1.0, -1.0, 1.0]))


@pytest.mark.parametrize(
    "path",
    ["../outside.png", "/etc/passwd", "images/../../outside.png", "link/outside.png"],
)
def test_paths_escaping_the_folder_are_rejected(tmp_path: Path, sphere_views, path: str) -> None:
    session_dir = tmp_path / "s"
    CaptureSession(session_dir).append(_frames(sphere_views)[0])
    (tmp_path / "outside.png").write_bytes(
        (session_dir / "images" / "frame_00000.png").read_bytes()
    )
    (session_dir / "link").symlink_to(tmp_path)
    doc = json.loads((session_dir / "transforms.json").read_text())
    doc["frames"][0]["file_path"] = path
    (session_dir / "transforms.json").write_text(json.dumps(doc))
    with pytest.raises(SessionError, match="absolute path|escapes"):
        CaptureSession(session_dir).frame(0)


@pytest.mark.parametrize(
    "content, reason",
    [
        ("{not json", "cannot parse"),
        ('{"frames": 3}', "'frames' list"),
        ('{"frames": [{"nofile": 1}]}', "no file_path"),
    ],
)
def test_malformed_transforms_json(tmp_path: Path, content: str, reason: str) -> None:
    (tmp_path / "transforms.json").write_text(content)
    with pytest.raises(SessionError, match=reason):
        CaptureSession(tmp_path)


def test_non_rigid_matrix_and_missing_image_rejected(tmp_path: Path, sphere_views) -> None:
    CaptureSession(tmp_path).append(_frames(sphere_views)[0])
    doc = json.loads((tmp_path / "transforms.json").read_text())
    doc["frames"][0]["transform_matrix"][0][0] = 3.0
    (tmp_path / "transforms.json").write_text(json.dumps(doc))
    with pytest.raises(SessionError, match="transform_matrix"):
        CaptureSession(tmp_path).frame(0)
    doc["frames"][0]["transform_matrix"] = np.eye(4).tolist()
    (tmp_path / "transforms.json").write_text(json.dumps(doc))
    (tmp_path / "images" / "frame_00000.png").unlink()
    with pytest.raises(SessionError, match="missing file"):
        CaptureSession(tmp_path).frame(0)


def test_bad_frame_is_rejected_before_anything_is_written(tmp_path: Path, sphere_views) -> None:
    f = _frames(sphere_views)[0]
    bad = Frame(rgb=f.rgb, intrinsics=f.intrinsics, depth=np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match="size mismatch"):
        CaptureSession(tmp_path).append(bad)
    assert not (tmp_path / "images").exists()


_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from rvg_ros.core.session import CaptureSession
    from rvg_ros.core.types import Frame, Intrinsics
    session = CaptureSession(sys.argv[1])
    k = Intrinsics(100.0, 100.0, 63.5, 63.5, 128, 128)
    rng = np.random.default_rng(0)
    while True:
        i = len(session)
        rgb = np.full((128, 128, 3), i % 256, np.uint8)
        depth = rng.random((128, 128)).astype(np.float32)
        session.append(Frame(rgb=rgb, intrinsics=k, camera_to_world=np.eye(4), depth=depth))
        print(i, flush=True)
    """
)


def test_sigkill_during_writes_never_corrupts_the_session(tmp_path: Path) -> None:
    """Kill a writer at random moments; every acknowledged frame must read back."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    rng = np.random.default_rng(1)
    acknowledged = -1
    kills = 0
    for _ in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(tmp_path)],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        # Start the clock at the first acknowledged write (interpreter start-up varies a lot
        # on a loaded machine), then kill somewhere in the middle of the following writes.
        first = proc.stdout.readline()
        assert first, "writer died before its first frame"
        time.sleep(rng.random() * 0.5)
        proc.send_signal(signal.SIGKILL)
        kills += 1
        rest, _ = proc.communicate()
        printed = [int(x) for x in (first + rest).split()]
        acknowledged = max(acknowledged, printed[-1])
        session = CaptureSession(tmp_path)
        frames = session.frames()  # raises if anything visible is half-written
        assert len(frames) >= acknowledged + 1
        for i, frame in enumerate(frames):
            assert frame.rgb[0, 0, 0] == i % 256
    assert kills == 6 and acknowledged >= 5


def test_kill_loop_check_reports_missing_and_replaced_frames(tmp_path: Path, sphere_views) -> None:
    """The kill loop's check (rvg_ros.reliability.kill_loop): acknowledged frames that are not
    on disk, or whose index holds another frame, are each reported; a clean session none."""
    from rvg_ros.reliability.kill_loop import check_session

    session = CaptureSession(tmp_path / "s")
    for i, f in enumerate(_frames(sphere_views)[:3]):
        f.note = f"n{i}"
        session.append(f)
    assert check_session(tmp_path / "s", {0: "n0", 2: "n2"}) == (3, [])
    on_disk, lost = check_session(tmp_path / "s", {0: "n0", 1: "other", 3: "n3", 4: "n4"})
    assert on_disk == 3 and len(lost) == 3
    assert "frame 1 has note 'n1'" in lost[0] and "frame 3 missing" in lost[1]
