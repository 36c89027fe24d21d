"""PointCloud <-> sensor_msgs/PointCloud2 (x, y, z, rgb, confidence)."""

from __future__ import annotations

import array
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header

from rvg_ros.core.types import PointCloud
from rvg_ros.ros.point_cloud2 import (
    POINT_STEP,
    cloud_to_point_cloud2,
    pack_rgb,
    point_cloud2_to_array,
    point_cloud2_to_cloud,
    unpack_rgb,
)

RNG = np.random.default_rng(1)


def _cloud(n: int = 50) -> PointCloud:
    colors = RNG.integers(0, 256, size=(n, 3)).astype(np.float32) / 255.0
    return PointCloud(
        points=RNG.normal(size=(n, 3)),
        colors=colors,
        confidence=RNG.random(n).astype(np.float32),
    )


def test_layout_matches_the_contract() -> None:
    msg = cloud_to_point_cloud2(_cloud(3), Header(frame_id="world"))
    assert msg.header.frame_id == "world"
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ("x", 0, PointField.FLOAT32, 1),
        ("y", 4, PointField.FLOAT32, 1),
        ("z", 8, PointField.FLOAT32, 1),
        ("rgb", 12, PointField.FLOAT32, 1),
        ("confidence", 16, PointField.FLOAT32, 1),
    ]
    assert msg.point_step == POINT_STEP == 20
    assert (msg.height, msg.width, msg.row_step) == (1, 3, 60)
    assert len(msg.data) == 60 and msg.is_dense and not msg.is_bigendian


def test_round_trip() -> None:
    cloud = _cloud()
    back = point_cloud2_to_cloud(cloud_to_point_cloud2(cloud))
    np.testing.assert_allclose(back.points, cloud.points, rtol=1e-6, atol=1e-6)  # float32
    np.testing.assert_allclose(back.colors, cloud.colors, atol=1e-6)  # 8-bit exact
    np.testing.assert_allclose(back.confidence, cloud.confidence)
    assert back.points.dtype == np.float64 and back.colors.dtype == np.float32


def test_rgb_is_packed_like_pcl() -> None:
    cloud = PointCloud(
        points=np.zeros((1, 3)),
        colors=np.array([[1.0, 0.5, 0.0]]),
        confidence=np.ones(1),
    )
    data = bytes(cloud_to_point_cloud2(cloud).data)
    (packed,) = struct.unpack_from("<I", data, 12)
    assert packed == 0x00FF8000  # 0x00RRGGBB; bytes in memory b, g, r, a as PCL's union
    assert data[12:16] == bytes([0x00, 0x80, 0xFF, 0x00])
    (as_float,) = struct.unpack_from("<f", data, 12)
    assert np.isfinite(as_float)  # alpha 0 keeps it a finite float (see module docstring)
    np.testing.assert_allclose(
        unpack_rgb(pack_rgb(np.array([[1.0, 0.5, 0.0]]))), [[1, 128 / 255, 0]], rtol=1e-6
    )


def _bare_xyz() -> PointCloud2:
    """A default (0x0) cloud with only x, y, z fields."""
    fields = [
        PointField(name=a, offset=4 * i, datatype=PointField.FLOAT32, count=1)
        for i, a in enumerate("xyz")
    ]
    return PointCloud2(fields=fields, point_step=12)


def test_empty_cloud() -> None:
    empty = PointCloud(np.zeros((0, 3)), np.zeros((0, 3), np.float32), np.zeros(0, np.float32))
    msg = cloud_to_point_cloud2(empty)
    assert (msg.width, msg.height, msg.row_step, len(msg.data)) == (0, 1, 0, 0)
    assert msg.is_dense
    back = point_cloud2_to_cloud(msg)
    assert back.points.shape == (0, 3) and back.colors.shape == (0, 3)
    assert back.confidence.shape == (0,)
    assert point_cloud2_to_cloud(_bare_xyz()).points.shape == (0, 3)


