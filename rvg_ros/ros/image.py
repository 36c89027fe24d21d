"""sensor_msgs/Image <-> numpy, without cv_bridge.

The PyPI ``cv-bridge`` is a ROS 1 build that breaks with numpy 2 / OpenCV 5 and silently decodes
16UC1 as 8-bit (see NOTES.md), so the conversions the node needs are written here with numpy.

Decoding honours ``step`` (rows may be padded) and ``is_bigendian`` and always returns a new,
C-contiguous, native-endian array that owns its memory: the message buffer may be reused by the
middleware after the callback returns, and the core keeps frames for a long time.

Every malformed message is rejected with a ``ValueError`` whose text says what is wrong; nothing
here should ever crash a subscription callback with anything else.

Core conventions (rvg_ros.core.types): colour HxWx3 uint8 RGB, depth HxW float32 metres with
0 = no measurement, mask HxW bool.
"""

from __future__ import annotations

import array
from dataclasses import dataclass

import numpy as np
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from rvg_ros.core.limits import check_image_size


@dataclass(frozen=True)
class _Encoding:
    dtype: np.dtype
    channels: int

    @property
    def bytes_per_pixel(self) -> int:
        return self.dtype.itemsize * self.channels


# The encodings a camera driver is likely to publish for colour, depth and masks
# (sensor_msgs/image_encodings.hpp names). '8UC1' is accepted as a synonym of mono8 because
# segmentation nodes often publish masks with it.
ENCODINGS: dict[str, _Encoding] = {
    "rgb8": _Encoding(np.dtype(np.uint8), 3),
    "bgr8": _Encoding(np.dtype(np.uint8), 3),
    "rgba8": _Encoding(np.dtype(np.uint8), 4),
    "bgra8": _Encoding(np.dtype(np.uint8), 4),
    "mono8": _Encoding(np.dtype(np.uint8), 1),
    "8UC1": _Encoding(np.dtype(np.uint8), 1),
    "mono16": _Encoding(np.dtype(np.uint16), 1),
    "16UC1": _Encoding(np.dtype(np.uint16), 1),
    "32FC1": _Encoding(np.dtype(np.float32), 1),
}

COLOUR_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16")
DEPTH_ENCODINGS = ("16UC1", "mono16", "32FC1")
MASK_ENCODINGS = ("mono8", "8UC1", "mono16", "16UC1")

# 16UC1 depth is integer millimetres (REP 118); the largest representable depth is 65.535 m.
_MM_PER_M = 1000.0
_MAX_DEPTH_16UC1_MM = float(np.iinfo(np.uint16).max)


def _encoding(name: str) -> _Encoding:
    spec = ENCODINGS.get(name)
    if spec is None:
        raise ValueError(f"unsupported image encoding {name!r} (supported: {', '.join(ENCODINGS)})")
    return spec


def _data_as_bytes(data: object) -> np.ndarray:
    """A zero-copy uint8 view of a message's ``data`` (array.array, bytes, memoryview, list)."""
    try:
        return np.frombuffer(memoryview(data), dtype=np.uint8)  # type: ignore[arg-type]
    except TypeError:
        # Only hand-built messages with _check_fields disabled carry a plain list here.
        return np.asarray(data, dtype=np.uint8).reshape(-1)


