"""Hostile capture folders: every one is refused with a reason, nothing outside is ever read,
and ``rvg-ros reconstruct`` exits non-zero with one line."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rvg_ros.core.cli import main as cli_main
from rvg_ros.core.session import CaptureSession, SessionError

ROOT = Path(__file__).resolve().parents[1]
# The image kept outside the folder: a colour no frame of the session has.
SECRET_RGB = (1, 2, 3)


def _write_session(root: Path, sphere_views, count: int = 2) -> dict[str, Any]:
    session = CaptureSession(root)
    for frame in sphere_views[0][:count]:
        session.append(frame)
    return json.loads((root / "transforms.json").read_text())


def _plant_secret(tmp_path: Path, size: int = 128) -> Path:
    secret = tmp_path / "secret.png"
    cv2.imwrite(str(secret), np.full((size, size, 3), SECRET_RGB[::-1], np.uint8))
    return secret


def _edit(root: Path, change) -> None:  # noqa: ANN001 - change(doc) mutates the document
    doc = json.loads((root / "transforms.json").read_text())
    change(doc)
    (root / "transforms.json").write_text(json.dumps(doc))


def _set(frame: int, key: str, value: Any):  # noqa: ANN202
    def change(doc: dict) -> None:
        doc["frames"][frame][key] = value

    return change


def _top(key: str, value: Any):  # noqa: ANN202
    def change(doc: dict) -> None:
        doc[key] = value

    return change


def _truncate(root: Path) -> None:
    raw = (root / "transforms.json").read_bytes()
    (root / "transforms.json").write_bytes(raw[: len(raw) // 2])


def _garbage_image(root: Path) -> None:
    (root / "images" / "frame_00001.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)


def _unreadable_depth(root: Path) -> None:
    (root / "depth" / "frame_00000.png").write_bytes(b"not a png")


def _missing_mask(root: Path) -> None:
    (root / "masks" / "frame_00001.png").unlink()


def _symlinked_image(root: Path) -> None:
    target = root.parent / "secret.png"
    (root / "images" / "frame_00000.png").unlink()
    (root / "images" / "frame_00000.png").symlink_to(target)


def _symlinked_folder(root: Path) -> None:
    shutil.rmtree(root / "images")
    (root / "images").symlink_to(root.parent)
    _edit(root, _set(0, "file_path", "images/secret.png"))


def _png_bomb(root: Path) -> None:
    """A 150-byte PNG whose header declares 30000 x 30000 pixels (900 MB to decode)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 30_000, 30_000, 8, 0, 0, 0, 0)  # 8-bit greyscale
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
    png += chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    (root / "masks" / "frame_00000.png").write_bytes(png)


def _wrong_size(root: Path) -> None:
    _edit(root, _top("w", 64))


