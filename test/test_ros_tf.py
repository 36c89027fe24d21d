"""The TF fallback buffer (chains, interpolation, static + dynamic, errors) and its listener."""

from __future__ import annotations

import math
import random
import threading
import time

import numpy as np
import pytest
from scipy.spatial.transform import Rotation, Slerp

from rvg_ros.ros.tf import (
    BODY_T_OPTICAL,
    ConnectivityError,
    ExtrapolationError,
    FrameNotFoundError,
    TransformBuffer,
    TransformError,
    make_transform_stamped,
    matrix_to_quaternion,
    matrix_to_transform,
    quaternion_to_matrix,
    slerp,
    to_ns,
    transform_to_matrix,
)

S = 1_000_000_000  # ns per second
IDENTITY_Q = (0.0, 0.0, 0.0, 1.0)


def _close(actual, desired, atol: float = 1e-9) -> None:
    np.testing.assert_allclose(actual, desired, rtol=1e-9, atol=atol)


def _q(axis: str, degrees: float) -> tuple[float, ...]:
    return tuple(Rotation.from_euler(axis, degrees, degrees=True).as_quat())


def _matrix(translation, q) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = Rotation.from_quat(q).as_matrix()
    m[:3, 3] = translation
    return m


# -- helpers -----------------------------------------------------------------------------------


def test_quaternion_helpers_agree_with_scipy() -> None:
    rng = np.random.default_rng(0)
    for q in Rotation.random(50, random_state=1).as_quat():
        _close(quaternion_to_matrix(q), Rotation.from_quat(q).as_matrix())
        back = matrix_to_quaternion(Rotation.from_quat(q).as_matrix())
        assert abs(abs(float(np.dot(back, q))) - 1.0) < 1e-9
    # 180-degree rotations (trace -1) take the other branches.
    for axis in "xyz":
        r = Rotation.from_euler(axis, 180, degrees=True)
        back = matrix_to_quaternion(r.as_matrix())
        _close(quaternion_to_matrix(back), r.as_matrix())
    q0, q1 = Rotation.random(2, random_state=2).as_quat()
    reference = Slerp([0, 1], Rotation.from_quat([q0, q1]))
    for t in rng.random(10):
        ours = quaternion_to_matrix(slerp(q0, q1, t))
        _close(ours, reference([t]).as_matrix()[0], atol=1e-9)


def test_transform_message_helpers() -> None:
    m = _matrix([1.0, -2.0, 0.5], _q("z", 30))
    _close(transform_to_matrix(matrix_to_transform(m)), m)
    msg = make_transform_stamped("world", "cam", m, stamp=12.25)
    assert (msg.header.frame_id, msg.child_frame_id) == ("world", "cam")
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (12, 250_000_000)
    _close(transform_to_matrix(msg), m)
    assert to_ns(msg.header.stamp) == 12_250_000_000
    assert to_ns(3) == 3 and to_ns(None) == 0 and to_ns(1.5) == 1_500_000_000
    with pytest.raises(TypeError):
        to_ns("now")
    with pytest.raises(ValueError):
        matrix_to_transform(np.eye(3))


def test_errors_are_lookup_errors() -> None:
    for cls in (FrameNotFoundError, ConnectivityError, ExtrapolationError):
        assert issubclass(cls, TransformError) and issubclass(cls, LookupError)


# -- chains ------------------------------------------------------------------------------------


def _tree() -> tuple[TransformBuffer, dict[str, np.ndarray]]:
    """world -> base (dynamic) -> arm (static) -> camera_optical (static); world -> table."""
    buf = TransformBuffer()
    poses = {
        "base": _matrix([1.0, 0.0, 0.0], _q("z", 90)),
        "arm": _matrix([0.0, 0.5, 1.0], _q("y", -20)),
        "camera_optical": _matrix([0.1, 0.0, 0.0], _q("x", 45)),
        "table": _matrix([2.0, 2.0, 0.7], IDENTITY_Q),
    }
    parents = {"base": "world", "arm": "base", "camera_optical": "arm", "table": "world"}
    for child, m in poses.items():
        q = matrix_to_quaternion(m)
        static = child != "base"
        buf.add(parents[child], child, 5 * S, m[:3, 3], q, is_static=static)
    return buf, poses


