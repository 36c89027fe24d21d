"""Capture sessions on disk, in nerfstudio's ``transforms.json`` layout.

This module is the only code that reads or writes ``transforms.json``. The layout::

    session/
      transforms.json        camera model + intrinsics (top level), one entry per frame
      images/frame_00000.png colour (any format OpenCV reads when written by other tools)
      depth/frame_00000.png  16-bit PNG, millimetres (``depth_unit_scale_factor`` 0.001)
      masks/frame_00000.png  8-bit PNG, non-zero = object

``transform_matrix`` is camera-to-world in the OpenGL camera convention (x right, y up,
z backwards), as nerfstudio writes it; in memory we use OpenCV (see ``types.py``).

Durability: every file is written to a temporary name, fsynced and renamed, and
``transforms.json`` is rewritten (same way) only after the frame's images are in place, so a
kill at any moment leaves the previous consistent session. Files not referenced by
``transforms.json`` (left by a kill mid-append) are invisible and get overwritten.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from rvg_ros.core.limits import LimitExceeded, Limits, check_image_size
from rvg_ros.core.types import Frame, Intrinsics, check_rigid

TRANSFORMS = "transforms.json"
DEPTH_SCALE_MM = 0.001
# OpenCV <-> OpenGL camera axes: flip y and z. The matrix is its own inverse.
CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])
_DISTORTION_KEYS = ("k1", "k2", "p1", "p2", "k3", "k4")
_MAX_DEPTH_MM = 65535
# A transforms.json of 64 MB lists ~100k frames; anything larger is not a capture folder.
MAX_TRANSFORMS_BYTES = 64 * 2**20


# Per frame, written by ``record_poses``: the pose the frame came with, and what was done to it.
TF_POSE_KEY = "rvg_ros_tf_transform_matrix"
POSE_STATUS_KEY = "rvg_ros_pose"


class SessionError(ValueError):
    """A capture folder that cannot be read or written, with the reason."""


def opengl_from_opencv(camera_to_world: np.ndarray) -> np.ndarray:
    return np.asarray(camera_to_world, dtype=np.float64) @ CV_TO_GL


def opencv_from_opengl(camera_to_world: np.ndarray) -> np.ndarray:
    return np.asarray(camera_to_world, dtype=np.float64) @ CV_TO_GL


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old or the new file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Disk full, file size limit, read-only folder: leave no partial temporary behind.
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _encode_png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise SessionError(f"could not encode a {image.shape} {image.dtype} image as PNG")
    return buf.tobytes()


def _intrinsics_to_json(k: Intrinsics) -> dict[str, Any]:
    out: dict[str, Any] = {
        "camera_model": "OPENCV",
        "fl_x": k.fx,
        "fl_y": k.fy,
        "cx": k.cx,
        "cy": k.cy,
        "w": k.width,
        "h": k.height,
    }
    for key, value in zip(_DISTORTION_KEYS, k.distortion, strict=False):
        out[key] = float(value)
    return out


def _intrinsics_from_json(entry: dict[str, Any], defaults: dict[str, Any]) -> Intrinsics:
    def get(key: str) -> Any:
        if key in entry:
            return entry[key]
        if key in defaults:
            return defaults[key]
        raise SessionError(f"intrinsics key {key!r} missing (neither per frame nor top level)")

    try:
        distortion = tuple(float(entry.get(k, defaults.get(k, 0.0))) for k in _DISTORTION_KEYS)
        while distortion and distortion[-1] == 0.0:
            distortion = distortion[:-1]
        k = Intrinsics(
            fx=float(get("fl_x")),
            fy=float(get("fl_y")),
            cx=float(get("cx")),
            cy=float(get("cy")),
            width=int(get("w")),
            height=int(get("h")),
            distortion=distortion,
        )
        k.validate()
        check_image_size(k.width, k.height, Limits().max_image_pixels)
    except LimitExceeded as exc:
        raise SessionError(str(exc)) from exc
    except (TypeError, ValueError, OverflowError) as exc:
        raise SessionError(f"bad intrinsics: {exc}") from exc
    return k


def resolve_inside(root: Path, relative: str) -> Path:
    """Resolve a path from ``transforms.json`` and refuse anything outside ``root``.

    Absolute paths, ``..`` and symlinks that lead out of the folder are all rejected: a capture
    folder from elsewhere must never make us read arbitrary files.
    """
    if not isinstance(relative, str) or not relative:
        raise SessionError(f"file path must be a non-empty string, got {relative!r}")
    if os.path.isabs(relative):
        raise SessionError(f"absolute path not allowed in a capture folder: {relative}")
    root_real = root.resolve()
    candidate = (root / relative).resolve()
    if not candidate.is_relative_to(root_real):
        raise SessionError(f"path escapes the capture folder: {relative}")
    return candidate


def _check_image_header(path: Path, max_pixels: int) -> None:
    """Refuse an image whose header declares more than ``max_pixels``, before decoding it: a
    small compressed file can decode to gigabytes (a decompression bomb). Pillow reads only
    the header here; formats it does not know are left to OpenCV's own limit (2^30 pixels)."""
    size = path.stat().st_size
    if size > 8 * max_pixels:  # more bytes than any uncompressed 16-bit RGBA image of the limit
        raise SessionError(f"image file too large: {path.name} is {size} bytes")
    try:
        with Image.open(path) as header:
            width, height = header.size
    except Image.DecompressionBombError as exc:  # Pillow's own limit is above ours
        raise SessionError(f"{path.name}: image too large ({exc})") from exc
    except (UnidentifiedImageError, OSError, ValueError):
        return
    try:
        check_image_size(width, height, max_pixels)
    except LimitExceeded as exc:
        raise SessionError(f"{path.name}: {exc}") from exc


