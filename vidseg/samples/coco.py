"""COCO datasets and COCO-style evaluation (matterport's samples/coco/coco.py, without downloads).

- `CocoDataset.load_coco(dataset_dir, subset, year)` reads matterport's layout
  (`DATASET/annotations/instances_<subset><year>.json`, images in `DATASET/<subset><year>/`);
  `load_coco_file(annotation_file, image_dir)` reads any COCO instances JSON. Crowd
  annotations get negative class ids; unlike matterport, images without annotations are kept
  when all classes are loaded (they matter for evaluation: detections there are false positives).
- `build_coco_results`, `predict_coco_results`, `coco_ap_table` and `evaluate_coco` run a model
  and pycocotools' COCOeval and return the AP table as a dict.
- `dataset_to_coco(dataset)` turns any `utils.Dataset` (shapes, VIA, …) into in-memory COCO
  ground truth, so every dataset is evaluated the same way (a COCO file by its own annotations,
  as COCOeval on the file scores it); `detections_file_results` reads
  a `vidseg file --detections` file as COCO results, to score a video against its truth.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import time

import numpy as np
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mrcnn import utils
from mrcnn.config import Config
from vidseg.errors import InputError
from vidseg.samples.file_dataset import FileDataset, image_header

DEFAULT_DATASET_YEAR = "2014"
AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


class CocoConfig(Config):
    """matterport's COCO training configuration."""

    NAME = "coco"
    IMAGES_PER_GPU = 2
    NUM_CLASSES = 1 + 80


def _quiet(verbose):
    """Silence pycocotools' prints unless verbose."""
    return contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())


def read_coco(annotation_file, verbose=False):
    """pycocotools COCO for an instances JSON file. Raises InputError if missing or malformed
    (checked here: pycocotools fails on a wrong file with a KeyError or TypeError from inside)."""
    if os.path.isdir(annotation_file):
        raise InputError(f"{annotation_file} is a folder; the COCO annotations must be a JSON file of that name")
    if not os.path.isfile(annotation_file):
        raise InputError(f"COCO annotation file not found: {annotation_file}")
    with open(annotation_file, "rb") as f:
        raw = f.read()
    if not raw.strip():
        raise InputError(f"{annotation_file} is empty; give a COCO instances file")
    try:
        data = json.loads(raw)
    except UnicodeDecodeError:
        raise InputError(f"{annotation_file} is not UTF-8 text; save it as UTF-8 JSON") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{annotation_file} is not JSON ({e.msg}: line {e.lineno} column {e.colno}); "
                         "give a COCO instances file") from None
    problem = coco_problem(data)
    if problem:
        raise InputError(f"{annotation_file} is not a COCO instances file: {problem}")
    coco = COCO()
    coco.dataset = data
    with _quiet(verbose):
        coco.createIndex()
    return coco


# what each entry of a COCO instances file must have, for loading and scoring
COCO_FIELDS = {"images": ("id", "file_name", "height", "width"), "annotations": ("id", "image_id", "category_id"),
               "categories": ("id", "name")}


def coco_problem(data) -> str | None:
    """What keeps `data` (parsed JSON) from being a COCO instances file, and what to do; None
    when it is one."""
    if isinstance(data, dict) and ("_via_img_metadata" in data or data and all(
            isinstance(v, dict) and "filename" in v for v in data.values())):
        return "it is a VGG Image Annotator export; use --kind via"
    if not isinstance(data, dict):
        found = "a list (a detections or results file?)" if isinstance(data, list) else json_kind(data)
        return f"expected an object with images, annotations and categories, found {found}"
    for key, fields in COCO_FIELDS.items():
        entries = data.get(key)
        if not isinstance(entries, list):
            return f"{key!r} is {'missing' if entries is None else 'not a list'}; give the instances_*.json file"
        for k, entry in enumerate(entries):
            lacking = [f for f in fields if not isinstance(entry, dict) or f not in entry]
            if lacking:
                return f"{key}[{k}] has no {lacking[0]!r}; every entry of {key} needs {', '.join(fields)}"
    for k, image in enumerate(data["images"]):
        if not isinstance(image["file_name"], str) or not all(
                isinstance(image[f], int) and not isinstance(image[f], bool) and image[f] > 0 for f in ("height", "width")):
            return f"images[{k}] needs a file name and a height and width in pixels (positive whole numbers)"
    return None


