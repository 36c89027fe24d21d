"""Pair colour, camera info and optional depth / mask messages by header stamp.

A ROS 2 install from apt has ``message_filters``; the PyPI wheels used here do not. When it is
importable its ``ApproximateTimeSynchronizer`` does the matching; otherwise
``ApproximateTimeSynchronizer`` below does, with the same semantics (a per-input queue of
``queue_size`` messages keyed by stamp; a new message is matched against the other queues'
stamps within ``slop`` seconds, nearest first, and a set is emitted when its stamps span less
than ``slop``; matched messages leave their queues).

Either way messages are fed in with ``add(index, msg)`` — the node's own subscriptions call it —
so the synchroniser can be tested without a node or a network.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

try:  # a real ROS 2 installation
    import message_filters as _message_filters
except ImportError:  # PyPI wheels: use ours
    _message_filters = None

HAVE_MESSAGE_FILTERS = _message_filters is not None


def stamp_to_ns(msg: Any) -> int:
    """``msg.header.stamp`` as integer nanoseconds (exact, unlike float seconds)."""
    try:
        stamp = msg.header.stamp
        return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
    except AttributeError as exc:
        raise ValueError(f"{type(msg).__name__} has no header.stamp to synchronise on") from exc


class ApproximateTimeSynchronizer:
    """Our stand-in for ``message_filters.ApproximateTimeSynchronizer`` (same matching rule).

    ``add(index, msg)`` feeds input ``index``; callbacks receive one message per input, in input
    order. Thread-safe; callbacks run on the feeding thread, after the internal lock is released
    (so a callback may feed the synchroniser again without deadlocking).
    """

    def __init__(self, num_inputs: int, queue_size: int, slop: float) -> None:
        if num_inputs < 1:
            raise ValueError(f"need at least one input, got {num_inputs}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        if not slop >= 0:  # also rejects NaN
            raise ValueError(f"slop must be a non-negative number of seconds, got {slop}")
        self.queue_size = int(queue_size)
        self.slop_ns = int(round(slop * 1e9))
        self._queues: list[dict[int, Any]] = [{} for _ in range(num_inputs)]
        self._callbacks: list[Callable[..., None]] = []
        self._lock = threading.Lock()
        self.dropped = [0] * num_inputs  # messages evicted from a full queue without a match

    def register_callback(self, callback: Callable[..., None]) -> None:
        self._callbacks.append(callback)

    def add(self, index: int, msg: Any) -> None:
        stamp = stamp_to_ns(msg)
        with self._lock:
            matched = self._add_locked(index, msg, stamp)
        if matched is not None:
            for callback in self._callbacks:
                callback(*matched)

    def _add_locked(self, index: int, msg: Any, stamp: int) -> list[Any] | None:
        queues = self._queues
        mine = queues[index]
        mine[stamp] = msg  # a repeated stamp replaces the older message, as message_filters does
        while len(mine) > self.queue_size:
            del mine[min(mine)]
            self.dropped[index] += 1
        # Candidate stamps of every other input within slop of the new one, nearest first.
        candidates: list[list[int]] = []
        for i, queue in enumerate(queues):
            if i == index:
                continue
            near = sorted((abs(s - stamp), s) for s in queue if abs(s - stamp) <= self.slop_ns)
            if not near:
                return None
            candidates.append([s for _, s in near])
        for combo in itertools.product(*candidates):
            stamps = list(combo)
            stamps.insert(index, stamp)
            if max(stamps) - min(stamps) < self.slop_ns:
                matched = [queue.pop(s) for queue, s in zip(queues, stamps, strict=True)]
                return matched
        return None

    def queued(self) -> list[int]:
        """How many messages wait in each input's queue."""
        with self._lock:
            return [len(q) for q in self._queues]


class _MessageFiltersSynchronizer:
    """message_filters' synchroniser behind the same ``add(index, msg)`` interface."""

    def __init__(self, num_inputs: int, queue_size: int, slop: float) -> None:
        assert _message_filters is not None
        self._inputs = [_message_filters.SimpleFilter() for _ in range(num_inputs)]
        self._sync = _message_filters.ApproximateTimeSynchronizer(self._inputs, queue_size, slop)
        self.dropped = [0] * num_inputs  # message_filters does not count them

    def register_callback(self, callback: Callable[..., None]) -> None:
        self._sync.registerCallback(callback)

    def add(self, index: int, msg: Any) -> None:
        self._inputs[index].signalMessage(msg)


