"""Mask R-CNN base configuration, field for field matterport's `mrcnn.config.Config`.

Subclass it and override class attributes (matterport's idiom)::

    class CocoConfig(Config):
        NAME = "coco"
        NUM_CLASSES = 81

Fields beyond matterport's (all default to matterport's behaviour):
    BACKBONE may also be "resnet18": a small CPU-friendly ResNet (basic blocks) whose
        channel counts are scaled by BACKBONE_WIDTH (1.0 = 64/128/256/512).
    RPN_CONV_SIZE: channels of the shared RPN 3x3 conv (matterport: 512).
    MASK_HEAD_CONV_SIZE: channels of the four mask-head convs and the deconv (matterport: 256).
Changing any of them changes weight shapes, so such models do not load matterport files.
"""
import numpy as np

# Settings an inference model needs beyond what the weight shapes say (input size, anchors,
# normalisation, proposal and detection limits): a training checkpoint's sidecar JSON carries
# them (see `inference_settings`, `mrcnn.frame_model`).
INFERENCE_FIELDS = ["IMAGE_RESIZE_MODE", "IMAGE_MIN_DIM", "IMAGE_MAX_DIM", "IMAGE_MIN_SCALE", "MEAN_PIXEL",
                    "BACKBONE_STRIDES", "RPN_ANCHOR_SCALES", "RPN_ANCHOR_RATIOS", "RPN_ANCHOR_STRIDE",
                    "RPN_NMS_THRESHOLD", "RPN_BBOX_STD_DEV", "PRE_NMS_LIMIT", "POST_NMS_ROIS_INFERENCE",
                    "BBOX_STD_DEV", "POOL_SIZE", "MASK_POOL_SIZE", "DETECTION_MAX_INSTANCES",
                    "DETECTION_MIN_CONFIDENCE", "DETECTION_NMS_THRESHOLD"]


class Config:
    """Base configuration. Derived values (BATCH_SIZE, IMAGE_SHAPE, IMAGE_META_SIZE) are
    computed in `__init__`, so change fields in a subclass, not on an instance."""

    NAME = None
    GPU_COUNT = 1
    IMAGES_PER_GPU = 2
    STEPS_PER_EPOCH = 1000
    VALIDATION_STEPS = 50

    # "resnet50", "resnet101", "resnet18" (small), or a callable
    # backbone(input_image, config) -> [C2, C3, C4, C5] with COMPUTE_BACKBONE_SHAPE set.
    BACKBONE = "resnet101"
    COMPUTE_BACKBONE_SHAPE = None
    BACKBONE_WIDTH = 1.0
    BACKBONE_STRIDES = [4, 8, 16, 32, 64]

    FPN_CLASSIF_FC_LAYERS_SIZE = 1024
    TOP_DOWN_PYRAMID_SIZE = 256
    RPN_CONV_SIZE = 512
    MASK_HEAD_CONV_SIZE = 256

    NUM_CLASSES = 1

    RPN_ANCHOR_SCALES = (32, 64, 128, 256, 512)
    RPN_ANCHOR_RATIOS = [0.5, 1, 2]
    RPN_ANCHOR_STRIDE = 1
    RPN_NMS_THRESHOLD = 0.7
    RPN_TRAIN_ANCHORS_PER_IMAGE = 256
    PRE_NMS_LIMIT = 6000
    POST_NMS_ROIS_TRAINING = 2000
    POST_NMS_ROIS_INFERENCE = 1000

    USE_MINI_MASK = True
    MINI_MASK_SHAPE = (56, 56)

    IMAGE_RESIZE_MODE = "square"
    IMAGE_MIN_DIM = 800
    IMAGE_MAX_DIM = 1024
    IMAGE_MIN_SCALE = 0
    IMAGE_CHANNEL_COUNT = 3
    MEAN_PIXEL = np.array([123.7, 116.8, 103.9])

    TRAIN_ROIS_PER_IMAGE = 200
    ROI_POSITIVE_RATIO = 0.33
    POOL_SIZE = 7
    MASK_POOL_SIZE = 14
    MASK_SHAPE = [28, 28]
    MAX_GT_INSTANCES = 100

    RPN_BBOX_STD_DEV = np.array([0.1, 0.1, 0.2, 0.2])
    BBOX_STD_DEV = np.array([0.1, 0.1, 0.2, 0.2])

    DETECTION_MAX_INSTANCES = 100
    DETECTION_MIN_CONFIDENCE = 0.7
    DETECTION_NMS_THRESHOLD = 0.3

    LEARNING_RATE = 0.001
    LEARNING_MOMENTUM = 0.9
    WEIGHT_DECAY = 0.0001
    LOSS_WEIGHTS = {
        "rpn_class_loss": 1.,
        "rpn_bbox_loss": 1.,
        "mrcnn_class_loss": 1.,
        "mrcnn_bbox_loss": 1.,
        "mrcnn_mask_loss": 1.,
    }
    USE_RPN_ROIS = True
    TRAIN_BN = False
    GRADIENT_CLIP_NORM = 5.0

    def __init__(self):
        self.BATCH_SIZE = self.IMAGES_PER_GPU * self.GPU_COUNT
        if self.IMAGE_RESIZE_MODE == "crop":
            self.IMAGE_SHAPE = np.array([self.IMAGE_MIN_DIM, self.IMAGE_MIN_DIM, self.IMAGE_CHANNEL_COUNT])
        else:
            self.IMAGE_SHAPE = np.array([self.IMAGE_MAX_DIM, self.IMAGE_MAX_DIM, self.IMAGE_CHANNEL_COUNT])
        # image_id(1) + original_shape(3) + image_shape(3) + window(4) + scale(1) + active_class_ids
        self.IMAGE_META_SIZE = 1 + 3 + 3 + 4 + 1 + self.NUM_CLASSES

    def to_dict(self):
        """All upper-case, non-callable settings as {name: value}."""
        return {a: getattr(self, a) for a in sorted(dir(self))
                if not a.startswith("__") and a.isupper() and not callable(getattr(self, a))}

    def display(self):
        """Print every setting, sorted by name (matterport's format)."""
        print("\nConfigurations:")
        for a in dir(self):
            if not a.startswith("__") and not callable(getattr(self, a)):
                print("{:30} {}".format(a, getattr(self, a)))
        print("\n")


def inference_settings(config):
    """{field: value} of config's INFERENCE_FIELDS as JSON types (arrays and tuples become
    lists, numpy scalars Python numbers). "crop" resizing is for training only, so that mode
    is left out (inference then pads to a square)."""
    out = {}
    for k in INFERENCE_FIELDS:
        v = getattr(config, k)
        out[k] = np.asarray(v).tolist() if isinstance(v, (np.ndarray, tuple, list, np.generic)) else v
    if out["IMAGE_RESIZE_MODE"] == "crop":
        del out["IMAGE_RESIZE_MODE"]
    return out
