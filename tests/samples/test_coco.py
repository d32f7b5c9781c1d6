"""COCO loader and COCO evaluation on a tiny COCO set written by the test."""
import json

import cv2
import numpy as np
import pytest
from PIL import Image

from mrcnn import utils
from vidseg.errors import InputError
from vidseg.samples import coco as coco_sample
from vidseg.samples.coco import CocoDataset
from vidseg.samples.shapes import ShapesDataset

H, W = 48, 64


def _square(x, y, s):
    return [[x, y, x + s, y, x + s, y + s, x, y + s]]


@pytest.fixture
def tiny_coco(tmp_path):
    """matterport layout: 3 images (one without annotations), categories 3 'car' and 7 'dog'
    (non-contiguous ids), polygon instances and one crowd region in uncompressed RLE."""
    image_dir = tmp_path / "val2014"
    image_dir.mkdir()
    for level, name in enumerate(("a.jpg", "b.jpg", "c.jpg")):
        cv2.imwrite(str(image_dir / name), np.full((H, W, 3), 50 * level, np.uint8))
    crowd = np.zeros((H, W), np.uint8)
    crowd[30:40, 40:60] = 1
    crowd_rle = {"size": [H, W], "counts": _uncompressed_counts(crowd)}
    annotations = [
        {"id": 1, "image_id": 11, "category_id": 3, "segmentation": _square(4, 4, 12), "area": 144,
         "bbox": [4, 4, 12, 12], "iscrowd": 0},
        {"id": 2, "image_id": 11, "category_id": 7, "segmentation": _square(30, 10, 16), "area": 256,
         "bbox": [30, 10, 16, 16], "iscrowd": 0},
        {"id": 3, "image_id": 12, "category_id": 7, "segmentation": _square(10, 20, 20), "area": 400,
         "bbox": [10, 20, 20, 20], "iscrowd": 0},
        {"id": 4, "image_id": 12, "category_id": 3, "segmentation": crowd_rle, "area": 200,
         "bbox": [40, 30, 20, 10], "iscrowd": 1},
    ]
    data = {"images": [{"id": i, "file_name": n, "height": H, "width": W}
                       for i, n in ((11, "a.jpg"), (12, "b.jpg"), (13, "c.jpg"))],
            "annotations": annotations,
            "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "car"}]}
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_minival2014.json").write_text(json.dumps(data))
    return tmp_path


def _uncompressed_counts(mask):
    flat = mask.flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return counts


def _load(root, **kwargs):
    ds = CocoDataset()
    coco = ds.load_coco(root, "minival", year="2014", return_coco=True, **kwargs)
    ds.prepare()
    return ds, coco


def test_loader_classes_instances_crowds_and_empty_images(tiny_coco):
    ds, coco = _load(tiny_coco)
    assert ds.class_names == ["BG", "car", "dog"]
    assert ds.map_source_class_id("coco.7") == 2 and ds.get_source_class_id(1, "coco") == 3
    assert [info["id"] for info in ds.image_info] == [11, 12, 13]
    masks, class_ids = ds.load_mask(0)
    assert masks.shape == (H, W, 2) and masks.dtype == bool
    assert class_ids.tolist() == [1, 2] and class_ids.dtype == np.int32
    assert utils.extract_bboxes(masks)[0].tolist() == [4, 4, 16, 16]  # pycocotools: 12x12 pixels
    masks, class_ids = ds.load_mask(1)
    assert class_ids.tolist() == [2, -1]  # the crowd region keeps its class, negated
    assert masks[..., 1].sum() == 200 and masks[30:40, 40:60, 1].all()
    masks, class_ids = ds.load_mask(2)  # no annotations: kept, no instances
    assert masks.shape[-1] == 0 and class_ids.shape == (0,)
    assert ds.load_image(2).shape == (H, W, 3)
    assert ds.image_reference(0) == "http://cocodataset.org/#explore?id=11"


def test_loader_class_selection_and_class_map(tiny_coco):
    ds, _ = _load(tiny_coco, class_ids=[7])
    assert ds.class_names == ["BG", "dog"] and [i["id"] for i in ds.image_info] == [11, 12]
    assert ds.load_mask(1)[1].tolist() == [1]
    merged, _ = _load(tiny_coco, class_map={3: 7, 7: 7})
    assert merged.class_names == ["BG", "dog"]
    assert merged.load_mask(0)[1].tolist() == [1, 1] and merged.load_mask(1)[1].tolist() == [1, -1]


def test_loader_errors_are_one_line_input_errors(tiny_coco):
    with pytest.raises(InputError, match="annotation file not found"):
        _load(tiny_coco / "nowhere")
    (tiny_coco / "annotations" / "instances_minival2014.json").write_text('{"images": 3}')
    with pytest.raises(InputError, match="not a COCO instances file"):
        _load(tiny_coco)
    with pytest.raises(InputError, match="not supported"):
        CocoDataset().load_coco(tiny_coco, "minival", auto_download=True)


def test_an_image_of_another_size_than_the_file_says_is_refused_when_read(tiny_coco):
    """pycocotools draws the masks at the file's width and height; a picture of another size
    got them silently misplaced (Detectron2 refuses it, as here)."""
    cv2.imwrite(str(tiny_coco / "val2014" / "b.jpg"), np.zeros((60, 80, 3), np.uint8))
    ds, _ = _load(tiny_coco)
    assert ds.load_image(0).shape == (H, W, 3)
    with pytest.raises(InputError) as error:
        ds.load_image(1)
    assert str(error.value) == (
        f"{tiny_coco / 'val2014' / 'b.jpg'} is 80x60 but {tiny_coco / 'annotations' / 'instances_minival2014.json'} "
        "gives 64x48 (width x height), which its masks are drawn at; put the picture that was annotated there, "
        "or correct its width and height in the file")


def _phone_photo(path, stored_height, stored_width):
    """A JPEG stored stored_width x stored_height whose EXIF tag says: show it turned 90° clockwise."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.full((stored_height, stored_width, 3), 90, np.uint8)).save(path, exif=exif)


def test_exif_rotated_images_are_read_upright_and_checked_upright(tiny_coco):
    """As Detectron2: the orientation is applied, then the size is compared with the file's
    (an annotation tool in a browser shows the picture turned)."""
    _phone_photo(tiny_coco / "val2014" / "a.jpg", W, H)            # upright W x H, as the file says
    _phone_photo(tiny_coco / "val2014" / "b.jpg", H, W)            # upright H x W: annotated unturned
    ds, _ = _load(tiny_coco)
    assert ds.load_image(0).shape == (H, W, 3)
    turned = r"b.jpg is 48x64 upright \(its EXIF orientation turns the stored 64x48; if it was annotated unturned, "
    with pytest.raises(InputError, match=turned + r"remove the orientation tag\) but .* gives 64x48"):
        ds.load_image(1)


def _ground_truth_results(ds, image_ids, drop_last=False):
    results = []
    for i in image_ids:
        masks, class_ids = ds.load_mask(i)
        keep = class_ids > 0
        masks, class_ids = masks[..., keep], class_ids[keep]
        if drop_last and len(class_ids):
            masks, class_ids = masks[..., :-1], class_ids[:-1]
        results.extend(coco_sample.build_coco_results(
            ds, [coco_sample.coco_image_id(ds, i)], utils.extract_bboxes(masks), class_ids,
            np.linspace(0.99, 0.9, len(class_ids)), masks.astype(np.uint8)))
    return results


def test_predictions_equal_to_ground_truth_score_ap_1(tiny_coco):
    ds, coco = _load(tiny_coco)
    results = _ground_truth_results(ds, ds.image_ids)
    assert results[0]["category_id"] == 3 and results[0]["bbox"] == [4.0, 4.0, 12.0, 12.0]
    json.dumps(results)  # JSON-ready
    for eval_type in ("bbox", "segm"):
        table = coco_sample.coco_ap_table(coco, results, eval_type=eval_type)
        assert list(table) == ["AP", "AP50", "AP75", "APs", "APm", "APl"]
        assert table["AP"] == table["AP50"] == table["AP75"] == 1.0


def test_missing_and_empty_predictions_lower_ap(tiny_coco):
    ds, coco = _load(tiny_coco)
    partial = coco_sample.coco_ap_table(coco, _ground_truth_results(ds, ds.image_ids, drop_last=True))
    assert 0 < partial["AP"] < 1
    assert coco_sample.coco_ap_table(coco, [], eval_type="bbox")["AP"] == 0.0
    with pytest.raises(ValueError, match="eval_type"):
        coco_sample.coco_ap_table(coco, [], eval_type="keypoints")


class _OracleModel:
    """A model whose detect() returns the dataset's ground truth (matterport's result dicts)."""

    class config:
        BATCH_SIZE = 2

    def __init__(self, ds):
        self.ds, self.calls = ds, []

    def detect(self, images, verbose=0):
        self.calls.append(len(images))
        out = []
        for image in images:
            i = next(k for k in self.ds.image_ids if np.array_equal(self.ds.load_image(k), image))
            masks, class_ids = self.ds.load_mask(i)
            keep = class_ids > 0
            out.append({"rois": utils.extract_bboxes(masks[..., keep]), "class_ids": class_ids[keep],
                        "scores": np.ones(keep.sum(), np.float32), "masks": masks[..., keep]})
        return out


def test_evaluate_coco_runs_the_model_in_batches(tiny_coco, capsys):
    ds, coco = _load(tiny_coco)
    model = _OracleModel(ds)
    table = coco_sample.evaluate_coco(model, ds, coco, eval_type="segm")
    assert table["AP"] == 1.0 and model.calls == [2, 1]
    assert "Prediction time" in capsys.readouterr().out
    coco_sample.evaluate_coco(model, ds, coco, eval_type="bbox", limit=1, verbose=False)
    assert model.calls == [2, 1, 1] and capsys.readouterr().out == ""


def test_a_coco_file_without_area_or_bbox_gets_them_from_its_masks(tiny_coco):
    """COCOeval needs both; the file's own are used when it has them."""
    path = tiny_coco / "annotations" / "instances_minival2014.json"
    data = json.loads(path.read_text())
    for annotation in data["annotations"]:
        del annotation["area"], annotation["bbox"]
    path.write_text(json.dumps(data))
    ds, _ = _load(tiny_coco)
    truth = coco_sample.dataset_to_coco(ds)
    assert [(a["area"], a["bbox"], a["iscrowd"]) for a in truth.loadAnns(truth.getAnnIds())] == [
        (144, [4, 4, 12, 12], 0), (256, [30, 10, 16, 16], 0), (400, [10, 20, 20, 20], 0), (200, [40, 30, 20, 10], 1)]
    assert coco_sample.coco_ap_table(truth, _ground_truth_results(ds, ds.image_ids))["AP"] == 1.0


