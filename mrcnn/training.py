"""Mask R-CNN training mode (SPEC §5): targets, losses, the training graph and the loop.

`build_training_model(mrcnn_model, config)` adds to the shared backbone/FPN/RPN and heads
the ground-truth inputs, `DetectionTargetLayer` and the five losses; `MaskRCNN.compile`,
`set_trainable` and `train` delegate to the functions of the same name here.
Boxes in graph code are normalised (y1, x1, y2, x2) unless said otherwise.
"""
from __future__ import annotations

import datetime
import os
import re

import keras
import numpy as np
import tensorflow as tf
from keras import layers as KL

from mrcnn import data as datalib

LOSS_NAMES = ["rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss", "mrcnn_bbox_loss", "mrcnn_mask_loss"]

# matterport's layer groups for `train(layers=...)`, matched with re.fullmatch.
_HEADS = r"(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)"
LAYER_REGEX = {
    "heads": _HEADS,
    "3+": r"(res3.*)|(bn3.*)|(res4.*)|(bn4.*)|(res5.*)|(bn5.*)|" + _HEADS,
    "4+": r"(res4.*)|(bn4.*)|(res5.*)|(bn5.*)|" + _HEADS,
    "5+": r"(res5.*)|(bn5.*)|" + _HEADS,
    "all": ".*",
}


############################################################
#  Graph helpers
############################################################

def overlaps_graph(boxes1, boxes2):
    """IoU matrix float32 [N1, N2] of boxes1 [N1, 4] and boxes2 [N2, 4]."""
    b1 = tf.expand_dims(boxes1, 1)
    b2 = tf.expand_dims(boxes2, 0)
    y1 = tf.maximum(b1[..., 0], b2[..., 0])
    x1 = tf.maximum(b1[..., 1], b2[..., 1])
    y2 = tf.minimum(b1[..., 2], b2[..., 2])
    x2 = tf.minimum(b1[..., 3], b2[..., 3])
    intersection = tf.maximum(y2 - y1, 0) * tf.maximum(x2 - x1, 0)
    area1 = (b1[..., 2] - b1[..., 0]) * (b1[..., 3] - b1[..., 1])
    area2 = (b2[..., 2] - b2[..., 0]) * (b2[..., 3] - b2[..., 1])
    return intersection / (area1 + area2 - intersection)


def box_refinement_graph(box, gt_box):
    """Deltas (dy, dx, log dh, log dw) float32 [N, 4] that turn box [N, 4] into gt_box [N, 4]."""
    box, gt_box = tf.cast(box, tf.float32), tf.cast(gt_box, tf.float32)
    h, w = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    gh, gw = gt_box[:, 2] - gt_box[:, 0], gt_box[:, 3] - gt_box[:, 1]
    dy = (gt_box[:, 0] + 0.5 * gh - box[:, 0] - 0.5 * h) / h
    dx = (gt_box[:, 1] + 0.5 * gw - box[:, 1] - 0.5 * w) / w
    return tf.stack([dy, dx, tf.math.log(gh / h), tf.math.log(gw / w)], axis=1)


def trim_zeros_graph(boxes):
    """Drop all-zero padding rows of boxes [N, 4]; returns (boxes [n, 4], bool [N] kept)."""
    non_zeros = tf.cast(tf.reduce_sum(tf.abs(boxes), axis=1), tf.bool)
    return tf.boolean_mask(boxes, non_zeros), non_zeros


def norm_boxes_graph(boxes, shape):
    """Pixel boxes [..., 4] (y2, x2 exclusive) -> normalised, as utils.norm_boxes."""
    h, w = tf.split(tf.cast(shape, tf.float32), 2)
    scale = tf.concat([h, w, h, w], axis=-1) - 1.0
    return (tf.cast(boxes, tf.float32) - tf.constant([0., 0., 1., 1.])) / scale


############################################################
#  Detection targets
############################################################

