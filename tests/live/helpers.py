"""Test-only model and sink for the live end-to-end tests (importable by the stage processes)."""
from __future__ import annotations

import time

import numpy as np

from tests.fake_models import SlowBlobModel


def slow_model_300ms(batch_size: int = 1, **_ignored) -> SlowBlobModel:
    """A model that takes 300 ms per batch (sleeps, so it leaves the CPU to the rest)."""
    return SlowBlobModel(batch_size=1, delay=0.3)


class FrameLog:
    """A sink that appends "<pts> <capture_time> <sink_time>" per frame to `path` (for
    measuring latency and rate over a run)."""

    wants_capture_time = True

    def __init__(self, path: str):
        self._file = open(path, "w", buffering=1)

    def write(self, image: np.ndarray, pts: float, capture_time: float) -> bool:
        self._file.write(f"{pts:.6f} {capture_time:.6f} {time.monotonic():.6f}\n")
        return True

    def close(self) -> None:
        self._file.close()


def read_log(path) -> np.ndarray:
    """float64 [N, 3]: pts, capture_time, sink_time per frame."""
    return np.loadtxt(path, ndmin=2)
