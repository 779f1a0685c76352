import lt8stub, torch, sys
sys.path.insert(0, "tests")
from test_layouts_cuda import CublasLt, _find_cublaslt
F = lt8stub.F
lt = CublasLt(_find_cublaslt())
x = torch.randint(-128, 128, (43008, 14336), dtype=torch.int8, device="cuda")
def t(fn, n=10):
    fn(); torch.cuda.synchronize()
    s, e = torch.cuda.Event(True), torch.cuda.Event(True)
    s.record()
    for _ in range(n): fn()
    e.record(); torch.cuda.synchronize()
    return s.elapsed_time(e) / n
for order in ["col32", "col_turing", "col_ampere"]:
    out, st = F.transform(x, order)
    a = t(lambda: F.transform(x, order)); b = t(lambda: F.transform(out, "row", from_order=order, state=st)); c = t(lambda: lt.transform(x, order))
    gb = 2 * x.numel() / 1e9
    print(f"{order:11s} lt8 row->tiled {a:.3f} ms ({gb/a:.0f} TB/s-equiv GB/ms)  tiled->row {b:.3f} ms  cuBLASLt row->tiled (incl. zero-fill) {c:.3f} ms")
y = x[:, :14333].contiguous()
for order in ["col_turing"]:
    out, st = F.transform(y, order)
    print("unaligned-cols (byte path) row->tiled", t(lambda: F.transform(y, order)), "tiled->row", t(lambda: F.transform(out, "row", from_order=order, state=st)))
