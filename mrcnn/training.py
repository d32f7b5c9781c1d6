"""Mask R-CNN training mode (SPEC §5): targets, losses, the training graph and the loop.

`build_training_model(mrcnn_model, config)` adds to the shared backbone/FPN/RPN and heads
the ground-truth inputs, `DetectionTargetLayer` and the five losses; `MaskRCNN.compile`,
`set_trainable` and `train` delegate to the functions of the same name here.
Boxes in graph code are normalised (y1, x1, y2, x2) unless said otherwise.
"""
from __future__ import annotations

import math
import os
import re

import keras
import numpy as np
import tensorflow as tf
from keras import layers as KL

from mrcnn import data as datalib
from mrcnn.layers import norm_boxes_graph, parse_image_meta_graph

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


class GraphLayer(KL.Layer):
    """Runs a graph function `fn(*inputs)` whose output has a known shape and dtype.

    Keras 3's Lambda layer cannot always infer shapes of TensorFlow ops; this states them.
    Holds a Python function, so it is not serialisable (the training graph never is saved
    whole: checkpoints hold weights only).
    """

    def __init__(self, fn, shape=(), dtype="float32", **kwargs):
        super().__init__(**kwargs)
        self.fn, self.out_shape, self.out_dtype = fn, tuple(shape), dtype

    def call(self, inputs):
        inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        return tf.cast(self.fn(*inputs), self.out_dtype)

    def compute_output_spec(self, inputs):
        return keras.KerasTensor(self.out_shape, dtype=self.out_dtype)


############################################################
#  Training graph
############################################################

class AnchorsLayer(KL.Layer):
    """The image's normalised anchors [B, A, 4] as a constant graph node (matterport's "anchors")."""

    def __init__(self, anchors, **kwargs):
        super().__init__(**kwargs)
        self.anchors = np.asarray(anchors, np.float32)

    def call(self, image):
        anchors = tf.constant(self.anchors)
        return tf.broadcast_to(anchors, tf.concat([tf.shape(image)[:1], tf.shape(anchors)], 0))

    def compute_output_spec(self, image):
        return keras.KerasTensor((image.shape[0],) + self.anchors.shape, dtype="float32")


class TrainingModel(keras.Model):
    """The training graph with its own train/test step.

    Its last five outputs are the loss scalars (LOSS_NAMES order); the step minimises
    sum(loss * LOSS_WEIGHTS) + L2 weight decay: sum over trainable weights whose name lacks
    gamma/beta of WEIGHT_DECAY * sum(w^2) / size(w) (SPEC §5). Logged per step and epoch:
    loss, the five weighted losses, learning_rate.
    """

    def __init__(self, inputs, outputs, config, **kwargs):
        super().__init__(inputs, outputs, **kwargs)
        self.loss_weights_ = [float(config.LOSS_WEIGHTS.get(n, 1.0)) for n in LOSS_NAMES]
        self.weight_decay = float(config.WEIGHT_DECAY)
        self.trackers = [keras.metrics.Mean(name=n) for n in ["loss"] + LOSS_NAMES]
        # Keras 3 passes the outer `training` flag to every layer, overriding the
        # `training=TRAIN_BN` given when the graph was built; so the step itself calls the
        # model with TRAIN_BN (False: BatchNorm uses and keeps its moving statistics).
        self.bn_training = True if config.TRAIN_BN is None else bool(config.TRAIN_BN)

    @property
    def metrics(self):
        return self.trackers

    def weight_decay_loss(self):
        terms = [tf.reduce_sum(tf.square(w)) / tf.cast(tf.size(w), tf.float32)
                 for w in self.trainable_weights if "gamma" not in w.name and "beta" not in w.name]
        return self.weight_decay * tf.add_n(terms) if terms else tf.constant(0.0)

    def _compute_losses(self, data, training):
        x = data[0] if len(data) == 1 else data
        losses = [l * w for l, w in zip(self(x, training=training)[-len(LOSS_NAMES):], self.loss_weights_)]
        return tf.add_n(losses) + self.weight_decay_loss(), losses

    def _log(self, total, losses):
        for tracker, value in zip(self.trackers, [total] + losses):
            tracker.update_state(value)
        return {t.name: t.result() for t in self.trackers}

    def train_step(self, data):
        with tf.GradientTape() as tape:
            total, losses = self._compute_losses(data, training=self.bn_training)
        pairs = [(g, v) for g, v in zip(tape.gradient(total, self.trainable_variables), self.trainable_variables)
                 if g is not None]
        self.optimizer.apply_gradients(pairs)
        return {**self._log(total, losses), "learning_rate": self.optimizer.learning_rate}

    def test_step(self, data):
        return self._log(*self._compute_losses(data, training=False))


