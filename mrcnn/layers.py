"""Graph layers and box math of Mask R-CNN (TensorFlow backend), matterport's semantics.

Boxes are (y1, x1, y2, x2); "normalised" boxes are in [0, 1] image coordinates as
`utils.norm_boxes` defines them. NMS and ROI pooling use `tf.image` ops so results
match matterport's exactly (NMS suppresses IoU > threshold; crop_and_resize samples
y1*(H-1) + i*(y2-y1)*(H-1)/(pool-1)).
"""
import numpy as np
import tensorflow as tf
from keras import layers as KL


# ---------------------------------------------------------------- box math

def norm_boxes_graph(boxes, shape):
    """Pixel boxes [..., 4] -> normalised: (b - [0, 0, 1, 1]) / [h-1, w-1, h-1, w-1]. shape: (h, w)."""
    h, w = tf.split(tf.cast(shape, tf.float32), 2)
    scale = tf.concat([h, w, h, w], axis=-1) - tf.constant(1.0)
    shift = tf.constant([0., 0., 1., 1.])
    return tf.divide(boxes - shift, scale)


def denorm_boxes_graph(boxes, shape):
    """Normalised boxes [..., 4] -> int32 pixel boxes (inverse of norm_boxes_graph, rounded)."""
    h, w = tf.split(tf.cast(shape, tf.float32), 2)
    scale = tf.concat([h, w, h, w], axis=-1) - tf.constant(1.0)
    shift = tf.constant([0., 0., 1., 1.])
    return tf.cast(tf.round(tf.multiply(boxes, scale) + shift), tf.int32)


# log(dh), log(dw) above this (a box growing more than 62x) are clamped before exp(), as
# torchvision does: a barely trained model's huge deltas would overflow to inf and make the
# boxes NaN (inf - inf); any box that large is clipped to the whole image anyway.
MAX_LOG_SCALE = float(np.log(1000.0 / 16))


def apply_box_deltas_graph(boxes, deltas):
    """Refine boxes [..., 4] by deltas [..., 4] = (dy, dx, log(dh), log(dw)), float32."""
    height = boxes[..., 2] - boxes[..., 0]
    width = boxes[..., 3] - boxes[..., 1]
    center_y = boxes[..., 0] + 0.5 * height
    center_x = boxes[..., 1] + 0.5 * width
    center_y += deltas[..., 0] * height
    center_x += deltas[..., 1] * width
    height *= tf.exp(tf.minimum(deltas[..., 2], MAX_LOG_SCALE))
    width *= tf.exp(tf.minimum(deltas[..., 3], MAX_LOG_SCALE))
    y1 = center_y - 0.5 * height
    x1 = center_x - 0.5 * width
    return tf.stack([y1, x1, y1 + height, x1 + width], axis=-1, name="apply_box_deltas_out")


def clip_boxes_graph(boxes, window):
    """Clip boxes [..., 4] to window (wy1, wx1, wy2, wx2), coordinate by coordinate."""
    wy1, wx1, wy2, wx2 = tf.unstack(tf.cast(window, boxes.dtype), 4, axis=-1)
    y1, x1, y2, x2 = tf.unstack(boxes, 4, axis=-1)
    y1 = tf.maximum(tf.minimum(y1, wy2), wy1)
    x1 = tf.maximum(tf.minimum(x1, wx2), wx1)
    y2 = tf.maximum(tf.minimum(y2, wy2), wy1)
    x2 = tf.maximum(tf.minimum(x2, wx2), wx1)
    return tf.stack([y1, x1, y2, x2], axis=-1, name="clipped_boxes")


def parse_image_meta_graph(meta):
    """image_meta [B, 12 + NUM_CLASSES] -> dict of its fields (see model.compose_image_meta)."""
    return {
        "image_id": meta[:, 0],
        "original_image_shape": meta[:, 1:4],
        "image_shape": meta[:, 4:7],
        "window": meta[:, 7:11],
        "scale": meta[:, 11],
        "active_class_ids": meta[:, 12:],
    }


def log2_graph(x):
    return tf.math.log(x) / tf.math.log(2.0)


def map_images(fn, tensors, dtype):
    """Apply fn(*per_image_tensors) to every image of the batch and stack the results.

    A Python loop when the batch size is static (the compiled inference function), else
    tf.map_fn (symbolic model building). fn must return a fixed-shape tensor of `dtype`.
    """
    batch = tensors[0].shape[0]
    if batch is not None:
        return tf.stack([fn(*[t[i] for t in tensors]) for i in range(batch)])
    return tf.map_fn(lambda xs: fn(*xs), tuple(tensors), fn_output_signature=dtype)


# ---------------------------------------------------------------- layers