def detection_targets_graph(proposals, gt_class_ids, gt_boxes, gt_masks, config):
    """Sample ROIs for one image and give each its class, box and mask targets.

    proposals: float32 [P, 4] normalised, zero-padded; gt_class_ids: int32 [G] (negative =
    crowd, 0 = padding); gt_boxes: float32 [G, 4] normalised; gt_masks: bool [h, w, G] (mini
    masks inside each GT box when USE_MINI_MASK, else full-image masks).
    Returns, each padded with zeros to T = TRAIN_ROIS_PER_IMAGE rows (positives first):
    rois float32 [T, 4]; class_ids int32 [T] (0 for negatives); deltas float32 [T, 4] divided
    by BBOX_STD_DEV; masks float32 [T, MASK_SHAPE...] in {0, 1}.
    Positives: IoU >= 0.5 with a non-crowd GT (at most T * ROI_POSITIVE_RATIO, shuffled).
    Negatives: IoU < 0.5 and IoU < 0.001 with every crowd box, as many as keep the ratio.
    """
    proposals, _ = trim_zeros_graph(proposals)
    gt_boxes, non_zeros = trim_zeros_graph(gt_boxes)
    gt_class_ids = tf.boolean_mask(gt_class_ids, non_zeros)
    gt_masks = tf.gather(gt_masks, tf.where(non_zeros)[:, 0], axis=2)

    crowd_ix = tf.where(gt_class_ids < 0)[:, 0]
    non_crowd_ix = tf.where(gt_class_ids > 0)[:, 0]
    crowd_boxes = tf.gather(gt_boxes, crowd_ix)
    gt_class_ids = tf.gather(gt_class_ids, non_crowd_ix)
    gt_boxes = tf.gather(gt_boxes, non_crowd_ix)
    gt_masks = tf.gather(gt_masks, non_crowd_ix, axis=2)

    overlaps = overlaps_graph(proposals, gt_boxes)
    crowd_iou_max = tf.reduce_max(overlaps_graph(proposals, crowd_boxes), axis=1)
    no_crowd = crowd_iou_max < 0.001
    roi_iou_max = tf.reduce_max(overlaps, axis=1)  # -inf when there is no GT

    positive_indices = tf.where(roi_iou_max >= 0.5)[:, 0]
    negative_indices = tf.where(tf.logical_and(roi_iou_max < 0.5, no_crowd))[:, 0]
    max_positive = int(config.TRAIN_ROIS_PER_IMAGE * config.ROI_POSITIVE_RATIO)
    positive_indices = tf.random.shuffle(positive_indices)[:max_positive]
    positive_count = tf.shape(positive_indices)[0]
    r = 1.0 / config.ROI_POSITIVE_RATIO
    negative_count = tf.cast(r * tf.cast(positive_count, tf.float32), tf.int32) - positive_count
    negative_indices = tf.random.shuffle(negative_indices)[:negative_count]
    positive_rois = tf.gather(proposals, positive_indices)
    negative_rois = tf.gather(proposals, negative_indices)

    positive_overlaps = tf.gather(overlaps, positive_indices)
    assignment = tf.cond(tf.shape(positive_overlaps)[1] > 0,
                         lambda: tf.argmax(positive_overlaps, axis=1),
                         lambda: tf.zeros([0], tf.int64))
    roi_gt_boxes = tf.gather(gt_boxes, assignment)
    roi_gt_class_ids = tf.gather(gt_class_ids, assignment)
    deltas = box_refinement_graph(positive_rois, roi_gt_boxes) / np.asarray(config.BBOX_STD_DEV, np.float32)

    roi_masks = tf.gather(tf.expand_dims(tf.transpose(gt_masks, [2, 0, 1]), -1), assignment)
    boxes = positive_rois
    if config.USE_MINI_MASK:
        # The ROI in the GT box's frame, since the mini mask covers exactly the GT box.
        y1, x1, y2, x2 = tf.split(positive_rois, 4, axis=1)
        gy1, gx1, gy2, gx2 = tf.split(roi_gt_boxes, 4, axis=1)
        gh, gw = gy2 - gy1, gx2 - gx1
        boxes = tf.concat([(y1 - gy1) / gh, (x1 - gx1) / gw, (y2 - gy1) / gh, (x2 - gx1) / gw], 1)
    box_ids = tf.range(0, tf.shape(roi_masks)[0])
    masks = tf.image.crop_and_resize(tf.cast(roi_masks, tf.float32), boxes, box_ids,
                                     list(config.MASK_SHAPE))
    masks = tf.round(tf.squeeze(masks, axis=3))

    rois = tf.concat([positive_rois, negative_rois], axis=0)
    n_neg = tf.shape(negative_rois)[0]
    pad = tf.maximum(config.TRAIN_ROIS_PER_IMAGE - tf.shape(rois)[0], 0)
    rois = tf.pad(rois, [(0, pad), (0, 0)])
    roi_gt_class_ids = tf.pad(roi_gt_class_ids, [(0, n_neg + pad)])
    deltas = tf.pad(deltas, [(0, n_neg + pad), (0, 0)])
    masks = tf.pad(masks, [(0, n_neg + pad), (0, 0), (0, 0)])
    return rois, roi_gt_class_ids, deltas, masks


