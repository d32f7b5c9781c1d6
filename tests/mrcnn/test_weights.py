"""Weights I/O: matterport's h5 layout (made by the SPEC's make_fake_coco_h5.py) loads by
name into the right variables; exclude; clear errors; our own checkpoints round-trip."""
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from mrcnn import model as modellib
from mrcnn import weights
from mrcnn.config import Config

DATA = Path(__file__).parent / "data"
HEADS = ["mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_mask"]


def build(backbone, num_classes=81):
    class C(Config):
        NAME = "coco"
        NUM_CLASSES = num_classes
        IMAGES_PER_GPU = 1
        BACKBONE = backbone
        IMAGE_MIN_DIM = IMAGE_MAX_DIM = 256
    return modellib.MaskRCNN("inference", C(), model_dir="unused")


def fake_file(path, manifest, layer_names=None):
    """make_fake_coco_h5.py MANIFEST OUT index [LAYER_NAMES]: tensor k (file order) holds k."""
    args = [sys.executable, str(DATA / "make_fake_coco_h5.py"), str(DATA / manifest), str(path), "index"]
    if layer_names:
        args.append(str(DATA / layer_names))
    subprocess.run(args, check=True, capture_output=True)
    return path


def expected_index(manifest, layer_names=None):
    """{(layer, position in layer): k} in the order make_fake_coco_h5.py writes."""
    entries = json.loads((DATA / manifest).read_text())
    order = [d["layer"] for d in entries]
    if layer_names:
        order = [r["layer"] for r in json.loads((DATA / layer_names).read_text())["layers"]]
    counts = {d["layer"]: len(d["weights"]) for d in entries}
    index, k = {}, 0
    for name in order:
        for i in range(counts.get(name, 0)):
            index[(name, i)] = k
            k += 1
    return index


def assert_every_tensor_landed(model, index, skip=()):
    loaded = 0
    for name, ws in weights.weighted_layers(model.keras_model).items():
        if name in skip:
            continue
        for i, (wname, var) in enumerate(ws):
            value = np.asarray(var)
            assert np.all(value == index[(name, i)]), f"{wname} holds {value.flat[0]}, expected {index[(name, i)]}"
            loaded += 1
    return loaded


@pytest.fixture(scope="module")
def r50(tmp_path_factory):
    path = fake_file(tmp_path_factory.mktemp("h5") / "fake_r50.h5", "coco_r50_manifest.json")
    return build("resnet50"), path


def test_r50_file_loads_every_tensor_into_its_variable(r50):
    model, path = r50
    model.load_weights(path, by_name=True)
    assert assert_every_tensor_landed(model, expected_index("coco_r50_manifest.json")) == 384


@pytest.mark.slow
def test_r101_file_in_training_layer_order_loads_every_tensor(tmp_path):
    path = fake_file(tmp_path / "fake_r101.h5", "coco_r101_manifest.json", "coco_r101_h5_layer_names_likely.json")
    model = build("resnet101")
    model.load_weights(path, by_name=True)
    index = expected_index("coco_r101_manifest.json", "coco_r101_h5_layer_names_likely.json")
    assert assert_every_tensor_landed(model, index) == 690


def test_exclude_skips_exactly_the_named_layers(r50):
    model, path = r50
    km = model.keras_model
    for name in HEADS:  # mark the excluded layers so we can see they were left alone
        for _, var in weights.layer_weights(km.get_layer(name)):
            var.assign(np.full(var.shape, -7, np.float32))
    model.load_weights(path, exclude=HEADS)
    for name in HEADS:
        assert all(np.all(np.asarray(v) == -7) for _, v in weights.layer_weights(km.get_layer(name)))
    assert assert_every_tensor_landed(model, expected_index("coco_r50_manifest.json"), skip=HEADS) == 384 - 6


def test_other_class_count_fails_with_a_clear_message_and_loads_nothing(r50):
    _, path = r50
    model = build("resnet50", num_classes=4)
    before = np.asarray(model.keras_model.get_layer("conv1").kernel).copy()
    with pytest.raises(weights.WeightsError) as e:
        model.load_weights(path, by_name=True)
    msg = str(e.value)
    assert "mrcnn_class_logits" in msg and "(1024, 4)" in msg and "(1024, 81)" in msg
    assert "exclude" in msg and "NUM_CLASSES" in msg
    assert np.array_equal(np.asarray(model.keras_model.get_layer("conv1").kernel), before)
    model.load_weights(path, exclude=["mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask"])
    assert np.all(np.asarray(model.keras_model.get_layer("conv1").kernel) == 0)