def json_kind(value) -> str:
    """What a parsed JSON value is, as the user would say it: "a string", "a number", "null"."""
    if isinstance(value, bool):
        return "true or false"
    return {str: "a string", int: "a number", float: "a number", list: "a list", dict: "an object"}.get(
        type(value), "null")


def _has_segmentation(annotation) -> bool:
    """Whether a COCO annotation has a mask pycocotools can rasterise: an RLE, or polygons
    (lists of at least three x, y points)."""
    segmentation = annotation.get("segmentation")
    if isinstance(segmentation, dict):
        return "size" in segmentation and "counts" in segmentation
    return bool(segmentation) and isinstance(segmentation, list) and all(
        isinstance(polygon, list) and len(polygon) >= 6 for polygon in segmentation)


def _size_mismatch(info, height, width):
    """What is wrong, and what to do, when an image `info` of the annotation file is
    width x height pixels upright."""
    stored_height, stored_width, _ = image_header(info["path"])
    turned = ""
    if (stored_height, stored_width) == (info["height"], info["width"]) != (height, width):
        turned = (f" upright (its EXIF orientation turns the stored {stored_width}x{stored_height}; if it was "
                  "annotated unturned, remove the orientation tag)")
    return (f"{info['path']} is {width}x{height}{turned} but {info['annotation_file']} gives "
            f"{info['width']}x{info['height']} (width x height), which its masks are drawn at; put the picture "
            "that was annotated there, or correct its width and height in the file")


