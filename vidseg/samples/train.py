"""The recipes behind `vidseg train` and `vidseg evaluate` (matterport's sample scripts).

    vidseg train --kind shapes|via|coco [--dataset PATH] --weights coco|last|none|PATH
                 --layers heads|3+|4+|5+|all --epochs N [--model-dir DIR]
    vidseg evaluate --kind shapes|via|coco [--dataset PATH] [--weights PATH] [--json]

kinds:
    shapes  generated shapes (no PATH needed): a seeded training set and validation set;
            evaluation uses a fresh seeded set, or the "shifted" generator with --shifted.
    via     VGG Image Annotator folders PATH/train and PATH/val (see samples/custom.py);
            classes from --class-name (one class) or --attribute (region attribute).
    coco    matterport's layout: PATH/annotations/instances_<subset><year>.json and images in
            PATH/<subset><year>/; train on "train", validate and evaluate on "val" (or --subset).
weights:
    coco    mask_rcnn_coco.h5 in the current folder or $VIDSEG_COCO_WEIGHTS (get it with
            `vidseg weights download coco`); the class-specific heads are left out when the
            class count differs (matterport's fine-tuning idiom).
    last    the newest checkpoint of this kind under --model-dir: its run resumes, with its epoch
            count and, unless given again, its --layers, --lr, --steps and --val-steps.
    none    random initialisation.
    PATH    any Mask R-CNN weights file in matterport's or vidseg's layout.
The architecture (backbone, widths) follows the weights file; from scratch, shapes use the
shipped model's small ResNet-18 and the other kinds matterport's ResNet-101.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from vidseg.errors import InputError
from vidseg.pipelines.outputs import check_writable
from vidseg.quiet import native_stderr_filtered

KINDS = ("shapes", "via", "coco")
LAYERS = ("heads", "3+", "4+", "5+", "all")


@dataclass
class TrainJob:
    kind: str
    weights: str
    layers: str | None  # None: "heads", or as the resumed run trained (also for the other None options)
    epochs: int
    dataset: str | None = None
    model_dir: str = "logs"
    learning_rate: float | None = None
    steps: int | None = None
    val_steps: int | None = None
    class_name: str | None = None
    attribute: str | None = None
    year: str = "2014"
    tensorboard: bool = False


@dataclass
class EvaluateJob:
    kind: str
    dataset: str | None = None
    weights: str | None = None
    as_json: bool = False
    limit: int = 0
    images: int = 200
    seed: int = 2024
    shifted: bool = False
    subset: str = "val"
    model_dir: str = "logs"
    min_confidence: float | None = None
    class_name: str | None = None
    attribute: str | None = None
    year: str = "2014"


# ---------------------------------------------------------------- datasets and configs

def load_datasets(kind, dataset, class_name=None, attribute=None, year="2014", subsets=("train", "val"),
                  class_order=None):
    """Prepared datasets for `subsets` of a kind (shapes: generated, seeded). Raises InputError.
    class_order: names (BG first) a VIA set's classes take their ids in, when they are the same
    names (a model's, to evaluate it); by default the sorted names."""
    if kind == "shapes":
        from vidseg.samples.train_shipped import training_sets

        if dataset is not None:
            raise InputError("--kind shapes generates its images; leave out --dataset")
        train, val = training_sets(seed=1, count=2000)
        return [train if s == "train" else val for s in subsets]
    if dataset is None:
        raise InputError(f"--kind {kind} needs --dataset PATH")
    if not Path(dataset).is_dir():
        raise InputError(f"dataset folder not found: {dataset}")
    if kind == "via":
        from vidseg.samples.custom import load_via_datasets

        if (class_name is None) == (attribute is None):
            raise InputError(f"--kind via needs --class-name NAME (one class) or --attribute ATTR (class per region)"
                             f"{', not both' if class_name else ''}")
        return load_via_datasets(dataset, class_name=class_name, attribute=attribute, subsets=subsets,
                                 class_order=class_order[1:] if class_order else None)
    if kind == "coco":
        from vidseg.samples.coco import CocoDataset

        out = []
        for subset in subsets:
            ds = CocoDataset()
            ds.load_coco(dataset, subset, year=year)
            ds.prepare()
            out.append(ds)
        return out
    raise InputError(f"unknown kind {kind!r}: use one of {', '.join(KINDS)}")


def base_config(kind, num_classes):
    """The kind's Config class with NUM_CLASSES set (matterport's sample configs)."""
    if kind == "shapes":
        from vidseg.samples.train_shipped import ShippedConfig as base
    elif kind == "via":
        from vidseg.samples.custom import CustomConfig as base
    else:
        from vidseg.samples.coco import CocoConfig as base
    return type(f"{base.__name__}", (base,), {"NUM_CLASSES": num_classes, "NAME": kind})


def coco_weights_path():
    """Where `--weights coco` is looked for; raises InputError with the fix when absent."""
    path = Path(os.environ.get("VIDSEG_COCO_WEIGHTS", "mask_rcnn_coco.h5"))
    if not path.is_file():
        raise InputError(f"COCO weights not found at {path}: run `vidseg weights download coco` "
                         "(or set VIDSEG_COCO_WEIGHTS)")
    return path


def find_last(model_dir, name):
    """Newest checkpoint of the `<name>*` run folders under model_dir (`MaskRCNN.find_last`:
    folders a run left without a checkpoint are skipped). Raises InputError when there is none."""
    from mrcnn.utils import find_last_checkpoint

    path = find_last_checkpoint(model_dir, name)
    if path is None:
        raise InputError(f"no checkpoint of kind {name!r} under {model_dir}: train with --weights none|coco first")
    return Path(path)


def check_datasets(train_ds, val_ds, dataset):
    """Problems that would stop training part-way, found before it starts (InputError): a
    subset with no images or no instance to learn from, train and val with different classes."""
    for what, ds in (("training", train_ds), ("validation", val_ds)):
        if not len(ds.image_ids):
            raise InputError(f"the {what} set of {dataset} has no images")
        if hasattr(ds, "has_instances") and not any(ds.has_instances(i) for i in ds.image_ids):
            raise InputError(f"no image of the {what} set of {dataset} has an annotated instance "
                             "(crowd regions do not count); annotate some objects")
    if list(train_ds.class_names) != list(val_ds.class_names):
        raise InputError(f"the training and validation sets of {dataset} have different classes "
                         f"({', '.join(train_ds.class_names[1:])} / {', '.join(val_ds.class_names[1:])}); "
                         "list the same categories in both")


def check_resumable(path, class_names) -> None:
    """InputError unless the checkpoint `path` (`--weights last`) was trained on `class_names`:
    resuming its run on other classes would reset the class heads mid-run, under the old
    run's name and epochs."""
    from mrcnn.frame_model import read_sidecar

    trained = read_sidecar(path)["class_names"]
    if trained is not None and list(trained) != list(class_names):
        raise InputError(f"the last checkpoint {path} learnt {', '.join(trained[1:])}, the dataset has "
                         f"{', '.join(class_names[1:])}; to start from it on these classes, give --weights {path}")


# what `--weights last` takes from the run it resumes: TrainJob field, sidecar "training" key, option
RESUMED = (("layers", "layers", "--layers"), ("learning_rate", "learning_rate", "--lr"),
           ("steps", "steps_per_epoch", "--steps"), ("val_steps", "validation_steps", "--val-steps"))


def resumed(job: TrainJob, path) -> TrainJob:
    """The job with the options its command line left out set as the run of checkpoint `path`
    (`--weights last`) trained, from its sidecar; prints what was taken. A checkpoint from
    before sidecars recorded it gives nothing (the defaults then apply)."""
    from mrcnn.frame_model import read_sidecar

    trained = read_sidecar(path)["training"]
    taken = {field: trained[key] for field, key, _ in RESUMED if getattr(job, field) is None and key in trained}
    if taken:
        said = " ".join(f"{option} {taken[field]}" for field, _, option in RESUMED if field in taken)
        print(f"resuming {path.name} as its run trained: {said}", flush=True)
    return replace(job, **taken)


def interrupt_in(error: BaseException):
    """The Ctrl-C or SIGTERM (a KeyboardInterrupt) `error` is or stands for, else None: one
    that lands while Keras traces a layer comes out as a SystemError ('returned a result with
    an exception set') caused by it."""
    while error is not None:
        if isinstance(error, KeyboardInterrupt):
            return error
        error = error.__cause__ or error.__context__
    return None


def weights_path(weights, model_dir, name):
    """The file --weights names (coco, last, a path), or InputError; None for "none"."""
    if weights == "none":
        return None
    path = {"coco": coco_weights_path, "last": lambda: find_last(model_dir, name)}.get(weights, lambda: Path(weights))()
    if Path(path).is_dir():
        raise InputError(f"weights {path} is a folder; give a weights file (.h5)")
    if not Path(path).is_file():
        raise InputError(f"weights file not found: {path}")
    return Path(path)


def resolve_weights(weights, model_dir, name):
    """(path or None, architecture overrides read from the file, file's NUM_CLASSES)."""
    path = weights_path(weights, model_dir, name)
    if path is None:
        return None, {}, None
    from mrcnn.frame_model import architecture_from_file  # imports TensorFlow: after the checks

    arch = architecture_from_file(path)
    return Path(path), {k: v for k, v in arch.items() if k != "NUM_CLASSES"}, arch.get("NUM_CLASSES")


# ---------------------------------------------------------------- train / evaluate

def run_train(job: TrainJob):
    """Train as the job says; prints Keras' step/epoch progress and returns 0."""
    if job.layers is not None and job.layers not in LAYERS:
        raise InputError(f"unknown --layers {job.layers!r}: use one of {', '.join(LAYERS)}")
    if job.epochs < 1:
        raise InputError("--epochs must be at least 1")
    check_model_dir(job.model_dir)
    train_ds, val_ds = load_datasets(job.kind, job.dataset, job.class_name, job.attribute, job.year)
    check_datasets(train_ds, val_ds, job.dataset)
    if job.weights == "none" and job.layers != "all":
        print(f"vidseg: warning: with --weights none the backbone is random, and --layers {job.layers or 'heads'} "
              "leaves it so; train from scratch with --layers all", file=sys.stderr, flush=True)
    with contextlib.ExitStack() as quiet:
        # TensorFlow's native log lines (its start-up, tracing and first step) stay off the
        # terminal; from the second step on stderr is live again, so nothing later is held back.
        quiet.enter_context(native_stderr_filtered())
        return _train(job, train_ds, val_ds, first_step_done=quiet.close)


def check_model_dir(model_dir: str) -> None:
    """InputError unless checkpoints can be written under model_dir (made if missing): said
    before the datasets load and TensorFlow starts, not at the first checkpoint."""
    folder = os.path.abspath(model_dir)
    while not os.path.exists(folder):  # the folders still to make go in the first that is there
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise InputError(f"--model-dir {model_dir}: {folder} is a file; give a folder")
    check_writable(folder, "--model-dir")


def _train(job: TrainJob, train_ds, val_ds, first_step_done):
    """run_train once the datasets are loaded: TensorFlow loads here. first_step_done() is
    called after every training step (it must be idempotent)."""
    had_model_dir = os.path.isdir(job.model_dir)
    path, arch, file_classes = resolve_weights(job.weights, job.model_dir, job.kind)
    if job.weights == "last":
        check_resumable(path, train_ds.class_names)
        job = resumed(job, path)
    overrides = dict(arch)
    if job.steps:
        overrides["STEPS_PER_EPOCH"] = job.steps
    if job.val_steps:
        overrides["VALIDATION_STEPS"] = job.val_steps
    if path is None and job.kind != "shapes":
        overrides["BACKBONE"] = "resnet101"
    config = type("TrainConfig", (base_config(job.kind, train_ds.num_classes),), overrides)()

    from mrcnn import augmentation
    from mrcnn import model as modellib
    from mrcnn.training import TrainingDiverged
    from mrcnn.weights import CLASS_SPECIFIC_LAYERS, WeightsError

    model = modellib.MaskRCNN("training", config, job.model_dir)
    if path is not None:
        exclude = CLASS_SPECIFIC_LAYERS if file_classes != config.NUM_CLASSES else None
        try:
            model.load_weights(str(path), by_name=True, exclude=exclude)
        except WeightsError as e:
            raise InputError(str(e)) from None
        if job.weights != "last":
            model.set_log_dir()  # a new run folder, epochs from 0, unless resuming
    if model.epoch >= job.epochs:
        raise InputError(f"the model is already at epoch {model.epoch}; --epochs is cumulative, "
                         f"ask for more than {model.epoch}")
    aug = augmentation.Sequential([augmentation.Fliplr(0.5)]) if job.kind == "coco" \
        else augmentation.default_augmentation()
    model.make_log_dir()  # this run's own folder, named now so that what is printed is right
    if job.tensorboard:
        print(f"TensorBoard logs (losses per step and epoch, learning rate, weight histograms per epoch) go to "
              f"{model.log_dir}\nwatch them live with: tensorboard --logdir {job.model_dir}  "
              "(then open http://localhost:6006)", flush=True)
    import keras

    step_done = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: first_step_done())
    learning_rate = job.learning_rate or config.LEARNING_RATE
    try:
        model.train(train_ds, val_ds, learning_rate, job.epochs, job.layers or "heads",
                    augmentation=aug, custom_callbacks=[step_done], histograms=job.tensorboard)
    except BaseException as error:  # failed or stopped: a run folder with no checkpoint is of no use
        if not any(Path(model.log_dir).glob("*.h5")):
            shutil.rmtree(model.log_dir, ignore_errors=True)
            if not had_model_dir:
                with contextlib.suppress(OSError):  # made for this run; kept if another run uses it
                    os.rmdir(job.model_dir)
        interrupt = interrupt_in(error)
        if interrupt is not None and interrupt is not error:
            raise interrupt from None
        if isinstance(error, TrainingDiverged):
            raise InputError(f"{error}; train again with a lower --lr (this run's: {learning_rate:g})") from None
        if "No space left on device" in str(error) and not isinstance(error, OSError):  # TensorFlow's log writer
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), model.log_dir) from None
        raise
    print(f"checkpoints in {model.log_dir}")
    return 0


