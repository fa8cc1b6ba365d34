"""ScanNet `.sens` files (SensorData v4): a streaming reader and an exporter to SensReader's layout.

Binary layout, little-endian, as written by ScanNet's SensorData (SensReader/c++/src/sensorData.h,
SensReader/python/SensorData.py):

    header  uint32 version (= 4) | uint64 strlen | strlen bytes sensor name
            4 x (16 float32, row-major 4x4): intrinsic_color, extrinsic_color, intrinsic_depth, extrinsic_depth
            int32 color_compression (-1 unknown, 0 raw, 1 png, 2 jpeg)
            int32 depth_compression (-1 unknown, 0 raw_ushort, 1 zlib_ushort, 2 occi_ushort)
            uint32 color_width, color_height, depth_width, depth_height | float32 depth_shift
            uint64 num_frames
    frame   16 float32 camera_to_world | uint64 timestamp_color, timestamp_depth,
            color_size_bytes, depth_size_bytes | color bytes | depth bytes
    (then a uint64 IMU frame count and IMU frames, which nothing here reads)

Depth pixels are uint16 in 1/depth_shift metres (depth_shift = 1000 on ScanNet: millimetres).
ScanNet marks frames with lost tracking by a -inf camera_to_world.

`write_sens` is the exact inverse of `read_sens_header` + `iter_sens_frames` (streaming frames to
disk, `encode_color` / `encode_depth` the inverse of `decode_color` / `decode_depth`); the
procedural ScanNet-format scans (geopurify.standins.rooms.scannet_raw) are written with it.

`export_sens` writes every k-th frame as SensReader does (color/<i>.jpg, depth/<i>.png,
pose/<i>.txt, intrinsic/{intrinsic,extrinsic}_{color,depth}.txt) through geopurify.data.writers,
keeping the JPEG bytes as stored (no re-encoding) and the depth values unchanged.
"""

from __future__ import annotations

import io
import logging
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from geopurify.errors import InputError

log = logging.getLogger(__name__)

SENS_VERSION = 4
COLOR_COMPRESSION = {-1: "unknown", 0: "raw", 1: "png", 2: "jpeg"}
DEPTH_COMPRESSION = {-1: "unknown", 0: "raw_ushort", 1: "zlib_ushort", 2: "occi_ushort"}
_HEAD_FIXED = struct.Struct("<IQ")  # version, strlen
_HEAD_REST = struct.Struct("<64f2i4IfQ")  # 4 matrices, compression types, sizes, depth shift, num frames
_FRAME_HEAD = struct.Struct("<16f4Q")  # camera_to_world, timestamps, byte counts
_MAX_NAME = 4096
_MAX_SIDE = 1 << 15
_WARN_POSES = 5


@dataclass
class SensHeader:
    """Everything a .sens file says before its frames, plus where each frame's data lies."""

    path: Path
    version: int
    sensor_name: str
    intrinsic_color: np.ndarray  # (4, 4) float32
    extrinsic_color: np.ndarray
    intrinsic_depth: np.ndarray
    extrinsic_depth: np.ndarray
    color_compression: str
    depth_compression: str
    color_width: int
    color_height: int
    depth_width: int
    depth_height: int
    depth_shift: float
    n_frames: int
    frame_offsets: np.ndarray = field(repr=False)  # int64 (n_frames,) file offset of each frame's header
    color_sizes: np.ndarray = field(repr=False)  # int64 (n_frames,)
    depth_sizes: np.ndarray = field(repr=False)  # int64 (n_frames,)


@dataclass
class SensFrame:
    """One RGB-D frame with its data still compressed."""

    index: int
    camera_to_world: np.ndarray  # (4, 4) float32; -inf marks lost tracking
    timestamp_color: int
    timestamp_depth: int
    color_data: bytes
    depth_data: bytes


def _read_exact(f, n: int, path: Path, what: str) -> bytes:
    b = f.read(n)
    if len(b) != n:
        raise InputError(path, f"truncated .sens file: {what} needs {n} bytes, only {len(b)} left")
    return b


