"""detect() on real photos and the FrameModel adapter, with a small seeded random model.

The fast path (one compiled function per shape, mask head only on surviving detections)
must give what matterport's graph (`keras_model`, mask head on all 100 slots) gives.
"""
import json

import keras
import numpy as np
import pytest
import skimage.data
import tensorflow as tf

from mrcnn import frame_model as fm
from mrcnn import model as modellib
from mrcnn import utils
from mrcnn.config import Config
from vidseg.errors import InputError


class Small(Config):
    NAME = "small"
    NUM_CLASSES = 81
    IMAGES_PER_GPU = 2
    BACKBONE = "resnet18"
    BACKBONE_WIDTH = 0.25
    IMAGE_MIN_DIM = IMAGE_MAX_DIM = 256
    TOP_DOWN_PYRAMID_SIZE = 32
    RPN_CONV_SIZE = 32
    FPN_CLASSIF_FC_LAYERS_SIZE = 64
    MASK_HEAD_CONV_SIZE = 16
    POST_NMS_ROIS_INFERENCE = 300


def photos():
    return [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()]


def favour_class(model, class_id, boost):
    """Set the classifier's bias so `class_id` wins most ROIs, with scores near it."""
    layer = model.keras_model.get_layer("mrcnn_class_logits").layer
    bias = np.zeros(layer.bias.shape, np.float32)
    bias[class_id] = boost
    layer.bias.assign(bias)


@pytest.fixture(scope="module")
def small():
    keras.utils.set_random_seed(0)
    model = modellib.MaskRCNN("inference", Small(), model_dir="unused")
    # Random heads are overconfident (every slot filled); calm the logits so that the score
    # of class 1 hovers around DETECTION_MIN_CONFIDENCE: some ROIs pass, some do not.
    layer = model.keras_model.get_layer("mrcnn_class_logits").layer
    layer.kernel.assign(np.asarray(layer.kernel) * 0.05)
    favour_class(model, 1, 5.0)
    return model


def test_detect_on_photos_returns_documented_arrays_deterministically(small):
    images = photos()
    results = small.detect(images)
    again = small.detect(images)
    assert len(results) == 3
    total = 0
    for image, r, r2 in zip(images, results, again):
        n = len(r["class_ids"])
        total += n
        assert r["rois"].dtype == np.int32 and r["rois"].shape == (n, 4)
        assert r["class_ids"].dtype == np.int32 and r["scores"].dtype == np.float32
        assert r["masks"].shape == image.shape[:2] + (n,)
        assert n == 0 or r["masks"].dtype == bool
        assert np.all(np.diff(r["scores"]) <= 0) and np.all(r["scores"] >= Small.DETECTION_MIN_CONFIDENCE)
        assert np.all(r["rois"][:, 2] > r["rois"][:, 0]) and np.all(r["rois"][:, :2] >= 0)
        assert np.all(r["rois"][:, 2] <= image.shape[0]) and np.all(r["rois"][:, 3] <= image.shape[1])
        for k in r:
            assert np.array_equal(r[k], r2[k])
    assert 0 < total < 3 * Small.DETECTION_MAX_INSTANCES  # some, but not all slots, survive
    assert small.detect([]) == []
    # one compiled function for this (batch, height, width), traced once
    assert list(small._compiled) == [(2, 256, 256)]
    assert small._compiled[(2, 256, 256)].experimental_get_tracing_count() == 1


def test_last_short_batch_is_padded_not_dropped(small):
    images = photos()
    alone = small.detect(images[2:])[0]
    in_three = small.detect(images)[2]
    for k in alone:
        assert np.array_equal(alone[k], in_three[k])


def test_survivor_masks_equal_matterport_graph_on_all_slots(small):
    images = photos()[:2]
    molded, metas, windows = small.mold_inputs(images)
    anchors = small.get_anchors(molded[0].shape)
    full_graph = tf.function(lambda inputs: small.keras_model(inputs, training=False))
    outputs = full_graph([tf.constant(molded), tf.constant(metas, tf.float32), tf.constant(np.stack([anchors] * 2))])
    detections, mrcnn_mask = np.asarray(outputs[0]), np.asarray(outputs[3])
    fast = small.infer_molded(molded, metas)
    for i in range(2):
        det_fast, masks_fast = fast[i]
        assert np.array_equal(det_fast, detections[i])
        n = int((detections[i, :, 4] > 0).sum())
        assert 0 < n < 100 and masks_fast.shape == (n, 28, 28)  # the mask head ran on the n survivors only
        class_ids = detections[i, :n, 4].astype(int)
        assert np.array_equal(masks_fast, mrcnn_mask[i, np.arange(n), :, :, class_ids])


def test_no_detection_gives_empty_results(small):
    favour_class(small, 0, 30.0)  # background wins everywhere
    try:
        r = small.detect(photos()[1:2])[0]
        det, masks = small.infer_molded(*small.mold_inputs(photos()[1:2])[:2])[0]
    finally:
        favour_class(small, 1, 5.0)
    assert r["rois"].shape == (0, 4) and r["class_ids"].shape == (0,) and r["masks"].shape == (400, 600, 0)
    assert masks.shape == (0, 28, 28) and not det.any()


