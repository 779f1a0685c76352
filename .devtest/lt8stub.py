"""pytest plugin for the device check: a stand-in `lt8` package whose functional.transform calls
the layout kernel through a ctypes shim (the real extension is built by the lead)."""
import ctypes, os, sys, types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pkg = types.ModuleType("lt8"); pkg.__path__ = [os.path.join(REPO, "lt8")]
pkg.has_cuda = lambda: True
sys.modules["lt8"] = pkg
from lt8.core import layouts as L  # noqa: E402

lib = ctypes.CDLL(os.path.join(REPO, ".devtest", "libshim.so"))
lib.shim_gpu_transform.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                   ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
lib.shim_msg.restype = ctypes.c_char_p


def transform(A, to_order, from_order="row", out=None, transpose=False, state=None, ld=None):
    import torch
    shape = tuple(A.shape) if from_order == "row" else tuple(state[0])
    rows, cols = shape
    A = A.contiguous()
    res = torch.empty(L.padded_shape(to_order, rows, cols), dtype=torch.int8, device=A.device)
    rc = lib.shim_gpu_transform(A.data_ptr(), res.data_ptr(), rows, cols, L.LAYOUTS[from_order].code,
                                L.LAYOUTS[to_order].code, torch.cuda.current_stream().cuda_stream,
                                A.device.index if A.device.index is not None else -1)
    if rc:
        raise RuntimeError(lib.shim_msg().decode())
    return res, (shape, to_order)


F = types.ModuleType("lt8.functional"); F.transform = transform
sys.modules["lt8.functional"] = F; pkg.functional = F
