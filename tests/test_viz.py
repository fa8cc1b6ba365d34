"""Headless renderer: z-buffer order, projection geometry, auto view, palettes, panels, PNG output."""

import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from geopurify.viz.render import (
    BACKGROUND,
    IGNORE_COLOR,
    auto_view,
    ceiling_mask,
    class_colors,
    colorize_labels,
    heat_colors,
    heat_panel,
    project_view,
    render_points,
    side_by_side,
    zbuffer_splat,
)

SCANNET = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "scannet" / "scene0000_00"
TOP = {"eye": (0.0, 0.0, 5.0), "target": (0.0, 0.0, 0.0), "up": (0.0, 1.0, 0.0), "fov": 60.0}
RED, BLUE = (255, 0, 0), (0, 0, 255)


def _plane(half: float, z: float, step: float = 0.01) -> np.ndarray:
    g = np.arange(-half, half + 1e-9, step)
    x, y = np.meshgrid(g, g)
    return np.stack([x.ravel(), y.ravel(), np.full(x.size, z)], 1)


@pytest.mark.parametrize("red_first", [True, False])
def test_nearer_red_cloud_hides_blue_one(tmp_path, red_first):
    red, blue = _plane(0.5, 1.0), _plane(1.5, 0.0)  # red is 1 m nearer the camera at z = 5
    parts = [(red, RED), (blue, BLUE)] if red_first else [(blue, BLUE), (red, RED)]
    xyz = np.concatenate([p for p, _ in parts])
    colors = np.concatenate([np.tile(np.array(c, np.uint8), (len(p), 1)) for p, c in parts])
    out = tmp_path / "sub" / "twoplanes.png"
    img = render_points(xyz, colors, out, view=TOP, size=(200, 160), point_px=3)
    assert img.shape == (160, 200, 3) and img.dtype == np.uint8
    assert tuple(img[80, 100]) == RED  # centre: both planes project here, red is in front
    # focal 80 / tan(30 deg) = 138.6 px: red spans +-0.5/4 * f = +-17 px, blue +-1.5/5 * f = +-41 px
    assert (img[66:94, 86:114] == RED).all()
    assert (img[80, 100 + 20 : 100 + 40] == BLUE).all()  # outside the red square only blue remains
    assert (img[80, 100 + 44 :] == BACKGROUND).all()
    assert tuple(img[2, 2]) == BACKGROUND  # blue plane (+-1.5 m at 5 m) does not reach the corner
    np.testing.assert_array_equal(np.asarray(Image.open(out).convert("RGB")), img)
    assert sorted(p.name for p in out.parent.iterdir()) == ["twoplanes.png"]  # no temp file left