def test_non_finite_points() -> None:
    cloud = _cloud(4)
    cloud.points[1, 2] = np.nan
    cloud.points[3, 0] = np.inf
    cloud.colors[0] = np.nan  # garbage colour / confidence are sanitised, not propagated
    cloud.confidence[2] = np.nan
    dropped = cloud_to_point_cloud2(cloud)
    assert dropped.width == 2 and dropped.is_dense
    kept = cloud_to_point_cloud2(cloud, drop_non_finite=False)
    assert kept.width == 4 and not kept.is_dense
    back = point_cloud2_to_cloud(kept)
    assert np.isnan(back.points[1, 2]) and np.isinf(back.points[3, 0])
    assert np.all(np.isfinite(back.colors)) and np.all(np.isfinite(back.confidence))
    assert len(point_cloud2_to_cloud(kept, skip_non_finite=True).points) == 2


def test_missing_colour_and_confidence_are_filled() -> None:
    cloud = PointCloud(RNG.normal(size=(5, 3)), np.zeros((0, 3)), np.zeros(0))
    back = point_cloud2_to_cloud(cloud_to_point_cloud2(cloud))
    np.testing.assert_array_equal(back.colors, np.ones((5, 3)))
    np.testing.assert_array_equal(back.confidence, np.ones(5))
    with pytest.raises(ValueError, match="disagree"):
        cloud_to_point_cloud2(PointCloud(np.zeros((3, 3)), np.zeros((2, 3)), np.zeros(3)))


def _foreign_cloud(points: np.ndarray, bigendian: bool, row_pad: int, height: int) -> PointCloud2:
    """An XYZRGB cloud as another driver might publish it: float64 xyz, uint32 rgb at an odd
    offset, 4 padding bytes per point, padded rows, no confidence."""
    order = ">" if bigendian else "<"
    dtype = np.dtype(
        {
            "names": ["x", "y", "z", "rgba"],
            "formats": [order + "f8", order + "f8", order + "f8", order + "u4"],
            "offsets": [0, 8, 16, 28],
            "itemsize": 36,
        }
    )
    n = len(points)
    width = n // height
    arr = np.zeros(n, dtype=dtype)
    arr["x"], arr["y"], arr["z"] = points.T
    arr["rgba"] = 0xFF102030
    rows = arr.tobytes()
    row_bytes = width * 36
    data = b"".join(
        rows[r * row_bytes : (r + 1) * row_bytes] + b"\xee" * row_pad for r in range(height)
    )
    return PointCloud2(
        height=height,
        width=width,
        fields=[
            PointField(name="x", offset=0, datatype=PointField.FLOAT64, count=1),
            PointField(name="y", offset=8, datatype=PointField.FLOAT64, count=1),
            PointField(name="z", offset=16, datatype=PointField.FLOAT64, count=1),
            PointField(name="rgba", offset=28, datatype=PointField.UINT32, count=1),
        ],
        is_bigendian=bigendian,
        point_step=36,
        row_step=row_bytes + row_pad,
        data=array.array("B", data),
    )


@pytest.mark.parametrize("bigendian", [False, True])
def test_reads_other_layouts(bigendian: bool) -> None:
    points = RNG.normal(size=(12, 3))
    msg = _foreign_cloud(points, bigendian, row_pad=3, height=3)
    back = point_cloud2_to_cloud(msg)
    np.testing.assert_array_equal(back.points, points)
    np.testing.assert_allclose(back.colors, np.tile([0x10, 0x20, 0x30], (12, 1)) / 255.0)
    np.testing.assert_array_equal(back.confidence, np.ones(12))
    arr = point_cloud2_to_array(msg)
    assert arr.dtype.names == ("x", "y", "z", "rgba") and arr["x"].dtype.isnative


