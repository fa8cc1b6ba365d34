"""Compiled CPU kernels of purification's pooling: edge dot products and the T pooling steps.

Both work on the fixed-K neighbour arrays of the voxel kNN graph (idx (V, K) int32, W (V, K)
float32: a CSR matrix whose rows all hold K entries) and run over blocks of voxels in threads (the
thread count of torch; the compiled kernels release the GIL). Not numba's parallel=True: loading
its machinery costs a process 2-5 s, more than the kernels run.

- `pool_steps`: F(t+1)_i = sum_j W_ij F(t)_{idx_ij}, T times, in one call (two buffers). Each output row is summed
  over j = 0..K-1 in order with fused multiply-adds, in registers, 8 channels per vector: the
  same arithmetic as torch's CPU embedding_bag (sum mode, per-sample weights), so the result is
  equal bit for bit to T embedding_bag steps (tests/test_poolkernels.py). Channels are padded to a
  multiple of 8 (zero columns pool to zero), so every neighbour row is gathered as whole vectors.
- `edge_dots`: g_i . g_{idx_ij} for every edge, 16 lanes per vector, then a butterfly sum of the
  lanes. torch's sampled product sums in another order, so these differ from it in the last bit
  or two (|diff| <= 2.4e-7 on unit 128-d embeddings).

Why explicit vectors: numba keeps a per-row accumulator array in memory, so every neighbour's
multiply-add waits for a store and a reload of the accumulator; the small vector type below
(LLVM <8 x float> / <16 x float> values, four intrinsics each) keeps the accumulators in registers,
which is 2-3x faster than the array form and than embedding_bag. numba compiles the kernels on their
first use after an install and caches them beside this file (the compile lock of
`geopurify.ops.gridknn`: concurrent processes take turns, the later ones load the cache).
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.extending import intrinsic, models, register_model

# ----------------------------------------------------------------------------------------------
# float32 vectors of 8 and 16 lanes for numba


class _F32Vec(types.Type):
    def __init__(self, n: int):
        self.n = n
        super().__init__(name=f"F32x{n}")


_V8, _V16 = _F32Vec(8), _F32Vec(16)


@register_model(_F32Vec)
class _F32VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(ir.FloatType(), fe_type.n))


def _ll(vt):
    return ir.VectorType(ir.FloatType(), vt.n)


def _make_vec_ops(vt):
    """zero(), load(arr, i) = arr[i : i + n] (1-D float32), store(arr, i, v), fma(acc, w, x) =
    acc + w * x rounded once (w a float32 or a vector) for the vector type vt."""
    lt = _ll(vt)

    @intrinsic
    def zero(typingctx):
        def codegen(context, builder, sig, args):
            return ir.Constant(lt, [0.0] * vt.n)

        return vt(), codegen

    @intrinsic
    def load(typingctx, arr, i):
        def codegen(context, builder, sig, args):
            ary = context.make_array(sig.args[0])(context, builder, args[0])
            ptr = builder.gep(ary.data, [args[1]])
            return builder.load(builder.bitcast(ptr, lt.as_pointer()), align=4)

        return vt(arr, i), codegen

    @intrinsic
    def store(typingctx, arr, i, v):
        def codegen(context, builder, sig, args):
            ary = context.make_array(sig.args[0])(context, builder, args[0])
            ptr = builder.gep(ary.data, [args[1]])
            builder.store(args[2], builder.bitcast(ptr, lt.as_pointer()), align=4)
            return context.get_dummy_value()

        return types.none(arr, i, v), codegen

    @intrinsic
    def fma(typingctx, acc, w, x):
        def codegen(context, builder, sig, args):
            a, w, x = args
            if not isinstance(sig.args[1], _F32Vec):  # splat the scalar weight
                w = builder.insert_element(ir.Constant(lt, ir.Undefined), w, ir.Constant(ir.IntType(32), 0))
                w = builder.shuffle_vector(w, w, ir.Constant(ir.VectorType(ir.IntType(32), vt.n), [0] * vt.n))
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(lt, [lt] * 3), f"llvm.fma.v{vt.n}f32")
            return builder.call(fn, [w, x, a])

        return vt(vt, w, vt), codegen

    return zero, load, store, fma


_zero8, _load8, _store8, _fma8 = _make_vec_ops(_V8)
_zero16, _load16, _store16, _fma16 = _make_vec_ops(_V16)


@intrinsic
def _hsum16(typingctx, v):
    """Sum of the 16 lanes: v + v[lane ^ 8], then ^ 4, ^ 2, ^ 1; lane 0."""

    def codegen(context, builder, sig, args):
        x = args[0]
        for s in (8, 4, 2, 1):
            mask = ir.Constant(ir.VectorType(ir.IntType(32), 16), [i ^ s for i in range(16)])
            x = builder.fadd(x, builder.shuffle_vector(x, x, mask))
        return builder.extract_element(x, ir.Constant(ir.IntType(32), 0))

    return types.float32(_V16), codegen


# ----------------------------------------------------------------------------------------------
# kernels (each on a range of rows; `_run_rows` spreads the rows over threads)


@njit(cache=True, nogil=True)
def _edge_dots(g, E, idx, out, r0, r1):
    """out[i, j] = g_i . g_{idx[i, j]} for rows i in r0..r1-1; g (V * E,) float32 rows of E channels."""
    K = idx.shape[1]
    E16 = E - E % 16
    for i in range(r0, r1):
        a = i * E
        for j in range(K):
            b = idx[i, j] * E
            acc = _zero16()
            for e in range(0, E16, 16):
                acc = _fma16(acc, _load16(g, a + e), _load16(g, b + e))
            s = _hsum16(acc)
            for e in range(E16, E):
                s += g[a + e] * g[b + e]
            out[i, j] = s


@njit(cache=True, nogil=True)
def _pool_rows(f, P, idx, W, out, r0, r1):
    """Row i in r0..r1-1 of out = sum over j of W[i, j] * row idx[i, j] of f; f, out (V * P,)
    float32 rows of P channels, P a multiple of 8; three 8-channel vectors per pass over a row's
    neighbours."""
    K = idx.shape[1]
    G = P // 8
    for i in range(r0, r1):
        o = i * P
        for g0 in range(0, G, 3):
            c = 8 * g0
            n = min(3, G - g0)
            a0 = _zero8()
            a1 = _zero8()
            a2 = _zero8()
            if n == 3:
                for j in range(K):
                    w = W[i, j]
                    b = idx[i, j] * P + c
                    a0 = _fma8(a0, w, _load8(f, b))
                    a1 = _fma8(a1, w, _load8(f, b + 8))
                    a2 = _fma8(a2, w, _load8(f, b + 16))
                _store8(out, o + c + 16, a2)
                _store8(out, o + c + 8, a1)
            elif n == 2:
                for j in range(K):
                    w = W[i, j]
                    b = idx[i, j] * P + c
                    a0 = _fma8(a0, w, _load8(f, b))
                    a1 = _fma8(a1, w, _load8(f, b + 8))
                _store8(out, o + c + 8, a1)
            else:
                for j in range(K):
                    a0 = _fma8(a0, W[i, j], _load8(f, idx[i, j] * P + c))
            _store8(out, o + c, a0)


_ROWS = 4096  # rows per task: small enough to balance two threads, large enough to amortise a task


def _run_rows(kernel, args: tuple, V: int, pool) -> None:
    """kernel(*args, r0, r1) over rows 0..V-1, in blocks of _ROWS on the thread pool `pool`
    (None: in this thread). The kernels release the GIL and write disjoint rows."""
    if pool is None or V <= _ROWS:
        kernel(*args, 0, V)
        return
    list(pool.map(lambda r0: kernel(*args, r0, min(V, r0 + _ROWS)), range(0, V, _ROWS)))


@contextlib.contextmanager
def _thread_pool(threads: int | None):
    """A pool of `threads` threads (default torch's intra-op thread count); None for one thread."""
    import torch

    n = max(1, torch.get_num_threads() if threads is None else int(threads))
    if n == 1:
        yield None
        return
    with ThreadPoolExecutor(n) as ex:
        yield ex


# ----------------------------------------------------------------------------------------------
# entry points (numpy in, numpy out)


_READY = False


def _ready() -> None:
    """Compile or load the kernels once per process, under the grid kNN's compile lock."""
    global _READY
    from geopurify.ops.gridknn import compile_lock

    with compile_lock():
        _READY = True
        c = np.array([[1, 0], [0, 1]], np.int32)
        edge_dots(np.eye(2, 17, dtype=np.float32), c.astype(np.int64))
        pool_steps(np.ones((2, 9), np.float32), c, np.ones((2, 2), np.float32), 1)


def edge_dots(g: np.ndarray, idx: np.ndarray, threads: int | None = None) -> np.ndarray:
    """(V, K) float32: g_i . g_{idx_ij} for g (V, E) float32 and idx (V, K) integer (read once: int64
    as knn_graph gives it, no int32 copy)."""
    if not _READY:
        _ready()
    g = np.ascontiguousarray(g, dtype=np.float32)
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    out = np.empty(idx.shape, np.float32)
    if idx.size:
        with _thread_pool(threads) as ex:
            _run_rows(_edge_dots, (g.reshape(-1), g.shape[1], idx, out), idx.shape[0], ex)
    return out


def pool_steps(
    values: np.ndarray, idx: np.ndarray, W: np.ndarray, steps: int, threads: int | None = None
) -> np.ndarray:
    """(V, C) float32: `steps` rounds of F <- A F from F = values (V, C), A the rows idx (V, K) with
    weights W (V, K); equal bit for bit to as many torch embedding_bag (sum, weighted) steps."""
    if not _READY:
        _ready()
    V, C = values.shape
    P = -(-C // 8) * 8
    f = np.zeros((V, P), np.float32)
    f[:, :C] = values
    if steps > 0 and idx.shape[1] > 0:
        idx = np.ascontiguousarray(idx, dtype=np.int32)
        W = np.ascontiguousarray(W, dtype=np.float32)
        src, dst = f.reshape(-1), np.empty(V * P, np.float32)
        with _thread_pool(threads) as ex:
            for _ in range(steps):  # ping-pong between two buffers
                _run_rows(_pool_rows, (src, P, idx, W, dst), V, ex)
                src, dst = dst, src
        f = src.reshape(V, P)
    return np.ascontiguousarray(f[:, :C]) if P != C else f
