"""RPN targets, ground truth loading, augmentation and the prefetching generator (SPEC §5)."""
import numpy as np
import pytest

from mrcnn import augmentation as aug
from mrcnn import data, utils
from mrcnn.config import Config


class TinyConfig(Config):
    NAME = "tiny"
    NUM_CLASSES = 4
    IMAGES_PER_GPU = 2
    IMAGE_MIN_DIM = IMAGE_MAX_DIM = 64
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    RPN_TRAIN_ANCHORS_PER_IMAGE = 64
    MAX_GT_INSTANCES = 5
    MINI_MASK_SHAPE = (16, 16)


class Rectangles(utils.Dataset):
    """Images of 1-3 filled rectangles; image 0 (when `empty_first`) has no instance."""

    def __init__(self, n, seed=0, empty_first=False):
        super().__init__()
        rng = np.random.default_rng(seed)
        for c in (1, 2, 3):
            self.add_class("rect", c, f"c{c}")
        for i in range(n):
            k = 0 if (empty_first and i == 0) else rng.integers(1, 4)
            rects = []
            for _ in range(k):
                y, x = rng.integers(0, 30, 2)
                rects.append((int(rng.integers(1, 4)), y, x, y + int(rng.integers(8, 20)), x + int(rng.integers(8, 20))))
            self.add_image("rect", i, None, rects=rects)
        self.prepare()

    def load_image(self, image_id):
        image = np.full((48, 48, 3), 30, np.uint8)
        for c, y1, x1, y2, x2 in self.image_info[image_id]["rects"]:
            image[y1:y2, x1:x2] = 80 * c
        return image

    def load_mask(self, image_id):
        rects = self.image_info[image_id]["rects"]
        mask = np.zeros((48, 48, len(rects)), bool)
        for i, (c, y1, x1, y2, x2) in enumerate(rects):
            mask[y1:y2, x1:x2, i] = True
        return mask, np.array([r[0] for r in rects], np.int32)


def test_rpn_targets_mark_best_anchor_and_deltas_reach_gt():
    config = TinyConfig()
    anchors = data.pixel_anchors(config, (64, 64, 3))
    gt = np.array([[10, 12, 30, 40]])
    match, deltas = data.build_rpn_targets((64, 64, 3), anchors, np.array([1]), gt, config)
    assert match.dtype == np.int32 and match.shape == (len(anchors),)
    iou = utils.compute_overlaps(anchors, gt.astype(np.float32))[:, 0]
    pos = np.where(match == 1)[0]
    assert iou.argmax() in pos
    assert np.all(iou[pos] >= 0.7) or len(pos) == np.sum(iou == iou.max())
    assert np.all(iou[match == -1] < 0.3)
    assert (match != 0).sum() <= config.RPN_TRAIN_ANCHORS_PER_IMAGE
    # deltas undo: applying them to the positive anchors gives the GT box
    restored = utils.apply_box_deltas(anchors[pos], deltas[:len(pos)] * config.RPN_BBOX_STD_DEV)
    np.testing.assert_allclose(restored, np.repeat(gt, len(pos), 0), atol=1e-3)
    assert not deltas[len(pos):].any()


def test_rpn_targets_crowds_are_never_negative_and_empty_gt_gives_negatives():
    config = TinyConfig()
    anchors = data.pixel_anchors(config, (64, 64, 3))
    crowd = np.array([[0, 0, 32, 32]])
    match, deltas = data.build_rpn_targets((64, 64, 3), anchors, np.array([-1]), crowd, config, np.random.default_rng(0))
    touching = utils.compute_overlaps(anchors, crowd.astype(np.float32))[:, 0] >= 0.001
    assert not (match[touching] == -1).any()
    assert not (match == 1).any() and not deltas.any()
    match, _ = data.build_rpn_targets((64, 64, 3), anchors, np.zeros([0], np.int32), np.zeros((0, 4)), config)
    assert (match == -1).sum() == config.RPN_TRAIN_ANCHORS_PER_IMAGE and not (match == 1).any()


