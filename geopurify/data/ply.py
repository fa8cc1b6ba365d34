"""PLY point clouds (via plyfile): ScanNet's meshes on input, viewable clouds on output.

`read_ply` accepts any PLY with a `vertex` element holding x, y, z (ASCII or binary), e.g.
ScanNet's `*_vh_clean_2.ply` (x, y, z float; red, green, blue, alpha uchar; faces) and
`*_vh_clean_2.labels.ply` (the same plus a ushort `label` = NYU40 id). `write_ply` writes
binary little-endian vertex-only clouds (x, y, z float32; red, green, blue uchar; optional int
`label` and float32 scalar fields), which MeshLab and CloudCompare open directly. `write_mesh_ply`
writes triangle meshes with any vertex and face properties, in the binary layout of ScanNet's and
Matterport3D's released meshes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from plyfile import PlyData, PlyElement, PlyElementParseError

from geopurify.errors import InputError
from geopurify.io import atomic_path

log = logging.getLogger(__name__)

_XYZ = ("x", "y", "z")
_RGB_NAMES = (("red", "green", "blue"), ("r", "g", "b"), ("diffuse_red", "diffuse_green", "diffuse_blue"))
_LABEL_NAMES = ("label", "labels", "class", "semantic")
_RESERVED = set(_XYZ) | {"red", "green", "blue", "label"}


def _colour_to_uint8(cols: list[np.ndarray]) -> np.ndarray:
    rgb = np.stack(cols, axis=1)
    if rgb.dtype.kind == "f":  # float colours: 0..1 or 0..255
        rgb = np.nan_to_num(rgb.astype(np.float64))
        if rgb.size and rgb.max() <= 1.0:
            rgb = rgb * 255.0
        rgb = np.rint(rgb)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def read_ply(path: str | Path) -> dict:
    """Read the vertices of a PLY file.

    Returns {"xyz": float32 (N, 3), "rgb": uint8 (N, 3) (if present), "labels": int32 (N,)
    (if a label property exists), "faces": int64 (F, 3) (if the file has triangle faces), and every other
    vertex property under its own name as a float32 or integer (N,) array}.
    Truncated or garbled files and files without x/y/z raise InputError(path, problem).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "PLY file not found" if not path.exists() else "expected a PLY file, found a directory")
    try:
        problem = _header_problem(path)
        if problem:
            raise InputError(path, f"not a readable PLY file ({problem})")
        ply = _read_plydata(path)
        names = [e.name for e in ply.elements]
        if "vertex" not in names:
            raise InputError(path, f"PLY file has no 'vertex' element (elements: {names})")
        vert = ply["vertex"].data
        props = list(vert.dtype.names or ())
        missing = [p for p in _XYZ if p not in props]
        if missing:
            raise InputError(path, f"PLY vertices lack coordinate(s) {', '.join(missing)} (properties: {props})")
        out: dict = {"xyz": np.stack([np.asarray(vert[p], dtype=np.float32) for p in _XYZ], axis=1)}
        used = set(_XYZ)
        for triple in _RGB_NAMES:
            if all(p in props for p in triple):
                out["rgb"] = _colour_to_uint8([np.asarray(vert[p]) for p in triple])
                used |= set(triple)
                break
        for p in _LABEL_NAMES:
            if p in props:
                lab = np.asarray(vert[p])
                if lab.dtype.kind == "f" and not np.all(np.isfinite(lab) & (lab == np.round(lab))):
                    raise InputError(path, f"PLY label property '{p}' holds non-integer values")
                out["labels"] = lab.astype(np.int32)
                used.add(p)
                break
        for p in props:
            if p not in used and p != "alpha":
                a = np.asarray(vert[p])
                out[p] = a.astype(np.float32) if a.dtype.kind == "f" else a.copy()
        if "face" in names:
            tri = _triangles(ply["face"].data, path)
            if tri is not None:
                out["faces"] = tri
    except InputError:
        raise
    except MemoryError:
        raise
    except Exception as e:  # plyfile raises many types (PlyParseError, ValueError, EOFError, ...)
        raise InputError(
            path, f"not a readable PLY file ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
        ) from None
    n = out["xyz"].shape[0]
    if n and not np.isfinite(out["xyz"]).all():
        log.debug("%s: %d vertices with non-finite coordinates", path, int((~np.isfinite(out["xyz"])).any(1).sum()))
    if "faces" in out and out["faces"].size and (out["faces"].min() < 0 or out["faces"].max() >= n):
        raise InputError(path, f"PLY faces index vertices outside 0..{n - 1}")
    return out


