"""DetectionTargetLayer and the five losses on hand-made cases (SPEC §5)."""
import numpy as np
import tensorflow as tf

from mrcnn import training
from mrcnn.config import Config


class TinyConfig(Config):
    NAME = "tiny"
    NUM_CLASSES = 3
    IMAGES_PER_GPU = 1
    TRAIN_ROIS_PER_IMAGE = 8
    ROI_POSITIVE_RATIO = 0.33
    MASK_SHAPE = [4, 4]
    MINI_MASK_SHAPE = (8, 8)


GT_BOX = [0.1, 0.1, 0.5, 0.5]
CROWD_BOX = [0.6, 0.6, 0.9, 0.9]


def targets(proposals, gt_class_ids, gt_boxes, gt_masks, config=None):
    out = training.detection_targets_graph(
        tf.constant(proposals, tf.float32), tf.constant(gt_class_ids, tf.int32),
        tf.constant(gt_boxes, tf.float32), tf.constant(gt_masks), config or TinyConfig())
    return [o.numpy() for o in out]


def test_positives_negatives_and_crowds():
    mini = np.zeros((8, 8, 2), bool)
    mini[:, :5, 0] = True  # left 5/8 of the GT box (crop_and_resize samples x = 0, 2.33, 4.67, 7)
    proposals = [GT_BOX,                        # IoU 1 -> positive
                 [0.1, 0.1, 0.5, 0.3],          # IoU 0.5 -> positive
                 [0.0, 0.6, 0.2, 0.9],          # IoU 0 with everything -> negative
                 [0.65, 0.65, 0.85, 0.85],      # inside the crowd box -> never negative
                 [0, 0, 0, 0], [0, 0, 0, 0]]    # padding
    rois, class_ids, deltas, masks = targets(proposals, [2, -1, 0], [GT_BOX, CROWD_BOX, [0, 0, 0, 0]], mini)
    assert rois.shape == (8, 4) and class_ids.shape == (8,) and deltas.shape == (8, 4)
    assert masks.shape == (8, 4, 4)
    # int(8 * 0.33) = 2 positives; int(2 / 0.33) - 2 = 4 negatives wanted, 1 available.
    np.testing.assert_array_equal(class_ids, [2, 2, 0, 0, 0, 0, 0, 0])
    pos = rois[:2][np.argsort(rois[:2, 3])]
    np.testing.assert_allclose(pos, [[0.1, 0.1, 0.5, 0.3], GT_BOX], atol=1e-6)
    np.testing.assert_allclose(rois[2], [0.0, 0.6, 0.2, 0.9], atol=1e-6)
    assert not rois[3:].any() and not deltas[2:].any() and not masks[2:].any()
    for roi, delta, mask in zip(rois[:2], deltas[:2], masks[:2]):
        if np.allclose(roi, GT_BOX):
            np.testing.assert_allclose(delta, 0, atol=1e-5)
            np.testing.assert_array_equal(mask, [[1, 1, 0, 0]] * 4)  # the mini mask, resized
        else:
            # Same centre y and height; x centre 0.2 vs 0.3 over width 0.2; width 0.2 -> 0.4.
            np.testing.assert_allclose(delta, [0, 0.5 / 0.1, 0, np.log(2) / 0.2], atol=1e-4)
            np.testing.assert_array_equal(mask, np.ones((4, 4)))  # inside the mask: samples x <= 3.5


def test_positive_limit_and_ratio():
    config = TinyConfig()
    proposals = [GT_BOX] * 5 + [[0.7, 0.7, 0.9, 0.9]] * 10
    _, class_ids, _, _ = targets(proposals, [1], [GT_BOX], np.ones((8, 8, 1), bool), config)
    assert (class_ids > 0).sum() == int(config.TRAIN_ROIS_PER_IMAGE * config.ROI_POSITIVE_RATIO) == 2
    # the rest: int(2 / 0.33) - 2 = 4 negatives, then padding
    assert (class_ids == 0).sum() == 6


def test_empty_ground_truth_gives_only_padding():
    proposals = [GT_BOX, [0.0, 0.6, 0.2, 0.9]]
    rois, class_ids, deltas, masks = targets(proposals, np.zeros([3], np.int32), np.zeros([3, 4]),
                                             np.zeros((8, 8, 3), bool))
    assert not rois.any() and not class_ids.any() and not deltas.any() and not masks.any()


def test_only_crowds_gives_no_targets():
    rois, class_ids, _, _ = targets([CROWD_BOX, GT_BOX], [-1], [CROWD_BOX], np.ones((8, 8, 1), bool))
    assert not class_ids.any() and not rois.any()