def test_load_image_gt_resizes_and_packs_instances():
    config = TinyConfig()
    ds = Rectangles(4)
    image, meta, class_ids, boxes, masks = data.load_image_gt(ds, config, 1, use_mini_mask=True)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert meta.shape == (config.IMAGE_META_SIZE,)
    np.testing.assert_array_equal(meta[7:11], [0, 0, 64, 64])  # 48 -> 64, no padding
    assert masks.shape == (16, 16, len(class_ids)) and masks.dtype == bool
    rects = ds.image_info[1]["rects"]
    np.testing.assert_array_equal(class_ids, [r[0] for r in rects])
    scale = 64 / 48
    for (c, y1, x1, y2, x2), box in zip(rects, boxes):
        np.testing.assert_allclose(box, np.array([y1, x1, y2, x2]) * scale, atol=1.5)


def test_augmentation_moves_image_and_masks_together():
    rng = np.random.default_rng(3)
    image = np.zeros((64, 80, 3), np.uint8)
    image[10:30, 20:50] = 255
    masks = np.zeros((64, 80, 1), bool)
    masks[10:30, 20:50, 0] = True
    flips = aug.Sequential([aug.Fliplr(1.0), aug.Flipud(1.0)])
    for augmenter in [flips, aug.ScaleCrop((0.6, 1.4)), aug.default_augmentation()]:
        for _ in range(5):
            out_image, out_masks = augmenter(image, masks, rng)
            assert out_image.shape == image.shape and out_image.dtype == np.uint8
            assert out_masks.shape == masks.shape and out_masks.dtype == bool
            bright = out_image.max(axis=2) > 128
            if out_masks.any():
                # the mask covers the bright pixels (edges may differ by interpolation)
                assert (bright == out_masks[..., 0]).mean() > 0.97
    out_image, out_masks = flips(image, masks, rng)
    assert out_masks[63 - 10, 79 - 20, 0] and out_image[63 - 10, 79 - 20, 0] == 255
    coloured, same = aug.Color(p=1.0)(image, masks, rng)
    assert same is masks and not np.array_equal(coloured, image)


def test_generator_batches_are_complete_and_repeatable():
    config = TinyConfig()
    ds = Rectangles(7, empty_first=True)
    gen = data.data_generator(ds, config, shuffle=True, augmentation=aug.default_augmentation(),
                              batch_size=2, seed=5, workers=2)
    first = [next(gen) for _ in range(5)]
    gen.close()
    inputs, outputs = first[0]
    assert outputs == []
    images, metas, rpn_match, rpn_bbox, gt_ids, gt_boxes, gt_masks = inputs
    assert images.shape == (2, 64, 64, 3) and images.dtype == np.float32
    assert rpn_match.shape == (2, len(data.pixel_anchors(config, (64, 64, 3))), 1)
    assert rpn_bbox.shape == (2, 64, 4) and gt_ids.shape == (2, 5) and gt_boxes.shape == (2, 5, 4)
    assert gt_masks.shape == (2, 16, 16, 5) and gt_masks.dtype == bool
    for (inputs, _) in first:
        # the image without instances is never used: every image has a positive GT
        assert (inputs[4] > 0).any(axis=1).all()
        assert (inputs[2] == 1).any(axis=(1, 2)).all()
    again = data.data_generator(ds, config, shuffle=True, augmentation=aug.default_augmentation(),
                                batch_size=2, seed=5, workers=1)
    for (a, _), (b, _) in zip(first, [next(again) for _ in range(5)]):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    again.close()


def test_generator_reports_a_dataset_without_instances():
    ds = Rectangles(1, empty_first=True)
    gen = data.data_generator(ds, TinyConfig(), batch_size=1, workers=1)
    with pytest.raises(ValueError, match="no image"):
        next(gen)
