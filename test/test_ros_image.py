"""sensor_msgs/Image <-> numpy: every encoding, padded rows, byte order, malformed input."""

from __future__ import annotations

import array

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from rvg_ros.core.limits import LimitExceeded
from rvg_ros.ros.image import (
    COLOUR_ENCODINGS,
    DEPTH_ENCODINGS,
    ENCODINGS,
    array_to_image,
    check_image,
    depth_to_image,
    image_to_array,
    image_to_depth,
    image_to_mask,
    image_to_rgb,
    mask_to_image,
    rgb_to_image,
)

RNG = np.random.default_rng(0)


def _rgb(h: int = 5, w: int = 7) -> np.ndarray:
    return RNG.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _raw(arr: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False) -> Image:
    """Hand-pack ``arr`` with ``pad`` junk bytes after every row, in the given byte order."""
    arr = np.asarray(arr)
    dtype = arr.dtype.newbyteorder(">" if bigendian else "<")
    h, w = arr.shape[:2]
    rows = np.ascontiguousarray(arr, dtype=dtype).reshape(h, -1).view(np.uint8)
    junk = np.full((h, pad), 0xAB, dtype=np.uint8)
    data = np.concatenate([rows, junk], axis=1)
    return Image(
        height=h,
        width=w,
        encoding=encoding,
        is_bigendian=int(bigendian),
        step=data.shape[1],
        data=array.array("B", data.tobytes()),
    )


# -- colour ------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_colour_round_trip(encoding: str) -> None:
    rgb = _rgb()
    header = Header(frame_id="camera_optical_frame")
    msg = rgb_to_image(rgb, encoding, header)
    assert msg.encoding == encoding
    assert msg.header.frame_id == "camera_optical_frame"
    assert msg.step == 7 * ENCODINGS[encoding].bytes_per_pixel
    assert len(msg.data) == msg.step * msg.height
    out = image_to_rgb(msg)
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)


def test_bgr_bytes_are_really_swapped() -> None:
    rgb = np.zeros((1, 1, 3), dtype=np.uint8)
    rgb[0, 0] = (10, 20, 30)
    assert bytes(rgb_to_image(rgb, "bgr8").data) == bytes([30, 20, 10])
    assert bytes(rgb_to_image(rgb, "bgra8").data) == bytes([30, 20, 10, 255])
    assert bytes(rgb_to_image(rgb, "rgba8").data) == bytes([10, 20, 30, 255])


def test_mono_colour_is_grey() -> None:
    grey = np.array([[0, 128, 255]], dtype=np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    mono8 = rgb_to_image(rgb, "mono8")
    np.testing.assert_array_equal(image_to_array(mono8), grey)
    np.testing.assert_array_equal(image_to_rgb(mono8), rgb)
    mono16 = rgb_to_image(rgb, "mono16")
    np.testing.assert_array_equal(image_to_array(mono16), grey.astype(np.uint16) * 257)
    np.testing.assert_array_equal(image_to_rgb(mono16), rgb)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16"])
@pytest.mark.parametrize("bigendian", [False, True])
def test_padded_step_and_byte_order(encoding: str, bigendian: bool) -> None:
    spec = ENCODINGS[encoding]
    shape = (4, 6) if spec.channels == 1 else (4, 6, spec.channels)
    native = RNG.integers(0, np.iinfo(spec.dtype).max, size=shape, dtype=spec.dtype)
    msg = _raw(native, encoding, pad=5, bigendian=bigendian)  # odd pad: unaligned 16-bit rows
    out = image_to_array(msg)
    assert out.dtype.isnative and out.flags.c_contiguous
    np.testing.assert_array_equal(out, native)
    # The decoded array owns its memory: reusing the message buffer must not change it.
    before = out.copy()
    for i in range(len(msg.data)):
        msg.data[i] = 0
    np.testing.assert_array_equal(out, before)


def test_data_longer_than_needed_is_accepted() -> None:
    rgb = _rgb(2, 3)
    msg = rgb_to_image(rgb)
    msg.data.extend(b"\x00" * 11)
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)


# -- depth -------------------------------------------------------------------------------------


def test_depth_16uc1_round_trip_in_millimetres() -> None:
    depth = np.array([[0.0, 0.001, 0.5], [1.2344, 65.535, 2.0]], dtype=np.float32)
    msg = depth_to_image(depth, "16UC1")
    assert msg.encoding == "16UC1" and msg.step == 6
    mm = image_to_array(msg)
    np.testing.assert_array_equal(mm, [[0, 1, 500], [1234, 65535, 2000]])
    out = image_to_depth(msg)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, depth, atol=0.0005 + 1e-6)
    assert out[0, 0] == 0.0  # 0 stays "no measurement"