def read_sens_header(path: str | Path) -> SensHeader:
    """Parse the header and index every frame (one 96-byte read + seek per frame), so a truncated
    or corrupt file is reported before anything is exported."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, ".sens file not found" if not path.exists() else "expected a .sens file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        version, strlen = _HEAD_FIXED.unpack(_read_exact(f, _HEAD_FIXED.size, path, "header"))
        if version != SENS_VERSION:
            raise InputError(path, f"not a ScanNet .sens file (version {version}, expected {SENS_VERSION})")
        if strlen > _MAX_NAME:
            raise InputError(path, f"corrupt .sens header: sensor name length {strlen}")
        name = _read_exact(f, strlen, path, "sensor name").decode("utf-8", errors="replace")
        vals = _HEAD_REST.unpack(_read_exact(f, _HEAD_REST.size, path, "header"))
        mats = [np.array(vals[i * 16 : (i + 1) * 16], dtype=np.float32).reshape(4, 4) for i in range(4)]
        c_type, d_type, cw, ch, dw, dh, shift, n = vals[64:]
        if c_type not in COLOR_COMPRESSION or d_type not in DEPTH_COMPRESSION:
            raise InputError(path, f"corrupt .sens header: compression types {c_type}, {d_type}")
        if not all(0 < s <= _MAX_SIDE for s in (cw, ch, dw, dh)):
            raise InputError(path, f"corrupt .sens header: image sizes {cw}x{ch} colour, {dw}x{dh} depth")
        if not (np.isfinite(shift) and shift > 0):
            raise InputError(path, f"corrupt .sens header: depth_shift {shift}")
        if not all(np.isfinite(m).all() for m in mats):
            raise InputError(path, "corrupt .sens header: calibration matrices hold NaN/inf")
        pos = f.tell()
        if n * _FRAME_HEAD.size > size - pos:
            raise InputError(
                path,
                f"truncated .sens file: header announces {n} frames, the file holds at most "
                f"{(size - pos) // _FRAME_HEAD.size}",
            )
        offsets = np.empty(n, dtype=np.int64)
        csz = np.empty(n, dtype=np.int64)
        dsz = np.empty(n, dtype=np.int64)
        for i in range(n):
            head = f.read(_FRAME_HEAD.size)
            if len(head) != _FRAME_HEAD.size:
                raise InputError(
                    path, f"truncated .sens file: frame {i} of {n} starts at byte {pos}, the file has {size} bytes"
                )
            c, d = _FRAME_HEAD.unpack(head)[18:20]
            end = pos + _FRAME_HEAD.size + c + d
            if end > size:
                raise InputError(
                    path, f"truncated .sens file: frame {i} of {n} ends at byte {end}, the file has {size} bytes"
                )
            offsets[i], csz[i], dsz[i] = pos, c, d
            pos = end
            f.seek(pos)
    return SensHeader(
        path=path,
        version=version,
        sensor_name=name,
        intrinsic_color=mats[0],
        extrinsic_color=mats[1],
        intrinsic_depth=mats[2],
        extrinsic_depth=mats[3],
        color_compression=COLOR_COMPRESSION[c_type],
        depth_compression=DEPTH_COMPRESSION[d_type],
        color_width=cw,
        color_height=ch,
        depth_width=dw,
        depth_height=dh,
        depth_shift=float(shift),
        n_frames=int(n),
        frame_offsets=offsets,
        color_sizes=csz,
        depth_sizes=dsz,
    )


def iter_sens_frames(header: SensHeader, indices=None) -> Iterator[SensFrame]:
    """Frames at `indices` (default all), reading only their bytes (the others are seeked over)."""
    idx = range(header.n_frames) if indices is None else indices
    with open(header.path, "rb") as f:
        for i in idx:
            if not 0 <= i < header.n_frames:
                raise IndexError(f"frame {i} outside 0..{header.n_frames - 1}")
            f.seek(int(header.frame_offsets[i]))
            vals = _FRAME_HEAD.unpack(_read_exact(f, _FRAME_HEAD.size, header.path, f"frame {i}"))
            c, d = vals[18], vals[19]
            color = _read_exact(f, c, header.path, f"frame {i} colour")
            depth = _read_exact(f, d, header.path, f"frame {i} depth")
            yield SensFrame(
                index=int(i),
                camera_to_world=np.array(vals[:16], dtype=np.float32).reshape(4, 4),
                timestamp_color=vals[16],
                timestamp_depth=vals[17],
                color_data=color,
                depth_data=depth,
            )


def decode_depth(header: SensHeader, frame: SensFrame) -> np.ndarray:
    """(depth_height, depth_width) uint16 raw depth (units of 1/depth_shift m, 0 = no reading)."""
    kind = header.depth_compression
    if kind == "zlib_ushort":
        try:
            raw = zlib.decompress(frame.depth_data)
        except zlib.error as e:
            raise InputError(header.path, f"frame {frame.index}: depth is not valid zlib data ({e})") from None
    elif kind == "raw_ushort":
        raw = frame.depth_data
    else:
        raise InputError(header.path, f"depth compression '{kind}' is not supported (zlib_ushort and raw_ushort are)")
    h, w = header.depth_height, header.depth_width
    if len(raw) != h * w * 2:
        raise InputError(
            header.path, f"frame {frame.index}: depth holds {len(raw)} bytes, a {w}x{h} uint16 image needs {h * w * 2}"
        )
    return np.frombuffer(raw, dtype="<u2").reshape(h, w).astype(np.uint16)


def color_image_size(header: SensHeader, frame: SensFrame) -> tuple[int, int]:
    """(width, height) of a frame's colour image, from the JPEG/PNG header only (raw: from the byte count)."""
    if header.color_compression == "raw":
        if len(frame.color_data) != header.color_width * header.color_height * 3:
            raise InputError(
                header.path,
                f"frame {frame.index}: raw colour holds {len(frame.color_data)} bytes, "
                f"expected {header.color_width * header.color_height * 3}",
            )
        return header.color_width, header.color_height
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(frame.color_data)) as img:
            return img.size
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise InputError(
            header.path,
            f"frame {frame.index}: colour data is not a readable {header.color_compression} image ({type(e).__name__})",
        ) from None


