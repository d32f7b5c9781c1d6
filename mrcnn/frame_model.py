"""Mask R-CNN as a `vidseg.detections.FrameModel`: a batch of uint8 RGB frames in,
one `Detections` per frame out (boxes in frame pixels, 28x28 mask probabilities).

The architecture is read from the weights file itself (backbone, widths, class count);
a JSON file beside it (`<weights stem>.json`, the "sidecar": `vidseg train` writes one beside
each checkpoint, see `mrcnn.weights.write_sidecar`) may add config overrides and class names:

    {"config": {"RPN_ANCHOR_SCALES": [8, 16, 32, 64, 128], "IMAGE_MAX_DIM": 128, ...},
     "class_names": ["BG", "square", "circle", "triangle"], "batch_size": 4}

81-class files without names get the COCO names. weights=None uses the shipped model
`vidseg/models/shapes.h5` (+ `shapes.json`).
"""
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: no C++ info/warning spam

import h5py  # noqa: E402
import numpy as np  # noqa: E402

from mrcnn import weights as weightslib  # noqa: E402
from mrcnn.config import Config  # noqa: E402
from mrcnn.utils import not_hdf5  # noqa: E402
from vidseg.detections import Detections  # noqa: E402
from vidseg.errors import InputError  # noqa: E402

SHIPPED_WEIGHTS = Path(__file__).resolve().parent.parent / "vidseg" / "models" / "shapes.h5"
COCO_CLASS_NAMES = Path(__file__).resolve().parent / "coco_class_names.json"


def _bias_size(group, layer):
    """Length of `layer`'s bias in an open weights file (None when the layer is absent)."""
    if layer not in group:
        return None
    names = [n.decode("utf8") if isinstance(n, bytes) else n for n in group[layer].attrs["weight_names"]]
    bias = [n for n in names if n.endswith("bias:0")]
    return int(group[layer][bias[-1]].shape[0]) if bias else None


def architecture_from_file(path):
    """Config fields that the weight shapes determine: {BACKBONE, BACKBONE_WIDTH (resnet18),
    NUM_CLASSES, TOP_DOWN_PYRAMID_SIZE, RPN_CONV_SIZE, FPN_CLASSIF_FC_LAYERS_SIZE,
    MASK_HEAD_CONV_SIZE}; raises InputError for a file that is not Mask R-CNN weights."""
    problem = not_hdf5(path)
    if problem:
        raise InputError(f"{path} {problem}")
    f = h5py.File(path, "r")
    try:
        with f, weightslib.readable(path):
            group = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
            names = set(group.keys())
            if "mrcnn_class_logits" not in names or "conv1" not in names:
                raise InputError(f"{path} is not a Mask R-CNN weights file (no mrcnn_class_logits/conv1 layers)")
            if "res4w_branch2a" in names:
                arch = {"BACKBONE": "resnet101"}
            elif "res4f_branch2a" in names:
                arch = {"BACKBONE": "resnet50"}
            elif "res2a_branch2c" not in names:
                arch = {"BACKBONE": "resnet18", "BACKBONE_WIDTH": _bias_size(group, "conv1") / 64}
            else:
                raise InputError(f"{path}: unrecognised backbone; pass backbone=resnet50|resnet101|resnet18")
            sizes = {"NUM_CLASSES": "mrcnn_class_logits", "TOP_DOWN_PYRAMID_SIZE": "fpn_c5p5",
                     "FPN_CLASSIF_FC_LAYERS_SIZE": "mrcnn_class_conv1", "MASK_HEAD_CONV_SIZE": "mrcnn_mask_conv1"}
            arch.update({k: _bias_size(group, layer) for k, layer in sizes.items()})
            rpn = group.get("rpn_model")
            if rpn is not None and "rpn_conv_shared" in rpn:
                arch["RPN_CONV_SIZE"] = int(rpn["rpn_conv_shared"]["bias:0"].shape[0])
            return {k: v for k, v in arch.items() if v is not None}
    except weightslib.WeightsError as e:
        raise InputError(str(e)) from None


