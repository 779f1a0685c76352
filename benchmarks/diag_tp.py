"""Where the time of a DTensor tensor-parallel MLP goes (torchrun, one process a GPU): the fp16
Llama-3-8B MLP sharded with ColwiseParallel/RowwiseParallel, timed per forward at M=1 and
M=2048, wall clock and CUDA events, with a profiler table of rank 0's M=1 forward.

    torchrun --standalone --nproc-per-node=2 benchmarks/diag_tp.py
"""

import os
import time

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module


class MLP(torch.nn.Module):
    def __init__(self, h=4096, i=14336):
        super().__init__()
        self.up = torch.nn.Linear(h, i, bias=False)
        self.down = torch.nn.Linear(i, h, bias=False)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def timed(fn, n=20):
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e3


def main():
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    torch.cuda.set_device(rank)
    dev = torch.device("cuda", rank)
    dist.init_process_group("nccl", device_id=dev)
    mesh = init_device_mesh("cuda", (world,))
    torch.manual_seed(0)
    mlp = MLP().to(dev, torch.float16).eval()
    xs = {m: torch.randn(m, 4096, device=dev, dtype=torch.float16) for m in (1, 2048)}
    with torch.no_grad():
        plain = {m: timed(lambda: mlp(x)) for m, x in xs.items()}
        parallelize_module(mlp, mesh, {"up": ColwiseParallel(), "down": RowwiseParallel()})
        tp = {m: timed(lambda: mlp(x)) for m, x in xs.items()}
        ar = {m: timed(lambda: dist.all_reduce(x.clone())) for m, x in xs.items()}
        if rank == 0:
            print(
                f"world {world} OMP={os.environ.get('OMP_NUM_THREADS')}: ms per forward "
                f"unsharded {plain}, TP {tp}, all_reduce alone {ar}",
                flush=True,
            )
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                mlp(xs[1])
            torch.cuda.synchronize()
        if rank == 0:
            print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=18), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
