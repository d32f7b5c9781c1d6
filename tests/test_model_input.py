"""Frames on their way into the model: shrunk once to the model's own input size, boxes mapped back."""
import cv2
import numpy as np
import pytest

from tests.fake_models import BlobModel
from vidseg.ring import FrameMeta, model_input, to_rgb
from vidseg.stages import _infer


def smooth_frame(h, w):
    """uint8 RGB [h, w, 3]: gradients, every colour inside the YUV gamut (no clamping)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([40 + 150 * x / w, 60 + 120 * y / h, 90 + 60 * (x + y) / (w + h)], axis=2).astype(np.uint8)


@pytest.mark.parametrize("size,longest,expected", [
    ((1080, 1920), 128, (72, 128)),
    ((2160, 3840), 1024, (576, 1024)),
    ((1080, 1920), 100, (56, 100)),  # 56.25 rows: even, at most the long side asked
    ((720, 1280), 1024, (576, 1024)),
])
def test_i420_frames_shrink_like_converting_then_averaging(size, longest, expected):
    h, w = size
    rgb = smooth_frame(h, w)
    i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
    small, (sy, sx) = model_input(i420, "yuv420p", longest)
    assert small.shape == expected + (3,) and small.dtype == np.uint8
    assert (sy, sx) == (expected[0] / h, expected[1] / w)
    reference = cv2.resize(to_rgb(i420, "yuv420p"), expected[::-1], interpolation=cv2.INTER_AREA)
    diff = np.abs(small.astype(int) - reference.astype(int))
    assert diff.mean() < 1 and diff.max() <= 3  # rounding to uint8 at different steps


def test_rgb_frames_shrink_by_averaging_and_small_frames_pass_as_they_are():
    rgb = smooth_frame(360, 640)
    small, scale = model_input(rgb, "rgb24", 160)
    assert np.array_equal(small, cv2.resize(rgb, (160, 90), interpolation=cv2.INTER_AREA))
    assert scale == (90 / 360, 160 / 640)
    for longest in (640, 1024, None):
        same, scale = model_input(rgb, "rgb24", longest)
        assert same is rgb and scale == (1.0, 1.0)


class SmallInputBlobModel(BlobModel):
    """BlobModel that says it shrinks frames to 160 px itself, and records what it was given."""

    input_max_dim = 160

    def __call__(self, frames):
        self.seen = [f.shape for f in frames]
        return super().__call__(frames)


@pytest.mark.parametrize("fmt", ["yuv420p", "rgb24"])
def test_the_model_gets_frames_at_its_input_size_and_boxes_come_back_in_frame_pixels(fmt):
    h, w = 720, 1280
    rgb = np.full((h, w, 3), 40, np.uint8)
    rgb[200:440, 320:800] = (230, 20, 20)  # a red block: y 200..440, x 320..800
    image = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420) if fmt == "yuv420p" else rgb
    meta = FrameMeta(0, 0, 0.0, 0.0, 0, image.shape, fmt)
    meta.image = image
    model = SmallInputBlobModel()
    _infer(model, list(model.class_names), [meta], max_dim=1024)
    assert model.seen == [(90, 160, 3)]
    (box,) = meta.detections.boxes
    assert meta.labels == ("red",)
    # one pixel of the 160-wide input is 8 frame pixels
    assert np.allclose(box, [200, 320, 440, 800], atol=8)
