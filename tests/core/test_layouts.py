"""cuBLASLt tiled layouts: the tests' numpy reference (tests/layout_reference.py) against
brute-force re-statements of cublasLt.h's descriptions, lt8's C++ layout geometry (lt8.core.layouts,
through lt8._C) against that reference, plus bitsandbytes' get_inverse_transform_indices /
undo_layout on numpy, torch and jax arrays. CPU only; the GPU checks against cuBLASLt itself are in
test_layouts_cuda.py."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import numpy as np
import pytest
from layout_reference import (
    from_layout_ref,
    layout_offsets_ref,
    padded_shape_ref,
    tile_offsets_ref,
    to_layout_ref,
)

from lt8.core import layouts as L

TILED = ["col32", "col_turing", "col_ampere"]
SHAPES = [(40, 70), (3, 5), (1, 1), (33, 33), (64, 96), (8, 32), (31, 64), (0, 7), (7, 0)]
REPO = pathlib.Path(__file__).resolve().parents[2]


# --- brute force, one statement of each cublasLt.h description, element by element ----------


def _padded(a: np.ndarray, prows: int, pcols: int) -> np.ndarray:
    p = np.zeros((prows, pcols), dtype=a.dtype)
    p[: a.shape[0], : a.shape[1]] = a
    return p


def brute_col32(a: np.ndarray) -> list[int]:
    """ "Column-major ordered tiles of 32 columns": each 32-column group, row by row."""
    rows, cols = a.shape
    p = _padded(a, rows, -(-cols // 32) * 32)
    out = []
    for g in range(p.shape[1] // 32):
        for r in range(rows):
            out.extend(p[r, 32 * g : 32 * g + 32])
    return out


def brute_col_turing(a: np.ndarray) -> list[int]:
    """ "Column-major ordered tiles of composite tiles with total 32 columns and 8 rows, tile
    composed of interleaved inner tiles of 4 columns within 4 even or odd rows": per 8x32 tile,
    the even rows' 4x4 blocks (one per 4 columns) then the odd rows' blocks."""
    rows, cols = a.shape
    p = _padded(a, -(-rows // 8) * 8, -(-cols // 32) * 32)
    out = []
    for g in range(p.shape[1] // 32):
        for t in range(p.shape[0] // 8):
            for parity in (0, 1):
                tile_rows = [8 * t + parity + 2 * k for k in range(4)]
                for quad in range(8):
                    for r in tile_rows:
                        out.extend(p[r, 32 * g + 4 * quad : 32 * g + 4 * quad + 4])
    return out


def brute_col_ampere(a: np.ndarray) -> list[int]:
    """COL32_2R_4R4: per 32x32 tile, the element at (row, col) sits at
    (((row%8)/2*4+row/8)*2+row%2)*32+col (cublasLt.h, integer division)."""
    rows, cols = a.shape
    p = _padded(a, -(-rows // 32) * 32, -(-cols // 32) * 32)
    out = [0] * p.size
    base = 0
    for g in range(p.shape[1] // 32):
        for t in range(p.shape[0] // 32):
            for row in range(32):
                for col in range(32):
                    off = (((row % 8) // 2 * 4 + row // 8) * 2 + row % 2) * 32 + col
                    out[base + off] = p[32 * t + row, 32 * g + col]
            base += 1024
    return out


def ampere_rows_by_description() -> list[int]:
    """bitsandbytes' wording of the same order: rows go in pairs, pairs 8 apart:
    [0 1 8 9 16 17 24 25] [2 3 10 11 18 19 26 27] ... (each number a 32-byte row)."""
    return [2 * k + 8 * j + i for k in range(4) for j in range(4) for i in range(2)]


BRUTE = {"col32": brute_col32, "col_turing": brute_col_turing, "col_ampere": brute_col_ampere}


def random_int8(rng, shape) -> np.ndarray:
    return rng.integers(-128, 128, size=shape, dtype=np.int8)


# --- the reference formulas ----------------------------------------------------------------
# (test_layouts_cuda.py checks the same reference against cuBLASLt itself on a GPU.)


@pytest.mark.parametrize("order", TILED)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_reference_matches_brute_force(order, shape, rng):
    a = random_int8(rng, shape)
    got = to_layout_ref(a, order)
    assert got.shape == padded_shape_ref(order, *shape)
    assert got.dtype == np.int8
    np.testing.assert_array_equal(got.ravel(), np.array(BRUTE[order](a), dtype=np.int8))


def test_ampere_tile_rows_match_bitsandbytes_description():
    # Which row each 32-byte slot of a 32x32 tile holds, from the offset formula.
    slot_rows = np.argsort(tile_offsets_ref("col_ampere")[:, 0] // 32)
    assert slot_rows.tolist() == ampere_rows_by_description()


def test_turing_tile_matches_bitsandbytes_kernel_formula():
    # bitsandbytes' kTransformRowToFormat, COL_TURING branch (per 8x32 tile).
    expected = np.empty((8, 32), dtype=np.int64)
    for r in range(8):
        for c in range(32):
            if r % 2:
                expected[r, c] = 128 + (c // 4) * 16 + (c % 4) + (r - 1) * 2
            else:
                expected[r, c] = (c // 4) * 16 + (c % 4) + r * 2
    np.testing.assert_array_equal(tile_offsets_ref("col_turing"), expected)


@pytest.mark.parametrize("order", TILED)
def test_tile_offsets_are_a_permutation(order):
    off = tile_offsets_ref(order).ravel()
    assert sorted(off.tolist()) == list(range(off.size))


@pytest.mark.parametrize("order", TILED)
@pytest.mark.parametrize("shape", SHAPES + [(100, 300)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_round_trip_and_zero_padding(order, shape, rng):
    # No zeros in the data, so every 0 in the buffer is padding.
    a = (rng.integers(1, 128, size=shape) * rng.choice([-1, 1], size=shape)).astype(np.int8)
    buf = to_layout_ref(a, order)
    np.testing.assert_array_equal(from_layout_ref(buf, order, *shape), a)
    offsets = layout_offsets_ref(order, *shape)
    assert np.unique(offsets).size == offsets.size  # injective
    padding = np.ones(buf.size, dtype=bool)
    padding[offsets.ravel()] = False
    assert np.all(buf.ravel()[padding] == 0)
    assert np.count_nonzero(buf) == a.size


def test_row_order_is_identity(rng):
    a = random_int8(rng, (5, 7))
    np.testing.assert_array_equal(to_layout_ref(a, "row"), a)
    np.testing.assert_array_equal(from_layout_ref(a, "row", 5, 7), a)


def test_padded_shapes_and_leading_dims():
    # The examples of cublasLt.h: 33 columns, 2 rows (COL32) -> ld >= 64; 33 columns, 1 row ->
    # ld >= 256 (COL4_4R2_8C) and >= 1024 (COL32_2R_4R4).
    assert L.leading_dim("col32", 2, 33) == 64
    assert L.leading_dim("col_turing", 1, 33) == 256
    assert L.leading_dim("col_ampere", 1, 33) == 1024
    assert L.leading_dim("row", 3, 33) == 33
    assert L.padded_shape("row", 3, 5) == (3, 5)
    assert L.padded_shape("col32", 3, 5) == (3, 32)
    assert L.padded_shape("col_turing", 3, 5) == (8, 32)
    assert L.padded_shape("col_ampere", 33, 65) == (64, 96)
    assert L.padded_shape("col_turing", 0, 0) == (0, 0)
    with pytest.raises(ValueError):
        L.padded_shape("col64", 1, 1)


# --- lt8's C++ geometry (what lt8.core.layouts, the kernels and both frontends use) ------------


@pytest.mark.parametrize("order", ["row", *TILED])
@pytest.mark.parametrize("shape", SHAPES + [(100, 300), (65, 1)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_cpp_offsets_match_reference(order, shape):
    got = L.layout_offsets(order, *shape)
    assert got.dtype == np.int64 and got.shape == shape
    np.testing.assert_array_equal(got, layout_offsets_ref(order, *shape))
    assert L.padded_shape(order, *shape) == padded_shape_ref(order, *shape)


@pytest.mark.parametrize("order", TILED)
def test_cpp_offsets_match_reference_random_shapes(order, rng):
    for _ in range(20):
        rows, cols = (int(v) for v in rng.integers(0, 200, size=2))
        np.testing.assert_array_equal(
            L.layout_offsets(order, rows, cols), layout_offsets_ref(order, rows, cols)
        )


def test_layout_offsets_rejects_bad_arguments():
    with pytest.raises(ValueError, match="order must be one of"):
        L.layout_offsets("col64", 1, 1)
    with pytest.raises(ValueError, match="rows and cols must be >= 0"):
        L.layout_offsets("col32", -1, 4)


def test_codes_are_the_checkpoint_format():
    # bitsandbytes' weight_format codes (and cublasLtOrder_t values) name these layouts; lt8's
    # enum must keep them, since checkpoints store them.
    assert {n: s.code for n, s in L.LAYOUTS.items()} == {
        "row": 0,
        "col32": 1,
        "col_turing": 2,
        "col_ampere": 3,
    }
    assert {n: s.cublaslt_order for n, s in L.LAYOUTS.items()} == {
        "row": 1,
        "col32": 2,
        "col_turing": 3,
        "col_ampere": 4,
    }
    assert L.TILE_SHAPES == {"col32": (1, 32), "col_turing": (8, 32), "col_ampere": (32, 32)}


def test_module_imports_neither_torch_nor_jax():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('layouts', {str(REPO / 'lt8/core/layouts.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['layouts'] = m\n"
        "spec.loader.exec_module(m)\n"
        "assert 'torch' not in sys.modules and 'jax' not in sys.modules, sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- bitsandbytes' get_inverse_transform_indices / undo_layout ------------------------------

# A smaller version of bitsandbytes' test_layout_exact_match (14336 * 3 x 14336 there).
EXACT_SHAPE = (14336 // 16 * 3, 14336 // 16)
TILE_ORDERS = [("col_turing", (8, 32)), ("col_ampere", (32, 32)), ("col32", (1, 32))]


def _numpy_transform(order):
    return lambda x: to_layout_ref(np.asarray(x), order)


@pytest.mark.parametrize("order, tile_size", TILE_ORDERS)
def test_inverse_transform_indices_numpy(order, tile_size, rng):
    x = random_int8(rng, EXACT_SHAPE)
    transform = _numpy_transform(order)
    tile_indices = L.get_inverse_transform_indices(transform, tile_size, like="numpy")
    assert isinstance(tile_indices, np.ndarray) and tile_indices.shape == tile_size
    # position p of a tiled tile holds row-major index tile_indices[p]: the inverse of tile_offsets
    np.testing.assert_array_equal(
        tile_indices.ravel()[tile_offsets_ref(order).ravel()],
        np.arange(tile_size[0] * tile_size[1]),
    )
    restored = L.undo_layout(transform(x), tile_indices)
    assert restored.flags.c_contiguous
    np.testing.assert_array_equal(restored, x)


def test_inverse_transform_indices_multibyte():
    # Tiles of more than 256 elements need the byte-by-byte encoding; check a 3-byte case too.
    perm = np.random.default_rng(0).permutation(300 * 300)
    transform = lambda x: np.asarray(x).reshape(-1)[perm].reshape(300, 300)  # noqa: E731
    idx = L.get_inverse_transform_indices(transform, (300, 300), like="numpy")
    np.testing.assert_array_equal(idx.ravel(), perm)


@pytest.mark.parametrize("order, tile_size", TILE_ORDERS)
def test_inverse_transform_indices_torch(order, tile_size, rng):
    torch = pytest.importorskip("torch")
    import lt8.torch  # noqa: F401  (registers torch's arrays with lt8.core.arrays)

    x = torch.from_numpy(random_int8(rng, EXACT_SHAPE))

    def transform(t):
        assert isinstance(t, torch.Tensor)
        return torch.from_numpy(to_layout_ref(t.numpy(), order))

    tile_indices = L.get_inverse_transform_indices(transform, tile_size)  # torch is imported
    assert isinstance(tile_indices, torch.Tensor) and tile_indices.dtype == torch.int64
    restored = L.undo_layout(transform(x), tile_indices)
    assert isinstance(restored, torch.Tensor) and restored.is_contiguous()
    assert torch.equal(restored, x)


@pytest.mark.parametrize("order, tile_size", TILE_ORDERS)
def test_inverse_transform_indices_jax(order, tile_size, rng):
    jnp = pytest.importorskip("jax.numpy")
    import lt8.jax  # noqa: F401  (registers jax's arrays with lt8.core.arrays)

    x_np = random_int8(rng, EXACT_SHAPE)

    def transform(t):
        return jnp.asarray(to_layout_ref(np.asarray(t), order))

    tile_indices = L.get_inverse_transform_indices(transform, tile_size, like="jax")
    assert type(tile_indices).__module__.split(".")[0] in ("jax", "jaxlib")
    restored = L.undo_layout(transform(jnp.asarray(x_np)), tile_indices)
    assert restored.dtype == jnp.int8
    np.testing.assert_array_equal(np.asarray(restored), x_np)


def test_undo_layout_rejects_partial_tiles():
    with pytest.raises(ValueError):
        L.undo_layout(np.zeros((12, 32), np.int8), np.zeros((8, 32), np.int64))
