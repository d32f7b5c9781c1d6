"""Cost of turning a decoded I420 frame into the shipped model's 128 px input, two ways.

usage: python docs/benchmarks/model_input_cost.py
    convert-first: RGB at full size, averaged to 1024 px, then mold_inputs' own resize to 128
                   (what the infer stage did before 2344085)
    once:          `vidseg.ring.model_input` (planes averaged straight to 128, RGB at that size),
                   then mold_inputs (which now only pads)
Prints wall and CPU milliseconds per frame (20 calls after one warm-up, random pixels).
"""
from __future__ import annotations

import time

import cv2
import numpy as np

from mrcnn import utils
from vidseg.ring import model_input, to_rgb

SIDE = 128  # the shipped model's IMAGE_MIN_DIM = IMAGE_MAX_DIM


def mold(rgb: np.ndarray) -> np.ndarray:
    image, *_ = utils.resize_image(rgb, min_dim=SIDE, max_dim=SIDE, mode="square")
    return image.astype(np.float32)


def convert_first(i420: np.ndarray) -> np.ndarray:
    rgb = to_rgb(i420, "yuv420p")
    h, w = rgb.shape[:2]
    if max(h, w) > 1024:
        scale = 1024 / max(h, w)
        rgb = cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    return mold(rgb)


def once(i420: np.ndarray) -> np.ndarray:
    return mold(model_input(i420, "yuv420p", SIDE)[0])


def main() -> None:
    rng = np.random.default_rng(0)
    for h, w in ((720, 1280), (1080, 1920), (2160, 3840)):
        i420 = rng.integers(0, 256, (h * 3 // 2, w), np.uint8)
        for way in (convert_first, once):
            way(i420)
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(20):
                way(i420)
            print(f"{w}x{h} {way.__name__:<14} {(time.perf_counter() - wall) / 20 * 1e3:6.1f} ms wall "
                  f"{(time.process_time() - cpu) / 20 * 1e3:6.1f} ms CPU")


if __name__ == "__main__":
    main()