def _header_problem(path: Path) -> str | None:
    """What plyfile would only meet while reading the data, some of it fatal to the interpreter (a
    negative row count on an element without properties makes numpy's memmap divide by zero):
    negative row counts and rows without properties. None when the header passes (or has no
    end_header, which plyfile reports itself)."""
    with open(path, "rb") as f:
        head = f.read(1 << 20)
    end = head.find(b"end_header")
    if end < 0:
        return None
    elements: list[list] = []  # [name, count, number of properties]
    for line in head[:end].split(b"\n"):
        words = line.split()
        if words[:1] == [b"element"] and len(words) >= 3:
            name = words[1].decode("ascii", "replace")
            try:
                count = int(words[2])
            except ValueError:
                return None  # plyfile names the malformed line
            if count < 0:
                return f"element '{name}' has a negative row count {count}"
            elements.append([name, count, 0])
        elif words[:1] == [b"property"] and elements:
            elements[-1][2] += 1
    for name, count, n_props in elements:
        if count > 0 and n_props == 0:
            return f"element '{name}' has {count} rows but no properties"
    return None


def _read_plydata(path: Path) -> PlyData:
    """Parse with triangle faces assumed (plyfile's fast path, ~50x faster on ScanNet meshes);
    files with other polygons fall back to the generic per-row parser."""
    try:
        return PlyData.read(str(path), known_list_len={"face": {"vertex_indices": 3, "vertex_index": 3}})
    except PlyElementParseError as e:
        if "unexpected list length" not in str(e):
            raise
        return PlyData.read(str(path))


def _triangles(face: np.ndarray, path: Path) -> np.ndarray | None:
    """(F, 3) int64 from a face element's vertex_indices / vertex_index list; None unless all are triangles."""
    names = face.dtype.names or ()
    key = next((k for k in ("vertex_indices", "vertex_index") if k in names), None)
    if key is None or len(face) == 0:
        return np.zeros((0, 3), dtype=np.int64)
    lists = face[key]
    if lists.dtype != object:  # fast path: already (F, 3)
        return np.asarray(lists, dtype=np.int64).reshape(len(face), -1)
    if not all(len(f) == 3 for f in lists):
        log.debug("%s: faces are not all triangles; faces not returned", path)
        return None
    return np.stack(list(lists)).astype(np.int64)


