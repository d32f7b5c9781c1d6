"""`vidseg image IN... -o OUT`: segment still pictures, in this process (not a video pipeline).

Inputs are image files or folders (their images, not recursive). Every input and output is
checked before the model loads; the model is built once and sees the pictures in batches of
its batch size. Each picture is drawn like a video frame (`vidseg.render`) and saved to OUT:
a file for one input picture, a folder (created if missing) for several or for a folder
input. `--detections FILE` gets one JSON line per picture, in input order:

    {"image": path, "detections": [{"class_id": int, "class_name": str, "score": float,
      "box": [x1, y1, x2, y2] (pixels, x2/y2 exclusive), "mask": {"size": [h, w], "counts": str}}]}

Everything is written under temporary names and renamed when all pictures are done, so a
failure leaves nothing behind; inputs are never overwritten, nor, without `-y`, a file that
appeared at an output's name while the run went on (`outputs.put_in_place`: this run's goes
beside it, exit 1). The temporary files a run killed
whole (SIGKILL to its process group) left are removed by the next run writing the same outputs
(`outputs.remove_abandoned`), as `vidseg file` does.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Optional, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from vidseg.detections_io import detection_items
from vidseg.errors import InputError
from vidseg.models import check_spec, load_frame_model
from vidseg.pipelines.outputs import (check_output, check_writable, one_line, put_in_place, refuse_model_files,
                                      remove_abandoned, temp_beside)
from vidseg.quiet import native_stderr_captured, native_stderr_filtered
from vidseg.render import Renderer

# libjpeg's warning for a JPEG whose end is missing; it decodes the rest as grey and carries on
JPEG_CUT_SHORT = "Premature end of JPEG file"
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# names of videos, which `vidseg file` takes: said so when one is given as a picture
VIDEO_EXTS = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".ts", ".mts", ".m2ts", ".flv", ".wmv", ".mpg",
              ".mpeg", ".3gp", ".h264", ".hevc")


@dataclass
class ImageJob:
    """Options of `vidseg image` (see the CLI help for each)."""

    inputs: Sequence[str]
    output: str
    model: str = "mrcnn"
    weights: Optional[str] = None
    batch: Optional[int] = None
    model_options: dict = field(default_factory=dict)   # more load_frame_model options (min_confidence, ...)
    detections: Optional[str] = None
    overwrite: bool = False
    progress: bool = True


def find_images(inputs: Sequence[str]) -> list[str]:
    """Image paths in input order: files as given, folders expanded to their images (sorted,
    hidden files skipped). InputError for a missing path, an empty folder or a non-image."""
    found: list[str] = []
    for path in inputs:
        if os.path.isdir(path):
            names = sorted(n for n in os.listdir(path)
                           if n.lower().endswith(IMAGE_EXTS) and not n.startswith(".")
                           and os.path.isfile(os.path.join(path, n)))
            if not names:
                raise InputError(f"no images in folder {path} (looked for {', '.join(IMAGE_EXTS)})")
            found += [os.path.join(path, n) for n in names]
        elif os.path.isfile(path):
            found.append(path)
        elif os.path.exists(path):
            raise InputError(not_a_file(path))
        else:
            raise InputError(f"image not found: {path}")
    for path in found:
        if not cv2.haveImageReader(path):
            raise InputError(f"{path} is not an image OpenCV can read; give JPEG, PNG, BMP, TIFF or WebP files"
                             + video_hint(path))
    unique = {}
    for path in found:                     # the same picture named twice is done once
        unique.setdefault(os.path.realpath(path), path)
    return list(unique.values())


def not_a_file(path: str) -> str:
    """What is wrong with a picture given as a path that exists but is no file (a FIFO, a
    device), which is not read: it was called "not found"."""
    return f"{path} is a pipe or a device, not a file; save the picture to a file first"


def video_hint(path: str) -> str:
    """What to run instead, for a picture named as a video; "" for any other name."""
    if os.path.splitext(path)[1].lower() not in VIDEO_EXTS:
        return ""
    return f" (for a video: vidseg file {shlex.quote(path)} -o OUT.mp4)"


def plan_outputs(images: Sequence[str], output: str, folder: bool, overwrite: bool) -> list[str]:
    """Absolute output path per image. folder=False: `output` is the file for the one image;
    folder=True: `<output>/<image name>` (names made unique; PNG when OpenCV cannot write the
    input's format in colour). InputError when an output is an input, exists without
    `overwrite`, or its directory is missing."""
    if not folder:
        extension = os.path.splitext(output)[1]
        if not writes_colour(extension):
            kind = repr(extension) if extension else "a name without an extension"
            raise InputError(f"cannot write colour pictures as {kind}: name the output .jpg or .png, "
                             "or give an existing folder")
        return [check_output(output, images[0], overwrite)]
    out_dir = os.path.abspath(output)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise InputError(f"output {out_dir} is a file but there are {len(images)} images; give a folder")
    if not os.path.isdir(os.path.dirname(out_dir)):
        raise InputError(f"output directory does not exist: {os.path.dirname(out_dir)}; create it first")
    check_writable(out_dir if os.path.isdir(out_dir) else os.path.dirname(out_dir), "output folder")
    inputs = {os.path.realpath(p) for p in images}
    targets: list[str] = []
    for image in images:
        stem, ext = os.path.splitext(os.path.basename(image))
        ext = ext if writes_colour(ext) else ".png"  # its name as it was, UP.JPG too
        target, n = os.path.join(out_dir, stem + ext), 1
        while target in targets:
            n += 1
            target = os.path.join(out_dir, f"{stem}-{n}{ext}")
        if os.path.realpath(target) in inputs:
            raise InputError(f"output {target} is an input picture; choose another output folder "
                             "(inputs are never overwritten)")
        if os.path.isdir(target):
            raise InputError(f"output {target} is a folder; move it or give another output folder")
        if os.path.exists(target) and not overwrite:
            raise InputError(f"output {target} exists; pass --overwrite (-y) to replace it")
        targets.append(target)
    return targets


@lru_cache(maxsize=None)
def writes_colour(ext: str) -> bool:
    """Whether OpenCV encodes a colour picture as `ext` (".jpg", ".PGM", ""): it has writers,
    PGM and PBM for one, that take gray pictures only. Tried on a 64x64 picture, quietly."""
    with native_stderr_captured():
        try:
            return bool(ext) and cv2.imencode(ext.lower(), np.zeros((64, 64, 3), np.uint8))[0]
        except cv2.error:
            return False


def check_weights_file(path: str, hdf5: bool) -> None:
    """Fail fast, before TensorFlow loads, on a weights file that is missing (or not HDF5,
    empty or cut short, when `hdf5`: Mask R-CNN weights are HDF5)."""
    from mrcnn.utils import not_hdf5

    if not os.path.isfile(path):
        raise InputError(f"weights file not found: {path}")
    if hdf5 and (problem := not_hdf5(path)):
        raise InputError(f"{path} {problem}")


def read_rgb(path: str) -> np.ndarray:
    """uint8 RGB [H, W, 3] (EXIF orientation applied; gray and alpha made RGB). InputError for
    a file that does not decode, a picture too large to decode, or a JPEG cut short; the
    decoders' own lines about those stay off the terminal, their other warnings are passed on."""
    with native_stderr_captured() as said:
        try:
            bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        except cv2.error:  # more pixels than OpenCV decodes (CV_IO_MAX_IMAGE_PIXELS, 2^30): an assertion
            bgr = None
    if bgr is None:  # damaged, not an image, too large, or a TIFF with an orientation tag (OpenCV 5.0 fails)
        return _read_with_pillow(path)
    if JPEG_CUT_SHORT in said[0]:
        raise InputError(f"cannot decode {path}: the file is cut short (part of the picture is missing); "
                         "give the complete file")
    sys.stderr.write(said[0])
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _read_with_pillow(path: str) -> np.ndarray:
    """read_rgb's second try, with Pillow: uint8 RGB [H, W, 3], EXIF orientation applied."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            return np.array(ImageOps.exif_transpose(im).convert("RGB"))  # writable: drawn on
    except Image.DecompressionBombError:
        width, height = _size_unchecked(path)
        raise InputError(f"cannot decode {path}: {width}x{height} ({width * height:,} pixels) is too large a "
                         "picture to decode; shrink it first") from None
    except (OSError, ValueError):
        raise InputError(f"cannot decode {path}: the file is damaged or not an image{video_hint(path)}") from None


def _size_unchecked(path: str) -> tuple[int, int]:
    """(width, height) of a picture from its header, past Pillow's limit on pixels (which
    guards decoding; nothing is decoded here)."""
    from PIL import Image

    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(path) as im:
            return im.size
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _save(rgb: np.ndarray, target: str) -> str:
    """Encode as `target`'s format into a temporary file beside it; returns that file."""
    ok, data = cv2.imencode(os.path.splitext(target)[1], cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise InputError(f"OpenCV cannot encode {target}; name the output .jpg or .png")
    tmp = temp_beside(target)
    try:
        with open(tmp, "wb") as f:
            f.write(data.tobytes())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def run_image(job: ImageJob) -> int:
    """Run the job; print a one-line summary (stderr); returns the exit code."""
    check_spec(job.model)
    images = find_images(job.inputs)
    folder = (len(images) > 1 or any(os.path.isdir(p) for p in job.inputs) or os.path.isdir(job.output)
              or job.output.endswith(os.sep))
    targets = plan_outputs(images, job.output, folder, job.overwrite)
    det_path = None
    if job.detections:
        det_path = check_output(job.detections, images[0], job.overwrite, "detections file")
        if det_path in targets or det_path in {os.path.realpath(p) for p in images}:
            raise InputError(f"detections file {det_path} is also a picture; choose another path")
    written = [*targets, *([det_path] if det_path else [])]
    refuse_model_files(written, job.weights, job.model_options.get("class_names"))
    if job.weights is not None:
        check_weights_file(job.weights, hdf5=job.model == "mrcnn")
    remove_abandoned(*written)

    t0 = time.perf_counter()
    with native_stderr_filtered():
        # no bigger than the pictures: --batch 64 for one picture built and warmed a batch of 64 (18 s, not 5)
        batch = min(job.batch, len(images)) if job.batch else None
        model = load_frame_model(job.model, weights=job.weights, batch_size=batch, **job.model_options)
    t_model = time.perf_counter() - t0
    names = list(model.class_names)
    made_dir = folder and not os.path.isdir(job.output)
    if made_dir:
        os.mkdir(os.path.abspath(job.output))
    temps: list[tuple[str, str]] = []   # (temporary file, final path)
    found = 0
    try:
        lines = []
        with tqdm(total=len(images), unit="img", disable=None if job.progress else True) as bar:
            for start in range(0, len(images), model.batch_size):
                paths = images[start:start + model.batch_size]
                frames = [read_rgb(p) for p in paths]
                for path, frame, det, target in zip(paths, frames, model(frames), targets[start:]):
                    labels = [names[c] if 0 <= c < len(names) else str(c) for c in det.class_ids.tolist()]
                    masks = Renderer().draw(frame, det, labels)
                    lines.append(json.dumps({"image": path, "detections": detection_items(
                        det, labels, masks, frame.shape[0], frame.shape[1])}))
                    temps.append((_save(frame, target), target))
                    found += len(det)
                bar.update(len(paths))
        if det_path:
            temps.append((temp_beside(det_path), det_path))
            with open(temps[-1][0], "w") as f:
                f.write("".join(line + "\n" for line in lines))
    except BaseException:
        for tmp, _ in temps:
            os.unlink(tmp)
        if made_dir:
            os.rmdir(os.path.abspath(job.output))
        raise
    code, errors = 0, []
    for tmp, final in temps:
        try:
            if put_in_place(tmp, final, job.overwrite) != final:
                code = 1  # not where it was asked for: a script must not read the other run's
        except OSError as e:
            errors.append(e.strerror)
    seconds = time.perf_counter() - t0 - t_model
    print(f"{len(images)} picture{'s' * (len(images) > 1)}, {found} detection{'s' * (found != 1)}, "
          f"{seconds / len(images):.3f} s per picture (model loaded in {t_model:.1f} s), written to "
          f"{os.path.abspath(job.output)}", file=sys.stderr)
    if errors:
        print(f"vidseg: error: {one_line('; '.join(errors))}", file=sys.stderr)
        code = 1
    return code
