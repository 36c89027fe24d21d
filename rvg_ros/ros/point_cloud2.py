"""rvg_ros.core.types.PointCloud <-> sensor_msgs/PointCloud2 with numpy structured arrays.

Layout written: x, y, z, rgb, confidence, all FLOAT32, 20 bytes per point, one row
(height = 1), little-endian. ``rgb`` is packed the way PCL does it (0x00RRGGBB in a uint32,
its bits stored in a float32 field) so RViz's "RGB8" colour transformer and
``pcl::fromROSMsg`` both understand it. The alpha byte is 0 rather than PCL's 255 on purpose:
0xFF?????? read as a float is a NaN, and consumers that drop points with any non-finite field
would then drop every point.

The reader accepts any PointCloud2 with float x, y, z (FLOAT32 or FLOAT64) and optional
rgb / rgba / confidence fields, honouring point_step, row_step, height and is_bigendian.
"""

from __future__ import annotations

import array

import numpy as np
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header

from rvg_ros.core.types import PointCloud

POINT_STEP = 20

# PointField datatype -> numpy dtype (sensor_msgs/PointField constants).
_FIELD_DTYPES: dict[int, np.dtype] = {
    PointField.INT8: np.dtype(np.int8),
    PointField.UINT8: np.dtype(np.uint8),
    PointField.INT16: np.dtype(np.int16),
    PointField.UINT16: np.dtype(np.uint16),
    PointField.INT32: np.dtype(np.int32),
    PointField.UINT32: np.dtype(np.uint32),
    PointField.FLOAT32: np.dtype(np.float32),
    PointField.FLOAT64: np.dtype(np.float64),
}

_OUT_DTYPE = np.dtype(
    {
        "names": ["x", "y", "z", "rgb", "confidence"],
        "formats": ["<f4", "<f4", "<f4", "<u4", "<f4"],
        "offsets": [0, 4, 8, 12, 16],
        "itemsize": POINT_STEP,
    }
)


def pack_rgb(colors: np.ndarray) -> np.ndarray:
    """``(N, 3)`` float colours in 0..1 -> ``(N,)`` uint32 0x00RRGGBB (non-finite -> 0)."""
    c = np.nan_to_num(np.asarray(colors, dtype=np.float64), nan=0.0, posinf=1.0, neginf=0.0)
    c8 = np.rint(np.clip(c, 0.0, 1.0) * 255.0).astype(np.uint32)
    return (c8[:, 0] << 16) | (c8[:, 1] << 8) | c8[:, 2]


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    """``(N,)`` uint32 0x??RRGGBB -> ``(N, 3)`` float32 colours in 0..1."""
    p = np.asarray(packed, dtype=np.uint32)
    c8 = np.stack([(p >> 16) & 0xFF, (p >> 8) & 0xFF, p & 0xFF], axis=1)
    return (c8.astype(np.float32) / np.float32(255.0)).astype(np.float32)


def _check_cloud(cloud: PointCloud) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    points = np.asarray(cloud.points, dtype=np.float64).reshape(-1, 3)
    n = len(points)
    colors = np.asarray(cloud.colors, dtype=np.float64)
    if colors.size == 0 and n:
        colors = np.ones((n, 3))  # a cloud without colour is drawn white
    colors = colors.reshape(-1, 3)
    confidence = np.asarray(cloud.confidence, dtype=np.float64).reshape(-1)
    if confidence.size == 0 and n:
        confidence = np.ones(n)
    if len(colors) != n or len(confidence) != n:
        raise ValueError(
            f"point cloud arrays disagree: {n} points, {len(colors)} colours, "
            f"{len(confidence)} confidences"
        )
    return points, colors, confidence


def cloud_to_point_cloud2(
    cloud: PointCloud, header: Header | None = None, drop_non_finite: bool = True
) -> PointCloud2:
    """Pack ``cloud`` into a PointCloud2 (x, y, z, rgb, confidence; 20 bytes per point).

    Points with a non-finite coordinate are dropped by default, so ``is_dense`` is true and
    planners need no NaN checks; with ``drop_non_finite=False`` they are kept and ``is_dense``
    says whether any is present. An empty cloud gives a valid message with width 0.
    """
    points, colors, confidence = _check_cloud(cloud)
    finite = np.all(np.isfinite(points), axis=1)
    if drop_non_finite and not finite.all():
        points, colors, confidence = points[finite], colors[finite], confidence[finite]
        finite = finite[finite]
    n = len(points)
    packed = np.zeros(n, dtype=_OUT_DTYPE)
    packed["x"], packed["y"], packed["z"] = points[:, 0], points[:, 1], points[:, 2]
    packed["rgb"] = pack_rgb(colors)
    packed["confidence"] = np.nan_to_num(confidence, nan=0.0, posinf=1.0, neginf=0.0)

    msg = PointCloud2()
    if header is not None:
        msg.header = header
    msg.height = 1
    msg.width = n
    msg.fields = [
        PointField(name="x", offset=0, datatype=PointField.FLOAT32, count=1),
        PointField(name="y", offset=4, datatype=PointField.FLOAT32, count=1),
        PointField(name="z", offset=8, datatype=PointField.FLOAT32, count=1),
        PointField(name="rgb", offset=12, datatype=PointField.FLOAT32, count=1),
        PointField(name="confidence", offset=16, datatype=PointField.FLOAT32, count=1),
    ]
    msg.is_bigendian = False
    msg.point_step = POINT_STEP
    msg.row_step = POINT_STEP * n
    # array.array('B', bytes) is the fast path of the generated setter (see image.py).
    msg.data = array.array("B", packed.tobytes())
    msg.is_dense = bool(finite.all())
    return msg