class TimeDistributed(KL.TimeDistributed):
    """Apply `layer` to every [B, T, ...] item by folding T into the batch (one big op).

    Keras 3's TimeDistributed loops over T in Python, which for 1000 ROIs means 1000
    ops; this keeps the wrapper (and so the weights' names and layout) but runs one.
    """

    def call(self, inputs, training=None, mask=None):
        shape = tf.shape(inputs)
        x = tf.reshape(inputs, tf.concat([[-1], shape[2:]], axis=0))
        kwargs = {"training": training} if self.layer._call_has_training_arg else {}
        y = self.layer(x, **kwargs)
        out_shape = tf.concat([shape[:2], tf.shape(y)[1:]], axis=0)
        y = tf.reshape(y, out_shape)
        static = self.compute_output_shape(tuple(inputs.shape))
        y.set_shape([inputs.shape[0], inputs.shape[1], *static[2:]])
        return y


class ProposalLayer(KL.Layer):
    """RPN scores + deltas + anchors -> top proposals after NMS.

    Inputs: rpn_probs [B, A, 2] (bg, fg), rpn_bbox [B, A, 4] deltas, anchors [B, A, 4]
    normalised. Output: float32 [B, proposal_count, 4] normalised boxes, zero-padded.
    """

    def __init__(self, proposal_count, nms_threshold, config=None, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.proposal_count = proposal_count
        self.nms_threshold = nms_threshold

    def call(self, inputs):
        scores = inputs[0][:, :, 1]
        deltas = inputs[1] * np.reshape(self.config.RPN_BBOX_STD_DEV, [1, 1, 4]).astype(np.float32)
        anchors = inputs[2]
        pre_nms_limit = tf.minimum(self.config.PRE_NMS_LIMIT, tf.shape(anchors)[1])
        scores, ix = tf.nn.top_k(scores, pre_nms_limit, sorted=True, name="top_anchors")
        deltas = tf.gather(deltas, ix, batch_dims=1)
        pre_nms_anchors = tf.gather(anchors, ix, batch_dims=1)
        boxes = apply_box_deltas_graph(pre_nms_anchors, deltas)
        boxes = clip_boxes_graph(boxes, tf.constant([0., 0., 1., 1.]))

        def nms(boxes, scores):
            indices = tf.image.non_max_suppression(
                boxes, scores, self.proposal_count, self.nms_threshold, name="rpn_non_max_suppression")
            proposals = tf.gather(boxes, indices)
            padding = tf.maximum(self.proposal_count - tf.shape(proposals)[0], 0)
            return tf.reshape(tf.pad(proposals, [(0, padding), (0, 0)]), [self.proposal_count, 4])

        return map_images(nms, [boxes, scores], tf.float32)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.proposal_count, 4)

    def get_config(self):
        return {**super().get_config(), "proposal_count": self.proposal_count,
                "nms_threshold": self.nms_threshold}


def roi_levels(boxes, image_area):
    """FPN level (int32 2..5) of each normalised box [...]: 4 + round(log2(sqrt(h*w) / (224/sqrt(area)))).

    Zero (padding) boxes land at level 2, as in matterport.
    """
    h = boxes[..., 2] - boxes[..., 0]
    w = boxes[..., 3] - boxes[..., 1]
    level = log2_graph(tf.sqrt(h * w) / (224.0 / tf.sqrt(image_area)))
    level = tf.clip_by_value(tf.round(level), -10.0, 10.0)  # -inf for empty boxes
    return tf.minimum(5, tf.maximum(2, 4 + tf.cast(level, tf.int32)))


def pyramid_roi_align(boxes, box_indices, image_area, feature_maps, pool_shape):
    """ROI Align over the FPN: each box is pooled from the level `roi_levels` picks.

    boxes: float32 [N, 4] normalised; box_indices: int32 [N], image of each box;
    image_area: float32 scalar, molded h*w; feature_maps: [P2, P3, P4, P5], each
    [B, h, w, C]. Returns float32 [N, pool_h, pool_w, C] in the order of `boxes`.
    """
    levels = roi_levels(boxes, image_area)
    positions, pooled = [], []
    for i, level in enumerate(range(2, 6)):
        ix = tf.cast(tf.where(tf.equal(levels, level))[:, 0], tf.int32)
        level_boxes = tf.stop_gradient(tf.gather(boxes, ix))
        level_indices = tf.stop_gradient(tf.gather(box_indices, ix))
        positions.append(ix)
        pooled.append(tf.image.crop_and_resize(
            feature_maps[i], level_boxes, level_indices, pool_shape, method="bilinear"))
    return tf.dynamic_stitch(positions, pooled)


class PyramidROIAlign(KL.Layer):
    """ROI Align on the feature pyramid.

    Inputs: [boxes [B, N, 4] normalised, image_meta [B, META], P2, P3, P4, P5].
    Output: float32 [B, N, pool_h, pool_w, C].
    """

    def __init__(self, pool_shape, **kwargs):
        super().__init__(**kwargs)
        self.pool_shape = tuple(pool_shape)

    def call(self, inputs):
        boxes, image_meta, feature_maps = inputs[0], inputs[1], inputs[2:]
        image_shape = parse_image_meta_graph(image_meta)["image_shape"][0]
        image_area = tf.cast(image_shape[0] * image_shape[1], tf.float32)
        shape = tf.shape(boxes)
        flat = tf.reshape(boxes, [-1, 4])
        box_indices = tf.repeat(tf.range(shape[0]), shape[1])
        pooled = pyramid_roi_align(flat, box_indices, image_area, feature_maps, self.pool_shape)
        out = tf.reshape(pooled, tf.concat([shape[:2], tf.shape(pooled)[1:]], axis=0))
        out.set_shape(self.compute_output_shape([b.shape for b in inputs]))
        return out

    def compute_output_shape(self, input_shape):
        return (*input_shape[0][:2], *self.pool_shape, input_shape[2][-1])

    def get_config(self):
        return {**super().get_config(), "pool_shape": self.pool_shape}