NAN_POSE = [[float("nan")] * 4] * 4
SCALED_POSE = np.diag([2.0, 2.0, 2.0, 1.0]).tolist()
SHEARED_POSE = [[1, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
MIRRORED_POSE = np.diag([-1.0, 1.0, 1.0, 1.0]).tolist()

# (case id, how to break the folder, words the reason must contain)
CASES: list[tuple[str, Any, str]] = [
    ("truncated json", _truncate, "cannot parse"),
    ("not an object", lambda r: (r / "transforms.json").write_text("[1, 2]"), "'frames' list"),
    ("deep nesting", lambda r: (r / "transforms.json").write_text("[" * 100_000), "cannot parse"),
    ("not utf-8", lambda r: (r / "transforms.json").write_bytes(b"\xff\xfe{}"), "cannot parse"),
    ("garbage image", _garbage_image, "unreadable image"),
    ("unreadable depth", _unreadable_depth, "unreadable image"),
    ("missing mask", _missing_mask, "missing file"),
    ("decompression bomb", _png_bomb, "image too large"),
    ("size vs intrinsics", _wrong_size, "intrinsics say 64x128"),
    ("huge intrinsics", lambda r: _edit(r, _top("w", 10**9)), "image too large"),
    ("infinite width", lambda r: _edit(r, _top("w", 1e400)), "bad intrinsics"),
    ("negative focal", lambda r: _edit(r, _top("fl_x", -100.0)), "focal lengths must be positive"),
    ("zero focal", lambda r: _edit(r, _top("fl_y", 0)), "focal lengths must be positive"),
    ("string focal", lambda r: _edit(r, _top("fl_x", "big")), "bad intrinsics"),
    ("nan pose", lambda r: _edit(r, _set(1, "transform_matrix", NAN_POSE)), "NaN or inf"),
    ("scaled pose", lambda r: _edit(r, _set(0, "transform_matrix", SCALED_POSE)), "orthonormal"),
    ("sheared pose", lambda r: _edit(r, _set(0, "transform_matrix", SHEARED_POSE)), "orthonormal"),
    ("mirror pose", lambda r: _edit(r, _set(0, "transform_matrix", MIRRORED_POSE)), "determinant"),
    ("3x3 pose", lambda r: _edit(r, _set(0, "transform_matrix", np.eye(3).tolist())), "4x4"),
    ("ragged pose", lambda r: _edit(r, _set(0, "transform_matrix", [[1], [2, 3]])), "transform"),
    ("dotdot path", lambda r: _edit(r, _set(0, "file_path", "../secret.png")), "escapes"),
    (
        "absolute path",
        lambda r: _edit(r, _set(0, "file_path", str(r.parent / "secret.png"))),
        "absolute path",
    ),
    (
        "dotdot depth",
        lambda r: _edit(r, _set(1, "depth_file_path", "x/../../secret.png")),
        "escapes",
    ),
    ("symlinked image", _symlinked_image, "escapes"),
    ("symlinked folder", _symlinked_folder, "escapes"),
    ("numeric path", lambda r: _edit(r, _set(0, "file_path", 7)), "non-empty string"),
    ("bad stamp", lambda r: _edit(r, _set(0, "stamp", {"sec": 1})), "bad stamp"),
    ("bad depth scale", lambda r: _edit(r, _top("depth_unit_scale_factor", "mm")), "depth_unit"),
]


@pytest.mark.parametrize("name, breaker, reason", CASES, ids=[c[0] for c in CASES])
def test_hostile_folder_is_rejected_with_reason_and_exit_code(
    tmp_path: Path, sphere_views, capsys: pytest.CaptureFixture[str], name: str, breaker, reason
) -> None:
    root = tmp_path / "capture"
    _write_session(root, sphere_views)
    _plant_secret(tmp_path)
    breaker(root)
    with pytest.raises(SessionError, match=reason):
        CaptureSession(root, create=False).frames()
    # The CLI's own entry point (the console script calls exactly this): one line, exit 2.
    code = cli_main(["reconstruct", "--input", str(root), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and reason in err[0], err
    assert not (tmp_path / "out" / "result.json").exists()


def test_console_script_exits_non_zero_on_an_escaping_path(tmp_path: Path, sphere_views) -> None:
    root = tmp_path / "capture"
    _write_session(root, sphere_views)
    _plant_secret(tmp_path)
    _symlinked_image(root)
    proc = subprocess.run(
        [sys.executable, "-m", "rvg_ros.core.cli", "reconstruct", "--input", str(root)]
        + ["--output", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "escapes the capture folder" in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------ property test: any document
_paths = st.sampled_from(
    [
        "images/frame_00000.png",
        "images/frame_00001.png",
        "./images/frame_00000.png",
        "depth/frame_00000.png",
        "masks/frame_00000.png",
        "../secret.png",
        "images/../../secret.png",
        "link/secret.png",
        "/SECRET",  # replaced with the absolute path of the secret file
        "",
        "images",
        "transforms.json",
    ]
)
_numbers = st.one_of(
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, 64, 128, 91.7]),
)
_junk = st.one_of(
    st.none(), st.booleans(), st.text(max_size=5), st.lists(st.integers(), max_size=3)
)
_value = st.one_of(_numbers, _junk, _paths)
_matrix = st.one_of(
    st.just(np.eye(4).tolist()),
    st.lists(st.lists(_numbers, min_size=4, max_size=4), min_size=4, max_size=4),
    st.lists(st.lists(_numbers, max_size=5), max_size=5),
    _junk,
)
_frame = st.fixed_dictionaries(
    {"file_path": st.one_of(_paths, _junk)},
    optional={
        "depth_file_path": st.one_of(_paths, _junk),
        "mask_path": st.one_of(_paths, _junk),
        "transform_matrix": _matrix,
        "stamp": _value,
        "note": _value,
        "fl_x": _value,
        "w": _value,
        "h": _value,
    },
)
_document = st.fixed_dictionaries(
    {"frames": st.lists(_frame, max_size=3)},
    optional={
        "fl_x": _value,
        "fl_y": _value,
        "cx": _value,
        "cy": _value,
        "w": _value,
        "h": _value,
        "k1": _value,
        "depth_unit_scale_factor": _value,
    },
)


def _absolute(doc: Any, secret: str) -> Any:
    if isinstance(doc, dict):
        return {k: _absolute(v, secret) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_absolute(v, secret) for v in doc]
    return secret if doc == "/SECRET" else doc


@settings(max_examples=120, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=_document, keep_intrinsics=st.booleans())
def test_any_transforms_json_loads_or_is_refused_and_never_reads_outside(
    tmp_path: Path, sphere_views, doc: dict, keep_intrinsics: bool
) -> None:
    root = tmp_path / "fuzz"
    if not root.exists():
        _write_session(root, sphere_views)
        secret = _plant_secret(tmp_path)
        (root / "link").symlink_to(tmp_path)
        (root / "good.json").write_text((root / "transforms.json").read_text())
    secret = tmp_path / "secret.png"
    if keep_intrinsics:  # most examples would otherwise stop at missing intrinsics
        good = json.loads((root / "good.json").read_text())
        doc = {**{k: v for k, v in good.items() if k != "frames"}, **doc}
    (root / "transforms.json").write_text(json.dumps(_absolute(doc, str(secret))))
    try:
        frames = CaptureSession(root, create=False).frames()
    except SessionError as exc:
        assert str(exc)  # a reason, never an empty message
        return
    for frame in frames:
        frame.validate()
        assert not np.all(frame.rgb == SECRET_RGB), "read a file outside the capture folder"