def _read_text(path, what):
    """The text of a UTF-8 file (a byte-order mark is allowed); InputError when it is not UTF-8."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{what} {path} is not UTF-8 text (UTF-16?); save it as UTF-8") from None


def read_sidecar(weights):
    """The sidecar `<weights stem>.json` of a weights file (see the module docstring) as
    {"config": {FIELD: value} (MEAN_PIXEL and the STD_DEVs as arrays), "class_names": [str] or
    None, "batch_size": int or None, "training": {"layers": str, "learning_rate": float,
    "steps_per_epoch": int, "validation_steps": int} as a `vidseg train` checkpoint's run
    trained, else {}}; empty when there is none. Raises InputError when it is not such a JSON
    object."""
    path = Path(weightslib.sidecar_path(weights))
    meta = {"config": {}, "class_names": None, "batch_size": None, "training": {}}
    if not path.is_file():
        return meta
    fix = f"fix it, or move it away to use {Path(weights).name} without it"
    try:
        found = json.loads(_read_text(path, "sidecar"))
    except ValueError as e:
        raise InputError(f"sidecar {path} is not valid JSON ({e}); {fix}") from None
    if not isinstance(found, dict):
        raise InputError(f'sidecar {path} holds a JSON {type(found).__name__}, not an object like '
                         f'{{"config": {{...}}, "class_names": ["BG", ...]}}; {fix}')
    meta.update(found)
    config, names, batch = meta["config"], meta["class_names"], meta["batch_size"]
    if not isinstance(config, dict):
        raise InputError(f'sidecar {path}: "config" must be an object of Config fields such as "IMAGE_MAX_DIM"; {fix}')
    unknown = [k for k in config if not (k.isupper() and hasattr(Config, k))]
    if unknown:
        raise InputError(f"sidecar {path}: unknown config field(s) {', '.join(unknown)}; {fix}")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise InputError(f'sidecar {path}: "class_names" must be a list of names, "BG" first; {fix}')
    if names is not None and (problem := class_names_problem(names)):
        raise InputError(f'sidecar {path}: "class_names": {problem}; {fix}')
    for key, value in config.items():
        problem = _config_value_problem(key, value, config)
        if problem:
            raise InputError(f"sidecar {path}: {key} {problem}, got {value!r}; {fix}")
    if batch is not None and (type(batch) is not int or batch < 1):
        raise InputError(f'sidecar {path}: "batch_size" must be a positive whole number; {fix}')
    problem = _training_problem(meta["training"])
    if problem:
        raise InputError(f'sidecar {path}: "training" {problem}; {fix}')
    meta["config"] = {k: np.array(v) if k in ("MEAN_PIXEL", "RPN_BBOX_STD_DEV", "BBOX_STD_DEV") else v
                      for k, v in config.items()}
    return meta


def _training_problem(training):
    """What is wrong with a sidecar's "training" object, or None."""
    kinds = {"layers": str, "learning_rate": (int, float), "steps_per_epoch": int, "validation_steps": int}
    if not isinstance(training, dict):
        return 'must be an object like {"layers": "heads", "learning_rate": 0.001}'
    for key, value in training.items():
        if key not in kinds:
            return f"has an unknown field {key!r}"
        if not isinstance(value, kinds[key]) or isinstance(value, bool) or (key != "layers" and not value > 0):
            return f"{key} must be {'text' if key == 'layers' else 'a positive number'}, got {value!r}"
    return None