def test_files_that_are_not_weights_say_so(r50, tmp_path):
    model, _ = r50
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    with pytest.raises(weights.WeightsError, match="not an HDF5 weights file"):
        model.load_weights(text)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(weights.WeightsError, match="not a Keras 2 weights file"):
        model.load_weights(other)
    with pytest.raises(weights.WeightsError, match="not found"):
        model.load_weights(tmp_path / "missing.h5")


def test_own_checkpoint_round_trips_and_strict_load_needs_every_layer(tmp_path):
    model = build("resnet18")
    path = tmp_path / "ckpt.h5"
    model.save_weights(path)
    with h5py.File(path, "r") as f:  # matterport's layout: TimeDistributed and rpn_model groups
        assert "mrcnn_mask/mrcnn_mask/kernel:0" in f and "rpn_model/rpn_conv_shared/kernel:0" in f
        assert list(f["bn_conv1"].attrs["weight_names"]) == [
            b"bn_conv1/gamma:0", b"bn_conv1/beta:0", b"bn_conv1/moving_mean:0", b"bn_conv1/moving_variance:0"]
    other = build("resnet18")
    other.load_weights(path)
    for (name, ws), (_, ws2) in zip(weights.weighted_layers(model.keras_model).items(),
                                    weights.weighted_layers(other.keras_model).items()):
        for (_, a), (_, b) in zip(ws, ws2):
            assert np.array_equal(np.asarray(a), np.asarray(b)), name
    partial = tmp_path / "partial.h5"
    with h5py.File(path, "r") as src, h5py.File(partial, "w") as dst:
        names = [n for n in src.attrs["layer_names"] if n != b"fpn_p2"]
        dst.attrs["layer_names"] = names
        for n in names:
            src.copy(n.decode(), dst)
    with pytest.raises(weights.WeightsError, match="fpn_p2.*by_name=True"):
        other.load_weights(partial)
    other.load_weights(partial, by_name=True)


def test_checkpoint_path_sets_log_dir_and_epoch(r50, tmp_path):
    model, path = r50
    run = tmp_path / "coco20240102T0304"
    run.mkdir()
    ckpt = run / "mask_rcnn_coco_0007.h5"
    ckpt.write_bytes(path.read_bytes())
    model.load_weights(ckpt, by_name=True)
    assert model.epoch == 7 and model.log_dir.endswith("coco20240102T0304")


def test_frozen_layers_load_the_same_tensors(r50):
    model, path = r50
    km = model.keras_model
    for layer in km.get_layer("rpn_model").layers[:2] + [km.get_layer("mrcnn_mask_bn1"), km.get_layer("bn_conv1")]:
        layer.trainable = False  # Keras reorders trainable/non-trainable weights of frozen layers
    try:
        model.load_weights(path, by_name=True)
        assert assert_every_tensor_landed(model, expected_index("coco_r50_manifest.json")) == 384
    finally:
        km.trainable = True
        for layer in km.get_layer("rpn_model").layers:
            layer.trainable = True


def test_a_file_system_that_refuses_the_checkpoint_is_one_plain_oserror(tmp_path):
    """Over the file size limit, h5py raised RuntimeError("Can't decrement id ref count (unable
    to extend file properly, errno = 27, ...)"), which the CLI showed as a 50-line traceback; a
    full disk, a two-line OSError of HDF5's internals."""
    script = f"""
import errno, os, resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
from tests.mrcnn.test_weights import build
path = {str(tmp_path / 'ckpt.h5')!r}
try:
    build("resnet18").save_weights(path)
except OSError as e:
    print(e.errno == errno.EFBIG, e.filename == path, e.strerror)
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                       cwd=Path(__file__).parents[2])
    assert r.stdout.strip() == "True True File too large", r.stdout + r.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []  # no .tmp left


def test_a_checkpoint_that_cannot_be_written_leaves_no_sidecar(tmp_path):
    """The sidecar is written first; it stayed beside no weights after a full disk or Ctrl-C."""
    from mrcnn.training import EpochCheckpoint

    class Model:
        checkpoint_path = str(tmp_path / "mask_rcnn_x_{epoch:04d}.h5")
        config = type("X", (Config,), {"NAME": "x", "NUM_CLASSES": 2})()

        def save_weights(self, path):
            raise OSError(28, "No space left on device", path)

    with pytest.raises(OSError, match="No space left"):
        EpochCheckpoint(Model(), ["BG", "a"], {"layers": "heads"}).on_epoch_end(0)
    assert list(tmp_path.iterdir()) == []
