"""Mask R-CNN (ResNet + FPN) on Keras 3, with matterport's `mrcnn.model` API.

    from mrcnn import model as modellib
    model = modellib.MaskRCNN(mode="inference", config=config, model_dir="logs")
    model.load_weights("mask_rcnn_coco.h5", by_name=True)
    r = model.detect([image])[0]   # {"rois", "class_ids", "scores", "masks"}

`keras_model` is matterport's graph: inputs [input_image, input_image_meta,
input_anchors], outputs [mrcnn_detection, mrcnn_class, mrcnn_bbox, mrcnn_mask,
rpn_rois, rpn_class, rpn_bbox]. `detect` runs a faster equivalent: one compiled
function per (batch, height, width) that runs the mask head only on the detections
that survive instead of on all DETECTION_MAX_INSTANCES slots (same results).
"""
import datetime
import os
import re

import keras
import numpy as np
import tensorflow as tf
from keras import layers as KL

from mrcnn import utils
from mrcnn import weights as weightslib
from mrcnn.backbones import (BatchNorm, build_backbone, compute_backbone_shapes, conv_block,  # noqa: F401
                             identity_block, resnet18_graph, resnet_graph)
from mrcnn.data import compose_image_meta, data_generator, load_image_gt, mold_image  # noqa: F401  (matterport API)
from mrcnn.layers import (DetectionLayer, ProposalLayer, PyramidROIAlign, SliceBoxes,  # noqa: F401
                          TimeDistributed, apply_box_deltas_graph, clip_boxes_graph,
                          denorm_boxes_graph, log2_graph, norm_boxes_graph, parse_image_meta_graph,
                          pyramid_roi_align, refine_detections_graph, roi_levels)


############################################################
#  Utility functions (matterport's module API)
############################################################

def log(text, array=None):
    """Print text, and for an array its shape, min, max and dtype."""
    if array is not None:
        text = text.ljust(25)
        text += "shape: {:20}  ".format(str(array.shape))
        if array.size:
            text += "min: {:10.5f}  max: {:10.5f}".format(array.min(), array.max())
        else:
            text += "min: {:10}  max: {:10}".format("", "")
        text += "  {}".format(array.dtype)
    print(text)


def parse_image_meta(meta):
    """image_meta [B, 12 + NUM_CLASSES] (numpy) -> dict of its fields, ints as int32."""
    return {
        "image_id": meta[:, 0].astype(np.int32),
        "original_image_shape": meta[:, 1:4].astype(np.int32),
        "image_shape": meta[:, 4:7].astype(np.int32),
        "window": meta[:, 7:11].astype(np.int32),
        "scale": meta[:, 11].astype(np.float32),
        "active_class_ids": meta[:, 12:].astype(np.int32),
    }


def unmold_image(normalized_images, config):
    """Inverse of mold_image: float images -> uint8 RGB."""
    return (normalized_images + config.MEAN_PIXEL).astype(np.uint8)


############################################################
#  Graph builders (shared by inference and training)
############################################################

def rpn_graph(feature_map, anchors_per_location, anchor_stride, conv_size=512):
    """RPN head on one feature map [B, h, w, depth].

    Returns [rpn_class_logits [B, h*w*A, 2], rpn_probs [B, h*w*A, 2] (bg, fg),
    rpn_bbox [B, h*w*A, 4] (dy, dx, log(dh), log(dw))], rows ordered like the anchors.
    """
    shared = KL.Conv2D(conv_size, (3, 3), padding="same", activation="relu",
                       strides=anchor_stride, name="rpn_conv_shared")(feature_map)
    x = KL.Conv2D(2 * anchors_per_location, (1, 1), padding="valid", activation="linear",
                  name="rpn_class_raw")(shared)
    rpn_class_logits = KL.Reshape((-1, 2))(x)
    rpn_probs = KL.Activation("softmax", name="rpn_class_xxx")(rpn_class_logits)
    x = KL.Conv2D(anchors_per_location * 4, (1, 1), padding="valid", activation="linear",
                  name="rpn_bbox_pred")(shared)
    rpn_bbox = KL.Reshape((-1, 4))(x)
    return [rpn_class_logits, rpn_probs, rpn_bbox]