def build_training_model(mrcnn_model, config):
    """matterport's training graph (SPEC §5) as a `TrainingModel`.

    Inputs (batch = BATCH_SIZE, static shapes): input_image float32 [B, H, W, 3] molded;
    input_image_meta [B, META]; input_rpn_match int32 [B, A, 1]; input_rpn_bbox [B, 256, 4];
    input_gt_class_ids int32 [B, G]; input_gt_boxes [B, G, 4] pixels; input_gt_masks bool
    [B, 56, 56, G] (mini masks) or [B, H, W, G]. G = MAX_GT_INSTANCES.
    Outputs: rpn_class_logits, rpn_class, rpn_bbox, mrcnn_class_logits, mrcnn_class,
    mrcnn_bbox, mrcnn_mask (for the first P = int(T * ROI_POSITIVE_RATIO) ROIs only, which hold
    every positive: [B, P, 28, 28, C]), rpn_rois, output_rois [B, T, 4], then the five losses.
    """
    from mrcnn import model as modellib

    if not config.USE_RPN_ROIS:
        raise ValueError("USE_RPN_ROIS = False (externally given ROIs) is not supported")
    b = config.BATCH_SIZE
    h, w, c = (int(v) for v in config.IMAGE_SHAPE)
    g = config.MAX_GT_INSTANCES
    anchors = mrcnn_model.get_anchors(config.IMAGE_SHAPE)
    mask_shape = tuple(config.MINI_MASK_SHAPE) if config.USE_MINI_MASK else (h, w)

    input_image = KL.Input(shape=[h, w, c], batch_size=b, name="input_image")
    input_image_meta = KL.Input(shape=[config.IMAGE_META_SIZE], batch_size=b, name="input_image_meta")
    input_rpn_match = KL.Input(shape=[len(anchors), 1], batch_size=b, name="input_rpn_match", dtype="int32")
    input_rpn_bbox = KL.Input(shape=[config.RPN_TRAIN_ANCHORS_PER_IMAGE, 4], batch_size=b, name="input_rpn_bbox")
    input_gt_class_ids = KL.Input(shape=[g], batch_size=b, name="input_gt_class_ids", dtype="int32")
    input_gt_boxes = KL.Input(shape=[g, 4], batch_size=b, name="input_gt_boxes")
    input_gt_masks = KL.Input(shape=[*mask_shape, g], batch_size=b, name="input_gt_masks", dtype="bool")

    gt_boxes = GraphLayer(lambda x: norm_boxes_graph(x, (h, w)), (b, g, 4), name="gt_boxes_norm")(input_gt_boxes)
    rpn_feature_maps, mrcnn_feature_maps, (rpn_class_logits, rpn_class, rpn_bbox) = \
        modellib.build_backbone_fpn_rpn(input_image, config)
    anchors_t = AnchorsLayer(anchors, name="anchors")(input_image)
    rpn_rois = modellib.ProposalLayer(proposal_count=config.POST_NMS_ROIS_TRAINING,
                                      nms_threshold=config.RPN_NMS_THRESHOLD, name="ROI",
                                      config=config)([rpn_class, rpn_bbox, anchors_t])
    active_class_ids = GraphLayer(lambda m: parse_image_meta_graph(m)["active_class_ids"],
                                  (b, config.NUM_CLASSES), name="active_class_ids")(input_image_meta)
    rois, target_class_ids, target_bbox, target_mask = DetectionTargetLayer(config, name="proposal_targets")(
        [rpn_rois, input_gt_class_ids, gt_boxes, input_gt_masks])
    mrcnn_class_logits, mrcnn_class, mrcnn_bbox = modellib.fpn_classifier_graph(
        rois, mrcnn_feature_maps, input_image_meta, config.POOL_SIZE, config.NUM_CLASSES,
        train_bn=config.TRAIN_BN, fc_layers_size=config.FPN_CLASSIF_FC_LAYERS_SIZE)
    # Positive ROIs come first and number at most P = int(T * ROI_POSITIVE_RATIO); only they
    # enter the mask loss, so the mask head runs on the first P ROIs alone (same loss as
    # matterport's head on all T, about T/P times cheaper).
    p = int(config.TRAIN_ROIS_PER_IMAGE * config.ROI_POSITIVE_RATIO)
    mh, mw = config.MASK_SHAPE
    mask_rois = GraphLayer(lambda r: r[:, :p], (b, p, 4), name="mask_rois")(rois)
    mask_class_ids = GraphLayer(lambda c: c[:, :p], (b, p), "int32", name="mask_class_ids")(target_class_ids)
    mask_targets = GraphLayer(lambda m: m[:, :p], (b, p, mh, mw), name="mask_targets")(target_mask)
    mrcnn_mask = modellib.build_fpn_mask_graph(
        mask_rois, mrcnn_feature_maps, input_image_meta, config.MASK_POOL_SIZE, config.NUM_CLASSES,
        train_bn=config.TRAIN_BN, conv_size=config.MASK_HEAD_CONV_SIZE)
    output_rois = GraphLayer(tf.identity, rois.shape, name="output_rois")(rois)

    losses = [
        GraphLayer(rpn_class_loss_graph, name="rpn_class_loss")([input_rpn_match, rpn_class_logits]),
        GraphLayer(lambda *x: rpn_bbox_loss_graph(config, *x), name="rpn_bbox_loss")(
            [input_rpn_bbox, input_rpn_match, rpn_bbox]),
        GraphLayer(mrcnn_class_loss_graph, name="mrcnn_class_loss")(
            [target_class_ids, mrcnn_class_logits, active_class_ids]),
        GraphLayer(mrcnn_bbox_loss_graph, name="mrcnn_bbox_loss")([target_bbox, target_class_ids, mrcnn_bbox]),
        GraphLayer(mrcnn_mask_loss_graph, name="mrcnn_mask_loss")([mask_targets, mask_class_ids, mrcnn_mask]),
    ]
    inputs = [input_image, input_image_meta, input_rpn_match, input_rpn_bbox,
              input_gt_class_ids, input_gt_boxes, input_gt_masks]
    outputs = [rpn_class_logits, rpn_class, rpn_bbox, mrcnn_class_logits, mrcnn_class, mrcnn_bbox,
               mrcnn_mask, rpn_rois, output_rois] + losses
    return TrainingModel(inputs, outputs, config, name="mask_rcnn")


