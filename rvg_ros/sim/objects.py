"""Seeded procedural household objects built as signed-distance compositions.

Every object is an SDF (negative inside), so it is watertight and its occupancy is exact; the
mesh is the SDF's zero level set from marching cubes. Objects rest on z = 0, centred on the
origin in x and y, in metres, with per-vertex colours from a seeded texture.

The same ``(family, seed)`` gives the same object on any machine: all randomness comes from a
``numpy.random.Generator`` seeded from the pair, and every parameter is drawn even when it is
overridden, so overriding one parameter never shifts the others.

Adding a family: write ``def _name(p: Params) -> Shape`` (draw parameters with ``p.uniform``,
compose primitives from :mod:`rvg_ros.sim.sdf`, give conservative bounds) and register it in
``FAMILIES``. Parameter ranges are listed in each function; all sizes are metres.
"""

from __future__ import annotations

import colorsys
import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trimesh
from skimage.measure import marching_cubes

from rvg_ros.sim import sdf as S
from rvg_ros.sim.sdf import SDF

# Grid resolution: ~1/100 of the object's largest extent, clamped so small objects still show
# ~0.5 mm detail and large ones stay near 2 mm (and under a second to generate).
_CELLS_PER_EXTENT = 100
_MIN_VOXEL = 0.0005
_MAX_VOXEL = 0.002
_PAD_VOXELS = 3
_CHUNK = 1 << 20  # SDF evaluation chunk (points), bounds peak memory
_LIE_PROBABILITY = 0.2


class Params:
    """Draws named parameters from ``rng``; ``fixed`` overrides a draw without skipping it."""

    def __init__(self, rng: np.random.Generator, fixed: Mapping[str, float] | None = None):
        self.rng = rng
        self.fixed = dict(fixed or {})
        self.values: dict[str, float] = {}

    def uniform(self, name: str, lo: float, hi: float) -> float:
        value = float(self.rng.uniform(lo, hi))
        value = float(self.fixed.get(name, value))
        self.values[name] = value
        return value

    def chance(self, name: str, probability: float) -> bool:
        value = bool(self.rng.random() < probability)
        value = bool(self.fixed.get(name, value))
        self.values[name] = float(value)
        return value


@dataclass
class Shape:
    """What a family function returns, in the family's own upright frame."""

    sdf: SDF
    lo: np.ndarray  # conservative bounds of the solid (3,)
    hi: np.ndarray
    can_lie: bool = False  # may be laid on its side (cans, bottles)
    # Marks points on a distinct part (cap, lid, inside, head) that gets its own colour.
    accent: Callable[[np.ndarray], np.ndarray] | None = None


@dataclass
class SimObject:
    name: str
    family: str
    sdf: SDF  # world points (N, 3) -> signed distance, negative inside
    bounds: np.ndarray  # (2, 3): min and max corner of the mesh, metres
    mesh: trimesh.Trimesh  # watertight, resting on z = 0, centred in x and y
    seed: int = 0
    params: dict[str, float] = field(default_factory=dict)

    def occupancy(self, points: np.ndarray) -> np.ndarray:
        return self.sdf(np.asarray(points, dtype=np.float64)) < 0.0

    @property
    def extent(self) -> float:
        """Largest side of the axis-aligned bounding box, metres."""
        return float(np.max(self.bounds[1] - self.bounds[0]))


# ----------------------------------------------------------------------------- families


def _rounded_box(p: Params) -> Shape:
    """Boxes 4-22 x 3-16 x 3-25 cm; one in three is a slab with a 2-4.5 cm side (thin boxes
    are where geometric completion wins, so the data leans on them)."""
    dims = [p.uniform("size_x", 0.04, 0.22), p.uniform("size_y", 0.03, 0.16)]
    dims.append(p.uniform("size_z", 0.03, 0.25))
    thin = p.chance("thin", 0.35)
    axis = int(p.uniform("thin_axis", 0, 3))
    thin_size = p.uniform("thin_size", 0.02, 0.045)
    if thin:
        dims[min(axis, 2)] = thin_size
    half = np.array(dims) / 2.0
    rounding = min(p.uniform("rounding", 0.001, 0.012), 0.25 * float(half.min()) * 2.0)
    solid = S.translate(S.rounded_box(half, rounding), (0.0, 0.0, half[2]))
    return Shape(solid, np.array([-half[0], -half[1], 0.0]), np.array([half[0], half[1], dims[2]]))


