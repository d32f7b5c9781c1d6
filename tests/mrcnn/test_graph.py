"""Graph pieces against NumPy references and SPEC §7 vectors: anchors, ROI level
assignment, pyramid ROI Align order, proposal and detection NMS against brute force,
unmold_detections on hand-made outputs, empty results."""
import numpy as np
import pytest
import tensorflow as tf
from keras import layers as KL

from mrcnn import model as modellib
from mrcnn import utils
from mrcnn.config import Config
from mrcnn.layers import (DetectionLayer, ProposalLayer, TimeDistributed, apply_box_deltas_graph,
                          clip_boxes_graph, pyramid_roi_align, roi_levels)


class Tiny(Config):
    NAME = "tiny"
    NUM_CLASSES = 5
    IMAGES_PER_GPU = 2
    BACKBONE = "resnet18"
    BACKBONE_WIDTH = 0.25
    IMAGE_MIN_DIM = IMAGE_MAX_DIM = 128
    TOP_DOWN_PYRAMID_SIZE = 32
    RPN_CONV_SIZE = 32
    FPN_CLASSIF_FC_LAYERS_SIZE = 64
    MASK_HEAD_CONV_SIZE = 16


@pytest.fixture(scope="module")
def tiny():
    return modellib.MaskRCNN("inference", Tiny(), model_dir="unused")


def iou(a, b):
    y1, x1 = max(a[0], b[0]), max(a[1], b[1])
    y2, x2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(y2 - y1, 0) * max(x2 - x1, 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def brute_force_nms(boxes, scores, limit, threshold):
    """Indices kept by greedy NMS (suppress IoU > threshold), best score first."""
    kept = []
    for i in np.argsort(-scores, kind="stable"):
        if all(iou(boxes[i], boxes[j]) <= threshold for j in kept):
            kept.append(i)
        if len(kept) == limit:
            break
    return np.array(kept, np.int64)


def random_boxes(rng, n, min_size=0.02, max_size=0.4):
    cy, cx = rng.uniform(0, 1, (2, n))
    h, w = rng.uniform(min_size, max_size, (2, n))
    return np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=1).astype(np.float32)


def test_anchors_at_1024_match_spec(tiny):
    anchors = tiny.get_anchors((1024, 1024, 3))
    assert anchors.shape == (261888, 4) and anchors.dtype == np.float32
    assert np.allclose(tiny.anchors[0], [-22.627, -11.314, 22.627, 11.314], atol=1e-3)
    assert np.allclose(anchors[0], utils.norm_boxes(tiny.anchors[:1], (1024, 1024))[0])
    assert tiny.get_anchors((1024, 1024, 3)) is anchors  # cached per shape


def test_roi_level_assignment():
    area = tf.constant(1024.0 * 1024.0)
    sides = np.array([224, 112, 448, 896, 56, 28, 160, 320]) / 1024.0
    boxes = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], axis=1)
    boxes = np.concatenate([boxes, np.zeros((1, 4))]).astype(np.float32)  # + a padding box
    levels = roi_levels(tf.constant(boxes), area).numpy()
    # 4 + round(log2(side / 224)), clamped to [2, 5]; 160 -> -0.49 -> 4; 320 -> 0.51 -> 5
    assert levels.tolist() == [4, 3, 5, 5, 2, 2, 4, 5, 2]


def test_pyramid_roi_align_pools_each_box_from_its_level_in_input_order():
    rng = np.random.default_rng(0)
    maps = [tf.constant(rng.standard_normal((2, s, s, 3)).astype(np.float32)) for s in (64, 32, 16, 8)]
    boxes = np.array([[0, 0, 0.9, 0.9], [0.1, 0.1, 0.2, 0.2], [0.2, 0.3, 0.5, 0.6], [0, 0, 0.05, 0.05],
                      [0.5, 0.5, 0.95, 0.9]], np.float32)
    index = np.array([1, 0, 1, 0, 0], np.int32)
    area = tf.constant(256.0 * 256.0)
    pooled = pyramid_roi_align(tf.constant(boxes), tf.constant(index), area, maps, (7, 7)).numpy()
    levels = roi_levels(tf.constant(boxes), area).numpy()
    assert len(set(levels.tolist())) >= 3
    for i, level in enumerate(levels):
        direct = tf.image.crop_and_resize(maps[level - 2], boxes[i:i + 1], index[i:i + 1], (7, 7)).numpy()[0]
        assert np.allclose(pooled[i], direct)