def make_synchronizer(
    num_inputs: int, queue_size: int, slop: float, use_message_filters: bool | None = None
) -> ApproximateTimeSynchronizer | _MessageFiltersSynchronizer:
    """message_filters' synchroniser when available (or asked for), else ours."""
    if use_message_filters is None:
        use_message_filters = HAVE_MESSAGE_FILTERS
    if use_message_filters:
        if not HAVE_MESSAGE_FILTERS:
            raise ImportError("message_filters is not installed")
        return _MessageFiltersSynchronizer(num_inputs, queue_size, slop)
    return ApproximateTimeSynchronizer(num_inputs, queue_size, slop)


class MatchedMessages(NamedTuple):
    """One synchronised set; depth / mask are None when those inputs are not used."""

    colour: Any
    camera_info: Any
    depth: Any = None
    mask: Any = None


class CameraSynchronizer:
    """Matches colour + camera info (+ depth) (+ mask) and calls ``callback(MatchedMessages)``.

    Feed it directly (``add_colour`` …) or let ``subscribe`` create the node's subscriptions.
    """

    def __init__(
        self,
        callback: Callable[[MatchedMessages], None],
        queue_size: int = 10,
        slop: float = 0.05,
        with_depth: bool = False,
        with_mask: bool = False,
        use_message_filters: bool | None = None,
    ) -> None:
        self.with_depth = with_depth
        self.with_mask = with_mask
        self._callback = callback
        # Input order: colour, camera info, then the optional ones that are enabled.
        self._index = {"colour": 0, "camera_info": 1}
        if with_depth:
            self._index["depth"] = len(self._index)
        if with_mask:
            self._index["mask"] = len(self._index)
        self._sync = make_synchronizer(len(self._index), queue_size, slop, use_message_filters)
        self._sync.register_callback(self._on_match)
        self.backend = (
            "message_filters" if isinstance(self._sync, _MessageFiltersSynchronizer) else "rvg_ros"
        )
        self.matched = 0
        self._subscriptions: list[Any] = []

    def _on_match(self, *msgs: Any) -> None:
        by_name = dict(zip(self._index, msgs, strict=True))
        self.matched += 1
        self._callback(
            MatchedMessages(
                colour=by_name["colour"],
                camera_info=by_name["camera_info"],
                depth=by_name.get("depth"),
                mask=by_name.get("mask"),
            )
        )

    def _add(self, name: str, msg: Any) -> None:
        index = self._index.get(name)
        if index is None:
            raise ValueError(f"this synchroniser was created without a {name} input")
        self._sync.add(index, msg)

    def add_colour(self, msg: Any) -> None:
        self._add("colour", msg)

    def add_camera_info(self, msg: Any) -> None:
        self._add("camera_info", msg)

    def add_depth(self, msg: Any) -> None:
        self._add("depth", msg)

    def add_mask(self, msg: Any) -> None:
        self._add("mask", msg)

    @property
    def dropped(self) -> dict[str, int]:
        """Messages per input evicted unmatched (always 0 with message_filters)."""
        return dict(zip(self._index, self._sync.dropped, strict=True))

    def subscribe(
        self,
        node: Any,
        colour_topic: str,
        camera_info_topic: str,
        depth_topic: str | None = None,
        mask_topic: str | None = None,
        qos_profile: Any = None,
        callback_group: Any = None,
    ) -> Sequence[Any]:
        """Create ``node``'s subscriptions feeding this synchroniser; returns them.

        The default QoS is rclpy's sensor-data profile (best effort): a best-effort subscription
        matches both reliable and best-effort camera drivers, a reliable one only the former.
        """
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import CameraInfo, Image

        if (depth_topic is not None) != self.with_depth:
            raise ValueError("depth_topic must be given exactly when with_depth=True")
        if (mask_topic is not None) != self.with_mask:
            raise ValueError("mask_topic must be given exactly when with_mask=True")
        qos = qos_profile if qos_profile is not None else qos_profile_sensor_data
        topics = [(Image, colour_topic, self.add_colour)]
        topics.append((CameraInfo, camera_info_topic, self.add_camera_info))
        if depth_topic is not None:
            topics.append((Image, depth_topic, self.add_depth))
        if mask_topic is not None:
            topics.append((Image, mask_topic, self.add_mask))
        for msg_type, topic, feed in topics:
            self._subscriptions.append(
                node.create_subscription(msg_type, topic, feed, qos, callback_group=callback_group)
            )
        return list(self._subscriptions)