def inference_model(kind, weights, class_names, min_confidence=None, model_dir="logs"):
    """A MaskRCNN in inference mode (batch 1) for `weights` (None: the shipped model; also
    "coco" or "last" as for training) that detects `class_names` (BG first) in that order.

    Its config: the kind's sample config, the architecture read from the file, then the
    settings in the file's sidecar JSON (`<stem>.json`, as shipped models have), then
    min_confidence. Raises InputError for a missing or unfit file, or one whose sidecar names
    other classes (or the same in another order: class ids would be compared as they are).
    """
    from mrcnn import model as modellib
    from mrcnn.frame_model import SHIPPED_WEIGHTS, read_sidecar
    from mrcnn.weights import WeightsError

    if weights == "none":
        raise InputError("--weights none has nothing to evaluate: give coco, last or a weights file")
    path, arch, file_classes = resolve_weights(str(weights or SHIPPED_WEIGHTS), model_dir, kind)
    if file_classes != len(class_names):
        raise InputError(f"{path} has {file_classes} classes but the dataset has {len(class_names)} (with BG); "
                         f"evaluate weights trained on its classes (vidseg train --kind {kind} ..., then "
                         "--weights last)")
    sidecar = read_sidecar(path)
    trained = sidecar["class_names"]
    if trained is not None and list(trained[1:]) != list(class_names[1:]):
        raise InputError(f"{path} detects {', '.join(trained[1:])} but the dataset's classes are "
                         f"{', '.join(class_names[1:])}; evaluate it on a dataset of its own classes")
    overrides = dict(arch, TRAIN_BN=False, IMAGES_PER_GPU=1)
    overrides.update(sidecar["config"])
    if min_confidence is not None:
        overrides["DETECTION_MIN_CONFIDENCE"] = min_confidence
    config = type("EvalConfig", (base_config(kind, len(class_names)),), overrides)()
    model = modellib.MaskRCNN("inference", config, model_dir=os.devnull)
    try:
        model.load_weights(str(path), by_name=False)
    except WeightsError as e:
        raise InputError(str(e)) from None
    return model