def test_zbuffer_equals_per_pixel_loop():
    rng = np.random.default_rng(1)
    xyz = rng.uniform(-1, 1, size=(400, 3))
    size = (24, 18)
    for px in (1, 2, 3):
        depth, index = zbuffer_splat(xyz, TOP, size, point_px=px, chunk=97)  # several chunks
        # the definition: project each point, paint its square, keep the nearest (lowest index on ties)
        f = (size[1] / 2) / np.tan(np.radians(60.0) / 2)
        best = {}
        offs = [o - (px - 1) // 2 for o in range(px)]
        for i, (x, y, z) in enumerate(xyz):
            cx, cy, cz = x, -y, 5.0 - z  # TOP camera: right = +x, down = -y, forward = -z
            u, v = int(np.floor(f * cx / cz + size[0] / 2)), int(np.floor(f * cy / cz + size[1] / 2))
            for du, dv in itertools.product(offs, offs):
                p = (v + dv, u + du)
                if 0 <= p[0] < size[1] and 0 <= p[1] < size[0] and (p not in best or cz < best[p][0]):
                    best[p] = (cz, i)
        expect = np.full((size[1], size[0]), -1)
        for (r, c), (_, i) in best.items():
            expect[r, c] = i
        np.testing.assert_array_equal(index, expect)
        assert np.isinf(depth[index < 0]).all()
        np.testing.assert_allclose(depth[index >= 0], 5.0 - xyz[index[index >= 0], 2], rtol=1e-6)


def test_projection_orientation():
    # +x to the right, +y up in a top view; the target at the image centre
    xyz = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    _, index = zbuffer_splat(xyz, TOP, (100, 100), point_px=1)
    rows, cols = np.nonzero(index >= 0)
    where = {int(index[r, c]): (r, c) for r, c in zip(rows, cols)}
    assert where[0] == (50, 50)
    assert where[1][0] == 50 and where[1][1] > 50
    assert where[2][1] == 50 and where[2][0] < 50
    with pytest.raises(ValueError, match="eye"):
        zbuffer_splat(xyz, {"target": (0, 0, 0)}, (10, 10))
    with pytest.raises(ValueError, match="parallel"):
        zbuffer_splat(xyz, {"eye": (0, 0, 5), "target": (0, 0, 0)}, (10, 10))  # default up = +z


def test_auto_view_hides_ceiling_and_frames_room():
    floor = _plane(2.0, 0.0, 0.05)
    ceiling = _plane(2.0, 3.0, 0.05)
    post = np.stack([np.zeros(60), np.zeros(60), np.linspace(0, 1.5, 60)], 1)
    xyz = np.concatenate([floor, ceiling, post])
    colors = np.concatenate(
        [
            np.tile(np.uint8([0, 255, 0]), (len(floor), 1)),
            np.tile(np.uint8(RED), (len(ceiling), 1)),
            np.tile(np.uint8(BLUE), (len(post), 1)),
        ]
    )
    img = render_points(xyz, colors, size=(160, 120))
    pix = {tuple(c) for c in img.reshape(-1, 3)}
    assert RED not in pix and (0, 255, 0) in pix and BLUE in pix
    # with labels, the class named "ceiling" is what gets hidden (here: the post, to tell the rules apart)
    labels = np.concatenate([np.zeros(len(floor)), np.ones(len(ceiling)), np.full(len(post), 2)]).astype(int)
    img2 = render_points(xyz, colors, size=(160, 120), labels=labels, names=["floor", "wall", "ceiling"])
    pix2 = {tuple(c) for c in img2.reshape(-1, 3)}
    assert BLUE not in pix2 and RED in pix2
    # without a ceiling class the height rule applies
    assert ceiling_mask(xyz, labels, ["floor", "wall", "chair"]).sum() == len(ceiling)


@pytest.mark.skipif(not SCANNET.exists(), reason="shared ScanNet test data not present")
def test_real_scan_auto_view_keeps_every_point_in_frame(tmp_path):
    pts = np.load(SCANNET / "points_xyzrgb.npy")
    xyz, rgb = pts[:, :3], pts[:, 3:].astype(np.uint8)
    hide = ceiling_mask(xyz)
    assert 0 < hide.mean() < 0.3
    size = (320, 240)
    view = auto_view(xyz[~hide], size)
    assert view["eye"][2] > xyz[:, 2].max()  # looks down from above the room
    uv, z = project_view(xyz[~hide], view, size)
    assert (z > 0).all()  # every point in front of the camera
    assert (uv >= 0).all() and (uv[:, 0] < size[0]).all() and (uv[:, 1] < size[1]).all()  # none cropped
    img = render_points(xyz, rgb, tmp_path / "scan.png", size=size)
    covered = (img != np.array(BACKGROUND, np.uint8)).any(-1)
    assert 0.15 < covered.mean() < 0.95
    assert not covered[0].any() and not covered[-1].any()  # the room is framed with a margin
    assert not covered[:, 0].any() and not covered[:, -1].any()
    assert (tmp_path / "scan.png").stat().st_size > 1000


def test_palettes():
    cols = class_colors(200)
    assert cols.shape == (200, 3) and cols.dtype == np.uint8
    assert len({tuple(c) for c in cols}) == 200
    assert IGNORE_COLOR not in {tuple(c) for c in cols}
    np.testing.assert_array_equal(class_colors(20), cols[:20])
    lab = colorize_labels(np.array([0, -1, 19]), 20)
    assert tuple(lab[1]) == IGNORE_COLOR and tuple(lab[2]) == tuple(cols[19])
    with pytest.raises(ValueError):
        colorize_labels(np.array([20]), 20)
    h = heat_colors(np.array([0.0, 0.5, 1.0, np.nan, 7.0]))
    assert h[0, 2] > h[0, 0] and h[2, 0] > h[2, 2]  # cold is blue, hot is red
    assert tuple(h[3]) == IGNORE_COLOR and tuple(h[4]) == tuple(h[2])  # NaN grey, clipped above


def test_side_by_side_layout_and_legend(tmp_path):
    a = np.zeros((50, 60, 3), np.uint8)
    b = np.full((40, 30, 3), 200, np.uint8)
    legend = [("chair", (10, 200, 30)), ("table", (200, 10, 30))]
    out = side_by_side([a, b], ["left", "right"], legend=legend, out_png=tmp_path / "p.png")
    pad = 8
    assert out.shape[1] == pad + 60 + pad + 30 + pad
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "p.png").convert("RGB")), out)
    assert (out == a[0, 0]).all(-1).sum() >= 50 * 60  # the black image is pasted whole
    flat = {tuple(c) for c in out.reshape(-1, 3)}
    assert (10, 200, 30) in flat and (200, 10, 30) in flat  # legend swatches
    title_strip = out[: pad + 10]
    assert (title_strip != 255).any()  # titles drawn
    no_legend = side_by_side([a, b], ["left", "right"])
    assert no_legend.shape[0] < out.shape[0]
    with pytest.raises(ValueError):
        side_by_side([a], ["x", "y"])


def test_heat_panel_has_title_picture_and_colour_bar(tmp_path):
    img = np.full((60, 200, 3), 77, np.uint8)
    out = heat_panel(img, '"a place to sleep"', 0.1, 0.3, "relevance", out_png=tmp_path / "h.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "h.png").convert("RGB")), out)
    pad = 8
    assert out.shape[1] == 200 + 2 * pad
    rows = np.flatnonzero((out == 77).all(-1).sum(1) == 200)  # the picture, pasted whole below the title
    assert len(rows) == 60 and rows[0] > pad and (out[: rows[0]] != 255).any()  # a title above it
    ramp = heat_colors(np.linspace(0, 1, 200))
    bar = [y for y in range(rows[-1] + 1, out.shape[0]) if (out[y, pad + 1 : pad + 199] == ramp[1:199]).all()]
    assert bar  # the colour bar: the heat ramp from cold (left) to hot (right)
    assert (out[bar[-1] + 1 :] != 255).any()  # its values printed under it