def test_chain_through_the_tree() -> None:
    buf, p = _tree()
    world_T_cam = p["base"] @ p["arm"] @ p["camera_optical"]
    _close(buf.lookup_transform("world", "camera_optical", 5 * S), world_T_cam)
    # Up and down through the common ancestor "world".
    table_T_cam = np.linalg.inv(p["table"]) @ world_T_cam
    _close(buf.lookup_transform("table", "camera_optical", 5 * S), table_T_cam)
    _close(buf.lookup_transform("camera_optical", "table", 5 * S), np.linalg.inv(table_T_cam))
    # Common ancestor below the root: only static links are involved, any time works.
    _close(buf.lookup_transform("arm", "camera_optical", 1234 * S), p["camera_optical"])
    _close(buf.lookup_transform("arm", "arm", 0), np.eye(4))
    assert buf.frames() == {"world", "base", "arm", "camera_optical", "table"}
    # A leading slash (ROS 1 style) names the same frame.
    _close(buf.lookup_transform("/world", "/camera_optical", 5 * S), world_T_cam)


def test_lookup_camera_to_world_is_world_T_optical() -> None:
    buf, p = _tree()
    cam = buf.lookup_camera_to_world("world", "camera_optical", 5 * S, timeout=0.0)
    _close(cam, p["base"] @ p["arm"] @ p["camera_optical"])
    # The optical frame looks along its +z: with base_T_optical = BODY_T_OPTICAL a camera body
    # facing world +x sees along world +x.
    buf.add("world", "body", 0, (0, 0, 0), IDENTITY_Q, is_static=True)
    q = matrix_to_quaternion(BODY_T_OPTICAL)
    buf.add("body", "optical", 0, (0, 0, 0), q, is_static=True)
    optical = buf.lookup_camera_to_world("world", "optical")
    _close(optical[:3, 2], [1.0, 0.0, 0.0])


def test_unknown_frame() -> None:
    buf, _ = _tree()
    with pytest.raises(FrameNotFoundError, match="'nowhere' does not exist.*known frames"):
        buf.lookup_transform("world", "nowhere", 5 * S)
    with pytest.raises(FrameNotFoundError, match="empty"):
        buf.lookup_transform("", "world")
    with pytest.raises(FrameNotFoundError, match="none yet"):
        TransformBuffer().lookup_transform("a", "b")


def test_disconnected_trees() -> None:
    buf, _ = _tree()
    buf.add("map", "odom", 5 * S, (0, 0, 0), IDENTITY_Q)
    with pytest.raises(ConnectivityError, match="rooted at 'world'.*rooted at 'map'"):
        buf.lookup_transform("camera_optical", "odom", 5 * S)
    assert not buf.can_transform("camera_optical", "odom", 5 * S)
    assert buf.can_transform("world", "camera_optical", 5 * S)


def test_loop_is_a_connectivity_error() -> None:
    buf = TransformBuffer()
    buf.add("a", "b", S, (0, 0, 0), IDENTITY_Q)
    buf.add("b", "c", S, (0, 0, 0), IDENTITY_Q)
    buf.add("c", "a", S, (0, 0, 0), IDENTITY_Q)
    with pytest.raises(ConnectivityError, match="loop"):
        buf.lookup_transform("a", "c", S)


# -- time --------------------------------------------------------------------------------------


