"""Smoke test of an installed lt8 wheel (cibuildwheel's test-command), from outside the source
tree: the native module loads, the build variant is the one asked for (LT8_CUDA=ON: CUDA
kernels for sm_75..sm_90, with the CUTLASS sm_90a GEMMs when LT8_CUTLASS_INCLUDE is set; OFF:
none), and lt8's quantization through JAX's FFI matches a float64
numpy reference of the rounding (round half to even of w * 127 / absmax, within one step at
rounding ties).
"""

import os

import numpy as np

import lt8
from lt8 import _native

variant = os.environ.get("LT8_CUDA", "").upper()
if variant == "ON":
    assert lt8.has_cuda() and _native.cuda_archs() == ["75", "80", "86", "89", "90"], (
        _native.cuda_archs()
    )
    # LT8_CUTLASS_INCLUDE is set for the cu12 variant: Hopper's CUTLASS GEMMs must be in it.
    assert _native.C.cutlass_sm90_built() == bool(os.environ.get("LT8_CUTLASS_INCLUDE"))
elif variant == "OFF":
    assert not lt8.has_cuda()
assert _native.has_ffi(), "built without jaxlib's XLA FFI headers: lt8.jax is unusable"

import lt8.jax as lj  # noqa: E402

w = np.random.default_rng(0).normal(size=(48, 80)).astype(np.float32)
CB, SCB = lj.quantize_weight(w)
absmax = np.abs(w.astype(np.float64)).max(axis=1)
ref = np.round(w.astype(np.float64) * 127 / absmax[:, None])
assert np.array_equal(np.asarray(SCB), absmax.astype(np.float32))
assert np.abs(np.asarray(CB, dtype=np.int32) - ref).max() <= 1
assert (np.asarray(CB) != ref).mean() < 0.01
print(f"lt8 {lt8.__version__} wheel ok (CUDA kernels: {_native.cuda_archs() or 'none'})")