def _read_image(path: Path, flags: int) -> np.ndarray:
    if not path.is_file():
        raise SessionError(f"missing file: {path.name}")
    _check_image_header(path, Limits().max_image_pixels)
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, flags)
    if image is None:
        raise SessionError(f"unreadable image: {path.name}")
    return image


class CaptureSession:
    """A capture folder that frames are appended to and read back from.

    Opening an existing folder resumes it: new frames are appended after the ones present.
    """

    def __init__(self, root: str | Path, create: bool = True) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        path = self.root / TRANSFORMS
        if path.exists():
            self._doc = self._load_document(path)
        elif create:
            self.root.mkdir(parents=True, exist_ok=True)
            self._doc = {"frames": []}
        else:
            raise SessionError(f"no {TRANSFORMS} in {self.root}")

    # ----------------------------------------------------------------------------- reading
    @staticmethod
    def _load_document(path: Path) -> dict[str, Any]:
        try:
            size = path.stat().st_size
            if size > MAX_TRANSFORMS_BYTES:
                raise SessionError(
                    f"{path.name} is {size} bytes, more than {MAX_TRANSFORMS_BYTES}: "
                    "not a capture folder"
                )
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise SessionError(f"cannot parse {path.name}: {exc}") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("frames"), list):
            raise SessionError(f"{path.name} must be an object with a 'frames' list")
        for i, entry in enumerate(doc["frames"]):
            if not isinstance(entry, dict) or "file_path" not in entry:
                raise SessionError(f"frame {i} in {path.name} has no file_path")
        return doc

    def __len__(self) -> int:
        return len(self._doc["frames"])

    @property
    def frame_id(self) -> str:
        return str(self._doc.get("rvg_ros", {}).get("frame_id", "world"))

    def frame(self, index: int) -> Frame:
        """Read one frame back from disk (all checks applied)."""
        entry = self._doc["frames"][index]
        try:
            return self._read_frame(entry)
        except SessionError as exc:
            raise SessionError(f"frame {index} ({entry.get('file_path')}): {exc}") from exc

    def frames(self) -> list[Frame]:
        return [self.frame(i) for i in range(len(self))]

    def _read_frame(self, entry: dict[str, Any]) -> Frame:
        k = _intrinsics_from_json(entry, self._doc)
        bgr = _read_image(resolve_inside(self.root, entry["file_path"]), cv2.IMREAD_COLOR)
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        if rgb.shape[:2] != (k.height, k.width):
            raise SessionError(
                f"image is {rgb.shape[1]}x{rgb.shape[0]} but intrinsics say {k.width}x{k.height}"
            )
        depth = None
        if entry.get("depth_file_path"):
            depth = self._read_depth(entry["depth_file_path"])
            if depth.shape != rgb.shape[:2]:
                raise SessionError(f"depth is {depth.shape[::-1]}, colour {rgb.shape[1::-1]}")
        mask = None
        if entry.get("mask_path"):
            raw = _read_image(resolve_inside(self.root, entry["mask_path"]), cv2.IMREAD_GRAYSCALE)
            if raw.shape != rgb.shape[:2]:
                raise SessionError(f"mask is {raw.shape[::-1]}, colour {rgb.shape[1::-1]}")
            mask = raw > 0
        pose = None
        # After pose estimation/refinement ``transform_matrix`` holds the poses used and the
        # frame's own pose (TF; None when it came unposed) is kept under TF_POSE_KEY: frames are
        # read with their own, so a second reconstruction starts from the same input.
        key = TF_POSE_KEY if TF_POSE_KEY in entry else "transform_matrix"
        if entry.get(key) is not None:
            try:
                gl = np.asarray(entry[key], dtype=np.float64)
                check_rigid(gl)
            except (TypeError, ValueError) as exc:
                raise SessionError(f"bad transform_matrix: {exc}") from exc
            pose = opencv_from_opengl(gl)
        try:
            stamp = float(entry.get("stamp", 0.0))
        except (TypeError, ValueError, OverflowError) as exc:
            raise SessionError(f"bad stamp {entry.get('stamp')!r}") from exc
        return Frame(
            rgb=rgb,
            intrinsics=k,
            camera_to_world=pose,
            depth=depth,
            mask=mask,
            stamp=stamp,
            note=str(entry.get("note", "")),
        )

    def _read_depth(self, relative: str) -> np.ndarray:
        path = resolve_inside(self.root, relative)
        if path.suffix == ".npy":
            if not path.is_file():
                raise SessionError(f"missing file: {path.name}")
            depth = np.load(path, allow_pickle=False).astype(np.float32)
        else:
            raw = _read_image(path, cv2.IMREAD_UNCHANGED)
            if raw.ndim != 2:
                raise SessionError(f"depth image must be single channel: {path.name}")
            scale = self._doc.get("depth_unit_scale_factor", DEPTH_SCALE_MM)
            if (
                isinstance(scale, bool)
                or not isinstance(scale, int | float)
                or not np.isfinite(scale)
                or scale <= 0
            ):
                raise SessionError(f"depth_unit_scale_factor must be > 0, got {scale!r}")
            depth = raw.astype(np.float32) * np.float32(scale)
        depth[~np.isfinite(depth) | (depth < 0)] = 0.0
        return depth

    # ----------------------------------------------------------------------------- writing
    def append(self, frame: Frame) -> int:
        """Write ``frame`` durably and return its index. Raises ValueError on a bad frame."""
        frame.validate()
        with self._lock:
            index = len(self._doc["frames"])
            name = f"frame_{index:05d}.png"
            entry: dict[str, Any] = {"file_path": f"images/{name}"}
            files: list[tuple[Path, bytes]] = [
                (self.root / "images" / name, _encode_png(frame.rgb[:, :, ::-1]))
            ]
            if frame.depth is not None:
                mm = np.where(np.isfinite(frame.depth), frame.depth, 0.0) / DEPTH_SCALE_MM
                mm = np.clip(np.round(mm), 0, _MAX_DEPTH_MM).astype(np.uint16)
                files.append((self.root / "depth" / name, _encode_png(mm)))
                entry["depth_file_path"] = f"depth/{name}"
            if frame.mask is not None:
                files.append(
                    (self.root / "masks" / name, _encode_png(frame.mask.astype(np.uint8) * 255))
                )
                entry["mask_path"] = f"masks/{name}"
            if frame.camera_to_world is not None:
                entry["transform_matrix"] = opengl_from_opencv(frame.camera_to_world).tolist()
            entry["stamp"] = frame.stamp
            if frame.note:
                entry["note"] = frame.note
            self._set_intrinsics(entry, frame.intrinsics)

            for path, data in files:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(path, data)
            doc = dict(self._doc)
            doc["frames"] = [*self._doc["frames"], entry]
            self._write_document(doc)
            self._doc = doc
            return index

    def _set_intrinsics(self, entry: dict[str, Any], k: Intrinsics) -> None:
        """Top-level intrinsics from the first frame; per-frame keys only where they differ."""
        as_json = _intrinsics_to_json(k)
        if "fl_x" not in self._doc:
            self._doc.update(as_json)
            self._doc.setdefault("depth_unit_scale_factor", DEPTH_SCALE_MM)
            return
        differs = any(self._doc.get(key) != value for key, value in as_json.items())
        if differs:
            entry.update(as_json)

    def record_poses(self, report: Any) -> None:
        """Write estimated/refined poses back (``rvg_ros.core.poses.PoseReport``, one entry per
        frame in order): ``transform_matrix`` becomes the pose used (removed for a dropped
        frame), the original goes under ``rvg_ros_tf_transform_matrix`` (null when unposed),
        and ``rvg_ros_pose`` says what was done and why. One atomic rewrite; frames appended
        since the report's frames were read are left as they are."""
        with self._lock:
            # Frames appended after the reconstruction started are kept as they are.
            done = len(report.frames)
            if done > len(self._doc["frames"]):
                raise SessionError(f"pose report has {done} frames, session {len(self)}")
            entries = []
            for entry, pose in zip(self._doc["frames"][:done], report.frames, strict=True):
                entry = dict(entry)
                if TF_POSE_KEY not in entry:
                    entry[TF_POSE_KEY] = entry.get("transform_matrix")
                entry.pop("transform_matrix", None)
                if pose.pose is not None:
                    entry["transform_matrix"] = opengl_from_opencv(pose.pose).tolist()
                entry[POSE_STATUS_KEY] = pose.to_json()
                entries.append(entry)
            doc = dict(self._doc)
            doc["frames"] = entries + self._doc["frames"][done:]
            doc["rvg_ros"] = {
                **doc.get("rvg_ros", {}),
                "poses": {
                    "method": report.method,
                    "frame": report.frame,
                    "metric_scale": report.metric_scale,
                },
            }
            self._write_document(doc)
            self._doc = doc

    def set_frame_id(self, frame_id: str) -> None:
        """Record the world frame name that ``transform_matrix`` is expressed in."""
        with self._lock:
            doc = dict(self._doc)
            doc["rvg_ros"] = {**doc.get("rvg_ros", {}), "frame_id": frame_id}
            self._write_document(doc)
            self._doc = doc

    def _write_document(self, doc: dict[str, Any]) -> None:
        write_atomic(self.root / TRANSFORMS, json.dumps(doc, indent=1).encode("utf-8"))
