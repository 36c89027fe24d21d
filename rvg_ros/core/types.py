"""Plain-numpy data types that travel along the one data path.

Conventions (used everywhere in the core):
- Lengths are metres.
- ``camera_to_world`` is a 4x4 rigid transform in the **OpenCV** camera convention
  (x right, y down, z forward). ``CaptureSession`` converts to/from the OpenGL convention
  that ``transforms.json`` uses; nothing else needs to know about it.
- Images are ``(H, W, 3) uint8`` RGB; depth is ``(H, W) float32`` metres with 0 meaning
  "no measurement"; masks are ``(H, W) bool`` (True = object).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics with optional OpenCV distortion (k1, k2, p1, p2[, k3...])."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    distortion: tuple[float, ...] = ()

    @property
    def matrix(self) -> np.ndarray:
        return np.array(
            [[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]], dtype=np.float64
        )

    def validate(self) -> None:
        """Raise ValueError when the intrinsics cannot describe a real camera."""
        values = (self.fx, self.fy, self.cx, self.cy)
        if not all(np.isfinite(v) for v in values):
            raise ValueError(f"intrinsics are not finite: {values}")
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"focal lengths must be positive, got fx={self.fx} fy={self.fy}")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")


@dataclass
class Frame:
    """One camera observation. ``camera_to_world`` is None for unposed frames."""

    rgb: np.ndarray
    intrinsics: Intrinsics
    camera_to_world: np.ndarray | None = None
    depth: np.ndarray | None = None
    mask: np.ndarray | None = None
    stamp: float = 0.0
    note: str = ""

    def validate(self) -> None:
        """Raise ValueError with a human-readable reason when the frame is unusable."""
        self.intrinsics.validate()
        if self.rgb.ndim != 3 or self.rgb.shape[2] != 3 or self.rgb.dtype != np.uint8:
            raise ValueError(f"colour must be HxWx3 uint8, got {self.rgb.shape} {self.rgb.dtype}")
        h, w = self.rgb.shape[:2]
        if (w, h) != (self.intrinsics.width, self.intrinsics.height):
            raise ValueError(
                f"colour is {w}x{h} but the intrinsics say "
                f"{self.intrinsics.width}x{self.intrinsics.height}"
            )
        if self.depth is not None:
            if self.depth.shape != (h, w):
                raise ValueError(
                    f"colour/depth size mismatch: colour {w}x{h}, "
                    f"depth {self.depth.shape[1]}x{self.depth.shape[0]}"
                )
            if self.depth.dtype != np.float32:
                raise ValueError(f"depth must be float32 metres, got {self.depth.dtype}")
        if self.mask is not None and self.mask.shape != (h, w):
            raise ValueError(f"mask is {self.mask.shape[::-1]} but colour is {w}x{h}")
        if self.camera_to_world is not None:
            check_rigid(self.camera_to_world)

    @property
    def has_pose(self) -> bool:
        return self.camera_to_world is not None


def check_rigid(matrix: np.ndarray, tolerance: float = 1e-3) -> None:
    """Raise ValueError unless ``matrix`` is a finite 4x4 rigid transform."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (4, 4):
        raise ValueError(f"pose must be 4x4, got {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError("pose contains NaN or inf")
    if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=tolerance):
        raise ValueError(f"pose last row must be [0 0 0 1], got {m[3].tolist()}")
    r = m[:3, :3]
    if not np.allclose(r @ r.T, np.eye(3), atol=tolerance) or np.linalg.det(r) < 0:
        raise ValueError("pose rotation is not orthonormal with determinant +1")


@dataclass(frozen=True)
class TargetCube:
    """An axis-aligned cube around the target in the world frame.

    The learned backends work in the normalised cube [-0.5, 0.5]^3; ``to_unit`` and
    ``to_world`` map points between the two.
    """

    center: np.ndarray  # (3,) metres, world frame
    side: float  # metres

    def to_unit(self, points: np.ndarray) -> np.ndarray:
        return (np.asarray(points, dtype=np.float64) - self.center) / self.side

    def to_world(self, points: np.ndarray) -> np.ndarray:
        return np.asarray(points, dtype=np.float64) * self.side + self.center

    @property
    def min_corner(self) -> np.ndarray:
        return self.center - 0.5 * self.side

    @property
    def max_corner(self) -> np.ndarray:
        return self.center + 0.5 * self.side


@dataclass
class CaptureSet:
    """The frames chosen for one reconstruction, with the target cube."""

    frames: list[Frame]
    target: TargetCube
    seed: int = 0
    # The surface the object stands on, (a, b, c, d) with a unit normal pointing towards the
    # cameras (a x + b y + c z + d > 0 above it), when target finding found one (depth only).
    support_plane: np.ndarray | None = None

    @property
    def has_depth(self) -> bool:
        return all(f.depth is not None for f in self.frames)

    @property
    def has_masks(self) -> bool:
        return all(f.mask is not None for f in self.frames)


@dataclass
class Mesh:
    """A triangle mesh with per-vertex colour (float 0..1) and confidence (0..1)."""

    vertices: np.ndarray  # (N, 3) float64
    triangles: np.ndarray  # (M, 3) int32
    vertex_colors: np.ndarray  # (N, 3) float32
    vertex_confidence: np.ndarray  # (N,) float32

    @property
    def is_empty(self) -> bool:
        return len(self.vertices) == 0 or len(self.triangles) == 0


@dataclass
class PointCloud:
    points: np.ndarray  # (N, 3) float64
    colors: np.ndarray  # (N, 3) float32, 0..1
    confidence: np.ndarray  # (N,) float32


@dataclass
class Reconstruction:
    """What every backend returns. Exporters and the ROS layer only read it."""

    mesh: Mesh
    cloud: PointCloud
    backend: str
    num_views: int
    metric_scale: bool
    frame_id: str = "world"
    stage_seconds: dict[str, float] = field(default_factory=dict)
    peak_memory_mb: float = 0.0
    files: dict[str, str] = field(default_factory=dict)
    extras: dict[str, object] = field(default_factory=dict)

    def bounding_box(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned (min, max) of the mesh vertices in the output frame."""
        if self.mesh.is_empty:
            return np.zeros(3), np.zeros(3)
        return self.mesh.vertices.min(axis=0), self.mesh.vertices.max(axis=0)


class ReconstructionError(RuntimeError):
    """A reconstruction that cannot be done, with a reason fit for a user."""


class Cancelled(RuntimeError):
    """Raised from a progress callback to stop a running reconstruction."""