def test_any_dataset_evaluates_through_dataset_to_coco():
    ds = ShapesDataset.generate(12, 64, 64, seed=5)
    coco = coco_sample.dataset_to_coco(ds)
    assert len(coco.getImgIds()) == 12 and sorted(coco.getCatIds()) == [1, 2, 3]
    results = _ground_truth_results(ds, ds.image_ids)
    assert coco_sample.coco_ap_table(coco, results, eval_type="segm")["AP"] == 1.0
    worse = [dict(r, category_id=r["category_id"] % 3 + 1) if k % 2 else r for k, r in enumerate(results)]
    assert coco_sample.coco_ap_table(coco, worse, eval_type="segm")["AP"] < 0.9


def test_evaluate_dataset_scores_both_types_from_one_pass():
    ds = ShapesDataset.generate(6, 64, 64, seed=9)
    model = _OracleModel(ds)
    report = coco_sample.evaluate_dataset(model, ds)
    assert model.calls == [2, 2, 2]
    assert report["images"] == 6 and report["bbox"]["AP"] == report["segm"]["AP"] == 1.0
    text = coco_sample.format_ap_table(report)
    assert text.splitlines()[0].split() == ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    assert text.splitlines()[2].startswith("segm     1.000   1.000   1.000")
    limited = coco_sample.evaluate_dataset(model, ds, eval_types=("segm",), limit=3)
    assert limited["images"] == 3 and "bbox" not in limited and limited["segm"]["AP"] == 1.0