def _config_value_problem(key, value, config):
    """What is wrong with a sidecar's config value, or None: of the kind of the Config default
    (a number, text, a list, true/false), IMAGE_MAX_DIM a multiple of 64, and one
    RPN_ANCHOR_SCALES entry per BACKBONE_STRIDES entry."""
    default = getattr(Config, key)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            return "must be true or false"
    elif isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or isinstance(default, int) and value != int(value):
            return f"must be a {'whole ' if isinstance(default, int) else ''}number"
    elif isinstance(default, str):
        if not isinstance(value, str):
            return "must be text"
    elif isinstance(default, (list, tuple, np.ndarray)) and not isinstance(value, list):
        return "must be a list"
    if key == "IMAGE_MAX_DIM":
        return _max_dim_problem(value)
    strides = config.get("BACKBONE_STRIDES", Config.BACKBONE_STRIDES)
    if key == "RPN_ANCHOR_SCALES" and len(value) != len(strides):
        return f"needs one scale per backbone stride ({len(strides)})"
    return None


def _max_dim_problem(value):
    """What is wrong with an IMAGE_MAX_DIM (a sidecar's or --max-dim), or None."""
    return "must be a positive multiple of 64, such as 512 or 1024" if value <= 0 or value % 64 else None


def class_names_problem(names):
    """What is wrong with a list of class names, or None: "BG" first, then one distinct name
    per class (without BG first every label would be the next class's)."""
    if not names or names[0] != "BG":
        return f"the first class name must be BG (the background), got {names[0] if names else 'none'!r}"
    twice = [name for i, name in enumerate(names) if name in names[:i]]
    return f"{twice[0]!r} is named twice; give each class its own name" if twice else None


def _read_class_names(class_names):
    """A list, or a file: JSON list of names or one name per line, "BG" first (checked)."""
    if isinstance(class_names, (str, os.PathLike)):
        path = Path(class_names)
        if not path.is_file():
            raise InputError(f"class names file not found: {path}")
        text = _read_text(path, "class names file")
        try:
            names = json.loads(text)
        except ValueError:
            names = None
        if isinstance(names, list) and not all(isinstance(n, str) for n in names):
            raise InputError(f"class names file {path}: a JSON list must hold names only, like [\"BG\", \"cat\"]")
        if not isinstance(names, list):
            names = [line.strip() for line in text.splitlines() if line.strip()]
        if not names:
            raise InputError(f"class names file {path} is empty; give one name per line, BG first, or a JSON list")
        if problem := class_names_problem(names):
            raise InputError(f"class names file {path}: {problem}")
        return names
    names = [str(n) for n in class_names]
    if problem := class_names_problem(names):
        raise InputError(f"class_names: {problem}")
    return names