def build_rpn_model(anchor_stride, anchors_per_location, depth, conv_size=512):
    """The RPN as a sub-model named "rpn_model", shared by every pyramid level."""
    input_feature_map = KL.Input(shape=[None, None, depth], name="input_rpn_feature_map")
    outputs = rpn_graph(input_feature_map, anchors_per_location, anchor_stride, conv_size)
    return keras.Model([input_feature_map], outputs, name="rpn_model")


def fpn_graph(C2, C3, C4, C5, depth):
    """Top-down feature pyramid. Returns [P2, P3, P4, P5, P6], each [B, h, w, depth]."""
    P5 = KL.Conv2D(depth, (1, 1), name="fpn_c5p5")(C5)
    P4 = KL.Add(name="fpn_p4add")([
        KL.UpSampling2D(size=(2, 2), name="fpn_p5upsampled")(P5),
        KL.Conv2D(depth, (1, 1), name="fpn_c4p4")(C4)])
    P3 = KL.Add(name="fpn_p3add")([
        KL.UpSampling2D(size=(2, 2), name="fpn_p4upsampled")(P4),
        KL.Conv2D(depth, (1, 1), name="fpn_c3p3")(C3)])
    P2 = KL.Add(name="fpn_p2add")([
        KL.UpSampling2D(size=(2, 2), name="fpn_p3upsampled")(P3),
        KL.Conv2D(depth, (1, 1), name="fpn_c2p2")(C2)])
    P2 = KL.Conv2D(depth, (3, 3), padding="SAME", name="fpn_p2")(P2)
    P3 = KL.Conv2D(depth, (3, 3), padding="SAME", name="fpn_p3")(P3)
    P4 = KL.Conv2D(depth, (3, 3), padding="SAME", name="fpn_p4")(P4)
    P5 = KL.Conv2D(depth, (3, 3), padding="SAME", name="fpn_p5")(P5)
    P6 = KL.MaxPooling2D(pool_size=(1, 1), strides=2, name="fpn_p6")(P5)
    return [P2, P3, P4, P5, P6]


def build_backbone_fpn_rpn(input_image, config):
    """Backbone + FPN + RPN on input_image [B, H, W, 3] (molded float32).

    Returns (rpn_feature_maps [P2..P6], mrcnn_feature_maps [P2..P5],
    [rpn_class_logits [B, A, 2], rpn_class [B, A, 2], rpn_bbox [B, A, 4]]), A = anchors.
    """
    h, w = config.IMAGE_SHAPE[:2]
    if h / 2 ** 6 != int(h / 2 ** 6) or w / 2 ** 6 != int(w / 2 ** 6):
        raise ValueError("Image size must be dividable by 2 at least 6 times "
                         "to avoid fractions when downscaling and upscaling. "
                         "For example, use 256, 320, 384, 448, 512, ... etc. ")
    C2, C3, C4, C5 = build_backbone(input_image, config)
    rpn_feature_maps = fpn_graph(C2, C3, C4, C5, config.TOP_DOWN_PYRAMID_SIZE)
    mrcnn_feature_maps = rpn_feature_maps[:4]
    rpn = build_rpn_model(config.RPN_ANCHOR_STRIDE, len(config.RPN_ANCHOR_RATIOS),
                          config.TOP_DOWN_PYRAMID_SIZE, config.RPN_CONV_SIZE)
    layer_outputs = [rpn([p]) for p in rpn_feature_maps]
    names = ["rpn_class_logits", "rpn_class", "rpn_bbox"]
    rpn_outputs = [KL.Concatenate(axis=1, name=n)(list(o)) for o, n in zip(zip(*layer_outputs), names)]
    return rpn_feature_maps, mrcnn_feature_maps, rpn_outputs


