"""The `vidseg` command: parses options and calls a pipeline; no logic of its own.

Every command returns its exit code. Errors the user can fix (InputError, bad option values)
print one line `vidseg: error: ...` and exit 2; an OSError (disk full, permission denied) one
line and exit 1 (with its traceback too when VIDSEG_DEBUG is set); Ctrl-C exits 130, SIGTERM 143.
"""
from __future__ import annotations

import functools
import gc
import math
import os
import signal
import sys
import traceback
from multiprocessing import resource_tracker

import click
from click.core import ParameterSource

from vidseg import stage_server
from vidseg.errors import InputError, Terminated, descriptor_hint, raise_terminated, stop_signals_ignored
from vidseg.pipelines.outputs import check_path_length, one_line, told
from vidseg.secrets import mask

MAX_DIM = 4096  # the largest --max-dim: memory grows with its square
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


class VidsegGroup(click.Group):
    """A click group that turns usage errors and InputError into one line and exit 2, and an
    OSError (disk full, permission denied) into one line and exit 1; a password in a URL
    there is masked whatever the error (an RTSP URL given where a file was expected), and a
    newline (in a file name) written `\\n`."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Terminated as e:  # as an exit code: click would print a blank line, as after a ^C
            return e.exit_code

    def main(self, args=None, prog_name="vidseg", **kwargs):
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, raise_terminated)  # clean up as for Ctrl-C, not die mid-write
        error = None
        try:
            code = super().main(args=args, prog_name=prog_name, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as e:
            click.echo(e.ctx.get_help(), err=True)
            code = 2
        except click.UsageError as e:
            error, code = e.format_message() + (" (see --help)" if e.ctx else ""), 2
        except InputError as e:
            error, code = str(e), e.exit_code
        except OSError as e:  # the system refused (disk full, permission, I/O error): no traceback
            if os.environ.get("VIDSEG_DEBUG"):
                traceback.print_exc()
            error, code = told(e) + descriptor_hint(e), 1
        except click.Abort as e:  # click's wrapping of a KeyboardInterrupt, Terminated included
            code = getattr(e.__cause__, "exit_code", 130)
        except Terminated as e:
            code = e.exit_code
        except KeyboardInterrupt:
            code = 130
        if error is not None:  # a path given with a newline in it is shown escaped, not split
            click.echo(one_line(mask(f"vidseg: error: {error}")), err=True)
        gc.freeze()  # the process ends: spare its last collection over all it loaded (~40 ms)
        sys.exit(code or 0)


class Path(click.Path):
    """click.Path that refuses a path longer than the kernel takes (which every command then
    called missing), in one line."""

    def convert(self, value, param, ctx):
        try:
            check_path_length(os.fsdecode(value))
        except InputError as e:
            self.fail(str(e), param, ctx)
        return super().convert(value, param, ctx)


class Number(click.FloatRange):
    """click.FloatRange that also refuses nan and inf, which compare false with any bound
    (`--duration inf` ran for ever, `--min-confidence nan` kept nothing)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


@click.group(cls=VidsegGroup, no_args_is_help=True)
@click.version_option(package_name="vidseg")
def main():
    """Mask R-CNN instance segmentation over live and recorded video."""