def _can(p: Params) -> Shape:
    """Cylinders r 2-6 cm, h 4-20 cm, rounded rims and a recessed lid."""
    r = p.uniform("radius", 0.02, 0.06)
    h = p.uniform("height", 0.04, 0.20)
    rounding = p.uniform("rounding", 0.001, 0.004)
    recess = p.uniform("lid_recess", 0.0008, 0.002)
    body = S.cylinder(r, 0.0, h, rounding)
    lid = S.cylinder(r - 0.003, h - recess, h + 0.01)
    solid = S.subtract(body, lid)
    rim = 0.006

    def accent(q: np.ndarray) -> np.ndarray:  # metal lids
        return (q[:, 2] < rim) | (q[:, 2] > h - rim)

    return Shape(solid, np.array([-r, -r, 0.0]), np.array([r, r, h]), can_lie=True, accent=accent)


def _bottle(p: Params) -> Shape:
    """Body r 2.5-5 cm, h 8-16 cm; shoulder 2-6 cm; neck r 0.9-1.6 cm, h 1.5-5 cm; cap."""
    r = p.uniform("radius", 0.025, 0.05)
    hb = p.uniform("body_height", 0.08, 0.16)
    hs = p.uniform("shoulder_height", 0.02, 0.06)
    rn = min(p.uniform("neck_radius", 0.009, 0.016), 0.5 * r)
    hn = p.uniform("neck_height", 0.015, 0.05)
    hc = p.uniform("cap_height", 0.01, 0.02)
    base_round = p.uniform("base_rounding", 0.003, 0.01)
    z1, z2 = hb, hb + hs
    z3 = z2 + hn
    top = z3 + hc
    body = S.cylinder(r, 0.0, z1 + 0.002, base_round)
    shoulder = S.cone(r, rn, z1, z2)
    neck = S.cylinder(rn, z2 - 0.002, z3 + 0.001)
    cap = S.cylinder(rn + 0.0015, z3, top, 0.001)
    solid = S.union(S.smooth_union(S.smooth_union(body, shoulder, 0.006), neck, 0.004), cap)

    def accent(q: np.ndarray) -> np.ndarray:
        return q[:, 2] > z3

    return Shape(solid, np.array([-r, -r, 0.0]), np.array([r, r, top]), True, accent)


def _mug(p: Params) -> Shape:
    """Shell r 3.5-5.5 cm, h 7-12 cm, wall 3-6 mm, floor 5-10 mm, with a ring handle that
    sticks out 2.2-3.5 cm (its ring radius 25-38 % of the height, tube 5-9 mm)."""
    r = p.uniform("radius", 0.035, 0.055)
    h = p.uniform("height", 0.07, 0.12)
    wall = p.uniform("wall", 0.003, 0.006)
    floor = p.uniform("floor", 0.005, 0.01)
    reach = p.uniform("handle_reach", 0.022, 0.035)
    tube = p.uniform("handle_tube", 0.005, 0.009)
    ring = min(p.uniform("handle_ring", 0.25, 0.38) * h, 0.45 * h - tube)
    zc = p.uniform("handle_height", 0.45, 0.55) * h
    rounding = min(p.uniform("rounding", 0.001, 0.004), 0.45 * wall)

    outer = S.cylinder(r, 0.0, h, rounding)
    xc = r + reach - ring - tube  # ring centre: its outer edge is ``reach`` beyond the wall
    handle = S.transform(S.torus(ring, tube), _rot_x(-math.pi / 2), (xc, 0.0, zc))
    cavity = S.cylinder(r - wall, floor, h + 0.05, min(0.004, r - wall))
    solid = S.subtract(S.smooth_union(outer, handle, 0.004), cavity)

    def accent(q: np.ndarray) -> np.ndarray:  # the inside of the cup
        return (np.hypot(q[:, 0], q[:, 1]) < r - 0.5 * wall) & (q[:, 2] > 0.5 * floor)

    return Shape(solid, np.array([-r, -r, 0.0]), np.array([r + reach, r, h]), accent=accent)