def fpn_classifier_graph(rois, feature_maps, image_meta, pool_size, num_classes, train_bn=True,
                         fc_layers_size=1024):
    """Classifier and box-regression heads on the pyramid.

    rois: [B, N, 4] normalised. Returns mrcnn_class_logits [B, N, C], mrcnn_probs [B, N, C],
    mrcnn_bbox [B, N, C, 4] (dy, dx, log(dh), log(dw)), all float32.
    """
    x = PyramidROIAlign([pool_size, pool_size], name="roi_align_classifier")([rois, image_meta] + feature_maps)
    x = TimeDistributed(KL.Conv2D(fc_layers_size, (pool_size, pool_size), padding="valid"),
                        name="mrcnn_class_conv1")(x)
    x = TimeDistributed(BatchNorm(), name="mrcnn_class_bn1")(x, training=train_bn)
    x = KL.Activation("relu")(x)
    x = TimeDistributed(KL.Conv2D(fc_layers_size, (1, 1)), name="mrcnn_class_conv2")(x)
    x = TimeDistributed(BatchNorm(), name="mrcnn_class_bn2")(x, training=train_bn)
    x = KL.Activation("relu")(x)
    shared = KL.Reshape((-1, fc_layers_size), name="pool_squeeze")(x)
    mrcnn_class_logits = TimeDistributed(KL.Dense(num_classes), name="mrcnn_class_logits")(shared)
    mrcnn_probs = TimeDistributed(KL.Activation("softmax"), name="mrcnn_class")(mrcnn_class_logits)
    x = TimeDistributed(KL.Dense(num_classes * 4, activation="linear"), name="mrcnn_bbox_fc")(shared)
    mrcnn_bbox = KL.Reshape((-1, num_classes, 4), name="mrcnn_bbox")(x)
    return mrcnn_class_logits, mrcnn_probs, mrcnn_bbox


def build_fpn_mask_graph(rois, feature_maps, image_meta, pool_size, num_classes, train_bn=True,
                         conv_size=256):
    """Mask head: rois [B, N, 4] normalised -> float32 [B, N, 2*pool, 2*pool, C] sigmoid masks."""
    x = PyramidROIAlign([pool_size, pool_size], name="roi_align_mask")([rois, image_meta] + feature_maps)
    for i in range(1, 5):
        x = TimeDistributed(KL.Conv2D(conv_size, (3, 3), padding="same"), name=f"mrcnn_mask_conv{i}")(x)
        x = TimeDistributed(BatchNorm(), name=f"mrcnn_mask_bn{i}")(x, training=train_bn)
        x = KL.Activation("relu")(x)
    x = TimeDistributed(KL.Conv2DTranspose(conv_size, (2, 2), strides=2, activation="relu"),
                        name="mrcnn_mask_deconv")(x)
    return TimeDistributed(KL.Conv2D(num_classes, (1, 1), strides=1, activation="sigmoid"),
                           name="mrcnn_mask")(x)


MASK_HEAD_LAYERS = ["mrcnn_mask_conv1", "mrcnn_mask_bn1", "mrcnn_mask_conv2", "mrcnn_mask_bn2",
                    "mrcnn_mask_conv3", "mrcnn_mask_bn3", "mrcnn_mask_conv4", "mrcnn_mask_bn4",
                    "mrcnn_mask_deconv", "mrcnn_mask"]


def mask_head_on_rois(keras_model, pooled):
    """The mask head's layers on pooled ROIs [n, 14, 14, D] -> [n, 28, 28, C] sigmoid masks."""
    x = pooled
    for name in MASK_HEAD_LAYERS:
        inner = keras_model.get_layer(name).layer
        if isinstance(inner, KL.BatchNormalization):
            x = tf.nn.relu(inner(x, training=False))
        else:
            x = inner(x)
    return x


