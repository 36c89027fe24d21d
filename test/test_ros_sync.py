"""The colour / camera-info / depth / mask synchroniser, fed directly (no node, no network)."""

from __future__ import annotations

import random
import threading
import time

import pytest
from sensor_msgs.msg import CameraInfo, Image

from rvg_ros.ros.sync import (
    HAVE_MESSAGE_FILTERS,
    ApproximateTimeSynchronizer,
    CameraSynchronizer,
    MatchedMessages,
    make_synchronizer,
    stamp_to_ns,
)

BACKENDS = [False] + ([True] if HAVE_MESSAGE_FILTERS else [])  # use_message_filters


def _stamped(cls: type, t: float, tag: str = "") -> object:
    msg = cls()
    ns = round(t * 1e9)
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(ns, 1_000_000_000)
    msg.header.frame_id = tag
    return msg


def _img(t: float, tag: str = "") -> Image:
    return _stamped(Image, t, tag)


def _info(t: float) -> CameraInfo:
    return _stamped(CameraInfo, t)


def test_stamp_to_ns_is_exact() -> None:
    assert stamp_to_ns(_img(1.5)) == 1_500_000_000
    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1_700_000_000, 999_999_999
    assert stamp_to_ns(msg) == 1_700_000_000_999_999_999
    with pytest.raises(ValueError, match="no header.stamp"):
        stamp_to_ns(object())


@pytest.mark.parametrize("use_mf", BACKENDS)
def test_exact_and_approximate_pairs(use_mf: bool) -> None:
    got: list[MatchedMessages] = []
    sync = CameraSynchronizer(got.append, queue_size=5, slop=0.02, use_message_filters=use_mf)
    sync.add_colour(_img(1.0, "c1"))
    assert not got
    sync.add_camera_info(_info(1.0))
    assert len(got) == 1 and got[0].colour.header.frame_id == "c1"
    assert got[0].depth is None and got[0].mask is None
    # 10 ms apart: within slop.
    sync.add_camera_info(_info(2.010))
    sync.add_colour(_img(2.0, "c2"))
    assert len(got) == 2 and stamp_to_ns(got[1].camera_info) == 2_010_000_000
    # 50 ms apart: no match.
    sync.add_colour(_img(3.0))
    sync.add_camera_info(_info(3.05))
    assert len(got) == 2
    assert sync.matched == 2


@pytest.mark.parametrize("use_mf", BACKENDS)
def test_depth_and_mask_inputs(use_mf: bool) -> None:
    got: list[MatchedMessages] = []
    sync = CameraSynchronizer(
        got.append, slop=0.01, with_depth=True, with_mask=True, use_message_filters=use_mf
    )
    sync.add_colour(_img(5.0, "colour"))
    sync.add_depth(_img(5.004, "depth"))
    sync.add_camera_info(_info(5.0))
    assert not got  # the mask is still missing
    sync.add_mask(_img(4.998, "mask"))
    assert len(got) == 1
    m = got[0]
    assert (m.colour.header.frame_id, m.depth.header.frame_id, m.mask.header.frame_id) == (
        "colour",
        "depth",
        "mask",
    )
    colour, info, depth, mask = m  # it is a plain tuple too
    assert info is m.camera_info


def test_unused_input_is_an_error() -> None:
    sync = CameraSynchronizer(lambda m: None)
    with pytest.raises(ValueError, match="without a depth input"):
        sync.add_depth(_img(1.0))
    with pytest.raises(ValueError, match="without a mask input"):
        sync.add_mask(_img(1.0))


@pytest.mark.parametrize("use_mf", BACKENDS)
def test_nearest_candidate_wins(use_mf: bool) -> None:
    got: list[MatchedMessages] = []
    sync = CameraSynchronizer(got.append, queue_size=10, slop=0.05, use_message_filters=use_mf)
    for t in (0.96, 0.98, 1.03):
        sync.add_camera_info(_info(t))
    sync.add_colour(_img(1.0))
    assert len(got) == 1 and stamp_to_ns(got[0].camera_info) == 980_000_000


@pytest.mark.parametrize("use_mf", BACKENDS)
def test_matched_messages_leave_the_queues(use_mf: bool) -> None:
    got: list[MatchedMessages] = []
    sync = CameraSynchronizer(got.append, queue_size=10, slop=0.05, use_message_filters=use_mf)
    sync.add_camera_info(_info(1.0))
    sync.add_colour(_img(1.0, "a"))
    sync.add_colour(_img(1.01, "b"))  # the only info within slop has been used
    assert len(got) == 1
    sync.add_camera_info(_info(1.01))
    assert len(got) == 2 and got[1].colour.header.frame_id == "b"


def test_queue_size_bounds_memory_and_counts_drops() -> None:
    got: list[MatchedMessages] = []
    sync = CameraSynchronizer(got.append, queue_size=3, slop=0.01, use_message_filters=False)
    for i in range(10):
        sync.add_colour(_img(float(i)))
    assert sync._sync.queued() == [3, 0]
    assert sync.dropped == {"colour": 7, "camera_info": 0}
    sync.add_camera_info(_info(0.0))  # evicted long ago: no match
    assert not got
    sync.add_camera_info(_info(9.0))
    assert len(got) == 1