def prepare_pipeline(model: str, window: bool = False) -> None:
    """For commands that run a pipeline. This process and its stages do no linear algebra: one
    OpenBLAS thread, set before NumPy loads, spares them its thread pool (~0.1 CPU-s of
    spinning at start-up). With a model, the stage server starts now so that its imports run
    beside this process's (vidseg.stage_server); without one, file stages fork from this
    process (vidseg.supervisor). window: a stage may open an OpenCV window."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    # handed to the resource tracker as -W: when this process is killed the tracker unlinks the
    # rings and semaphores it left, as designed, without a "leaked objects" warning per kind
    sys.warnoptions.append("ignore:resource_tracker:UserWarning")
    if model != "none":
        stage_server.start(window)  # starts the resource tracker too
    else:  # the process that unlinks the rings should this one die: start it while a CPU is idle
        with stop_signals_ignored():  # the tracker inherits them: they are the supervisor's
            resource_tracker.ensure_running()


def model_options(command):
    """Options shared by every command that runs the model. --classes, --max-dim and --backbone
    reach the command bundled as `model_extra` (load_frame_model's class_names, max_dim, backbone)."""
    @functools.wraps(command)
    def bundled(*args, classes=None, max_dim=None, backbone=None, **kwargs):
        unused = [name for name, value in (("--weights", kwargs.get("weights")), ("--classes", classes),
                                           ("--backbone", backbone)) if value is not None]
        if kwargs.get("model") == "none" and unused:  # silently ignored, they made a run look like another
            one = len(unused) == 1
            raise click.UsageError(f"{' and '.join(unused)} {'is' if one else 'are'} for a model; "
                                   f"leave {'it' if one else 'them'} out with --model none")
        return command(*args, model_extra=dict(class_names=classes, max_dim=max_dim, backbone=backbone), **kwargs)

    f = click.option("--backbone", type=click.Choice(["resnet50", "resnet101", "resnet18"]), default=None,
                     help="Backbone, for weights files that do not say (default: read from the file).")(bundled)
    # 4096 takes 8.5 GB with the small shipped model (2048: 2.6 GB); 8192 was killed for memory
    f = click.option("--max-dim", type=click.IntRange(64, MAX_DIM), default=None, metavar="PIXELS",
                     help=f"Model input size IMAGE_MAX_DIM, a multiple of 64 up to {MAX_DIM} (default: the "
                          "model's).")(f)
    f = click.option("--classes", type=Path(dir_okay=False), default=None,
                     help="Class names file (JSON list or one per line, 'BG' first) for weights without a sidecar.")(f)
    f = click.option("--model", default="mrcnn", show_default=True, metavar="mrcnn|none|pkg.module:factory",
                     help="Frame model: Mask R-CNN, no inference, or your own factory.")(f)
    f = click.option("--weights", type=Path(dir_okay=False), default=None,
                     help="Mask R-CNN weights (.h5); default: the shipped model.")(f)
    f = click.option("--batch", type=click.IntRange(1, 64), default=None,
                     help="Frames (pictures, for image) per model call (default: the model's batch size, 4 for the shipped "
                          "model; live sources: one frame per source).")(f)
    f = click.option("--min-confidence", type=Number(0, 1), default=None,
                     help="Drop detections scoring below this (default: the model's).")(f)
    return f


@main.command("file")
@click.argument("input", type=Path(dir_okay=True))
@click.option("-o", "--output", type=Path(), default=None, help="Output MP4 (H.264, audio kept).")
@model_options
@click.option("--preset", type=click.Choice(PRESETS), default="veryfast", show_default=True, help="libx264 preset.")
@click.option("--crf", type=click.IntRange(0, 51), default=23, show_default=True, help="libx264 quality (lower is better).")
@click.option("-y", "--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--stats", type=Path(dir_okay=False), default=None, help="Write run statistics as JSON.")
@click.option("--detections", type=Path(dir_okay=False), default=None,
              help="Write detections as JSON lines (COCO RLE masks).")
def file_cmd(input, output, model, weights, batch, min_confidence, model_extra, preset, crf, overwrite, no_progress,
             stats, detections):
    """Segment every frame of a video file INPUT into an MP4."""
    prepare_pipeline(model)
    from vidseg.pipelines.file import FileJob, run_file

    return run_file(FileJob(input=input, output=output, model=model, weights=weights, batch=batch,
                            min_confidence=min_confidence, preset=preset, crf=crf, overwrite=overwrite,
                            progress=not no_progress, stats=stats, detections=detections,
                            model_extra=model_extra))


@main.command("bench")
@click.argument("input", type=Path(dir_okay=True))
@model_options
@click.option("--frames", type=click.IntRange(1), default=None, help="Frames to use (default: the whole clip).")
@click.option("--preset", type=click.Choice(PRESETS), default=None,
              help="libx264 preset (files only). [default: veryfast]")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--profile", is_flag=True,
              help="Also time each part of the model (backbone, FPN, RPN, heads, ...; files only).")
def bench_cmd(input, model, weights, batch, min_confidence, model_extra, frames, preset, as_json, profile):
    """Measure each stage alone (fps, CPU per frame), the pipeline, its efficiency, the CPU limit
    and a sequential loop.
    For an rtsp:// INPUT: fps, latency p50/p95/max and drop rate by cause over 20 s (or --frames);
    a stream that cannot be opened is given up after 2 retries."""
    prepare_pipeline(model)
    if input.lower().startswith(("rtsp://", "rtsps://")):
        from vidseg.pipelines.live import bench_live

        if preset or profile:  # a stream is measured through the model into no sink, as a whole
            raise InputError(f"{'--preset' if preset else '--profile'} is for files: a stream's bench encodes "
                             "nothing and times the model as a whole; bench a recorded clip for it")

        return bench_live(input, model=model, weights=weights, batch=batch, min_confidence=min_confidence,
                          model_extra=model_extra, frames=frames, as_json=as_json)
    from vidseg.pipelines.bench import BenchJob, run_bench

    return run_bench(BenchJob(input=input, model=model, weights=weights, batch=batch, min_confidence=min_confidence,
                              frames=frames, preset=preset or "veryfast", as_json=as_json, model_options=model_extra,
                              profile=profile))


