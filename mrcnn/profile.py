"""Where inference time goes, and seconds per image, for `vidseg bench --profile` and
docs/benchmarks/model.md.

    python -m mrcnn.profile --backbone resnet101 --dim 1024 --batch 1 [--parts] [--weights W]

Each part of the graph runs on its own as a compiled function fed with the previous part's
outputs (image -> C2..C5 -> P2..P6 -> RPN -> proposals -> pooled ROIs -> class/box heads
-> detections -> survivor masks), plus the NumPy pre- and post-processing ("mold": resize,
pad, mean subtraction; "post": boxes to pixels and mask pasting). Each timing is the median
of `repeats` runs after a warm-up run.
"""
import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

PARTS = ["mold", "backbone", "fpn", "rpn", "proposals", "roi_align", "classifier", "detection", "mask_head", "post"]


def _median_seconds(fn, repeats, clock=time.perf_counter):
    fn()  # warm-up (and compile)
    times = []
    for _ in range(repeats):
        t = clock()
        fn()
        times.append(clock() - t)
    return float(np.median(times))


def _stages(km):
    """[(part, input tensors, output tensors)] of the inference graph, in order."""
    layer = km.get_layer
    image, meta, anchors = km.inputs
    c = [layer(n).input for n in ("fpn_c2p2", "fpn_c3p3", "fpn_c4p4", "fpn_c5p5")]
    p = [layer(n).output for n in ("fpn_p2", "fpn_p3", "fpn_p4", "fpn_p5", "fpn_p6")]
    rpn = [layer("rpn_class").output, layer("rpn_bbox").output]
    rois = layer("ROI").output
    pooled = layer("roi_align_classifier").output
    heads = [layer("mrcnn_class").output, layer("mrcnn_bbox").output]
    return [
        ("backbone", [image], c),
        ("fpn", c, p),
        ("rpn", p, rpn),
        ("proposals", rpn + [anchors], [rois]),
        ("roi_align", [rois, meta] + p[:4], [pooled]),
        ("classifier", [pooled], heads),
        ("detection", [rois] + heads + [meta], [layer("mrcnn_detection").output]),
    ]


def profile_parts(model, images, repeats=3, clock=time.perf_counter):
    """model: an inference `MaskRCNN`; images: up to BATCH_SIZE uint8 RGB images;
    clock: time.perf_counter (wall) or time.process_time (CPU seconds of all threads).

    Returns {part: seconds per batch} for PARTS, plus "total" (mold + compiled inference +
    unmold, measured on its own) and "detections" (mean detections per image).
    """
    batch = model.config.BATCH_SIZE
    images = list(images)[:batch]
    molded, metas, windows = model.mold_inputs(images)
    molded = np.concatenate([molded, np.repeat(molded[-1:], batch - len(images), 0)])
    metas = np.concatenate([metas, np.repeat(metas[-1:], batch - len(images), 0)])
    anchors = model.get_anchors(molded[0].shape)
    km = model.keras_model
    values = {id(km.inputs[0]): tf.constant(molded, tf.float32), id(km.inputs[1]): tf.constant(metas, tf.float32),
              id(km.inputs[2]): tf.constant(np.broadcast_to(anchors, (batch,) + anchors.shape))}

    parts = {"mold": _median_seconds(lambda: model.mold_inputs(images), repeats, clock)}
    for part, inputs, outputs in _stages(km):
        stage = tf.function(keras.Model(inputs, outputs))
        args = [values[id(t)] for t in inputs]
        results = tf.nest.flatten(stage(args))
        values.update({id(t): r for t, r in zip(outputs, results)})
        parts[part] = _median_seconds(lambda: [r.numpy() for r in tf.nest.flatten(stage(args))], repeats, clock)

    detections = values[id(km.get_layer("mrcnn_detection").output)]
    feature_maps = [values[id(km.get_layer(n).output)] for n in ("fpn_p2", "fpn_p3", "fpn_p4", "fpn_p5")]
    mask_head = tf.function(model.survivor_masks)
    parts["mask_head"] = _median_seconds(
        lambda: mask_head(detections, values[id(km.inputs[1])], feature_maps).numpy(), repeats, clock)

    raw = model.infer_molded(molded[:len(images)], metas[:len(images)])

    def post():
        for image, mold, window, (det, masks) in zip(images, molded, windows, raw):
            model.unmold_detections(det, masks, image.shape, mold.shape, window)

    parts["post"] = _median_seconds(post, repeats, clock)
    parts["total"] = _median_seconds(lambda: model.detect(images), repeats, clock)
    parts["detections"] = float(np.mean([(det[:, 4] > 0).sum() for det, _ in raw]))
    return parts


def _model(backbone, dim, batch, weights=None, num_classes=81):
    from mrcnn import model as modellib
    from mrcnn.config import Config

    class Bench(Config):
        NAME = "bench"
        NUM_CLASSES = num_classes
        IMAGES_PER_GPU = batch
        BACKBONE = backbone
        IMAGE_MIN_DIM = IMAGE_MAX_DIM = dim

    keras.utils.set_random_seed(0)
    model = modellib.MaskRCNN("inference", Bench(), model_dir=os.devnull)
    if weights:
        model.load_weights(weights, by_name=True)
    return model


def main(argv=None):
    import skimage.data

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="resnet101")
    p.add_argument("--dim", type=int, default=1024, help="IMAGE_MIN_DIM = IMAGE_MAX_DIM")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--weights", help="h5 to load (default: seeded random init)")
    p.add_argument("--parts", action="store_true", help="per-part table instead of seconds per image")
    p.add_argument("--cpu", action="store_true", help="--parts in CPU seconds (all threads), not wall seconds")
    args = p.parse_args(argv)
    model = _model(args.backbone, args.dim, args.batch, args.weights)
    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()]
    images = [photos[i % 3] for i in range(args.batch)]
    row = {"model": args.backbone, "dim": args.dim, "batch": args.batch}
    if args.parts:
        row["clock"] = "cpu" if args.cpu else "wall"
        row.update(profile_parts(model, images, args.repeats, time.process_time if args.cpu else time.perf_counter))
    else:
        model.detect(images)  # warm-up: compiles
        wall, cpu = [], []
        for _ in range(args.repeats):
            t, c = time.perf_counter(), time.process_time()
            model.detect(images)
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        row["s_per_image"] = float(np.median(wall)) / len(images)
        row["cpu_s_per_image"] = float(np.median(cpu)) / len(images)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