@pytest.mark.slow
def test_vidseg_evaluate_says_which_image_has_another_size_in_one_line(tiny_coco):
    """What the user sees: one line, exit 2 (the shipped model's classes, so the model loads)."""
    from mrcnn.frame_model import SHIPPED_WEIGHTS
    from tests.conftest import run_vidseg

    path = tiny_coco / "annotations" / "instances_minival2014.json"
    data = json.loads(path.read_text())
    data["categories"] = [{"id": 3, "name": "square"}, {"id": 7, "name": "circle"}, {"id": 9, "name": "triangle"}]
    path.write_text(json.dumps(data))
    cv2.imwrite(str(tiny_coco / "val2014" / "c.jpg"), np.zeros((60, 80, 3), np.uint8))
    r = run_vidseg("evaluate", "--kind", "coco", "--dataset", tiny_coco, "--subset", "minival",
                   "--weights", SHIPPED_WEIGHTS)
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.splitlines() == [f"vidseg: error: {tiny_coco / 'val2014' / 'c.jpg'} is 80x60 but {path} gives "
                                     "64x48 (width x height), which its masks are drawn at; put the picture that "
                                     "was annotated there, or correct its width and height in the file"]


class _FixedModel:
    """A model whose detect() returns, for the k-th image it is given, detections[k]: a list
    of (y1, x1, y2, x2, class id, score) boxes, each filled as its mask."""

    class config:
        BATCH_SIZE = 1

    def __init__(self, detections):
        self.detections = iter(detections)

    def detect(self, images, verbose=0):
        out = []
        for image in images:
            boxes = next(self.detections)
            masks = np.zeros(image.shape[:2] + (len(boxes),), bool)
            for k, (y1, x1, y2, x2, _, _) in enumerate(boxes):
                masks[y1:y2, x1:x2, k] = True
            out.append({"rois": np.array([b[:4] for b in boxes], np.int32).reshape(-1, 4),
                        "class_ids": np.array([b[4] for b in boxes], np.int32),
                        "scores": np.array([b[5] for b in boxes], np.float32), "masks": masks})
        return out


