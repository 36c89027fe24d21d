"""sensor_msgs/CameraInfo <-> Intrinsics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import CameraInfo
from std_msgs.msg import Header

from rvg_ros.core.types import Intrinsics
from rvg_ros.ros.camera_info import camera_info_to_intrinsics, intrinsics_to_camera_info

INTR = Intrinsics(fx=525.0, fy=520.5, cx=319.5, cy=239.25, width=640, height=480)


def _info(**overrides: object) -> CameraInfo:
    msg = intrinsics_to_camera_info(INTR)
    for key, value in overrides.items():
        setattr(msg, key, value)
    return msg


def test_round_trip_without_distortion() -> None:
    msg = intrinsics_to_camera_info(INTR, Header(frame_id="cam_optical"))
    assert msg.header.frame_id == "cam_optical"
    assert (msg.width, msg.height) == (640, 480)
    assert msg.distortion_model == "plumb_bob" and list(msg.d) == [0.0] * 5
    np.testing.assert_array_equal(np.reshape(msg.k, (3, 3)), INTR.matrix)
    np.testing.assert_array_equal(np.reshape(msg.p, (3, 4))[:, :3], INTR.matrix)
    np.testing.assert_array_equal(np.reshape(msg.r, (3, 3)), np.eye(3))
    assert camera_info_to_intrinsics(msg) == INTR  # all-zero distortion reads back as none


@pytest.mark.parametrize(
    "distortion,model,length",
    [
        ((0.1, -0.05, 0.001, 0.002), "plumb_bob", 5),
        ((0.1, -0.05, 0.001, 0.002, 0.01), "plumb_bob", 5),
        ((0.1, -0.05, 0.001, 0.002, 0.01, 0.2, 0.0, 0.03), "rational_polynomial", 8),
    ],
)
def test_round_trip_with_distortion(distortion: tuple, model: str, length: int) -> None:
    intr = Intrinsics(100.0, 100.0, 50.0, 40.0, 100, 80, distortion)
    msg = intrinsics_to_camera_info(intr)
    assert msg.distortion_model == model and len(msg.d) == length
    back = camera_info_to_intrinsics(msg)
    padded = tuple(distortion) + (0.0,) * (length - len(distortion))
    assert back.distortion == padded
    assert (back.fx, back.fy, back.cx, back.cy) == (100.0, 100.0, 50.0, 40.0)


def test_projection_matrix_for_rectified_images() -> None:
    msg = _info(distortion_model="plumb_bob", d=[0.1, 0.0, 0.0, 0.0, 0.0])
    msg.p = [500.0, 0.0, 320.0, 0.0, 0.0, 501.0, 240.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    rect = camera_info_to_intrinsics(msg, use_projection=True)
    assert (rect.fx, rect.fy, rect.cx, rect.cy) == (500.0, 501.0, 320.0, 240.0)
    assert rect.distortion == ()
    raw = camera_info_to_intrinsics(msg)
    assert raw.fx == INTR.fx and raw.distortion == (0.1, 0.0, 0.0, 0.0, 0.0)


def test_binning_and_roi() -> None:
    msg = _info(binning_x=2, binning_y=2)
    binned = camera_info_to_intrinsics(msg)
    assert (binned.width, binned.height) == (320, 240)
    assert (binned.fx, binned.cx) == (INTR.fx / 2, INTR.cx / 2)
    msg = _info()
    msg.roi.x_offset, msg.roi.y_offset, msg.roi.width, msg.roi.height = 100, 50, 200, 100
    roi = camera_info_to_intrinsics(msg)
    assert (roi.width, roi.height) == (200, 100)
    assert (roi.cx, roi.cy) == (INTR.cx - 100, INTR.cy - 50)
    assert roi.fx == INTR.fx


@pytest.mark.parametrize(
    "k,match",
    [
        ([0.0] * 9, "uncalibrated"),
        ([-525.0, 0, 319.5, 0, 525.0, 239.5, 0, 0, 1], "positive"),
        ([525.0, 0, 319.5, 0, 0.0, 239.5, 0, 0, 1], "positive"),
        ([math.nan, 0, 319.5, 0, 525.0, 239.5, 0, 0, 1], "non-finite fx"),
        ([525.0, 0, math.inf, 0, 525.0, 239.5, 0, 0, 1], "non-finite cx"),
    ],
)
def test_bad_k_rejected(k: list, match: str) -> None:
    msg = _info()
    msg.k = [float(v) for v in k]
    with pytest.raises(ValueError, match=match):
        camera_info_to_intrinsics(msg)


@pytest.mark.parametrize("width,height", [(0, 480), (640, 0)])
def test_zero_size_rejected(width: int, height: int) -> None:
    with pytest.raises(ValueError, match="zero image size"):
        camera_info_to_intrinsics(_info(width=width, height=height))


def test_bad_distortion_rejected() -> None:
    with pytest.raises(ValueError, match="not finite"):
        camera_info_to_intrinsics(_info(d=[math.nan, 0.0, 0.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="equidistant"):
        camera_info_to_intrinsics(_info(distortion_model="equidistant", d=[0.1, 0.0, 0.0, 0.0]))
    # A fisheye model with all-zero coefficients is just a pinhole: accepted.
    ok = camera_info_to_intrinsics(_info(distortion_model="equidistant", d=[0.0] * 4))
    assert ok.distortion == ()


def test_roi_binning_leaving_no_pixels() -> None:
    msg = _info(binning_x=1000)
    with pytest.raises(ValueError, match="no pixels"):
        camera_info_to_intrinsics(msg)


def test_encoder_rejections() -> None:
    with pytest.raises(ValueError, match="focal"):
        intrinsics_to_camera_info(Intrinsics(0.0, 1.0, 0.0, 0.0, 10, 10))
    with pytest.raises(ValueError, match="at most 8"):
        intrinsics_to_camera_info(Intrinsics(1.0, 1.0, 0.0, 0.0, 10, 10, (0.0,) * 12))


@settings(max_examples=100, deadline=None)
@given(
    k=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=9, max_size=9),
    width=st.integers(0, 4096),
    height=st.integers(0, 4096),
)
def test_arbitrary_camera_info_is_valid_or_rejected(k: list, width: int, height: int) -> None:
    msg = _info(width=width, height=height)
    msg.k = k
    try:
        intr = camera_info_to_intrinsics(msg)
    except ValueError:
        return
    intr.validate()


_float = st.floats(allow_nan=True, allow_infinity=True, width=64)


@settings(max_examples=150)
@given(
    fx=st.one_of(_float, st.sampled_from([0.0, -1.0, 500.0])),
    fy=st.one_of(_float, st.sampled_from([0.0, -1.0, 500.0])),
    d=st.lists(st.one_of(_float, st.just(0.0)), max_size=9),
    model=st.sampled_from(["plumb_bob", "rational_polynomial", "equidistant", "", "x" * 40]),
    binning=st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 8)),
    roi=st.tuples(*[st.integers(0, 5000)] * 4),
    use_projection=st.booleans(),
)
def test_hostile_camera_info_is_valid_or_refused(
    fx: float, fy: float, d: list, model: str, binning: tuple, roi: tuple, use_projection: bool
) -> None:
    """Zeros, NaN, negative focal lengths, odd distortion, absurd binning / ROI: either a valid
    camera no larger than the image, or a ValueError with a reason."""
    msg = _info(distortion_model=model, d=d, binning_x=binning[0], binning_y=binning[1])
    msg.k = [fx, 0.0, 319.5, 0.0, fy, 239.5, 0.0, 0.0, 1.0]
    msg.p = [fx, 0.0, 319.5, 0.0, 0.0, fy, 239.5, 0.0, 0.0, 0.0, 1.0, 0.0]
    msg.roi.x_offset, msg.roi.y_offset, msg.roi.width, msg.roi.height = roi
    try:
        intr = camera_info_to_intrinsics(msg, use_projection=use_projection)
    except ValueError as exc:
        assert str(exc)
        return
    intr.validate()
    assert math.isfinite(fx) and fx > 0 and math.isfinite(fy) and fy > 0
    assert all(math.isfinite(v) for v in intr.distortion)
    assert 0 < intr.width <= max(640, roi[2]) and 0 < intr.height <= max(480, roi[3])