@main.group("weights")
def weights_group():
    """Get published model weights (the only commands that use the network)."""


@weights_group.command("download")
@click.argument("name", type=click.Choice(["coco"]), metavar="NAME")
@click.option("--dir", "directory", type=Path(file_okay=False), default=".", show_default=True,
              help="Directory to save the weights file in.")
@click.option("--url", default=None, metavar="URL",
              help="Download from this URL instead (a mirror); default: $VIDSEG_WEIGHTS_URL or the release.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def weights_download_cmd(name, directory, url, no_progress):
    """Download weights NAME: coco, matterport's mask_rcnn_coco.h5 (246 MB; resumes a partial download)."""
    from vidseg.weights_download import download

    download(name, directory, url=url, progress=not no_progress)


@main.command("image")
@click.argument("inputs", nargs=-1, required=True, type=Path())
@click.option("-o", "--output", type=Path(), required=True,
              help="Output picture (one input picture) or folder (several, or a folder input).")
@model_options
@click.option("--detections", type=Path(dir_okay=False), default=None,
              help="Write detections as JSON lines, one per picture (COCO RLE masks).")
@click.option("-y", "--overwrite", is_flag=True, help="Replace outputs that exist.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def image_cmd(inputs, output, detections, overwrite, no_progress, model, weights, batch, min_confidence, model_extra):
    """Segment pictures (files or folders of JPEG/PNG/...) and save them drawn."""
    from vidseg.pipelines.image import ImageJob, run_image

    return run_image(ImageJob(inputs=inputs, output=output, model=model, weights=weights, batch=batch,
                              model_options=dict(model_extra, min_confidence=min_confidence), detections=detections, overwrite=overwrite,
                              progress=not no_progress))


# ---- live sources: `vidseg camera`, `vidseg rtsp` (vidseg/pipelines/live.py) ----

def live_options(f):
    """Options shared by the live commands."""
    for option in reversed([
        click.option("--no-window", is_flag=True, help="Show no window (e.g. with -o on a server)."),
        click.option("--duration", type=Number(min=0, min_open=True), default=None, metavar="SECONDS",
                     help="Record this many seconds, counted from each source's first frame (a source "
                          "that is down is waited for no longer)."),
        click.option("--max-frames", type=click.IntRange(1), default=None, metavar="N",
                     help="Stop after N frames captured from each source."),
        click.option("--preset", type=click.Choice(PRESETS), default="veryfast", show_default=True,
                     help="libx264 preset."),
        click.option("--crf", type=click.IntRange(0, 51), default=23, show_default=True,
                     help="libx264 quality (lower is better)."),
        click.option("-y", "--overwrite", is_flag=True, help="Replace outputs that exist."),
        click.option("--no-progress", is_flag=True, help="No progress bar."),
        click.option("--stats", type=Path(dir_okay=False), default=None, help="Write run statistics as JSON."),
        click.option("--detections", type=Path(), default=None,
                     help="Write detections as JSON lines, one per frame (COCO RLE masks): a file (one "
                          "source) or an existing folder (one NAME.jsonl per source)."),
    ]):
        f = option(f)
    return model_options(f)


def _live(kind, targets, output, no_window, duration, max_frames, preset, crf, overwrite, no_progress, stats,
          detections, model, weights, batch, min_confidence, model_extra, **source_options):
    prepare_pipeline(model, window=not no_window)
    from vidseg.pipelines.live import LiveJob, run_live

    return run_live(LiveJob(kind=kind, targets=list(targets), output=output, window=not no_window,
                            duration=duration, max_frames=max_frames, preset=preset, crf=crf, overwrite=overwrite,
                            progress=not no_progress, stats=stats, detections=detections, model=model,
                            weights=weights, batch=batch, min_confidence=min_confidence, model_extra=model_extra,
                            **source_options))


@main.command("camera")
@click.option("--device", type=Path(), default="0", show_default=True, metavar="0|/dev/videoN", help="The camera.")
@click.option("-o", "--output", type=Path(), default=None, help="Also record to this MP4.")
@live_options
def camera_cmd(device, **options):
    """Segment a webcam live (V4L2), in a window and/or into an MP4."""
    return _live("camera", [device], max_retries=None, **options)


@main.command("rtsp")
@click.argument("urls", nargs=-1, required=True, metavar="URL...")
@click.option("-o", "--output", type=Path(), default=None,
              help="Also record: an MP4 (one source) or an existing folder (one MP4 per source).")
@click.option("--transport", type=click.Choice(["tcp", "udp"]), default="tcp", show_default=True,
              help="RTSP transport.")
@click.option("--max-retries", type=click.IntRange(0), default=None,
              help="Reconnect attempts per outage before giving up (default: never give up).")
@click.option("--read-timeout", type=Number(min=0.1), default=5.0, show_default=True,
              metavar="SECONDS", help="A stream silent this long is reconnected.")
@live_options
def rtsp_cmd(urls, transport, max_retries, read_timeout, **options):
    """Segment RTSP cameras rtsp://[user:pass@]host[:port]/path live (several at once).
    With rtsp://user@host/path the password comes from $VIDSEG_RTSP_PASSWORD (off the command
    line, which `ps` shows to every local user)."""
    return _live("rtsp", urls, transport=transport, max_retries=max_retries, read_timeout=read_timeout,
                 open_timeout=max(10.0, read_timeout), **options)


# ---- `vidseg inspect` (vidseg/pipelines/inspect.py) ----

@main.command("inspect")
@click.argument("image", type=Path(dir_okay=False))
@click.option("--out", required=True, type=Path(), help="Folder for the pictures and index.html (new or empty).")
@click.option("--weights", type=Path(dir_okay=False), default=None,
              help="Mask R-CNN weights (.h5: matterport's, a checkpoint); default: the shipped model.")
@click.option("--classes", type=Path(dir_okay=False), default=None,
              help="Class names file (JSON list or one per line, 'BG' first) for weights without a sidecar.")
@click.option("--layers", default=None, metavar="L1,L2,...",
              help="Layers whose activations to show (default: backbone stages, FPN levels, RPN).")
@click.option("--min-confidence", type=Number(0, 1), default=None,
              help="Keep detections scoring at least this (default: the model's).")
@click.option("-y", "--overwrite", is_flag=True, help="Replace files of the same name in --out.")
def inspect_cmd(image, out, weights, classes, layers, min_confidence, overwrite):
    """See inside the model on IMAGE: anchors, proposals, refinement, masks, activations, weights."""
    from vidseg.pipelines.inspect import InspectJob, parse_layers, run_inspect

    return run_inspect(InspectJob(image=image, out=out, weights=weights, layers=parse_layers(layers), classes=classes,
                                  min_confidence=min_confidence, overwrite=overwrite))


# ---- training, evaluation and the demo (vidseg/samples/train.py, vidseg/pipelines/demo.py) ----

KINDS = ("shapes", "via", "coco")


def dataset_options(f):
    """Options that say which dataset a training or evaluation command reads."""
    for option in reversed([
        click.option("--kind", type=click.Choice(KINDS), required=True,
                     help="shapes: generated; via: VGG Image Annotator folders; coco: COCO layout."),
        click.option("--dataset", type=Path(), default=None,
                     help="Dataset folder (via: PATH/train and PATH/val; coco: PATH/annotations, images)."),
        click.option("--class-name", default=None, help="via: one class name for every region."),
        click.option("--attribute", default=None, help="via: the region attribute holding each region's class."),
        click.option("--year", default="2014", show_default=True, help="coco: the year in the file names."),
        click.option("--model-dir", type=Path(file_okay=False), default="logs", show_default=True,
                     help="Where run folders with checkpoints and TensorBoard logs are (for --weights last)."),
    ]):
        f = option(f)
    return f


# dataset options that only one or two kinds read (the others would ignore them unsaid)
KIND_OPTIONS = {"class_name": ("via",), "attribute": ("via",), "year": ("coco",), "subset": ("via", "coco"),
                "images": ("shapes",), "seed": ("shapes",), "shifted": ("shapes",)}


def refuse_options_of_other_kinds(kind: str) -> None:
    """A usage error for an option given on the command line that --kind `kind` does not read."""
    ctx = click.get_current_context()
    for param in ctx.command.params:
        kinds = KIND_OPTIONS.get(param.name)
        if kinds and kind not in kinds and ctx.get_parameter_source(param.name) == ParameterSource.COMMANDLINE:
            raise click.UsageError(f"{param.opts[0]} is read by --kind {' and '.join(kinds)} only; "
                                   f"leave it out with --kind {kind}", ctx)


@main.command("train")
@dataset_options
@click.option("--weights", required=True, metavar="coco|last|none|PATH",
              help="Start from matterport's COCO weights, the last checkpoint (its run resumed, on the "
                   "same classes, with the --layers, --lr, --steps and --val-steps it trained with unless "
                   "given), nothing, or a file.")
@click.option("--layers", type=click.Choice(["heads", "3+", "4+", "5+", "all"]), default=None,
              help="Which layers to train.  [default: heads; resuming: as its run]")
@click.option("--epochs", type=click.IntRange(1), required=True,
              help="Train up to this epoch (cumulative: a resumed run at epoch 10 with --epochs 15 runs 5).")
@click.option("--lr", type=Number(min=0, min_open=True), default=None,
              help="Learning rate (default: the kind's config; resuming: as its run).")
@click.option("--steps", type=click.IntRange(1), default=None,
              help="Steps per epoch (default: the config's; resuming: as its run).")
@click.option("--val-steps", type=click.IntRange(1), default=None,
              help="Validation steps at the end of each epoch (default: the config's; resuming: as its run).")
@click.option("--tensorboard", is_flag=True,
              help="Also log weight histograms per epoch; print where the TensorBoard logs are and how to open them.")
def train_cmd(kind, dataset, class_name, attribute, year, model_dir, weights, layers, epochs, lr, steps, val_steps,
              tensorboard):
    """Train Mask R-CNN on a dataset; a checkpoint per epoch under --model-dir."""
    refuse_options_of_other_kinds(kind)
    from vidseg.samples.train import TrainJob, run_train

    return run_train(TrainJob(kind=kind, dataset=dataset, weights=weights, layers=layers, epochs=epochs,
                              model_dir=model_dir, learning_rate=lr, steps=steps, val_steps=val_steps,
                              class_name=class_name, attribute=attribute, year=year, tensorboard=tensorboard))


@main.command("evaluate")
@dataset_options
@click.option("--weights", default=None, metavar="coco|last|PATH", help="Weights to evaluate (default: shipped model).")
@click.option("--subset", default="val", show_default=True, help="via/coco: the subset to evaluate.")
@click.option("--images", type=click.IntRange(1), default=200, show_default=True, help="shapes: how many to generate.")
@click.option("--seed", type=int, default=2024, show_default=True, help="shapes: the generator's seed.")
@click.option("--shifted", is_flag=True, help="shapes: sizes, colours and positions unlike the training set.")
@click.option("--limit", type=click.IntRange(0), default=0, help="Evaluate only the first N images.")
@click.option("--min-confidence", type=Number(0, 1), default=None,
              help="Keep detections scoring at least this (default: the model's).")
@click.option("--json", "as_json", is_flag=True, help="Print the AP tables as JSON.")
def evaluate_cmd(kind, dataset, class_name, attribute, year, model_dir, weights, subset, images, seed, shifted,
                 limit, min_confidence, as_json):
    """Print COCO bbox and segm AP (pycocotools) of a model on a dataset."""
    refuse_options_of_other_kinds(kind)
    from vidseg.samples.train import EvaluateJob, run_evaluate

    return run_evaluate(EvaluateJob(kind=kind, dataset=dataset, weights=weights, as_json=as_json, limit=limit,
                                    images=images, seed=seed, shifted=shifted, subset=subset, model_dir=model_dir,
                                    min_confidence=min_confidence, class_name=class_name, attribute=attribute,
                                    year=year))


@main.command("demo")
@click.option("-o", "--output", type=Path(), default="demo.mp4", show_default=True, help="Output MP4.")
@click.option("--seconds", type=float, default=10.0, show_default=True,
              help="Length of the generated clip (0.1 to 3600).")
@click.option("--weights", type=Path(dir_okay=False), default=None,
              help="Mask R-CNN weights (.h5); default: the shipped model.")
@click.option("-y", "--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--stats", type=Path(dir_okay=False), default=None, help="Write run statistics as JSON.")
def demo_cmd(output, seconds, weights, overwrite, no_progress, stats):
    """Segment a generated 1280x720 moving-shapes clip with the shipped model (no download)."""
    prepare_pipeline("mrcnn")
    from vidseg.pipelines.demo import DemoJob, run_demo

    return run_demo(DemoJob(output=output, seconds=seconds, weights=weights, overwrite=overwrite,
                            progress=not no_progress, stats=stats))