def test_proposals_match_topk_deltas_clip_and_brute_force_nms():
    class C(Tiny):
        PRE_NMS_LIMIT = 300
    config = C()
    rng = np.random.default_rng(1)
    batch, n = 2, 600
    anchors = np.stack([random_boxes(rng, n) for _ in range(batch)])
    logits = rng.standard_normal((batch, n, 2)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    deltas = (rng.standard_normal((batch, n, 4)) * 0.5).astype(np.float32)
    layer = ProposalLayer(proposal_count=50, nms_threshold=0.7, config=config)
    out = layer([tf.constant(probs), tf.constant(deltas), tf.constant(anchors)]).numpy()
    assert out.shape == (batch, 50, 4)
    for b in range(batch):
        order = np.argsort(-probs[b, :, 1], kind="stable")[:300]
        boxes = utils.apply_box_deltas(anchors[b, order].astype(np.float64),
                                       deltas[b, order] * config.RPN_BBOX_STD_DEV)
        boxes = np.clip(boxes, 0, 1).astype(np.float32)
        keep = brute_force_nms(boxes, probs[b, order, 1], 50, 0.7)
        expected = np.zeros((50, 4), np.float32)
        expected[:len(keep)] = boxes[keep]
        assert np.allclose(out[b], expected, atol=1e-5)


def reference_detections(rois, probs, deltas, window, config):
    """NumPy version of SPEC §3.11 for one image."""
    class_ids = probs.argmax(1)
    scores = probs[np.arange(len(probs)), class_ids]
    d = deltas[np.arange(len(probs)), class_ids] * config.BBOX_STD_DEV
    refined = utils.apply_box_deltas(rois.astype(np.float64), d).astype(np.float32)
    refined = np.stack([np.clip(refined[:, i], window[i % 2], window[2 + i % 2]) for i in range(4)], axis=1)
    keep = np.where((class_ids > 0) & (scores >= config.DETECTION_MIN_CONFIDENCE))[0]
    survivors = []
    for c in np.unique(class_ids[keep]):
        ixs = keep[class_ids[keep] == c]
        survivors += list(ixs[brute_force_nms(refined[ixs], scores[ixs], config.DETECTION_MAX_INSTANCES,
                                              config.DETECTION_NMS_THRESHOLD)])
    survivors = np.sort(np.array(survivors, np.int64))
    survivors = survivors[np.argsort(-scores[survivors], kind="stable")][:config.DETECTION_MAX_INSTANCES]
    rows = np.concatenate([refined[survivors], class_ids[survivors, None], scores[survivors, None]], axis=1)
    out = np.zeros((config.DETECTION_MAX_INSTANCES, 6), np.float32)
    out[:len(rows)] = rows
    return out


def test_detection_layer_matches_per_class_brute_force():
    class C(Tiny):
        DETECTION_MAX_INSTANCES = 12
        DETECTION_MIN_CONFIDENCE = 0.3
    config = C()
    rng = np.random.default_rng(2)
    batch, n, classes = 2, 200, config.NUM_CLASSES
    rois = np.stack([random_boxes(rng, n, 0.05, 0.3) for _ in range(batch)])
    logits = rng.standard_normal((batch, n, classes)).astype(np.float32) * 2
    probs = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
    deltas = (rng.standard_normal((batch, n, classes, 4)) * 0.3).astype(np.float32)
    meta = np.stack([modellib.compose_image_meta(0, (100, 200, 3), (256, 256, 3), (64, 0, 192, 256), 1.28,
                                                 np.zeros(classes)) for _ in range(batch)]).astype(np.float32)
    out = DetectionLayer(config)([tf.constant(rois), tf.constant(probs), tf.constant(deltas), tf.constant(meta)])
    out = out.numpy()
    window = utils.norm_boxes(np.array([64, 0, 192, 256]), (256, 256))
    for b in range(batch):
        expected = reference_detections(rois[b], probs[b], deltas[b], window, config)
        assert (expected[:, 4] > 0).sum() > 3
        assert np.allclose(out[b], expected, atol=1e-5)


def test_box_graph_functions_match_numpy():
    rng = np.random.default_rng(3)
    boxes = random_boxes(rng, 50)
    deltas = (rng.standard_normal((50, 4)) * 0.3).astype(np.float32)
    assert np.allclose(apply_box_deltas_graph(tf.constant(boxes), tf.constant(deltas)).numpy(),
                       utils.apply_box_deltas(boxes.astype(np.float64), deltas), atol=1e-5)
    clipped = clip_boxes_graph(tf.constant(boxes), tf.constant([0.1, 0.2, 0.8, 0.9])).numpy()
    assert np.allclose(clipped, np.clip(boxes, [0.1, 0.2, 0.1, 0.2], [0.8, 0.9, 0.8, 0.9]))


def test_time_distributed_folds_time_into_batch():
    layer = TimeDistributed(KL.Dense(4), name="td")
    x = np.random.default_rng(4).standard_normal((2, 5, 3)).astype(np.float32)
    y = layer(tf.constant(x)).numpy()
    assert y.shape == (2, 5, 4)
    assert np.allclose(y[1, 3], layer.layer(tf.constant(x[1, 3:4])).numpy()[0], atol=1e-6)


def test_unmold_detections_on_hand_made_outputs(tiny):
    original, molded, window = (100, 200, 3), (256, 256, 3), (64, 0, 192, 256)
    det = np.zeros((10, 6), np.float32)
    det[0] = [*utils.norm_boxes(np.array([64, 0, 192, 256]), (256, 256)), 2, 0.9]   # whole image
    det[1] = [*utils.norm_boxes(np.array([64, 0, 128, 128]), (256, 256)), 3, 0.8]   # top-left quarter
    det[2] = [*utils.norm_boxes(np.array([100, 100, 100, 140]), (256, 256)), 1, 0.75]  # zero height
    det[4] = [0.1, 0.1, 0.2, 0.2, 1, 0.5]  # after the first zero row: ignored
    masks = np.zeros((10, 28, 28, 5), np.float32)
    masks[0, :, :, 2] = 1.0
    masks[1, :, :, 1] = 1.0  # another class's channel: detection 1's own mask stays empty
    masks[1, :14, :, 3] = 0.9  # its own channel: the top half
    boxes, class_ids, scores, full = tiny.unmold_detections(det, masks, original, molded, window)
    assert boxes.dtype == np.int32 and class_ids.dtype == np.int32 and scores.dtype == np.float32
    assert boxes.tolist() == [[0, 0, 100, 200], [0, 0, 50, 100]]
    assert class_ids.tolist() == [2, 3] and np.allclose(scores, [0.9, 0.8])
    assert full.shape == (100, 200, 2) and full.dtype == bool
    assert full[..., 0].all()
    assert full[:25, :100, 1].all() and not full[26:, :, 1].any() and not full[:, 100:, 1].any()


def test_empty_detections_give_empty_results(tiny):
    boxes, class_ids, scores, full = tiny.unmold_detections(
        np.zeros((100, 6), np.float32), np.zeros((100, 28, 28, 5), np.float32), (90, 120, 3), (128, 128, 3),
        (16, 0, 112, 128))
    assert boxes.shape == (0, 4) and class_ids.shape == (0,) and scores.shape == (0,)
    assert full.shape == (90, 120, 0)


def test_mold_inputs_resizes_pads_and_packs_meta(tiny):
    image = np.full((480, 640, 3), 200, np.uint8)
    molded, metas, windows = tiny.mold_inputs([image])
    # IMAGE_MIN_DIM = IMAGE_MAX_DIM = 128: scale 128/640 = 0.2 -> 96x128, padded 16 top and bottom
    assert molded.shape == (1, 128, 128, 3) and molded.dtype == np.float32
    assert windows.tolist() == [[16, 0, 112, 128]]
    assert np.allclose(molded[0, 16:112], 200 - Tiny.MEAN_PIXEL) and np.allclose(molded[0, :16], -Tiny.MEAN_PIXEL)
    assert metas.shape == (1, 12 + Tiny.NUM_CLASSES)
    assert np.allclose(metas[0, :12], [0, 480, 640, 3, 128, 128, 3, 16, 0, 112, 128, 0.2])
    parsed = modellib.parse_image_meta(metas)
    assert parsed["window"].tolist() == [[16, 0, 112, 128]] and parsed["original_image_shape"].tolist() == [[480, 640, 3]]


def test_pyramid_shapes_and_rpn_rows_follow_the_anchors(tiny):
    km = tiny.keras_model
    image = np.random.default_rng(5).integers(0, 255, (128, 128, 3), np.uint8)
    out = tiny.run_graph([image, image], [(n, km.get_layer(n).output) for n in
                                          ("fpn_p2", "fpn_p5", "fpn_p6", "rpn_class", "rpn_bbox")])
    assert out["fpn_p2"].shape == (2, 32, 32, Tiny.TOP_DOWN_PYRAMID_SIZE)
    assert np.array_equal(out["fpn_p6"], out["fpn_p5"][:, ::2, ::2])  # P6 = stride-2 subsample of P5
    anchors = tiny.get_anchors((128, 128, 3))
    assert out["rpn_class"].shape == (2, len(anchors), 2) and out["rpn_bbox"].shape == (2, len(anchors), 4)
    assert np.allclose(out["rpn_class"].sum(-1), 1, atol=1e-5)  # softmax over (bg, fg)


def test_huge_size_deltas_give_finite_boxes():
    """An untrained model's log-scale deltas can overflow exp(); the boxes must stay finite
    (they cover the image once clipped) instead of turning into NaN."""
    from mrcnn.layers import clip_boxes_graph

    boxes = tf.constant([[0.4, 0.4, 0.5, 0.5], [0.1, 0.1, 0.2, 0.3]], tf.float32)
    deltas = tf.constant([[0.0, 0.0, 200.0, 200.0], [0.1, -0.1, 0.2, -0.3]], tf.float32)
    refined = clip_boxes_graph(apply_box_deltas_graph(boxes, deltas), [0.0, 0.0, 1.0, 1.0]).numpy()
    assert np.isfinite(refined).all()
    np.testing.assert_allclose(refined[0], [0, 0, 1, 1])
    np.testing.assert_allclose(refined[1], utils.apply_box_deltas(boxes.numpy()[1:], deltas.numpy()[1:])[0], rtol=1e-5)
