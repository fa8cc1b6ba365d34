"""Property-based fuzzing (hypothesis) of the readers of user files: whatever the bytes, a reader
returns a valid result or raises InputError naming the file, never another exception.

Covered: PLY files (mutated valid files and generated headers), pose / intrinsics / axis-alignment
text, frames of a whole scene directory, lifted feature files (.lift.pt: mutated bytes and
generated dicts), YAML configs (mutated text and generated key trees) and frame images. Example
counts are small so the file runs in well under a minute; `derandomize=True` makes every run
try the same examples (a failure reproduces).
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geopurify.config import defaults, load_config
from geopurify.data.images import image_header, read_color, read_depth, read_label_image
from geopurify.data.ply import read_ply, write_ply
from geopurify.data.readers import load_scene, pose_problem, read_axis_alignment, read_intrinsic, read_matrix
from geopurify.errors import InputError, one_line
from geopurify.lift.result import LiftResult, load_lifted, save_lifted

FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
TMP = Path(tempfile.mkdtemp(prefix="geopurify-fuzz-"))


def _file(name: str, data: bytes | str) -> Path:
    path = TMP / name
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8", errors="surrogateescape")
    else:
        path.write_bytes(data)
    return path


def only_input_errors(fn, path: Path):
    """fn() or None if it raised InputError naming `path`; anything else propagates (a failure)."""
    try:
        return fn()
    except InputError as e:
        assert e.path is not None and str(e).startswith(f"{one_line(e.path)}: "), str(e)
        assert len(str(e).splitlines()) == 1, str(e)
        return None


# bytes mutations of a valid file: truncate, overwrite a run of bytes, insert, drop a slice
mutation = st.one_of(
    st.tuples(st.just("cut"), st.floats(0, 1)),
    st.tuples(st.just("set"), st.floats(0, 1), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("drop"), st.floats(0, 1), st.integers(1, 64)),
)


def mutate(data: bytes, ops) -> bytes:
    for op in ops:
        at = int(op[1] * len(data))
        if op[0] == "cut":
            data = data[:at]
        elif op[0] == "set":
            data = data[:at] + op[2] + data[at + len(op[2]) :]
        elif op[0] == "insert":
            data = data[:at] + op[2] + data[at:]
        else:
            data = data[:at] + data[at + op[2] :]
    return data


# ------------------------------------------------------------------------------ PLY


def _valid_ply(binary: bool, labels: bool) -> bytes:
    rng = np.random.default_rng(0)
    path = TMP / "valid.ply"
    write_ply(
        path,
        rng.random((12, 3)).astype(np.float32),
        (rng.random((12, 3)) * 255).astype(np.uint8),
        labels=rng.integers(0, 40, 12) if labels else None,
    )
    if binary:
        return path.read_bytes()
    from plyfile import PlyData

    ply = PlyData.read(str(path))
    ply.text = True
    buf = io.BytesIO()
    ply.write(buf)
    return buf.getvalue()


VALID_PLY = {(b, lab): _valid_ply(b, lab) for b in (True, False) for lab in (True, False)}


def _check_ply(out):
    if out is not None:
        n = out["xyz"].shape[0]
        assert out["xyz"].shape == (n, 3) and out["xyz"].dtype == np.float32
        if "rgb" in out:
            assert out["rgb"].shape == (n, 3) and out["rgb"].dtype == np.uint8
        if "labels" in out:
            assert out["labels"].shape == (n,)


@FUZZ
@given(kind=st.sampled_from(sorted(VALID_PLY)), ops=st.lists(mutation, min_size=1, max_size=3))
def test_ply_mutated_bytes(kind, ops):
    path = _file("m.ply", mutate(VALID_PLY[kind], ops))
    _check_ply(only_input_errors(lambda: read_ply(path), path))


PLY_TYPES = ["char", "uchar", "short", "ushort", "int", "uint", "float", "double", "int8", "float32", "bogus"]
prop = st.tuples(st.sampled_from(PLY_TYPES), st.sampled_from(["x", "y", "z", "red", "green", "blue", "label", "q", ""]))


@FUZZ
@given(
    fmt=st.sampled_from(["ascii", "binary_little_endian", "binary_big_endian", "nonsense"]),
    count=st.integers(-2, 6),
    props=st.lists(prop, max_size=7),
    face=st.booleans(),
    body=st.binary(max_size=120),
    text_body=st.lists(st.floats(allow_nan=True), max_size=30),
)
def test_ply_generated_headers(fmt, count, props, face, body, text_body):
    head = [b"ply", f"format {fmt} 1.0".encode(), f"element vertex {count}".encode()]
    head += [f"property {t} {n}".encode() for t, n in props]
    if face:
        head += [b"element face 1", b"property list uchar int vertex_indices"]
    data = b"\n".join(head + [b"end_header", b""])
    data += " ".join(map(str, text_body)).encode() if fmt == "ascii" else body
    path = _file("g.ply", data)
    _check_ply(only_input_errors(lambda: read_ply(path), path))


# ------------------------------------------------------------------------------ matrices

number = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64).map(repr),
    st.integers(-(10**6), 10**6).map(str),
    st.sampled_from(["nan", "-inf", "1e400", "0x10", "1,5", "--1"]),
)
matrix_text = st.one_of(
    st.lists(st.lists(number, min_size=0, max_size=5), min_size=0, max_size=5).map(
        lambda rows: "\n".join(" ".join(r) for r in rows)
    ),
    st.text(max_size=80),
)


@FUZZ
@given(text=matrix_text)
def test_matrix_text(text):
    path = _file("m.txt", text)
    m = only_input_errors(lambda: read_matrix(path), path)
    if m is not None:
        assert m.ndim == 2 and m.dtype == np.float64
        if m.size == 16:
            pose_problem(m.reshape(4, 4))  # a reason string or None, never an exception
    k = only_input_errors(lambda: read_intrinsic(path), path)
    if k is not None:
        assert k.shape == (3, 3) and np.isfinite(k).all() and k[0, 0] > 0 and k[1, 1] > 0


@FUZZ
@given(text=matrix_text, scannet_style=st.booleans())
def test_axis_alignment_text(text, scannet_style):
    d = TMP / "scene0000_00"
    d.mkdir(exist_ok=True)
    for f in d.iterdir():
        f.unlink()
    path = d / ("scene0000_00.txt" if scannet_style else "axis_align_matrix.txt")
    path.write_text(
        f"axisAlignment = {' '.join(text.split())}\n" if scannet_style else text,
        encoding="utf-8",
        errors="surrogateescape",
    )
    out = only_input_errors(lambda: read_axis_alignment(d), path)
    if out is not None and out[0] is not None:
        assert out[0].shape == (4, 4) and pose_problem(out[0]) is None


@pytest.fixture(scope="module")
def frame_scene() -> Path:
    """A two-frame scene directory (points, colour frames, poses, intrinsics) to corrupt."""
    from geopurify.data.writers import write_frame, write_scene

    d = TMP / "frames"
    rng = np.random.default_rng(1)
    write_scene(
        d,
        rng.random((50, 3)).astype(np.float32),
        (rng.random((50, 3)) * 255).astype(np.uint8),
        labels=rng.integers(0, 41, 50).astype(np.int32),
    )
    K = np.array([[20.0, 0, 16], [0, 20, 12], [0, 0, 1]])
    for i in range(2):
        write_frame(d, i, np.eye(4), K, color=np.zeros((24, 32, 3), np.uint8))
    return d


@FUZZ
@given(pose=matrix_text, intrinsic=st.one_of(st.none(), matrix_text))
def test_scene_with_fuzzed_pose_and_intrinsics(frame_scene, pose, intrinsic):
    """Frame 1's pose (and maybe the shared intrinsics) are garbage: the scene loads with frame 1
    skipped and counted, or the whole load fails with an InputError."""
    (frame_scene / "pose" / "1.txt").write_text(pose, encoding="utf-8", errors="surrogateescape")
    k_path = frame_scene / "intrinsic" / "intrinsic_color.txt"
    good_k = "20 0 16 0\n0 20 12 0\n0 0 1 0\n0 0 0 1\n"
    k_path.write_text(good_k if intrinsic is None else intrinsic, encoding="utf-8", errors="surrogateescape")
    try:
        scene = load_scene(frame_scene)
    except InputError as e:
        assert "\n" not in str(e)
        return
    assert len(scene.frames) + scene.meta["skipped_frames"] == 2 and scene.frames[0].name == "0"
    for f in scene.frames:
        assert pose_problem(f.pose) is None


# ------------------------------------------------------------------------------ lifted feature files


def _valid_lift(n=6, dim=4) -> bytes:
    res = LiftResult(
        torch.randn(n, dim, generator=torch.Generator().manual_seed(0)),
        torch.rand(n) > 0.5,
        torch.arange(n),
        {"vlm": "v", "simulated": True, "fusion": "mean", "scene": "s"},
    )
    save_lifted(TMP / "valid.lift.pt", res)
    return (TMP / "valid.lift.pt").read_bytes()


VALID_LIFT = _valid_lift()


def _check_lift(res, n=None, dim=None):
    if res is not None:
        N, C = res.feat.shape
        assert res.feat.dtype == torch.float32 and torch.isfinite(res.feat).all()
        assert res.seen.shape == (N,) and res.n_views.shape == (N,)
        assert n is None or N == n
        assert dim is None or C == dim


@FUZZ
@given(ops=st.lists(mutation, min_size=1, max_size=3))
def test_lift_file_mutated_bytes(ops):
    path = _file("m.lift.pt", mutate(VALID_LIFT, ops))
    _check_lift(only_input_errors(lambda: load_lifted(path, n_points=6, dim=4), path), 6, 4)


DTYPES = [
    torch.float16,
    torch.float32,
    torch.float64,
    torch.bfloat16,
    torch.int16,
    torch.int64,
    torch.bool,
    torch.uint8,
    torch.complex64,
]


@st.composite
def tensors(draw):
    shape = draw(st.lists(st.integers(0, 5), min_size=0, max_size=3))
    dtype = draw(st.sampled_from(DTYPES))
    t = torch.randn(tuple(shape), dtype=torch.float64) * draw(st.sampled_from([1.0, 1e6, float("inf"), float("nan")]))
    return t.to(dtype) if dtype != torch.bool else t > 0


value = st.one_of(
    tensors(),
    st.text(max_size=5),
    st.booleans(),
    st.integers(-3, 3),
    st.none(),
    st.lists(st.integers(), max_size=3),
    st.floats(),
)


@FUZZ
@given(
    obj=st.one_of(
        st.dictionaries(
            st.sampled_from(
                ["feat", "seen", "n_views", "vlm", "simulated", "fusion", "scene", "skipped_frames", "extra"]
            ),
            value,
            max_size=9,
        ),
        value,
    ),
    n=st.one_of(st.none(), st.integers(0, 5)),
    dim=st.one_of(st.none(), st.integers(0, 5)),
)
def test_lift_file_generated_dicts(obj, n, dim):
    if isinstance(obj, dict) and "feat" in obj and torch.is_tensor(obj["feat"]) and obj["feat"].dim() == 2:
        m = obj["feat"].shape[0]  # make the rest consistent often enough to reach the deeper checks
        obj.setdefault("seen", torch.ones(m, dtype=torch.bool))
        obj.setdefault("n_views", torch.ones(m, dtype=torch.int16))
        for k, v in (("vlm", "v"), ("simulated", False), ("fusion", "mean"), ("scene", "s")):
            obj.setdefault(k, v)
    path = TMP / "g.lift.pt"
    torch.save(obj, path)
    _check_lift(only_input_errors(lambda: load_lifted(path, n_points=n, dim=dim), path), n, dim)


# ------------------------------------------------------------------------------ configs

DEFAULTS = defaults()
SECTIONS = sorted(DEFAULTS)
scalar = st.one_of(st.none(), st.booleans(), st.integers(-(10**12), 10**12), st.floats(), st.text(max_size=6))
yaml_value = st.recursive(
    scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=6,
)


@st.composite
def config_trees(draw):
    """Mostly-known keys (so merging goes deep) with values of any type, plus some unknown keys."""
    tree = {}
    for section in draw(st.lists(st.sampled_from(SECTIONS + ["nosuch"]), max_size=3, unique=True)):
        keys = sorted(DEFAULTS.get(section, {"k": 1}))
        tree[section] = draw(
            st.one_of(st.dictionaries(st.sampled_from(keys + ["unknown_key"]), yaml_value, max_size=4), yaml_value)
        )
    return tree


def _check_config(cfg):
    if cfg is None:
        return
    for section, keys in DEFAULTS.items():
        for key, default in keys.items():
            v = cfg[section][key]
            if default is None or v is None:
                continue
            if isinstance(default, bool):
                assert isinstance(v, bool)
            elif isinstance(default, float):
                assert isinstance(v, float)
            elif isinstance(default, int):
                assert isinstance(v, int) and not isinstance(v, bool)
            else:
                assert isinstance(v, type(default)), (section, key, v)


@FUZZ
@given(tree=config_trees())
def test_config_generated_trees(tree):
    path = _file("c.yaml", yaml.safe_dump(tree))
    _check_config(only_input_errors(lambda: load_config(path), path))


@FUZZ
@given(ops=st.lists(mutation, min_size=1, max_size=3))
def test_config_mutated_text(ops):
    base = (Path(__file__).resolve().parents[1] / "config" / "geopurify_synthetic.yaml").read_bytes()
    path = _file("m.yaml", mutate(base, ops))
    _check_config(only_input_errors(lambda: load_config(path), path))


def test_config_pathological_yaml():
    for text in [
        "data: " + "[" * 3000 + "]" * 3000,
        "a: &a [*a]\n",
        "? [1, 2]\n: 3\n",
        "\ufeff" + "data: {}\n",
        "!!python/object:os.system {}\n",
        "data:\n  root: !!binary aGVsbG8=\n",
    ]:
        path = _file("p.yaml", text)
        _check_config(only_input_errors(lambda path=path: load_config(path), path))
    only_input_errors(lambda: load_config(TMP), TMP)  # a directory


# ------------------------------------------------------------------------------ images


def _png(mode: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    arr = np.arange(24 * 32, dtype=np.uint16).reshape(24, 32)
    img = Image.fromarray(arr) if mode == "I;16" else Image.fromarray((arr % 256).astype(np.uint8)).convert(mode)
    img.save(buf, format="PNG" if mode != "RGB" else "JPEG")
    return buf.getvalue()


VALID_IMAGES = {m: _png(m) for m in ("I;16", "RGB")}


@FUZZ
@given(mode=st.sampled_from(sorted(VALID_IMAGES)), ops=st.lists(mutation, min_size=1, max_size=3))
def test_images_mutated_bytes(mode, ops):
    path = _file("m.png" if mode == "I;16" else "m.jpg", mutate(VALID_IMAGES[mode], ops))
    only_input_errors(lambda: image_header(path), path)
    for fn in (read_color, read_depth, read_label_image):
        arr = only_input_errors(lambda fn=fn: fn(path), path)
        if arr is not None:
            assert arr.ndim == (3 if fn is read_color else 2)
