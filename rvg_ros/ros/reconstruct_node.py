"""The rvg_ros node: capture frames around an object, reconstruct it, publish the result.

Thin by design: messages in -> ``Frame`` -> ``CaptureSession`` (disk) -> core pipeline ->
``Reconstruction`` -> messages out. Everything else lives in ``rvg_ros.core``.

Threading: a MultiThreadedExecutor runs the callbacks; reconstructions run on a dedicated
worker thread so capture, status and cancel stay responsive. One reconstruction at a time: a
second request while one runs is rejected with "busy" (not queued - a grasp pipeline wants an
answer about the frames it just captured, not about a queue).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header
from visualization_msgs.msg import Marker, MarkerArray

from rvg_ros.core.backends import BACKENDS, is_known_backend
from rvg_ros.core.export import (
    export_reconstruction_atomic,
    next_result_dir,
    observed_vertices,
    render_preview,
)
from rvg_ros.core.limits import (
    LimitExceeded,
    Limits,
    check_image_size,
    check_session_room,
    folder_bytes,
    sanitize_text,
)
from rvg_ros.core.pipeline import ReconstructSettings, reconstruct_frames
from rvg_ros.core.poses import REFINE_CHOICES, PoseReport, PoseSettings
from rvg_ros.core.rejections import RejectionCounts
from rvg_ros.core.session import CaptureSession, SessionError
from rvg_ros.core.types import Cancelled, Frame, Reconstruction
from rvg_ros.ros.camera_info import camera_info_to_intrinsics
from rvg_ros.ros.diagnostics import NodeHealth, health_to_diagnostics
from rvg_ros.ros.image import (
    COLOUR_ENCODINGS,
    DEPTH_ENCODINGS,
    MASK_ENCODINGS,
    check_image,
    image_to_depth,
    image_to_mask,
    image_to_rgb,
    rgb_to_image,
)
from rvg_ros.ros.marker import camera_frusta_to_marker_array, mesh_to_marker
from rvg_ros.ros.point_cloud2 import cloud_to_point_cloud2
from rvg_ros.ros.reconstruction import reconstruction_to_msg
from rvg_ros.ros.sync import CameraSynchronizer, MatchedMessages
from rvg_ros.ros.tf import TfPoseSource, TransformError

# (name, default, description). Defaults mirror config/reconstruct.yaml.
PARAMETERS: tuple[tuple[str, Any, str], ...] = (
    ("color_topic", "/camera/color/image_raw", "Colour image topic (rgb8/bgr8/rgba8/bgra8/mono8)."),
    (
        "depth_topic",
        "/camera/aligned_depth_to_color/image_raw",
        "Depth registered to the colour image (16UC1 mm or 32FC1 m); empty = RGB only.",
    ),
    ("camera_info_topic", "/camera/color/camera_info", "CameraInfo of the colour image."),
    ("mask_topic", "", "Optional object mask (mono8, non-zero = object); empty = none."),
    ("target_frame", "world", "Frame the poses, the result and its messages are expressed in."),
    (
        "pose_source",
        "tf",
        "'tf': camera pose from TF at the image stamp; 'none': unposed, poses are estimated "
        "(SfM, and depth registration with depth; metric only with depth).",
    ),
    (
        "refine_poses",
        "off",
        "off | on | auto: refine the TF poses against each other on the depth (auto = on when "
        "every frame has depth); frames needing more than the maximum correction are dropped.",
    ),
    ("max_pose_correction_m", 0.05, "Largest camera shift (m) pose refinement may apply."),
    ("max_pose_correction_deg", 10.0, "Largest camera rotation (deg) pose refinement may apply."),
    ("tf_timeout", 0.3, "Seconds to wait for the camera's transform at the image stamp."),
    ("sync_slop", 0.02, "Max stamp difference (s) between colour, depth, info and mask."),
    (
        "capture_mode",
        "manual",
        "'manual': frames kept on ~/capture; 'auto': when the camera moved.",
    ),
    (
        "auto_min_translation",
        0.05,
        "Auto capture: metres the camera must move since the last frame.",
    ),
    (
        "auto_min_rotation_deg",
        15.0,
        "Auto capture: degrees the camera must turn since the last frame.",
    ),
    (
        "blur_threshold",
        15.0,
        "Reject frames whose variance of the Laplacian is below this (0 = off).",
    ),
    ("min_frames", 2, "Frames needed before a reconstruction is attempted."),
    (
        "max_frame_age",
        2.0,
        "Capture refuses a synchronised frame that arrived more than this many seconds ago "
        "(the camera stopped, or only malformed messages arrive); 0 = any age.",
    ),
    ("max_frames", Limits.max_frames, "Frames held at most; further captures are rejected."),
    (
        "max_image_pixels",
        Limits.max_image_pixels,
        "Images (colour, depth, mask, camera info size) larger than this many pixels are "
        "rejected as they arrive (0 = no limit).",
    ),
    (
        "max_session_mb",
        Limits.max_session_mb,
        "Captures that would take the session folder past this size on disk are rejected "
        "(0 = no limit).",
    ),
    (
        "cpu_fallback",
        True,
        "A reconstruction that runs out of GPU memory is run again on the CPU.",
    ),
    (
        "diagnostics_period",
        1.0,
        "Seconds between diagnostic_msgs/DiagnosticArray reports on /diagnostics (0 = off).",
    ),
    (
        "roi",
        [0.0],
        "Region of interest [xmin ymin zmin xmax ymax zmax] in target_frame; "
        "any other length = auto (object nearest the image centre above the support plane).",
    ),
    ("backend", "fusion", "Reconstruction backend: " + ", ".join(sorted(BACKENDS)) + "."),
    ("device", "auto", "auto | cpu | cuda."),
    ("resolution", 96, "Voxels along the side of the target cube."),
    ("cloud_points", 50000, "Points sampled on the result's surface for the PointCloud2."),
    ("seed", 0, "Seed for anything random in a reconstruction."),
    ("rvg_steps", 30, "rvg: Euler steps of the shape flow (paper: 30)."),
    ("rvg_cfg_scale", 7.5, "rvg: classifier-free guidance scale (paper: 7.5; 1 = off)."),
    ("weights_dir", "", "Directory of model weights for learned backends; empty = shipped."),
    (
        "session_dir",
        "",
        "Capture folder (transforms.json); an existing one is resumed. "
        "Empty = ~/.ros/rvg_ros/sessions/<start time>.",
    ),
    ("output_dir", "", "Where result files go; empty = <session_dir>/reconstructions."),
    ("publish_preview", True, "Publish a rendered preview image of each result."),
)

# Results are published once and must reach RViz / planners that subscribe later.
LATCHED = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)


class FrameRejected(ValueError):
    """A frame that cannot be kept, with a reason for the caller and the log."""


@dataclass
class _Status:
    stage: str = "idle"
    progress: float = 0.0


class ReconstructNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("rvg_reconstruct", **kwargs)
        for name, default, description in PARAMETERS:
            self.declare_parameter(name, default, ParameterDescriptor(description=description))
        self._check_parameters()

        self._lock = threading.Lock()  # guards _latest, _session, counters
        self._latest: MatchedMessages | None = None
        self._latest_at = 0.0  # time.monotonic() when _latest arrived
        self._last_drop: dict[str, tuple[float, str]] = {}  # input -> (monotonic, reason)
        self._received: Counter[str] = Counter()
        self.rejections: Counter[str] = Counter()
        # Messages dropped as they arrive and frames refused, by reason (bounded; diagnostics).
        self.rejected = RejectionCounts()
        self._reported_rejections = 0
        self._write_error = ""
        self._last_auto_pose: np.ndarray | None = None
        self._session = self._open_session()
        # The node writes only under these: the sessions folder (session_dir's parent, where
        # reset archives go) and output_dir. load_session accepts folders in the former only.
        self._sessions_root = self._session.root.resolve().parent
        self._cameras = [(f.intrinsics, f.camera_to_world) for f in self._session.frames()]
        self._session_bytes = folder_bytes(self._session.root)

        self._busy = threading.Lock()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rvg_reconstruct")
        self._status = _Status()

        self._poses = None
        if self.p("pose_source") == "tf":
            self._poses = TfPoseSource(self, spin_thread=True)

        self._sensor_group = MutuallyExclusiveCallbackGroup()
        self._service_group = ReentrantCallbackGroup()
        self._subscribe()

        self.cloud_pub = self.create_publisher(PointCloud2, "~/cloud", LATCHED)
        self.mesh_pub = self.create_publisher(Marker, "~/mesh_marker", LATCHED)
        self.frusta_pub = self.create_publisher(MarkerArray, "~/camera_frusta", LATCHED)
        self.preview_pub = self.create_publisher(Image, "~/preview", LATCHED)
        from rvg_ros.action import Reconstruct as ReconstructAction
        from rvg_ros.msg import Reconstruction as ReconstructionMsg
        from rvg_ros.srv import Capture, LoadSession, Reconstruct, Reset

        self.result_pub = self.create_publisher(ReconstructionMsg, "~/reconstruction", LATCHED)
        group = self._service_group
        self.create_service(Capture, "~/capture", self._on_capture, callback_group=group)
        self.create_service(
            Reconstruct, "~/reconstruct", self._on_reconstruct, callback_group=group
        )
        self.create_service(Reset, "~/reset", self._on_reset, callback_group=group)
        self.create_service(LoadSession, "~/load_session", self._on_load, callback_group=group)
        self._action = ActionServer(
            self,
            ReconstructAction,
            "~/reconstruct_action",
            execute_callback=self._execute_action,
            goal_callback=lambda _goal: GoalResponse.ACCEPT,
            cancel_callback=lambda _goal: CancelResponse.ACCEPT,
            callback_group=group,
        )
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        if float(self.p("diagnostics_period")) > 0:
            self.create_timer(
                float(self.p("diagnostics_period")),
                self._publish_diagnostics,
                callback_group=MutuallyExclusiveCallbackGroup(),
            )
        self._publish_frusta()
        self.get_logger().info(
            f"ready: session {self._session.root} ({len(self._session)} frames), "
            f"backend {self.p('backend')}, pose_source {self.p('pose_source')}, "
            f"capture_mode {self.p('capture_mode')}"
        )

    # ------------------------------------------------------------------ parameters, set-up
    def p(self, name: str) -> Any:
        return self.get_parameter(name).value

    def _check_parameters(self) -> None:
        """Fail at start-up, with the reason, on parameters that can never work."""
        problems = []
        if self.p("pose_source") not in ("tf", "none"):
            problems.append(f"pose_source must be 'tf' or 'none', got {self.p('pose_source')!r}")
        if self.p("refine_poses") not in REFINE_CHOICES:
            problems.append(
                f"refine_poses must be one of {REFINE_CHOICES}, got {self.p('refine_poses')!r}"
            )
        if self.p("capture_mode") not in ("manual", "auto"):
            problems.append(
                f"capture_mode must be 'manual' or 'auto', got {self.p('capture_mode')!r}"
            )
        if self.p("device") not in ("auto", "cpu", "cuda"):
            problems.append(f"device must be auto, cpu or cuda, got {self.p('device')!r}")
        if not is_known_backend(self.p("backend")):
            problems.append(
                f"unknown backend {self.p('backend')!r}; known: {', '.join(sorted(BACKENDS))}"
            )
        if problems:
            raise ValueError("; ".join(problems))

    def _roi(self) -> tuple[np.ndarray, np.ndarray] | None:
        roi = list(self.p("roi"))
        if len(roi) != 6:
            return None
        return np.array(roi[:3], float), np.array(roi[3:], float)

    def _open_session(self) -> CaptureSession:
        path = self.p("session_dir")
        if not path:
            path = Path.home() / ".ros" / "rvg_ros" / "sessions" / time.strftime("%Y%m%d-%H%M%S")
        session = CaptureSession(Path(path).expanduser())
        session.set_frame_id(self.p("target_frame"))
        return session

    def _subscribe(self) -> None:
        depth_topic, mask_topic = self.p("depth_topic"), self.p("mask_topic")
        self._sync = CameraSynchronizer(
            self._on_matched,
            queue_size=10,
            slop=float(self.p("sync_slop")),
            with_depth=bool(depth_topic),
            with_mask=bool(mask_topic),
        )
        # Sensor data QoS (best effort) matches both reliable and best-effort drivers.
        inputs = [
            ("colour", Image, self.p("color_topic")),
            ("camera_info", CameraInfo, self.p("camera_info_topic")),
        ]
        if depth_topic:
            inputs.append(("depth", Image, depth_topic))
        if mask_topic:
            inputs.append(("mask", Image, mask_topic))
        self._inputs = [
            self.create_subscription(
                msg_type,
                topic,
                self._feeder(name),
                qos_profile_sensor_data,
                callback_group=self._sensor_group,
            )
            for name, msg_type, topic in inputs
        ]

    def _feeder(self, name: str):  # noqa: ANN202 - returns a subscription callback
        add = getattr(self._sync, f"add_{name}")
        encodings = {"colour": COLOUR_ENCODINGS, "depth": DEPTH_ENCODINGS, "mask": MASK_ENCODINGS}
        max_pixels = int(self.p("max_image_pixels"))

        def check(msg: Any) -> None:
            if name == "camera_info":
                intrinsics = camera_info_to_intrinsics(msg)
                check_image_size(intrinsics.width, intrinsics.height, max_pixels)
            else:
                check_image(msg, encodings[name], max_pixels)

        def feed(msg: Any) -> None:
            self._received[name] += 1
            # Malformed or oversized messages never reach the synchroniser: a flooding or
            # broken publisher cannot displace good frames or make us decode junk.
            try:
                check(msg)
            except (ValueError, TypeError, OverflowError) as exc:
                key = self.rejected.add(f"{name} message", str(exc))
                self._last_drop[name] = (time.monotonic(), str(exc))
                self.get_logger().warning(
                    f"{name} message dropped: {exc} ({key}; counts on /diagnostics)",
                    throttle_duration_sec=5.0,
                )
                return
            add(msg)

        return feed

    # ------------------------------------------------------------------ frames
    def _on_matched(self, matched: MatchedMessages) -> None:
        with self._lock:
            self._latest, self._latest_at = matched, time.monotonic()
        if self.p("capture_mode") == "auto":
            self._auto_capture(matched)

    def _reject(self, reason: str) -> str:
        key = reason.split(":")[0]
        self.rejections[key] += 1
        self.rejected.add("frame", reason)
        self.get_logger().warning(f"frame rejected: {reason}")
        return reason

    def _dropped_since(self, since: float) -> list[str]:
        return [f"{n} message: {r}" for n, (t, r) in self._last_drop.items() if t > since]

    def _stale_reason(self, latest_at: float) -> str | None:
        max_age = float(self.p("max_frame_age"))
        age = time.monotonic() - latest_at
        if max_age <= 0 or age <= max_age:
            return None
        dropped = self._dropped_since(latest_at)
        if dropped:
            return f"bad message: no good frame for {age:.1f} s; dropped " + "; ".join(dropped)
        return f"no frame yet: the last synchronised frame is {age:.1f} s old (max_frame_age)"

    def _missing_input_reason(self) -> str:
        dropped = self._dropped_since(0.0)
        if dropped:
            return "bad message: nothing usable received; dropped " + "; ".join(dropped)
        names = ["colour", "camera_info"] + [
            n for n, on in (("depth", self._sync.with_depth), ("mask", self._sync.with_mask)) if on
        ]
        missing = [n for n in names if self._received[n] == 0]
        if missing:
            topics = {
                "colour": "color_topic",
                "camera_info": "camera_info_topic",
                "depth": "depth_topic",
                "mask": "mask_topic",
            }
            return "no frame yet: nothing received on " + ", ".join(
                f"{n} ({self.p(topics[n])})" for n in missing
            )
        return (
            f"no frame yet: inputs arrive but their stamps never match within "
            f"sync_slop={self.p('sync_slop')} s"
        )

    def frame_from_messages(self, matched: MatchedMessages, note: str = "") -> Frame:
        """Convert one synchronised set to a Frame; FrameRejected says why it can't be."""
        colour = matched.colour
        try:
            intrinsics = camera_info_to_intrinsics(matched.camera_info)
            rgb = image_to_rgb(colour)
            depth = image_to_depth(matched.depth) if matched.depth is not None else None
            mask = image_to_mask(matched.mask) if matched.mask is not None else None
        except ValueError as exc:
            raise FrameRejected(f"bad message: {exc}") from exc
        if rgb.shape[:2] != (intrinsics.height, intrinsics.width):
            raise FrameRejected(
                f"size mismatch: colour {rgb.shape[1]}x{rgb.shape[0]}, "
                f"camera info {intrinsics.width}x{intrinsics.height}"
            )
        if depth is not None and depth.shape != rgb.shape[:2]:
            raise FrameRejected(
                f"size mismatch: colour {rgb.shape[1]}x{rgb.shape[0]}, depth "
                f"{depth.shape[1]}x{depth.shape[0]} (depth must be registered to colour)"
            )
        if depth is not None and not np.any(depth > 0):
            raise FrameRejected("no valid depth: every depth pixel is zero, NaN or inf")
        threshold = float(self.p("blur_threshold"))
        if threshold > 0:
            sharpness = float(
                cv2.Laplacian(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var()
            )
            if sharpness < threshold:
                raise FrameRejected(
                    f"blurred: variance of Laplacian {sharpness:.1f} < blur_threshold {threshold}"
                )
        pose = None
        if self._poses is not None:
            try:
                pose = self._poses.lookup_camera_to_world(
                    self.p("target_frame"),
                    colour.header.frame_id,
                    colour.header.stamp,
                    float(self.p("tf_timeout")),
                )
            except TransformError as exc:
                raise FrameRejected(
                    f"no pose: {self.p('target_frame')} <- {colour.header.frame_id!r}: {exc}"
                ) from exc
        stamp = colour.header.stamp.sec + colour.header.stamp.nanosec * 1e-9
        frame = Frame(
            rgb=rgb,
            intrinsics=intrinsics,
            camera_to_world=pose,
            depth=depth,
            mask=mask,
            stamp=stamp,
            note=note,
        )
        try:
            frame.validate()
        except ValueError as exc:
            raise FrameRejected(f"invalid frame: {exc}") from exc
        return frame

    def capture(self, note: str = "", matched: MatchedMessages | None = None) -> tuple[int, int]:
        """Keep a frame; returns (index, frames held). Raises FrameRejected with the reason."""
        if matched is None:
            with self._lock:
                matched, latest_at = self._latest, self._latest_at
            if matched is not None:
                stale = self._stale_reason(latest_at)
                if stale:
                    raise FrameRejected(stale)
        if matched is None:
            raise FrameRejected(self._missing_input_reason())
        if len(self._session) >= int(self.p("max_frames")):
            raise FrameRejected(f"session full: max_frames={self.p('max_frames')} reached")
        frame = self.frame_from_messages(matched, sanitize_text(note, Limits.max_note_chars))
        with self._lock:
            # Checked again under the lock: concurrent captures must not overshoot.
            if len(self._session) >= int(self.p("max_frames")):
                raise FrameRejected(f"session full: max_frames={self.p('max_frames')} reached")
            # Upper bound of the PNGs this frame adds (colour + 16-bit depth + mask).
            pixels = frame.rgb.shape[0] * frame.rgb.shape[1]
            adding = pixels * (3 + 2 * (frame.depth is not None) + (frame.mask is not None))
            try:
                check_session_room(self._session_bytes, adding, float(self.p("max_session_mb")))
            except LimitExceeded as exc:
                raise FrameRejected(str(exc)) from exc
            try:
                index = self._session.append(frame)  # on disk before we acknowledge
            except (OSError, ValueError) as exc:
                self._write_error = str(exc)
                raise FrameRejected(f"write failed: {exc}") from exc
            self._write_error = ""
            self._session_bytes = folder_bytes(self._session.root)
            self._cameras.append((frame.intrinsics, frame.camera_to_world))
            held = len(self._session)
        self._publish_frusta()
        return index, held

    def _auto_capture(self, matched: MatchedMessages) -> None:
        if self._poses is None:
            return
        try:
            pose = self._poses.lookup_camera_to_world(
                self.p("target_frame"),
                matched.colour.header.frame_id,
                matched.colour.header.stamp,
                0.0,
            )
        except TransformError:
            return  # TF not there yet for this image; a later one will do
        last = self._last_auto_pose
        if last is not None:
            moved = np.linalg.norm(pose[:3, 3] - last[:3, 3])
            cos = (np.trace(last[:3, :3].T @ pose[:3, :3]) - 1.0) / 2.0
            turned = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
            if moved < self.p("auto_min_translation") and turned < self.p("auto_min_rotation_deg"):
                return
        try:
            index, _ = self.capture("auto", matched)
        except FrameRejected as exc:
            self._reject(str(exc))
            return
        self._last_auto_pose = pose
        self.get_logger().info(f"auto capture: frame {index}")

    # ------------------------------------------------------------------ services
    def _on_capture(self, request: Any, response: Any) -> Any:
        try:
            index, held = self.capture(request.note)
        except Exception as exc:  # noqa: BLE001 - a service answers; it never kills the node
            if not isinstance(exc, FrameRejected):
                exc = FrameRejected(f"internal error: {type(exc).__name__}: {exc}")
            response.accepted, response.frame_index = False, -1
            response.num_frames = len(self._session)
            response.reason = self._reject(str(exc))
            return response
        response.accepted, response.frame_index, response.num_frames = True, index, held
        self.get_logger().info(f"captured frame {index} ({held} held)")
        return response

    def _on_reset(self, request: Any, response: Any) -> Any:
        # Holding the worker's lock: no reconstruction can start reading the frames we move.
        if not self._busy.acquire(blocking=False):
            response.success, response.message = False, "busy: a reconstruction is running"
            return response
        try:
            with self._lock:
                root = self._session.root
                held = len(self._session)
                if held:
                    # Keep the old frames on disk; the session folder starts empty again.
                    archived = self._archive(root)
                    message = f"cleared {held} frames (kept in {archived})"
                else:
                    message = "session was already empty"
                self._session = CaptureSession(root)
                self._session.set_frame_id(self.p("target_frame"))
                self._session_bytes = folder_bytes(root)
                self._cameras = []
                self._last_auto_pose = None
        except (OSError, SessionError) as exc:
            response.success, response.message = False, f"reset failed: {exc}"
            self.get_logger().error(response.message)
            return response
        finally:
            self._busy.release()
        self._publish_frusta()
        response.success, response.message, response.session_dir = True, message, str(root)
        self.get_logger().info(f"reset: {message}")
        return response

    @staticmethod
    def _archive(root: Path) -> Path:
        """Rename ``root`` to a fresh ``<name>-<time>[-N]`` sibling (never into an existing one)."""
        stem = f"{root.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        for n in range(1000):
            archived = root.with_name(stem if n == 0 else f"{stem}-{n}")
            if not archived.exists():
                os.rename(root, archived)  # same folder: atomic
                return archived
        raise OSError(f"no free archive name for {root}")

    def _on_load(self, request: Any, response: Any) -> Any:
        if not self._busy.acquire(blocking=False):
            response.success, response.message = False, "busy: a reconstruction is running"
            return response
        try:
            path = Path(request.path).expanduser()
            # New captures are appended to the loaded folder: it must be one of ours.
            if not path.resolve().is_relative_to(self._sessions_root):
                raise SessionError(
                    f"outside the sessions folder {self._sessions_root} (the node writes only "
                    "there and in output_dir; copy the capture folder there first)"
                )
            session = CaptureSession(path, create=False)
            frames = session.frames()  # every frame must be readable before we switch
            with self._lock:
                self._session = session
                self._session_bytes = folder_bytes(session.root)
                self._cameras = [(f.intrinsics, f.camera_to_world) for f in frames]
        except (SessionError, OSError, ValueError) as exc:
            response.success, response.message = False, f"cannot load {request.path}: {exc}"
            self.get_logger().warning(response.message)
            return response
        finally:
            self._busy.release()
        self._publish_frusta()
        response.success, response.num_frames = True, len(frames)
        response.message = f"loaded {len(frames)} frames from {session.root}"
        self.get_logger().info(response.message)
        return response

    def _settings(self, backend: str, max_views: int, seed: int) -> ReconstructSettings:
        return ReconstructSettings(
            backend=backend or self.p("backend"),
            device=self.p("device"),
            max_views=max_views or None,
            seed=seed if seed >= 0 else int(self.p("seed")),
            min_views=int(self.p("min_frames")),
            resolution=int(self.p("resolution")),
            cloud_points=int(self.p("cloud_points")),
            weights_dir=self.p("weights_dir") or None,
            roi=self._roi(),
            frame_id=self.p("target_frame"),
            cpu_fallback=bool(self.p("cpu_fallback")),
            poses=PoseSettings(
                refine=self.p("refine_poses"),
                max_correction_m=float(self.p("max_pose_correction_m")),
                max_correction_deg=float(self.p("max_pose_correction_deg")),
            ),
            backend_options={
                "steps": int(self.p("rvg_steps")),
                "cfg_scale": float(self.p("rvg_cfg_scale")),
            },
        )

    def _start(self, settings: ReconstructSettings, cancel: threading.Event) -> Future | str:
        """Submit a reconstruction to the worker, or return why it can't start."""
        if not is_known_backend(settings.backend):
            return f"unknown backend {settings.backend!r}; known: {', '.join(sorted(BACKENDS))}"
        if len(self._session) < settings.min_views:
            return f"too few frames: {len(self._session)} held, min_frames={settings.min_views}"
        if not self._busy.acquire(blocking=False):
            return "busy: a reconstruction is already running"
        try:
            return self._worker.submit(self._reconstruct, settings, cancel)
        except RuntimeError as exc:  # worker shut down: node is exiting
            self._busy.release()
            return f"shutting down: {exc}"

    def _reconstruct(
        self, settings: ReconstructSettings, cancel: threading.Event
    ) -> Reconstruction:
        try:

            def progress(stage: str, fraction: float) -> None:
                self._status = _Status(stage, fraction)
                if cancel.is_set():
                    raise Cancelled(f"cancelled during {stage}")

            with self._lock:
                session = self._session
            progress("load", 0.0)
            frames = session.frames()
            result, capture = reconstruct_frames(frames, settings, progress)
            self._record_poses(session, frames, result)
            if "device_fallback" in result.extras:
                self.get_logger().warning(f"GPU: {result.extras['device_fallback']}")
            out_root = Path(self.p("output_dir") or session.root / "reconstructions").expanduser()
            # Export and publish take seconds (files, preview render, message conversion):
            # cancel checkpoints before each, so a cancel is not ignored until the goal
            # succeeds. One that arrives during the export stops the publishing; the folder
            # written stays (complete, see below) and the log names it.
            progress("export", 1.0)
            # Written into a hidden folder and renamed: a kill mid-export leaves no partial
            # result, and numbering continues after a restart instead of overwriting.
            folder = next_result_dir(out_root)
            export_reconstruction_atomic(result, capture.frames, folder)
            try:
                progress("publish", 1.0)
            except Cancelled:
                self.get_logger().info(f"cancelled after the export; the result stays in {folder}")
                raise
            self._publish(result, capture.frames)
            self.get_logger().info(
                f"reconstructed with {result.backend}: {result.num_views} views, "
                f"{len(result.mesh.vertices)} vertices, {sum(result.stage_seconds.values()):.2f} s"
            )
            return result
        finally:
            self._status = _Status()
            self._busy.release()

    def _on_reconstruct(self, request: Any, response: Any) -> Any:
        started = self._start(
            self._settings(request.backend, request.max_views, request.seed), threading.Event()
        )
        if isinstance(started, str):
            response.success, response.message = False, started
            self.get_logger().warning(f"reconstruct rejected: {started}")
            return response
        try:
            result = started.result()
        except Exception as exc:  # noqa: BLE001 - every failure becomes a response, not a crash
            response.success, response.message = False, f"reconstruction failed: {exc}"
            self.get_logger().error(response.message)
            return response
        response.success, response.message = True, "ok"
        response.reconstruction = self._result_msg(result)
        return response

    def _execute_action(self, goal_handle: Any) -> Any:
        from rvg_ros.action import Reconstruct as ReconstructAction

        goal = goal_handle.request
        result_msg = ReconstructAction.Result()
        cancel = threading.Event()
        started = self._start(self._settings(goal.backend, goal.max_views, goal.seed), cancel)
        if isinstance(started, str):
            result_msg.success, result_msg.message = False, started
            self.get_logger().warning(f"reconstruct goal rejected: {started}")
            goal_handle.abort()
            return result_msg
        t0 = time.monotonic()
        feedback = ReconstructAction.Feedback()
        while not started.done():
            if goal_handle.is_cancel_requested:
                cancel.set()
            status = self._status
            feedback.stage, feedback.progress = status.stage, float(status.progress)
            feedback.elapsed = float(time.monotonic() - t0)
            goal_handle.publish_feedback(feedback)
            time.sleep(0.1)
        try:
            result = started.result()
        except Cancelled as exc:
            result_msg.success, result_msg.message = False, str(exc)
            goal_handle.canceled()
            self.get_logger().info(f"reconstruction {exc}")
            return result_msg
        except Exception as exc:  # noqa: BLE001
            result_msg.success, result_msg.message = False, f"reconstruction failed: {exc}"
            self.get_logger().error(result_msg.message)
            goal_handle.abort()
            return result_msg
        feedback.stage, feedback.progress = "done", 1.0
        feedback.elapsed = float(time.monotonic() - t0)
        goal_handle.publish_feedback(feedback)
        result_msg.success, result_msg.message = True, "ok"
        result_msg.reconstruction = self._result_msg(result)
        goal_handle.succeed()
        return result_msg

    # ------------------------------------------------------------------ publishing
    def _header(self) -> Header:
        return Header(frame_id=self.p("target_frame"), stamp=self.get_clock().now().to_msg())

    def _result_msg(self, result: Reconstruction) -> Any:
        return reconstruction_to_msg(
            result, stamp=self._header().stamp, frame_id=self.p("target_frame")
        )

    def _publish(self, result: Reconstruction, frames: Sequence[Frame]) -> None:
        header = self._header()
        self.cloud_pub.publish(cloud_to_point_cloud2(result.cloud, header))
        self.mesh_pub.publish(mesh_to_marker(result.mesh, header))
        self.result_pub.publish(
            reconstruction_to_msg(result, stamp=header.stamp, frame_id=header.frame_id)
        )
        if self.p("publish_preview"):
            self.preview_pub.publish(
                rgb_to_image(
                    render_preview(result.mesh, list(frames), observed=observed_vertices(result)),
                    "rgb8",
                    header,
                )
            )

    def _record_poses(
        self, session: CaptureSession, frames: Sequence[Frame], result: Reconstruction
    ) -> None:
        """Estimated/refined poses: logged per frame (corrections, dropped frames and why),
        written back to the session's transforms.json, shown as the frusta."""
        report = result.extras.get("pose_report")
        if not isinstance(report, PoseReport) or report.method == "given":
            return
        for index, frame in enumerate(report.frames):
            if frame.status == "dropped":
                self.get_logger().warning(f"frame {index} dropped: {frame.reason}")
            elif frame.correction_m is not None:
                self.get_logger().info(
                    f"frame {index} pose corrected by {frame.correction_m * 1000:.1f} mm / "
                    f"{frame.correction_deg:.2f} deg"
                )
        self.get_logger().info(
            f"poses: {report.method}, in {report.frame}, metric scale {report.metric_scale}"
        )
        try:
            session.record_poses(report)
        except (OSError, SessionError) as exc:  # the result stands; only the write-back failed
            self.get_logger().warning(f"could not write the poses to the session: {exc}")
        with self._lock:
            if self._session is session:  # frames captured meanwhile keep their own poses
                pairs = zip(frames, report.frames, strict=True)
                estimated = [(f.intrinsics, p.pose) for f, p in pairs]
                self._cameras = estimated + self._cameras[len(estimated) :]
        self._publish_frusta()

    def _publish_frusta(self) -> None:
        with self._lock:
            cameras = list(self._cameras)
        self.frusta_pub.publish(camera_frusta_to_marker_array(cameras, self._header()))

    def health(self) -> NodeHealth:
        total = self.rejected.total()
        new, self._reported_rejections = total - self._reported_rejections, total
        with self._lock:
            held, root, size = len(self._session), self._session.root, self._session_bytes
        return NodeHealth(
            name=f"{self.get_name()}: capture and reconstruction",
            received=dict(self._received),
            rejected=self.rejected.snapshot(),
            frames_held=held,
            session_dir=str(root),
            session_mb=size / 2**20,
            stage=self._status.stage,
            write_error=self._write_error,
            new_rejections=new,
            extra={f"unmatched {k}": str(v) for k, v in self._sync.dropped.items()},
        )

    def _publish_diagnostics(self) -> None:
        header = Header(stamp=self.get_clock().now().to_msg())
        self.diagnostics_pub.publish(health_to_diagnostics(self.health(), header))

    def destroy_node(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)
        if self._poses is not None:
            self._poses.close()
        super().destroy_node()


def main(argv: list[str] | None = None) -> int:
    rclpy.init(args=argv if argv is not None else sys.argv)
    try:
        node = ReconstructNode()
    except ValueError as exc:
        print(f"rvg_reconstruct: bad parameters: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


__all__ = ["PARAMETERS", "FrameRejected", "ReconstructNode", "main"]


if __name__ == "__main__":
    sys.exit(main())
