"""`vidseg inspect IMAGE --out DIR`: see inside Mask R-CNN on one picture.

Writes PNG pictures and an `index.html` showing them in order, one line of explanation each
(sizes in pixels, width x height; see `inspect_steps.SIZES`):

    anchors.png            1500x1000  positive/negative anchors per pyramid level
    anchor_refinement.png  1000x1000  the RPN's best anchors and their refinement
    proposals.png          2000x1000  top proposals before and after NMS, with scores
    refinement.png         1500x1000  proposals (dotted) -> detections (solid), per class
    masks_28x28.png        1200x1200  each detection's 28x28 mask probabilities
    masks_pasted.png       1200x1200  the same masks pasted at full size
    activations_<L>.png    1200x1200  feature maps of layer L (one per --layers entry)
    weights.png            1600x1560  weight histograms (+ a statistics table in the page)
    detections.png         1000x1000  the final composite (display_instances)

The page warns about activation layers that are all zeros, constant, saturated or not
finite, and lists weights flagged by `mrcnn.visualize.weight_stats`.
Everything is written to a temporary folder beside DIR and moved into DIR at the end, so a
failure leaves nothing behind. DIR may be new or empty; with --overwrite, files of the same
name in it are replaced (others are left alone).
"""
from __future__ import annotations

import html
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Optional, Sequence

from vidseg.errors import InputError
from vidseg.pipelines.image import not_a_file, read_rgb
from vidseg.pipelines.outputs import check_writable
from vidseg.quiet import native_stderr_filtered

PAGES = [  # (picture stem, heading, one line of explanation)
    ("anchors", "Anchors",
     "Anchors labelled as training would label them if the detections were the ground truth: positive "
     "(IoU >= 0.7 or best for an object; colour) and a sample of negative ones (IoU < 0.3; grey), per level."),
    ("anchor_refinement", "RPN refinement",
     "The anchors the region proposal network scores highest (dotted) and where its box deltas move them (solid)."),
    ("proposals", "Proposals",
     "The best refined anchors before non-maximum suppression, and the proposals left after it, with RPN scores."),
    ("refinement", "Second-stage refinement",
     "Proposals (dotted) moved by the classifier head's class-specific box deltas (solid); per class, "
     "the candidates NMS removed are grey."),
    ("masks_28x28", "Masks (28x28)",
     "The mask head's output for each detection's class: probabilities in a 28x28 grid over its box."),
    ("masks_pasted", "Masks (pasted)",
     "The same masks resized to their boxes, thresholded at 0.5 and pasted into the original image."),
]
MAX_WARNINGS = 20  # flagged weights listed above the weights picture (all are marked in the table)
FINAL = ("detections", "Final result", "Detections with masks, boxes, classes and scores (display_instances).")


@dataclass
class InspectJob:
    """Options of `vidseg inspect` (see the CLI help for each)."""

    image: str
    out: str
    weights: Optional[str] = None
    layers: Optional[Sequence[str]] = None
    classes: Optional[str] = None
    min_confidence: Optional[float] = None
    overwrite: bool = False


