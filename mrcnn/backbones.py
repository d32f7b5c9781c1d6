"""Backbones producing the C2..C5 feature maps the FPN consumes.

ResNet-50/101 are matterport's Caffe-style ResNets with its exact layer names (so
`mask_rcnn_coco.h5` loads); "resnet18" is a small basic-block ResNet with a width
knob for CPU use. All take a float32 image [B, H, W, 3] (mean-subtracted RGB) and
return float32 maps at strides 4, 8, 16, 32.
"""
import math

import numpy as np
from keras import layers as KL


class BatchNorm(KL.BatchNormalization):
    """Keras BatchNormalization (epsilon 1e-3, momentum 0.99), matterport's name.

    Call it with `training=config.TRAIN_BN`: False (the default for fine-tuning with
    small batches) uses the moving statistics even while training.
    """

    def call(self, inputs, training=None, mask=None):
        return super().call(inputs, training=training)


def identity_block(input_tensor, kernel_size, filters, stage, block, use_bias=True, train_bn=True):
    """Bottleneck block without a shortcut conv: 1x1 -> kxk -> 1x1, each + BN, add input, relu.

    filters: (f1, f2, f3); the output has f3 channels, the same as the input.
    """
    nb_filter1, nb_filter2, nb_filter3 = filters
    conv_name_base = "res" + str(stage) + block + "_branch"
    bn_name_base = "bn" + str(stage) + block + "_branch"

    x = KL.Conv2D(nb_filter1, (1, 1), name=conv_name_base + "2a", use_bias=use_bias)(input_tensor)
    x = BatchNorm(name=bn_name_base + "2a")(x, training=train_bn)
    x = KL.Activation("relu")(x)
    x = KL.Conv2D(nb_filter2, (kernel_size, kernel_size), padding="same",
                  name=conv_name_base + "2b", use_bias=use_bias)(x)
    x = BatchNorm(name=bn_name_base + "2b")(x, training=train_bn)
    x = KL.Activation("relu")(x)
    x = KL.Conv2D(nb_filter3, (1, 1), name=conv_name_base + "2c", use_bias=use_bias)(x)
    x = BatchNorm(name=bn_name_base + "2c")(x, training=train_bn)
    x = KL.Add()([x, input_tensor])
    return KL.Activation("relu", name="res" + str(stage) + block + "_out")(x)


def conv_block(input_tensor, kernel_size, filters, stage, block, strides=(2, 2), use_bias=True,
               train_bn=True):
    """Bottleneck block with a 1x1 shortcut conv; `strides` is applied by the first 1x1
    conv and the shortcut (Caffe ResNet), so the output is [B, H/s, W/s, f3]."""
    nb_filter1, nb_filter2, nb_filter3 = filters
    conv_name_base = "res" + str(stage) + block + "_branch"
    bn_name_base = "bn" + str(stage) + block + "_branch"

    x = KL.Conv2D(nb_filter1, (1, 1), strides=strides, name=conv_name_base + "2a",
                  use_bias=use_bias)(input_tensor)
    x = BatchNorm(name=bn_name_base + "2a")(x, training=train_bn)
    x = KL.Activation("relu")(x)
    x = KL.Conv2D(nb_filter2, (kernel_size, kernel_size), padding="same",
                  name=conv_name_base + "2b", use_bias=use_bias)(x)
    x = BatchNorm(name=bn_name_base + "2b")(x, training=train_bn)
    x = KL.Activation("relu")(x)
    x = KL.Conv2D(nb_filter3, (1, 1), name=conv_name_base + "2c", use_bias=use_bias)(x)
    x = BatchNorm(name=bn_name_base + "2c")(x, training=train_bn)

    shortcut = KL.Conv2D(nb_filter3, (1, 1), strides=strides, name=conv_name_base + "1",
                         use_bias=use_bias)(input_tensor)
    shortcut = BatchNorm(name=bn_name_base + "1")(shortcut, training=train_bn)
    x = KL.Add()([x, shortcut])
    return KL.Activation("relu", name="res" + str(stage) + block + "_out")(x)


def _stem(input_image, filters, train_bn):
    """ZeroPadding(3) -> 7x7/2 conv `conv1` -> BN `bn_conv1` -> relu -> 3x3/2 max pool: stride 4."""
    x = KL.ZeroPadding2D((3, 3))(input_image)
    x = KL.Conv2D(filters, (7, 7), strides=(2, 2), name="conv1", use_bias=True)(x)
    x = BatchNorm(name="bn_conv1")(x, training=train_bn)
    x = KL.Activation("relu")(x)
    return KL.MaxPooling2D((3, 3), strides=(2, 2), padding="same")(x)


