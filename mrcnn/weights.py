"""Weights I/O in the Keras 2 HDF5 layout of matterport's `mask_rcnn_coco.h5`.

Layout: root attr `layer_names` (every layer, weightless ones too); one group per layer
with attr `weight_names`; dataset `<layer>/<weight_name>`. Inside a TimeDistributed
wrapper the weights carry the wrapper's name (`mrcnn_mask/kernel:0`); the nested
`rpn_model` group holds the six weights of its three convs. Matching is by layer name
and then by position inside the layer, in Keras 2 order (kernel, bias; gamma, beta,
moving_mean, moving_variance) — independent of which layers are frozen.
Our own checkpoints are written in the same layout, so one loader serves both.
A checkpoint's sidecar `<stem>.json` beside it (`write_sidecar`) holds what the weights do
not: the inference settings of the config it was trained with and the class names.
"""
import contextlib
import json
import os
import re

import h5py
import keras
import numpy as np

from mrcnn.utils import not_hdf5

BY_NAME_HINT = "; load with by_name=True to keep their initial values"  # for API users, not the CLI

_ORDER = ["kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance"]
CLASS_SPECIFIC_LAYERS = ["mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask"]


class WeightsError(ValueError):
    """A weights file that cannot be loaded into this model; the message says why and what to do."""


def _leaf_weights(layer, prefix):
    """[(keras2_name, variable)] of one non-wrapper layer, in Keras 2 order."""
    named = [(a, getattr(layer, a, None)) for a in _ORDER]
    named = [(a, v) for a, v in named if isinstance(v, keras.Variable)]
    if len(named) != len(layer.weights):
        named = [(v.name, v) for v in layer.weights]
    return [(f"{prefix}/{a}:0", v) for a, v in named]


def layer_weights(layer):
    """[(keras2_name, variable)] of a top-level layer: unwraps TimeDistributed (weights
    named after the wrapper) and nested models (weights of their layers, in order)."""
    if isinstance(layer, keras.Model):
        return [w for sub in layer.layers for w in layer_weights(sub)]
    if isinstance(layer, keras.layers.TimeDistributed):
        return _leaf_weights(layer.layer, layer.name)
    return _leaf_weights(layer, layer.name)


def weighted_layers(model):
    """{name: [(keras2_name, variable)]} for the model's top-level layers that have weights,
    in model.layers order."""
    return {layer.name: layer_weights(layer) for layer in model.layers if layer.weights}


def manifest(model):
    """The model's weights as SPEC manifests list them:
    [{"layer": name, "weights": [[keras2_name, shape], ...]}] in model.layers order."""
    return [{"layer": name, "weights": [[w, list(v.shape)] for w, v in ws]}
            for name, ws in weighted_layers(model).items()]


def _open_layers(f, path):
    """The group holding `layer_names` (handles a `model_weights` wrapper) and the names."""
    if "layer_names" not in f.attrs and "model_weights" in f:
        f = f["model_weights"]
    if "layer_names" not in f.attrs:
        raise WeightsError(f"{path} is not a Keras 2 weights file (no 'layer_names'); "
                           "use matterport's .h5 or a checkpoint written by vidseg")
    return f, [n.decode("utf8") if isinstance(n, bytes) else str(n) for n in f.attrs["layer_names"]]