############################################################
#  Compile, freeze, train
############################################################

def compile(mrcnn_model, learning_rate, momentum):
    """SGD with momentum and per-tensor gradient-norm clipping (GRADIENT_CLIP_NORM)."""
    optimizer = keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum,
                                     clipnorm=mrcnn_model.config.GRADIENT_CLIP_NORM)
    mrcnn_model.keras_model.compile(optimizer=optimizer, jit_compile=False)


def set_trainable(mrcnn_model, layer_regex, keras_model=None, indent=0, verbose=1):
    """Make trainable exactly the weighted layers whose name re.fullmatch-es `layer_regex`.

    Recurses into nested models (rpn_model) and sets the inner layer of TimeDistributed
    wrappers too. Call after load_weights: freezing changes Keras' weight order (SPEC §8).
    """
    if verbose > 0 and keras_model is None:
        print("Selecting layers to train")
    keras_model = keras_model or mrcnn_model.keras_model
    for layer in keras_model.layers:
        if isinstance(layer, keras.Model):
            if verbose > 0:
                print(" " * indent + "In model: ", layer.name)
            set_trainable(mrcnn_model, layer_regex, keras_model=layer, indent=indent + 4, verbose=verbose)
            continue
        if not layer.weights:
            continue
        trainable = bool(re.fullmatch(layer_regex, layer.name))
        if isinstance(layer, KL.TimeDistributed):
            layer.layer.trainable = trainable
        layer.trainable = trainable
        if trainable and verbose > 1:
            print("{}{:20}   ({})".format(" " * indent, layer.name, layer.__class__.__name__))


