"""A sink that discards frames (benchmarks, detections-only runs)."""
from __future__ import annotations

import numpy as np


class NullSink:
    """write() accepts any uint8 RGB [H, W, 3] frame and keeps nothing."""

    def write(self, image: np.ndarray, pts: float) -> bool:
        return True

    def close(self) -> None:
        pass