class CocoDataset(FileDataset):
    """COCO instances; class ids follow the sorted COCO category ids (1 = person for COCO)."""

    def load_coco(self, dataset_dir, subset, year=DEFAULT_DATASET_YEAR, class_ids=None,
                  class_map=None, return_coco=False, auto_download=False):
        """Register a subset in matterport's layout (see module docstring).

        subset: "train", "val", "minival", "valminusminival" (the last two read images from val).
        Other arguments as `load_coco_file`. Returns the COCO object if return_coco.
        """
        if auto_download:
            raise InputError("downloading COCO is not supported here; fetch the images and "
                             "annotations from cocodataset.org and pass their folder")
        annotation_file = os.path.join(dataset_dir, "annotations", f"instances_{subset}{year}.json")
        if subset in ("minival", "valminusminival"):
            subset = "val"
        image_dir = os.path.join(dataset_dir, f"{subset}{year}")
        coco = self.load_coco_file(annotation_file, image_dir, class_ids=class_ids, class_map=class_map)
        return coco if return_coco else None

    def load_coco_file(self, annotation_file, image_dir, class_ids=None, class_map=None):
        """Register the images and instances of a COCO JSON file whose images are in image_dir.

        class_ids: COCO category ids to load (default all; then images without annotations are
            kept too, otherwise only images showing one of these classes).
        class_map: {category id: category id} merging categories (e.g. {3: 3, 8: 3} makes trucks
            cars); annotations of unmapped categories are dropped.
        Returns the pycocotools COCO object.
        """
        coco = read_coco(annotation_file)
        self.category_map = dict(class_map) if class_map else {c: c for c in coco.getCatIds()}
        all_classes = not class_ids
        class_ids = sorted(set(class_ids or self.category_map.values()))
        if all_classes:
            image_ids = sorted(coco.imgs.keys())
        else:
            sources = [c for c, target in self.category_map.items() if target in class_ids]
            image_ids = sorted({i for c in sources for i in coco.getImgIds(catIds=[c])})
        for i in class_ids:
            self.add_class("coco", i, coco.loadCats(i)[0]["name"])
        wanted = [c for c, target in self.category_map.items() if target in class_ids]
        missing, maskless = [], []
        for i in image_ids:
            img = coco.imgs[i]
            path = os.path.join(image_dir, img["file_name"])
            annotations = coco.loadAnns(coco.getAnnIds(imgIds=[i], catIds=wanted, iscrowd=None))
            missing += [path] if not os.path.isfile(path) else []
            maskless += [a["id"] for a in annotations if not _has_segmentation(a)]
            self.add_image("coco", image_id=i, path=path, width=img["width"], height=img["height"],
                           annotations=annotations, annotation_file=str(annotation_file))
        if missing:
            them = "them" if len(missing) > 1 else "it"
            raise InputError(f"{len(missing)} image{'s' * (len(missing) > 1)} listed in {annotation_file} "
                             f"not found (the first: {missing[0]}); put {them} in {image_dir} or remove {them} "
                             "from the file")
        if maskless:
            raise InputError(f"{len(maskless)} annotation{'s' * (len(maskless) > 1)} in {annotation_file} "
                             f"{'have' if len(maskless) > 1 else 'has'} no segmentation (the first: id {maskless[0]}); "
                             "Mask R-CNN learns and is scored on masks: give each a polygon or RLE, or remove it")
        return coco

    def load_image(self, image_id):
        """uint8 RGB [H, W, 3], upright (EXIF orientation applied, as Detectron2 reads it).
        InputError when H, W are not the annotation file's height and width: the masks are
        drawn at the file's size and would be misplaced."""
        image = super().load_image(image_id)
        info = self.image_info[image_id]
        if info["source"] == "coco" and image.shape[:2] != (info["height"], info["width"]):
            raise InputError(_size_mismatch(info, image.shape[0], image.shape[1]))
        return image

    def load_mask(self, image_id):
        """(bool [H, W, N], int32 [N]); crowd regions have negative class ids (and cover the whole
        image when their mask size disagrees with the image). No instances: ([0,0,0], [0])."""
        image_info = self.image_info[image_id]
        if image_info["source"] != "coco":
            return super().load_mask(image_id)
        instance_masks, class_ids = [], []
        for annotation in image_info["annotations"]:
            category = self.category_map.get(annotation["category_id"])
            class_id = self.class_from_source_map.get(f"coco.{category}", 0)
            if not class_id:
                continue
            m = self.annToMask(annotation, image_info["height"], image_info["width"])
            if m.max() < 1:
                continue  # tiny objects may vanish when rasterised
            if annotation.get("iscrowd"):
                class_id *= -1
                if m.shape[0] != image_info["height"] or m.shape[1] != image_info["width"]:
                    m = np.ones([image_info["height"], image_info["width"]], dtype=bool)
            instance_masks.append(m)
            class_ids.append(class_id)
        if not class_ids:
            return np.zeros((image_info["height"], image_info["width"], 0), bool), np.zeros(0, np.int32)
        return np.stack(instance_masks, axis=2).astype(bool), np.array(class_ids, dtype=np.int32)

    def has_instances(self, image_id):
        """Whether the image has a non-crowd annotation of a loaded class (masks not decoded)."""
        info = self.image_info[image_id]
        if info["source"] != "coco":
            return super().has_instances(image_id)
        loaded = self.class_from_source_map
        return any(not a.get("iscrowd") and f"coco.{self.category_map.get(a['category_id'])}" in loaded
                   for a in info["annotations"])

    def image_reference(self, image_id):
        """The image's page on cocodataset.org."""
        info = self.image_info[image_id]
        if info["source"] == "coco":
            return f"http://cocodataset.org/#explore?id={info['id']}"
        return super().image_reference(image_id)

    def annToRLE(self, ann, height, width):
        """An annotation's segmentation (polygons, uncompressed or compressed RLE) as RLE."""
        segm = ann["segmentation"]
        if isinstance(segm, list):
            return mask_util.merge(mask_util.frPyObjects(segm, height, width))
        if isinstance(segm["counts"], list):
            return mask_util.frPyObjects(segm, height, width)
        return segm

    def annToMask(self, ann, height, width):
        """An annotation's mask: uint8 [H, W] of 0/1."""
        return mask_util.decode(self.annToRLE(ann, height, width))


############################################################
#  Evaluation
############################################################

def coco_image_id(dataset, image_id):
    """The COCO image id of a dataset image: the source id for COCO images, else the index."""
    info = dataset.image_info[image_id]
    return info["id"] if info["source"] == "coco" else int(image_id)


def coco_category_id(dataset, class_id):
    """The COCO category id of a class: the source id for COCO classes, else the class id."""
    info = dataset.class_info[class_id]
    return int(info["id"]) if info["source"] == "coco" else int(class_id)


def build_coco_results(dataset, image_ids, rois, class_ids, scores, masks):
    """COCO result records for the detections of ONE image (matterport's signature).

    image_ids: [coco image id] (one item); rois int [N, (y1, x1, y2, x2)]; class_ids int [N];
    scores float [N]; masks bool/uint8 [H, W, N].
    Returns a list of {"image_id", "category_id", "bbox": [x, y, w, h], "score",
    "segmentation": RLE with str counts} (JSON-ready).
    """
    if rois is None:
        return []
    results = []
    for image_id in image_ids:
        for i in range(rois.shape[0]):
            bbox = [float(v) for v in np.around(rois[i], 1)]
            results.append({
                "image_id": image_id,
                "category_id": coco_category_id(dataset, class_ids[i]),
                "bbox": [bbox[1], bbox[0], bbox[3] - bbox[1], bbox[2] - bbox[0]],
                "score": float(scores[i]),
                "segmentation": utils.mask_to_rle(masks[:, :, i]),
            })
    return results


