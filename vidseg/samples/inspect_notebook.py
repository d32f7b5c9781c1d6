"""Build `inspect_model.ipynb`: Mask R-CNN stage by stage in a notebook, with the same
functions as `vidseg inspect` (`vidseg.pipelines.inspect_steps`, `mrcnn.visualize`).

    python -m vidseg.samples.inspect_notebook [OUT.ipynb] [--weights W.h5] [--image PIC]
                                              [--min-confidence X]

The notebook is generated from this file, never edited by hand, so it follows the library;
`vidseg/samples/inspect_model.ipynb` is its output with the default parameters (the shipped
model on scikit-image's astronaut), and a test executes it headless.
Needs nbformat (and Jupyter to open the result).
"""
from __future__ import annotations

import argparse
import os
import sys

NOTEBOOK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "inspect_model.ipynb")

INTRO = """# Inside Mask R-CNN, stage by stage

The same pictures as `vidseg inspect IMAGE --out DIR`, one cell per stage, in the order the
network computes them: anchors and the region proposal network (RPN), proposals and their
non-maximum suppression (NMS), the second-stage box refinement, the masks, layer activations,
weights, and the final result. Change the parameters in the next cell and run all cells."""

PARAMETERS = """# Parameters
WEIGHTS = {weights!r}           # None: the shipped model; or matterport's .h5, or your checkpoint
IMAGE = {image!r}             # None: scikit-image's astronaut; or a picture file
MIN_CONFIDENCE = {min_confidence!r}    # None: the model's DETECTION_MIN_CONFIDENCE
LAYERS = None            # None: backbone stages, FPN levels and RPN objectness; or a list of names"""

CELLS = [
    ("code", """%matplotlib inline
import skimage.data
from IPython.display import HTML, display

from mrcnn import visualize
from mrcnn.frame_model import MaskRCNNFrameModel
from mrcnn.utils import read_rgb
from vidseg.pipelines import inspect_steps as steps

model = MaskRCNNFrameModel(WEIGHTS, batch_size=1, min_confidence=MIN_CONFIDENCE)
config, class_names = model.config, model.class_names
print(config.BACKBONE, "backbone,", config.NUM_CLASSES, "classes:", ", ".join(class_names))"""),
    ("markdown", """## One pass through the network
`steps.trace` runs the graph once (`MaskRCNN.run_graph`) and keeps every stage's output;
below, the shape, min and max of each tensor it read."""),
    ("code", """image = skimage.data.astronaut() if IMAGE is None else read_rgb(IMAGE)
layers = LAYERS or steps.default_layers(model.model.keras_model)
t = steps.trace(model.model, image, layers)
print(t.log)
print(len(t.boxes), "detections")"""),
    ("markdown", """## Stage 1: anchors
Anchors labelled as training would label them if the detections were the ground truth:
positive (IoU >= 0.7, or the best anchor of an object) in colour, a sample of negative ones
(IoU < 0.3) in grey, per pyramid level."""),
    ("code", "steps.draw_anchors(t)"),
    ("markdown", "The anchors the RPN scores highest (dotted) and where its box deltas move them (solid)."),
    ("code", "steps.draw_anchor_refinement(t)"),
    ("markdown", """## Proposals
The best refined anchors before NMS, and the proposals left after it (the `ROI` layer), with
their RPN scores."""),
    ("code", "steps.draw_proposals(t, config.RPN_NMS_THRESHOLD)"),
    ("markdown", """## Stage 2: classification and box refinement
Proposals (dotted) moved by the class-specific deltas of the classifier head (solid); per
detected class, the candidates removed by NMS are grey."""),
    ("code", "steps.draw_refinement(t, class_names, config.DETECTION_MIN_CONFIDENCE)"),
    ("markdown", """## Masks
Each detection's 28x28 mask probabilities, then the same masks resized into their boxes,
thresholded at 0.5 and pasted into the image, and per class (`display_top_masks`)."""),
    ("code", "steps.draw_masks28(t, class_names)"),
    ("code", "steps.draw_masks_pasted(t, class_names)"),
    ("code", "visualize.display_top_masks(image, t.masks, t.class_ids, class_names)"),
    ("markdown", """## Activations
The first channels of each chosen layer; a layer that is all zeros, constant or saturated is
reported (a broken or badly loaded layer usually shows here first)."""),
    ("code", """for layer in layers:
    values = t.activations[layer]
    print(layer, values.shape, steps.activation_warnings(values) or "ok")
    display(steps.draw_activation(layer, values, t))"""),
    ("markdown", """## Weights
Histograms of flagged and landmark layers, and matterport's table of every weight's
statistics (suspicious ones in red)."""),
    ("code", """fig, rows = steps.draw_weights(model.model)
display(fig)
HTML(visualize.display_weight_stats(model.model))"""),
    ("markdown", "## Final result"),
    ("code", "steps.draw_detections(t, class_names)"),
]


def build(weights=None, image=None, min_confidence=None):
    """The notebook (nbformat NotebookNode, v4) with these parameter values."""
    import nbformat
    from nbformat import v4

    cells = [v4.new_markdown_cell(INTRO),
             v4.new_code_cell(PARAMETERS.format(weights=weights, image=image, min_confidence=min_confidence))]
    for kind, source in CELLS:
        cells.append(v4.new_code_cell(source) if kind == "code" else v4.new_markdown_cell(source))
    nb = v4.new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"}})
    for i, cell in enumerate(nb.cells):   # stable ids: regenerating gives the same file
        cell["id"] = f"cell-{i:02d}"
    nbformat.validate(nb)
    return nb


def write(nb, path):
    """Write a notebook as nbformat JSON."""
    import nbformat

    with open(path, "w", encoding="utf8") as f:
        nbformat.write(nb, f)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", default=NOTEBOOK, help="Notebook to write (default: %(default)s).")
    parser.add_argument("--weights", default=None, help="Weights file (default: the shipped model).")
    parser.add_argument("--image", default=None, help="Picture (default: scikit-image's astronaut).")
    parser.add_argument("--min-confidence", type=float, default=None, help="Detection threshold.")
    args = parser.parse_args(argv)
    write(build(args.weights, args.image, args.min_confidence), args.out)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