def point_cloud2_to_array(
    msg: PointCloud2, field_names: tuple[str, ...] | None = None
) -> np.ndarray:
    """A ``(height * width,)`` structured array (native byte order) of the named fields.

    ``field_names=None`` reads every field with count 1. Raises ValueError on a malformed
    message: unknown datatype, a field outside point_step, row_step < width * point_step, or
    data shorter than height * row_step.
    """
    height, width = int(msg.height), int(msg.width)
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    fields = {f.name: f for f in msg.fields}
    names = [f.name for f in msg.fields if f.count == 1] if field_names is None else field_names
    missing = [n for n in names if n not in fields]
    if missing:
        have = ", ".join(fields) or "none"
        raise ValueError(f"point cloud has no field {', '.join(missing)} (fields: {have})")
    order = ">" if msg.is_bigendian else "<"
    formats, offsets = [], []
    for name in names:
        f = fields[name]
        dtype = _FIELD_DTYPES.get(int(f.datatype))
        if dtype is None:
            raise ValueError(f"point cloud field {name!r} has unknown datatype {f.datatype}")
        if int(f.count) != 1:
            raise ValueError(f"point cloud field {name!r} has count {f.count}, expected 1")
        if int(f.offset) + dtype.itemsize > point_step:
            raise ValueError(
                f"point cloud field {name!r} (offset {f.offset}, {dtype.itemsize} bytes) does "
                f"not fit in point_step {point_step}"
            )
        formats.append(dtype.newbyteorder(order) if dtype.itemsize > 1 else dtype)
        offsets.append(int(f.offset))
    if height == 0 or width == 0:
        empty = np.dtype({"names": list(names), "formats": [f.newbyteorder("=") for f in formats]})
        return np.zeros(0, dtype=empty)
    if point_step <= 0:
        raise ValueError(f"point cloud point_step must be positive, got {point_step}")
    if row_step < width * point_step:
        raise ValueError(
            f"point cloud row_step {row_step} is smaller than width * point_step "
            f"({width} * {point_step} = {width * point_step})"
        )
    try:
        buf = np.frombuffer(memoryview(msg.data), dtype=np.uint8)
    except TypeError:
        buf = np.asarray(msg.data, dtype=np.uint8).reshape(-1)
    needed = height * row_step
    if buf.size < needed:
        raise ValueError(
            f"point cloud data has {buf.size} bytes but height * row_step is "
            f"{height} * {row_step} = {needed}"
        )
    struct = np.dtype(
        {"names": list(names), "formats": formats, "offsets": offsets, "itemsize": point_step}
    )
    # Strided view over the rows (padding after each row is skipped), then one copy into a
    # packed, native-endian array that no longer refers to the message buffer.
    view = np.ndarray(
        shape=(height, width), dtype=struct, buffer=buf, strides=(row_step, point_step)
    )
    native = np.dtype({"names": list(names), "formats": [f.newbyteorder("=") for f in formats]})
    out = np.empty((height, width), dtype=native)
    for name in names:
        out[name] = view[name]
    return out.reshape(-1)


def point_cloud2_to_cloud(msg: PointCloud2, skip_non_finite: bool = False) -> PointCloud:
    """Read x, y, z and, when present, rgb (or rgba) and confidence back into a PointCloud.

    Missing colour reads as white (1, 1, 1) and missing confidence as 1.0.
    ``skip_non_finite`` drops points with a NaN/inf coordinate.
    """
    fields = {f.name: f for f in msg.fields}
    for axis in ("x", "y", "z"):
        f = fields.get(axis)
        if f is None:
            raise ValueError(f"point cloud has no {axis!r} field (fields: {', '.join(fields)})")
        if int(f.datatype) not in (PointField.FLOAT32, PointField.FLOAT64):
            raise ValueError(f"point cloud field {axis!r} must be FLOAT32 or FLOAT64")
    names = ["x", "y", "z"]
    colour_name = "rgb" if "rgb" in fields else ("rgba" if "rgba" in fields else None)
    if colour_name is not None:
        if _FIELD_DTYPES.get(int(fields[colour_name].datatype), np.dtype(np.int8)).itemsize != 4:
            raise ValueError(f"point cloud field {colour_name!r} must be 4 bytes (packed colour)")
        names.append(colour_name)
    if "confidence" in fields:
        names.append("confidence")
    arr = point_cloud2_to_array(msg, tuple(names))
    points = np.stack([arr["x"], arr["y"], arr["z"]], axis=1).astype(np.float64).reshape(-1, 3)
    n = len(points)
    if colour_name is not None:
        # Reinterpret the 4 bytes as uint32 whatever datatype they are declared as (PCL uses
        # FLOAT32 for rgb, others UINT32): only the bit pattern matters.
        raw = np.ascontiguousarray(arr[colour_name])
        colors = unpack_rgb(raw.view(np.uint32))
    else:
        colors = np.ones((n, 3), dtype=np.float32)
    if "confidence" in names:
        confidence = arr["confidence"].astype(np.float32)
    else:
        confidence = np.ones(n, dtype=np.float32)
    if skip_non_finite:
        keep = np.all(np.isfinite(points), axis=1)
        points, colors, confidence = points[keep], colors[keep], confidence[keep]
    return PointCloud(points=points, colors=colors, confidence=confidence)