def test_a_coco_file_is_scored_against_its_own_annotations_as_cocoeval_on_the_file(tmp_path):
    """The ground truth was rebuilt from rasterised masks: a 40x40 square the file says is of
    area 900 (small) counted as medium, a sliver that rasterises to no pixel was left out, and
    every box was the mask's. vidseg's table now equals COCOeval on the file itself."""
    import copy

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    height, width = 96, 128
    (tmp_path / "images").mkdir()
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(tmp_path / "images" / name), np.zeros((height, width, 3), np.uint8))
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": _square(10, 10, 40), "area": 900.0,
         "bbox": [10, 10, 40, 40], "iscrowd": 0},
        {"id": 2, "image_id": 2, "category_id": 1, "segmentation": _square(60, 20, 40), "area": 1600.0,
         "bbox": [60, 20, 40, 40], "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 1, "segmentation": _square(5, 5, 0.4), "area": 0.16,
         "bbox": [5, 5, 0.4, 0.4], "iscrowd": 0},
        {"id": 4, "image_id": 2, "category_id": 1, "segmentation": _square(10, 60, 30), "area": 900.0,
         "bbox": [10, 60, 30, 30], "iscrowd": 1},
    ]
    annotation_file = tmp_path / "instances.json"
    annotation_file.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "height": height, "width": width},
                   {"id": 2, "file_name": "b.png", "height": height, "width": width}],
        "annotations": annotations, "categories": [{"id": 1, "name": "box"}]}))
    ds = CocoDataset()
    ds.load_coco_file(annotation_file, tmp_path / "images")
    ds.prepare()
    detections = [[(10, 10, 50, 50, 1, 0.9), (60, 70, 90, 120, 1, 0.5)],
                  [(24, 60, 64, 96, 1, 0.8), (60, 10, 90, 40, 1, 0.7), (2, 2, 9, 9, 1, 0.3)]]

    report = coco_sample.evaluate_dataset(_FixedModel(detections), ds)

    results, _, _ = coco_sample.predict_coco_results(_FixedModel(detections), ds)
    for eval_type in ("bbox", "segm"):
        truth = COCO(str(annotation_file))
        cocoeval = COCOeval(truth, truth.loadRes(copy.deepcopy(results)), eval_type)
        cocoeval.evaluate()
        cocoeval.accumulate()
        cocoeval.summarize()
        assert list(report[eval_type].values()) == pytest.approx(list(cocoeval.stats[:6])), eval_type
        assert report[eval_type]["APs"] > -1  # the file's small square is scored as small