class DetectionTargetLayer(KL.Layer):
    """`proposal_targets`: per image `detection_targets_graph`, batched.

    Inputs: [proposals [B, P, 4], gt_class_ids int32 [B, G], gt_boxes [B, G, 4] normalised,
    gt_masks bool [B, h, w, G]]. Outputs: rois [B, T, 4], target_class_ids int32 [B, T],
    target_deltas [B, T, 4], target_masks [B, T, MASK_SHAPE...].
    """

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        self.config = config

    def call(self, inputs):
        proposals, gt_class_ids, gt_boxes, gt_masks = inputs
        outputs = [detection_targets_graph(proposals[i], tf.cast(gt_class_ids[i], tf.int32),
                                           gt_boxes[i], gt_masks[i], self.config)
                   for i in range(self.config.IMAGES_PER_GPU)]
        t, (mh, mw) = self.config.TRAIN_ROIS_PER_IMAGE, self.config.MASK_SHAPE
        shapes = [(t, 4), (t,), (t, 4), (t, mh, mw)]
        return [tf.ensure_shape(tf.stack(parts), (self.config.IMAGES_PER_GPU,) + s)
                for parts, s in zip(zip(*outputs), shapes)]

    def compute_output_shape(self, input_shape):
        t, (mh, mw) = self.config.TRAIN_ROIS_PER_IMAGE, self.config.MASK_SHAPE
        b = self.config.IMAGES_PER_GPU
        return [(b, t, 4), (b, t), (b, t, 4), (b, t, mh, mw)]

    def compute_output_spec(self, inputs):
        return [keras.KerasTensor(s, dtype=d) for s, d in
                zip(self.compute_output_shape(None), ["float32", "int32", "float32", "float32"])]


############################################################
#  Losses
############################################################

def smooth_l1_loss(y_true, y_pred):
    """Elementwise smooth-L1 (Huber with delta 1) of two same-shape tensors."""
    diff = tf.abs(y_true - y_pred)
    less_than_one = tf.cast(diff < 1.0, tf.float32)
    return less_than_one * 0.5 * diff ** 2 + (1 - less_than_one) * (diff - 0.5)


def _mean_or_zero(loss):
    return tf.cond(tf.size(loss) > 0, lambda: tf.reduce_mean(loss), lambda: tf.constant(0.0))


def rpn_class_loss_graph(rpn_match, rpn_class_logits):
    """RPN anchor classifier loss: mean cross-entropy over non-neutral anchors.

    rpn_match: int32 [B, A, 1] (1 positive, -1 negative, 0 neutral); rpn_class_logits [B, A, 2].
    """
    rpn_match = tf.squeeze(rpn_match, -1)
    anchor_class = tf.cast(tf.equal(rpn_match, 1), tf.int32)
    indices = tf.where(tf.not_equal(rpn_match, 0))
    logits = tf.gather_nd(rpn_class_logits, indices)
    anchor_class = tf.gather_nd(anchor_class, indices)
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=anchor_class, logits=logits)
    return _mean_or_zero(loss)