def test_interpolation_translation_and_slerp() -> None:
    buf = TransformBuffer()
    q0, q1 = _q("z", 0), _q("z", 90)
    buf.add("world", "cam", 10 * S, (0.0, 0.0, 0.0), q0)
    buf.add("world", "cam", 12 * S, (2.0, 4.0, -2.0), q1)
    m = buf.lookup_transform("world", "cam", 10 * S + S // 2)  # a quarter of the way
    _close(m[:3, 3], [0.5, 1.0, -0.5])
    _close(m[:3, :3], Rotation.from_euler("z", 22.5, degrees=True).as_matrix())
    # Exactly on a sample: that sample.
    _close(buf.lookup_transform("world", "cam", 12 * S), _matrix((2, 4, -2), q1))
    # The inverse lookup interpolates too.
    _close(
        buf.lookup_transform("cam", "world", 11 * S),
        np.linalg.inv(_matrix((1, 2, -1), _q("z", 45))),
        atol=1e-12,
    )


def test_slerp_takes_the_short_way_round() -> None:
    buf = TransformBuffer()
    q0 = np.array(_q("z", 170))
    q1 = -np.array(_q("z", -170))  # same rotation, opposite hemisphere of the quaternion sphere
    buf.add("world", "cam", 0, (0, 0, 0), q0)
    buf.add("world", "cam", 2 * S, (0, 0, 0), q1)
    m = buf.lookup_transform("world", "cam", S)
    yaw = math.degrees(math.atan2(m[1, 0], m[0, 0]))
    assert abs(abs(yaw) - 180.0) < 1e-9  # through 180, not through 0


def test_out_of_order_samples() -> None:
    buf = TransformBuffer()
    for t in (3, 1, 2):
        buf.add("world", "cam", t * S, (float(t), 0, 0), IDENTITY_Q)
    assert buf.lookup_transform("world", "cam", 1.5)[0, 3] == pytest.approx(1.5)
    assert buf.lookup_transform("world", "cam", 2.5)[0, 3] == pytest.approx(2.5)


def test_extrapolation_errors() -> None:
    buf = TransformBuffer()
    buf.add("world", "cam", 10 * S, (0, 0, 0), IDENTITY_Q)
    buf.add("world", "cam", 11 * S, (1, 0, 0), IDENTITY_Q)
    with pytest.raises(ExtrapolationError, match="future.*latest data for 'cam'") as future:
        buf.lookup_transform("world", "cam", 11 * S + 1)
    assert future.value.future
    with pytest.raises(ExtrapolationError, match="past.*earliest") as past:
        buf.lookup_transform("world", "cam", 9 * S)
    assert not past.value.future
    # A single sample only answers for its own time (tf2 semantics), or for "latest".
    one = TransformBuffer()
    one.add("world", "cam", 10 * S, (1, 2, 3), IDENTITY_Q)
    _close(one.lookup_transform("world", "cam", 0)[:3, 3], [1, 2, 3])
    with pytest.raises(ExtrapolationError):
        one.lookup_transform("world", "cam", 10 * S + 1000)


def test_latest_common_time() -> None:
    # world -> base updated up to t=20, base -> cam only up to t=15: "latest" is 15.
    buf = TransformBuffer()
    for t in (10, 15, 20):
        buf.add("world", "base", t * S, (float(t), 0, 0), IDENTITY_Q)
    for t in (10, 15):
        buf.add("base", "cam", t * S, (0, float(t), 0), IDENTITY_Q)
    _close(buf.lookup_transform("world", "cam")[:3, 3], [15, 15, 0])
    _close(buf.lookup_transform("world", "base")[:3, 3], [20, 0, 0])


def test_static_and_dynamic_together() -> None:
    buf = TransformBuffer(cache_time=1.0)
    buf.add("world", "robot", 0, (0, 0, 1), IDENTITY_Q, is_static=True)
    for i in range(50):  # 10 Hz for 5 s
        buf.add("robot", "cam", i * S // 10, (i / 10, 0, 0), IDENTITY_Q)
    m = buf.lookup_transform("world", "cam", 4.85)
    _close(m[:3, 3], [4.85, 0, 1])
    # Dynamic history is limited to cache_time behind the newest sample; static data is forever.
    with pytest.raises(ExtrapolationError, match="past"):
        buf.lookup_transform("world", "cam", 3.8)
    _close(buf.lookup_transform("world", "robot", 10_000 * S)[2, 3], 1.0)
    # Data older than the window is ignored (tf2's TF_OLD_DATA), and counted.
    assert not buf.add("robot", "cam", 1 * S, (9, 9, 9), IDENTITY_Q)
    assert buf.rejected["old data"] == 1
    # A static frame does not take dynamic updates.
    assert not buf.add("world", "robot", 5 * S, (0, 0, 0), IDENTITY_Q)
    # clear() drops dynamic history (clock jumped back) but keeps static transforms.
    buf.clear()
    assert buf.can_transform("world", "robot") and not buf.can_transform("world", "cam")


def test_reparented_frame() -> None:
    buf = TransformBuffer()
    buf.add("world", "table", 0, (1, 0, 0), IDENTITY_Q, is_static=True)
    buf.add("world", "gripper", 0, (0, 0, 5), IDENTITY_Q, is_static=True)
    buf.add("table", "mug", 1 * S, (0, 1, 0), IDENTITY_Q)
    buf.add("gripper", "mug", 2 * S, (0, 0, -1), IDENTITY_Q)  # picked up
    _close(buf.lookup_transform("world", "mug", 1 * S)[:3, 3], [1, 1, 0])
    _close(buf.lookup_transform("world", "mug", 2 * S)[:3, 3], [0, 0, 4])
    # Between the two the parent differs: no cross-parent interpolation, the earlier one is used.
    _close(buf.lookup_transform("world", "mug", 1.5)[:3, 3], [1, 1, 0])


@pytest.mark.parametrize(
    "parent,child,translation,rotation,match",
    [
        ("world", "", (0, 0, 0), IDENTITY_Q, "empty frame id"),
        ("", "cam", (0, 0, 0), IDENTITY_Q, "empty frame id"),
        ("cam", "cam", (0, 0, 0), IDENTITY_Q, "own parent"),
        ("world", "cam", (math.nan, 0, 0), IDENTITY_Q, "non-finite"),
        ("world", "cam", (0, 0, 0), (0, 0, 0, math.inf), "non-finite"),
        ("world", "cam", (0, 0, 0), (0, 0, 0, 0), "denormalized"),
        ("world", "cam", (0, 0, 0), (0, 0, 0, 2), "denormalized"),
    ],
)
def test_invalid_transforms_rejected(parent, child, translation, rotation, match) -> None:
    buf = TransformBuffer()
    with pytest.raises(ValueError, match=match):
        buf.add(parent, child, S, translation, rotation)
    assert sum(buf.rejected.values()) == 1
    assert buf.frames() == set()


def test_slightly_denormalized_quaternion_is_normalised() -> None:
    buf = TransformBuffer()
    buf.add("world", "cam", S, (0, 0, 0), (0, 0, 0, 1.004))
    _close(buf.lookup_transform("world", "cam", S), np.eye(4))


def test_memory_bounds() -> None:
    buf = TransformBuffer(max_frames=5, max_samples_per_frame=10)
    for i in range(5):  # the limit counts frames that have a parent
        buf.add("world", f"f{i}", S, (0, 0, 0), IDENTITY_Q)
    with pytest.raises(ValueError, match="too many frames"):
        buf.add("world", "f5", S, (0, 0, 0), IDENTITY_Q)
    assert buf.add("world", "f4", 2 * S, (0, 0, 0), IDENTITY_Q)  # known frames still update
    for i in range(100):
        buf.add("world", "f0", S + i, (0, 0, 0), IDENTITY_Q)
    assert len(buf._dynamic["f0"].samples) == 10


def test_set_transform_from_message() -> None:
    buf = TransformBuffer()
    m = _matrix([0.3, 0.2, 0.1], _q("x", 10))
    buf.set_transform(make_transform_stamped("world", "cam", m, stamp=7.0))
    _close(buf.lookup_transform("world", "cam", 7.0), m)
    assert buf.set_transform(make_transform_stamped("world", "static_cam", m), is_static=True)


def test_wait_for_transform() -> None:
    buf = TransformBuffer()
    buf.add("world", "cam", 1 * S, (0, 0, 0), IDENTITY_Q)

    def publish_later() -> None:
        time.sleep(0.1)
        buf.add("world", "cam", 3 * S, (2, 0, 0), IDENTITY_Q)

    thread = threading.Thread(target=publish_later)
    start = time.monotonic()
    thread.start()
    m = buf.wait_for_transform("world", "cam", 2 * S, timeout=5.0)  # future: waits
    thread.join()
    assert 0.05 < time.monotonic() - start < 2.0
    _close(m[:3, 3], [1, 0, 0])
    # The past never arrives: no waiting.
    start = time.monotonic()
    with pytest.raises(ExtrapolationError, match="past"):
        buf.wait_for_transform("world", "cam", 0.5, timeout=5.0)
    assert time.monotonic() - start < 0.5
    # Timeout with a clear message.
    with pytest.raises(FrameNotFoundError, match=r"waited 0.050 s"):
        buf.lookup_camera_to_world("world", "late_camera", 0, timeout=0.05)


# -- ROS side ----------------------------------------------------------------------------------


@pytest.mark.parametrize("spin_thread", [False, True])
def test_pose_source_falls_back_without_tf2_ros(
    monkeypatch: pytest.MonkeyPatch, spin_thread: bool
) -> None:
    """TfListener on a real node, fed over DDS by /tf and /tf_static publishers.

    With ``spin_thread`` the listener spins its own internal node, so the test node is not
    spun at all; without it the node is spun by a MultiThreadedExecutor in the background.
    """
    tf2_msgs = pytest.importorskip("tf2_msgs.msg")  # built into the venv by the set-up
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile

    from rvg_ros.ros.tf import TfPoseSource

    monkeypatch.setenv("ROS_DOMAIN_ID", str(random.randint(100, 200)))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node("tf_test", context=context)
        source = TfPoseSource(node, use_tf2_ros=False, spin_thread=spin_thread)
        assert source.backend == "rvg_ros"
        assert source.listener._jump_handle is not None  # clears the buffer on clock jumps
        static_pub = node.create_publisher(
            tf2_msgs.TFMessage,
            "/tf_static",
            QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL),
        )
        tf_pub = node.create_publisher(tf2_msgs.TFMessage, "/tf", 100)
        mount = _matrix([0.0, 0.0, 0.5], _q("x", -90))
        static_pub.publish(
            tf2_msgs.TFMessage(transforms=[make_transform_stamped("base", "cam_optical", mount)])
        )
        executor = MultiThreadedExecutor(context=context)
        executor.add_node(node)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        if not spin_thread:
            spinner.start()
        try:
            bad = make_transform_stamped("world", "base", np.eye(4), stamp=1.0)
            bad.transform.rotation.w = 0.0  # a zero quaternion must be rejected, not crash
            deadline = time.monotonic() + 10.0
            t = 1.0
            while time.monotonic() < deadline:
                moves = [
                    make_transform_stamped("world", "base", _matrix([t, 0, 0], IDENTITY_Q), t),
                    bad,
                ]
                tf_pub.publish(tf2_msgs.TFMessage(transforms=moves))
                if source.buffer.can_transform("world", "cam_optical", t - 0.5):
                    break
                time.sleep(0.05)
                t += 0.1
            cam = source.lookup_camera_to_world("world", "cam_optical", t - 0.5, timeout=2.0)
            _close(cam, _matrix([t - 0.5, 0, 0], IDENTITY_Q) @ mount)
            assert source.buffer.rejected["denormalized quaternion"] >= 1
            with pytest.raises(FrameNotFoundError):
                source.lookup_camera_to_world("world", "other_cam", 0, timeout=0.1)
        finally:
            executor.shutdown()
            if not spin_thread:
                spinner.join(timeout=2.0)
            source.close()
            source.close()  # idempotent
            node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def test_listener_needs_tf2_msgs(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from rvg_ros.ros.tf import TfListener

    monkeypatch.setitem(sys.modules, "tf2_msgs.msg", None)
    monkeypatch.setitem(sys.modules, "tf2_msgs", None)
    with pytest.raises(ImportError, match="tf2_msgs is not available"):
        TfListener(object(), TransformBuffer())


def test_pose_source_uses_tf2_ros_when_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tf2_ros path, with a stand-in module: arguments passed through, errors mapped."""
    import sys
    import types

    from rvg_ros.ros.tf import TfPoseSource

    fake = types.ModuleType("tf2_ros")

    class TransformException(Exception):
        pass

    class LookupException(TransformException):
        pass

    class ConnectivityException(TransformException):
        pass

    class ExtrapolationException(TransformException):
        pass

    class TimeoutException(TransformException):
        pass

    calls: dict[str, object] = {}
    m = _matrix([1.0, 2.0, 3.0], _q("y", 30))

    class Buffer:
        def __init__(self, cache_time, node) -> None:
            calls["cache_ns"] = cache_time.nanoseconds

        def lookup_transform(self, target, source, when, timeout):
            calls["args"] = (target, source, when.nanoseconds, timeout.nanoseconds)
            errors = {
                "missing": LookupException,
                "apart": ConnectivityException,
                "late": ExtrapolationException,
                "slow": TimeoutException,
            }
            if source in errors:
                raise errors[source](f"{source} failed")
            return make_transform_stamped(target, source, m)

    class TransformListener:
        def __init__(self, buffer, node, spin_thread=False) -> None:
            calls["spin_thread"] = spin_thread

        def unregister(self) -> None:
            calls["unregistered"] = True

    for cls in (
        TransformException,
        LookupException,
        ConnectivityException,
        ExtrapolationException,
        TimeoutException,
        Buffer,
        TransformListener,
    ):
        setattr(fake, cls.__name__, cls)
    monkeypatch.setitem(sys.modules, "tf2_ros", fake)

    source = TfPoseSource(node=None, cache_time=5.0, spin_thread=True)
    assert source.backend == "tf2_ros"
    assert calls["cache_ns"] == 5 * S and calls["spin_thread"] is True
    from builtin_interfaces.msg import Time

    cam = source.lookup_camera_to_world("world", "cam_optical", Time(sec=3, nanosec=7), 0.25)
    _close(cam, m)
    assert calls["args"] == ("world", "cam_optical", 3 * S + 7, S // 4)
    expected = {
        "missing": FrameNotFoundError,
        "apart": ConnectivityError,
        "late": ExtrapolationError,
        "slow": TransformError,
    }
    for name, error in expected.items():
        with pytest.raises(error, match=f"{name} failed"):
            source.lookup_camera_to_world("world", name, 0, 0.0)
    source.close()
    assert calls["unregistered"]
