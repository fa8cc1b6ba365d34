"""Headless point-cloud pictures: z-buffer splatting to PNG, class palettes, heat maps, panels."""

from geopurify.viz.render import (
    auto_point_px,
    auto_view,
    ceiling_mask,
    class_colors,
    colorize_labels,
    heat_colors,
    heat_panel,
    project_view,
    render_points,
    save_png,
    side_by_side,
    zbuffer_splat,
)

__all__ = [
    "auto_point_px",
    "auto_view",
    "ceiling_mask",
    "class_colors",
    "colorize_labels",
    "heat_colors",
    "heat_panel",
    "project_view",
    "render_points",
    "save_png",
    "side_by_side",
    "zbuffer_splat",
]
