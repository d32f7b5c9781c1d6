"""Train the shipped default model (`vidseg/models/shapes.h5` + `shapes.json`) from scratch.

One seeded command, CPU only:

    python -m vidseg.samples.train_shipped --model-dir logs/shipped

It trains a small ResNet-18 (width 0.5) Mask R-CNN at 128x128 on generated shapes: square
images like matterport's sample plus wide 128x72 ones (how a 16:9 video frame reaches the
model), with flips, zoom/shift and colour jitter so that shapes of other sizes, colours and
positions are found too. It never sees the "shifted" generator it is tested on.
Schedule (SCHEDULE): warm-up, then two cycles of lr 0.003 followed by a tenth of it, 80 epochs
of 100 steps; a checkpoint per epoch under model_dir. At the end the last checkpoint is
exported with its config and class names.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from vidseg.samples.shapes import CLASS_NAMES, ShapesConfig, ShapesDataset

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


class ShippedConfig(ShapesConfig):
    """The shipped model: small backbone, slim heads, few proposals; 128x128 input."""

    NAME = "shipped"
    IMAGES_PER_GPU = 4
    BACKBONE = "resnet18"
    BACKBONE_WIDTH = 0.5
    TOP_DOWN_PYRAMID_SIZE = 64
    RPN_CONV_SIZE = 64
    FPN_CLASSIF_FC_LAYERS_SIZE = 256
    MASK_HEAD_CONV_SIZE = 64
    TRAIN_BN = True  # from scratch: batch statistics while training, moving ones at inference
    PRE_NMS_LIMIT = 1000
    POST_NMS_ROIS_TRAINING = 300
    POST_NMS_ROIS_INFERENCE = 100
    TRAIN_ROIS_PER_IMAGE = 32
    MAX_GT_INSTANCES = 10
    DETECTION_MAX_INSTANCES = 20
    # Inference only, chosen on validation seeds (not the test's): keeps overlapping shapes
    # of one class and low-scored true shapes, which AP counts.
    DETECTION_MIN_CONFIDENCE = 0.5
    DETECTION_NMS_THRESHOLD = 0.5
    STEPS_PER_EPOCH = 100
    VALIDATION_STEPS = 5
    LEARNING_RATE = 0.003
    RPN_TRAIN_ANCHORS_PER_IMAGE = 64  # shapes give ~2 positive anchors per image: keep negatives few


# Frames per model call in `vidseg file`: 4 costs 15-17 CPU ms a frame against 21-25 for 1
# (1080p, docs/benchmarks/runtime.md); live sources still run one frame per source per call.
VIDEO_BATCH = 4

# (learning-rate factor, cumulative epochs) of each phase, for --epochs-scale 1.0: warm-up,
# a first cycle, and a second one (the shipped file was trained as the first four phases,
# then --resume --schedule 1.0:70,0.1:80; 35 + 17 min here).
SCHEDULE = [(0.1, 1), (0.3, 2), (1.0, 40), (0.1, 50), (1.0, 70), (0.1, 80)]


def training_sets(seed, count=4000):
    """(train, val) datasets: `count` square and count/2 wide training images, 100 square val."""
    from vidseg.samples.shapes import TRAIN_STYLE

    train = ShapesDataset()
    train.load_shapes(count, 128, 128, seed=seed, style=TRAIN_STYLE)
    train.load_shapes(count // 2, 72, 128, seed=seed + 1, style=TRAIN_STYLE)
    train.prepare()
    val = ShapesDataset.generate(100, 128, 128, seed=seed + 2)
    return train, val


def export(checkpoint, config, out_dir=MODELS_DIR):
    """Copy `checkpoint` to out_dir/shapes.h5 and write its sidecar shapes.json beside it (as
    `vidseg train` does for its checkpoints), with VIDEO_BATCH and the checkpoint's name."""
    from mrcnn.weights import write_sidecar

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(checkpoint, out_dir / "shapes.h5")
    write_sidecar(out_dir / "shapes.h5", config, CLASS_NAMES, batch_size=VIDEO_BATCH,
                  source=os.path.basename(checkpoint))


def measure_fps(weights=None, frames=100, seed=7):
    """Model-only speed of a shipped-style model on 128x128 shapes images, batch 1.

    Times MaskRCNNFrameModel calls (mold, compiled graph, unmold of boxes and 28x28 masks;
    no video decode, drawing or encode) after its warm-up. Returns {"fps", "cpu_s_per_frame",
    "frames"}; cpu_s_per_frame counts all threads.
    """
    from mrcnn.frame_model import MaskRCNNFrameModel

    model = MaskRCNNFrameModel(weights=weights, batch_size=1)
    dataset = ShapesDataset.generate(frames, 128, 128, seed=seed)
    images = [dataset.load_image(i) for i in dataset.image_ids]
    wall, cpu = time.perf_counter(), time.process_time()
    for image in images:
        model([image])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"fps": frames / wall, "cpu_s_per_frame": cpu / frames, "frames": frames}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default="logs/shipped", help="where checkpoints and logs go")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="scale every phase's length")
    parser.add_argument("--steps", type=int, default=ShippedConfig.STEPS_PER_EPOCH, help="steps per epoch")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--schedule", default=None, metavar="F:E,...",
                        help="phases as lr-factor:cumulative-epoch pairs (default: %s)"
                             % ",".join(f"{f:g}:{e}" for f, e in SCHEDULE))
    parser.add_argument("--export-dir", default=str(MODELS_DIR), help="where shapes.h5/.json are written")
    parser.add_argument("--measure-fps", metavar="WEIGHTS", nargs="?", const="shipped",
                        help="only measure model-only fps of WEIGHTS (default: the shipped model)")
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.measure_fps:
        print(json.dumps(measure_fps(None if args.measure_fps == "shipped" else args.measure_fps)))
        return
    import keras

    from mrcnn import augmentation
    from mrcnn import model as modellib

    keras.utils.set_random_seed(args.seed)
    config_cls = type("Config", (ShippedConfig,), {"STEPS_PER_EPOCH": args.steps})
    config = config_cls()
    train, val = training_sets(args.seed)
    model = modellib.MaskRCNN("training", config, args.model_dir)
    if args.resume:
        model.load_weights(model.find_last(), by_name=True)
    aug = augmentation.Sequential([
        augmentation.Fliplr(0.5), augmentation.Flipud(0.5),
        augmentation.ScaleCrop((0.4, 1.3), p=0.7), augmentation.Color(p=0.8)])
    schedule = SCHEDULE if args.schedule is None else [
        (float(f), int(e)) for f, e in (phase.split(":") for phase in args.schedule.split(","))]
    start = time.time()
    for factor, epochs in schedule:
        if round(epochs * args.epochs_scale) <= model.epoch:
            continue  # phase already done (resumed run)
        model.train(train, val, config.LEARNING_RATE * factor, max(1, round(epochs * args.epochs_scale)),
                    "all", augmentation=aug)
    wall = time.time() - start
    last = model.find_last()
    export(last, config, args.export_dir)
    print(json.dumps({"checkpoint": last, "wall_s": round(wall, 1)}))


if __name__ == "__main__":
    main()