def check_image(
    msg: Image, encodings: tuple[str, ...] | None = None, max_pixels: int = 0
) -> _Encoding:
    """Check an Image's header against its data without decoding it (cheap: run it on every
    message as it arrives). Raises ValueError saying what is wrong; ``max_pixels`` > 0 also
    refuses images larger than that (LimitExceeded, a ValueError)."""
    if encodings is not None and msg.encoding not in encodings:
        raise ValueError(
            f"unsupported image encoding {msg.encoding!r} here (expected one of "
            f"{', '.join(encodings)})"
        )
    spec = _encoding(msg.encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ValueError(f"image has zero size ({width}x{height}, encoding {msg.encoding})")
    check_image_size(width, height, max_pixels)
    row_bytes = width * spec.bytes_per_pixel
    if step < row_bytes:
        raise ValueError(
            f"image step {step} is smaller than width * bytes per pixel "
            f"({width} * {spec.bytes_per_pixel} = {row_bytes}) for {msg.encoding}"
        )
    size = _data_as_bytes(msg.data).size
    needed = height * step
    if size < needed:
        raise ValueError(
            f"image data has {size} bytes but height * step is {height} * {step} = {needed}"
        )
    return spec


def image_to_array(msg: Image) -> np.ndarray:
    """Decode any supported encoding to a native-endian ``(H, W)`` or ``(H, W, C)`` array.

    Channel order is the message's own (a bgr8 image stays BGR); use ``image_to_rgb`` for colour.
    Bytes past ``height * step`` are ignored, as ROS tools do; fewer are an error.
    """
    spec = check_image(msg)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    buf = _data_as_bytes(msg.data)
    dtype = spec.dtype
    if dtype.itemsize > 1:
        dtype = dtype.newbyteorder(">" if msg.is_bigendian else "<")
    # A strided view straight onto the buffer: padding bytes at the end of each row are skipped
    # by the row stride. It may be unaligned (odd step for 16-bit data); astype copes with that.
    view = np.ndarray(
        shape=(height, width, spec.channels),
        dtype=dtype,
        buffer=buf,
        offset=0,
        strides=(step, spec.bytes_per_pixel, dtype.itemsize),
    )
    out = view.astype(dtype.newbyteorder("="), order="C", copy=True)
    return out.reshape(height, width) if spec.channels == 1 else out


def image_to_rgb(msg: Image) -> np.ndarray:
    """Colour image -> ``(H, W, 3) uint8`` RGB. Alpha is dropped; mono is replicated to grey."""
    if msg.encoding not in COLOUR_ENCODINGS:
        raise ValueError(
            f"encoding {msg.encoding!r} is not a colour encoding "
            f"(expected one of {', '.join(COLOUR_ENCODINGS)})"
        )
    arr = image_to_array(msg)
    enc = msg.encoding
    if enc == "rgb8":
        return arr
    if enc == "rgba8":
        return np.ascontiguousarray(arr[..., :3])
    if enc in ("bgr8", "bgra8"):
        return np.ascontiguousarray(arr[..., 2::-1])
    if enc == "mono16":
        # Exact 16 -> 8 bit mapping: 65535 / 257 = 255.
        arr = np.rint(arr.astype(np.float32) / 257.0).astype(np.uint8)
    return np.repeat(arr[..., None], 3, axis=2)


def image_to_depth(msg: Image) -> np.ndarray:
    """Depth image -> ``(H, W) float32`` metres, 0 where there is no valid measurement.

    16UC1 (and mono16, which some drivers use for depth) is millimetres; 32FC1 is metres, and
    NaN, +-inf and negative values (REP 118's "no return" / "too near" / "too far") become 0.
    """
    if msg.encoding not in DEPTH_ENCODINGS:
        raise ValueError(
            f"encoding {msg.encoding!r} is not a depth encoding "
            f"(expected one of {', '.join(DEPTH_ENCODINGS)})"
        )
    arr = image_to_array(msg)
    if arr.dtype == np.uint16:
        return (arr.astype(np.float32) / np.float32(_MM_PER_M)).astype(np.float32)
    depth = arr.astype(np.float32, copy=False)
    depth[~np.isfinite(depth) | (depth < 0.0)] = 0.0
    return depth


def image_to_mask(msg: Image) -> np.ndarray:
    """Single-channel mask image -> ``(H, W) bool``: any non-zero pixel is object."""
    if msg.encoding not in MASK_ENCODINGS:
        raise ValueError(
            f"encoding {msg.encoding!r} is not a mask encoding "
            f"(expected a single-channel one of {', '.join(MASK_ENCODINGS)})"
        )
    return image_to_array(msg) != 0


def array_to_image(arr: np.ndarray, encoding: str, header: Header | None = None) -> Image:
    """Pack an array already in ``encoding``'s layout and dtype into a tightly packed Image.

    Always little-endian (``is_bigendian = False``) so the output does not depend on the host.
    """
    spec = _encoding(encoding)
    arr = np.asarray(arr)
    expected_ndim = 2 if spec.channels == 1 else 3
    if arr.ndim == 3 and spec.channels == 1 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != expected_ndim or (spec.channels > 1 and arr.shape[2] != spec.channels):
        raise ValueError(
            f"{encoding} needs an array of shape (H, W"
            f"{'' if spec.channels == 1 else f', {spec.channels}'}), got {arr.shape}"
        )
    if arr.dtype != spec.dtype:
        raise ValueError(f"{encoding} needs dtype {spec.dtype}, got {arr.dtype}")
    height, width = arr.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"cannot encode an image of zero size ({width}x{height})")
    packed = np.ascontiguousarray(arr, dtype=spec.dtype.newbyteorder("<"))
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height = height
    msg.width = width
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = width * spec.bytes_per_pixel
    # array.array('B', bytes) takes the fast frombytes path; assigning bytes or a list would make
    # the generated setter check every byte in Python.
    msg.data = array.array("B", packed.tobytes())
    return msg


