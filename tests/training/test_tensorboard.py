"""TensorBoard logs of a short real training run, read back with TensorBoard's own event reader
(`plugin_event_accumulator`, what `tensorboard --logdir` uses): the losses and the learning
rate per step and per epoch (train and validation) as the scalars dashboard expects them,
equal to what Keras reported, and, with histograms=True, one weight histogram per trainable
weight per epoch."""
import glob
import os

import numpy as np
import pytest

import keras
from tensorboard.backend.event_processing import plugin_event_accumulator as accumulator
from tensorboard.util import tensor_util

from mrcnn import model as modellib
from tests.training.tiny import TinyTrainConfig
from vidseg.samples.shapes import ShapesDataset

pytestmark = pytest.mark.slow

LOSSES = ["loss", "rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss", "mrcnn_bbox_loss", "mrcnn_mask_loss"]
EPOCHS, STEPS = 2, 3


class TinyConfig(TinyTrainConfig):
    NAME = "tb"
    STEPS_PER_EPOCH = STEPS
    VALIDATION_STEPS = 1


class Record(keras.callbacks.Callback):
    """What Keras hands the callbacks: per-step logs and per-epoch logs."""

    def __init__(self):
        super().__init__()
        self.steps, self.epochs = [], []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append({k: float(v) for k, v in logs.items()})

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append({k: float(v) for k, v in logs.items()})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """EPOCHS x STEPS steps of the heads from scratch with weight histograms on; returns
    (log_dir, Record, trainable weight names as in the h5 files, without ':0')."""
    keras.utils.set_random_seed(0)
    train, val = ShapesDataset.generate(12, 64, 64, seed=5), ShapesDataset.generate(4, 64, 64, seed=6)
    model = modellib.MaskRCNN("training", TinyConfig(), str(tmp_path_factory.mktemp("logs")))
    record = Record()
    model.train(train, val, TinyConfig.LEARNING_RATE, EPOCHS, "heads", custom_callbacks=[record], histograms=True)
    from mrcnn.weights import layer_weights

    trainable = [name.removesuffix(":0") for layer in model.keras_model.layers if layer.weights
                 for name, var in layer_weights(layer) if var.trainable]
    assert len(trainable) == len(model.keras_model.trainable_weights)
    return model.log_dir, record, trainable


def read(folder):
    """TensorBoard's reader on one run folder: {tag: ([steps], [numpy values], plugin name)}."""
    assert glob.glob(os.path.join(folder, "events.out.tfevents.*")), f"no event file in {folder}"
    acc = accumulator.EventAccumulator(folder, size_guidance={accumulator.TENSORS: 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["tensors"]:
        events = acc.Tensors(tag)
        out[tag] = ([e.step for e in events], [tensor_util.make_ndarray(e.tensor_proto) for e in events],
                    acc.SummaryMetadata(tag).plugin_data.plugin_name)
    return out


def test_losses_and_learning_rate_per_step(run):
    log_dir, record, _ = run
    tags = read(os.path.join(log_dir, "train"))
    assert len(record.steps) == EPOCHS * STEPS
    for name in LOSSES + ["learning_rate"]:
        steps, values, plugin = tags["batch_" + name]
        assert plugin == "scalars" and all(v.shape == () for v in values)   # the scalars dashboard's format
        assert steps == list(range(EPOCHS * STEPS))                         # steps continue across epochs
        np.testing.assert_allclose([float(v) for v in values], [s[name] for s in record.steps], rtol=1e-6)
    assert all(float(v) == pytest.approx(TinyConfig.LEARNING_RATE) for v in tags["batch_learning_rate"][1])


def test_losses_per_epoch_train_and_validation(run):
    log_dir, record, _ = run
    train, val = read(os.path.join(log_dir, "train")), read(os.path.join(log_dir, "validation"))
    for name in LOSSES:
        steps, values, plugin = train["epoch_" + name]
        assert plugin == "scalars" and steps == list(range(EPOCHS))
        np.testing.assert_allclose([float(v) for v in values], [e[name] for e in record.epochs], rtol=1e-6)
        steps, values, plugin = val["epoch_" + name]
        assert plugin == "scalars" and steps == list(range(EPOCHS))
        np.testing.assert_allclose([float(v) for v in values], [e["val_" + name] for e in record.epochs], rtol=1e-6)
        assert all(np.isfinite(float(v)) for v in values)


def test_weight_histograms_per_epoch(run):
    log_dir, _, trainable = run
    tags = read(os.path.join(log_dir, "train"))
    histograms = {t: v for t, v in tags.items() if v[2] == "histograms"}
    assert sorted(histograms) == sorted("weights/" + name for name in trainable)
    assert not [n for n in trainable if n.startswith(("conv1", "res", "bn"))]   # "heads": the backbone is frozen
    for tag, (steps, values, _) in histograms.items():
        assert steps == list(range(EPOCHS))
        for buckets in values:   # rows (left edge, right edge, count), as TensorBoard's histogram plugin reads them
            assert buckets.ndim == 2 and buckets.shape[1] == 3 and np.all(buckets[:, 0] <= buckets[:, 1])
    counts = histograms["weights/mrcnn_class_logits/kernel"][1][0][:, 2]
    assert counts.sum() == 64 * 4                                   # every value of the [64, 4] kernel counted


def test_vidseg_train_tensorboard_says_where_and_logs_histograms(tmp_path):
    from tests.conftest import run_vidseg

    r = run_vidseg("train", "--kind", "shapes", "--weights", "none", "--epochs", "1", "--steps", "1",
                   "--tensorboard", "--model-dir", tmp_path / "logs", timeout=900)
    assert r.returncode == 0, r.stderr
    runs = glob.glob(str(tmp_path / "logs" / "shapes*"))
    assert len(runs) == 1
    assert f"go to {runs[0]}" in r.stdout and f"tensorboard --logdir {tmp_path / 'logs'}" in r.stdout
    tags = read(os.path.join(runs[0], "train"))
    assert "batch_loss" in tags and "epoch_learning_rate" in tags
    assert tags["weights/mrcnn_mask/kernel"][2] == "histograms"