def parse_layers(text: Optional[str]) -> Optional[list[str]]:
    """'a,b, c' -> ['a', 'b', 'c']; None -> None (the default layers)."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise InputError("--layers is empty: give layer names separated by commas, e.g. fpn_p2,fpn_p3")
    return names


def check_job(job: InspectJob) -> None:
    """Check what can be checked before the model loads. Raises InputError."""
    if not os.path.isfile(job.image):
        raise InputError(not_a_file(job.image) if os.path.exists(job.image) else f"image not found: {job.image}")
    if job.weights is not None and not os.path.isfile(job.weights):
        raise InputError(f"weights file not found: {job.weights}")
    out = os.path.abspath(job.out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise InputError(f"--out {job.out} is a file; give a folder (new or empty)")
    if not os.path.isdir(os.path.dirname(out)):
        raise InputError(f"the folder holding --out {job.out} does not exist; create it first")
    check_writable(os.path.dirname(out), "folder for --out")  # the pictures are made there first
    if os.path.isdir(out) and os.listdir(out) and not job.overwrite:
        raise InputError(f"--out {job.out} is not empty; give a new or empty folder, or --overwrite")


def _figure_html(stem, heading, line, warnings=()):
    warn = "".join(f'<p class="warn">&#9888; {html.escape(w)}</p>' for w in warnings)
    return (f'<section id="{stem}"><h2>{html.escape(heading)}</h2><p>{html.escape(line)}</p>{warn}'
            f'<img src="{stem}.png" alt="{html.escape(heading)}"></section>\n')


def write_pictures(model, image, layers, folder, min_confidence):
    """Trace `model` (a MaskRCNNFrameModel: `.model` the MaskRCNN, `.class_names`) on `image`
    (uint8 RGB [h, w, 3]) with activations of `layers`, save every picture into `folder` and
    write index.html there. Returns the picture file names in page order."""
    from vidseg.pipelines import inspect_steps as steps

    mrcnn, names = model.model, model.class_names
    t = steps.trace(mrcnn, image, layers)
    figures = [
        ("anchors", steps.draw_anchors(t)),
        ("anchor_refinement", steps.draw_anchor_refinement(t)),
        ("proposals", steps.draw_proposals(t, mrcnn.config.RPN_NMS_THRESHOLD)),
        ("refinement", steps.draw_refinement(t, names, min_confidence)),
        ("masks_28x28", steps.draw_masks28(t, names)),
        ("masks_pasted", steps.draw_masks_pasted(t, names)),
    ]
    body = [_figure_html(stem, heading, line) for stem, heading, line in PAGES]
    written = []
    for stem, fig in figures:
        steps.save_figure(fig, os.path.join(folder, stem + ".png"))
        written.append(stem + ".png")

    layer_warnings = []
    body.append("<h2>Activations</h2><p>Feature maps of the chosen layers (first channels), "
                "from the backbone stages through the FPN to the RPN's objectness per anchor shape.</p>\n")
    for layer in layers:
        stem = "activations_" + layer.replace("/", "_")
        values = t.activations[layer]
        warnings = [f"{layer}: {w}" for w in steps.activation_warnings(values)]
        layer_warnings += warnings
        steps.save_figure(steps.draw_activation(layer, values, t), os.path.join(folder, stem + ".png"))
        written.append(stem + ".png")
        body.append(_figure_html(stem, f"Layer {layer}", f"output {tuple(values.shape)} (batch dimension "
                                 "removed); colour scale per panel.", warnings))

    fig, rows = steps.draw_weights(mrcnn)
    steps.save_figure(fig, os.path.join(folder, "weights.png"))
    written.append("weights.png")
    # Kernels and non-finite/huge values first: constant BatchNorm statistics are normal in a fresh model.
    serious = sorted((r for r in rows if r["alerts"]),
                     key=lambda r: "kernel" not in r["name"] and r["alerts"] == ["dead?"])
    flagged = [f"{r['name']}: {', '.join(r['alerts'])}" for r in serious]
    shown = flagged[:MAX_WARNINGS] + ([f"... and {len(flagged) - MAX_WARNINGS} more flagged weights in the table"]
                                      if len(flagged) > MAX_WARNINGS else [])
    from mrcnn import visualize

    body.append(_figure_html("weights", "Weights", "Histograms of the layers with a flagged kernel first, then of "
                             "landmark layers; the table lists every weight (suspicious ones in red).", shown))
    body.append(f'<details><summary>Weight statistics ({len(rows)} weights, {len(flagged)} flagged)</summary>'
                f'{visualize.display_weight_stats(mrcnn)}</details>\n')

    steps.save_figure(steps.draw_detections(t, names), os.path.join(folder, "detections.png"))
    written.append("detections.png")
    body.append(_figure_html(*FINAL))
    body.append(f"<h2>Tensors</h2><pre>{html.escape(t.log)}</pre>\n")
    c = mrcnn.config
    summary = (f"Image {image.shape[1]}x{image.shape[0]}, molded to {c.IMAGE_SHAPE[1]}x{c.IMAGE_SHAPE[0]}; "
               f"backbone {c.BACKBONE}, {c.NUM_CLASSES} classes, min confidence {c.DETECTION_MIN_CONFIDENCE}; "
               f"{len(t.boxes)} detection(s); {len(layer_warnings)} layer warning(s), "
               f"{len(flagged)} flagged weight(s).")
    _write_index(folder, summary, body)
    return written


def _write_index(folder, summary, body):
    """index.html: a title, the one-line `summary` (text), then the `body` sections (HTML)."""
    head = f"<p>{html.escape(summary)}</p>\n"
    page = ("<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>vidseg inspect</title><style>"
            "body{font-family:sans-serif;max-width:1250px;margin:auto} img{max-width:100%;border:1px solid #ccc}"
            " .warn{color:#b00;font-weight:bold} td{font-family:monospace;padding:0 6px}</style></head><body>\n"
            "<h1>Inside Mask R-CNN</h1>\n" + head + "".join(body) + "</body></html>\n")
    with open(os.path.join(folder, "index.html"), "w", encoding="utf8") as f:
        f.write(page)


def run_inspect(job: InspectJob) -> int:
    """Check the job, load the model, write the pictures and index.html into job.out. Returns 0."""
    check_job(job)
    image = read_rgb(job.image)  # upright, as `vidseg image` reads it (EXIF orientation applied)
    start = time.monotonic()
    with native_stderr_filtered():
        from mrcnn.frame_model import MaskRCNNFrameModel  # imports TensorFlow
        from vidseg.pipelines import inspect_steps as steps

        class _Model(MaskRCNNFrameModel):
            def warm_up(self):  # inspect runs the graph once on its own: no compiled function needed
                pass

        model = _Model(weights=job.weights, batch_size=1, min_confidence=job.min_confidence, class_names=job.classes)
    keras_model = model.model.keras_model
    layers = list(job.layers) if job.layers else steps.default_layers(keras_model)
    unknown = steps.unknown_layers(keras_model, layers)
    if unknown:
        raise InputError(f"no layer named {', '.join(unknown)} in this model; e.g. "
                         f"{', '.join(steps.default_layers(keras_model)[:6])}")
    shared = steps.shared_layers(keras_model, layers)
    if shared:
        raise InputError(f"{', '.join(shared)} runs more than once (once per pyramid level), so it has no one "
                         "activation to show; give layers it feeds or is fed by, e.g. "
                         f"{', '.join(steps.default_layers(keras_model)[4:9])}")
    out = os.path.abspath(job.out)
    tmp = tempfile.mkdtemp(prefix=".inspect-", dir=os.path.dirname(out))
    os.chmod(tmp, 0o755)
    try:
        with native_stderr_filtered():
            written = write_pictures(model, image, layers, tmp, model.config.DETECTION_MIN_CONFIDENCE)
        there = set(os.listdir(out)) if os.path.isdir(out) else set()  # now: files may have come meanwhile
        clash = [n for n in written + ["index.html"] if n in there]
        if clash and not job.overwrite:
            raise InputError(f"--out {job.out} is not empty any more; use --overwrite")
        for name in clash:  # checked before any file is moved: none or all go into place
            target = os.path.join(out, name)
            if os.path.isdir(target):
                raise InputError(f"{target} is a folder; inspect writes a picture of that name: move it")
            if os.path.samefile(target, job.image):
                raise InputError(f"{target} is the input picture; give another --out (inputs are never "
                                 "overwritten)")
        if not os.path.isdir(out):
            os.replace(tmp, out)
        else:
            for name in written + ["index.html"]:
                os.replace(os.path.join(tmp, name), os.path.join(out, name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"vidseg: wrote {len(written)} pictures and {os.path.join(job.out, 'index.html')} "
          f"in {time.monotonic() - start:.0f} s", file=sys.stderr)
    return 0
