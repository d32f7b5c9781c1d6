"""mrcnn.utils against SPEC §3/§7 numbers and brute-force references."""
import subprocess
import sys

import numpy as np
import pytest

from mrcnn import utils


def test_pyramid_anchors_count_and_first_p2_anchor_at_1024():
    shapes = [[1024 // s, 1024 // s] for s in (4, 8, 16, 32, 64)]
    anchors = utils.generate_pyramid_anchors((32, 64, 128, 256, 512), [0.5, 1, 2], shapes,
                                             [4, 8, 16, 32, 64], 1)
    assert anchors.shape == (261888, 4)
    np.testing.assert_allclose(anchors[0], [-22.627, -11.314, 22.627, 11.314], atol=1e-3)
    # ratio 1 then 2 at the same (0, 0) cell, then the next cell 4 px to the right
    np.testing.assert_allclose(anchors[1], [-16, -16, 16, 16])
    np.testing.assert_allclose(anchors[3], [-22.627, 4 - 11.314, 22.627, 4 + 11.314], atol=1e-3)
    # P6 (scale 512, stride 64) is last: its final anchor is centred at (960, 960), ratio 2
    np.testing.assert_allclose(anchors[-1], [960 - 181.019, 960 - 362.039, 960 + 181.019, 960 + 362.039],
                               atol=1e-3)


def test_resize_image_square_480x640():
    image = np.full((480, 640, 3), 200, np.uint8)
    resized, window, scale, padding, crop = utils.resize_image(image, min_dim=800, max_dim=1024,
                                                               mode="square")
    assert resized.shape == (1024, 1024, 3) and resized.dtype == np.uint8
    assert scale == 1.6
    assert window == (128, 0, 896, 1024)
    assert padding == [(128, 128), (0, 0), (0, 0)]
    assert crop is None
    assert (resized[:128] == 0).all() and (resized[896:] == 0).all()
    assert (resized[128:896] == 200).all()


def test_resize_image_truncates_uint8_like_matterport():
    # a 2x upscale of [0, 3] puts 0.75 and 2.25 between them: truncation gives 0 and 2
    image = np.array([[0, 3]], np.uint8).repeat(2, 0)[:, :, None].repeat(3, 2)
    resized, *_ = utils.resize_image(image, min_dim=4, max_dim=4, mode="square")
    assert resized[0, :, 0].tolist() == [0, 0, 2, 3]


def test_resize_image_other_modes():
    image = np.ones((100, 130, 3), np.uint8)
    same, window, scale, padding, crop = utils.resize_image(image, mode="none")
    assert same is image and window == (0, 0, 100, 130) and scale == 1
    padded, window, scale, padding, _ = utils.resize_image(image, min_dim=64, mode="pad64")
    assert padded.shape == (128, 192, 3)
    assert padding == [(14, 14), (31, 31), (0, 0)] and window == (14, 31, 114, 161)
    cropped, window, _, _, crop = utils.resize_image(image, min_dim=64, mode="crop")
    assert cropped.shape == (64, 64, 3) and window == (0, 0, 64, 64) and crop[2:] == (64, 64)
    with pytest.raises(ValueError, match="not supported"):
        utils.resize_image(image, 64, 64, mode="bogus")


def test_resize_matches_skimage_inside_the_border():
    import skimage.transform as skimage_transform

    rng = np.random.default_rng(0)
    image = rng.random((30, 40, 3))
    ours = utils.resize(image, (75, 100), preserve_range=True)
    ref = skimage_transform.resize(image, (75, 100), order=1, mode="constant", cval=0, clip=True,
                                   preserve_range=True, anti_aliasing=False)
    np.testing.assert_allclose(ours[2:-2, 2:-2], ref[2:-2, 2:-2], atol=1e-5)
    # matterport's resize_image on a uint8 photo-sized image: interior identical after truncation
    photo = rng.integers(0, 256, (480, 640, 3)).astype(np.uint8)
    molded = utils.resize_image(photo, 800, 1024)[0]
    expected = skimage_transform.resize(photo, (768, 1024), order=1, mode="constant", cval=0, clip=True,
                                        preserve_range=True, anti_aliasing=False).astype(np.uint8)
    np.testing.assert_array_equal(molded[129:895, 1:-1], expected[1:-1, 1:-1])


def test_resize_accepts_matterports_arguments():
    image = np.arange(16, dtype=np.uint8).reshape(4, 4) * 16
    out = utils.resize(image, (8, 8), order=0, mode="constant", cval=0, clip=True, preserve_range=True,
                       anti_aliasing=False)
    np.testing.assert_array_equal(out, image.repeat(2, 0).repeat(2, 1))
    scaled = utils.resize(image, (2, 2), anti_aliasing=True)  # uint8 → [0, 1], block means
    np.testing.assert_allclose(scaled, image.reshape(2, 2, 2, 2).mean(axis=(1, 3)) / 255, atol=1e-6)


def test_resize_mask_follows_resize_image():
    image = np.zeros((48, 64, 3), np.uint8)
    mask = np.zeros((48, 64, 1), bool)
    mask[10:20, 30:40] = True
    _, window, scale, padding, crop = utils.resize_image(image, min_dim=96, max_dim=128)
    assert scale == 2 and window == (16, 0, 112, 128)
    resized = utils.resize_mask(mask, scale, padding, crop)
    assert resized.shape == (128, 128, 1) and resized.dtype == bool
    # scipy's zoom aligns corners, so edges may move by one pixel (as in matterport)
    box = utils.extract_bboxes(resized)[0]
    np.testing.assert_allclose(box, [16 + 20, 60, 16 + 40, 80], atol=1)


def test_mini_mask_round_trip():
    mask = np.zeros((64, 64, 2), bool)
    mask[8:40, 4:20, 0] = True
    mask[30:60, 30:62, 1] = True
    boxes = utils.extract_bboxes(mask)
    mini = utils.minimize_mask(boxes, mask, (56, 56))
    assert mini.shape == (56, 56, 2) and mini.all()
    np.testing.assert_array_equal(utils.expand_mask(boxes, mini, mask.shape), mask)
    with pytest.raises(ValueError, match="area of zero"):
        utils.minimize_mask(np.array([[5, 5, 5, 9]]), mask[..., :1], (56, 56))


def test_extract_bboxes_matches_loop_and_handles_empty():
    rng = np.random.default_rng(1)
    mask = rng.random((20, 30, 5)) > 0.97
    mask[..., 2] = False
    boxes = utils.extract_bboxes(mask)
    for i in range(5):
        ys, xs = np.where(mask[..., i])
        expected = [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1] if len(ys) else [0, 0, 0, 0]
        assert boxes[i].tolist() == expected
    assert boxes.dtype == np.int32
    assert utils.extract_bboxes(np.zeros((4, 4, 0), bool)).shape == (0, 4)
    assert utils.extract_bboxes(np.zeros((0, 0, 0), bool)).shape == (0, 4)  # Dataset.load_mask default


def test_unmold_mask_pastes_only_inside_the_box_and_image():
    prob = np.zeros((28, 28), np.float32)
    prob[:, :14] = 1.0
    full = utils.unmold_mask(prob, (10, 20, 38, 48), (50, 60, 3))
    assert full.dtype == bool and full.shape == (50, 60)
    assert full[10:38, 20:34].all() and not full[10:38, 34:48].any()
    assert full.sum() == 28 * 14
    ones = np.ones((28, 28), np.float32)
    clipped = utils.unmold_mask(ones, (-10, 50, 20, 80), (50, 60))
    assert clipped.sum() == 20 * 10 and clipped[:20, 50:].all()
    assert not utils.unmold_mask(ones, (5, 5, 5, 9), (50, 60)).any()


def _brute_iou(a, b):
    ih = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iw = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ih * iw
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _random_boxes(rng, n):
    yx = rng.uniform(0, 80, (n, 2))
    hw = rng.uniform(4, 40, (n, 2))
    return np.concatenate([yx, yx + hw], axis=1)


def test_compute_overlaps_against_brute_force():
    rng = np.random.default_rng(2)
    a, b = _random_boxes(rng, 7), _random_boxes(rng, 5)
    expected = np.array([[_brute_iou(x, y) for y in b] for x in a])
    np.testing.assert_allclose(utils.compute_overlaps(a, b), expected)
    np.testing.assert_allclose(utils.compute_iou(a[0], b, *_areas(a[0:1], b)), expected[0])


def _areas(a, b):
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
    return area(a)[0], area(b)


def test_non_max_suppression_against_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(20):
        boxes = _random_boxes(rng, 30).astype(np.float32)
        scores = rng.random(30)
        keep = utils.non_max_suppression(boxes, scores, 0.3)
        # reference: visit by descending score, keep a box unless it overlaps a kept one > 0.3
        expected = []
        for i in np.argsort(-scores):
            if all(_brute_iou(boxes[i], boxes[k]) <= 0.3 for k in expected):
                expected.append(i)
        assert keep.tolist() == expected
        assert keep.dtype == np.int32


def test_apply_box_deltas_and_box_refinement_round_trip():
    rng = np.random.default_rng(4)
    boxes = _random_boxes(rng, 50)
    gt = _random_boxes(rng, 50)
    deltas = utils.box_refinement(boxes, gt)
    np.testing.assert_allclose(utils.apply_box_deltas(boxes, deltas), gt, rtol=1e-4, atol=1e-3)
    # a hand case: shift the centre by half a height down, double the width
    out = utils.apply_box_deltas(np.array([[0., 0., 10., 20.]]), np.array([[0.5, 0., 0., np.log(2)]]))
    np.testing.assert_allclose(out, [[5, -10, 15, 30]])


def test_norm_denorm_boxes():
    boxes = np.array([[128, 0, 896, 1024]])
    normed = utils.norm_boxes(boxes, (1024, 1024))
    np.testing.assert_allclose(normed, [[128 / 1023, 0, 895 / 1023, 1]], rtol=1e-6)
    assert normed.dtype == np.float32
    assert utils.denorm_boxes(normed, (1024, 1024)).tolist() == boxes.tolist()


def _square_masks(boxes, shape=(40, 40)):
    masks = np.zeros(shape + (len(boxes),), bool)
    for i, (y1, x1, y2, x2) in enumerate(boxes):
        masks[y1:y2, x1:x2, i] = True
    return masks


def test_compute_ap_hand_cases():
    gt_boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30]])
    gt_ids = np.array([1, 2])
    gt_masks = _square_masks(gt_boxes)
    # perfect predictions → AP 1
    ap, precisions, recalls, overlaps = utils.compute_ap(
        gt_boxes, gt_ids, gt_masks, gt_boxes, gt_ids, np.array([0.9, 0.8]), gt_masks)
    assert ap == 1.0
    np.testing.assert_allclose(np.diag(overlaps), 1.0)
    # best-scored prediction wrong class, second right: precision 1/2 at recall 1/2 → AP 0.25
    pred_ids = np.array([2, 2])
    ap, *_ = utils.compute_ap(gt_boxes, gt_ids, gt_masks, gt_boxes, pred_ids, np.array([0.9, 0.8]),
                              gt_masks)
    assert ap == pytest.approx(0.25)
    # a prediction overlapping at IoU 0.5 exactly counts at 0.5, not at 0.55
    half = _square_masks(np.array([[0, 0, 10, 20]]))
    args = (gt_boxes[:1], gt_ids[:1], gt_masks[..., :1], np.array([[0, 0, 10, 20]]), np.array([1]),
            np.array([0.7]), half)
    assert utils.compute_ap(*args, iou_threshold=0.5)[0] == 1.0
    assert utils.compute_ap(*args, iou_threshold=0.55)[0] == 0.0
    assert utils.compute_ap_range(*args, verbose=0) == pytest.approx(0.1)