def predict_coco_results(model, dataset, image_ids=None, limit=0, progress=None):
    """Run `model.detect` over dataset images (in batches of model.config.BATCH_SIZE).

    progress: optional callable(n_done) after each batch (e.g. a tqdm update).
    Returns (results as `build_coco_results`, coco image ids, seconds spent in detect).
    """
    image_ids = list(dataset.image_ids if image_ids is None else image_ids)
    if limit:
        image_ids = image_ids[:limit]
    batch = max(1, int(getattr(getattr(model, "config", None), "BATCH_SIZE", 1)))
    results, t_prediction = [], 0.0
    for start in range(0, len(image_ids), batch):
        ids = image_ids[start:start + batch]
        images = [dataset.load_image(i) for i in ids]
        t = time.perf_counter()
        detections = model.detect(images, verbose=0)
        t_prediction += time.perf_counter() - t
        for image_id, r in zip(ids, detections):
            results.extend(build_coco_results(dataset, [coco_image_id(dataset, image_id)], r["rois"],
                                              r["class_ids"], r["scores"], r["masks"].astype(np.uint8)))
        if progress:
            progress(len(ids))
    return results, [coco_image_id(dataset, i) for i in image_ids], t_prediction


def detections_file_results(path):
    """COCO result records (segmentation and box) of a `--detections` JSON-lines file; the
    image id is the frame number."""
    results = []
    with open(path, encoding="utf8") as f:
        for frame in map(json.loads, f):
            for d in frame["detections"]:
                x1, y1, x2, y2 = d["box"]
                results.append({"image_id": frame["frame"], "category_id": d["class_id"], "score": d["score"],
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "segmentation": d["mask"]})
    return results


def coco_ap_table(coco, results, image_ids=None, eval_type="segm", verbose=False):
    """pycocotools COCOeval of result records against ground truth `coco`.

    eval_type: "bbox" or "segm". image_ids: COCO image ids to evaluate (default all).
    Returns {"AP", "AP50", "AP75", "APs", "APm", "APl"} as floats (-1 where COCO has no
    ground truth of that size). verbose prints pycocotools' summary.
    """
    if eval_type not in ("bbox", "segm"):
        raise ValueError(f"eval_type must be 'bbox' or 'segm', not {eval_type!r}")
    with _quiet(verbose):
        if results:
            coco_results = coco.loadRes(results)
        else:  # pycocotools cannot load an empty result list
            coco_results = COCO()
            coco_results.dataset = {"images": coco.dataset["images"],
                                    "categories": coco.dataset.get("categories", []), "annotations": []}
            coco_results.createIndex()
        coco_eval = COCOeval(coco, coco_results, eval_type)
        if image_ids is not None:
            coco_eval.params.imgIds = list(image_ids)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return {key: float(value) for key, value in zip(AP_KEYS, coco_eval.stats[:6])}


def evaluate_coco(model, dataset, coco, eval_type="bbox", limit=0, image_ids=None, verbose=True):
    """matterport's evaluate_coco: detect on the dataset images and score with COCOeval.

    Returns the AP table of `coco_ap_table`; verbose prints it with the timing like matterport.
    """
    t_start = time.perf_counter()
    results, coco_image_ids, t_prediction = predict_coco_results(model, dataset, image_ids, limit)
    table = coco_ap_table(coco, results, coco_image_ids, eval_type, verbose=verbose)
    if verbose:
        print(f"Prediction time: {t_prediction:.1f} s. Average {t_prediction / max(len(coco_image_ids), 1):.3f} s/image")
        print(f"Total time: {time.perf_counter() - t_start:.1f} s")
    return table


