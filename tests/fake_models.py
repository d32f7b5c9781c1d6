"""Small, fast test models implementing `vidseg.detections.FrameModel` (no TensorFlow).

`BlobModel` finds saturated red, green and blue blobs (what the test clips draw) and returns
their boxes and 28×28 masks; `SlowBlobModel` does the same after sleeping `delay` s per batch
(a model slower than decode, without using CPU); `CrowdedSlowModel` sleeps too and returns
many whole-frame masks, which make drawing cost. Use them as `--model tests.fake_models:BlobModel`.
"""
from __future__ import annotations

import time
from typing import Sequence

import cv2
import numpy as np

from vidseg.detections import MASK_SIZE, Detections

CLASS_NAMES = ("BG", "red", "green", "blue")
MIN_AREA = 64


class BlobModel:
    """Connected components of pixels where one RGB channel is > 150 and the others < 100;
    scores 0.7–0.95, ordered red, green, blue."""

    class_names = CLASS_NAMES

    def __init__(self, batch_size: int = 2, **_ignored):
        self.batch_size = batch_size

    def __call__(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        return [self._detect(f) for f in frames]

    def _detect(self, image: np.ndarray) -> Detections:
        boxes, class_ids, scores, masks = [], [], [], []
        for channel in range(3):
            others = [c for c in range(3) if c != channel]
            hit = (image[..., channel] > 150) & (image[..., others[0]] < 100) & (image[..., others[1]] < 100)
            n, labels, stats, _ = cv2.connectedComponentsWithStats(hit.view(np.uint8), connectivity=8)
            for k in range(1, n):
                x, y, w, h, area = stats[k]
                if area < MIN_AREA:
                    continue
                crop = (labels[y:y + h, x:x + w] == k).astype(np.float32)
                masks.append(cv2.resize(crop, (MASK_SIZE, MASK_SIZE), interpolation=cv2.INTER_LINEAR))
                boxes.append((y, x, y + h, x + w))
                class_ids.append(channel + 1)
                # red > green > blue whatever the sizes (a blob a pixel smaller at another
                # resolution must not reorder the detections); bigger scores higher within a class
                scores.append(0.9 - 0.1 * channel + 0.05 * area / hit.size)
        if not boxes:
            return Detections()
        order = np.argsort(-np.array(scores))
        return Detections(np.array(boxes, np.float32)[order], np.array(class_ids, np.int32)[order],
                          np.array(scores, np.float32)[order], np.array(masks, np.float32)[order])


class SlowBlobModel(BlobModel):
    """BlobModel that sleeps `delay` seconds per batch (slower than decode, CPU-free)."""

    def __init__(self, batch_size: int = 1, delay: float = 0.1, **_ignored):
        super().__init__(batch_size)
        self.delay = delay

    def __call__(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        time.sleep(self.delay)
        return super().__call__(frames)


class CrowdedSlowModel(SlowBlobModel):
    """A crowded scene: after sleeping `delay` s per batch, `count` detections per frame, each
    a whole-frame box with a disc mask, so drawing costs (~1.3 ms a detection at 640x480)."""

    def __init__(self, batch_size: int = 1, delay: float = 0.1, count: int = 20, **_ignored):
        super().__init__(batch_size, delay)
        self.count = count
        yy, xx = np.mgrid[:MASK_SIZE, :MASK_SIZE] - (MASK_SIZE - 1) / 2
        self.disc = (np.hypot(yy, xx) < MASK_SIZE / 2).astype(np.float32)

    def __call__(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        time.sleep(self.delay)
        n = self.count
        return [Detections(np.tile(np.float32([0, 0, f.shape[0], f.shape[1]]), (n, 1)),
                           np.arange(n, dtype=np.int32) % 3 + 1, np.linspace(0.95, 0.6, n, dtype=np.float32),
                           np.repeat(self.disc[None], n, axis=0)) for f in frames]


class FailingModel(SlowBlobModel):
    """SlowBlobModel (no delay by default) that raises on the `fail_at`-th batch (tests the
    supervisor's error path); by default on the first, so no frame gets past it."""

    def __init__(self, batch_size: int = 1, fail_at: int = 1, delay: float = 0.0, **_ignored):
        super().__init__(batch_size, delay)
        self.fail_at = fail_at
        self.calls = 0

    def __call__(self, frames):
        self.calls += 1
        if self.calls >= self.fail_at:
            raise RuntimeError("test model failed on purpose")
        return super().__call__(frames)


class MultiLineFailingModel(BlobModel):
    """BlobModel that raises on its first batch with a message over several lines, as a
    library's errors often are: what went wrong on the first, the useful part below."""

    def __call__(self, frames):
        raise ValueError("cannot run the model:\n\n  expected 4 input channels,\n  got   3 (an RGB frame)  \n")


def failing_midway(batch_size: int = 1, **_ignored) -> FailingModel:
    """One frame per batch, 0.2 s each, raises on the 10th: nine frames go through first."""
    return FailingModel(batch_size=1, fail_at=10, delay=0.2)


class BrokenFileSource:
    """A FrameSource that reads a file and raises after `fail_after` frames (a camera that dies)."""

    live = False

    def __init__(self, path: str, fail_after: int = 5):
        from vidseg.sources.file import FileSource

        self._inner = FileSource(path)
        self.fail_after = fail_after
        for key in ("name", "width", "height", "fps", "time_base", "frame_count"):
            setattr(self, key, getattr(self._inner, key))

    def frames(self):
        for i, frame in enumerate(self._inner.frames()):
            if i == self.fail_after:
                raise OSError("camera unplugged (test)")
            yield frame

    def close(self) -> None:
        self._inner.close()


def broken_factory(**_ignored):
    """A model factory that fails as it builds (a plug-in's own bug)."""
    raise RuntimeError("boom while building")


def not_a_model(**_ignored) -> int:
    """A factory that returns something else than a frame model."""
    return 5


def limit_address_space(headroom: int = 4 << 20) -> None:
    """Limit this process's address space to what it has mapped and `headroom` bytes more, as
    a low `ulimit -v` leaves a process that has loaded its libraries: too little for a thread's
    stack (8 MiB)."""
    import resource

    with open("/proc/self/statm") as f:
        mapped = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (mapped + headroom, resource.getrlimit(resource.RLIMIT_AS)[1]))


def short_of_memory(**_ignored):
    """A model factory that runs out of address space loading a library, as TensorFlow does
    under `ulimit -v 1500000`. For a fresh stage process: one that had loaded scipy.linalg
    already would map nothing new."""
    import importlib

    limit_address_space()
    importlib.import_module("scipy.linalg")  # a library of its own (OpenBLAS) to map
    raise AssertionError("scipy.linalg loaded in 4 MiB of address space")
