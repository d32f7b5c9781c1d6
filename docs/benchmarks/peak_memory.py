"""Peak total memory (PSS, so shared memory is counted once) of a vidseg run and all its processes.

usage: python docs/benchmarks/peak_memory.py -- vidseg file IN -o OUT -y --model none ...
Samples every 0.2 s; prints the peak in MiB and the wall time.
"""
from __future__ import annotations

import subprocess
import sys
import time

import psutil


def total_pss(root: psutil.Process) -> int:
    total = 0
    for p in [root] + root.children(recursive=True):
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def main(argv: list[str]) -> None:
    cmd = argv[argv.index("--") + 1:] if "--" in argv else argv
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, total_pss(root))
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    print(f"peak PSS {peak / 2**20:.0f} MiB, wall {time.monotonic() - t0:.1f} s, exit {proc.returncode}")


if __name__ == "__main__":
    main(sys.argv[1:])