def write_ply(
    path: str | Path,
    xyz: np.ndarray,
    rgb: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    scalars: dict[str, np.ndarray] | None = None,
) -> None:
    """Write a binary little-endian PLY point cloud atomically.

    xyz (N, 3) -> float32 x, y, z; rgb (N, 3) uint8 -> red, green, blue; labels (N,) -> int `label`;
    scalars {name: (N,)} -> float32 properties (e.g. a confidence), which CloudCompare shows as
    scalar fields.
    """
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"xyz must be (N, 3), got {xyz.shape}")
    n = xyz.shape[0]
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    cols: dict[str, np.ndarray] = {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2]}
    if rgb is not None:
        rgb = np.asarray(rgb)
        if rgb.shape != (n, 3):
            raise ValueError(f"rgb must be ({n}, 3), got {rgb.shape}")
        if rgb.dtype != np.uint8:
            if rgb.size and (rgb.min() < 0 or rgb.max() > 255):
                raise ValueError("rgb values must be in 0..255")
            rgb = np.rint(rgb).astype(np.uint8)
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
        cols.update(red=rgb[:, 0], green=rgb[:, 1], blue=rgb[:, 2])
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (n,) or labels.dtype.kind not in "iub":
            raise ValueError(f"labels must be ({n},) integers, got {labels.shape} {labels.dtype}")
        fields.append(("label", "<i4"))
        cols["label"] = labels
    for name, val in (scalars or {}).items():
        val = np.asarray(val)
        if not name.isidentifier() or name in _RESERVED:
            raise ValueError(f"scalar field name {name!r} is not a free identifier")
        if val.shape != (n,):
            raise ValueError(f"scalar field {name!r} must be ({n},), got {val.shape}")
        fields.append((name, "<f4"))
        cols[name] = val
    data = np.empty(n, dtype=fields)
    for name, _ in fields:
        data[name] = cols[name]
    el = PlyElement.describe(data, "vertex")
    with atomic_path(path) as tmp:
        PlyData([el], text=False, byte_order="<").write(str(tmp))


_PLY_TYPES = {
    "f4": "float",
    "f8": "double",
    "u1": "uchar",
    "i1": "char",
    "u2": "ushort",
    "i2": "short",
    "u4": "uint",
    "i4": "int",
}


def write_mesh_ply(
    path: str | Path,
    vertex: dict[str, np.ndarray],
    faces: np.ndarray,
    face: dict[str, np.ndarray] | None = None,
    comment: str | None = None,
) -> None:
    """Write a binary little-endian triangle mesh atomically.

    `vertex` maps property names to (N,) arrays, in file order, each stored with its own dtype
    (float32 x/y/z, uint8 red/green/blue/alpha, uint16 label, ...); faces (F, 3) become
    `property list uchar int vertex_indices`, followed by the (F,) arrays of `face` (e.g. int32
    category_id). ScanNet's `*_vh_clean_2.ply` is x, y, z, red, green, blue, alpha + vertex_indices.
    """
    faces = np.asarray(faces)
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.dtype.kind not in "iu":
        raise ValueError(f"faces must be (F, 3) integers, got {faces.shape} {faces.dtype}")
    n = None
    for name, arr in vertex.items():
        if n is None:
            n = len(arr)
        if np.asarray(arr).shape != (n,):
            raise ValueError(f"vertex property {name!r} must be ({n},), got {np.asarray(arr).shape}")
    if faces.size and (faces.min() < 0 or faces.max() >= (n or 0)):
        raise ValueError(f"faces index vertices outside 0..{(n or 0) - 1}")

    def table(props: dict[str, np.ndarray], rows: int, lead: list) -> np.ndarray:
        dt = lead + [(k, np.asarray(v).dtype.newbyteorder("<")) for k, v in props.items()]
        for k, d in dt[len(lead) :]:
            if d.str[1:] not in _PLY_TYPES:
                raise ValueError(f"property {k!r} has dtype {d}, which PLY cannot store")
        out = np.empty(rows, dtype=dt)
        for k, v in props.items():
            out[k] = v
        return out

    verts = table(vertex, n or 0, [])
    f = table(face or {}, faces.shape[0], [("n", "u1"), ("vertex_indices", "<i4", (3,))])
    f["n"] = 3
    f["vertex_indices"] = faces
    lines = ["ply", "format binary_little_endian 1.0"] + ([f"comment {comment}"] if comment else [])
    lines += [f"element vertex {len(verts)}"]
    lines += [f"property {_PLY_TYPES[verts.dtype[k].str[1:]]} {k}" for k in verts.dtype.names]
    lines += [f"element face {len(f)}", "property list uchar int vertex_indices"]
    lines += [f"property {_PLY_TYPES[f.dtype[k].str[1:]]} {k}" for k in f.dtype.names[2:]]
    lines += ["end_header"]
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(("\n".join(lines) + "\n").encode("ascii"))
        fh.write(verts.tobytes())
        fh.write(f.tobytes())
