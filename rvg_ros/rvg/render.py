"""Differentiable volume rendering of an SDF grid in the normalised object cube.

What the fine stage decodes (a signed distance field on a dense grid over the cube
[-0.5, 0.5]^3, optionally with a colour per voxel) is rendered into pinhole cameras as
silhouette, z-depth and colour, differentiably with respect to the SDF and colour values, so
that rendering-aware velocity compensation (``rvc.py``) can pull a generated sample towards the
input images. Plain torch (``grid_sample``), so it runs wherever torch runs, CPU or CUDA.

Conventions:
- The grid is indexed ``[x, y, z]`` (C order, like ``prior.voxel_centres``) and holds values at
  **voxel centres**: voxel ``i`` of ``R`` is centred at ``(i + 0.5) / R - 0.5``. SDF values are
  in cube units (1 = the cube's side), positive outside, negative inside. Between centres the
  field is trilinear; beyond the outermost centres it is clamped (``padding_mode="border"``).
- Space outside the cube is empty: every ray starts outside the object where it enters the cube.
- Cameras are OpenCV pinhole cameras (x right, y down, z forward) with ``camera_to_cube``, a 4x4
  transform into the cube frame; pixel ``(u, v)`` looks through image point ``(u, v)`` (pixel
  centres at integer coordinates), as ``core/render.py`` and ``CameraInfo`` have it.
- Depth is z-depth (along the optical axis) in cube units, like a depth camera's, divided by
  the cube side. ``camera_in_cube`` converts the project's metric frames.

Method (hand-written; no library here renders an SDF differentiably on the CPU): a coarse pass
without gradient finds where each ray first meets the surface; the differentiable pass takes
fixed samples in a window of a few voxels around that point (rays that pass far from the surface
stay empty) and turns them into NeuS's unbiased opacity from consecutive SDF samples,
alpha_i = 1 - Phi(s_{i+1}) / Phi(s_i) clamped to [0, 1], with Phi a logistic of sharpness k.
The product of (1 - alpha) telescopes, so a ray that crosses the surface becomes opaque there
however coarse the samples are; each interval's depth and colour are taken at the linear zero
crossing of the SDF inside it, so depth is accurate to well below a sample spacing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from rvg_ros.core.types import Intrinsics, TargetCube


@dataclass(frozen=True)
class RenderConfig:
    # Coarse pass (no gradient, SDF only): samples per ray between cube entry and exit, to
    # find where the ray first meets the surface (or passes closest to it).
    coarse_samples: int = 64
    # Differentiable pass: samples in a window of +-window_voxels around that point (at least
    # 1.5 coarse spacings); rays that stay further than that from the surface are empty.
    samples: int = 16
    window_voxels: float = 4.0
    # Width of the logistic Phi(s) = sigmoid(s / softness) in voxels of the rendered grid.
    # Smaller is sharper (silhouettes closer to the true surface); larger spreads gradients
    # further from the surface, which is what a compensation step far from the data needs.
    softness_voxels: float = 0.5
    # Colour seen where a ray leaves the cube without hitting the object (0..1 RGB).
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class Camera:
    """A pinhole camera in the cube frame (OpenCV convention)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    camera_to_cube: torch.Tensor  # (4, 4)