def test_compute_recall():
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]])
    pred = np.array([[0, 0, 10, 10], [0, 0, 10, 11], [20, 20, 30, 40]])
    recall, positive_ids = utils.compute_recall(pred, gt, 0.5)  # pred 2 has IoU 0.5 with gt 1
    assert recall == pytest.approx(2 / 3) and positive_ids.tolist() == [0, 1, 2]
    recall, positive_ids = utils.compute_recall(pred, gt, 0.6)
    assert recall == pytest.approx(1 / 3) and positive_ids.tolist() == [0, 1]


def test_mask_rle_round_trip():
    mask = np.zeros((7, 9), bool)
    mask[1:4, 2:8] = True
    rle = utils.mask_to_rle(mask)
    assert rle["size"] == [7, 9] and isinstance(rle["counts"], str)
    np.testing.assert_array_equal(utils.rle_to_mask(rle), mask)


class _Shapes(utils.Dataset):
    def load_mask(self, image_id):
        return np.ones((4, 4, 1), bool), np.array([1], np.int32)


def test_dataset_registration_and_maps(tmp_path):
    import cv2

    ds = _Shapes()
    ds.add_class("shapes", 1, "square")
    ds.add_class("shapes", 1, "square")  # duplicate ignored
    ds.add_class("coco", 12, "stop sign,extra")
    gray = tmp_path / "g.png"
    rgba = tmp_path / "a.png"
    cv2.imwrite(str(gray), np.full((5, 6), 77, np.uint8))
    cv2.imwrite(str(rgba), np.dstack([np.full((5, 6), c, np.uint8) for c in (10, 20, 30, 255)]))  # BGRA
    ds.add_image("shapes", 0, str(gray), color="red")
    ds.add_image("coco", 99, str(rgba))
    ds.prepare()
    assert ds.num_classes == 3 and ds.class_names == ["BG", "square", "stop sign"]
    assert ds.image_ids.tolist() == [0, 1]
    assert ds.map_source_class_id("coco.12") == 2
    assert ds.get_source_class_id(2, "coco") == 12
    assert ds.source_class_ids["shapes"] == [0, 1] and ds.source_class_ids["coco"] == [0, 2]
    assert ds.image_from_source_map["coco.99"] == 1
    assert ds.image_info[0]["color"] == "red"
    assert ds.source_image_link(1) == str(rgba)
    image = ds.load_image(0)
    assert image.shape == (5, 6, 3) and image.dtype == np.uint8 and (image == 77).all()
    assert ds.load_image(1)[0, 0].tolist() == [30, 20, 10]
    with pytest.raises(AssertionError):
        ds.add_class("a.b", 1, "x")


def test_load_image_errors_name_the_file(tmp_path):
    ds = utils.Dataset()
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    ds.add_image("x", 0, str(bad))
    ds.add_image("x", 1, str(tmp_path / "missing.png"))
    ds.prepare()
    with pytest.raises(ValueError, match="bad.jpg"):
        ds.load_image(0)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        ds.load_image(1)


def test_utils_does_not_import_tensorflow():
    code = "import sys, mrcnn.utils; sys.exit('tensorflow' in sys.modules or 'keras' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