############################################################
#  MaskRCNN
############################################################

class MaskRCNN:
    """matterport's MaskRCNN: builds the Keras model and runs detection/training.

    mode: "inference" or "training"; config: a `Config`; model_dir: where training logs
    and checkpoints go (one `<name><YYYYMMDDTHHMM>[-k]` folder per run).
    """

    def __init__(self, mode, config, model_dir):
        assert mode in ["training", "inference"]
        self.mode = mode
        self.config = config
        self.model_dir = model_dir
        self.epoch = 0
        self._anchor_cache = {}
        self._compiled = {}
        self.set_log_dir()
        self.keras_model = self.build(mode=mode, config=config)

    # ------------------------------------------------------------ graph

    def build(self, mode, config):
        """Build the Keras model of `mode`; training is delegated to `mrcnn.training`."""
        if mode == "training":
            from mrcnn import training
            return training.build_training_model(self, config)

        input_image = KL.Input(shape=[None, None, config.IMAGE_SHAPE[2]], name="input_image")
        input_image_meta = KL.Input(shape=[config.IMAGE_META_SIZE], name="input_image_meta")
        input_anchors = KL.Input(shape=[None, 4], name="input_anchors")

        rpn_feature_maps, mrcnn_feature_maps, (rpn_class_logits, rpn_class, rpn_bbox) = \
            build_backbone_fpn_rpn(input_image, config)
        rpn_rois = ProposalLayer(proposal_count=config.POST_NMS_ROIS_INFERENCE,
                                 nms_threshold=config.RPN_NMS_THRESHOLD, name="ROI",
                                 config=config)([rpn_class, rpn_bbox, input_anchors])
        mrcnn_class_logits, mrcnn_class, mrcnn_bbox = fpn_classifier_graph(
            rpn_rois, mrcnn_feature_maps, input_image_meta, config.POOL_SIZE, config.NUM_CLASSES,
            train_bn=config.TRAIN_BN, fc_layers_size=config.FPN_CLASSIF_FC_LAYERS_SIZE)
        detections = DetectionLayer(config, name="mrcnn_detection")(
            [rpn_rois, mrcnn_class, mrcnn_bbox, input_image_meta])
        detection_boxes = SliceBoxes(name="detection_boxes")(detections)
        mrcnn_mask = build_fpn_mask_graph(detection_boxes, mrcnn_feature_maps, input_image_meta,
                                          config.MASK_POOL_SIZE, config.NUM_CLASSES,
                                          train_bn=config.TRAIN_BN, conv_size=config.MASK_HEAD_CONV_SIZE)
        inputs = [input_image, input_image_meta, input_anchors]
        model = keras.Model(inputs, [detections, mrcnn_class, mrcnn_bbox, mrcnn_mask,
                                     rpn_rois, rpn_class, rpn_bbox], name="mask_rcnn")
        # Everything up to the detections, plus P2..P5 for the survivors-only mask head.
        self._core = keras.Model(inputs, [detections] + mrcnn_feature_maps, name="mask_rcnn_core")
        return model

    # ------------------------------------------------------------ weights & logs

    def load_weights(self, filepath, by_name=False, exclude=None):
        """Load a Keras-2-layout h5 (matterport's files or our checkpoints) by layer name.

        by_name=False: every weighted layer of the model must be in the file.
        by_name=True: layers missing from the file keep their values.
        exclude: layer names to skip (implies by_name=True), e.g. the class-specific
        heads ["mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask"].
        Raises weights.WeightsError with the layer, expected and found shape on a mismatch.
        """
        if exclude:
            by_name = True
        weightslib.load_weights(self.keras_model, filepath, exclude=exclude, require_all=not by_name)
        self.set_log_dir(filepath)

    def save_weights(self, filepath):
        """Write all weights in the Keras-2 h5 layout that load_weights reads."""
        weightslib.save_weights(self.keras_model, filepath)

    def get_imagenet_weights(self):
        raise NotImplementedError(
            "ImageNet ResNet-50 weights are not bundled (no downloads at run time); "
            "start from mask_rcnn_coco.h5 with exclude=[...] or from scratch.")

    def set_log_dir(self, model_path=None):
        """Set log_dir and checkpoint_path; a checkpoint path `.../<name>YYYYMMDDTHHMM[-k]/
        mask_rcnn_<name>_<epoch>.h5` resumes its folder and epoch count. Otherwise a new run:
        `<model_dir>/<name>YYYYMMDDTHHMM` now, which `make_log_dir` may still rename."""
        self.epoch = 0
        now = datetime.datetime.now()
        suffix = None
        if model_path:
            regex = r".*[/\\][\w-]+(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(-\d+)?[/\\]mask\_rcnn\_[\w-]+(\d{4})\.h5"
            m = re.match(regex, str(model_path))
            if m:
                now = datetime.datetime(int(m.group(1)), int(m.group(2)), int(m.group(3)),
                                        int(m.group(4)), int(m.group(5)))
                suffix = m.group(6) or ""
                # The file's epoch is 1-based; Keras counts from 0, so training resumes at it.
                self.epoch = int(m.group(7))
        self._log_dir_made = suffix is not None  # a resumed run continues in its folder
        self._set_log_dir("{}{:%Y%m%dT%H%M}".format((self.config.NAME or "").lower(), now) + (suffix or ""))

    def _set_log_dir(self, folder):
        name = (self.config.NAME or "").lower()
        self.log_dir = os.path.join(self.model_dir, folder)
        self.checkpoint_path = os.path.join(self.log_dir, "mask_rcnn_{}_*epoch*.h5".format(name))
        self.checkpoint_path = self.checkpoint_path.replace("*epoch*", "{epoch:04d}")

    def make_log_dir(self):
        """Create log_dir (train calls it). A new run never shares a folder: when another run
        started in the same minute has it already, this one takes `<name>YYYYMMDDTHHMM-2`
        (-3, ...), claimed atomically. A resumed run, or this run's next train call, keeps it."""
        if self._log_dir_made:
            os.makedirs(self.log_dir, exist_ok=True)
            return
        folder, k = os.path.basename(self.log_dir), 1
        while True:
            try:
                os.makedirs(self.log_dir)
                break
            except FileExistsError:
                k += 1
                self._set_log_dir(f"{folder}-{k}")
        self._log_dir_made = True

    def find_last(self):
        """Path of the newest checkpoint under model_dir: the last `mask_rcnn*.h5` of the newest
        `<name>*` run folder that holds one (see `find_last_checkpoint`)."""
        key = (self.config.NAME or "").lower()
        path = utils.find_last_checkpoint(self.model_dir, key)
        if path is None:
            raise FileNotFoundError(f"Could not find weight files of a '{key}' run under {self.model_dir}")
        return path

    # ------------------------------------------------------------ training (mrcnn.training)

    def compile(self, learning_rate, momentum):
        from mrcnn import training
        return training.compile(self, learning_rate, momentum)

    def set_trainable(self, layer_regex, keras_model=None, indent=0, verbose=1):
        from mrcnn import training
        return training.set_trainable(self, layer_regex, keras_model=keras_model, indent=indent,
                                      verbose=verbose)

    def train(self, train_dataset, val_dataset, learning_rate, epochs, layers, augmentation=None,
              custom_callbacks=None, no_augmentation_sources=None, **options):
        """matterport's train; options: `mrcnn.training.train`'s seed, workers, verbose, histograms."""
        from mrcnn import training
        return training.train(self, train_dataset, val_dataset, learning_rate, epochs, layers,
                              augmentation=augmentation, custom_callbacks=custom_callbacks,
                              no_augmentation_sources=no_augmentation_sources, **options)

    def get_trainable_layers(self):
        """Layers with weights, looking inside TimeDistributed wrappers and the rpn_model."""
        layers = []
        for layer in self.keras_model.layers:
            if isinstance(layer, keras.Model):
                layers.extend(sub for sub in layer.layers if sub.weights)
            elif layer.weights:
                layers.append(layer)
        return layers

    # ------------------------------------------------------------ inference

    def mold_inputs(self, images):
        """uint8 RGB images -> (molded float32 [N, H, W, 3], image_metas float64 [N, META],
        windows int32 [N, 4]) as the model expects them."""
        molded_images, image_metas, windows = [], [], []
        for image in images:
            molded_image, window, scale, padding, crop = utils.resize_image(
                image, min_dim=self.config.IMAGE_MIN_DIM, min_scale=self.config.IMAGE_MIN_SCALE,
                max_dim=self.config.IMAGE_MAX_DIM, mode=self.config.IMAGE_RESIZE_MODE)
            molded_image = mold_image(molded_image, self.config)
            image_meta = compose_image_meta(0, image.shape, molded_image.shape, window, scale,
                                            np.zeros([self.config.NUM_CLASSES], dtype=np.int32))
            molded_images.append(molded_image)
            windows.append(window)
            image_metas.append(image_meta)
        return np.stack(molded_images), np.stack(image_metas), np.array(windows, np.int32)

    def unmold_detections(self, detections, mrcnn_mask, original_image_shape, image_shape, window):
        """One image's raw outputs -> matterport's result arrays.

        detections: [N_slots, 6] normalised (y1, x1, y2, x2, class_id, score), zero rows
        after the last detection. mrcnn_mask: [N_slots, 28, 28, C] (all classes) or
        [n, 28, 28] (each detection's own class, n >= valid rows). window: (y1, x1, y2, x2)
        of the image in the molded image, pixels.
        Returns boxes int32 [N, 4] original pixels, class_ids int32 [N], scores float32 [N],
        masks bool [H, W, N] (float64 [H, W, 0] when N == 0).
        """
        boxes, class_ids, scores, masks = self.unmold_boxes(
            detections, mrcnn_mask, original_image_shape, image_shape, window)
        full_masks = [utils.unmold_mask(masks[i], boxes[i], original_image_shape) for i in range(len(boxes))]
        full_masks = (np.stack(full_masks, axis=-1) if full_masks
                      else np.empty(tuple(original_image_shape[:2]) + (0,)))
        return boxes, class_ids, scores, full_masks

    @staticmethod
    def unmold_boxes(detections, mrcnn_mask, original_image_shape, image_shape, window):
        """unmold_detections without pasting: (boxes int32 [N, 4], class_ids, scores, masks28 [N, 28, 28])."""
        zero_ix = np.where(detections[:, 4] == 0)[0]
        n = zero_ix[0] if zero_ix.shape[0] > 0 else detections.shape[0]
        boxes = detections[:n, :4]
        class_ids = detections[:n, 4].astype(np.int32)
        scores = detections[:n, 5].astype(np.float32)
        if mrcnn_mask.ndim == 4:
            masks = mrcnn_mask[np.arange(n), :, :, class_ids]
        else:
            masks = mrcnn_mask[:n]
        wy1, wx1, wy2, wx2 = utils.norm_boxes(np.asarray(window), image_shape[:2])
        wh, ww = wy2 - wy1, wx2 - wx1
        boxes = np.divide(boxes - np.array([wy1, wx1, wy1, wx1]), np.array([wh, ww, wh, ww]))
        boxes = utils.denorm_boxes(boxes, original_image_shape[:2]).astype(np.int32)
        keep = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) > 0
        return boxes[keep], class_ids[keep], scores[keep], masks[keep]

    def get_anchors(self, image_shape):
        """Normalised pyramid anchors float32 [A, 4] for a molded image shape (cached)."""
        key = tuple(int(s) for s in image_shape[:2])
        if key not in self._anchor_cache:
            backbone_shapes = compute_backbone_shapes(self.config, image_shape)
            a = utils.generate_pyramid_anchors(
                self.config.RPN_ANCHOR_SCALES, self.config.RPN_ANCHOR_RATIOS, backbone_shapes,
                self.config.BACKBONE_STRIDES, self.config.RPN_ANCHOR_STRIDE)
            self.anchors = a  # pixel anchors, as matterport keeps them
            self._anchor_cache[key] = utils.norm_boxes(a, image_shape[:2]).astype(np.float32)
        return self._anchor_cache[key]

    def survivor_masks(self, detections, metas, feature_maps):
        """Mask head on the surviving detections only (graph code).

        detections: [B, N, 6] from DetectionLayer; metas: [B, META]; feature_maps: [P2..P5].
        Returns float32 [n, 28, 28]: each survivor's mask of its own class, in row-major
        (image, slot) order, n = number of rows with class_id > 0.
        """
        pool = (self.config.MASK_POOL_SIZE, self.config.MASK_POOL_SIZE)
        idx = tf.where(detections[..., 4] > 0)
        boxes = tf.gather_nd(detections[..., :4], idx)
        class_ids = tf.cast(tf.gather_nd(detections[..., 4], idx), tf.int32)
        image_area = metas[0, 4] * metas[0, 5]

        def head():
            pooled = pyramid_roi_align(boxes, tf.cast(idx[:, 0], tf.int32), image_area, feature_maps, pool)
            masks = mask_head_on_rois(self.keras_model, pooled)
            return tf.gather(tf.transpose(masks, [0, 3, 1, 2]), class_ids, batch_dims=1)

        # TF's CPU convolutions mishandle an empty batch, so skip the head when nothing survived.
        return tf.cond(tf.size(class_ids) > 0, head,
                       lambda: tf.zeros([0, 2 * pool[0], 2 * pool[1]], tf.float32))

    def compiled_inference(self, batch_size, height, width):
        """The compiled function for one (batch, height, width), anchors built in:
        f(molded [B, H, W, 3] float32, metas [B, META] float32)
        -> (detections float32 [B, DETECTION_MAX_INSTANCES, 6], masks float32 [n, 28, 28]
        as `survivor_masks` returns them)."""
        key = (int(batch_size), int(height), int(width))
        if key not in self._compiled:
            core = self._core
            anchors = self.get_anchors((height, width))
            anchors = tf.constant(np.broadcast_to(anchors, (batch_size,) + anchors.shape))
            spec = [tf.TensorSpec([batch_size, height, width, self.config.IMAGE_SHAPE[2]], tf.float32),
                    tf.TensorSpec([batch_size, self.config.IMAGE_META_SIZE], tf.float32)]

            @tf.function(input_signature=spec, reduce_retracing=False)
            def infer(images, metas):
                detections, *feature_maps = core([images, metas, anchors], training=False)
                return detections, self.survivor_masks(detections, metas, feature_maps)

            self._compiled[key] = infer
        return self._compiled[key]

    def infer_molded(self, molded_images, image_metas):
        """Run the compiled function on a list of molded images in BATCH_SIZE chunks, padding
        the last chunk. Returns [(detections [100, 6], masks [n, 28, 28])] per image."""
        batch = self.config.BATCH_SIZE
        shape = molded_images[0].shape
        infer = self.compiled_inference(batch, shape[0], shape[1])
        out = []
        for start in range(0, len(molded_images), batch):
            imgs = molded_images[start:start + batch]
            metas = image_metas[start:start + batch]
            real = len(imgs)
            if real < batch:
                imgs = np.concatenate([imgs, np.repeat(imgs[-1:], batch - real, axis=0)])
                metas = np.concatenate([metas, np.repeat(metas[-1:], batch - real, axis=0)])
            det, masks = infer(tf.constant(imgs, tf.float32), tf.constant(metas, tf.float32))
            det, masks = det.numpy(), masks.numpy()
            counts = (det[..., 4] > 0).sum(axis=1)
            splits = np.split(masks, np.cumsum(counts)[:-1])
            out.extend(zip(det[:real], splits[:real]))
        return out

    def detect(self, images, verbose=0):
        """Detect instances in any number of images (uint8 RGB [H, W, 3]).

        Returns one dict per image: rois int32 [N, (y1, x1, y2, x2)] pixels, class_ids
        int32 [N], scores float32 [N] descending, masks bool [H, W, N].
        """
        assert self.mode == "inference", "Create model in inference mode."
        if len(images) == 0:
            return []
        if verbose:
            log("Processing {} images".format(len(images)))
            for image in images:
                log("image", image)
        molded_images, image_metas, windows = self.mold_inputs(images)
        if len({m.shape for m in molded_images}) != 1:
            raise ValueError("After resizing, all images must have the same size. "
                             "Check IMAGE_RESIZE_MODE and image sizes.")
        if verbose:
            log("molded_images", molded_images)
            log("image_metas", image_metas)
        return self._results(self.infer_molded(molded_images, image_metas), images, molded_images, windows)

    def detect_molded(self, molded_images, image_metas, verbose=0):
        """Detect on already molded images (float32 [N, H, W, 3]) with their metas; boxes are
        reported in molded-image pixels."""
        assert self.mode == "inference", "Create model in inference mode."
        windows = [(0, 0, m.shape[0], m.shape[1]) for m in molded_images]
        images = [np.zeros(m.shape, np.uint8) for m in molded_images]
        return self._results(self.infer_molded(np.asarray(molded_images), np.asarray(image_metas)),
                             images, molded_images, windows)

    def _results(self, raw, images, molded_images, windows):
        results = []
        for i, (det, masks) in enumerate(raw):
            rois, class_ids, scores, full_masks = self.unmold_detections(
                det, masks, images[i].shape, molded_images[i].shape, windows[i])
            results.append({"rois": rois, "class_ids": class_ids, "scores": scores, "masks": full_masks})
        return results

    def run_graph(self, images, outputs, image_metas=None):
        """Values of named intermediate tensors for a batch of images.

        outputs: [(name, KerasTensor)] e.g. [("proposals", model.keras_model.get_layer("ROI").output)].
        Returns an OrderedDict name -> numpy array (for the first len(images) images).
        """
        from collections import OrderedDict
        model = self.keras_model
        sub = keras.Model(model.inputs, [o for _, o in outputs])
        if image_metas is None:
            molded_images, image_metas, _ = self.mold_inputs(images)
        else:
            molded_images = images
        anchors = self.get_anchors(molded_images[0].shape)
        anchors = np.broadcast_to(anchors, (len(molded_images),) + anchors.shape)
        values = sub([tf.constant(molded_images, tf.float32), tf.constant(image_metas, tf.float32),
                      tf.constant(anchors)], training=False)
        if not isinstance(values, (list, tuple)):
            values = [values]
        result = OrderedDict((name, np.asarray(v)) for (name, _), v in zip(outputs, values))
        for name, value in result.items():
            log(name, value)
        return result

    def profile_parts(self, images, repeats=3):
        """Seconds per batch spent in each part of inference, for one batch of images.

        Each part runs on its own, compiled, on the previous part's outputs (median of
        `repeats` runs after a warm-up). Returns {"mold", "backbone", "fpn", "rpn",
        "proposals", "roi_align", "classifier", "detection", "mask_head", "post", "total"}
        -> seconds, and "detections" -> mean detections per image.
        """
        from mrcnn import profile
        return profile.profile_parts(self, images, repeats)