def _bowl(p: Params) -> Shape:
    """Spherical-cap shell: sphere r 6-14 cm squashed to 55-100 % in height, rim 5-30 % of r
    below the centre, wall 3-6 mm (at least 3 % of r), with a foot ring r 30-50 % of r."""
    rs = p.uniform("sphere_radius", 0.06, 0.14)
    squash = p.uniform("squash", 0.55, 1.0)
    rim = -p.uniform("rim_depth", 0.05, 0.3) * rs * squash
    wall = max(p.uniform("wall", 0.003, 0.006), 0.03 * rs)
    rf = p.uniform("foot_radius", 0.3, 0.5) * rs
    foot_h = p.uniform("foot_height", 0.003, 0.008)

    outer = S.scale_z(S.sphere(rs + 0.5 * wall), squash)
    inner = S.scale_z(S.sphere(rs - 0.5 * wall), squash)
    zb = -(rs + 0.5 * wall) * squash
    foot = S.cylinder(rf, zb - foot_h, zb + 0.2 * rs * squash)
    body = S.subtract(S.union(outer, foot), inner)
    solid = S.intersect(body, lambda q: q[:, 2] - rim)
    rr = rs + wall

    def accent(q: np.ndarray) -> np.ndarray:  # glazed inside
        qq = q / np.array([1.0, 1.0, squash])
        return np.linalg.norm(qq, axis=1) < rs

    return Shape(solid, np.array([-rr, -rr, zb - foot_h]), np.array([rr, rr, rim]), accent=accent)


def _ellipsoid(p: Params) -> Shape:
    """Semi-axes 1.2-8 cm each."""
    axes = np.array([p.uniform(f"semi_{a}", 0.012, 0.08) for a in "xyz"])
    return Shape(S.ellipsoid(axes), -axes, axes)


def _torus(p: Params) -> Shape:
    """Lying flat: ring radius 2.5-10 cm, tube 0.6-3 cm (at most 60 % of the ring radius)."""
    major = p.uniform("major_radius", 0.025, 0.10)
    minor = min(p.uniform("minor_radius", 0.006, 0.03), 0.6 * major)
    e = major + minor
    return Shape(S.torus(major, minor), np.array([-e, -e, -minor]), np.array([e, e, minor]))


def _cup(p: Params) -> Shape:
    """Tapered open cup without handle: base r 2.5-4 cm, top 110-150 % of it, h 6-15 cm."""
    rb = p.uniform("base_radius", 0.025, 0.04)
    rt = rb * p.uniform("flare", 1.1, 1.5)
    h = p.uniform("height", 0.06, 0.15)
    wall = p.uniform("wall", 0.003, 0.005)
    floor = p.uniform("floor", 0.004, 0.01)
    extra = 0.02  # the cavity pokes out of the top so the rim is open, not a coincident face
    slope = (rt - rb) / h
    outer = S.cone(rb, rt, 0.0, h)
    cavity = S.cone(rb - wall + slope * floor, rt - wall + slope * extra, floor, h + extra)
    solid = S.subtract(outer, cavity)
    return Shape(solid, np.array([-rt, -rt, 0.0]), np.array([rt, rt, h]))


def _plate(p: Params) -> Shape:
    """Disc r 8-14 cm, 1.4-2.5 cm thick, with a rim 1.5-3.5 cm wide around a shallow well."""
    r = p.uniform("radius", 0.08, 0.14)
    h = p.uniform("thickness", 0.014, 0.025)
    rim = p.uniform("rim_width", 0.015, 0.035)
    depth = p.uniform("well_depth", 0.35, 0.6) * h
    disc = S.cylinder(r, 0.0, h, min(0.004, h / 3.0))
    well = S.cylinder(r - rim, h - depth, h + 0.02, 0.004)
    return Shape(S.subtract(disc, well), np.array([-r, -r, 0.0]), np.array([r, r, h]))