def rpn_bbox_loss_graph(config, target_bbox, rpn_match, rpn_bbox):
    """RPN box loss: smooth-L1 on positive anchors.

    target_bbox: [B, RPN_TRAIN_ANCHORS_PER_IMAGE, 4], the positives' deltas first, zero-padded;
    rpn_match: int32 [B, A, 1]; rpn_bbox: [B, A, 4] predicted deltas.
    """
    rpn_match = tf.squeeze(rpn_match, -1)
    rpn_bbox = tf.gather_nd(rpn_bbox, tf.where(tf.equal(rpn_match, 1)))
    counts = tf.reduce_sum(tf.cast(tf.equal(rpn_match, 1), tf.int32), axis=1)
    target = tf.concat([target_bbox[i, :counts[i]] for i in range(config.IMAGES_PER_GPU)], axis=0)
    return _mean_or_zero(smooth_l1_loss(target, rpn_bbox))


def mrcnn_class_loss_graph(target_class_ids, pred_class_logits, active_class_ids):
    """Classifier loss: softmax cross-entropy over all ROIs (padding counts as background),
    ignoring predictions of classes not in the image's dataset.

    target_class_ids: [B, T]; pred_class_logits: [B, T, C]; active_class_ids: [B, C] 0/1.
    """
    target_class_ids = tf.cast(target_class_ids, tf.int64)
    pred_class_ids = tf.argmax(pred_class_logits, axis=2)
    pred_active = tf.gather(tf.cast(active_class_ids[0], tf.float32), pred_class_ids)
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=target_class_ids, logits=pred_class_logits)
    loss = loss * pred_active
    return tf.math.divide_no_nan(tf.reduce_sum(loss), tf.reduce_sum(pred_active))


def mrcnn_bbox_loss_graph(target_bbox, target_class_ids, pred_bbox):
    """Box head loss: smooth-L1 on the GT class's deltas of positive ROIs.

    target_bbox: [B, T, 4]; target_class_ids: [B, T]; pred_bbox: [B, T, C, 4].
    """
    target_class_ids = tf.reshape(target_class_ids, (-1,))
    target_bbox = tf.reshape(target_bbox, (-1, 4))
    pred_bbox = tf.reshape(pred_bbox, (-1, pred_bbox.shape[2], 4))
    positive_ix = tf.where(target_class_ids > 0)[:, 0]
    positive_class_ids = tf.cast(tf.gather(target_class_ids, positive_ix), tf.int64)
    indices = tf.stack([positive_ix, positive_class_ids], axis=1)
    return _mean_or_zero(smooth_l1_loss(tf.gather(target_bbox, positive_ix), tf.gather_nd(pred_bbox, indices)))


def mrcnn_mask_loss_graph(target_masks, target_class_ids, pred_masks):
    """Mask head loss: binary cross-entropy on the GT class's mask of positive ROIs.

    target_masks: [B, T, h, w] in {0, 1}; target_class_ids: [B, T]; pred_masks: [B, T, h, w, C]
    sigmoid probabilities.
    """
    target_class_ids = tf.reshape(target_class_ids, (-1,))
    mh, mw = pred_masks.shape[2], pred_masks.shape[3]
    target_masks = tf.reshape(target_masks, (-1, mh, mw))
    pred_masks = tf.transpose(tf.reshape(pred_masks, (-1, mh, mw, pred_masks.shape[4])), [0, 3, 1, 2])
    positive_ix = tf.where(target_class_ids > 0)[:, 0]
    positive_class_ids = tf.cast(tf.gather(target_class_ids, positive_ix), tf.int64)
    indices = tf.stack([positive_ix, positive_class_ids], axis=1)
    y_true = tf.gather(target_masks, positive_ix)
    y_pred = tf.clip_by_value(tf.gather_nd(pred_masks, indices), 1e-7, 1 - 1e-7)
    bce = -(y_true * tf.math.log(y_pred) + (1 - y_true) * tf.math.log(1 - y_pred))
    return _mean_or_zero(bce)


class LossLayer(KL.Layer):
    """Wraps a loss graph function; outputs a float32 scalar. Not serialisable (training only)."""

    def __init__(self, fn, **kwargs):
        super().__init__(**kwargs)
        self.fn = fn

    def call(self, inputs):
        return tf.cast(self.fn(*inputs), tf.float32)

    def compute_output_spec(self, inputs):
        return keras.KerasTensor((), dtype="float32")
