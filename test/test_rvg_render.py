"""The differentiable SDF renderer and the rendering losses (part 2 building blocks)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import open3d as o3d
import pytest
import torch
import trimesh
from scipy import ndimage
from skimage.metrics import structural_similarity

from rvg_ros.core.render import MeshRenderer
from rvg_ros.core.types import Frame, Intrinsics, TargetCube
from rvg_ros.rvg.render import (
    Camera,
    RenderConfig,
    SDFField,
    camera_in_cube,
    render,
    render_views,
)
from rvg_ros.rvg.render_loss import (
    LossConfig,
    View,
    crop_to_mask,
    depth_loss,
    photo_consistency,
    silhouette_loss,
    ssim,
    view_from_frame,
    view_loss,
)

# A cube that is neither at the origin nor of unit size, so the metric <-> cube mapping matters.
CUBE = TargetCube(center=np.array([0.1, 0.2, 0.3]), side=0.25)
RES = 64


def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """OpenCV camera_to_world looking from eye at target, z up in the world."""
    z = target - eye
    z = z / np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x = x / np.linalg.norm(x)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, np.cross(z, x), z, eye
    return m


def centres(res: int = RES) -> torch.Tensor:
    axis = (torch.arange(res, dtype=torch.float32) + 0.5) / res - 0.5
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)


def sphere_sdf(centre=(0.05, -0.03, 0.02), radius: float = 0.28, res: int = RES) -> torch.Tensor:
    return (centres(res) - torch.tensor(centre)).norm(dim=-1) - radius


def box_sdf(half=(0.3, 0.2, 0.15), res: int = RES) -> torch.Tensor:
    q = centres(res).abs() - torch.tensor(half)
    return q.clamp(min=0).norm(dim=-1) + q.amax(dim=-1).clamp(max=0)


def metric_mesh(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    out = mesh.copy()
    out.apply_scale(CUBE.side)
    out.apply_translation(CUBE.center)
    return out


INTRINSICS = Intrinsics(fx=180.0, fy=180.0, cx=47.5, cy=47.5, width=96, height=96)
EYES = [np.array([0.45, 0.35, 0.3]), np.array([-0.25, 0.45, 0.5]), np.array([0.1, -0.5, -0.2])]


def compare_with_open3d(sdf: torch.Tensor, mesh: trimesh.Trimesh, config: RenderConfig):
    renderer = MeshRenderer(metric_mesh(mesh))
    voxel = CUBE.side / sdf.shape[0]
    for eye in EYES:
        c2w = look_at(CUBE.center + eye, CUBE.center)
        ref = renderer.render(INTRINSICS, c2w)
        out = render(SDFField(sdf), camera_in_cube(INTRINSICS, c2w, CUBE), config)
        sil = out.silhouette.numpy() > 0.5
        iou = (sil & ref.mask).sum() / (sil | ref.mask).sum()
        # Depth is compared away from the reference's depth edges: a ray grazing one surface
        # before hitting another gathers some opacity early, and the expected depth of a soft
        # renderer mixes the two there (a few pixels per edge, by design).
        smooth = ndimage.maximum_filter(ref.depth, 3) - ndimage.minimum_filter(ref.depth, 3)
        both = sil & ndimage.binary_erosion(ref.mask, iterations=1) & (smooth < 2 * voxel)
        err = np.abs(out.depth.numpy()[both] * CUBE.side - ref.depth[both])
        yield iou, err.mean() / voxel, ref.mask.sum()


@pytest.mark.parametrize(
    "name, sdf, mesh",
    [
        (
            "sphere",
            sphere_sdf(),
            trimesh.creation.icosphere(subdivisions=5, radius=0.28).apply_translation(
                [0.05, -0.03, 0.02]
            ),
        ),
        ("box", box_sdf(), trimesh.creation.box(extents=[0.6, 0.4, 0.3])),
    ],
)
def test_matches_open3d_ray_casting(name, sdf, mesh):
    for iou, depth_err_voxels, area in compare_with_open3d(sdf, mesh, RenderConfig()):
        assert area > 500, "the object must cover the image enough for IoU to mean something"
        assert iou > 0.95, f"{name}: silhouette IoU {iou:.3f}"
        # Measured 0.03 (sphere) to 0.26 (box: its sharp edges are what trilinear loses).
        assert depth_err_voxels < 0.35, f"{name}: mean depth error {depth_err_voxels:.2f} voxels"


def test_matches_open3d_on_a_non_convex_mesh_sdf():
    """A torus (a hole, silhouette concavities), its SDF computed by Open3D, not by formula."""
    legacy = o3d.geometry.TriangleMesh.create_torus(torus_radius=0.25, tube_radius=0.09)
    legacy.rotate(legacy.get_rotation_matrix_from_xyz((0.6, 0.0, 0.3)), center=(0, 0, 0))
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(legacy))
    points = centres(48).reshape(-1, 3).numpy()
    sdf = scene.compute_signed_distance(o3d.core.Tensor(points)).numpy().reshape(48, 48, 48)
    mesh = trimesh.Trimesh(np.asarray(legacy.vertices), np.asarray(legacy.triangles))
    for iou, depth_err_voxels, _ in compare_with_open3d(
        torch.from_numpy(sdf), mesh, RenderConfig()
    ):
        assert iou > 0.95
        assert depth_err_voxels < 0.2  # measured 0.03-0.04 voxel


@pytest.mark.parametrize("sdf", [sphere_sdf(), box_sdf()], ids=["sphere", "box"])
def test_surface_window_matches_sampling_the_whole_ray(sdf):
    """The differentiable pass samples only a window around the surface; sampling the whole ray
    densely (a window wider than the cube) gives nearly the same images."""
    cam = camera_in_cube(INTRINSICS, look_at(CUBE.center + EYES[1], CUBE.center), CUBE)
    windowed = render(SDFField(sdf), cam)
    whole = render(
        SDFField(sdf), cam, RenderConfig(coarse_samples=8, samples=512, window_voxels=200)
    )
    diff = (windowed.silhouette - whole.silhouette).abs()
    assert diff.mean() < 0.005 and diff.max() < 0.2  # measured 0.002 and 0.14 (box edges)
    both = (windowed.silhouette > 0.5) & (whole.silhouette > 0.5)
    assert (windowed.depth - whole.depth)[both].abs().mean() * RES < 0.15  # voxels; 0.07


def test_views_rendered_together_equal_views_rendered_alone():
    field = SDFField(sphere_sdf(), torch.rand(3, RES, RES, RES))
    small = Intrinsics(fx=60.0, fy=60.0, cx=19.5, cy=14.5, width=40, height=30)
    cams = [camera_in_cube(INTRINSICS, look_at(CUBE.center + e, CUBE.center), CUBE) for e in EYES]
    cams.append(camera_in_cube(small, look_at(CUBE.center + EYES[0], CUBE.center), CUBE))
    for together, cam in zip(render_views(field, cams), cams, strict=True):
        alone = render(field, cam)
        assert together.silhouette.shape == (cam.height, cam.width)
        for a, b in [(together.silhouette, alone.silhouette), (together.depth, alone.depth)]:
            assert torch.allclose(a, b, atol=1e-6)
        assert torch.allclose(together.colour, alone.colour, atol=1e-6)


def test_object_filling_the_cube_turns_opaque_where_rays_enter():
    """Outside the cube is empty: a field negative everywhere renders as the cube itself."""
    out = render(
        SDFField(-torch.ones(8, 8, 8)),
        camera_in_cube(INTRINSICS, look_at(CUBE.center + EYES[0], CUBE.center), CUBE),
    )
    ref = MeshRenderer(metric_mesh(trimesh.creation.box(extents=[1, 1, 1]))).render(
        INTRINSICS, look_at(CUBE.center + EYES[0], CUBE.center)
    )
    sil = out.silhouette.numpy() > 0.5
    assert (sil & ref.mask).sum() / (sil | ref.mask).sum() > 0.97
    err = np.abs(out.depth.numpy() * CUBE.side - ref.depth)[sil & ref.mask]
    assert err.mean() < 1e-3


def test_nothing_in_view_renders_background():
    away = look_at(CUBE.center + EYES[0], CUBE.center + 2 * EYES[0])  # looking away
    field = SDFField(sphere_sdf(res=16), colour=torch.ones(3, 16, 16, 16))
    out = render(
        field, camera_in_cube(INTRINSICS, away, CUBE), RenderConfig(background=(0.2, 0.3, 0.4))
    )
    assert out.silhouette.abs().max() == 0
    assert torch.allclose(
        out.colour, torch.tensor([0.2, 0.3, 0.4])[:, None, None].expand(3, 96, 96)
    )


def test_colour_is_the_fields_colour_composited_over_the_background():
    colour = torch.tensor([0.9, 0.5, 0.1])[:, None, None, None].expand(3, RES, RES, RES)
    cam = camera_in_cube(INTRINSICS, look_at(CUBE.center + EYES[1], CUBE.center), CUBE)
    out = render(
        SDFField(sphere_sdf(), colour.clone()), cam, RenderConfig(background=(0.0, 0.0, 1.0))
    )
    expected = colour[:, 0, 0, 0, None, None] * out.silhouette + torch.tensor([0.0, 0.0, 1.0])[
        :, None, None
    ] * (1 - out.silhouette)
    assert torch.allclose(out.colour, expected, atol=1e-5)
    inside = out.silhouette > 0.99
    assert inside.sum() > 500


def test_resized_camera_keeps_pixel_centres():
    """Half the resolution: the silhouette's centroid maps by u -> (u + 0.5) / 2 - 0.5."""
    c2w = look_at(CUBE.center + EYES[0], CUBE.center)
    sdf = sphere_sdf()

    def centroid(size: int) -> np.ndarray:
        s = render(SDFField(sdf), camera_in_cube(INTRINSICS, c2w, CUBE, size, size)).silhouette
        v, u = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        return np.array([(s * u).sum() / s.sum(), (s * v).sum() / s.sum()])

    full, half = centroid(96), centroid(48)
    assert np.abs((full + 0.5) / 2 - 0.5 - half).max() < 0.05