class MaskRCNNFrameModel:
    """FrameModel running Mask R-CNN with one compiled function for its batch and input size.

    weights: path of an .h5 (matterport's layout or a vidseg checkpoint); None = shipped model.
    batch_size: frames per call (short batches are padded); default: the sidecar's
        "batch_size" (the shipped model: 4, cheaper per frame than 1), else 1.
    min_confidence: DETECTION_MIN_CONFIDENCE; max_dim: IMAGE_MAX_DIM (multiple of 64);
    backbone: the backbone the file must hold (it is read from the file; another is an error);
    class_names: list or file path ("BG" first).
    """

    def __init__(self, weights=None, batch_size=None, min_confidence=None, max_dim=None, backbone=None,
                 class_names=None):
        from mrcnn import model as modellib  # imports TensorFlow

        weights = Path(weights) if weights is not None else SHIPPED_WEIGHTS
        if not weights.is_file():
            if weights == SHIPPED_WEIGHTS:
                raise InputError(f"the shipped model {SHIPPED_WEIGHTS} is missing; reinstall vidseg "
                                 "or pass --weights FILE")
            raise InputError(f"weights file not found: {weights}")
        overrides = architecture_from_file(weights)
        if backbone is not None and backbone != overrides["BACKBONE"]:
            raise InputError(f"{weights} holds a {overrides['BACKBONE']} backbone, not {backbone}: "
                             "leave out --backbone (the file says which)")
        meta = read_sidecar(weights)
        overrides.update(meta["config"])
        names, names_from = meta["class_names"], f"sidecar {weightslib.sidecar_path(weights)}"
        batch_size = batch_size or meta["batch_size"]
        if min_confidence is not None:
            overrides["DETECTION_MIN_CONFIDENCE"] = float(min_confidence)
        if max_dim is not None:
            if problem := _max_dim_problem(int(max_dim)):
                raise InputError(f"max dim (--max-dim) {problem}, got {max_dim}")
            overrides["IMAGE_MAX_DIM"] = int(max_dim)
            overrides["IMAGE_MIN_DIM"] = min(int(max_dim), overrides.get("IMAGE_MIN_DIM", Config.IMAGE_MIN_DIM))
        overrides.update(NAME="vidseg", GPU_COUNT=1, IMAGES_PER_GPU=int(batch_size or 1))
        self.config = type("FrameModelConfig", (Config,), overrides)()

        if class_names is not None:
            names = _read_class_names(class_names)
            names_from = f"class names file {class_names}" if isinstance(class_names, (str, os.PathLike)) \
                else "class_names"
        elif names is None and self.config.NUM_CLASSES == 81:
            names = json.loads(COCO_CLASS_NAMES.read_text(encoding="utf8"))["class_names"]
        if names is None:
            sidecar = weightslib.sidecar_path(weights)
            raise InputError(f"{weights} has {self.config.NUM_CLASSES} classes but no class names; a checkpoint of "
                             f"`vidseg train` needs its sidecar {sidecar} beside it (its class names and the settings "
                             "it was trained with: copy it along); for other weights give --classes FILE (one name "
                             f'per line, \'BG\' first) or write {sidecar} holding {{"class_names": ["BG", ...]}}')
        if len(names) != self.config.NUM_CLASSES:
            raise InputError(f"{len(names)} class names in {names_from} but {weights} has "
                             f"{self.config.NUM_CLASSES} classes (count 'BG' as the first)")
        self.class_names = names
        self.batch_size = self.config.BATCH_SIZE
        # "square" mode shrinks every larger frame to this long side (vidseg.detections.FrameModel)
        self.input_max_dim = int(self.config.IMAGE_MAX_DIM) if self.config.IMAGE_RESIZE_MODE == "square" else None

        self.model = modellib.MaskRCNN("inference", self.config, model_dir=os.devnull)
        try:
            self.model.load_weights(str(weights), by_name=False)
        except weightslib.WeightsError as e:
            raise InputError(str(e).replace(weightslib.BY_NAME_HINT, "")) from None
        self.warm_up()

    def warm_up(self):
        """Compile and run once on a blank batch so the first real frames are not slow."""
        side = int(self.config.IMAGE_SHAPE[0])
        self([np.zeros((side, side, 3), np.uint8)] * self.batch_size)

    def profile_parts(self, frames, repeats=3):
        """Seconds per batch in each part of inference on these frames (see
        `mrcnn.profile.profile_parts`): mold, backbone, fpn, rpn, proposals, roi_align,
        classifier, detection, mask_head, post, total, and the mean number of detections."""
        return self.model.profile_parts(list(frames)[:self.batch_size], repeats)

    def __call__(self, frames):
        """frames: uint8 RGB [H, W, 3] each (at most batch_size; sizes may differ).

        Returns one Detections per frame: boxes float32 [N, 4] (y1, x1, y2, x2) frame pixels,
        integers as in matterport's `rois`; class_ids int32; scores float32 descending;
        masks float32 [N, 28, 28] probabilities of the detection's class inside its box.
        """
        if not frames:
            return []
        molded, metas, windows = self.model.mold_inputs(frames)
        results = []
        for frame, mold, window, (det, masks) in zip(frames, molded, windows,
                                                      self.model.infer_molded(molded, metas)):
            boxes, class_ids, scores, masks28 = self.model.unmold_boxes(det, masks, frame.shape, mold.shape, window)
            results.append(Detections(boxes.astype(np.float32), class_ids, scores,
                                      masks28.astype(np.float32)))
        return results