def evaluate_dataset(model, dataset, coco=None, eval_types=("bbox", "segm"), limit=0, progress=None):
    """Detect once on a dataset and score every eval type: what `vidseg evaluate` prints.

    coco: ground truth (default `dataset_to_coco(dataset)`: a COCO file's own annotations, the
    masks of shapes and VIA sets).
    Returns {"images": n, "seconds_per_image": float, "bbox": AP table, "segm": AP table}
    (one AP table per eval type, as `coco_ap_table`).
    """
    image_ids = list(dataset.image_ids)[:limit] if limit else list(dataset.image_ids)
    if coco is None:
        coco = dataset_to_coco(dataset, image_ids)
    results, coco_image_ids, seconds = predict_coco_results(model, dataset, image_ids, progress=progress)
    report = {"images": len(image_ids), "seconds_per_image": seconds / max(len(image_ids), 1)}
    for eval_type in eval_types:
        report[eval_type] = coco_ap_table(coco, results, coco_image_ids, eval_type)
    return report


def format_ap_table(report):
    """The AP tables of `evaluate_dataset` as aligned text, one row per eval type."""
    types = [t for t in ("bbox", "segm") if t in report]
    lines = ["      " + "".join(f"{key:>8}" for key in AP_KEYS)]
    for eval_type in types:
        lines.append(f"{eval_type:<6}" + "".join(f"{report[eval_type][key]:8.3f}" for key in AP_KEYS))
    images = report["images"]
    lines.append(f"{images} image{'s' * (images != 1)}, {report['seconds_per_image']:.3f} s/image in detect")
    return "\n".join(lines)


def dataset_to_coco(dataset, image_ids=None):
    """In-memory COCO ground truth of any prepared `utils.Dataset`, so every dataset is scored
    the same way.

    Images of a COCO file keep that file's own annotations (`_file_truth`), so the AP table is
    COCOeval's on the file; the others' come from `load_mask`: area the pixel count, box the
    mask's, negative class ids crowds. Image ids and category ids follow `coco_image_id` /
    `coco_category_id`. Returns a pycocotools COCO object.
    """
    image_ids = list(dataset.image_ids if image_ids is None else image_ids)
    images, annotations = [], []
    for image_id in image_ids:
        info = dataset.image_info[image_id]
        if info["source"] == "coco":
            height, width = info["height"], info["width"]
            truths = [_file_truth(dataset, a, height, width) for a in info["annotations"]]
        else:
            masks, class_ids = dataset.load_mask(image_id)
            height = info.get("height") or masks.shape[0] or dataset.load_image(image_id).shape[0]
            width = info.get("width") or masks.shape[1] or dataset.load_image(image_id).shape[1]
            truths = _mask_truths(dataset, masks, class_ids)
        coco_id = coco_image_id(dataset, image_id)
        images.append({"id": coco_id, "width": int(width), "height": int(height),
                       "file_name": str(info.get("path") or image_id)})
        annotations += [dict(truth, id=len(annotations) + k, image_id=coco_id) for k, truth in enumerate(truths, 1)]
    categories = [{"id": coco_category_id(dataset, c), "name": dataset.class_names[c]}
                  for c in dataset.class_ids if c != 0]
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": categories}
    with _quiet(False):
        coco.createIndex()
    return coco


def _file_truth(dataset, annotation, height, width):
    """A COCO file's annotation as ground truth: its own segmentation, area, bbox and iscrowd
    (area and bbox computed from the mask when the file leaves them out), its category as the
    CocoDataset maps it. height, width: the image's in the file."""
    truth = {key: annotation[key] for key in ("segmentation", "area", "bbox") if key in annotation}
    if len(truth) < 3:
        rle = dataset.annToRLE(annotation, height, width)
        truth = {"area": float(mask_util.area(rle)), "bbox": mask_util.toBbox(rle).tolist(), **truth}
    return dict(truth, category_id=dataset.category_map[annotation["category_id"]],
                iscrowd=int(annotation.get("iscrowd", 0)))


def _mask_truths(dataset, masks, class_ids):
    """Ground truth (annotations without id and image_id) of bool masks [H, W, N] and int class
    ids [N]: area the pixel count, bbox the mask's, negative class ids crowds."""
    boxes = utils.extract_bboxes(masks) if len(class_ids) else np.zeros((0, 4), int)
    truths = []
    for k, class_id in enumerate(class_ids):
        y1, x1, y2, x2 = (int(v) for v in boxes[k])
        truths.append({"category_id": coco_category_id(dataset, abs(int(class_id))), "iscrowd": int(class_id < 0),
                       "bbox": [x1, y1, x2 - x1, y2 - y1], "area": int(masks[:, :, k].sum()),
                       "segmentation": utils.mask_to_rle(masks[:, :, k])})
    return truths
