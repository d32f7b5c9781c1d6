"""A short real training run on shapes (tiny config): losses, checkpoints, resume, freezing."""
import datetime
import glob
import json
import os
import re

import h5py
import numpy as np
import pytest

import keras

from mrcnn import model as modellib
from tests.training.tiny import TinyTrainConfig as TinyConfig
from vidseg.samples.shapes import ShapesDataset

pytestmark = pytest.mark.slow


class BatchLosses(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append({k: float(v) for k, v in logs.items()})


@pytest.fixture(scope="module")
def data():
    return ShapesDataset.generate(40, 64, 64, seed=3), ShapesDataset.generate(8, 64, 64, seed=4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data):
    """Two epochs of all layers from scratch."""
    keras.utils.set_random_seed(0)
    model_dir = str(tmp_path_factory.mktemp("logs"))
    model = modellib.MaskRCNN("training", TinyConfig(), model_dir)
    record = BatchLosses()
    model.train(data[0], data[1], TinyConfig.LEARNING_RATE, 2, "all", custom_callbacks=[record])
    return model, model_dir, record.losses


def test_losses_are_finite_and_decrease(trained):
    _, _, losses = trained
    assert len(losses) == 16
    names = ["loss", "rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss", "mrcnn_bbox_loss", "mrcnn_mask_loss"]
    for step in losses:
        assert all(np.isfinite(step[n]) for n in names)
        assert step["learning_rate"] == pytest.approx(TinyConfig.LEARNING_RATE)
    # Keras logs running means per epoch: compare the first epoch's end with the second's.
    assert losses[-1]["loss"] < losses[7]["loss"] < losses[0]["loss"] * 1.5
    assert losses[-1]["loss"] < 0.8 * losses[0]["loss"]


def test_frozen_batchnorm_keeps_its_statistics(trained):
    """TRAIN_BN = False (matterport's default): BatchNorm layers use and keep their moving
    statistics while the rest of the network trains."""
    model, _, _ = trained
    bn = model.keras_model.get_layer("bn_conv1")
    np.testing.assert_array_equal(bn.moving_mean.numpy(), 0)
    np.testing.assert_array_equal(bn.moving_variance.numpy(), 1)
    assert not np.array_equal(bn.gamma.numpy(), 1)  # gamma/beta do train


def test_checkpoints_and_logs_are_written(trained, data):
    model, model_dir, _ = trained
    run = os.path.dirname(model.find_last())
    assert re.fullmatch(r"tiny\d{8}T\d{4}", os.path.basename(run))
    assert sorted(os.listdir(run)) == ["mask_rcnn_tiny_0001.h5", "mask_rcnn_tiny_0001.json", "mask_rcnn_tiny_0002.h5",
                                       "mask_rcnn_tiny_0002.json", "train", "validation"]
    assert glob.glob(os.path.join(run, "train", "events.out.tfevents.*"))
    # an inference model loads the checkpoint: every weighted layer is in it
    class Infer(TinyConfig):
        IMAGES_PER_GPU = 1
    infer = modellib.MaskRCNN("inference", Infer(), model_dir)
    infer.load_weights(model.find_last(), by_name=False)
    out = infer.detect([ShapesDataset.generate(1, 64, 64, seed=9).load_image(0)])[0]
    assert out["masks"].shape[:2] == (64, 64)


def test_a_checkpoint_carries_its_training_config_and_class_names(trained, data):
    """The sidecar beside each checkpoint makes it usable as --weights of image/inspect/file:
    the frame model gets the trained input size, anchors and limits, and the class names."""
    from mrcnn.frame_model import MaskRCNNFrameModel

    model, _, _ = trained
    last = model.find_last()
    with open(last[:-len(".h5")] + ".json", encoding="utf8") as f:
        meta = json.load(f)
    assert meta["class_names"] == ["BG", "square", "circle", "triangle"] == data[0].class_names
    assert meta["config"]["IMAGE_MAX_DIM"] == 64 and meta["config"]["RPN_ANCHOR_SCALES"] == [8, 16, 32, 64, 128]
    frame_model = MaskRCNNFrameModel(weights=last)  # no class names given
    assert frame_model.class_names == data[0].class_names
    for field in ("IMAGE_MIN_DIM", "IMAGE_MAX_DIM", "PRE_NMS_LIMIT", "DETECTION_MIN_CONFIDENCE", "POOL_SIZE"):
        assert getattr(frame_model.config, field) == getattr(TinyConfig, field), field
    assert tuple(frame_model.config.RPN_ANCHOR_SCALES) == TinyConfig.RPN_ANCHOR_SCALES
    np.testing.assert_allclose(frame_model.config.MEAN_PIXEL, TinyConfig.MEAN_PIXEL)
    frame = data[1].load_image(0)
    assert frame_model([frame])[0].boxes.shape[1] == 4


def test_runs_started_in_the_same_minute_keep_their_own_checkpoints(tmp_path, data, monkeypatch):
    """Two runs of one minute: the second gets `<name>YYYYMMDDTHHMM-2`, the first's checkpoint
    stays; find_last is the second's; resuming it continues in its folder."""
    class Clock(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 11, 30, 20, 23)

    monkeypatch.setattr(modellib, "datetime", type("Module", (), {"datetime": Clock}))
    config = type("OneStep", (TinyConfig,), {"STEPS_PER_EPOCH": 1})()
    folders = []
    for seed in (5, 6):
        keras.utils.set_random_seed(seed)
        model = modellib.MaskRCNN("training", config, str(tmp_path))
        model.train(data[0], None, TinyConfig.LEARNING_RATE, 1, "heads", verbose=0)
        folders.append(os.path.dirname(model.find_last()))
    assert [os.path.basename(f) for f in folders] == ["tiny20261130T2023", "tiny20261130T2023-2"]
    first, second = (os.path.join(f, "mask_rcnn_tiny_0001.h5") for f in folders)
    assert os.path.isfile(first) and os.path.isfile(second)
    assert not np.array_equal(h5_kernel(first, "fpn_c5p5"), h5_kernel(second, "fpn_c5p5"))
    model.load_weights(second, by_name=True)
    assert model.epoch == 1 and model.log_dir == folders[1]
    model.train(data[0], None, TinyConfig.LEARNING_RATE, 2, "heads", verbose=0)
    assert model.find_last() == os.path.join(folders[1], "mask_rcnn_tiny_0002.h5")


def h5_kernel(path, layer):
    """The kernel of `layer` in a weights file in matterport's h5 layout."""
    with h5py.File(path, "r") as f:
        return np.array(f[layer][f"{layer}/kernel:0"])


def test_resume_from_last_continues_at_next_epoch(trained, data):
    first, model_dir, _ = trained
    model = modellib.MaskRCNN("training", TinyConfig(), model_dir)
    last = model.find_last()
    model.load_weights(last, by_name=True)
    assert model.epoch == 2
    # the checkpoint holds the weights the first run ended with
    for name in ("conv1", "fpn_p2", "mrcnn_class_logits", "mrcnn_mask", "rpn_model"):
        for a, b in zip(first.keras_model.get_layer(name).weights, model.keras_model.get_layer(name).weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)
    record = BatchLosses()
    model.train(data[0], None, TinyConfig.LEARNING_RATE, 3, "heads", custom_callbacks=[record])
    assert model.epoch == 3 and len(record.losses) == TinyConfig.STEPS_PER_EPOCH
    assert model.find_last() == os.path.join(os.path.dirname(last), "mask_rcnn_tiny_0003.h5")


def test_heads_training_leaves_backbone_unchanged(tmp_path, data):
    keras.utils.set_random_seed(1)
    model = modellib.MaskRCNN("training", TinyConfig(), str(tmp_path))
    km = model.keras_model
    backbone = [l for l in km.layers if re.match(r"(res|bn)\d|conv1$|bn_conv1$", l.name) and l.weights]
    heads = [km.get_layer(n) for n in ("mrcnn_class_logits", "mrcnn_mask", "fpn_c5p5")]
    assert backbone
    before = {l.name: [w.numpy() for w in l.weights] for l in backbone + heads}
    model.train(data[0], None, TinyConfig.LEARNING_RATE, 1, "heads")
    for layer in backbone:
        for old, new in zip(before[layer.name], layer.weights):
            np.testing.assert_array_equal(old, new.numpy(), err_msg=layer.name)
    for layer in heads:
        assert any(not np.array_equal(old, new.numpy()) for old, new in zip(before[layer.name], layer.weights))
    rpn = km.get_layer("rpn_model")
    assert all(l.trainable for l in rpn.layers if l.weights)


def test_set_trainable_groups():
    from mrcnn import training

    regex = training.LAYER_REGEX
    assert re.fullmatch(regex["heads"], "mrcnn_mask_conv1") and not re.fullmatch(regex["heads"], "res5a_branch2a")
    assert re.fullmatch(regex["4+"], "res4b_branch2a") and not re.fullmatch(regex["4+"], "res3a_branch2a")
    assert re.fullmatch(regex["3+"], "bn3a_branch2a") and not re.fullmatch(regex["3+"], "res2a_branch2a")
    assert re.fullmatch(regex["5+"], "fpn_p5") and not re.fullmatch(regex["5+"], "bn4a_branch1")
    assert re.fullmatch(regex["all"], "conv1")
