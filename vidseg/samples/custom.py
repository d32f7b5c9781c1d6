"""Datasets annotated with VGG Image Annotator (VIA), as the seeds' balloon/pikachu samples.

Layout (one folder per subset, images beside the VIA JSON export)::

    DATASET/train/via_region_data.json  DATASET/train/*.jpg
    DATASET/val/via_region_data.json    DATASET/val/*.jpg

The JSON file is `via_region_data.json` or, failing that, the only `*.json` in the folder.
Accepted exports: VIA 1.x (`regions` is a dict), VIA 2.x (`regions` is a list) and a VIA 2.x
project file (`_via_img_metadata`). Regions: polygon, polyline (closed), rect, circle, ellipse.
Each region's class is either one fixed name (`class_name=`) or read from a region
attribute (`attribute=`: a text value, or the ticked option of a checkbox/dropdown).
Images without regions are kept and give empty masks.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np

from mrcnn.config import Config
from vidseg.errors import InputError
from vidseg.samples.file_dataset import FileDataset, image_size

SOURCE = "via"
REGION_SHAPES = ("polygon", "polyline", "rect", "circle", "ellipse")


class CustomConfig(Config):
    """matterport's balloon configuration; set NUM_CLASSES to 1 + the dataset's classes."""

    NAME = "custom"
    IMAGES_PER_GPU = 2
    NUM_CLASSES = 1 + 1
    STEPS_PER_EPOCH = 100
    DETECTION_MIN_CONFIDENCE = 0.9


def find_via_json(folder):
    """The VIA export of a subset folder (see module docstring). Raises InputError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"dataset folder not found: {folder} (expected DATASET/train and DATASET/val "
                         "with a VIA JSON export in each)")
    preferred = folder / "via_region_data.json"
    if preferred.is_file():
        return preferred
    if preferred.is_dir():
        raise InputError(f"{preferred} is a folder; the VIA export must be a JSON file of that name")
    candidates = sorted(p for p in folder.glob("*.json") if p.is_file())
    if len(candidates) != 1:
        found = ", ".join(p.name for p in candidates) or "none"
        raise InputError(f"{folder}: expected via_region_data.json or exactly one VIA .json export "
                         f"(found {found})")
    return candidates[0]


def read_via(path):
    """Image entries of a VIA 1.x/2.x export or 2.x project: list of dicts with
    "filename" and "regions" (a list of {"shape_attributes", "region_attributes"}).
    Raises InputError for a file that is not one, saying what is wrong."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes())
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a readable VIA JSON file (not UTF-8 text); save it as UTF-8") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not a readable VIA JSON file ({e.msg}: line {e.lineno} column {e.colno}); "
                         "export from VIA with Annotation > Export as JSON") from None
    if isinstance(data, dict) and "_via_img_metadata" in data:
        data = data["_via_img_metadata"]
    if isinstance(data, dict) and {"images", "annotations"} <= data.keys():
        raise InputError(f"{path}: not a VIA export: it is a COCO instances file; use --kind coco")
    if not isinstance(data, dict) or not all(isinstance(v, dict) and "filename" in v for v in data.values()):
        raise InputError(f"{path}: not a VIA export (expected an object of images with "
                         "'filename' and 'regions'); export from VIA with Annotation > Export as JSON")
    entries = []
    for entry in data.values():
        regions = entry.get("regions") or []
        if isinstance(regions, dict):  # VIA 1.x: {"0": region, "1": region, ...}
            regions = [regions[k] for k in sorted(regions, key=lambda k: int(k) if str(k).isdigit() else k)]
        if not isinstance(entry["filename"], str) or not isinstance(regions, list) or not all(
                isinstance(r, dict) and isinstance(r.get("shape_attributes") or {}, dict)
                and isinstance(r.get("region_attributes") or {}, dict) for r in regions):
            raise InputError(f"{path}: image {entry['filename']!r} is not a VIA entry (a file name and a list of "
                             "regions, each with shape_attributes and region_attributes objects); export from VIA "
                             "with Annotation > Export as JSON")
        entries.append({"filename": entry["filename"], "regions": regions})
    return entries


def region_class(region, attribute, where):
    """Class name of a region from its `attribute` (text, or the ticked option of a
    checkbox/dropdown). Raises InputError naming `where` when it is missing or ambiguous."""
    value = (region.get("region_attributes") or {}).get(attribute)
    if isinstance(value, dict):
        ticked = [k for k, v in value.items() if v]
        value = ticked[0] if len(ticked) == 1 else None
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where}: region attribute {attribute!r} is missing or not one class name; "
                         "fix the annotation or give one class name for all regions")
    return value.strip()


def region_mask(shape, height, width, where=""):
    """Rasterise one VIA `shape_attributes` dict to bool [height, width] (clipped to the image).

    A vertex (x, y) is the centre of pixel (x, y), and pixels the outline passes through are
    included (OpenCV). matterport's `skimage.draw.polygon` fills the same axis-aligned
    rectangles (a 10..30 x 5..25 polygon is 21x21 pixels in both) but leaves out some pixels
    along slanted edges (a triangle of 756 pixels here is 726 there).
    """
    mask = np.zeros((height, width), np.uint8)
    name = shape.get("name")
    try:
        if name in ("polygon", "polyline"):
            points = np.stack([shape["all_points_x"], shape["all_points_y"]], axis=1).astype(np.float64)
            cv2.fillPoly(mask, [np.round(points * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
        elif name == "rect":
            x, y = float(shape["x"]), float(shape["y"])
            x1, y1 = max(0, int(round(x))), max(0, int(round(y)))
            x2, y2 = int(round(x + float(shape["width"]))), int(round(y + float(shape["height"])))
            mask[y1:max(y1, y2), x1:max(x1, x2)] = 1
        elif name == "circle":
            cv2.circle(mask, _fixed(shape["cx"], shape["cy"]), int(round(float(shape["r"]) * 16)), 1,
                       -1, cv2.LINE_8, 4)
        elif name == "ellipse":
            angle = math.degrees(float(shape.get("theta", 0.0)))
            axes = (int(round(float(shape["rx"]) * 16)), int(round(float(shape["ry"]) * 16)))
            cv2.ellipse(mask, _fixed(shape["cx"], shape["cy"]), axes, angle, 0, 360, 1, -1, cv2.LINE_8, 4)
        else:
            raise InputError(f"{where}: region shape {name!r} has no area; use one of "
                             f"{', '.join(REGION_SHAPES)}")
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{where}: malformed {name} region ({e!r})") from None
    return mask.astype(bool)


def _fixed(x, y):
    """A point in OpenCV's 4-bit fixed point (shift=4)."""
    return int(round(float(x) * 16)), int(round(float(y) * 16))


