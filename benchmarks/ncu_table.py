"""Condenses an Nsight Compute CSV (`ncu --csv --page details`, as scripts/gpu_check.sh's ncu stage
writes it) to one line per kernel: name, grid, block, duration, DRAM throughput, achieved and
theoretical occupancy, registers per thread.

    python benchmarks/ncu_table.py ncu.csv [--match lt8::,nvjet,splitK]
"""

from __future__ import annotations

import argparse
import csv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("--match", default="", help="comma-separated substrings of kernel names")
    args = ap.parse_args()
    rows = [r for r in csv.reader(open(args.csv)) if len(r) > 10]
    hdr, data = rows[0], rows[1:]
    col = {name: hdr.index(name) for name in hdr}
    kernels: dict[str, dict[str, str]] = {}
    for r in data:
        k = kernels.setdefault(
            r[col["ID"]],
            {
                "name": r[col["Kernel Name"]],
                "grid": r[col["Grid Size"]],
                "block": r[col["Block Size"]],
            },
        )
        k[r[col["Metric Name"]]] = r[col["Metric Value"]] + " " + r[col["Metric Unit"]]
    wanted = [m for m in args.match.split(",") if m]
    print("id | kernel | grid | block | duration | DRAM | occupancy achieved / theoretical | regs")
    for i, k in kernels.items():
        if wanted and not any(m in k["name"] for m in wanted):
            continue
        name = k["name"].replace("(anonymous namespace)::", "").replace("<unnamed>::", "")[:70]
        print(
            f"{i} | {name} | {k['grid']} | {k['block']} | {k.get('Duration', '?')} | "
            f"{k.get('DRAM Throughput', '?')} | {k.get('Achieved Occupancy', '?')} / "
            f"{k.get('Theoretical Occupancy', '?')} | {k.get('Registers Per Thread', '?')}"
        )


if __name__ == "__main__":
    main()