def refine_detections_graph(rois, probs, deltas, window, config):
    """One image's final detections.

    rois [N, 4] normalised; probs [N, C]; deltas [N, C, 4]; window [4] normalised.
    Returns float32 [DETECTION_MAX_INSTANCES, 6] rows (y1, x1, y2, x2, class_id, score),
    by descending score, zero-padded.
    """
    class_ids = tf.argmax(probs, axis=1, output_type=tf.int32)
    class_scores = tf.gather(probs, class_ids, batch_dims=1)
    deltas_specific = tf.gather(deltas, class_ids, batch_dims=1)
    refined_rois = apply_box_deltas_graph(rois, deltas_specific * config.BBOX_STD_DEV.astype(np.float32))
    refined_rois = clip_boxes_graph(refined_rois, window)

    keep_mask = class_ids > 0
    if config.DETECTION_MIN_CONFIDENCE:
        keep_mask &= class_scores >= config.DETECTION_MIN_CONFIDENCE
    keep = tf.where(keep_mask)[:, 0]
    pre_nms_class_ids = tf.gather(class_ids, keep)
    pre_nms_scores = tf.gather(class_scores, keep)
    pre_nms_rois = tf.gather(refined_rois, keep)
    unique_pre_nms_class_ids = tf.unique(pre_nms_class_ids)[0]

    def nms_keep_map(class_id):
        ixs = tf.where(tf.equal(pre_nms_class_ids, class_id))[:, 0]
        class_keep = tf.image.non_max_suppression(
            tf.gather(pre_nms_rois, ixs), tf.gather(pre_nms_scores, ixs),
            max_output_size=config.DETECTION_MAX_INSTANCES,
            iou_threshold=config.DETECTION_NMS_THRESHOLD)
        class_keep = tf.gather(keep, tf.gather(ixs, class_keep))
        gap = config.DETECTION_MAX_INSTANCES - tf.shape(class_keep)[0]
        class_keep = tf.pad(class_keep, [(0, gap)], mode="CONSTANT", constant_values=-1)
        return tf.reshape(class_keep, [config.DETECTION_MAX_INSTANCES])

    nms_keep = tf.map_fn(nms_keep_map, unique_pre_nms_class_ids, fn_output_signature=tf.int64)
    nms_keep = tf.reshape(nms_keep, [-1])
    # Survivors are a subset of `keep`; sorting them equals matterport's set intersection.
    keep = tf.sort(tf.gather(nms_keep, tf.where(nms_keep > -1)[:, 0]))

    class_scores_keep = tf.gather(class_scores, keep)
    num_keep = tf.minimum(tf.shape(class_scores_keep)[0], config.DETECTION_MAX_INSTANCES)
    top_ids = tf.nn.top_k(class_scores_keep, k=num_keep, sorted=True)[1]
    keep = tf.gather(keep, top_ids)
    detections = tf.concat([
        tf.gather(refined_rois, keep),
        tf.cast(tf.gather(class_ids, keep), tf.float32)[..., tf.newaxis],
        tf.gather(class_scores, keep)[..., tf.newaxis],
    ], axis=1)
    gap = config.DETECTION_MAX_INSTANCES - tf.shape(detections)[0]
    detections = tf.pad(detections, [(0, gap), (0, 0)], "CONSTANT")
    return tf.reshape(detections, [config.DETECTION_MAX_INSTANCES, 6])


class DetectionLayer(KL.Layer):
    """Classified, refined proposals -> final detections.

    Inputs: [rois [B, N, 4], mrcnn_class [B, N, C], mrcnn_bbox [B, N, C, 4], image_meta].
    Output: float32 [B, DETECTION_MAX_INSTANCES, 6] (y1, x1, y2, x2, class_id, score),
    normalised coordinates, clipped to the image window, zero-padded.
    """

    def __init__(self, config=None, **kwargs):
        super().__init__(**kwargs)
        self.config = config

    def call(self, inputs):
        rois, mrcnn_class, mrcnn_bbox, image_meta = inputs
        m = parse_image_meta_graph(image_meta)
        image_shape = m["image_shape"][0]
        window = norm_boxes_graph(m["window"], image_shape[:2])
        return map_images(lambda r, c, b, w: refine_detections_graph(r, c, b, w, self.config),
                          [rois, mrcnn_class, mrcnn_bbox, window], tf.float32)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.config.DETECTION_MAX_INSTANCES, 6)


class SliceBoxes(KL.Layer):
    """detections [B, N, 6] -> their boxes [B, N, 4]."""

    def call(self, inputs):
        return inputs[..., :4]

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 4)