class ScalarLog(keras.callbacks.Callback):
    """TensorBoard event files with the losses and learning rate, per step (`batch_*`, under
    log_dir/train) and per epoch (`epoch_*`, train and validation); with histograms=True also
    a histogram of every trainable weight per epoch (`weights/<layer>/<weight>`, under train).

    Writes with TensorFlow's core `tf.summary.write` and the "scalars"/"histograms" plugin
    tags, so it needs no `tensorboard` package (Keras' TensorBoard callback does).
    """

    HISTOGRAM_BINS = 30

    def __init__(self, log_dir, histograms=False):
        super().__init__()
        self.writers = {k: tf.summary.create_file_writer(os.path.join(log_dir, k)) for k in ("train", "validation")}
        from tensorflow.core.framework import summary_pb2

        def metadata(plugin):
            return summary_pb2.SummaryMetadata(
                plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin)).SerializeToString()
        self.metadata, self.histogram_metadata = metadata("scalars"), metadata("histograms")
        self.histograms = histograms
        self.step = 0

    def _write(self, kind, prefix, logs, step):
        with self.writers[kind].as_default():
            for name, value in logs.items():
                tf.summary.write(prefix + name, tf.constant(float(value)), step=step, metadata=self.metadata)

    def on_epoch_begin(self, epoch, logs=None):
        self.step = epoch * self.params.get("steps", 0)

    def on_train_batch_end(self, batch, logs=None):
        self._write("train", "batch_", logs or {}, self.step + batch)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self._write("train", "epoch_", {k: v for k, v in logs.items() if not k.startswith("val_")}, epoch)
        self._write("validation", "epoch_", {k[4:]: v for k, v in logs.items() if k.startswith("val_")}, epoch)
        if self.histograms:
            self._write_histograms(epoch)
        for w in self.writers.values():
            w.flush()

    def _write_histograms(self, epoch):
        """Each trainable weight (named as in the h5 files) as TensorBoard's histogram plugin
        stores one: float64 [HISTOGRAM_BINS, 3] rows (left edge, right edge, count)."""
        from mrcnn import weights as weightslib

        with self.writers["train"].as_default():
            for layer in self.model.layers:
                for name, var in weightslib.layer_weights(layer) if layer.weights else []:
                    if not var.trainable:
                        continue
                    values = np.asarray(var.numpy(), np.float64).ravel()
                    counts, edges = np.histogram(values[np.isfinite(values)], bins=self.HISTOGRAM_BINS)
                    buckets = np.stack([edges[:-1], edges[1:], counts], axis=1)
                    tf.summary.write("weights/" + name.removesuffix(":0"), tf.constant(buckets, tf.float64),
                                     step=epoch, metadata=self.histogram_metadata)


class TrainingDiverged(ValueError):
    """The training loss stopped being a finite number (a learning rate too high, most often)."""


class StopOnDivergence(keras.callbacks.Callback):
    """Ends training at the first step whose loss is not finite: the weights are then NaN, and
    Keras carried on, saving every later epoch's checkpoint with them (and a resumed run
    started from one). Raises TrainingDiverged before that epoch's checkpoint is written."""

    epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingDiverged(f"training diverged: the loss became {float(loss)} in epoch {self.epoch + 1}, "
                                   f"step {batch + 1}, so that epoch's checkpoint was not written")


class EpochCheckpoint(keras.callbacks.Callback):
    """After each epoch, write all weights to `checkpoint_path` (mask_rcnn_<name>_<epoch:04d>.h5,
    1-based epoch) in the h5 layout `MaskRCNN.load_weights` reads, and its sidecar
    mask_rcnn_<name>_<epoch:04d>.json (inference settings and class_names, see
    `weights.write_sidecar`, and how the run trained: `training`, which resuming it takes)
    first, so a checkpoint never lacks it; the sidecar is removed again when the weights
    cannot be written (a full disk, Ctrl-C)."""

    def __init__(self, mrcnn_model, class_names, training):
        super().__init__()
        self.mrcnn_model = mrcnn_model
        self.class_names = list(class_names)
        self.training = training

    def on_epoch_end(self, epoch, logs=None):
        from mrcnn import weights as weightslib

        path = self.mrcnn_model.checkpoint_path.format(epoch=epoch + 1)
        weightslib.write_sidecar(path, self.mrcnn_model.config, self.class_names, training=self.training)
        try:
            self.mrcnn_model.save_weights(path)
        except BaseException:
            os.remove(weightslib.sidecar_path(path))
            raise