def decode_color(header: SensHeader, frame: SensFrame) -> np.ndarray:
    """(color_height, color_width, 3) uint8 RGB."""
    if header.color_compression == "raw":
        color_image_size(header, frame)
        return (
            np.frombuffer(frame.color_data, dtype=np.uint8).reshape(header.color_height, header.color_width, 3).copy()
        )
    if header.color_compression not in ("jpeg", "png"):
        raise InputError(header.path, f"colour compression '{header.color_compression}' is not supported")
    from PIL import Image

    try:
        with Image.open(io.BytesIO(frame.color_data)) as img:
            arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError) as e:
        raise InputError(
            header.path, f"frame {frame.index}: colour data does not decode ({type(e).__name__})"
        ) from None
    if arr.shape[:2] != (header.color_height, header.color_width):
        raise InputError(
            header.path,
            f"frame {frame.index}: colour is {arr.shape[1]}x{arr.shape[0]}, the header "
            f"says {header.color_width}x{header.color_height}",
        )
    return arr


def encode_color(rgb: np.ndarray, compression: str = "jpeg", quality: int = 90) -> bytes:
    """(H, W, 3) uint8 RGB -> the bytes a .sens frame stores for `compression` (jpeg, png or raw)."""
    rgb = np.ascontiguousarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"colour must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    if compression == "raw":
        return rgb.tobytes()
    if compression not in ("jpeg", "png"):
        raise ValueError(f"colour compression must be jpeg, png or raw, got {compression!r}")
    from PIL import Image

    buf = io.BytesIO()
    if compression == "jpeg":
        Image.fromarray(rgb).save(buf, format="JPEG", quality=int(quality))
    else:
        Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def encode_depth(depth: np.ndarray, compression: str = "zlib_ushort", level: int = zlib.Z_DEFAULT_COMPRESSION) -> bytes:
    """(H, W) uint16 depth (units of 1/depth_shift m) -> the bytes of a .sens frame (zlib_ushort, at zlib
    `level`, or raw_ushort)."""
    depth = np.asarray(depth)
    if depth.ndim != 2 or depth.dtype != np.uint16:
        raise ValueError(f"depth must be (H, W) uint16, got {depth.shape} {depth.dtype}")
    raw = np.ascontiguousarray(depth, dtype="<u2").tobytes()
    if compression == "zlib_ushort":
        return zlib.compress(raw, level)
    if compression == "raw_ushort":
        return raw
    raise ValueError(f"depth compression must be zlib_ushort or raw_ushort, got {compression!r}")