def test_depth_16uc1_invalid_and_out_of_range_become_zero() -> None:
    depth = np.array([[np.nan, np.inf, -1.0, 70.0, 0.0, 1.0]], dtype=np.float32)
    mm = image_to_array(depth_to_image(depth, "16UC1"))
    np.testing.assert_array_equal(mm, [[0, 0, 0, 0, 0, 1000]])


def test_depth_16uc1_decodes_all_16_bits() -> None:
    # The PyPI cv_bridge decodes 16UC1 as 8-bit; make sure high bytes survive, both byte orders.
    mm = np.array([[258, 4097, 65535]], dtype=np.uint16)
    for bigendian in (False, True):
        out = image_to_depth(_raw(mm, "16UC1", pad=3, bigendian=bigendian))
        np.testing.assert_allclose(out, [[0.258, 4.097, 65.535]], rtol=1e-6)


def test_depth_32fc1_round_trip_and_cleaning() -> None:
    depth = np.array([[0.0, 0.25, 1.5, 3.75]], dtype=np.float32)
    out = image_to_depth(depth_to_image(depth, "32FC1"))
    np.testing.assert_array_equal(out, depth)
    dirty = np.array([[np.nan, np.inf, -np.inf, -0.5, 0.75]], dtype=np.float32)
    for bigendian in (False, True):
        cleaned = image_to_depth(_raw(dirty, "32FC1", pad=2, bigendian=bigendian))
        np.testing.assert_array_equal(cleaned, [[0.0, 0.0, 0.0, 0.0, 0.75]])
    nan_msg = depth_to_image(dirty, "32FC1", invalid_as_nan=True)
    assert np.isnan(image_to_array(nan_msg)[0, :4]).all()
    np.testing.assert_array_equal(image_to_depth(nan_msg), [[0.0, 0.0, 0.0, 0.0, 0.75]])


def test_depth_mono16_is_millimetres() -> None:
    out = image_to_depth(_raw(np.array([[1500]], dtype=np.uint16), "mono16"))
    np.testing.assert_allclose(out, [[1.5]])


# -- masks -------------------------------------------------------------------------------------


def test_mask_round_trip_and_encodings() -> None:
    mask = RNG.random((6, 9)) > 0.5
    msg = mask_to_image(mask)
    assert msg.encoding == "mono8"
    out = image_to_mask(msg)
    assert out.dtype == bool
    np.testing.assert_array_equal(out, mask)
    for encoding, dtype in (("8UC1", np.uint8), ("16UC1", np.uint16), ("mono16", np.uint16)):
        values = (mask * 7).astype(dtype)
        np.testing.assert_array_equal(image_to_mask(_raw(values, encoding, pad=1)), mask)


# -- rejections --------------------------------------------------------------------------------


def test_wrong_kind_of_image_is_rejected() -> None:
    with pytest.raises(ValueError, match="not a colour encoding"):
        image_to_rgb(depth_to_image(np.ones((2, 2), np.float32)))
    with pytest.raises(ValueError, match="not a depth encoding"):
        image_to_depth(rgb_to_image(_rgb()))
    with pytest.raises(ValueError, match="not a mask encoding"):
        image_to_mask(rgb_to_image(_rgb()))


def test_unknown_encoding() -> None:
    msg = rgb_to_image(_rgb())
    msg.encoding = "yuv422"
    for fn in (image_to_array, image_to_rgb, image_to_depth, image_to_mask):
        with pytest.raises(ValueError, match="yuv422"):
            fn(msg)


def test_data_shorter_than_height_times_step() -> None:
    msg = rgb_to_image(_rgb(4, 4))
    del msg.data[-1]
    with pytest.raises(ValueError, match=r"height \* step"):
        image_to_rgb(msg)


def test_step_smaller_than_a_row() -> None:
    msg = rgb_to_image(_rgb(4, 4))
    msg.step = 11
    with pytest.raises(ValueError, match="step 11 is smaller"):
        image_to_rgb(msg)


@pytest.mark.parametrize("height,width", [(0, 4), (4, 0), (0, 0)])
def test_zero_size(height: int, width: int) -> None:
    msg = Image(height=height, width=width, encoding="rgb8", step=3 * width)
    with pytest.raises(ValueError, match="zero size"):
        image_to_rgb(msg)


def test_huge_declared_size_with_little_data() -> None:
    msg = Image(height=2**31, width=2**31, encoding="16UC1", step=2**32, data=b"\x00" * 8)
    with pytest.raises(ValueError, match="bytes"):
        image_to_depth(msg)