@dataclass
class SDFField:
    """What is rendered: SDF (R, R, R) and optional colour (3, R, R, R) at voxel centres."""

    sdf: torch.Tensor
    colour: torch.Tensor | None = None

    @property
    def resolution(self) -> int:
        return int(self.sdf.shape[-1])

    @classmethod
    def from_blocks(
        cls,
        coords: torch.Tensor,
        blocks: torch.Tensor,
        resolution: int,
        fill: float | torch.Tensor,
    ) -> SDFField:
        """A dense field from the fine stage's sparse output, differentiably in ``blocks``.

        ``coords`` (M, 3) integer indices of active voxels of a ``resolution``^3 coarse grid;
        ``blocks`` (M, C, k, k, k) per active voxel: C = 1 (SDF) or 4 (SDF + colour), sampled
        at the centres of its k^3 sub-voxels, so the dense grid is (resolution * k)^3 with the
        same voxel-centre convention. Inactive voxels take ``fill``: a scalar or a per-voxel
        (resolution,)*3 SDF value, e.g. +1/resolution outside and -1/resolution for voxels
        known to be inside (the surface lies in active voxels, so that is where it stays).
        Inactive voxels get colour 0.
        """
        m, c, k = blocks.shape[0], blocks.shape[1], blocks.shape[-1]
        fine = resolution * k
        fill_t = torch.as_tensor(fill, dtype=blocks.dtype, device=blocks.device)
        if fill_t.dim() == 3:
            fill_t = fill_t.repeat_interleave(k, 0).repeat_interleave(k, 1).repeat_interleave(k, 2)
        dense = torch.zeros(c, fine, fine, fine, dtype=blocks.dtype, device=blocks.device)
        dense[0] = fill_t
        # Flat index of every sub-voxel of every block, then one out-of-place index_put.
        sub = torch.arange(k, device=blocks.device)
        offsets = torch.stack(torch.meshgrid(sub, sub, sub, indexing="ij"), dim=-1).view(-1, 3)
        idx = (coords.long()[:, None] * k + offsets[None]).reshape(-1, 3)  # (M k^3, 3)
        flat = (idx[:, 0] * fine + idx[:, 1]) * fine + idx[:, 2]
        values = blocks.reshape(m, c, -1).permute(1, 0, 2).reshape(c, -1)
        dense = dense.view(c, -1).index_put(
            (torch.arange(c, device=blocks.device)[:, None], flat[None]), values
        )
        dense = dense.view(c, fine, fine, fine)
        return cls(sdf=dense[0], colour=dense[1:] if c > 1 else None)


@dataclass
class Rendering:
    """One view. ``depth`` is the expected z-depth of the surface a ray meets, normalised by
    the opacity (so it means something where the silhouette is high); 0 for rays that pass far
    from the surface or miss the cube."""

    silhouette: torch.Tensor  # (H, W) opacity in [0, 1]
    depth: torch.Tensor  # (H, W) cube units
    colour: torch.Tensor | None  # (3, H, W) in [0, 1], composited over the background


def camera_in_cube(
    intrinsics: Intrinsics,
    camera_to_world: np.ndarray,
    cube: TargetCube,
    width: int | None = None,
    height: int | None = None,
    device: torch.device | str = "cpu",
) -> Camera:
    """A metric camera as seen in the cube frame, optionally at another image size.

    Resizing keeps pixel centres at integer coordinates: image point u maps to
    (u + 0.5) * scale - 0.5. The pose keeps its rotation; its position is scaled by 1/side.
    """
    width = width or intrinsics.width
    height = height or intrinsics.height
    sx, sy = width / intrinsics.width, height / intrinsics.height
    c2w = np.asarray(camera_to_world, dtype=np.float64)
    c2c = np.eye(4)
    c2c[:3, :3] = c2w[:3, :3]
    c2c[:3, 3] = cube.to_unit(c2w[:3, 3][None])[0]
    return Camera(
        fx=intrinsics.fx * sx,
        fy=intrinsics.fy * sy,
        cx=(intrinsics.cx + 0.5) * sx - 0.5,
        cy=(intrinsics.cy + 0.5) * sy - 0.5,
        width=width,
        height=height,
        camera_to_cube=torch.as_tensor(c2c, dtype=torch.float32, device=device),
    )


def camera_rays(
    camera: Camera, device: torch.device | str, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Origins and directions (H*W, 3) in the cube frame; directions have unit camera z, so the
    ray parameter of a point is its z-depth."""
    c2c = camera.camera_to_cube.to(device=device, dtype=dtype)
    u = (torch.arange(camera.width, device=device, dtype=dtype) - camera.cx) / camera.fx
    v = (torch.arange(camera.height, device=device, dtype=dtype) - camera.cy) / camera.fy
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    dirs = torch.stack([uu, vv, torch.ones_like(uu)], dim=-1).reshape(-1, 3) @ c2c[:3, :3].T
    return c2c[:3, 3].expand_as(dirs), dirs


def _cube_entry_exit(
    origins: torch.Tensor, dirs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Slab test against [-0.5, 0.5]^3: ray parameters where each ray enters and leaves."""
    # A zero direction component never crosses that slab: a tiny stand-in keeps the division
    # finite and gives the right +-inf-like bounds.
    safe = torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)
    t0, t1 = (-0.5 - origins) / safe, (0.5 - origins) / safe
    near = torch.minimum(t0, t1).amax(dim=-1).clamp(min=1e-4)  # not behind the camera
    far = torch.maximum(t0, t1).amin(dim=-1)
    return near, far