def rgb_to_image(rgb: np.ndarray, encoding: str = "rgb8", header: Header | None = None) -> Image:
    """``(H, W, 3) uint8`` RGB -> Image in rgb8, bgr8, rgba8, bgra8 (opaque), mono8 or mono16."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"colour must be HxWx3 uint8 RGB, got {rgb.shape} {rgb.dtype}")
    if encoding == "rgb8":
        out = rgb
    elif encoding == "bgr8":
        out = rgb[..., ::-1]
    elif encoding in ("rgba8", "bgra8"):
        alpha = np.full(rgb.shape[:2] + (1,), 255, dtype=np.uint8)
        out = np.concatenate([rgb if encoding == "rgba8" else rgb[..., ::-1], alpha], axis=2)
    elif encoding in ("mono8", "mono16"):
        # ITU-R BT.601 luma, the weights OpenCV's cvtColor(RGB2GRAY) uses.
        luma = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        grey8 = np.clip(np.rint(luma), 0, 255).astype(np.uint8)
        out = grey8 if encoding == "mono8" else grey8.astype(np.uint16) * np.uint16(257)
    else:
        raise ValueError(
            f"cannot encode colour as {encoding!r} (expected one of {', '.join(COLOUR_ENCODINGS)})"
        )
    return array_to_image(out, encoding, header)


def depth_to_image(
    depth_m: np.ndarray,
    encoding: str = "32FC1",
    header: Header | None = None,
    invalid_as_nan: bool = False,
) -> Image:
    """``(H, W)`` depth in metres (0 = invalid) -> 32FC1 metres or 16UC1 millimetres.

    Non-finite and non-positive values are written as 0 ("no measurement"); so are depths beyond
    65.535 m in 16UC1, because clipping them would invent a measurement. ``invalid_as_nan`` writes
    invalid 32FC1 pixels as NaN instead, as REP 118 recommends for float depth; our own decoder
    reads both back as 0.
    """
    depth = np.asarray(depth_m)
    if depth.ndim != 2:
        raise ValueError(f"depth must be HxW, got shape {depth.shape}")
    if not (np.issubdtype(depth.dtype, np.floating) or np.issubdtype(depth.dtype, np.integer)):
        raise ValueError(f"depth must be a real-valued array in metres, got {depth.dtype}")
    depth = depth.astype(np.float64)
    invalid = ~np.isfinite(depth) | (depth <= 0.0)
    if encoding == "32FC1":
        out = depth.astype(np.float32)
        out[invalid] = np.nan if invalid_as_nan else 0.0
    elif encoding == "16UC1":
        mm = np.rint(np.where(invalid, 0.0, depth) * _MM_PER_M)
        # Compare in millimetres: float32 65.535 is a hair above 65.535 but still 65535 mm.
        mm[mm > _MAX_DEPTH_16UC1_MM] = 0.0
        out = mm.astype(np.uint16)
    else:
        raise ValueError(f"cannot encode depth as {encoding!r} (expected '32FC1' or '16UC1')")
    return array_to_image(out, encoding, header)


def mask_to_image(mask: np.ndarray, header: Header | None = None) -> Image:
    """``(H, W)`` bool mask -> mono8 with 255 for object and 0 elsewhere."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be HxW, got shape {mask.shape}")
    return array_to_image(np.where(mask.astype(bool), 255, 0).astype(np.uint8), "mono8", header)