def test_encoder_rejections() -> None:
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        rgb_to_image(np.zeros((2, 2, 3), np.float32))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        rgb_to_image(np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="cannot encode colour"):
        rgb_to_image(_rgb(), "32FC1")
    with pytest.raises(ValueError, match="cannot encode depth"):
        depth_to_image(np.ones((2, 2)), "mono8")
    with pytest.raises(ValueError, match="HxW"):
        depth_to_image(np.ones((2, 2, 1, 1)))
    with pytest.raises(ValueError, match="zero size"):
        rgb_to_image(np.zeros((0, 3, 3), np.uint8))
    with pytest.raises(ValueError, match="dtype"):
        array_to_image(np.zeros((2, 2), np.float64), "32FC1")


@settings(max_examples=150, deadline=None)
@given(
    encoding=st.sampled_from(sorted(ENCODINGS)),
    height=st.integers(0, 6),
    width=st.integers(0, 6),
    step=st.integers(0, 40),
    size=st.integers(0, 300),
    bigendian=st.booleans(),
)
def test_arbitrary_headers_never_crash(
    encoding: str, height: int, width: int, step: int, size: int, bigendian: bool
) -> None:
    # Any combination either decodes to the declared shape or raises ValueError: nothing else.
    msg = Image(
        height=height,
        width=width,
        encoding=encoding,
        step=step,
        is_bigendian=int(bigendian),
        data=array.array("B", bytes(size)),
    )
    for fn in (image_to_array, image_to_rgb, image_to_depth, image_to_mask):
        try:
            out = fn(msg)
        except ValueError:
            continue
        assert out.shape[:2] == (height, width)


# -- hostile messages (property tests; the node runs check_image on every arriving message) ----
_ENC = sorted(ENCODINGS)


@settings(max_examples=150)
@given(
    encoding=st.sampled_from(_ENC),
    height=st.integers(1, 6),
    width=st.integers(1, 6),
    pad=st.integers(0, 5),
    extra=st.integers(0, 40),
    bigendian=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_padding_extra_data_and_byte_order_decodes_exactly(
    encoding: str, height: int, width: int, pad: int, extra: int, bigendian: bool, seed: int
) -> None:
    spec = ENCODINGS[encoding]
    rng = np.random.default_rng(seed)
    shape = (height, width) if spec.channels == 1 else (height, width, spec.channels)
    if spec.dtype == np.float32:
        arr = rng.normal(size=shape).astype(np.float32)
    else:
        arr = rng.integers(0, np.iinfo(spec.dtype).max, size=shape, endpoint=True).astype(
            spec.dtype
        )
    msg = _raw(arr, encoding, pad=pad, bigendian=bigendian)
    msg.data = array.array("B", bytes(msg.data) + bytes(range(extra)))  # longer than h * step
    out = image_to_array(msg)
    assert out.dtype.isnative and out.flags.c_contiguous
    np.testing.assert_array_equal(out, arr)


@settings(max_examples=150)
@given(
    encoding=st.one_of(st.sampled_from(_ENC), st.text(max_size=8)),
    height=st.integers(0, 2**32 - 1),
    width=st.integers(0, 2**32 - 1),
    step=st.integers(0, 2**32 - 1),
    size=st.integers(0, 64),
    max_pixels=st.sampled_from([0, 16, 4096 * 4096]),
)
def test_huge_or_inconsistent_headers_are_refused_before_any_allocation(
    encoding: str, height: int, width: int, step: int, size: int, max_pixels: int
) -> None:
    """Declared sizes up to 4 G x 4 G with at most 64 bytes of data: the header check refuses
    them (the decoder allocates only after it), and agrees with the decoder."""
    msg = Image(height=height, width=width, encoding=encoding, step=step, data=bytes(size))
    try:
        check_image(msg, max_pixels=max_pixels)
    except ValueError as exc:
        assert str(exc)
        if max_pixels == 0:
            with pytest.raises(ValueError):
                image_to_array(msg)
        return
    assert height * step <= size
    assert max_pixels == 0 or height * width <= max_pixels
    assert image_to_array(msg).shape[:2] == (height, width)


def test_check_image_limits_and_encodings() -> None:
    msg = rgb_to_image(_rgb(64, 64))
    check_image(msg, COLOUR_ENCODINGS, max_pixels=64 * 64)
    with pytest.raises(LimitExceeded, match="64x64 = 4096 pixels > max_image_pixels=4095"):
        check_image(msg, COLOUR_ENCODINGS, max_pixels=4095)
    with pytest.raises(ValueError, match="unsupported image encoding 'rgb8' here"):
        check_image(msg, DEPTH_ENCODINGS)