def test_post_nms_rois_inference_sets_the_number_of_proposals():
    class Fewer(Small):
        POST_NMS_ROIS_INFERENCE = 50
    model = modellib.MaskRCNN("inference", Fewer(), model_dir="unused")
    km = model.keras_model
    assert tuple(km.get_layer("ROI").output.shape[1:]) == (50, 4)
    assert tuple(km.get_layer("mrcnn_class").output.shape[1:]) == (50, 81)
    rois = model.run_graph(photos()[:1], [("rois", km.get_layer("ROI").output)])["rois"]
    assert rois.shape == (1, 50, 4)


@pytest.fixture(scope="module")
def weights_file(small, tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "small.h5"
    small.save_weights(path)
    path.with_suffix(".json").write_text(json.dumps(
        {"config": {"IMAGE_MIN_DIM": 256, "IMAGE_MAX_DIM": 256, "POST_NMS_ROIS_INFERENCE": 300}}))
    return path


def test_frame_model_gives_detect_results_as_detections(small, weights_file):
    model = fm.MaskRCNNFrameModel(weights=weights_file, batch_size=2)
    assert model.batch_size == 2 and model.class_names[:3] == ["BG", "person", "bicycle"]
    assert model.config.BACKBONE == "resnet18" and model.config.BACKBONE_WIDTH == 0.25
    images = photos()
    expected = small.detect(images)
    got = model(images[:2]) + model(images[2:])  # a full and a short batch
    for image, r, d in zip(images, expected, got):
        assert d.boxes.dtype == np.float32 and d.masks.dtype == np.float32 and d.class_ids.dtype == np.int32
        assert d.masks.shape == (len(d), 28, 28)
        assert np.array_equal(d.boxes, r["rois"].astype(np.float32))
        assert np.array_equal(d.class_ids, r["class_ids"]) and np.array_equal(d.scores, r["scores"])
        pasted = [utils.unmold_mask(m, b, image.shape) for m, b in zip(d.masks, d.boxes)]
        assert np.array_equal(np.stack(pasted, -1) if pasted else r["masks"], r["masks"])


def test_frame_model_options_and_user_errors(weights_file, tmp_path, monkeypatch):
    model = fm.MaskRCNNFrameModel(weights=weights_file, min_confidence=0.99, max_dim=128)
    assert model.config.IMAGE_MAX_DIM == 128 and model.config.DETECTION_MIN_CONFIDENCE == 0.99
    assert model.batch_size == 1 and model([]) == []
    parts = model.profile_parts(photos()[:1], repeats=1)
    assert parts["total"] > 0 and parts["mask_head"] >= 0
    with pytest.raises(InputError, match="multiple of 64"):
        fm.MaskRCNNFrameModel(weights=weights_file, max_dim=100)
    with pytest.raises(InputError, match="2 class names in class_names but .* has 81 classes"):
        fm.MaskRCNNFrameModel(weights=weights_file, class_names=["BG", "thing"])
    with pytest.raises(InputError, match="weights file not found"):
        fm.MaskRCNNFrameModel(weights=tmp_path / "nope.h5")
    monkeypatch.setattr(fm, "SHIPPED_WEIGHTS", tmp_path / "shapes.h5")
    with pytest.raises(InputError, match="shipped model"):
        fm.MaskRCNNFrameModel()
    text = tmp_path / "text.h5"
    text.write_text("not weights")
    with pytest.raises(InputError, match="not an HDF5 weights file"):
        fm.MaskRCNNFrameModel(weights=text)


def test_frame_model_needs_names_for_other_class_counts(tmp_path):
    class Four(Small):
        NUM_CLASSES = 4
    path = tmp_path / "four.h5"
    modellib.MaskRCNN("inference", Four(), model_dir="unused").save_weights(path)
    # a sidecar works for every command (demo has no --classes, which the message alone offered)
    # (and a checkpoint's sidecar holds the settings it was trained with: --classes alone runs it at the defaults)
    with pytest.raises(InputError, match=r"4 classes but no class names; a checkpoint of `vidseg train` needs its "
                                         r"sidecar .*four.json beside it .*give --classes FILE .* or write "
                                         r'.*four.json holding \{"class_names": \["BG", ...\]\}'):
        fm.MaskRCNNFrameModel(weights=path, max_dim=128)
    names = tmp_path / "names.txt"
    names.write_text("BG\nsquare\ncircle\ntriangle\n")
    model = fm.MaskRCNNFrameModel(weights=path, max_dim=128, class_names=names)
    assert model.class_names == ["BG", "square", "circle", "triangle"]


def test_profile_parts_reports_every_part(small):
    from mrcnn import profile
    parts = small.profile_parts(photos()[:2], repeats=1)
    assert set(parts) == set(profile.PARTS) | {"total", "detections"}
    assert all(np.isfinite(v) and v >= 0 for v in parts.values())
    raw = small.infer_molded(*small.mold_inputs(photos()[:2])[:2])
    assert parts["detections"] == np.mean([(det[:, 4] > 0).sum() for det, _ in raw]) > 0