def resnet_graph(input_image, architecture, stage5=False, train_bn=True):
    """matterport's ResNet-50/101. Returns [C1, C2, C3, C4, C5] (C5 None unless stage5)."""
    assert architecture in ["resnet50", "resnet101"]
    C1 = x = _stem(input_image, 64, train_bn)
    x = conv_block(x, 3, [64, 64, 256], stage=2, block="a", strides=(1, 1), train_bn=train_bn)
    x = identity_block(x, 3, [64, 64, 256], stage=2, block="b", train_bn=train_bn)
    C2 = x = identity_block(x, 3, [64, 64, 256], stage=2, block="c", train_bn=train_bn)
    x = conv_block(x, 3, [128, 128, 512], stage=3, block="a", train_bn=train_bn)
    x = identity_block(x, 3, [128, 128, 512], stage=3, block="b", train_bn=train_bn)
    x = identity_block(x, 3, [128, 128, 512], stage=3, block="c", train_bn=train_bn)
    C3 = x = identity_block(x, 3, [128, 128, 512], stage=3, block="d", train_bn=train_bn)
    x = conv_block(x, 3, [256, 256, 1024], stage=4, block="a", train_bn=train_bn)
    block_count = {"resnet50": 5, "resnet101": 22}[architecture]
    for i in range(block_count):
        x = identity_block(x, 3, [256, 256, 1024], stage=4, block=chr(98 + i), train_bn=train_bn)
    C4 = x
    if stage5:
        x = conv_block(x, 3, [512, 512, 2048], stage=5, block="a", train_bn=train_bn)
        x = identity_block(x, 3, [512, 512, 2048], stage=5, block="b", train_bn=train_bn)
        C5 = identity_block(x, 3, [512, 512, 2048], stage=5, block="c", train_bn=train_bn)
    else:
        C5 = None
    return [C1, C2, C3, C4, C5]


def basic_block(input_tensor, filters, stage, block, strides=(1, 1), train_bn=True):
    """ResNet-18 basic block: 3x3 (stride) -> BN -> relu -> 3x3 -> BN, plus the input
    (through a 1x1 conv + BN when the stride or channel count changes), relu."""
    conv_name_base = "res" + str(stage) + block + "_branch"
    bn_name_base = "bn" + str(stage) + block + "_branch"
    x = KL.Conv2D(filters, (3, 3), strides=strides, padding="same", name=conv_name_base + "2a")(input_tensor)
    x = BatchNorm(name=bn_name_base + "2a")(x, training=train_bn)
    x = KL.Activation("relu")(x)
    x = KL.Conv2D(filters, (3, 3), padding="same", name=conv_name_base + "2b")(x)
    x = BatchNorm(name=bn_name_base + "2b")(x, training=train_bn)
    shortcut = input_tensor
    if tuple(strides) != (1, 1) or input_tensor.shape[-1] != filters:
        shortcut = KL.Conv2D(filters, (1, 1), strides=strides, name=conv_name_base + "1")(input_tensor)
        shortcut = BatchNorm(name=bn_name_base + "1")(shortcut, training=train_bn)
    x = KL.Add()([x, shortcut])
    return KL.Activation("relu", name="res" + str(stage) + block + "_out")(x)


def resnet18_graph(input_image, width=1.0, train_bn=True):
    """Small ResNet-18 (2 basic blocks per stage) with channels 64/128/256/512 x `width`.

    Returns [C1, C2, C3, C4, C5]; at width 0.5 it has ~2.8 M weights vs 42 M for ResNet-101.
    """
    ch = [max(8, int(round(c * width))) for c in (64, 128, 256, 512)]
    C1 = x = _stem(input_image, ch[0], train_bn)
    outputs = [C1]
    for stage, filters in zip((2, 3, 4, 5), ch):
        strides = (1, 1) if stage == 2 else (2, 2)
        x = basic_block(x, filters, stage, "a", strides=strides, train_bn=train_bn)
        x = basic_block(x, filters, stage, "b", train_bn=train_bn)
        outputs.append(x)
    return outputs


def build_backbone(input_image, config):
    """[C2, C3, C4, C5] for `config.BACKBONE` (name or callable(input_image, config))."""
    if callable(config.BACKBONE):
        return list(config.BACKBONE(input_image, config))
    if config.BACKBONE == "resnet18":
        _, C2, C3, C4, C5 = resnet18_graph(input_image, config.BACKBONE_WIDTH, config.TRAIN_BN)
    elif config.BACKBONE in ("resnet50", "resnet101"):
        _, C2, C3, C4, C5 = resnet_graph(input_image, config.BACKBONE, stage5=True, train_bn=config.TRAIN_BN)
    else:
        raise ValueError(f"unknown BACKBONE {config.BACKBONE!r}: use resnet18, resnet50, resnet101 or a callable")
    return [C2, C3, C4, C5]


def compute_backbone_shapes(config, image_shape):
    """[[ceil(H/s), ceil(W/s)] for s in BACKBONE_STRIDES] as int array [5, 2]."""
    if callable(config.BACKBONE):
        return config.COMPUTE_BACKBONE_SHAPE(image_shape)
    return np.array([[int(math.ceil(image_shape[0] / s)), int(math.ceil(image_shape[1] / s))]
                     for s in config.BACKBONE_STRIDES])