def test_gradients_are_finite_and_match_finite_differences():
    g = torch.Generator().manual_seed(0)
    res = 6
    sdf = (
        sphere_sdf(radius=0.3, res=res) + 0.02 * torch.randn(res, res, res, generator=g)
    ).double()
    colour = torch.rand(3, res, res, res, generator=g, dtype=torch.float64)
    k = Intrinsics(fx=12.0, fy=12.0, cx=3.5, cy=3.5, width=8, height=8)
    cam = camera_in_cube(
        k, look_at(np.array([0.6, 0.7, 0.5]), np.zeros(3)), TargetCube(np.zeros(3), 1.0)
    )
    cam = Camera(**{**cam.__dict__, "camera_to_cube": cam.camera_to_cube.double()})
    # A soft field so every voxel near the surface has a visible effect at this tiny size.
    config = RenderConfig(samples=12, softness_voxels=1.5)

    def f(s: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        out = render(SDFField(s, c), cam, config)
        return torch.cat([out.silhouette.flatten(), out.depth.flatten(), out.colour.flatten()])

    inputs = (sdf.requires_grad_(True), colour.requires_grad_(True))
    # fast_mode compares random projections of the Jacobian: as strict, 100x cheaper here.
    assert torch.autograd.gradcheck(f, inputs, fast_mode=True)


@pytest.mark.parametrize("softness", [0.1, 0.5, 2.0])
def test_gradients_finite_for_sharp_and_soft_fields(softness):
    sdf = (sphere_sdf() * 3).requires_grad_(True)  # steep: Phi underflows inside
    colour = torch.rand(3, RES, RES, RES).requires_grad_(True)
    cam = camera_in_cube(INTRINSICS, look_at(CUBE.center + EYES[2], CUBE.center), CUBE)
    out = render(SDFField(sdf, colour), cam, RenderConfig(softness_voxels=softness))
    (out.silhouette.sum() + out.depth.sum() + out.colour.sum()).backward()
    assert torch.isfinite(sdf.grad).all() and torch.isfinite(colour.grad).all()
    assert sdf.grad.abs().sum() > 0 and colour.grad.abs().sum() > 0


# --- losses ---------------------------------------------------------------------------------


def test_ssim_matches_skimage():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(3, 40, 50, generator=g)
    b = (a + 0.3 * torch.rand(3, 40, 50, generator=g)).clamp(0, 1)
    ref = structural_similarity(
        a.permute(1, 2, 0).numpy(),
        b.permute(1, 2, 0).numpy(),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
        channel_axis=2,
    )
    assert abs(ssim(a, b).item() - ref) < 1e-5
    assert abs(ssim(a, a).item() - 1.0) < 1e-6


def test_silhouette_loss_is_one_minus_iou_for_binary_masks():
    a = torch.zeros(20, 20)
    b = torch.zeros(20, 20)
    a[2:12, 2:12] = 1  # 100 px
    b[6:16, 6:16] = 1  # 100 px, overlap 36
    assert silhouette_loss(a, b).item() == pytest.approx(1 - 36 / 164)
    assert silhouette_loss(a, a).item() == 0.0


def test_depth_loss_is_masked_scaled_and_clamped():
    target = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    depth = torch.tensor([[5.0, 1.01], [1.0, 3.0]])  # first pixel has no measurement
    assert depth_loss(depth, target, scale=0.05).item() == pytest.approx((0.2 + 0 + 1) / 3)


def test_view_from_frame_and_losses_on_a_rendered_frame():
    """A frame rendered by Open3D, reduced to 48 px, against the analytic SDF: losses near 0;
    against a shifted sphere: clearly larger in every term."""
    mesh = trimesh.creation.icosphere(subdivisions=5, radius=0.28).apply_translation(
        [0.05, -0.03, 0.02]
    )
    mesh.visual.vertex_colors = np.array([200, 120, 40, 255], dtype=np.uint8)
    k = Intrinsics(fx=360.0, fy=360.0, cx=95.5, cy=95.5, width=192, height=192)
    c2w = look_at(CUBE.center + EYES[0], CUBE.center)
    ref = MeshRenderer(metric_mesh(mesh), ambient=1.0).render(k, c2w)
    frame = Frame(rgb=ref.rgb, intrinsics=k, camera_to_world=c2w, depth=ref.depth, mask=ref.mask)
    view = view_from_frame(frame, CUBE, size=48)
    assert view.camera.width == 48 and view.mask.shape == (48, 48)
    colour = torch.tensor([200 / 255, 120 / 255, 40 / 255])[:, None, None, None].expand(
        3, RES, RES, RES
    )
    good = view_loss(render(SDFField(sphere_sdf(), colour), view.camera), view)
    bad = view_loss(
        render(SDFField(sphere_sdf(centre=(0.15, 0.05, 0.02)), colour), view.camera), view
    )
    assert good.silhouette < 0.05 and good.depth < 0.05 and good.colour < 0.1
    assert bad.silhouette > 3 * good.silhouette and bad.depth > 3 * good.depth
    assert bad.colour > good.colour
    assert bad.total == pytest.approx((bad.silhouette + bad.depth + bad.colour).item())


def test_view_loss_terms_absent_without_targets():
    cam = camera_in_cube(INTRINSICS, look_at(CUBE.center + EYES[0], CUBE.center), CUBE)
    rendering = render(SDFField(sphere_sdf()), cam)
    loss = view_loss(rendering, View(camera=cam), LossConfig())
    assert loss.total.item() == 0.0


def test_field_from_sparse_blocks():
    """The fine stage's output (k^3 sub-voxel samples per active coarse voxel) assembled into a
    dense field: the blocks land where they belong, the rest takes the fill, the render matches
    the dense field's and gradients reach the blocks."""
    coarse, k = 8, 6
    dense = sphere_sdf(res=coarse * k)
    colour = torch.rand(3, coarse * k, coarse * k, coarse * k)
    both = torch.cat([dense[None], colour])
    # Active: coarse voxels the surface passes through (|SDF| at the centre < the half diagonal).
    centre_sdf = dense[k // 2 :: k, k // 2 :: k, k // 2 :: k]
    coords = torch.nonzero(centre_sdf.abs() < 0.9 / coarse)
    blocks = torch.stack(
        [
            both[:, i * k : (i + 1) * k, j * k : (j + 1) * k, m * k : (m + 1) * k]
            for i, j, m in coords
        ]
    ).requires_grad_(True)
    inside = torch.where(centre_sdf < 0, -1.0 / coarse, 1.0 / coarse)
    field = SDFField.from_blocks(coords, blocks, coarse, inside)
    active = torch.zeros(coarse, coarse, coarse, dtype=torch.bool)
    active[tuple(coords.T)] = True
    active_fine = active.repeat_interleave(k, 0).repeat_interleave(k, 1).repeat_interleave(k, 2)
    assert torch.equal(field.sdf[active_fine], dense[active_fine])
    assert torch.equal(field.colour[:, active_fine], colour[:, active_fine])
    assert set(field.sdf[~active_fine].unique().tolist()) == {-1.0 / coarse, 1.0 / coarse}

    cam = camera_in_cube(INTRINSICS, look_at(CUBE.center + EYES[0], CUBE.center), CUBE)
    a = render(field, cam)
    b = render(SDFField(dense, colour), cam)
    sil_a, sil_b = a.silhouette > 0.5, b.silhouette > 0.5
    assert (sil_a & sil_b).sum() / (sil_a | sil_b).sum() > 0.99
    (a.silhouette.sum() + a.colour.sum()).backward()
    assert torch.isfinite(blocks.grad).all() and blocks.grad.abs().sum() > 0


def test_view_from_frame_without_mask_keeps_depth_inside_the_cube_only():
    """No mask: no silhouette or colour target, and depth only where it lands in the cube
    (the table behind the object is not the object)."""
    mesh = metric_mesh(trimesh.creation.icosphere(subdivisions=4, radius=0.28))
    floor = trimesh.creation.box(extents=[2.0, 2.0, 0.01]).apply_translation(
        [CUBE.center[0], CUBE.center[1], CUBE.center[2] - 0.4]
    )
    k = Intrinsics(fx=120.0, fy=120.0, cx=47.5, cy=47.5, width=96, height=96)
    c2w = look_at(CUBE.center + EYES[0], CUBE.center)
    ref = MeshRenderer(trimesh.util.concatenate([mesh, floor])).render(k, c2w)
    assert (ref.depth > 0).mean() > 0.5  # the floor fills much of the background
    frame = Frame(rgb=ref.rgb, intrinsics=k, camera_to_world=c2w, depth=ref.depth)
    view = view_from_frame(frame, CUBE, size=48)
    assert view.mask is None and view.colour is None
    on_sphere = render(SDFField(sphere_sdf(centre=(0, 0, 0))), view.camera).silhouette > 0.5
    kept = view.depth > 0
    # Target pixels whose block straddles the sphere's outline are dropped by design (0.86).
    assert (kept & on_sphere).sum() > 0.75 * on_sphere.sum()
    assert (kept & ~on_sphere).sum() < 0.05 * on_sphere.sum()


def textured_box_views(size: int = 64) -> list[View]:
    """Three views, 25 degrees apart, of a box with a random colour per vertex of a fine mesh
    (a texture at about a pixel's scale), rendered by Open3D at 192 px."""
    half = (0.3, 0.2, 0.15)
    box = trimesh.creation.box(extents=[2 * h for h in half])
    vertices, faces = trimesh.remesh.subdivide_to_size(box.vertices, box.faces, max_edge=0.025)
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    rng = np.random.default_rng(3)
    colours = rng.integers(0, 256, size=(len(vertices), 3))
    mesh.visual.vertex_colors = np.concatenate([colours, np.full((len(vertices), 1), 255)], 1)
    renderer = MeshRenderer(metric_mesh(mesh), ambient=1.0)
    k = Intrinsics(fx=300.0, fy=300.0, cx=95.5, cy=95.5, width=192, height=192)
    views = []
    for angle in (-25.0, 0.0, 25.0):
        turn = trimesh.transformations.rotation_matrix(np.radians(angle), [0, 0, 1])[:3, :3]
        c2w = look_at(CUBE.center + turn @ np.array([0.5, 0.3, 0.35]), CUBE.center)
        ref = renderer.render(k, c2w)
        frame = Frame(rgb=ref.rgb, intrinsics=k, camera_to_world=c2w, mask=ref.mask)
        views.append(view_from_frame(frame, CUBE, size=size))
    return views


def test_photo_consistency_is_lowest_at_the_true_surface_and_its_gradient_points_there():
    """The box's SDF grown or shrunk by 0.03 cube units (about 2 pixels) warps the other views'
    texture to the wrong pixels: every view's photometric loss is higher than at the true SDF,
    and d loss / d offset pulls the offset back towards 0 from either side."""
    views = textured_box_views()
    cameras = [v.camera for v in views]

    def loss(offset: torch.Tensor) -> torch.Tensor:
        renders = render_views(SDFField(box_sdf() - offset), cameras)
        return photo_consistency(renders, views, LossConfig(photometric=1.0))

    true = loss(torch.tensor(0.0))
    assert (true < 0.4).all()  # not 0: a pixel-scale texture aliases differently per view
    for wrong in (-0.03, 0.03):
        assert (loss(torch.tensor(wrong)) > true + 0.1).all()
        offset = torch.tensor(wrong, requires_grad=True)
        loss(offset).sum().backward()
        assert offset.grad is not None and torch.isfinite(offset.grad)
        assert float(offset.grad) * wrong > 0  # descent moves the offset towards 0


def test_photo_consistency_needs_two_views_with_colour():
    views = textured_box_views()
    renders = render_views(SDFField(box_sdf()), [v.camera for v in views])
    alone = photo_consistency(renders[:1], views[:1])
    assert alone.shape == (1,) and float(alone[0]) == 0.0
    no_colour = [View(camera=v.camera, mask=v.mask) for v in views]
    assert (photo_consistency(renders, no_colour) == 0.0).all()


def test_cropped_view_renders_the_same_object_at_more_pixels():
    """Cut to the mask's box, the camera follows the cut: at full resolution the cropped view
    renders exactly the whole view's pixels in that window; reduced to 64 pixels the object
    covers more of the target than the whole image reduced to 64 does."""
    mesh = trimesh.creation.icosphere(subdivisions=5, radius=0.2)
    k = Intrinsics(fx=800.0, fy=800.0, cx=110.5, cy=80.5, width=256, height=192)
    c2w = look_at(CUBE.center + EYES[0] * 1.6, CUBE.center)
    ref = MeshRenderer(metric_mesh(mesh), ambient=1.0).render(k, c2w)
    frame = Frame(rgb=ref.rgb, intrinsics=k, camera_to_world=c2w, depth=ref.depth, mask=ref.mask)
    field = SDFField(sphere_sdf(centre=(0.0, 0.0, 0.0), radius=0.2))
    whole = view_from_frame(frame, CUBE, size=256)
    cut = crop_to_mask(frame, 0.1)
    cropped = view_from_frame(frame, CUBE, size=256, crop_margin=0.1)
    r0 = round(k.cy - cut.intrinsics.cy)
    c0 = round(k.cx - cut.intrinsics.cx)
    window = (slice(r0, r0 + cut.intrinsics.height), slice(c0, c0 + cut.intrinsics.width))
    assert cut.mask.sum() == frame.mask.sum()  # the whole object is inside the cut
    assert torch.equal(cropped.mask, whole.mask[window])
    a, b = render(field, cropped.camera), render(field, whole.camera)
    assert torch.allclose(a.silhouette, b.silhouette[window], atol=1e-5)
    assert torch.allclose(a.depth, b.depth[window], atol=1e-5)
    small = view_from_frame(frame, CUBE, size=64, crop_margin=0.1)
    assert max(small.camera.width, small.camera.height) == 64
    assert small.mask.mean() > 3 * view_from_frame(frame, CUBE, size=64).mask.mean()


def test_rvc_targets_render_views_with_depth_smaller():
    """rvc_targets: views without depth at rvc_view_size, views with depth at
    rvc_depth_view_size (their surface is the measured TSDF at decode), both cut to the mask."""
    from dataclasses import replace

    from rvg_ros.rvg.generate import FineConfig, rvc_targets

    mesh = trimesh.creation.icosphere(subdivisions=4, radius=0.2)
    k = Intrinsics(fx=800.0, fy=800.0, cx=110.5, cy=80.5, width=256, height=192)
    c2w = look_at(CUBE.center + EYES[0] * 1.6, CUBE.center)
    ref = MeshRenderer(metric_mesh(mesh), ambient=1.0).render(k, c2w)
    rgbd = Frame(rgb=ref.rgb, intrinsics=k, camera_to_world=c2w, depth=ref.depth, mask=ref.mask)
    rgb = replace(rgbd, depth=None)
    config = FineConfig(rvc=True, rvc_view_size=80, rvc_depth_view_size=48)
    _, (with_depth, without) = rvc_targets(config, CUBE, [rgbd, rgb], "cpu")
    assert max(with_depth.camera.width, with_depth.camera.height) == 48
    assert max(without.camera.width, without.camera.height) == 80
    assert with_depth.depth is not None and without.depth is None


def test_rvc_with_the_photometric_term_alone_pulls_a_grown_box_back():
    """A "model" that believes the box is 0.03 cube units larger than the textured views show,
    sampled with RVC whose only term is the photometric one (no silhouette, depth or colour of
    the field) at the paper's lambda: every sample ends closer to the true size than plain
    sampling's, and the opposite sign of lambda pushes every one further off."""
    from rvg_ros.rvg.flow import sample_flow
    from rvg_ros.rvg.rvc import RVCConfig, sample_flow_rvc

    views = textured_box_views()
    believed, spread = 0.03, 0.01

    def velocity(x: torch.Tensor, t: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        # The exact rectified-flow velocity of data N(believed, spread^2).
        tt = t.view(-1, 1)
        c = (1 - tt) * spread**2 / ((1 - tt) ** 2 * spread**2 + tt**2)
        x0 = believed + c * (x - (1 - tt) * believed)
        return (x - (1 - tt) * x0) / tt - x0

    def decode(x0: torch.Tensor) -> list[SDFField]:
        return [SDFField(box_sdf() - x[0]) for x in x0]

    only_photo = LossConfig(silhouette=0.0, depth=0.0, colour=0.0, photometric=1.0)

    def rvc(strength: float) -> tuple[torch.Tensor, list]:
        g = torch.Generator().manual_seed(0)
        config = RVCConfig(strength=strength, loss=only_photo)
        return sample_flow_rvc(velocity, (3, 1), 10, 1.0, g, decode, views, config)

    plain = sample_flow(velocity, (3, 1), 10, 1.0, torch.Generator().manual_seed(0))
    pulled, steps = rvc(0.1)
    assert len(steps) == 4 and all(bool(s.kept.all()) for s in steps)  # t = 0.4 ... 0.1
    # Measured: 0.031 / 0.030 / 0.028 -> 0.019 / 0.026 / 0.002.
    assert (pulled.abs() < plain.abs() - 0.003).all(), (plain, pulled)
    assert (rvc(-0.1)[0].abs() > plain.abs()).all()


def test_photo_consistency_leaves_out_views_with_depth():
    """With depth a view's surface is measured; only the views without depth get the term."""
    views = textured_box_views()
    renders = render_views(SDFField(box_sdf() - 0.03), [v.camera for v in views])
    without = photo_consistency(renders, views)
    assert (without > 0.1).all()
    measured = [replace(views[0], depth=renders[0].depth.detach()), *views[1:]]
    mixed = photo_consistency(renders, measured)
    assert float(mixed[0]) == 0.0
    assert torch.allclose(mixed[1:], without[1:])  # the measured view's image still counts
