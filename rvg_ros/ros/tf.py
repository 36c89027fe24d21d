"""Camera poses from TF.

On a ROS 2 install ``tf2_ros`` is used (``Buffer`` + ``TransformListener``). The PyPI wheels used
here have no ``tf2_ros``, so this module also has a small buffer of its own with tf2's semantics:

- ``/tf`` transforms are kept for ``cache_time`` seconds (measured from the newest sample of each
  frame, as tf2 does), ``/tf_static`` ones forever;
- any two frames connected through a common ancestor can be looked up; only the links between
  them and that ancestor need data at the requested time;
- between two samples translation is interpolated linearly and rotation by slerp; there is no
  extrapolation, so a time outside a link's history raises ``ExtrapolationError`` (time 0 or
  ``None`` means "the latest time all needed links have", as in tf2);
- errors are ``LookupError`` subclasses saying which frame and time failed.

``TfListener`` feeds a buffer from ``/tf`` and ``/tf_static`` (tf2_msgs/TFMessage) on a node, and
``TfPoseSource`` picks tf2_ros or ours and answers ``lookup_camera_to_world``.

Conventions: ``lookup_transform(target, source)`` returns the 4x4 ``target_T_source`` that maps
points in ``source`` coordinates to ``target`` coordinates (tf2's meaning). ROS *optical* frames
(``*_optical_frame``, REP 103) are x right, y down, z forward: exactly the OpenCV camera
convention the core uses, so ``world_T_optical`` *is* the core's ``camera_to_world``. A camera
*body* frame (x forward, y left, z up) is not: use the optical frame, or right-multiply by
``BODY_T_OPTICAL``.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from geometry_msgs.msg import Transform, TransformStamped

NS_PER_S = 1_000_000_000

# Rotation taking optical-frame coordinates to body-frame coordinates (REP 103):
# optical z (forward) = body x, optical x (right) = body -y, optical y (down) = body -z.
BODY_T_OPTICAL = np.array(
    [[0.0, 0.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)

# tf2 rejects quaternions whose squared norm is further than this from 1
# (TF_DENORMALIZED_QUATERNION).
QUATERNION_NORM_TOLERANCE = 1e-2


class TransformError(LookupError):
    """A transform could not be looked up (tf2's TransformException)."""


class FrameNotFoundError(TransformError):
    """A frame id the buffer has never heard of (tf2's LookupException)."""


class ConnectivityError(TransformError):
    """Both frames are known but not in one tree (tf2's ConnectivityException)."""


class ExtrapolationError(TransformError):
    """The requested time is outside the history of a needed link (tf2's ExtrapolationException).

    ``future`` is True when the time is after the newest sample, i.e. waiting may help.
    """

    def __init__(self, message: str, future: bool = False) -> None:
        super().__init__(message)
        self.future = future


# ---------------------------------------------------------------------------------------------
# Small rigid-transform helpers (quaternions are (x, y, z, w), as in geometry_msgs).


def quaternion_to_matrix(q: Iterable[float]) -> np.ndarray:
    """3x3 rotation matrix of a unit quaternion (x, y, z, w)."""
    x, y, z, w = (float(v) for v in q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def matrix_to_quaternion(r: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w), w >= 0, of a 3x3 rotation matrix (Shepperd's method)."""
    m = np.asarray(r, dtype=np.float64)[:3, :3]
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    # Pick the largest of w, x, y, z to divide by, for numerical stability.
    if trace > 0:
        s = 2.0 * math.sqrt(1.0 + trace)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s, (m[1, 0] - m[0, 1]) / s]
    out = np.asarray(q)
    out /= np.linalg.norm(out)
    return -out if out[3] < 0 else out


def slerp(q0: np.ndarray, q1: np.ndarray, t: float) -> np.ndarray:
    """Spherical linear interpolation between unit quaternions, along the shorter arc."""
    q0 = np.asarray(q0, dtype=np.float64)
    q1 = np.asarray(q1, dtype=np.float64)
    dot = float(np.dot(q0, q1))
    if dot < 0.0:  # q and -q are the same rotation: go the short way round
        q1, dot = -q1, -dot
    if dot > 0.9995:  # nearly parallel: lerp is exact to ~1e-7 and avoids dividing by sin ~ 0
        q = q0 + t * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = math.acos(min(dot, 1.0))
    sin_theta = math.sin(theta)
    return (math.sin((1 - t) * theta) * q0 + math.sin(t * theta) * q1) / sin_theta


def make_matrix(translation: Iterable[float], rotation_xyzw: Iterable[float]) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = quaternion_to_matrix(rotation_xyzw)
    m[:3, 3] = list(translation)
    return m


def transform_to_matrix(transform: Transform | TransformStamped) -> np.ndarray:
    """4x4 matrix of a geometry_msgs Transform (or TransformStamped)."""
    if isinstance(transform, TransformStamped):
        transform = transform.transform
    t, r = transform.translation, transform.rotation
    q = np.array([r.x, r.y, r.z, r.w], dtype=np.float64)
    norm = np.linalg.norm(q)
    if not (np.isfinite(norm) and norm > 0):
        raise ValueError(f"transform rotation is not a valid quaternion: {q.tolist()}")
    return make_matrix((t.x, t.y, t.z), q / norm)


def matrix_to_transform(matrix: np.ndarray) -> Transform:
    """geometry_msgs Transform of a 4x4 rigid matrix."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise ValueError(f"expected a finite 4x4 matrix, got shape {m.shape}")
    out = Transform()
    out.translation.x, out.translation.y, out.translation.z = (float(v) for v in m[:3, 3])
    q = matrix_to_quaternion(m[:3, :3])
    out.rotation.x, out.rotation.y, out.rotation.z, out.rotation.w = (float(v) for v in q)
    return out


def make_transform_stamped(
    parent_frame: str, child_frame: str, parent_T_child: np.ndarray, stamp: Any = None
) -> TransformStamped:
    """A TransformStamped for ``/tf`` (e.g. what the simulated camera publishes)."""
    msg = TransformStamped()
    msg.header.frame_id = parent_frame
    msg.child_frame_id = child_frame
    if stamp is not None:
        ns = to_ns(stamp)
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(ns, NS_PER_S)
    msg.transform = matrix_to_transform(parent_T_child)
    return msg


def to_ns(stamp: Any) -> int:
    """Nanoseconds of a stamp: int (ns), float (s), builtin_interfaces Time or rclpy Time."""
    if stamp is None:
        return 0
    if isinstance(stamp, bool):
        raise TypeError("a stamp cannot be a bool")
    if isinstance(stamp, (int, np.integer)):
        return int(stamp)
    if isinstance(stamp, (float, np.floating)):
        if not math.isfinite(stamp):
            raise ValueError(f"stamp is not finite: {stamp}")
        return int(round(float(stamp) * NS_PER_S))
    if hasattr(stamp, "nanoseconds"):  # rclpy.time.Time
        return int(stamp.nanoseconds)
    if hasattr(stamp, "sec") and hasattr(stamp, "nanosec"):  # builtin_interfaces/Time
        return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)
    raise TypeError(f"cannot read a time from {type(stamp).__name__}")


def _fmt_time(ns: int) -> str:
    return f"{ns / NS_PER_S:.6f}"


def _strip(frame_id: str) -> str:
    # tf2 ignores a leading slash (ROS 1 style "/world").
    return frame_id[1:] if frame_id.startswith("/") else frame_id


# ---------------------------------------------------------------------------------------------
# The buffer.


@dataclass(frozen=True)
class _Sample:
    stamp: int  # ns
    parent: str
    translation: np.ndarray  # (3,)
    rotation: np.ndarray  # (4,) unit quaternion x, y, z, w


class _History:
    """One dynamic frame's samples, sorted by stamp, with a parallel stamp list for bisect."""

    def __init__(self) -> None:
        self.stamps: list[int] = []
        self.samples: list[_Sample] = []

    def insert(self, sample: _Sample) -> None:
        i = bisect.bisect_left(self.stamps, sample.stamp)
        if i < len(self.stamps) and self.stamps[i] == sample.stamp:
            self.samples[i] = sample  # same frame, same stamp: the newer message wins
        else:
            self.stamps.insert(i, sample.stamp)
            self.samples.insert(i, sample)

    def drop_first(self, count: int) -> None:
        if count > 0:
            del self.stamps[:count]
            del self.samples[:count]


class TransformBuffer:
    """tf2-like transform buffer for when tf2_ros is not installed. Thread-safe."""

    def __init__(
        self,
        cache_time: float = 10.0,
        max_frames: int = 10_000,
        max_samples_per_frame: int = 100_000,
    ) -> None:
        if not cache_time > 0:
            raise ValueError(f"cache_time must be positive seconds, got {cache_time}")
        self.cache_ns = int(cache_time * NS_PER_S)
        # Bounds so that a publisher inventing frame names or flooding one frame cannot grow
        # memory without limit.
        self.max_frames = max_frames
        self.max_samples_per_frame = max_samples_per_frame
        self._static: dict[str, _Sample] = {}
        self._dynamic: dict[str, _History] = {}
        self._cond = threading.Condition()
        self.rejected: Counter[str] = Counter()  # reason -> count, for diagnostics

    # -- filling ----------------------------------------------------------------------------

    def set_transform(self, msg: TransformStamped, is_static: bool = False) -> bool:
        """Store a TransformStamped. Raises ValueError for an invalid one (NaN, bad quaternion,
        empty or equal frame ids); returns False when it is ignored as too old."""
        t, r = msg.transform.translation, msg.transform.rotation
        return self.add(
            msg.header.frame_id,
            msg.child_frame_id,
            to_ns(msg.header.stamp),
            (t.x, t.y, t.z),
            (r.x, r.y, r.z, r.w),
            is_static=is_static,
        )

    def add(
        self,
        parent: str,
        child: str,
        stamp_ns: int,
        translation: Iterable[float],
        rotation_xyzw: Iterable[float],
        is_static: bool = False,
    ) -> bool:
        """Store ``parent_T_child`` at ``stamp_ns``; see ``set_transform``."""
        parent, child = _strip(str(parent)), _strip(str(child))
        try:
            sample = self._validated(parent, child, int(stamp_ns), translation, rotation_xyzw)
        except ValueError as exc:
            with self._cond:
                self.rejected[str(exc).split(":")[0]] += 1
            raise
        with self._cond:
            known = child in self._static or child in self._dynamic
            if not known and len(self._static) + len(self._dynamic) >= self.max_frames:
                self.rejected["too many frames"] += 1
                raise ValueError(f"too many frames (limit {self.max_frames}): ignoring {child!r}")
            if is_static:
                # A frame is either static or dynamic; a static declaration wins (tf2 would
                # otherwise keep interpolating stale dynamic samples next to it).
                self._dynamic.pop(child, None)
                self._static[child] = sample
            else:
                if child in self._static:
                    self.rejected["dynamic transform for a static frame"] += 1
                    return False
                if not self._insert_dynamic(child, sample):
                    return False
            self._cond.notify_all()
        return True

    def _validated(
        self,
        parent: str,
        child: str,
        stamp_ns: int,
        translation: Iterable[float],
        rotation_xyzw: Iterable[float],
    ) -> _Sample:
        if not parent or not child:
            raise ValueError(f"empty frame id: parent={parent!r} child={child!r}")
        if parent == child:
            raise ValueError(f"frame is its own parent: {child!r}")
        tr = np.asarray(list(translation), dtype=np.float64)
        q = np.asarray(list(rotation_xyzw), dtype=np.float64)
        if tr.shape != (3,) or q.shape != (4,):
            raise ValueError(f"bad transform shape: translation {tr.shape}, rotation {q.shape}")
        if not (np.all(np.isfinite(tr)) and np.all(np.isfinite(q))):
            raise ValueError(f"non-finite transform: {parent} -> {child}")
        norm2 = float(q @ q)
        if abs(norm2 - 1.0) > QUATERNION_NORM_TOLERANCE:
            raise ValueError(
                f"denormalized quaternion: {parent} -> {child} has |q|^2 = {norm2:.6f}"
            )
        if stamp_ns < 0:
            raise ValueError(f"negative stamp: {parent} -> {child} at {stamp_ns} ns")
        return _Sample(stamp_ns, parent, tr, q / math.sqrt(norm2))

    def _insert_dynamic(self, child: str, sample: _Sample) -> bool:
        history = self._dynamic.setdefault(child, _History())
        if history.samples and sample.stamp < history.samples[-1].stamp - self.cache_ns:
            # tf2's TF_OLD_DATA: older than anything we keep. (A clock that jumped back, e.g. a
            # looping bag, is handled by clear() from TfListener's clock-jump callback.)
            self.rejected["old data"] += 1
            return False
        history.insert(sample)
        # Drop what fell out of the cache window, then enforce the hard cap.
        cutoff = history.samples[-1].stamp - self.cache_ns
        first_kept = bisect.bisect_left(history.stamps, cutoff)
        history.drop_first(max(first_kept, len(history.samples) - self.max_samples_per_frame))
        return True

    def clear(self) -> None:
        """Forget dynamic transforms (after a clock jump); static ones are kept, like tf2_ros."""
        with self._cond:
            self._dynamic.clear()

    # -- querying ---------------------------------------------------------------------------

    def frames(self) -> set[str]:
        with self._cond:
            return self._frames_locked()

    def _frames_locked(self) -> set[str]:
        frames = set(self._static) | set(self._dynamic)
        frames |= {s.parent for s in self._static.values()}
        frames |= {h.samples[-1].parent for h in self._dynamic.values() if h.samples}
        return frames

    def _parent_at(self, frame: str, stamp: int) -> tuple[str | None, bool]:
        """(parent of ``frame`` around ``stamp`` or None for a root, whether the link is static)."""
        if frame in self._static:
            return self._static[frame].parent, True
        history = self._dynamic.get(frame)
        if history is None or not history.samples:
            return None, False
        if stamp == 0:
            return history.samples[-1].parent, False
        i = bisect.bisect_right(history.stamps, stamp)
        return history.samples[max(i - 1, 0)].parent, False

    def _chain(self, frame: str, stamp: int) -> list[tuple[str, str, bool]]:
        """Links (child, parent, is_static) from ``frame`` up to its root."""
        chain: list[tuple[str, str, bool]] = []
        seen = {frame}
        while True:
            parent, is_static = self._parent_at(frame, stamp)
            if parent is None:
                return chain
            if parent in seen:
                raise ConnectivityError(f"the TF tree has a loop through {parent!r}")
            chain.append((frame, parent, is_static))
            seen.add(parent)
            frame = parent

    def _sample_at(self, child: str, stamp: int) -> tuple[np.ndarray, np.ndarray]:
        history = self._dynamic[child]
        first, last = history.samples[0], history.samples[-1]
        if stamp == last.stamp:
            return last.translation, last.rotation
        if stamp > last.stamp or stamp < first.stamp:
            future = stamp > last.stamp
            ref = last if future else first
            raise ExtrapolationError(
                f"lookup would require extrapolation into the {'future' if future else 'past'}: "
                f"requested time {_fmt_time(stamp)} but the "
                f"{'latest' if future else 'earliest'} data for {child!r} (parent "
                f"{ref.parent!r}) is at {_fmt_time(ref.stamp)}, "
                f"{abs(stamp - ref.stamp) / NS_PER_S:.3f} s {'earlier' if future else 'later'}",
                future=future,
            )
        i = bisect.bisect_right(history.stamps, stamp)
        a, b = history.samples[i - 1], history.samples[i]
        if a.stamp == stamp:
            return a.translation, a.rotation
        if a.parent != b.parent:
            # The frame was re-parented between the samples: interpolating across parents is
            # meaningless, so use the earlier sample (what tf2 does).
            return a.translation, a.rotation
        t = (stamp - a.stamp) / (b.stamp - a.stamp)
        return a.translation + t * (b.translation - a.translation), slerp(a.rotation, b.rotation, t)

    def _link_matrix(self, child: str, is_static: bool, stamp: int) -> np.ndarray:
        if is_static:
            s = self._static[child]
            return make_matrix(s.translation, s.rotation)
        translation, rotation = self._sample_at(child, stamp)
        return make_matrix(translation, rotation)

    def lookup_transform(self, target_frame: str, source_frame: str, stamp: Any = 0) -> np.ndarray:
        """``target_T_source`` (4x4) at ``stamp`` (0/None = latest common time). No waiting."""
        with self._cond:
            return self._lookup_locked(_strip(target_frame), _strip(source_frame), to_ns(stamp))

    def _lookup_locked(self, target: str, source: str, stamp: int) -> np.ndarray:
        known = self._frames_locked()
        for name, frame in (("target", target), ("source", source)):
            if not frame:
                raise FrameNotFoundError(f"{name} frame id is empty")
            if frame not in known:
                listed = ", ".join(sorted(known)[:20]) or "none yet"
                raise FrameNotFoundError(
                    f"{name} frame {frame!r} does not exist (known frames: {listed})"
                )
        if target == source:
            return np.eye(4)
        up_source = self._chain(source, stamp)
        up_target = self._chain(target, stamp)
        source_path = [source] + [p for _, p, _ in up_source]
        target_path = [target] + [p for _, p, _ in up_target]
        target_set = set(target_path)
        common = next((f for f in source_path if f in target_set), None)
        if common is None:
            raise ConnectivityError(
                f"frames {target!r} and {source!r} are not connected: {target!r} is in the tree "
                f"rooted at {target_path[-1]!r}, {source!r} in the one rooted at "
                f"{source_path[-1]!r}"
            )
        links_s = up_source[: source_path.index(common)]
        links_t = up_target[: target_path.index(common)]
        if stamp == 0:
            # tf2's "latest": the newest time every needed dynamic link has data for.
            latest = [self._dynamic[c].stamps[-1] for c, _, st in links_s + links_t if not st]
            stamp = min(latest) if latest else 0
        common_T_source = np.eye(4)
        for child, _, is_static in links_s:
            common_T_source = self._link_matrix(child, is_static, stamp) @ common_T_source
        common_T_target = np.eye(4)
        for child, _, is_static in links_t:
            common_T_target = self._link_matrix(child, is_static, stamp) @ common_T_target
        return _rigid_inverse(common_T_target) @ common_T_source

    def can_transform(self, target_frame: str, source_frame: str, stamp: Any = 0) -> bool:
        try:
            self.lookup_transform(target_frame, source_frame, stamp)
        except TransformError:
            return False
        return True

    def wait_for_transform(
        self, target_frame: str, source_frame: str, stamp: Any = 0, timeout: float = 0.0
    ) -> np.ndarray:
        """Like ``lookup_transform`` but waits up to ``timeout`` s for the data to arrive.

        Waits only when waiting can help (unknown frame, not yet connected, or a time after the
        newest sample); a time before the kept history fails at once. Whoever feeds the buffer
        (TfListener) must run on another thread, or the wait only ever times out.
        """
        deadline = time.monotonic() + max(float(timeout), 0.0)
        target, source, ns = _strip(target_frame), _strip(source_frame), to_ns(stamp)
        with self._cond:
            while True:
                try:
                    return self._lookup_locked(target, source, ns)
                except ExtrapolationError as exc:
                    if not exc.future:
                        raise
                    error: TransformError = exc
                except TransformError as exc:
                    error = exc
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if timeout > 0:
                        raise type(error)(f"{error} (waited {timeout:.3f} s)") from error
                    raise error
                self._cond.wait(remaining)

    def lookup_camera_to_world(
        self, target_frame: str, camera_frame: str, stamp: Any = 0, timeout: float = 0.0
    ) -> np.ndarray:
        """``camera_to_world`` (OpenCV convention when ``camera_frame`` is an optical frame)."""
        return self.wait_for_transform(target_frame, camera_frame, stamp, timeout)


def _rigid_inverse(m: np.ndarray) -> np.ndarray:
    inv = np.eye(4)
    inv[:3, :3] = m[:3, :3].T
    inv[:3, 3] = -m[:3, :3].T @ m[:3, 3]
    return inv


# ---------------------------------------------------------------------------------------------
# ROS side: feeding the buffer, and choosing tf2_ros when it exists.


def _tf_qos() -> tuple[Any, Any]:
    """QoS of tf2_ros' listeners: /tf reliable volatile depth 100, /tf_static transient local."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    dynamic = QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=100,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.VOLATILE,
    )
    # Transient local: a static broadcaster publishes once, at start-up; a late joiner still
    # gets it from the publisher's history.
    static = QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=100,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )
    return dynamic, static


class TfListener:
    """Subscribes to ``/tf`` and ``/tf_static`` and fills a ``TransformBuffer``.

    Invalid transforms are counted in ``buffer.rejected`` and skipped, never raised into the
    executor. With ``spin_thread=True`` the subscriptions live on a small internal node spun by
    its own thread (as tf2_ros' listener does), so a lookup that waits never starves them, whatever
    executor the caller's node uses. Otherwise they use their own callback group on ``node``:
    give the node a MultiThreadedExecutor if a callback waits for transforms.
    """

    def __init__(
        self,
        node: Any,
        buffer: TransformBuffer,
        spin_thread: bool = False,
        tf_topic: str = "/tf",
        tf_static_topic: str = "/tf_static",
    ) -> None:
        try:
            from tf2_msgs.msg import TFMessage
        except ImportError as exc:
            raise ImportError(
                "tf2_msgs is not available: install ros-<distro>-tf2-msgs or build it into the "
                f"venv (make interfaces): {exc}"
            ) from exc
        import rclpy
        from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
        from rclpy.executors import SingleThreadedExecutor

        self.buffer = buffer
        self._own_node = None
        self._executor = None
        self._thread: threading.Thread | None = None
        host = node
        if spin_thread:
            host = rclpy.create_node(
                f"{node.get_name()}_tf_listener",
                namespace=node.get_namespace(),
                context=node.context,
                start_parameter_services=False,
                enable_rosout=False,
            )
            self._own_node = host
        self._host = host
        group = MutuallyExclusiveCallbackGroup()
        dynamic_qos, static_qos = _tf_qos()
        self._subs = [
            host.create_subscription(
                TFMessage, tf_topic, self._on_tf, dynamic_qos, callback_group=group
            ),
            host.create_subscription(
                TFMessage, tf_static_topic, self._on_tf_static, static_qos, callback_group=group
            ),
        ]
        self._jump_handle = self._watch_clock_jumps(node)
        if spin_thread:
            self._executor = SingleThreadedExecutor(context=node.context)
            self._executor.add_node(host)
            self._thread = threading.Thread(
                target=self._spin, name="rvg_ros_tf_listener", daemon=True
            )
            self._thread.start()

    def _spin(self) -> None:
        try:
            self._executor.spin()
        except Exception:  # noqa: BLE001 - context shut down under us: the thread just ends
            pass

    def _watch_clock_jumps(self, node: Any) -> Any:
        # Like tf2_ros: when ROS time jumps backwards (bag loop, sim restart) the dynamic history
        # belongs to another timeline; drop it instead of rejecting all new data as "old".
        try:
            from rclpy.clock import JumpThreshold
            from rclpy.duration import Duration

            threshold = JumpThreshold(
                min_forward=None, min_backward=Duration(seconds=-1), on_clock_change=True
            )
            return node.get_clock().create_jump_callback(
                threshold, post_callback=lambda _jump: self.buffer.clear()
            )
        except Exception:  # noqa: BLE001 - jump callbacks are an optimisation, not required
            return None

    def _feed(self, msg: Any, is_static: bool) -> None:
        for transform in msg.transforms:
            try:
                self.buffer.set_transform(transform, is_static=is_static)
            except (ValueError, TypeError):
                pass  # counted in buffer.rejected; a bad publisher must not stop the node

    def _on_tf(self, msg: Any) -> None:
        self._feed(msg, is_static=False)

    def _on_tf_static(self, msg: Any) -> None:
        self._feed(msg, is_static=True)

    def close(self) -> None:
        """Stop listening (idempotent): subscriptions, jump callback, and the spin thread."""
        if self._jump_handle is not None:
            self._jump_handle.unregister()
            self._jump_handle = None
        if self._executor is not None:
            self._executor.shutdown(timeout_sec=1.0)
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if self._own_node is not None:
            self._own_node.destroy_node()  # takes its subscriptions with it
        else:
            for sub in self._subs:
                self._host.destroy_subscription(sub)
        self._subs = []
        self._own_node = self._executor = self._thread = None


class TfPoseSource:
    """Camera poses from TF: tf2_ros when importable (or asked for), else our buffer/listener."""

    def __init__(
        self,
        node: Any,
        cache_time: float = 10.0,
        spin_thread: bool = False,
        use_tf2_ros: bool | None = None,
    ) -> None:
        tf2_ros = None
        if use_tf2_ros is None or use_tf2_ros:
            try:
                import tf2_ros
            except ImportError:
                if use_tf2_ros:
                    raise
        self._tf2_ros = tf2_ros
        if tf2_ros is not None:
            from rclpy.duration import Duration

            self.backend = "tf2_ros"
            self.buffer = tf2_ros.Buffer(cache_time=Duration(seconds=cache_time), node=node)
            self.listener = tf2_ros.TransformListener(self.buffer, node, spin_thread=spin_thread)
        else:
            self.backend = "rvg_ros"
            self.buffer = TransformBuffer(cache_time=cache_time)
            self.listener = TfListener(node, self.buffer, spin_thread=spin_thread)

    def lookup_transform(
        self, target_frame: str, source_frame: str, stamp: Any = 0, timeout: float = 0.0
    ) -> np.ndarray:
        """``target_T_source`` at ``stamp`` (0 = latest), waiting up to ``timeout`` seconds."""
        if self._tf2_ros is None:
            return self.buffer.wait_for_transform(target_frame, source_frame, stamp, timeout)
        from rclpy.duration import Duration
        from rclpy.time import Time

        tf2 = self._tf2_ros
        try:
            msg = self.buffer.lookup_transform(
                target_frame,
                source_frame,
                Time(nanoseconds=to_ns(stamp)),
                timeout=Duration(nanoseconds=int(max(timeout, 0.0) * NS_PER_S)),
            )
        # Map tf2's exceptions onto ours so callers handle one family (all LookupErrors).
        except tf2.LookupException as exc:
            raise FrameNotFoundError(str(exc)) from exc
        except tf2.ConnectivityException as exc:
            raise ConnectivityError(str(exc)) from exc
        except tf2.ExtrapolationException as exc:
            raise ExtrapolationError(str(exc)) from exc
        except tf2.TransformException as exc:
            raise TransformError(str(exc)) from exc
        return transform_to_matrix(msg)

    def lookup_camera_to_world(
        self, target_frame: str, camera_frame: str, stamp: Any = 0, timeout: float = 0.0
    ) -> np.ndarray:
        """``camera_to_world`` 4x4: ``target_frame`` <- ``camera_frame`` at the image stamp.

        ROS optical frames already use the OpenCV camera convention (see the module docstring),
        so no axis change is applied: pass the camera's *optical* frame id (the frame_id of its
        images).
        """
        return self.lookup_transform(target_frame, camera_frame, stamp, timeout)

    def close(self) -> None:
        """Stop listening (and the listener's spin thread, if any)."""
        if isinstance(self.listener, TfListener):
            self.listener.close()
        elif hasattr(self.listener, "unregister"):  # tf2_ros.TransformListener
            self.listener.unregister()
