"""All-reduce latency and bandwidth between this host's GPUs through torch + NCCL, one process a
GPU (what torchrun and DTensor use). Diagnostic for the multi-GPU benchmarks:

    torchrun --standalone --nproc-per-node=2 benchmarks/diag_nccl.py
"""

import os
import time

import torch
import torch.distributed as dist


def main() -> None:
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(rank)
    for numel in (4096, 16 * 4096, 2048 * 4096):
        x = torch.ones(numel, device="cuda", dtype=torch.float16)
        for _ in range(5):
            dist.all_reduce(x)
        torch.cuda.synchronize()
        n = 50
        t0 = time.perf_counter()
        for _ in range(n):
            dist.all_reduce(x)
        torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / n
        if rank == 0:
            mb = numel * 2 / 1e6
            print(
                f"world {world} {os.environ.get('PROBE_TAG', '')}: all_reduce {mb:8.3f} MB "
                f"{dt * 1e6:9.1f} us  ({mb / 1e3 / dt:7.1f} GB/s algbw)",
                flush=True,
            )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
