"""Rendering losses of one view: silhouette, depth and colour (1 - SSIM), each in [0, 1].

Every term is scale-free (independent of how much of the image the object fills and of the
cube's metric size), so a per-view threshold on their sum means the same thing for every view:
that is what rendering-aware velocity compensation uses to drop views that disagree with the
rest (a bad pose, a wrong mask).

- silhouette: L1 between rendered opacity and mask, over the soft union of the two,
  sum |p - m| / sum max(p, m). For binary masks this is exactly 1 - IoU.
- depth: L1 in cube units where the view measured depth on the object, each pixel's error
  divided by ``depth_scale`` and clamped at 1, so a pixel the render misses entirely (left to
  the silhouette term) costs at most 1 and gives no runaway gradient.
- colour: 1 - SSIM (Gaussian window, Wang et al. 2004) on the bounding box of the mask plus a
  window's margin, so that an empty background does not make every view look alike.
- photometric (``photo_consistency``, needs every view's rendering): 1 - SSIM between a view's
  image and each other view's image warped into it through the view's *rendered depth*, over
  the pixels both see. The colour term compares with the colour the field carries, which the
  fine stage does not learn (its colour is the nearest observed one); this term needs no
  colour in the field, only geometry, and is the only term that says where a surface lies
  along the ray when the views have no depth (multi-view stereo's photo-consistency).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from rvg_ros.core.types import Frame, TargetCube
from rvg_ros.rvg.render import Camera, Rendering, camera_in_cube, camera_rays


@dataclass(frozen=True)
class LossConfig:
    silhouette: float = 1.0  # weight of each term in the per-view total
    depth: float = 1.0
    colour: float = 1.0
    # Depth error (cube units) that counts as a full miss. At 0.2 (a fifth of the cube) a
    # generation a third of the object's size off still scores under RVC's 0.8 drop threshold
    # (a wrongly posed view scores over it through its silhouette), and errors up to that
    # size still have a gradient.
    depth_scale: float = 0.2
    ssim_window: int = 11
    ssim_sigma: float = 1.5
    # Weight of the cross-view photometric term; 0 = off (it needs colour and a mask in >= 2
    # views, and applies to views without depth). Its SSIM uses a smaller window: at RVC's
    # render size an object is ~40 pixels.
    photometric: float = 0.0
    photometric_window: int = 7
    # A pixel counts as seen by the other view when the warped point lies within this
    # (cube units) of the other view's own rendered depth there (a visibility test).
    photometric_visibility: float = 0.03
    # Pairs that share fewer pixels than this give no term (too little to compare).
    photometric_min_pixels: int = 32


@dataclass
class View:
    """What one input view says, at render resolution. Absent targets are None."""

    camera: Camera
    mask: torch.Tensor | None = None  # (H, W) float in [0, 1]
    depth: torch.Tensor | None = None  # (H, W) cube units, 0 = no measurement
    colour: torch.Tensor | None = None  # (3, H, W) in [0, 1], background outside the mask


@dataclass
class ViewLoss:
    silhouette: torch.Tensor  # scalars; 0 where the view lacks the target
    depth: torch.Tensor
    colour: torch.Tensor
    total: torch.Tensor


def view_from_frame(
    frame: Frame,
    cube: TargetCube,
    size: int,
    background: tuple[float, float, float] = (0.0, 0.0, 0.0),
    device: torch.device | str = "cpu",
    crop_margin: float | None = None,
) -> View:
    """A posed frame as render targets at ``size`` pixels on the longer side (never enlarged).

    Depth is kept on the object only (the render contains nothing else) and so needs the mask;
    colour is composited over the renderer's background, which also needs the mask. Without a
    mask only the depth inside the cube is used, and colour is not.

    ``crop_margin`` (a fraction of the mask's bounding box, per side): the view is first cut to
    the mask's bounding box plus that margin, so ``size`` pixels go to the object rather than
    to the background around it (the camera's principal point moves with the cut). Without a
    mask, or with an empty one, the whole image is used.
    """
    if frame.camera_to_world is None:
        raise ValueError("rendering losses need a posed frame")
    if crop_margin is not None and frame.mask is not None and frame.mask.any():
        frame = crop_to_mask(frame, crop_margin)
    k = frame.intrinsics
    scale = min(1.0, size / max(k.width, k.height))
    width, height = max(1, round(k.width * scale)), max(1, round(k.height * scale))
    camera = camera_in_cube(k, frame.camera_to_world, cube, width, height, device)

    def area(image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(H, W[, C]) -> (C, h, w): block means at the target size."""
        t = torch.as_tensor(image).to(device=device, dtype=torch.float32)
        t = t.permute(2, 0, 1) if t.dim() == 3 else t[None]
        return F.interpolate(t[None], size=(height, width), mode="area")[0]

    mask = area(frame.mask.astype(np.float32))[0] if frame.mask is not None else None
    depth = None
    if frame.depth is not None:
        d = torch.as_tensor(frame.depth, dtype=torch.float32, device=device) / cube.side
        if frame.mask is not None:
            on_object = torch.as_tensor(frame.mask, device=device) & (d > 0)
        else:
            full = camera_in_cube(k, frame.camera_to_world, cube, device=device)
            on_object = _inside_cube(d, full)
        # Mean depth of a target pixel's block, kept only where the whole block is measured
        # object: a block across an occluding edge would average two surfaces into neither.
        covered = area(on_object.float())[0]
        summed = area(d * on_object)[0]
        whole = covered > 0.999
        depth = torch.where(whole, summed / covered.clamp(min=1e-6), torch.zeros_like(summed))
    colour = None
    if mask is not None:
        bg = torch.tensor(background, dtype=torch.float32, device=device)[:, None, None]
        # Premultiplied by the full-resolution mask, so edge pixels blend like the renderer's.
        rgb = frame.rgb.astype(np.float32) / 255.0 * frame.mask[..., None]
        colour = area(rgb) + bg * (1.0 - mask)
    return View(camera=camera, mask=mask, depth=depth, colour=colour)


def crop_to_mask(frame: Frame, margin: float) -> Frame:
    """The frame cut to its mask's bounding box grown by ``margin`` of the box's longer side
    on each side (at least 4 pixels), within the image; intrinsics follow the cut."""
    assert frame.mask is not None
    rows = np.flatnonzero(frame.mask.any(axis=1))
    cols = np.flatnonzero(frame.mask.any(axis=0))
    grow = max(4, int(np.ceil(margin * max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1))))
    k = frame.intrinsics
    r0, r1 = max(0, int(rows[0]) - grow), min(k.height, int(rows[-1]) + 1 + grow)
    c0, c1 = max(0, int(cols[0]) - grow), min(k.width, int(cols[-1]) + 1 + grow)
    window = (slice(r0, r1), slice(c0, c1))
    return replace(
        frame,
        rgb=frame.rgb[window],
        depth=None if frame.depth is None else frame.depth[window],
        mask=frame.mask[window],
        intrinsics=replace(k, cx=k.cx - c0, cy=k.cy - r0, width=c1 - c0, height=r1 - r0),
    )


def _inside_cube(depth: torch.Tensor, camera: Camera) -> torch.Tensor:
    origins, dirs = camera_rays(camera, depth.device)
    points = origins + dirs * depth.reshape(-1, 1)
    inside = (points.abs() <= 0.5).all(dim=-1).view_as(depth)
    return inside & (depth > 0)


def gaussian_window(size: int, sigma: float, device: torch.device | str = "cpu") -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of two (C, H, W) images in [0, 1], Gaussian-weighted, over the valid region."""
    return ssim_map(a, b, window, sigma).mean()


def ssim_map(
    a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """SSIM of two (C, H, W) images per window position: (C, H - w + 1, W - w + 1).

    Hand-written: torch has no SSIM and the project adds no dependency for 15 lines. Constants
    and window as Wang et al. (K1 0.01, K2 0.03, 11x11, sigma 1.5); statistics without
    Bessel's correction (matches skimage with ``gaussian_weights=True``,
    ``use_sample_covariance=False``). Images smaller than the window use a window their size.
    """
    c = a.shape[0]
    window = min(window, a.shape[-1], a.shape[-2])
    w = gaussian_window(window, sigma, a.device).to(a.dtype).expand(c, 1, window, window)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x[None], w, groups=c)[0]

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )


def silhouette_loss(opacity: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    union = torch.maximum(opacity, mask).sum()
    return (opacity - mask).abs().sum() / union.clamp(min=1e-6)


def depth_loss(depth: torch.Tensor, target: torch.Tensor, scale: float) -> torch.Tensor:
    valid = target > 0
    if not bool(valid.any()):
        return depth.new_zeros(())
    return ((depth[valid] - target[valid]).abs() / scale).clamp(max=1.0).mean()


def colour_loss(
    colour: torch.Tensor, target: torch.Tensor, view: View, cfg: LossConfig
) -> torch.Tensor:
    if view.mask is not None and bool((view.mask > 0.5).any()):
        rows = torch.nonzero((view.mask > 0.5).any(dim=1)).flatten()
        cols = torch.nonzero((view.mask > 0.5).any(dim=0)).flatten()
        m = cfg.ssim_window // 2
        r0, r1 = max(int(rows[0]) - m, 0), int(rows[-1]) + m + 1
        c0, c1 = max(int(cols[0]) - m, 0), int(cols[-1]) + m + 1
        colour, target = colour[:, r0:r1, c0:c1], target[:, r0:r1, c0:c1]
    return 1.0 - ssim(colour, target, cfg.ssim_window, cfg.ssim_sigma)


def warp_into(
    depth: torch.Tensor, camera: Camera, other: Camera, other_image: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``other_image`` (C, h, w) seen through ``camera``'s pixels at z-depth ``depth`` (H, W):
    the warped image (C, H, W) and each pixel's z-depth in ``other`` (H, W). Differentiable
    in ``depth`` (bilinear sampling)."""
    origins, dirs = camera_rays(camera, depth.device, depth.dtype)
    points = origins + dirs * depth.reshape(-1, 1)  # cube frame
    c2c = other.camera_to_cube.to(device=depth.device, dtype=depth.dtype)
    local = (points - c2c[:3, 3]) @ c2c[:3, :3]  # into the other camera: R^T (p - t)
    z = local[:, 2]
    safe = torch.where(z.abs() < 1e-6, torch.full_like(z, 1e-6), z)
    u = other.fx * local[:, 0] / safe + other.cx
    v = other.fy * local[:, 1] / safe + other.cy
    # Pixel centres at integer coordinates: align_corners=True maps -1 / 1 to the outer centres.
    grid = torch.stack(
        [2.0 * u / max(other.width - 1, 1) - 1.0, 2.0 * v / max(other.height - 1, 1) - 1.0],
        dim=-1,
    ).view(1, camera.height, camera.width, 2)
    warped = F.grid_sample(
        other_image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=True
    )[0]
    return warped, z.view(camera.height, camera.width)


