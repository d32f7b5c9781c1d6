"""mrcnn.config.Config: matterport's defaults and derived values."""
import numpy as np

from mrcnn.config import Config


class CocoConfig(Config):
    NAME = "coco"
    IMAGES_PER_GPU = 2
    NUM_CLASSES = 81


def test_derived_values_follow_matterport():
    c = CocoConfig()
    assert c.BATCH_SIZE == 2
    assert c.IMAGE_META_SIZE == 93
    assert list(c.IMAGE_SHAPE) == [1024, 1024, 3]
    assert c.BACKBONE == "resnet101" and c.POST_NMS_ROIS_INFERENCE == 1000
    assert np.allclose(c.MEAN_PIXEL, [123.7, 116.8, 103.9])


def test_crop_mode_uses_min_dim():
    class Crop(Config):
        IMAGE_RESIZE_MODE = "crop"
        IMAGE_MIN_DIM = 512
    assert list(Crop().IMAGE_SHAPE) == [512, 512, 3]


def test_display_lists_every_setting_sorted(capsys):
    CocoConfig().display()
    lines = [ln.split()[0] for ln in capsys.readouterr().out.splitlines()[2:] if ln.strip()]
    assert lines == sorted(lines)
    assert {"BATCH_SIZE", "IMAGE_META_SIZE", "NUM_CLASSES", "RPN_ANCHOR_SCALES"} <= set(lines)