def test_layer_batches_images():
    class Two(TinyConfig):
        IMAGES_PER_GPU = 2
    config = Two()
    layer = training.DetectionTargetLayer(config, name="proposal_targets")
    proposals = tf.constant([[GT_BOX, [0.0, 0.6, 0.2, 0.9]], [[0.0, 0.6, 0.2, 0.9], [0, 0, 0, 0]]], tf.float32)
    gt_ids = tf.constant([[1], [3]], tf.int32)
    gt_boxes = tf.constant([[GT_BOX], [GT_BOX]], tf.float32)
    gt_masks = tf.ones((2, 8, 8, 1), tf.bool)
    rois, class_ids, deltas, masks = layer([proposals, gt_ids, gt_boxes, gt_masks])
    assert rois.shape == (2, 8, 4) and masks.shape == (2, 8, 4, 4)
    np.testing.assert_array_equal(class_ids.numpy()[0, :2], [1, 0])
    assert not class_ids.numpy()[1].any()  # image 2 has no proposal over its GT


def test_rpn_class_loss_ignores_neutral_anchors():
    match = tf.constant([[[1], [-1], [0]]], tf.int32)
    logits = tf.constant([[[0.0, 2.0], [1.0, 0.0], [50.0, -50.0]]])
    expected = np.mean([np.log(1 + np.exp(-2.0)), np.log(1 + np.exp(-1.0))])
    np.testing.assert_allclose(training.rpn_class_loss_graph(match, logits).numpy(), expected, rtol=1e-5)
    assert training.rpn_class_loss_graph(tf.zeros((1, 3, 1), tf.int32), logits).numpy() == 0


def test_rpn_bbox_loss_on_positive_anchors_only():
    class Two(TinyConfig):
        IMAGES_PER_GPU = 2
    match = tf.constant([[[1], [0], [-1]], [[0], [1], [1]]], tf.int32)
    target = np.zeros((2, 4, 4), np.float32)
    target[0, 0] = [0.5, 0, 0, 0]     # image 0's only positive
    target[1, :2] = [[0, 3, 0, 0], [0, 0, 0, 0]]
    pred = np.zeros((2, 3, 4), np.float32)
    pred[0, 2] = 100                  # negative anchor: ignored
    # elements: 0.5 -> 0.125; 3 -> 2.5; all others 0 -> mean over 12 elements
    loss = training.rpn_bbox_loss_graph(Two(), tf.constant(target), match, tf.constant(pred)).numpy()
    np.testing.assert_allclose(loss, (0.125 + 2.5) / 12, rtol=1e-5)
    empty = training.rpn_bbox_loss_graph(Two(), tf.constant(target), tf.zeros((2, 3, 1), tf.int32), tf.constant(pred))
    assert empty.numpy() == 0


def test_mrcnn_class_loss_masks_inactive_classes():
    target = tf.constant([[1, 0]])
    logits = tf.constant([[[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 5.0]]])
    ce = [-np.log(np.exp(1) / (np.exp(1) + 3)), -np.log(1 / (3 + np.exp(5)))]
    active = tf.constant([[1, 1, 1, 1]])
    np.testing.assert_allclose(training.mrcnn_class_loss_graph(target, logits, active).numpy(), np.mean(ce), rtol=1e-5)
    # class 3 not in the image's dataset: the ROI predicted as 3 is ignored
    active = tf.constant([[1, 1, 1, 0]])
    np.testing.assert_allclose(training.mrcnn_class_loss_graph(target, logits, active).numpy(), ce[0], rtol=1e-5)


def test_mrcnn_bbox_loss_uses_gt_class_deltas():
    target_ids = tf.constant([[2, 0]])
    target = tf.constant([[[1.0, 0, 0, 0], [9, 9, 9, 9]]])
    pred = np.zeros((1, 2, 3, 4), np.float32)
    pred[0, 0, 2] = [1.0, 0, 0, 0]   # right class: exact
    pred[0, 0, 1] = [7, 7, 7, 7]     # other class: ignored
    assert training.mrcnn_bbox_loss_graph(target, target_ids, tf.constant(pred)).numpy() == 0
    pred[0, 0, 2] = [0, 0, 0, 0]
    np.testing.assert_allclose(training.mrcnn_bbox_loss_graph(target, target_ids, tf.constant(pred)).numpy(), 0.5 / 4)
    assert training.mrcnn_bbox_loss_graph(target, tf.zeros((1, 2), tf.int32), tf.constant(pred)).numpy() == 0


def test_mrcnn_mask_loss_uses_gt_class_mask():
    target_ids = tf.constant([[1, 0]])
    target = np.zeros((1, 2, 2, 2), np.float32)
    target[0, 0, 0] = 1
    pred = np.full((1, 2, 2, 2, 3), 0.5, np.float32)
    np.testing.assert_allclose(training.mrcnn_mask_loss_graph(tf.constant(target), target_ids, tf.constant(pred)).numpy(),
                               np.log(2), rtol=1e-5)
    pred[0, 0, ..., 1] = target[0, 0]
    assert training.mrcnn_mask_loss_graph(tf.constant(target), target_ids, tf.constant(pred)).numpy() < 1e-5
    assert training.mrcnn_mask_loss_graph(tf.constant(target), tf.zeros((1, 2), tf.int32), tf.constant(pred)).numpy() == 0