def photo_consistency(
    renderings: Sequence[Rendering], views: Sequence[View], config: LossConfig | None = None
) -> torch.Tensor:
    """Per-view photometric loss (V,): mean over the other views of 1 - SSIM between the view's
    colour and the other's colour warped into it through the rendered depth, over the pixels
    on the object in both (mask), rendered opaque here, and visible there (the warped point's
    depth agrees with the other view's rendered depth). 0 where a view shares too little, and
    for views with depth. The other views may have depth: their images are still compared.

    Written here: the warp is plain pinhole geometry and no library offers a differentiable
    warp through a rendered depth on torch tensors. The other view's depth and mask only
    select pixels (no gradient): the gradient moves the surface seen in *this* view.
    """
    cfg = config or LossConfig()
    losses = []
    zero = renderings[0].depth.new_zeros(())
    for i, (rendering, view) in enumerate(zip(renderings, views, strict=True)):
        # A view with depth already says where its surface lies (the depth term), more
        # precisely than photo-consistency can, so it gets no photometric term: that also
        # spares RGB-D captures its cost (12 warps per step for 4 views).
        if view.colour is None or view.mask is None or view.depth is not None:
            losses.append(zero)
            continue
        here = (view.mask > 0.5) & (rendering.silhouette.detach() > 0.5) & (rendering.depth > 0)
        if not bool(here.any()):  # nothing of the object drawn here: nothing to compare
            losses.append(zero)
            continue
        pair_losses = []
        for j, (other_r, other) in enumerate(zip(renderings, views, strict=True)):
            if j == i or other.colour is None or other.mask is None:
                continue
            # Colour, mask and rendered depth of the other view are warped in one sampling.
            stacked = torch.cat(
                [other.colour, other.mask[None], other_r.depth.detach()[None]], dim=0
            )
            warped, z = warp_into(rendering.depth, view.camera, other.camera, stacked)
            seen = (
                here
                & (z > 1e-3)
                & (warped[3].detach() > 0.99)  # on the object there, away from its edge
                & ((warped[4].detach() - z.detach()).abs() < cfg.photometric_visibility)
            )
            # SSIM per window; a window counts where its centre pixel is shared.
            win = min(cfg.photometric_window, *seen.shape)  # as ssim_map shrinks it
            m, (h, w) = win // 2, seen.shape
            valid = seen[m : m + h - win + 1, m : m + w - win + 1]
            if int(valid.sum()) < cfg.photometric_min_pixels:
                continue
            s = ssim_map(view.colour, warped[:3], win, cfg.ssim_sigma).mean(dim=0)
            pair_losses.append(1.0 - s[valid].mean())
        losses.append(torch.stack(pair_losses).mean() if pair_losses else zero)
    return torch.stack(losses)


def view_loss(rendering: Rendering, view: View, config: LossConfig | None = None) -> ViewLoss:
    """The per-view loss terms and their weighted total (a differentiable scalar)."""
    cfg = config or LossConfig()
    zero = rendering.silhouette.new_zeros(())
    sil = silhouette_loss(rendering.silhouette, view.mask) if view.mask is not None else zero
    dep = (
        depth_loss(rendering.depth, view.depth, cfg.depth_scale) if view.depth is not None else zero
    )
    col = zero
    if view.colour is not None and rendering.colour is not None:
        col = colour_loss(rendering.colour, view.colour, view, cfg)
    total = cfg.silhouette * sil + cfg.depth * dep + cfg.colour * col
    return ViewLoss(silhouette=sil, depth=dep, colour=col, total=total)