def write_sens(
    path: str | Path,
    frames: Iterable[SensFrame],
    *,
    intrinsic_color: np.ndarray,
    intrinsic_depth: np.ndarray,
    color_width: int,
    color_height: int,
    depth_width: int,
    depth_height: int,
    depth_shift: float = 1000.0,
    sensor_name: str = "StructureSensor",
    extrinsic_color: np.ndarray | None = None,
    extrinsic_depth: np.ndarray | None = None,
    color_compression: str = "jpeg",
    depth_compression: str = "zlib_ushort",
) -> int:
    """Write a SensorData v4 file atomically, streaming `frames` (their data already encoded with
    `encode_color` / `encode_depth`); returns the number of frames. Matrices are 4x4 (3x3
    intrinsics are padded); extrinsics default to identity; no IMU frames are stored.
    A camera_to_world of -inf marks a frame with lost tracking, as in ScanNet."""
    from geopurify.io import atomic_path

    codes = {v: k for k, v in COLOR_COMPRESSION.items()}, {v: k for k, v in DEPTH_COMPRESSION.items()}
    if color_compression not in codes[0] or depth_compression not in codes[1]:
        raise ValueError(f"unknown compression {color_compression!r} / {depth_compression!r}")

    def mat4(m) -> list[float]:
        m = np.eye(4) if m is None else np.asarray(m, dtype=np.float64)
        if m.shape == (3, 3):
            m = np.block([[m, np.zeros((3, 1))], [np.zeros((1, 3)), np.ones((1, 1))]])
        if m.shape != (4, 4) or not np.isfinite(m).all():
            raise ValueError(f"calibration matrices must be finite 3x3 or 4x4, got {m.shape}")
        return m.astype(np.float32).ravel().tolist()

    name = sensor_name.encode("utf-8")
    mats = mat4(intrinsic_color) + mat4(extrinsic_color) + mat4(intrinsic_depth) + mat4(extrinsic_depth)
    n = 0
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(_HEAD_FIXED.pack(SENS_VERSION, len(name)) + name)
        f.write(
            _HEAD_REST.pack(
                *mats,
                codes[0][color_compression],
                codes[1][depth_compression],
                int(color_width),
                int(color_height),
                int(depth_width),
                int(depth_height),
                float(depth_shift),
                0,
            )
        )
        count_at = f.tell() - 8  # num_frames is the header's last field: patched once the frames are written
        for fr in frames:
            pose = np.asarray(fr.camera_to_world, dtype=np.float32).reshape(16)
            f.write(
                _FRAME_HEAD.pack(
                    *pose.tolist(),
                    int(fr.timestamp_color),
                    int(fr.timestamp_depth),
                    len(fr.color_data),
                    len(fr.depth_data),
                )
            )
            f.write(fr.color_data)
            f.write(fr.depth_data)
            n += 1
        f.write(struct.pack("<Q", 0))  # IMU frame count
        f.seek(count_at)
        f.write(struct.pack("<Q", n))
    return n