def load_weights(model, path, exclude=None, require_all=False):
    """Assign the weights stored in `path` to the model's layers of the same name.

    exclude: layer names to skip. require_all: every weighted model layer (not excluded)
    must be in the file. Nothing is assigned unless every tensor fits.
    Returns the names of the layers that were loaded.
    Raises WeightsError (missing/unreadable file, not a weights file, missing layers,
    weight count or shape mismatch: names the layer, the expected and the found shape).
    """
    path = os.fspath(path)
    exclude = set(exclude or [])
    if not os.path.isfile(path):
        raise WeightsError(f"weights file not found: {path}")
    problem = not_hdf5(path)
    if problem:
        raise WeightsError(f"{path} {problem}")
    f = h5py.File(path, "r")
    with f, readable(path):
        group, file_names = _open_layers(f, path)
        targets = {n: ws for n, ws in weighted_layers(model).items() if n not in exclude}
        if require_all:
            missing = [n for n in targets if n not in set(file_names)]
            if missing:
                raise WeightsError(
                    f"{path} has no weights for {len(missing)} layer(s) of this model "
                    f"(e.g. {', '.join(missing[:3])}){BY_NAME_HINT}")
        assignments, loaded = [], []
        for name in file_names:
            if name not in targets:
                continue
            g = group[name]
            weight_names = [w.decode("utf8") if isinstance(w, bytes) else str(w)
                            for w in g.attrs.get("weight_names", [])]
            variables = targets[name]
            if len(weight_names) != len(variables):
                raise WeightsError(f"layer '{name}': {path} holds {len(weight_names)} weights, "
                                   f"the model has {len(variables)}; pass exclude=['{name}'] to skip it")
            for wname, (_, var) in zip(weight_names, variables):
                value = g[wname]
                if tuple(value.shape) != tuple(var.shape):
                    raise WeightsError(
                        f"layer '{name}' ({wname}): the model expects shape {tuple(var.shape)}, "
                        f"{path} has {tuple(value.shape)}. Set NUM_CLASSES/BACKBONE to match the file, "
                        f"or pass exclude=['{name}'] (a new class count: exclude={CLASS_SPECIFIC_LAYERS})")
                assignments.append((var, value[()]))
            loaded.append(name)
    for var, value in assignments:
        var.assign(np.asarray(value, dtype=var.dtype))
    return loaded


def save_weights(model, path):
    """Write every layer's weights to `path` in the Keras 2 layout (atomically). A failure of
    the file system (full, over the file size limit) is an OSError naming `path` in one line,
    not HDF5's report of it (a RuntimeError or a multi-line OSError quoting an errno)."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    try:
        with _plain_os_errors(path), h5py.File(tmp, "w") as f:
            f.attrs["layer_names"] = np.array([layer.name.encode("utf8") for layer in model.layers], dtype="S")
            f.attrs["backend"] = b"tensorflow"
            f.attrs["keras_version"] = keras.__version__.encode("utf8")
            for layer in model.layers:
                g = f.create_group(layer.name)
                ws = layer_weights(layer) if layer.weights else []
                g.attrs["weight_names"] = np.array([w.encode("utf8") for w, _ in ws], dtype="S")
                for w, v in ws:
                    g.create_dataset(w, data=np.asarray(v))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def readable(path):
    """Inside the block, what h5py raises reading an HDF5 file that opened (overwritten bytes,
    a layer listed but its group gone) is a WeightsError saying the file is damaged."""
    try:
        yield
    except WeightsError:
        raise
    except (KeyError, OSError, RuntimeError, ValueError) as e:
        reason = str(e.args[0] if e.args else type(e).__name__).splitlines()[0]
        raise WeightsError(f"{path} is damaged ({reason}); download or copy it again") from None


@contextlib.contextmanager
def _plain_os_errors(path):
    """HDF5's 'errno = 28, error message = ...' (h5py raises it as RuntimeError or OSError)
    as OSError(errno, strerror, path)."""
    try:
        yield
    except (RuntimeError, OSError) as e:
        code = re.search(r"errno = (\d+)", str(e))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), path) from None


def sidecar_path(path):
    """`<stem>.json` beside a weights file `<stem>.h5`."""
    return os.path.splitext(os.fspath(path))[0] + ".json"


def write_sidecar(path, config, class_names, **extra):
    """Write the sidecar of weights file `path` (atomically, like save_weights):
    {"config": `mrcnn.config.inference_settings(config)`, "class_names": [str, ...]
    ("BG" first), **extra}, the layout `mrcnn.frame_model` reads (as the shipped model's).
    extra: more top-level keys, e.g. the shipped model's "batch_size" for video."""
    from mrcnn.config import inference_settings

    meta = {"config": inference_settings(config), "class_names": [str(n) for n in class_names], **extra}
    target = sidecar_path(path)
    tmp = target + ".tmp"
    try:
        with open(tmp, "w", encoding="utf8") as f:
            f.write(json.dumps(meta, indent=1) + "\n")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
