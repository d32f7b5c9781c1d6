"""Benchmark-only: is XLA (jit_compile=True) worth it on the static part of the graph?

    /work/venv/bin/python docs/benchmarks/xla_backbone.py

Times input_image -> P2..P6 (ResNet-50 + FPN, 512x512, batch 1) as a plain tf.function and
with jit_compile=True, alternated, in CPU seconds (medians of 3 after a warm-up).
"""
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from mrcnn.profile import _median_seconds, _model  # noqa: E402

model = _model("resnet50", 512, 1)
km = model.keras_model
backbone_fpn = keras.Model(km.inputs[0], [km.get_layer(n).output for n in ("fpn_p2", "fpn_p3", "fpn_p4", "fpn_p5", "fpn_p6")])
x = tf.constant(np.random.default_rng(0).standard_normal((1, 512, 512, 3)).astype(np.float32) * 50)
functions = {"plain": tf.function(backbone_fpn), "xla": tf.function(backbone_fpn, jit_compile=True)}
row = {}
for run in (1, 2):
    for name, f in functions.items():
        row[f"{name}_{run}"] = _median_seconds(lambda: [t.numpy() for t in f(x)], 3, time.process_time)
print(json.dumps({"part": "backbone+fpn R50 512 b1, CPU s", **row}))