def _write_bytes(path: Path, data: bytes) -> None:
    from geopurify.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def export_sens(path: str | Path, scene_dir: str | Path, frame_step: int = 1, progress: bool = True) -> dict:
    """Export frames 0, k, 2k, ... of a .sens file into `scene_dir` in SensReader's layout.

    Writes color/<i>.jpg (the stored JPEG bytes; .png for png / raw colour), depth/<i>.png (uint16,
    the stored values, `depth_scale` = depth_shift in meta.json), pose/<i>.txt (camera-to-world as
    stored, i.e. ScanNet's original frame: write it before any axis_align_matrix.txt) and
    intrinsic/{intrinsic,extrinsic}_{color,depth}.txt. Frames whose pose is not a finite rigid
    transform (ScanNet's -inf for lost tracking) are skipped and counted. Returns a summary dict.
    """
    from geopurify.data import layout as L
    from geopurify.data.writers import format_matrix, write_frame
    from geopurify.io import write_text

    if isinstance(frame_step, bool) or not isinstance(frame_step, (int, np.integer)) or frame_step < 1:
        raise InputError(path, f"frame_step must be a positive integer, got {frame_step!r}")
    header = read_sens_header(path)
    scene_dir = Path(scene_dir)
    if header.n_frames == 0:
        raise InputError(header.path, ".sens file holds no frames")
    ext = {"jpeg": ".jpg", "png": ".png", "raw": ".png"}.get(header.color_compression)
    if ext is None:
        raise InputError(header.path, f"colour compression '{header.color_compression}' is not supported")
    k_color = header.intrinsic_color.astype(np.float64)
    k_depth = header.intrinsic_depth.astype(np.float64)
    for name, m in (("color", header.extrinsic_color), ("depth", header.extrinsic_depth)):
        write_text(scene_dir / L.INTRINSIC_DIR / f"extrinsic_{name}.txt", format_matrix(m.astype(np.float64)))
    chosen = range(0, header.n_frames, int(frame_step))
    written, bad = [], []
    frames = iter_sens_frames(header, chosen)
    for fr in tqdm(
        frames, total=len(chosen), desc=f"frames {header.path.stem}", unit="frame", disable=not progress, leave=False
    ):
        pose = fr.camera_to_world.astype(np.float64)
        problem = L.pose_problem(pose)
        if problem:
            bad.append(fr.index)
            (log.warning if len(bad) <= _WARN_POSES else log.debug)(
                "%s: frame %d skipped: %s", header.path, fr.index, problem
            )
            continue
        w, h = color_image_size(header, fr)
        if (w, h) != (header.color_width, header.color_height):
            raise InputError(
                header.path,
                f"frame {fr.index}: colour is {w}x{h}, the header says {header.color_width}x{header.color_height}",
            )
        depth = decode_depth(header, fr)
        write_frame(
            scene_dir,
            fr.index,
            pose,
            k_color,
            depth=depth.astype(np.float64) / header.depth_shift,
            depth_scale=header.depth_shift,
            depth_intrinsic=k_depth,
        )
        cpath = scene_dir / L.COLOR_DIR / f"{fr.index}{ext}"
        if header.color_compression == "raw":
            from geopurify.data.images import write_color

            write_color(cpath, decode_color(header, fr))
        else:
            _write_bytes(cpath, fr.color_data)
        written.append(fr.index)
    if len(bad) > _WARN_POSES:
        log.warning("%s: %d of %d selected frames skipped for invalid poses", header.path, len(bad), len(chosen))
    if not written:
        raise InputError(header.path, f"none of the {len(chosen)} selected frames has a valid camera pose")
    log.info(
        "%s: exported %d of %d frames (every %d-th) to %s",
        header.path,
        len(written),
        header.n_frames,
        frame_step,
        scene_dir,
    )
    return {
        "sens": header.path.name,
        "sensor_name": header.sensor_name,
        "n_frames": header.n_frames,
        "frame_step": int(frame_step),
        "exported": len(written),
        "skipped_invalid_pose": bad,
        "depth_shift": header.depth_shift,
        "color_size": [header.color_width, header.color_height],
        "depth_size": [header.depth_width, header.depth_height],
    }
