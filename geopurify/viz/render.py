"""Headless pictures of coloured point clouds: a numpy z-buffer splatter, palettes, panels.

No display, no OpenGL: points are projected through a pinhole camera and each one paints a
`point_px` x `point_px` square; per pixel the nearest point wins (a z-buffer resolved by sorting,
chunk by chunk so memory stays bounded for 300k-point scenes). The automatic viewpoint looks
down obliquely from above one corner of the scene with the ceiling removed, so the floor plan and
the furniture are visible. Scenes are z-up (ScanNet convention). PNGs are written atomically.
"""

from __future__ import annotations

import colorsys
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from geopurify.io import atomic_path
from geopurify.ops.project import in_bounds

log = logging.getLogger(__name__)

BACKGROUND = (255, 255, 255)
IGNORE_COLOR = (128, 128, 128)  # points whose label is the ignore id
_UP = (0.0, 0.0, 1.0)

# Distinct, saturated-enough colours for the first classes (Tableau-style hues, dark shades first,
# then light ones; grey left out because grey means "ignored"). Further classes get hues spaced by
# the golden ratio.
_BASE = np.array(
    [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (188, 189, 34),
        (23, 190, 207),
        (174, 199, 232),
        (255, 187, 120),
        (152, 223, 138),
        (255, 152, 150),
        (197, 176, 213),
        (196, 156, 148),
        (247, 182, 210),
        (219, 219, 141),
        (158, 218, 229),
        (82, 84, 163),
        (0, 92, 49),
    ],
    dtype=np.uint8,
)