def _tf_dataset(generator, failures):
    """Wrap a `data_generator` as a tf.data.Dataset of ((7 inputs),) with static shapes. An
    exception the generator raises is appended to `failures` too: tf.data hands `fit` an
    UnknownError that only quotes it."""
    (first, _) = next(generator)

    def gen():
        yield (tuple(first),)
        try:
            for inputs, _ in generator:
                yield (tuple(inputs),)
        except Exception as e:
            failures.append(e)
            raise

    dtypes = {np.dtype(bool): tf.bool, np.dtype(np.int32): tf.int32}
    spec = tuple(tf.TensorSpec(x.shape, dtypes.get(x.dtype, tf.float32)) for x in first)
    return tf.data.Dataset.from_generator(gen, output_signature=(spec,)).map(
        lambda x: (tuple(tf.cast(t, s.dtype) for t, s in zip(x, spec)),)).prefetch(2)


def train(mrcnn_model, train_dataset, val_dataset, learning_rate, epochs, layers, augmentation=None,
          custom_callbacks=None, no_augmentation_sources=None, seed=0, workers=2, verbose=None,
          histograms=False):
    """Train `layers` ("heads", "3+", "4+", "5+", "all" or a regex) up to epoch `epochs`.

    epochs is cumulative: a model at epoch 10 (fresh, or loaded from a checkpoint of epoch
    10) trained with epochs=15 runs 5 more epochs, saving mask_rcnn_<name>_0011.h5 ... 0015
    (each with its .json sidecar: inference settings, train_dataset.class_names, and
    "training": {layers, learning_rate, steps_per_epoch, validation_steps}) under
    log_dir (`MaskRCNN.make_log_dir`: a new run never shares a folder), with TensorBoard logs
    there too. augmentation: callable(image, masks, rng) (mrcnn.augmentation); not applied to
    images of `no_augmentation_sources`.
    seed: makes the batch stream repeatable; batches continue where the previous epoch ended.
    verbose: Keras fit verbosity (default: progress bar on a terminal, one line per epoch otherwise).
    histograms: also log a TensorBoard histogram of every trainable weight per epoch.
    """
    import sys

    assert mrcnn_model.mode == "training", "Create model in training mode."
    config = mrcnn_model.config
    layer_regex = LAYER_REGEX.get(layers, layers)
    start = mrcnn_model.epoch * config.STEPS_PER_EPOCH
    gens = [datalib.data_generator(train_dataset, config, shuffle=True, augmentation=augmentation,
                                   batch_size=config.BATCH_SIZE, seed=seed, workers=workers, start=start,
                                   no_augmentation_sources=no_augmentation_sources)]
    if val_dataset is not None:
        gens.append(datalib.data_generator(val_dataset, config, shuffle=True, batch_size=config.BATCH_SIZE,
                                           seed=seed + 1, workers=1, start=start))
    mrcnn_model.make_log_dir()
    callbacks = [ScalarLog(mrcnn_model.log_dir, histograms), StopOnDivergence(),
                 EpochCheckpoint(mrcnn_model, train_dataset.class_names,
                                 dict(layers=layers, learning_rate=learning_rate, steps_per_epoch=config.STEPS_PER_EPOCH,
                                      validation_steps=config.VALIDATION_STEPS))] + list(custom_callbacks or [])
    print(f"\nStarting at epoch {mrcnn_model.epoch}. LR={learning_rate}\n")
    print(f"Checkpoint Path: {mrcnn_model.checkpoint_path}")
    set_trainable(mrcnn_model, layer_regex)
    compile(mrcnn_model, learning_rate, config.LEARNING_MOMENTUM)
    failures = []
    try:
        data = [_tf_dataset(gen, failures) for gen in gens]
        mrcnn_model.keras_model.fit(
            data[0], initial_epoch=mrcnn_model.epoch, epochs=epochs, steps_per_epoch=config.STEPS_PER_EPOCH,
            callbacks=callbacks, shuffle=False, validation_data=data[1] if len(data) > 1 else None,
            validation_steps=config.VALIDATION_STEPS,
            verbose=verbose if verbose is not None else (1 if sys.stdout.isatty() else 2))
    except Exception:
        if failures:  # the data's own error (an image that cannot be read), not tf.data's wrapper
            raise failures[0] from None
        raise
    finally:
        for gen in gens:
            try:
                gen.close()
            except ValueError:  # still running inside tf.data's thread; its workers are daemons
                pass
    mrcnn_model.epoch = max(mrcnn_model.epoch, epochs)
