"""Where rendered frames go."""
from __future__ import annotations

from typing import Protocol

import numpy as np


class FrameSink(Protocol):
    """write() takes a uint8 RGB [H, W, 3] frame and its pts in seconds; close() finalises
    (an MP4 sink flushes the encoder and writes the index, so the file plays).
    A window sink's write() returns False when the user asked to quit (q, Esc, closed window);
    other sinks return True.

    Optional: write_yuv420p(i420, pts) taking uint8 I420 [H*3/2, W] (see SourceFrame). A sink
    that has it gets I420 frames as they are; the others get them converted to RGB."""

    def write(self, image: np.ndarray, pts: float) -> bool: ...

    def close(self) -> None: ...
