"""Where inference time goes, and seconds per image, for `vidseg bench --profile` and
docs/benchmarks/model.md.

    python -m mrcnn.profile --backbone resnet101 --dim 1024 --batch 1 [--parts] [--weights W]

Parts are timed as differences of compiled prefixes of the graph (input -> C2..C5,
-> P2..P6, -> RPN outputs, -> proposals, -> pooled ROIs, -> class/box heads,
-> detections, -> survivor masks) plus the NumPy post-processing, so they add up to
the whole. Each timing is the median of `repeats` runs after a warm-up run.
"""
import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

PARTS = ["backbone", "fpn", "rpn", "proposals", "roi_align", "classifier", "detection", "mask_head", "post"]


def _median_seconds(fn, repeats, clock=time.perf_counter):
    fn()  # warm-up (and compile)
    times = []
    for _ in range(repeats):
        t = clock()
        fn()
        times.append(clock() - t)
    return float(np.median(times))


def _prefix_outputs(km):
    """Graph tensors ending each prefix, in PARTS order (up to 'detection')."""
    layer = km.get_layer
    return [
        [layer(n).input for n in ("fpn_c2p2", "fpn_c3p3", "fpn_c4p4", "fpn_c5p5")],
        [layer(n).output for n in ("fpn_p2", "fpn_p3", "fpn_p4", "fpn_p5", "fpn_p6")],
        [layer("rpn_class").output, layer("rpn_bbox").output],
        [layer("ROI").output],
        [layer("roi_align_classifier").output],
        [layer("mrcnn_class").output, layer("mrcnn_bbox").output],
        [layer("mrcnn_detection").output],
    ]


def profile_parts(model, images, repeats=3, clock=time.perf_counter):
    """model: an inference `MaskRCNN`; images: up to BATCH_SIZE uint8 RGB images;
    clock: time.perf_counter (wall) or time.process_time (CPU seconds of all threads).

    Returns {part: seconds per batch} for PARTS, plus "total" (one detect-equivalent run,
    measured on its own) and "detections" (mean detections per image).
    """
    config = model.config
    batch = config.BATCH_SIZE
    images = list(images)[:batch]
    molded, metas, windows = model.mold_inputs(images)
    molded = np.concatenate([molded, np.repeat(molded[-1:], batch - len(images), 0)])
    metas = np.concatenate([metas, np.repeat(metas[-1:], batch - len(images), 0)])
    anchors = model.get_anchors(molded[0].shape)
    inputs = [tf.constant(molded, tf.float32), tf.constant(metas, tf.float32),
              tf.constant(np.broadcast_to(anchors, (batch,) + anchors.shape))]

    km = model.keras_model
    cumulative = []
    for outputs in _prefix_outputs(km):
        prefix = tf.function(keras.Model(km.inputs, outputs))
        cumulative.append(_median_seconds(lambda: [t.numpy() for t in tf.nest.flatten(prefix(inputs))],
                                          repeats, clock))
    infer = model.compiled_inference(batch, molded.shape[1], molded.shape[2])
    cumulative.append(_median_seconds(lambda: [t.numpy() for t in infer(*inputs[:2])], repeats, clock))
    raw = model.infer_molded(molded[:len(images)], metas[:len(images)])

    def post():
        for image, mold, window, (det, masks) in zip(images, molded, windows, raw):
            model.unmold_detections(det, masks, image.shape, mold.shape, window)

    parts = dict(zip(PARTS, np.diff([0.0] + cumulative).clip(min=0).tolist()))
    parts["post"] = _median_seconds(post, repeats, clock)

    def whole():
        for image, mold, window, (det, masks) in zip(images, molded, windows,
                                                       model.infer_molded(*model.mold_inputs(images)[:2])):
            model.unmold_detections(det, masks, image.shape, mold.shape, window)

    parts["total"] = _median_seconds(whole, repeats, clock)
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