def class_colors(n: int) -> np.ndarray:
    """(n, 3) uint8 palette: one distinct, non-grey colour per class index."""
    if n <= len(_BASE):
        return _BASE[:n].copy()
    extra = []
    for i in range(n - len(_BASE)):
        h = (0.11 + i * 0.6180339887) % 1.0
        s = (0.85, 0.55, 0.70)[i % 3]
        v = (0.95, 0.75, 0.55, 0.85)[(i // 3) % 4]
        extra.append(tuple(round(255 * c) for c in colorsys.hsv_to_rgb(h, s, v)))
    return np.concatenate([_BASE, np.array(extra, dtype=np.uint8)])


def colorize_labels(labels, n: int) -> np.ndarray:
    """(N, 3) uint8 colours of class indices 0..n-1; negative ids (ignore) are grey."""
    labels = np.asarray(labels).astype(np.int64)
    if labels.size and labels.max() >= n:
        raise ValueError(f"label {int(labels.max())} is outside 0..{n - 1}")
    out = np.empty(labels.shape + (3,), np.uint8)
    out[:] = IGNORE_COLOR
    ok = labels >= 0
    out[ok] = class_colors(n)[labels[ok]]
    return out


# heat ramp anchors (value, RGB): dark blue -> blue -> cyan -> yellow -> red -> dark red
_HEAT = np.array(
    [
        (0.0, 0, 0, 128),
        (0.15, 0, 40, 255),
        (0.4, 0, 220, 255),
        (0.65, 255, 235, 0),
        (0.88, 240, 20, 0),
        (1.0, 128, 0, 0),
    ],
    dtype=np.float64,
)


def heat_colors(values, vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """(N, 3) uint8 heat-map colours for per-point relevance; `vmin` -> cold, `vmax` -> hot, NaN grey."""
    v = np.asarray(values, dtype=np.float64)
    t = np.clip((v - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    out = np.stack([np.interp(t, _HEAT[:, 0], _HEAT[:, c]) for c in (1, 2, 3)], axis=-1)
    out[np.isnan(v)] = IGNORE_COLOR
    out = np.rint(out).astype(np.uint8)
    return out


def ceiling_mask(xyz: np.ndarray, labels=None, names: Sequence[str] | None = None, frac: float = 0.15) -> np.ndarray:
    """(N,) bool: points to hide so a view from above sees the room.

    With `labels` (class indices) and `names` holding "ceiling", the points of that class; otherwise
    (no labels, no ceiling class, or none of its points present) the points in the top `frac` of the
    height range.
    """
    if labels is not None and names is not None:
        lowered = [str(s).lower() for s in names]
        if "ceiling" in lowered:
            mask = np.asarray(labels) == lowered.index("ceiling")
            if mask.any():
                return mask
    z = xyz[:, 2]
    lo, hi = float(z.min()), float(z.max())
    return z > hi - frac * (hi - lo)


def auto_view(
    xyz: np.ndarray, size: tuple[int, int] = (640, 480), fov: float = 45.0, elevation: float = 55.0, fill: float = 0.92
) -> dict:
    """An oblique view from above the (min x, min y) corner, framing all of `xyz`.

    `fov` is the vertical field of view and `elevation` the camera's angle above the horizontal, in
    degrees. Starting from a distance at which the bounding sphere fits, the camera is re-aimed so the
    points' projection is centred and moved closer until it spans about `fill` of the frame.
    """
    lo, hi = xyz.min(0).astype(np.float64), xyz.max(0).astype(np.float64)
    target = (lo + hi) / 2
    radius = max(float(np.linalg.norm(hi - lo)) / 2, 1e-3)
    w, h = size
    half_v = math.radians(fov) / 2
    half = min(half_v, math.atan(math.tan(half_v) * w / h))
    dist = radius / math.sin(half)
    horiz = np.array([lo[0] - target[0], lo[1] - target[1]])
    horiz = horiz / np.linalg.norm(horiz) if np.linalg.norm(horiz) > 1e-9 else np.array([-1.0, 0.0])
    el = math.radians(elevation)
    direction = np.array([horiz[0] * math.cos(el), horiz[1] * math.cos(el), math.sin(el)])

    def view_at(t: np.ndarray, d: float) -> dict:
        return {"eye": (t + d * direction).tolist(), "target": t.tolist(), "up": list(_UP), "fov": fov}

    def fits(v: dict) -> bool:
        uv, z = project_view(sample, v, size)
        return bool((z > 0).all() and (uv >= 0).all() and (uv < (w, h)).all())

    sample = xyz[:: max(1, len(xyz) // 20000)].astype(np.float64)
    best = view_at(target, dist)  # the bounding sphere always fits
    for _ in range(6):
        rot, _, focal = _camera(view_at(target, dist), size)
        uv, z = project_view(sample, view_at(target, dist), size)
        if not (z > 0).all():
            break
        span = (uv.max(0) - uv.min(0)) / (w, h)
        shift = (uv.max(0) + uv.min(0)) / 2 - (w / 2, h / 2)  # pixels from the image centre
        target = target + (shift[0] * rot[0] + shift[1] * rot[1]) * dist / focal
        dist = max(dist * max(span) / fill, 1.05 * radius)  # projected size ~ 1 / distance
        if fits(view_at(target, dist)):
            best = view_at(target, dist)
    return best


def _camera(view: Mapping, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, float]:
    """World-to-camera rotation (rows: right, down, forward; OpenCV axes), eye, focal length in pixels."""
    unknown = set(view) - {"eye", "target", "up", "fov"}
    if unknown or "eye" not in view or "target" not in view:
        raise ValueError(f"view needs 'eye' and 'target' (optional 'up', 'fov'); got keys {sorted(view)}")
    eye = np.asarray(view["eye"], np.float64)
    forward = np.asarray(view["target"], np.float64) - eye
    up = np.asarray(view.get("up", _UP), np.float64)
    if np.linalg.norm(forward) < 1e-9:
        raise ValueError("view 'eye' and 'target' coincide")
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-9:
        raise ValueError("view 'up' is parallel to the viewing direction")
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    fov = float(view.get("fov", 45.0))
    if not 0 < fov < 180:
        raise ValueError(f"view 'fov' must be in (0, 180) degrees, got {fov}")
    focal = (size[1] / 2) / math.tan(math.radians(fov) / 2)
    return np.stack([right, down, forward]), eye, focal


def project_view(xyz: np.ndarray, view: Mapping, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(uv (N, 2) float64 pixel coordinates (col, row; pixel k spans [k, k+1)), z (N,) depth along the view)."""
    rot, eye, focal = _camera(view, size)
    cam = (np.asarray(xyz, np.float64) - eye) @ rot.T
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = focal * cam[:, :2] / cam[:, 2:3] + np.array([size[0] / 2, size[1] / 2])
    return uv, cam[:, 2]


def zbuffer_splat(
    xyz: np.ndarray, view: Mapping, size: tuple[int, int], point_px: int = 2, chunk: int = 200_000
) -> tuple[np.ndarray, np.ndarray]:
    """(depth (H, W) float32, inf = empty; index (H, W) int64, -1 = empty) of the nearest point per pixel.

    Each point covers a `point_px`-wide square around its pixel. Ties go to the lower point index.
    """
    w, h = size
    offs = np.arange(point_px) - (point_px - 1) // 2
    du, dv = (a.ravel() for a in np.meshgrid(offs, offs))
    depth = np.full(h * w, np.inf, np.float32)
    index = np.full(h * w, -1, np.int64)
    for s in range(0, xyz.shape[0], chunk):
        uv, z = project_view(xyz[s : s + chunk], view, size)
        front = np.flatnonzero(z > 1e-6)
        u = np.floor(uv[front, 0]).astype(np.int64)
        v = np.floor(uv[front, 1]).astype(np.int64)
        uu, vv = (u[:, None] + du).ravel(), (v[:, None] + dv).ravel()
        zz = np.repeat(z[front].astype(np.float32), du.size)
        ii = np.repeat(front + s, du.size)
        ok = in_bounds(uu, vv, (h, w))
        pix, zz, ii = vv[ok] * w + uu[ok], zz[ok], ii[ok]
        order = np.lexsort((ii, zz, pix))  # by pixel, then depth, then index
        pix, zz, ii = pix[order], zz[order], ii[order]
        first = np.ones(pix.size, bool)
        first[1:] = pix[1:] != pix[:-1]
        pix, zz, ii = pix[first], zz[first], ii[first]
        closer = zz < depth[pix]
        depth[pix[closer]] = zz[closer]
        index[pix[closer]] = ii[closer]
    return depth.reshape(h, w), index.reshape(h, w)


def auto_point_px(xyz: np.ndarray, view: Mapping, size: tuple[int, int], max_px: int = 12) -> int:
    """A splat size that closes the gaps between neighbouring points: ~3x the mean pixel spacing.

    The spacing is estimated as if the points covered half of the box their projection spans.
    """
    uv, z = project_view(xyz, view, size)
    uv = uv[(z > 0) & in_bounds(uv[:, 0], uv[:, 1], (size[1], size[0]))]
    if len(uv) < 2:
        return 1
    area = float(np.prod(uv.max(0) - uv.min(0)))
    spacing = math.sqrt(0.5 * area / len(uv))
    return int(min(max_px, max(1, math.ceil(3 * spacing))))


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Write an (H, W, 3) uint8 image as PNG, atomically."""
    from PIL import Image

    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(tmp, format="PNG")
    return path


def render_points(
    xyz,
    colors,
    out_png: str | Path | None = None,
    view: str | Mapping = "auto",
    size: tuple[int, int] = (640, 480),
    point_px: int | None = None,
    labels=None,
    names: Sequence[str] | None = None,
    hide=None,
    background=BACKGROUND,
) -> np.ndarray:
    """(H, W, 3) uint8 picture of points `xyz` (N, 3) painted with `colors` (N, 3) uint8.

    view: "auto" (see `auto_view`; hides the ceiling via `ceiling_mask(xyz, labels, names)`) or a dict
    with eye, target, up (default +z) and fov (vertical, degrees). `hide`: optional (N,) bool of
    points not to draw (replaces the automatic ceiling removal). `size` = (W, H). `point_px`: side of
    the square each point paints (None: from the point density, see `auto_point_px`). Saved to
    `out_png` when given.
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    colors = np.asarray(colors)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or xyz.shape[0] == 0:
        raise ValueError(f"points must be a non-empty (N, 3) array, got {xyz.shape}")
    if colors.shape != xyz.shape or colors.dtype != np.uint8:
        raise ValueError(f"colors must be uint8 {xyz.shape}, got {colors.dtype} {colors.shape}")
    if point_px is not None and point_px < 1:
        raise ValueError(f"point_px must be >= 1, got {point_px}")
    size = (int(size[0]), int(size[1]))
    if hide is None and isinstance(view, str):
        hide = ceiling_mask(xyz, labels, names)
    keep = np.ones(len(xyz), bool) if hide is None else ~np.asarray(hide, bool)
    if not keep.any():
        keep[:] = True  # nothing would remain: draw everything rather than a blank picture
    idx = np.flatnonzero(keep)
    if isinstance(view, str):
        if view != "auto":
            raise ValueError(f"view must be 'auto' or a dict, got {view!r}")
        view = auto_view(xyz[idx], size)
    if point_px is None:
        point_px = auto_point_px(xyz[idx], view, size)
    _, index = zbuffer_splat(xyz[idx], view, size, point_px)
    image = np.empty((size[1], size[0], 3), np.uint8)
    image[:] = background
    hit = index >= 0
    image[hit] = colors[idx[index[hit]]]
    log.debug("rendered %d of %d points into %dx%d, %d pixels covered", idx.size, len(xyz), *size, int(hit.sum()))
    if out_png is not None:
        save_png(out_png, image)
    return image


def _font(size: int = 14):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def side_by_side(
    images: Sequence[np.ndarray],
    titles: Sequence[str],
    legend=None,
    out_png: str | Path | None = None,
    pad: int = 8,
    background=BACKGROUND,
) -> np.ndarray:
    """Images in a row, each under its title, with an optional class legend below.

    legend: a sequence of (name, (r, g, b)) or a mapping name -> colour; drawn as swatches that
    wrap onto as many rows as the width needs. Returns (H, W, 3) uint8; saved to `out_png` if given.
    """
    from PIL import Image, ImageDraw

    if len(images) == 0 or len(images) != len(titles):
        raise ValueError(f"need one title per image, got {len(images)} images and {len(titles)} titles")
    font = _font(14)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_wh(s: str) -> tuple[int, int]:
        x0, y0, x1, y1 = probe.textbbox((0, 0), s, font=font)
        return x1 - x0, y1 - y0

    line_h = text_wh("Ag")[1] + 2
    title_h = line_h + 2 * pad
    img_h = max(im.shape[0] for im in images)
    width = pad + sum(im.shape[1] + pad for im in images)
    items = list(legend.items()) if isinstance(legend, Mapping) else list(legend or [])
    swatch = line_h
    rows: list[list[tuple[int, str, tuple]]] = []  # (x, name, colour)
    x = pad
    for name, col in items:
        w = swatch + 4 + text_wh(str(name))[0] + 2 * pad
        if not rows or x + w > width:
            rows.append([])
            x = pad
        rows[-1].append((x, str(name), tuple(int(c) for c in col)))
        x += w
    legend_h = len(rows) * (line_h + pad) + (pad if rows else 0)
    canvas = Image.new("RGB", (width, title_h + img_h + pad + legend_h), tuple(background))
    draw = ImageDraw.Draw(canvas)
    x = pad
    for im, title in zip(images, titles):
        im = np.ascontiguousarray(im, dtype=np.uint8)
        tw = text_wh(str(title))[0]
        draw.text((x + max(0, (im.shape[1] - tw) // 2), pad), str(title), fill=(0, 0, 0), font=font)
        canvas.paste(Image.fromarray(im), (x, title_h + (img_h - im.shape[0]) // 2))
        x += im.shape[1] + pad
    y = title_h + img_h + pad
    for row in rows:
        for x, name, col in row:
            draw.rectangle([x, y, x + swatch - 1, y + swatch - 1], fill=col, outline=(0, 0, 0))
            draw.text((x + swatch + 4, y), name, fill=(0, 0, 0), font=font)
        y += line_h + pad
    out = np.asarray(canvas, dtype=np.uint8).copy()
    if out_png is not None:
        save_png(out_png, out)
    return out


def heat_panel(
    image: np.ndarray,
    title: str,
    vmin: float,
    vmax: float,
    label: str = "",
    out_png: str | Path | None = None,
    pad: int = 8,
    background=BACKGROUND,
) -> np.ndarray:
    """A heat-map picture under its `title`, above a colour bar of the `heat_colors` ramp from
    `vmin` (cold) to `vmax` (hot) with both values and the middle one printed, and `label` beside
    them. Returns (H, W, 3) uint8; saved to `out_png` if given."""
    from PIL import Image, ImageDraw

    image = np.ascontiguousarray(image, dtype=np.uint8)
    h, w = image.shape[:2]
    font = _font(14)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_w(s: str) -> int:
        x0, _, x1, _ = probe.textbbox((0, 0), s, font=font)
        return x1 - x0

    line_h = probe.textbbox((0, 0), "Ag", font=font)[3] + 2
    bar_h = 14
    top = pad + line_h + pad
    width = w + 2 * pad
    canvas = Image.new("RGB", (width, top + h + pad + bar_h + 4 + line_h + pad), tuple(background))
    draw = ImageDraw.Draw(canvas)
    draw.text((max(pad, (width - text_w(title)) // 2), pad), title, fill=(0, 0, 0), font=font)
    canvas.paste(Image.fromarray(image), (pad, top))
    y = top + h + pad
    ramp = heat_colors(np.linspace(0.0, 1.0, w))
    canvas.paste(Image.fromarray(np.repeat(ramp[None], bar_h, axis=0)), (pad, y))
    draw.rectangle([pad, y, pad + w - 1, y + bar_h - 1], outline=(0, 0, 0))
    y += bar_h + 4
    lo_s, mid_s, hi_s = (f"{v:.3g}" for v in (vmin, (vmin + vmax) / 2, vmax))
    draw.text((pad, y), lo_s, fill=(0, 0, 0), font=font)
    draw.text((pad + (w - text_w(mid_s)) // 2, y), mid_s, fill=(0, 0, 0), font=font)
    draw.text((pad + w - text_w(hi_s), y), hi_s, fill=(0, 0, 0), font=font)
    if label:
        draw.text((pad + text_w(lo_s) + 2 * pad, y), label, fill=(90, 90, 90), font=font)
    out = np.asarray(canvas, dtype=np.uint8).copy()
    if out_png is not None:
        save_png(out_png, out)
    return out