class ViaDataset(FileDataset):
    """A VIA-annotated subset. Call `load_via(dataset_dir, subset, ...)`, then `prepare()`."""

    def load_via(self, dataset_dir, subset, class_name=None, attribute=None, class_names=None):
        """Register the images of DATASET/<subset>.

        class_name: one class for every region; or attribute: the region attribute holding
        each region's class. class_names: the class order (ids 1..); by default the sorted
        names found in all subsets of dataset_dir, so train and val share ids.
        Raises InputError for anything wrong with the files or annotations.
        """
        if (class_name is None) == (attribute is None):
            raise InputError("give either one class name for all regions or the region attribute "
                             "that holds each region's class")
        dataset_dir = Path(dataset_dir)
        if class_names is None:
            class_names = [class_name] if class_name else via_class_names(dataset_dir, attribute)
        for i, name in enumerate(class_names, start=1):
            self.add_class(SOURCE, i, name)
        folder = dataset_dir / subset
        for entry in read_via(find_via_json(folder)):
            path = folder / entry["filename"]
            if not path.is_file():
                raise InputError(f"image not found: {path} (listed in the VIA file of {folder})")
            labels = []
            for k, region in enumerate(entry["regions"]):
                # a 1x1 raster checks its shape and numbers now, before any training starts
                region_mask(region.get("shape_attributes") or {}, 1, 1, f"{path.name} region {k}")
                name = class_name or region_class(region, attribute, f"{path.name} region {k}")
                if name not in class_names:
                    raise InputError(f"{path.name} region {k}: class {name!r} is not one of {class_names}")
                labels.append(class_names.index(name) + 1)
            self.add_image(SOURCE, image_id=entry["filename"], path=str(path),
                           regions=[r.get("shape_attributes") or {} for r in entry["regions"]],
                           class_ids=labels)

    def load_mask(self, image_id):
        """(bool [H, W, N], int32 [N]); N = 0 for an image without regions."""
        info = self.image_info[image_id]
        if info["source"] != SOURCE:
            return super().load_mask(image_id)
        height, width = image_size(info["path"])
        masks = np.zeros((height, width, len(info["regions"])), bool)
        for k, shape in enumerate(info["regions"]):
            masks[:, :, k] = region_mask(shape, height, width, f"{Path(info['path']).name} region {k}")
        return masks, np.array(info["class_ids"], np.int32)

    def has_instances(self, image_id):
        """Whether the image has a region (every region has a class)."""
        info = self.image_info[image_id]
        return bool(info["class_ids"]) if info["source"] == SOURCE else super().has_instances(image_id)

    def image_reference(self, image_id):
        """The image's path."""
        return self.image_info[image_id]["path"]


def via_class_names(dataset_dir, attribute):
    """Sorted class names found under `attribute` in every subset folder of dataset_dir.
    InputError when the validation set has a class the training set has not (a model cannot
    learn it; a typo, "Box" for "box", is the usual cause)."""
    found = {}
    folders = [f for f in sorted(Path(dataset_dir).iterdir()) if f.is_dir()] if Path(dataset_dir).is_dir() else []
    for folder in folders:
        try:
            entries = read_via(find_via_json(folder))
        except InputError:
            continue  # not a subset folder
        found[folder.name] = {region_class(region, attribute, f"{folder.name}/{entry['filename']} region {k}")
                              for entry in entries for k, region in enumerate(entry["regions"])}
    names = set().union(*found.values())
    if not names:
        raise InputError(f"{dataset_dir}: no region has the attribute {attribute!r}")
    unlearnt = sorted(found.get("val", set()) - found.get("train", names))
    if unlearnt:
        raise InputError(f"{dataset_dir}: the validation set has regions of {', '.join(map(repr, unlearnt))}, which "
                         "the training set has none of; fix the names or annotate some in train")
    return sorted(names)


def load_via_datasets(dataset_dir, class_name=None, attribute=None, subsets=("train", "val"), class_order=None):
    """Prepared ViaDatasets for each subset, sharing one class list: the sorted names, or
    `class_order` when it holds the same names."""
    class_names = [class_name] if class_name else via_class_names(dataset_dir, attribute)
    if class_order is not None and sorted(class_order) == sorted(class_names):
        class_names = list(class_order)
    datasets = []
    for subset in subsets:
        ds = ViaDataset()
        ds.load_via(dataset_dir, subset, class_name=class_name, attribute=attribute, class_names=class_names)
        ds.prepare()
        datasets.append(ds)
    return datasets
