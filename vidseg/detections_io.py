"""`--detections FILE`: one JSON line per frame (or picture, `vidseg image`) with COCO RLE masks.

    {"frame": i, "pts": s, "detections": [{"class_id": int, "class_name": str, "score": float,
      "box": [x1, y1, x2, y2] (pixels, x2/y2 exclusive), "mask": {"size": [h, w], "counts": str}}]}
"""
from __future__ import annotations

import contextlib
import json
from typing import Sequence

import numpy as np
from pycocotools import mask as mask_util

from vidseg.detections import Detections
from vidseg.render import clip_boxes


def encode_mask(box_mask: np.ndarray, box: Sequence[int], height: int, width: int) -> dict:
    """bool [y2-y1, x2-x1] mask inside int box (y1, x1, y2, x2) → COCO RLE of the full frame."""
    full = np.zeros((height, width), np.uint8, order="F")
    y1, x1, y2, x2 = box
    full[y1:y2, x1:x2] = box_mask
    rle = mask_util.encode(full)
    return {"size": [int(height), int(width)], "counts": rle["counts"].decode("ascii")}


def detection_items(det: Detections, labels: Sequence[str], masks: Sequence[np.ndarray],
                    height: int, width: int) -> list[dict]:
    """The JSON objects of one frame's detections. masks: the renderer's pasted box masks, bool
    [y2-y1, x2-x1] inside each box clipped to the frame (`render.clip_boxes`)."""
    boxes = clip_boxes(det.boxes, height, width)
    items = []
    for k in range(len(det)):
        y1, x1, y2, x2 = (int(v) for v in boxes[k])
        items.append({
            "class_id": int(det.class_ids[k]),
            "class_name": labels[k] if k < len(labels) else str(int(det.class_ids[k])),
            "score": round(float(det.scores[k]), 4),
            "box": [x1, y1, x2, y2],
            "mask": encode_mask(masks[k], (y1, x1, y2, x2), height, width),
        })
    return items


class DetectionsWriter:
    """Appends one line per frame to a JSON-lines file. An OSError (a full disk) names it."""

    def __init__(self, path: str):
        self._path = path
        self._f = open(path, "w", buffering=1)  # a line at a time: a killed stage leaves whole lines

    def write(self, frame: int, pts: float, det: Detections, labels: Sequence[str],
              masks: Sequence[np.ndarray], height: int, width: int) -> None:
        """masks: the renderer's pasted box masks (see detection_items)."""
        items = detection_items(det, labels, masks, height, width)
        with self._naming_the_file():
            self._f.write(json.dumps({"frame": frame, "pts": round(pts, 6), "detections": items}) + "\n")

    def close(self) -> None:
        with self._naming_the_file():
            self._f.close()

    @contextlib.contextmanager
    def _naming_the_file(self):
        try:
            yield
        except OSError as e:  # a buffered write gives no file name: 'No space left on device'
            raise OSError(e.errno, e.strerror, self._path) from None