def sample_field(field: SDFField, points: torch.Tensor) -> torch.Tensor:
    """Trilinear SDF (and colour) at points (P, 3) in the cube frame -> (P, 1 or 4)."""
    volume = field.sdf[None]
    if field.colour is not None:
        volume = torch.cat([volume, field.colour], dim=0)
    # grid_sample's last grid axis indexes the volume's last dimension (our z), so flip xyz;
    # with align_corners=False, -1 and 1 are the outer faces of the outer voxels: 2 * unit.
    grid = (2.0 * points).flip(-1).view(1, 1, 1, -1, 3)
    out = F.grid_sample(
        volume[None], grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    return out.view(volume.shape[0], -1).T


def render(field: SDFField, camera: Camera, config: RenderConfig | None = None) -> Rendering:
    """Render one view of the field (see the module docstring for the method)."""
    return render_views(field, [camera], config)[0]


def render_views(
    field: SDFField, cameras: Sequence[Camera], config: RenderConfig | None = None
) -> list[Rendering]:
    """Render several views of one field: all their rays go through one pass, so the grid is
    sampled (and its gradient accumulated) once rather than once per view."""
    config = config or RenderConfig()
    device, dtype = field.sdf.device, field.sdf.dtype
    rays = [camera_rays(c, device, dtype) for c in cameras]
    origins = torch.cat([o for o, _ in rays])
    dirs = torch.cat([d for _, d in rays])
    near, far = _cube_entry_exit(origins, dirs)
    hit = far > near
    silhouette = torch.zeros(len(origins), device=device, dtype=dtype)
    depth = torch.zeros_like(silhouette)
    bg = torch.tensor(config.background, device=device, dtype=dtype)
    colour = bg[:, None].repeat(1, len(origins)) if field.colour is not None else None
    if hit.any():
        start, step, active = _surface_window(
            field, origins[hit], dirs[hit], near[hit], far[hit], config
        )
        near, far = near[hit][active], far[hit][active]
        start, step = start[active], step[active]
        hit = hit.masked_scatter(hit, active)
    if hit.any():
        t = start[:, None] + step[:, None] * torch.arange(config.samples, device=device)
        sil_hit, depth_hit, colour_hit = _render_rays(
            field, origins[hit], dirs[hit], t, near, far, config
        )
        # Out of place, so autograd sees the scatter.
        silhouette = silhouette.masked_scatter(hit, sil_hit)
        depth = depth.masked_scatter(hit, depth_hit)
        if colour is not None and colour_hit is not None:
            composited = colour_hit + (1.0 - sil_hit)[None] * bg[:, None]
            colour = colour.masked_scatter(hit[None].expand_as(colour), composited)
    out, first = [], 0
    for c in cameras:
        n = c.height * c.width
        part = slice(first, first + n)
        first += n
        out.append(
            Rendering(
                silhouette=silhouette[part].view(c.height, c.width),
                depth=depth[part].view(c.height, c.width),
                colour=None if colour is None else colour[:, part].view(3, c.height, c.width),
            )
        )
    return out


@torch.no_grad()
def _surface_window(
    field: SDFField,
    origins: torch.Tensor,
    dirs: torch.Tensor,
    near: torch.Tensor,
    far: torch.Tensor,
    config: RenderConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per ray, the window of ray parameters that the differentiable pass samples, centred on
    the first zero crossing of the coarse SDF samples (or on their minimum when the ray misses),
    and whether the ray comes near the surface at all.

    Why: a 3D ``grid_sample`` and its backward dominate the cost, and only samples within a few
    voxels of the surface carry opacity or gradient. The window is chosen without gradient; the
    render inside it does not depend on where exactly it lies as long as it holds the surface.
    """
    n, s = origins.shape[0], config.coarse_samples
    steps = torch.linspace(0.0, 1.0, s, device=origins.device, dtype=origins.dtype)
    t = near[:, None] + (far - near)[:, None] * steps
    points = origins[:, None] + t[..., None] * dirs[:, None]
    sdf = sample_field(SDFField(field.sdf), points.view(-1, 3)).view(n, s)

    inside = sdf <= 0
    crossed = inside.any(dim=1)
    first = inside.to(torch.uint8).argmax(dim=1, keepdim=True)  # first inside sample
    before = (first - 1).clamp(min=0)
    s0, s1 = sdf.gather(1, before), sdf.gather(1, first)
    t0, t1 = t.gather(1, before), t.gather(1, first)
    frac = (s0 / torch.where(s0 > s1, s0 - s1, torch.ones_like(s0))).clamp(0.0, 1.0)
    t_cross = (t0 + frac * (t1 - t0))[:, 0]
    closest = sdf.argmin(dim=1, keepdim=True)
    centre = torch.where(crossed, t_cross, t.gather(1, closest)[:, 0])

    # Half-width as a length along the ray, then in ray parameter (directions are not unit).
    length = dirs.norm(dim=-1)
    spacing = (far - near) * length / max(s - 1, 1)
    half = torch.clamp(1.5 * spacing, min=config.window_voxels / field.resolution)
    active = crossed | (sdf.gather(1, closest)[:, 0] < half)
    # The window's samples sit on a lattice fixed per ray (origin at the cube entry, spacing
    # from the window's width alone): the SDF only picks which lattice points, so the render
    # is piecewise a function of the SDF through the samples alone and its gradient is exact
    # almost everywhere (a window sliding with the SDF would move the samples, which the
    # gradient cannot see).
    step = 2 * half / length / max(config.samples - 1, 1)
    first_index = torch.floor((centre - half / length - near) / step)
    return near + first_index * step, step, active


def _render_rays(
    field: SDFField,
    origins: torch.Tensor,
    dirs: torch.Tensor,
    t: torch.Tensor,
    near: torch.Tensor,
    far: torch.Tensor,
    config: RenderConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Opacity, depth and premultiplied colour of rays sampled at parameters t (n, s)."""
    n, s = t.shape
    # The window may reach past the cube's entry or exit: those samples collapse onto it
    # (zero-length intervals), so a ray entering the cube inside the object turns opaque
    # exactly at the entry (the virtual outside sample below sits there).
    t = torch.minimum(torch.maximum(t, near[:, None]), far[:, None])
    points = origins[:, None] + t[..., None] * dirs[:, None]
    values = sample_field(field, points.view(-1, 3)).view(n, s, -1)
    sdf = values[..., 0]

    k = 1.0 / (config.softness_voxels / field.resolution)
    log_phi = F.logsigmoid(k * sdf)
    # A virtual sample with Phi = 1 (log 0) before the window: the ray arrives unoccluded.
    # At the cube entry that is the definition (outside is empty), so a ray entering the cube
    # inside the object turns opaque there; in front of a first crossing the whole ray would
    # have let through Phi(s_0) / Phi(s_entry) ~ Phi(s_0) too, which the first interval gives.
    log_phi = torch.cat([torch.zeros_like(log_phi[:, :1]), log_phi], dim=1)
    # log(1 - alpha_i) = min(log Phi(s_{i+1}) - log Phi(s_i), 0): NeuS's alpha in log space,
    # stable where Phi underflows deep inside the object.
    log_trans = torch.clamp(log_phi[:, 1:] - log_phi[:, :-1], max=0.0)  # (n, s)
    alpha = -torch.expm1(log_trans)
    before = torch.cumsum(log_trans, dim=1) - log_trans  # exclusive: light reaching interval i
    weights = torch.exp(before) * alpha
    opacity = weights.sum(dim=1)

    # Interval i runs from sample i-1 to sample i (interval 0 is the virtual one, of zero
    # length at the entry). Its depth is the SDF's linear zero crossing, clamped into it.
    s_prev = torch.cat([sdf[:, :1], sdf[:, :-1]], dim=1)
    t_prev = torch.cat([t[:, :1], t[:, :-1]], dim=1)
    drop = s_prev - sdf
    # where() would pass NaN gradients from the unused branch: make the divisor safe first.
    frac = (s_prev / torch.where(drop > 1e-8, drop, torch.ones_like(drop))).clamp(0.0, 1.0)
    frac = torch.where(drop > 1e-8, frac, torch.ones_like(frac))
    t_cross = t_prev + frac * (t - t_prev)
    depth = (weights * t_cross).sum(dim=1) / opacity.clamp(min=1e-6)

    colour = None
    if field.colour is not None:
        c = values[..., 1:]
        c_prev = torch.cat([c[:, :1], c[:, :-1]], dim=1)
        c_cross = c_prev + frac[..., None] * (c - c_prev)
        colour = (weights[..., None] * c_cross).sum(dim=1).T  # (3, n), premultiplied
    return opacity, depth, colour
