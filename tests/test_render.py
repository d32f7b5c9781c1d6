"""The renderer: masks pasted at output resolution only inside boxes, colours that stay with an
object across frames, RGB and I420 frames drawn alike, and the detections file's RLE."""
from __future__ import annotations

import cv2
import numpy as np
from pycocotools import mask as mask_util

from vidseg.detections import Detections
from vidseg.detections_io import encode_mask
from vidseg.render import ColorTracker, Renderer, box_iou, paste_mask


def dets(boxes, class_ids, probs=None):
    n = len(boxes)
    masks = np.ones((n, 28, 28), np.float32) if probs is None else np.asarray(probs, np.float32)
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.array(class_ids, np.int32),
                      np.linspace(0.9, 0.8, n).astype(np.float32), masks)


def test_paste_mask_resizes_to_the_box_and_thresholds():
    probs = np.zeros((28, 28), np.float32)
    probs[:, :14] = 1.0  # left half
    m = paste_mask(probs, (10, 20, 110, 220))
    assert m.shape == (100, 200) and m.dtype == bool
    assert m[:, :95].all() and not m[:, 105:].any()


def test_drawing_changes_only_the_boxes():
    img = np.full((240, 320, 3), 50, np.uint8)
    d = dets([(40, 60, 120, 200)], [1])
    out = img.copy()
    masks = Renderer().draw(out, d, ["thing"])
    changed = np.any(out != img, axis=2)
    ys, xs = np.nonzero(changed)
    pad = 2  # the anti-aliased outline may touch the pixel next to the box
    assert ys.min() >= 40 - pad and ys.max() < 120 + pad and xs.min() >= 60 - pad and xs.max() < 200 + pad
    assert changed[60:110, 80:180].all()  # the mask is tinted all over
    assert masks[0].shape == (80, 140) and masks[0].all()


def test_low_probability_mask_is_not_tinted_but_still_boxed():
    img = np.full((240, 320, 3), 50, np.uint8)
    out = img.copy()
    Renderer().draw(out, dets([(40, 60, 120, 200)], [1], probs=np.full((1, 28, 28), 0.2)), ["thing"])
    assert (out[70:110, 120:180] == 50).all()  # inside, away from label and outline: untouched
    assert (out[40:120, 60:200] != 50).any()   # box and label drawn


def test_colours_follow_objects_across_frames():
    tracker = ColorTracker(seed=3)
    a = tracker.assign(np.array([[0, 0, 100, 100], [200, 200, 300, 300]], np.float32), np.array([1, 2]))
    # both moved a little, listed in the other order
    b = tracker.assign(np.array([[205, 210, 305, 310], [5, 5, 105, 105]], np.float32), np.array([2, 1]))
    assert b == [a[1], a[0]]
    # same place, different class: a new object, a new colour
    c = tracker.assign(np.array([[5, 5, 105, 105]], np.float32), np.array([3]))
    assert c[0] not in (a[0], a[1])
    # an object missing for a few frames keeps its colour when it comes back
    for _ in range(3):
        tracker.assign(np.zeros((0, 4), np.float32), np.zeros(0, np.int32))
    d = tracker.assign(np.array([[200, 210, 300, 310]], np.float32), np.array([2]))
    assert d == [a[1]]


def test_box_iou():
    iou = box_iou(np.array([[0, 0, 10, 10]], np.float32), np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]],
                                                                   np.float32))
    assert np.allclose(iou, [[1.0, 1 / 3, 0.0]])


def test_i420_frames_are_drawn_like_rgb():
    rng = np.random.default_rng(0)
    rgb = cv2.GaussianBlur(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8), (9, 9), 3)
    d = dets([(30, 41, 131, 170), (150, 200, 230, 310)], [1, 2])
    a = rgb.copy()
    Renderer(seed=1).draw(a, d, ["a", "b"])
    yuv = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
    untouched = yuv.copy()
    Renderer(seed=1).draw(yuv, d, ["a", "b"], "yuv420p")
    b = cv2.cvtColor(yuv, cv2.COLOR_YUV2RGB_I420)
    ref = cv2.cvtColor(untouched, cv2.COLOR_YUV2RGB_I420)
    assert np.abs(b.astype(int) - a).mean() < 3
    # outside every box the I420 planes are left exactly as they were
    inside = np.zeros((240, 320), bool)
    inside[28:134, 38:172] = inside[148:232, 198:312] = True
    assert (b[~inside] == ref[~inside]).all()


def test_rle_roundtrip():
    box_mask = np.zeros((30, 40), bool)
    box_mask[5:25, 10:30] = True
    rle = encode_mask(box_mask, (100, 50, 130, 90), 240, 320)
    assert rle["size"] == [240, 320] and isinstance(rle["counts"], str)
    full = mask_util.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    assert full.sum() == box_mask.sum() and full[105:125, 60:80].all()