def test_same_stamp_replaces() -> None:
    got: list[tuple] = []
    sync = ApproximateTimeSynchronizer(2, queue_size=5, slop=0.01)
    sync.register_callback(lambda *m: got.append(m))
    sync.add(0, _img(1.0, "old"))
    sync.add(0, _img(1.0, "new"))
    sync.add(1, _img(1.0))
    assert len(got) == 1 and got[0][0].header.frame_id == "new"


def test_slop_is_strict_like_message_filters() -> None:
    # message_filters emits a set only when its stamps span *less than* slop.
    got: list[tuple] = []
    sync = ApproximateTimeSynchronizer(2, queue_size=5, slop=0.01)
    sync.register_callback(lambda *m: got.append(m))
    sync.add(0, _img(1.0))
    sync.add(1, _img(1.01))
    assert not got
    sync.add(1, _img(1.0099))
    assert len(got) == 1


def test_constructor_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="queue_size"):
        ApproximateTimeSynchronizer(2, queue_size=0, slop=0.1)
    with pytest.raises(ValueError, match="slop"):
        ApproximateTimeSynchronizer(2, queue_size=1, slop=float("nan"))
    with pytest.raises(ValueError, match="slop"):
        ApproximateTimeSynchronizer(2, queue_size=1, slop=-1.0)
    with pytest.raises(ValueError, match="input"):
        ApproximateTimeSynchronizer(0, queue_size=1, slop=0.1)
    if not HAVE_MESSAGE_FILTERS:
        with pytest.raises(ImportError):
            make_synchronizer(2, 1, 0.1, use_message_filters=True)


def test_default_backend() -> None:
    sync = CameraSynchronizer(lambda m: None)
    assert sync.backend == ("message_filters" if HAVE_MESSAGE_FILTERS else "rvg_ros")


def test_shuffled_stream_pairs_everything() -> None:
    # 30 Hz colour + info with up to 5 ms jitter, arriving out of order within a small window.
    rng = random.Random(3)
    got: list[MatchedMessages] = []
    sync = CameraSynchronizer(
        got.append, queue_size=10, slop=0.012, with_depth=True, use_message_filters=False
    )
    events = []
    for i in range(200):
        t = i / 30.0
        events.append((t + rng.uniform(0, 0.004), sync.add_colour, _img(t, str(i))))
        events.append((t + rng.uniform(0, 0.004), sync.add_camera_info, _info(t)))
        jitter = rng.uniform(-0.005, 0.005)
        events.append((t + rng.uniform(0, 0.004), sync.add_depth, _img(t + jitter, str(i))))
    events.sort(key=lambda e: e[0])
    for _, feed, msg in events:
        feed(msg)
    assert len(got) == 200
    for m in got:
        assert m.colour.header.frame_id == m.depth.header.frame_id
        assert stamp_to_ns(m.colour) == stamp_to_ns(m.camera_info)


def test_thread_safe_and_reentrant() -> None:
    got: list[MatchedMessages] = []
    lock = threading.Lock()

    def on_match(m: MatchedMessages) -> None:
        with lock:
            got.append(m)

    sync = CameraSynchronizer(on_match, queue_size=1000, slop=0.001, use_message_filters=False)
    n = 500

    def feed(add, cls) -> None:
        for i in range(n):
            add(_stamped(cls, 10.0 + i * 0.01))

    threads = [
        threading.Thread(target=feed, args=(sync.add_colour, Image)),
        threading.Thread(target=feed, args=(sync.add_camera_info, CameraInfo)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == n

    # A callback that feeds the synchroniser again must not deadlock.
    again: list[MatchedMessages] = []
    sync2: CameraSynchronizer

    def reenter(m: MatchedMessages) -> None:
        again.append(m)
        if len(again) == 1:
            sync2.add_colour(_img(2.0))
            sync2.add_camera_info(_info(2.0))

    sync2 = CameraSynchronizer(reenter, use_message_filters=False)
    sync2.add_colour(_img(1.0))
    sync2.add_camera_info(_info(1.0))
    assert len(again) == 2


def test_subscribe_rejects_mismatched_topics() -> None:
    sync = CameraSynchronizer(lambda m: None, with_depth=True)
    with pytest.raises(ValueError, match="depth_topic"):
        sync.subscribe(object(), "image", "camera_info")


def test_subscribe_on_a_real_node(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through DDS on loopback: publishers -> node subscriptions -> synchroniser."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    domain = random.randint(100, 200)
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    try:
        node = rclpy.create_node("sync_test", context=context)
        got: list[MatchedMessages] = []
        sync = CameraSynchronizer(got.append, slop=0.01, with_depth=True)
        subs = sync.subscribe(node, "cam/image", "cam/camera_info", depth_topic="cam/depth")
        assert len(subs) == 3
        pubs = [
            node.create_publisher(Image, "cam/image", 10),
            node.create_publisher(CameraInfo, "cam/camera_info", 10),
            node.create_publisher(Image, "cam/depth", 10),
        ]
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        deadline = time.monotonic() + 10.0
        i = 0
        while not got and time.monotonic() < deadline:
            t = 1.0 + i * 0.1
            pubs[0].publish(_img(t))
            pubs[1].publish(_info(t))
            pubs[2].publish(_img(t + 0.002))
            executor.spin_once(timeout_sec=0.1)
            i += 1
        for _ in range(5):
            executor.spin_once(timeout_sec=0.02)
        assert got, "no synchronised set arrived over DDS"
        assert got[0].depth is not None
        executor.shutdown()
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
