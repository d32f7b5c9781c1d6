"""Build a frame model from a spec string, inside the inference process.

    "none"               no inference: every frame gets empty Detections (measures the pipeline)
    "mrcnn"              Mask R-CNN (`mrcnn.frame_model.MaskRCNNFrameModel`); weights=None is the
                         shipped default model
    "pkg.module:factory" a user's or test's model: factory(**model_options) -> FrameModel; its
                         detections below min_confidence are dropped here, whatever it does with it

Only this function imports model code (and so TensorFlow); call it in the infer process.
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Sequence

import numpy as np

from vidseg.detections import Detections, FrameModel
from vidseg.errors import InputError, memory_message


class NoModel:
    """FrameModel that finds nothing (for `--model none`)."""

    class_names = ("BG",)

    def __init__(self, batch_size: int = 1, **_ignored):
        self.batch_size = batch_size

    def __call__(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        return [Detections() for _ in frames]


def check_spec(spec: str) -> str:
    """Validate a model spec without importing it; returns it or raises InputError."""
    if spec in ("none", "mrcnn") or (":" in spec and all(spec.split(":", 1))):
        return spec
    raise InputError(f"unknown model {spec!r}: use 'mrcnn', 'none' or 'package.module:factory'")


def load_frame_model(spec: str, **model_options) -> FrameModel:
    """spec as above; model_options (weights, batch_size, min_confidence, max_dim, backbone,
    class_names) are passed on, leaving out those that are None."""
    check_spec(spec)
    options = {k: v for k, v in model_options.items() if v is not None}
    if spec == "none":
        return NoModel(**options)
    if spec == "mrcnn":
        from mrcnn.frame_model import MaskRCNNFrameModel  # imports TensorFlow

        return MaskRCNNFrameModel(**options)
    module_name, factory_name = spec.split(":", 1)
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # like `python -m`: a plug-in module may sit in the current directory
    try:  # a plug-in's own failure, as it loads or builds, is one line naming it (not a traceback)
        factory = getattr(importlib.import_module(module_name), factory_name)
        model = factory(**options)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - ImportError, SyntaxError, whatever the module raises
        if memory_message(e):  # not the plug-in's fault: the stage says so (vidseg.stages)
            raise
        raise InputError(f"cannot load model {spec!r}: {type(e).__name__}: {e}") from None
    if not (callable(model) and hasattr(model, "class_names")):
        raise InputError(f"model {spec!r} gave a {type(model).__name__}, not a frame model (class_names, "
                         "batch_size and __call__(frames) -> detections; see vidseg.detections.FrameModel)")
    return ScoreFloor(model, options["min_confidence"]) if "min_confidence" in options else model


class ScoreFloor:
    """A plug-in model whose detections scoring below `min_confidence` are dropped here, so
    that --min-confidence means the same whatever the model does with it; every other
    attribute (class_names, batch_size, input_max_dim) is the model's."""

    def __init__(self, model: FrameModel, min_confidence: float):
        self._model, self._floor = model, min_confidence

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def __call__(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        return [d[d.scores >= self._floor] for d in self._model(frames)]
