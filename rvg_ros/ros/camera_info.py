"""sensor_msgs/CameraInfo <-> rvg_ros.core.types.Intrinsics.

The core's Intrinsics is a pinhole camera with OpenCV distortion coefficients (k1, k2, p1, p2[,
k3, ...]), which is what ROS calls ``plumb_bob`` (5 coefficients) and ``rational_polynomial``
(8). Other models (``equidistant`` fisheye, ...) use the coefficients differently, so a camera
with such a model and non-zero coefficients is rejected rather than silently mis-modelled.
"""

from __future__ import annotations

import math

import numpy as np
from sensor_msgs.msg import CameraInfo
from std_msgs.msg import Header

from rvg_ros.core.types import Intrinsics

OPENCV_MODELS = ("plumb_bob", "rational_polynomial")


def camera_info_to_intrinsics(msg: CameraInfo, use_projection: bool = False) -> Intrinsics:
    """Intrinsics of the image that comes with ``msg``.

    ``use_projection=True`` takes fx, fy, cx, cy from P and no distortion: that is the camera of
    a *rectified* image (``image_rect*`` topics), whereas K and D describe the raw image.

    Binning and a region of interest (image_geometry's semantics: K refers to the full-resolution
    sensor, the published image is the ROI divided by the binning) are applied, so the result
    matches the published image size.
    """
    width, height = int(msg.width), int(msg.height)
    if width <= 0 or height <= 0:
        raise ValueError(f"camera info has zero image size ({width}x{height})")
    k = np.asarray(msg.k, dtype=np.float64).reshape(-1)
    p = np.asarray(msg.p, dtype=np.float64).reshape(-1)
    if use_projection:
        if p.size != 12:
            raise ValueError(f"camera info P must have 12 elements, got {p.size}")
        fx, fy, cx, cy = p[0], p[5], p[2], p[6]
        distortion: tuple[float, ...] = ()
    else:
        if k.size != 9:
            raise ValueError(f"camera info K must have 9 elements, got {k.size}")
        fx, fy, cx, cy = k[0], k[4], k[2], k[5]
        distortion = _distortion(msg)
    values = {"fx": fx, "fy": fy, "cx": cx, "cy": cy}
    bad = [name for name, v in values.items() if not math.isfinite(v)]
    if bad:
        raise ValueError(f"camera info has non-finite {', '.join(bad)}: {values}")
    if fx <= 0 or fy <= 0:
        # An all-zero K is what an uncalibrated driver publishes: say so, it is the common case.
        hint = " (the camera is probably uncalibrated)" if fx == 0 and fy == 0 else ""
        raise ValueError(f"camera info focal lengths must be positive, got fx={fx} fy={fy}{hint}")

    bin_x = max(int(msg.binning_x), 1)  # 0 and 1 both mean "no binning"
    bin_y = max(int(msg.binning_y), 1)
    roi = msg.roi
    x_off, y_off = int(roi.x_offset), int(roi.y_offset)
    # A ROI with zero width/height means "the full image" (sensor_msgs/RegionOfInterest).
    full_roi = int(roi.width) == 0 or int(roi.height) == 0
    roi_w = width if full_roi else int(roi.width)
    roi_h = height if full_roi else int(roi.height)
    if full_roi:
        x_off = y_off = 0
    out_w, out_h = roi_w // bin_x, roi_h // bin_y
    if out_w <= 0 or out_h <= 0:
        raise ValueError(
            f"camera info ROI {roi_w}x{roi_h} with binning {bin_x}x{bin_y} leaves no pixels"
        )
    intrinsics = Intrinsics(
        fx=float(fx) / bin_x,
        fy=float(fy) / bin_y,
        cx=(float(cx) - x_off) / bin_x,
        cy=(float(cy) - y_off) / bin_y,
        width=out_w,
        height=out_h,
        distortion=distortion,
    )
    intrinsics.validate()
    return intrinsics


def _distortion(msg: CameraInfo) -> tuple[float, ...]:
    d = tuple(float(v) for v in msg.d)
    if not all(math.isfinite(v) for v in d):
        raise ValueError(f"camera info distortion coefficients are not finite: {d}")
    if not any(d):
        return ()  # no (or all-zero) distortion: a plain pinhole, whatever the model says
    model = msg.distortion_model
    if model not in OPENCV_MODELS:
        raise ValueError(
            f"distortion model {model!r} is not supported (use a rectified image, or one of "
            f"{', '.join(OPENCV_MODELS)})"
        )
    return d


def intrinsics_to_camera_info(intrinsics: Intrinsics, header: Header | None = None) -> CameraInfo:
    """CameraInfo for an unrectified image with ``intrinsics`` (R = I, P = [K | 0])."""
    intrinsics.validate()
    d = [float(v) for v in intrinsics.distortion]
    if not all(math.isfinite(v) for v in d):
        raise ValueError(f"distortion coefficients are not finite: {d}")
    # plumb_bob is exactly 5 coefficients and rational_polynomial 8; shorter OpenCV vectors are
    # padded with zeros, which OpenCV treats identically.
    if len(d) <= 5:
        model, d = "plumb_bob", d + [0.0] * (5 - len(d))
    elif len(d) <= 8:
        model, d = "rational_polynomial", d + [0.0] * (8 - len(d))
    else:
        raise ValueError(
            f"{len(d)} distortion coefficients have no ROS distortion model (at most 8)"
        )
    fx, fy = float(intrinsics.fx), float(intrinsics.fy)
    cx, cy = float(intrinsics.cx), float(intrinsics.cy)
    msg = CameraInfo()
    if header is not None:
        msg.header = header
    msg.width = int(intrinsics.width)
    msg.height = int(intrinsics.height)
    msg.distortion_model = model
    msg.d = d
    msg.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg
