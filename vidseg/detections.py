"""The one interface between the streaming runtime and a model.

A *frame model* takes a batch of frames and returns one `Detections` per frame.
The runtime never imports TensorFlow; only the inference process builds a model
(see `vidseg.models.load_frame_model`), so anything that satisfies `FrameModel`
can be plugged in: Mask R-CNN, a test model, or a user's own.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

MASK_SIZE = 28


@dataclass
class Detections:
    """Instances found in one frame, all arrays the same length N.

    boxes: float32 [N, 4] as (y1, x1, y2, x2) in source-frame pixels, y2/x2 exclusive
        (matterport's `rois` order).
    class_ids: int32 [N], index into the model's `class_names` (0 is background, never present).
    scores: float32 [N] in [0, 1], descending.
    masks: float32 [N, m, m] mask probabilities inside each box (m = 28 for Mask R-CNN);
        the renderer resizes each to its box and thresholds at 0.5 (matterport's unmold_mask).
    """

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    class_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    masks: np.ndarray = field(default_factory=lambda: np.zeros((0, MASK_SIZE, MASK_SIZE), np.float32))

    def __post_init__(self):
        n = len(self.boxes)
        if not (len(self.class_ids) == len(self.scores) == len(self.masks) == n):
            raise ValueError(
                f"Detections arrays differ in length: boxes {n}, class_ids {len(self.class_ids)}, "
                f"scores {len(self.scores)}, masks {len(self.masks)}")

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, keep) -> "Detections":
        """One boolean or integer index filters every array alike."""
        return Detections(self.boxes[keep], self.class_ids[keep], self.scores[keep], self.masks[keep])


class FrameModel(Protocol):
    """What the inference stage needs from a model.

    class_names: list[str], index = class id, entry 0 is background ("BG").
    batch_size: the batch the model is compiled for; the runtime sends at most this many
        frames per call (fewer at the end of a file or on a live source).
    input_max_dim (optional attribute): the long side the model itself shrinks frames to.
        When given, the runtime sends larger frames already shrunk to it (by averaging, from
        the decoder's planes, boxes mapped back), so frames are resized once, not twice.
    """

    class_names: Sequence[str]
    batch_size: int

    def __call__(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        """frames: uint8 RGB [H, W, 3] each (sizes may differ); returns one Detections per frame."""
        ...
