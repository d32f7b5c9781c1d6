"""Training-time augmentation that moves an image and its instance masks together.

Every augmenter is a callable `aug(image, masks, rng) -> (image, masks)`:
    image: uint8 [H, W, 3] RGB, masks: bool [H, W, N], rng: numpy.random.Generator.
The output has the same shapes and dtypes (matterport's rule: augmentation must not
change the image shape, so anchors and targets stay valid). Geometric augmenters
transform masks with nearest-neighbour sampling; colour augmenters leave masks alone.
Written in small numpy/OpenCV code because imgaug no longer works with numpy 2.
"""
from __future__ import annotations

import cv2
import numpy as np


class Sequential:
    """Apply each augmenter in order."""

    def __init__(self, augmenters):
        self.augmenters = list(augmenters)

    def __call__(self, image, masks, rng):
        for aug in self.augmenters:
            image, masks = aug(image, masks, rng)
        return image, masks


class Fliplr:
    """Mirror left-right with probability p."""

    def __init__(self, p=0.5):
        self.p = p

    def __call__(self, image, masks, rng):
        if rng.random() < self.p:
            return image[:, ::-1].copy(), masks[:, ::-1].copy()
        return image, masks


class Flipud:
    """Mirror top-bottom with probability p."""

    def __init__(self, p=0.5):
        self.p = p

    def __call__(self, image, masks, rng):
        if rng.random() < self.p:
            return image[::-1].copy(), masks[::-1].copy()
        return image, masks


class ScaleCrop:
    """Zoom by a random factor in `scale` and shift, keeping the image size.

    Zoom in (>1) crops, zoom out (<1) pads with zeros (like matterport's padding), and the
    content is placed at a random offset. Masks follow with nearest-neighbour sampling;
    instances pushed fully out of the frame end up empty (load_image_gt drops them).
    """

    def __init__(self, scale=(0.7, 1.3), p=1.0):
        self.scale = scale
        self.p = p

    def __call__(self, image, masks, rng):
        if rng.random() >= self.p:
            return image, masks
        h, w = image.shape[:2]
        s = rng.uniform(*self.scale)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        # Offset of the scaled content inside the output frame (negative = cropped).
        ty = rng.integers(min(0, h - nh), max(0, h - nh) + 1)
        tx = rng.integers(min(0, w - nw), max(0, w - nw) + 1)
        matrix = np.array([[nw / w, 0, tx], [0, nh / h, ty]], np.float32)
        image = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        out = np.zeros_like(masks)
        # warpAffine handles at most 512 channels at a time (uint8 view of the bool masks).
        for i in range(0, masks.shape[2], 512):
            m = masks[:, :, i:i + 512].astype(np.uint8)
            warped = cv2.warpAffine(m, matrix, (w, h), flags=cv2.INTER_NEAREST,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            out[:, :, i:i + 512] = warped.reshape(h, w, -1).astype(bool)
        return image, out


class Color:
    """Random brightness, contrast, per-channel gain and hue rotation; masks unchanged.

    brightness: max absolute offset in grey levels; contrast, gain: max relative change;
    hue: max rotation in OpenCV hue units (0-180 is the full circle).
    """

    def __init__(self, brightness=25, contrast=0.25, gain=0.1, hue=10, p=1.0):
        self.brightness, self.contrast, self.gain, self.hue, self.p = brightness, contrast, gain, hue, p

    def __call__(self, image, masks, rng):
        if rng.random() >= self.p:
            return image, masks
        if self.hue:
            hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
            shift = int(rng.integers(-self.hue, self.hue + 1))
            hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + shift) % 180).astype(np.uint8)
            image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        img = image.astype(np.float32)
        mean = img.mean()
        c = 1 + rng.uniform(-self.contrast, self.contrast)
        g = 1 + rng.uniform(-self.gain, self.gain, size=3).astype(np.float32)
        b = rng.uniform(-self.brightness, self.brightness)
        img = (img - mean) * c * g + mean + b
        return np.clip(img, 0, 255).astype(np.uint8), masks


def default_augmentation():
    """Flips, zoom/shift and colour jitter: what the shapes and custom recipes use."""
    return Sequential([Fliplr(0.5), Flipud(0.5), ScaleCrop((0.75, 1.25), p=0.5), Color(p=0.8)])
