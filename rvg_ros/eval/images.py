"""Image consistency: the prediction rendered from held-out views against the ground truth.

Both meshes are rendered with the same renderer, cameras and black background. Colour is
compared with PSNR and SSIM over the whole image (as the paper does); depth with the mean
absolute error where both have surface, and silhouettes with their IoU.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from rvg_ros.core.render import MeshRenderer, RenderedView
from rvg_ros.core.types import Intrinsics, Mesh


def render_views(
    renderer: MeshRenderer, intrinsics: Intrinsics, poses: np.ndarray
) -> list[RenderedView]:
    return [renderer.render(intrinsics, pose) for pose in poses]


def image_metrics(
    prediction: Mesh, gt_views: list[RenderedView], intrinsics: Intrinsics, poses: np.ndarray
) -> dict[str, float]:
    """Means over the held-out views of psnr (dB), ssim, depth_mae (metres) and mask_iou."""
    if prediction.is_empty:
        return {"psnr": np.nan, "ssim": np.nan, "depth_mae": np.nan, "mask_iou": 0.0}
    renderer = MeshRenderer(prediction)
    psnr, ssim, depth, iou = [], [], [], []
    for gt, pose in zip(gt_views, poses, strict=True):
        pred = renderer.render(intrinsics, pose)
        with np.errstate(divide="ignore"):  # identical images: PSNR is +inf, not a warning
            psnr.append(peak_signal_noise_ratio(gt.rgb, pred.rgb, data_range=255))
        ssim.append(structural_similarity(gt.rgb, pred.rgb, channel_axis=2, data_range=255))
        both = gt.mask & pred.mask
        if both.any():
            depth.append(float(np.abs(gt.depth[both] - pred.depth[both]).mean()))
        union = gt.mask | pred.mask
        iou.append(float(both.sum() / union.sum()) if union.any() else 1.0)
    return {
        "psnr": float(np.mean(psnr)),
        "ssim": float(np.mean(ssim)),
        "depth_mae": float(np.mean(depth)) if depth else np.nan,
        "mask_iou": float(np.mean(iou)),
    }