def test_malformed_clouds_rejected() -> None:
    good = cloud_to_point_cloud2(_cloud(4))

    short = cloud_to_point_cloud2(_cloud(4))
    del short.data[-1]
    with pytest.raises(ValueError, match="row_step"):
        point_cloud2_to_cloud(short)

    narrow = cloud_to_point_cloud2(_cloud(4))
    narrow.row_step = 10
    with pytest.raises(ValueError, match="row_step 10 is smaller"):
        point_cloud2_to_cloud(narrow)

    no_z = cloud_to_point_cloud2(_cloud(4))
    no_z.fields = [f for f in good.fields if f.name != "z"]
    with pytest.raises(ValueError, match="no 'z' field"):
        point_cloud2_to_cloud(no_z)

    outside = cloud_to_point_cloud2(_cloud(4))
    outside.point_step = 16  # confidence at offset 16 no longer fits
    outside.row_step = 64
    with pytest.raises(ValueError, match="does not fit"):
        point_cloud2_to_cloud(outside)

    bad_type = cloud_to_point_cloud2(_cloud(4))
    bad_type.fields[4].datatype = 42
    with pytest.raises(ValueError, match="unknown datatype"):
        point_cloud2_to_cloud(bad_type)

    int_xyz = cloud_to_point_cloud2(_cloud(4))
    int_xyz.fields[0].datatype = PointField.INT32
    with pytest.raises(ValueError, match="FLOAT32 or FLOAT64"):
        point_cloud2_to_cloud(int_xyz)


@settings(max_examples=60, deadline=None)
@given(
    points=st.lists(
        st.tuples(*[st.floats(allow_nan=True, allow_infinity=True, width=32)] * 3), max_size=20
    ),
    drop=st.booleans(),
)
def test_any_cloud_packs_and_reads_back(points: list, drop: bool) -> None:
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    n = len(pts)
    cloud = PointCloud(pts, np.full((n, 3), 0.5), np.full(n, 0.25))
    msg = cloud_to_point_cloud2(cloud, drop_non_finite=drop)
    back = point_cloud2_to_cloud(msg)
    finite = np.all(np.isfinite(pts), axis=1)
    expected = pts[finite] if drop else pts
    np.testing.assert_array_equal(back.points, expected)
    assert msg.is_dense == bool(np.all(np.isfinite(expected)))


_FIELD_TYPES = st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 42])


@settings(max_examples=150)
@given(
    height=st.integers(0, 2**32 - 1),
    width=st.integers(0, 2**32 - 1),
    small=st.booleans(),
    point_step=st.integers(0, 40),
    row_step=st.integers(0, 2**32 - 1),
    fields=st.lists(
        st.tuples(
            st.sampled_from(["x", "y", "z", "rgb", "rgba", "confidence", "intensity"]),
            st.integers(0, 40),
            _FIELD_TYPES,
            st.integers(0, 3),
        ),
        max_size=7,
    ),
    size=st.integers(0, 400),
    bigendian=st.booleans(),
)
def test_hostile_point_cloud2_reads_or_is_refused(
    height: int,
    width: int,
    small: bool,
    point_step: int,
    row_step: int,
    fields: list,
    size: int,
    bigendian: bool,
) -> None:
    """Any header (sizes up to 4 G, fields anywhere, unknown types, short data): a cloud of
    height * width points or a ValueError, and never an allocation the data can't back."""
    if small:  # half the examples in a range where decoding can succeed
        height, width, row_step = height % 4, width % 6, row_step % 200
    msg = PointCloud2(
        height=height,
        width=width,
        point_step=point_step,
        row_step=row_step,
        is_bigendian=bigendian,
        fields=[PointField(name=n, offset=o, datatype=t, count=c) for n, o, t, c in fields],
        data=array.array("B", bytes(range(256)) * 2)[:size],
    )
    try:
        cloud = point_cloud2_to_cloud(msg)
    except ValueError as exc:
        assert str(exc)
        return
    assert len(cloud.points) == len(cloud.colors) == len(cloud.confidence) == height * width
    assert height * width * point_step <= max(size, 0) or height * width == 0