def evaluation_set(job: EvaluateJob):
    """The dataset `job` evaluates on (a VIA set's classes in the model's order); InputError
    when there is none or it is empty."""
    if job.kind == "shapes":
        from vidseg.samples.shapes import ShapesDataset

        if job.dataset is not None:
            raise InputError("--kind shapes generates its images; leave out --dataset")
        make = ShapesDataset.generate_shifted if job.shifted else ShapesDataset.generate
        # the first N of a seeded set are the same whatever its size: --limit 1 of --images 10**11 made them all
        dataset = make(min(job.images, job.limit or job.images), seed=job.seed)
    else:
        from mrcnn.frame_model import SHIPPED_WEIGHTS, read_sidecar

        path = weights_path(str(job.weights or SHIPPED_WEIGHTS), job.model_dir, job.kind)
        trained = read_sidecar(path)["class_names"] if path else None
        (dataset,) = load_datasets(job.kind, job.dataset, job.class_name, job.attribute, job.year,
                                   subsets=(job.subset,), class_order=trained)
    if not len(dataset.image_ids):
        raise InputError("the evaluation set has no images")
    return dataset


def run_evaluate(job: EvaluateJob):
    """Detect on the evaluation set and print pycocotools' bbox and segm AP (or JSON)."""
    import json

    from vidseg.samples import coco

    with native_stderr_filtered():  # TensorFlow's native log lines (it loads with mrcnn) stay off the terminal
        dataset = evaluation_set(job)
        model = inference_model(job.kind, job.weights, dataset.class_names, job.min_confidence, job.model_dir)
        report = coco.evaluate_dataset(model, dataset, limit=job.limit)
    print(json.dumps(report) if job.as_json else coco.format_ap_table(report))
    return 0
