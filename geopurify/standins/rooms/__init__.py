"""Procedural indoor rooms: the embedded default data set, an OFFLINE STAND-IN for ScanNet.

Real scans cannot be downloaded here, so the default data set is generated: a closed box room
(walls, floor, ceiling; NYU40 ids 1, 2, 22) with a door and windows in the walls and furniture of
the ScanNet-20 classes built from analytic primitives (axis-aligned boxes and vertical
cylinders: a chair is a seat, a back and four legs; a table a top and legs), at plausible sizes,
against the walls or free-standing, never intersecting, chosen at random from a seed. Every
object is one instance with a plausible, varied colour.

From the primitives:
- a point cloud sampled uniformly by area on the visible surfaces (what a mesh's vertices are),
  with rgb (albedo x texture x Lambert shading), NYU40 labels and instance ids;
- a camera trajectory walking around the room centre and looking across it, with ScanNet's
  640 x 480 depth-camera intrinsics (fx ~ 577.9);
- per frame, images by vectorised ray casting against the primitives: exact z-depth, shaded
  colour, NYU40 label image (`Room.render`); then sensor noise (depth-proportional noise and
  0.5% dropped pixels on depth, exposure gain and per-pixel noise on colour).

Everything is a pure function of the seed: the same seed gives byte-identical arrays and images.
`write_room` writes the on-disk scene layout (docs/architecture.md) with
meta.json {"source": "synthetic (procedural room)"}, and the exact surface normals (the side a
camera inside the room sees, as a scan mesh's) as normals.npy with meta.json "normals": "analytic".

Modules, by concern: `primitives` (ids, palettes, parts), `furniture` and `fixtures` (the pieces), `layout` (the
room: placement, points, cameras; `Room`), `render` (ray casting, shading, sensor noise),
`surfaces` (points on the visible surfaces), `export` (the scene layout on disk), and the same
rooms in the release formats: `mesh` (a triangle mesh of the visible surfaces), `scannet_raw`
(ScanNet's .sens / mesh / annotations), `matterport_raw` (Matterport3D houses), which start from
`room_layout`.
"""

from geopurify.standins.rooms.export import room_meta, scene_seed, synthesize, write_room
from geopurify.standins.rooms.layout import RenderedView, Room, camera_free, make_room, room_layout
from geopurify.standins.rooms.primitives import BOX, CYL, DEPTH_SCALE, N_SHELL, SOURCE
from geopurify.standins.rooms.render import backproject, render_surfaces, shade
from geopurify.standins.rooms.surfaces import sample_points, visible_mask

__all__ = [
    "BOX",
    "CYL",
    "DEPTH_SCALE",
    "N_SHELL",
    "SOURCE",
    "RenderedView",
    "Room",
    "backproject",
    "camera_free",
    "make_room",
    "render_surfaces",
    "room_layout",
    "room_meta",
    "sample_points",
    "scene_seed",
    "shade",
    "synthesize",
    "visible_mask",
    "write_room",
]