def _fruit(p: Params) -> Shape:
    """Lumpy superquadric: semi-axes 2-6 cm (others 70-130 % of it), roundness 0.7-1.2,
    bumps up to 3 mm."""
    a = p.uniform("semi_x", 0.02, 0.06)
    axes = np.array([a, a * p.uniform("ratio_y", 0.85, 1.15), a * p.uniform("ratio_z", 0.7, 1.3)])
    e1, e2 = p.uniform("e1", 0.7, 1.2), p.uniform("e2", 0.7, 1.2)
    amplitude = p.uniform("bump", 0.0005, 0.003)
    dirs = p.rng.normal(size=(6, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    freqs = dirs * p.rng.uniform(30.0, 120.0, size=(6, 1))
    phases = p.rng.uniform(0.0, 2.0 * math.pi, 6)
    solid = S.displace(S.superquadric(axes, e1, e2), amplitude, freqs, phases)
    e = axes + amplitude + 0.002
    return Shape(solid, -e, e)


def _banana(p: Params) -> Shape:
    """Capsule bent along an arc of radius 8-16 cm over 50-90 degrees, tube r 1.2-2 cm,
    tapering to the tips."""
    bend = p.uniform("bend_radius", 0.08, 0.16)
    arc = p.uniform("arc_deg", 50.0, 90.0)
    r = p.uniform("radius", 0.012, 0.02)
    half = math.radians(arc) / 2.0
    solid = S.bent_capsule(bend, arc, r, taper=0.5)

    def accent(q: np.ndarray) -> np.ndarray:  # dark tips
        return np.abs(np.arctan2(q[:, 1], q[:, 0])) > 0.92 * half

    lo = np.array([bend * math.cos(half) - r - 0.002, -(bend * math.sin(half) + r), -r])
    hi = np.array([bend + r, bend * math.sin(half) + r, r])
    return Shape(solid, lo, hi, accent=accent)


def _tool(p: Params) -> Shape:
    """Lying hammer/spatula-like tool: handle 10-22 cm long, r 0.8-1.6 cm; a box head
    1.5-3 x 5-11 x 1.5-3 cm across the handle's end."""
    length = p.uniform("handle_length", 0.10, 0.22)
    r = p.uniform("handle_radius", 0.008, 0.016)
    hx, hy = p.uniform("head_x", 0.015, 0.03) / 2, p.uniform("head_y", 0.05, 0.11) / 2
    hz = max(p.uniform("head_z", 0.015, 0.03) / 2, r + 0.001)
    handle = S.capsule((0.0, 0.0, 0.0), (length, 0.0, 0.0), r)
    head = S.translate(S.rounded_box((hx, hy, hz), min(0.003, hx / 2)), (length + hx, 0.0, 0.0))
    solid = S.smooth_union(handle, head, 0.004)

    def accent(q: np.ndarray) -> np.ndarray:  # metal head
        return q[:, 0] > length - 0.002

    lo = np.array([-r, -max(hy, r), -hz])
    hi = np.array([length + 2 * hx, max(hy, r), hz])
    return Shape(solid, lo, hi, accent=accent)


FAMILIES: dict[str, Callable[[Params], Shape]] = {
    "rounded_box": _rounded_box,
    "can": _can,
    "bottle": _bottle,
    "mug": _mug,
    "bowl": _bowl,
    "ellipsoid": _ellipsoid,
    "torus": _torus,
    "cup": _cup,
    "plate": _plate,
    "fruit": _fruit,
    "banana": _banana,
    "tool": _tool,
}
FAMILY_NAMES: tuple[str, ...] = tuple(sorted(FAMILIES))


# ----------------------------------------------------------------------------- generation


def family_for_seed(seed: int) -> str:
    """The family ``make_object(None, seed)`` picks."""
    return FAMILY_NAMES[int(np.random.default_rng(seed).integers(len(FAMILY_NAMES)))]


def make_object(
    family: str | None = None,
    seed: int = 0,
    *,
    params: Mapping[str, float] | None = None,
    yaw_deg: float | None = None,
    lying: bool | None = None,
    pattern: str | None = None,
    voxel_size: float | None = None,
) -> SimObject:
    """Generate one object. ``family=None`` picks one from the seed (``family_for_seed``).

    ``params`` overrides named family parameters; ``yaw_deg``/``lying`` fix the resting pose
    (random by default: any yaw, and cans/bottles lie on their side 20 % of the time);
    ``pattern`` forces the texture pattern (one of ``PATTERNS``); ``voxel_size`` overrides the
    marching-cubes grid spacing.
    """
    family = family_for_seed(seed) if family is None else family
    if family not in FAMILIES:
        raise ValueError(f"unknown object family {family!r}; known: {', '.join(FAMILY_NAMES)}")
    # Seeded from (seed, family) so make_object(None, s) equals make_object(family_for_seed(s), s).
    rng = np.random.default_rng([seed, zlib.crc32(family.encode())])
    p = Params(rng, params)
    shape = FAMILIES[family](p)

    yaw = rng.uniform(0.0, 2.0 * math.pi)
    lie = shape.can_lie and rng.random() < _LIE_PROBABILITY
    texture_rng = np.random.default_rng(rng.integers(2**63))
    yaw = math.radians(yaw_deg) if yaw_deg is not None else yaw
    lie = shape.can_lie and lying if lying is not None else lie
    rotation = _rot_z(yaw) @ (_rot_x(math.pi / 2) if lie else np.eye(3))

    # Extract in the shape's own frame (its bounds are tight there) and rotate the vertices:
    # a rigid motion keeps the mesh exactly the posed SDF's zero level set.
    local_vertices, faces = _extract(shape.sdf, shape.lo, shape.hi, voxel_size)
    vertices = local_vertices @ rotation.T
    posed = S.transform(shape.sdf, rotation)

    # Rest on z = 0, centred in x and y; the SDF moves with the mesh so both stay consistent.
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    offset = np.array([-(lo[0] + hi[0]) / 2.0, -(lo[1] + hi[1]) / 2.0, -lo[2]])
    vertices = vertices + offset
    world_sdf = S.translate(posed, offset)

    # Texture in the shape's own frame so stripes and labels follow a can lying on its side.
    local = (vertices - offset) @ rotation
    colors = _texture(texture_rng, local, shape, pattern)
    mesh = trimesh.Trimesh(vertices, faces, vertex_colors=_rgba8(colors), process=False)

    params_out = dict(p.values, yaw_deg=math.degrees(yaw), lying=float(lie))
    return SimObject(
        name=f"{family}_{seed:06d}",
        family=family,
        sdf=world_sdf,
        bounds=np.stack([vertices.min(axis=0), vertices.max(axis=0)]),
        mesh=mesh,
        seed=seed,
        params=params_out,
    )


def demo_object() -> SimObject:
    """The mug the demo reconstructs: r 4 cm, 10 cm tall, handle reaching 2.8 cm (~11 cm
    across), with a printed label band so colour-based methods have features to match."""
    fixed = {
        "radius": 0.04,
        "height": 0.10,
        "wall": 0.004,
        "floor": 0.008,
        "handle_reach": 0.028,
        "handle_tube": 0.007,
        "handle_ring": 0.3,
        "handle_height": 0.5,
        "rounding": 0.0015,
    }
    obj = make_object("mug", seed=2024, params=fixed, yaw_deg=30.0, pattern="label")
    obj.name = "demo_mug"
    return obj


def _extract(
    sdf: SDF, lo: np.ndarray, hi: np.ndarray, voxel_size: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes of ``sdf`` over the padded box [lo, hi]."""
    extent = float(np.max(hi - lo))
    voxel = voxel_size or float(np.clip(extent / _CELLS_PER_EXTENT, _MIN_VOXEL, _MAX_VOXEL))
    origin = lo - _PAD_VOXELS * voxel
    shape = np.ceil((hi - lo) / voxel).astype(int) + 2 * _PAD_VOXELS + 1
    axes = [origin[i] + voxel * np.arange(shape[i]) for i in range(3)]
    values = np.empty(int(np.prod(shape)), dtype=np.float32)
    # Evaluate slab by slab (x-major, matching C order) so memory stays bounded.
    yz = np.stack(np.meshgrid(axes[1], axes[2], indexing="ij"), axis=-1).reshape(-1, 2)
    slabs = max(1, _CHUNK // len(yz))
    for start in range(0, shape[0], slabs):
        xs = axes[0][start : start + slabs]
        pts = np.empty((len(xs) * len(yz), 3))
        pts[:, 0] = np.repeat(xs, len(yz))
        pts[:, 1:] = np.tile(yz, (len(xs), 1))
        values[start * len(yz) : start * len(yz) + len(pts)] = sdf(pts)
    volume = values.reshape(shape)
    if volume.min() >= 0.0:
        raise ValueError("the object's SDF has no inside within its bounds")
    # SDF decreases into the object, which is skimage's default "descent" orientation, so
    # faces wind counter-clockwise seen from outside (normals point out).
    verts, faces, _, _ = marching_cubes(volume, level=0.0, spacing=(voxel,) * 3)
    return verts + origin, faces.astype(np.int64)


# ----------------------------------------------------------------------------- texture


PATTERNS = ("plain", "stripes", "rings", "label", "dots", "checker")


def _texture(
    rng: np.random.Generator, pts: np.ndarray, shape: Shape, pattern: str | None = None
) -> np.ndarray:
    """Base colour + one pattern (plain, stripes, rings, label, dots, checker) + an accent
    colour on marked parts + smooth and fine noise, so feature matchers have something to
    lock on to. ``pts`` are in the shape's frame, metres. Returns (N, 3) float in 0..1."""
    base = _hsv(rng.uniform(), rng.uniform(0.35, 0.9), rng.uniform(0.45, 0.95))
    second = _hsv(rng.uniform(), rng.uniform(0.2, 0.9), rng.uniform(0.2, 0.95))
    accent_color = _hsv(rng.uniform(), rng.uniform(0.0, 0.3), rng.uniform(0.3, 0.95))
    drawn = str(rng.choice(PATTERNS))
    if pattern is not None and pattern not in PATTERNS:
        raise ValueError(f"unknown texture pattern {pattern!r}; known: {', '.join(PATTERNS)}")
    pattern = pattern or drawn
    period = rng.uniform(0.008, 0.03)
    phase = rng.uniform(0.0, 2.0 * math.pi)

    z = pts[:, 2]
    theta = np.arctan2(pts[:, 1], pts[:, 0])
    radius = np.hypot(pts[:, 0], pts[:, 1])
    arc = theta * max(float(np.median(radius)), 0.01)  # arc length around the axis, metres
    zmin, zmax = float(z.min()), float(z.max())
    height = max(zmax - zmin, 1e-6)
    k = 2.0 * math.pi / period

    weight = np.zeros(len(pts))
    if pattern == "stripes":  # vertical stripes around the axis
        weight = (np.sin(k * arc + phase) > 0.0).astype(float)
    elif pattern == "rings":  # horizontal bands
        weight = (np.sin(k * z + phase) > 0.0).astype(float)
    elif pattern == "label":  # a band with "text": a fine two-frequency pattern inside it
        a, b = sorted(rng.uniform(0.2, 0.8, 2))
        band = (z > zmin + a * height) & (z < zmin + max(b, a + 0.15) * height)
        text = np.sin(2.5 * k * arc + phase) * np.sin(3.0 * k * z) > 0.35
        weight = band.astype(float)
        weight[band & text] = 2.0
    elif pattern == "dots":
        cells = np.sin(k * pts).prod(axis=1)
        weight = (cells > 0.25).astype(float)
    elif pattern == "checker":
        weight = ((np.floor(pts / period).sum(axis=1) % 2) == 0).astype(float)

    colors = np.where(weight[:, None] >= 1.0, second, base)
    colors = np.where(weight[:, None] >= 2.0, 0.15 * second, colors)
    if shape.accent is not None:
        colors = np.where(shape.accent(pts)[:, None], accent_color, colors)
    colors = (
        colors
        * (1.0 + _noise(rng, pts, 40.0, 200.0, 0.10) + _noise(rng, pts, 600.0, 1500.0, 0.05))[
            :, None
        ]
    )
    return np.clip(colors, 0.0, 1.0)


def _noise(
    rng: np.random.Generator, pts: np.ndarray, f_lo: float, f_hi: float, amplitude: float
) -> np.ndarray:
    """A smooth pseudo-random field from 8 plane waves, frequencies in radians per metre."""
    dirs = rng.normal(size=(8, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    freqs = dirs * rng.uniform(f_lo, f_hi, size=(8, 1))
    phases = rng.uniform(0.0, 2.0 * math.pi, 8)
    return amplitude * np.sin(pts @ freqs.T + phases).mean(axis=1) * math.sqrt(2.0)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h, s, v))


def _rgba8(colors: np.ndarray) -> np.ndarray:
    rgba = np.full((len(colors), 4), 255, dtype=np.uint8)
    rgba[:, :3] = np.round(np.clip(colors, 0.0, 1.0) * 255.0).astype(np.uint8)
    return rgba


def _rot_x(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rot_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


# ----------------------------------------------------------------------------- mesh files


def load_mesh_object(
    path: str | Path,
    name: str | None = None,
    recenter: bool = True,
    min_component_faces: int = 3,
) -> SimObject:
    """Load a PLY/OBJ/STL (metres) as a ``SimObject``.

    Connected pieces with fewer than ``min_component_faces`` faces are dropped (the YCB scans
    carry 2-face slivers that break watertightness). Meshes without vertex colours (or whose
    texture cannot be baked to vertices) get a pseudo-texture seeded from the file name, so the
    same file always looks the same. With ``recenter`` the mesh is moved to rest on z = 0,
    centred in x and y, like the procedural objects. The SDF is Open3D's signed distance to the
    mesh (sign by ray parity), built on first use.
    """
    path = Path(path)
    loaded = trimesh.load(str(path), force="mesh", process=True)
    if not isinstance(loaded, trimesh.Trimesh) or len(loaded.faces) == 0:
        raise ValueError(f"{path}: no triangles")
    mesh = _drop_slivers(loaded, min_component_faces)

    colors = _baked_colors(mesh)
    if colors is None:
        seed = zlib.crc32(path.name.encode())
        rng = np.random.default_rng(seed)
        shape = Shape(lambda q: np.zeros(len(q)), mesh.bounds[0], mesh.bounds[1])
        colors = _texture(rng, np.asarray(mesh.vertices), shape)
        mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=_rgba8(colors))

    if recenter:
        lo, hi = mesh.bounds
        mesh.apply_translation([-(lo[0] + hi[0]) / 2.0, -(lo[1] + hi[1]) / 2.0, -lo[2]])

    return SimObject(
        name=name or path.stem,
        family="mesh",
        sdf=_mesh_sdf(mesh),
        bounds=np.asarray(mesh.bounds, dtype=np.float64).copy(),
        mesh=mesh,
    )


def _drop_slivers(mesh: trimesh.Trimesh, min_faces: int) -> trimesh.Trimesh:
    labels = trimesh.graph.connected_component_labels(mesh.face_adjacency, len(mesh.faces))
    counts = np.bincount(labels)
    keep = counts[labels] >= min_faces
    if keep.all():
        return mesh
    out = mesh.submesh([np.nonzero(keep)[0]], append=True, repair=False)
    out.remove_unreferenced_vertices()
    return out


def _baked_colors(mesh: trimesh.Trimesh) -> np.ndarray | None:
    visual = mesh.visual
    try:
        if visual.kind == "texture":
            visual = visual.to_color()
        if visual.kind != "vertex":
            return None
        rgba = np.asarray(visual.vertex_colors)
    except Exception:  # noqa: BLE001 - a texture that cannot be baked is just "no colours"
        return None
    if len(rgba) != len(mesh.vertices) or np.all(rgba[:, :3] == rgba[0, :3]):
        return None  # uniform colour carries no texture: treat it as uncoloured
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=rgba)
    return rgba[:, :3].astype(np.float64) / 255.0


def _mesh_sdf(mesh: trimesh.Trimesh) -> SDF:
    scene = None

    def f(points: np.ndarray) -> np.ndarray:
        nonlocal scene
        import open3d as o3d

        if scene is None:
            scene = o3d.t.geometry.RaycastingScene()
            scene.add_triangles(
                o3d.core.Tensor(np.asarray(mesh.vertices, dtype=np.float32)),
                o3d.core.Tensor(np.asarray(mesh.faces, dtype=np.uint32)),
            )
        query = o3d.core.Tensor(np.asarray(points, dtype=np.float32))
        return scene.compute_signed_distance(query).numpy().astype(np.float64)

    return f
