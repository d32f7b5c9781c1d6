"""The smallest trainable Mask R-CNN config the training tests share (64x64, ResNet-18 at width 0.25)."""
from mrcnn.config import Config


class TinyTrainConfig(Config):
    NAME = "tiny"
    NUM_CLASSES = 4
    IMAGES_PER_GPU = 2
    IMAGE_MIN_DIM = IMAGE_MAX_DIM = 64
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    BACKBONE = "resnet18"
    BACKBONE_WIDTH = 0.25
    TOP_DOWN_PYRAMID_SIZE = 32
    RPN_CONV_SIZE = 32
    MASK_HEAD_CONV_SIZE = 16
    FPN_CLASSIF_FC_LAYERS_SIZE = 64
    RPN_TRAIN_ANCHORS_PER_IMAGE = 64
    PRE_NMS_LIMIT = 500
    POST_NMS_ROIS_TRAINING = 64
    TRAIN_ROIS_PER_IMAGE = 16
    MAX_GT_INSTANCES = 5
    MINI_MASK_SHAPE = (16, 16)
    STEPS_PER_EPOCH = 8
    VALIDATION_STEPS = 2
    LEARNING_RATE = 0.01
