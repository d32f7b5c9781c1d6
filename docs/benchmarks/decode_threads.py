"""CPU time of FileSource decoding a clip (with the one copy capture makes per frame), by thread count.

usage: python docs/benchmarks/decode_threads.py CLIP ROUNDS THREADS [THREADS ...]
(0 = FFmpeg's automatic count). Alternates the counts each round; prints CPU s per run and totals.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from vidseg.sources.file import FileSource


def decode_cpu(path: str, threads: int) -> tuple[float, int]:
    t0 = time.process_time()
    source = FileSource(path, threads=threads)
    slot, n = None, 0
    for frame in source.frames():
        if slot is None:
            slot = np.empty(frame.image.shape, np.uint8)
        if hasattr(frame.image, "copy_to"):
            frame.image.copy_to(slot)
        else:
            np.copyto(slot, frame.image)
        n += 1
    source.close()
    return time.process_time() - t0, n


def main(argv: list[str]) -> None:
    path, rounds, counts = argv[0], int(argv[1]), [int(t) for t in argv[2:]]
    totals = dict.fromkeys(counts, 0.0)
    for r in range(rounds):
        for threads in counts:
            cpu, n = decode_cpu(path, threads)
            totals[threads] += cpu
            print(f"round {r + 1} threads {threads}: {cpu:.2f} CPU-s, {n} frames", flush=True)
    print("total CPU-s:", ", ".join(f"threads {t}: {c:.1f}" for t, c in totals.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
