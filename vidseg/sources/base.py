"""What a capture stage reads from: a source of RGB frames with timestamps."""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator, Optional, Protocol

import numpy as np


@dataclass
class SourceFrame:
    """One decoded frame.

    image: uint8 RGB [H, W, 3], C-contiguous (format "rgb24", the default); or, when the
        decoder gives planar 4:2:0 and the size is even, I420 [H*3/2, W] (format "yuv420p":
        Y plane, then U, then V, the layout of cv2's COLOR_*_I420). The I420 form lets the
        file → MP4 path skip two colour conversions; every stage accepts both. A source may
        give, instead of the array, an object with the same `shape` and `copy_to(dst)` (and
        `__array__`) that fills the ring slot straight from the decoder's buffers
        (`vidseg.sources.file.DecodedI420`); `np.asarray(frame.image)` is the array either way.
    pts: presentation time in seconds from the start of the source (files: the stream's
        pts × time_base; live sources: seconds on the capture clock since the first frame).
    capture_time: time.monotonic() when the frame was read, for capture→sink latency.
    """

    image: np.ndarray
    pts: float
    capture_time: float
    format: str = "rgb24"


class FrameSource(Protocol):
    """A file, camera or stream. `frames()` yields until the end (or `close()`).

    name: what to show the user; never contains a password.
    live: True for cameras and streams (queue policy `latest`), False for files (`block`).
    width, height: frame size after rotation; fps: nominal frame rate (None if unknown);
    time_base: Fraction of the source stream, kept by the MP4 sink for files.
    frame_count: frames expected (files; None when unknown or live).
    """

    name: str
    live: bool
    width: int
    height: int
    fps: Optional[float]
    time_base: Fraction
    frame_count: Optional[int]

    def frames(self) -> Iterator[SourceFrame]: ...

    def close(self) -> None: ...
