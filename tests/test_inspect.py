"""`vidseg inspect`: every documented picture written, non-blank, of its documented size, and
referenced in order by index.html; layer warnings; the traced stages agree with `detect`;
bad input is one line, exit 2, nothing left behind.

The slow tests use scikit-image's astronaut and a tiny randomly initialised Mask R-CNN saved
in matterport's h5 layout (as `MaskRCNN.save_weights` writes it), and the shipped model
`vidseg/models/shapes.h5` when it is there.
"""
from __future__ import annotations

import json
import os
import re
import shutil

import cv2
import h5py
import numpy as np
import pytest
import skimage.data

from tests.conftest import run_vidseg
from vidseg.pipelines.inspect import PAGES

SIZES = {  # the sizes documented in vidseg/pipelines/inspect.py, (width, height)
    "anchors": (1500, 1000), "anchor_refinement": (1000, 1000), "proposals": (2000, 1000),
    "refinement": (1500, 1000), "masks_28x28": (1200, 1200), "masks_pasted": (1200, 1200),
    "weights": (1600, 1560), "detections": (1000, 1000)}
ACTIVATION = (1200, 1200)
TINY_DEFAULT_LAYERS = ["res2b_out", "res3b_out", "res4b_out", "res5b_out",
                       "fpn_p2", "fpn_p3", "fpn_p4", "fpn_p5", "fpn_p6", "rpn_class"]
TINY_NAMES = ["BG", "square", "circle", "triangle"]
TINY_OVERRIDES = dict(IMAGE_MIN_DIM=128, IMAGE_MAX_DIM=128, RPN_ANCHOR_SCALES=[8, 16, 32, 64, 128],
                      POST_NMS_ROIS_INFERENCE=100, DETECTION_MAX_INSTANCES=10)


def assert_one_line_error(r, *words):
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vidseg: error:"), r.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "astronaut.png"
    assert cv2.imwrite(str(path), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    return str(path)


def save_tiny(path, zero_layers=()):
    """A tiny random-init ResNet-18 Mask R-CNN (4 classes, 128x128) in the Keras 2 h5 layout,
    with its sidecar JSON; the kernels and biases of `zero_layers` set to zero in the file."""
    import keras

    from mrcnn import model as modellib
    from mrcnn.config import Config

    tiny = type("Tiny", (Config,), dict(
        NAME="tiny", NUM_CLASSES=4, IMAGES_PER_GPU=1, BACKBONE="resnet18", BACKBONE_WIDTH=0.25,
        TOP_DOWN_PYRAMID_SIZE=32, RPN_CONV_SIZE=32, FPN_CLASSIF_FC_LAYERS_SIZE=64, MASK_HEAD_CONV_SIZE=32,
        **TINY_OVERRIDES))
    keras.utils.set_random_seed(0)
    modellib.MaskRCNN("inference", tiny(), model_dir=os.path.dirname(path)).save_weights(str(path))
    with h5py.File(path, "r+") as f:
        for layer in zero_layers:
            for name in f[layer].attrs["weight_names"]:
                f[layer][name][...] = 0
    with open(os.path.splitext(path)[0] + ".json", "w") as f:
        json.dump({"config": TINY_OVERRIDES, "class_names": TINY_NAMES}, f)
    return str(path)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """(normal, with fpn_p5 zeroed): P5 and so P6 (its max-pool) are all zeros in the second."""
    root = tmp_path_factory.mktemp("tiny")
    return save_tiny(root / "tiny.h5"), save_tiny(root / "tiny_p5_off.h5", zero_layers=["fpn_p5"])


def check_report(out, layers):
    """Every picture there, PNG, non-blank, of its documented size, referenced in page order."""
    stems = [s for s, _, _ in PAGES] + ["activations_" + n for n in layers] + ["weights", "detections"]
    assert sorted(os.listdir(out)) == sorted([s + ".png" for s in stems] + ["index.html"])
    for stem in stems:
        img = cv2.imread(os.path.join(out, stem + ".png"))
        assert img is not None, stem
        w, h = SIZES.get(stem, ACTIVATION)
        assert img.shape == (h, w, 3), (stem, img.shape)
        gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        assert gray.std() > 10 and np.mean(gray < 230) > 0.03, f"{stem}.png looks blank"
    page = open(os.path.join(out, "index.html"), encoding="utf8").read()
    assert re.findall(r'<img src="([^"]+)"', page) == [s + ".png" for s in stems]
    return page


def section(page, stem):
    """The HTML of one picture's section."""
    return re.search(rf'<section id="{stem}">.*?</section>', page, re.S).group(0)


@pytest.mark.slow
def test_tiny_model_default_layers_every_picture_and_zero_layer_warnings(tmp_path, astronaut, tiny_weights):
    out = tmp_path / "report"
    r = run_vidseg("inspect", astronaut, "--weights", tiny_weights[1], "--out", out, "--min-confidence", "0",
                   timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("vidseg: wrote 18 pictures")
    page = check_report(out, TINY_DEFAULT_LAYERS)
    for layer in ("fpn_p5", "fpn_p6"):
        assert f"{layer}: all zeros" in section(page, "activations_" + layer)
    for layer in ("res2b_out", "fpn_p2", "fpn_p4"):
        assert 'class="warn"' not in section(page, "activations_" + layer)
    assert "fpn_p5/kernel" in section(page, "weights") and "dead?" in section(page, "weights")
    assert "Weight statistics" in page and "mrcnn_mask" in page
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".inspect-")]


@pytest.mark.slow
def test_chosen_layers_overwrite_and_unknown_layer(tmp_path, astronaut, tiny_weights):
    out = tmp_path / "report"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "weights.png").write_bytes(b"old")
    layers = ["fpn_p3", "mrcnn_mask_conv1", "mrcnn_class"]
    r = run_vidseg("inspect", astronaut, "--weights", tiny_weights[0], "--out", out, "--layers", ",".join(layers),
                   timeout=600)
    assert_one_line_error(r, "not empty", "--overwrite")
    r = run_vidseg("inspect", astronaut, "--weights", tiny_weights[0], "--out", out, "--layers", ",".join(layers),
                   "-y", timeout=600)
    assert r.returncode == 0, r.stderr
    assert (out / "notes.txt").read_text() == "mine"        # other files are left alone
    os.remove(out / "notes.txt")
    check_report(out, layers)

    r = run_vidseg("inspect", astronaut, "--weights", tiny_weights[0], "--out", tmp_path / "r2",
                   "--layers", "fpn_p3,no_such_layer", timeout=600)
    assert_one_line_error(r, "no_such_layer", "fpn_p2")
    assert sorted(os.listdir(tmp_path)) == ["report"]


@pytest.mark.slow
def test_matterport_coco_layout_file_with_zero_weights(tmp_path, astronaut):
    """A ResNet-50 COCO file in matterport's exact layout (81 classes, COCO names), all weights
    zero, at 256x256 via its sidecar: every picture, every activation flagged all zeros or
    constant, the weights flagged dead, no detections."""
    import subprocess
    import sys

    data = os.path.join(os.path.dirname(__file__), "mrcnn", "data")
    weights = tmp_path / "mask_rcnn_coco_r50.h5"
    subprocess.run([sys.executable, os.path.join(data, "make_fake_coco_h5.py"),
                    os.path.join(data, "coco_r50_manifest.json"), str(weights), "zeros"], check=True)
    (tmp_path / "mask_rcnn_coco_r50.json").write_text(json.dumps({"config": {"IMAGE_MIN_DIM": 256,
                                                                             "IMAGE_MAX_DIM": 256}}))
    out = tmp_path / "report"
    r = run_vidseg("inspect", astronaut, "--weights", weights, "--out", out, timeout=900)
    assert r.returncode == 0, r.stderr
    layers = ["res2c_out", "res3d_out", "res4f_out", "res5c_out", "fpn_p2", "fpn_p3", "fpn_p4", "fpn_p5",
              "fpn_p6", "rpn_class"]
    page = check_report(out, layers)
    for layer in layers[:-1]:
        assert f"{layer}: all zeros" in section(page, "activations_" + layer)
    assert "rpn_class: constant (every value = 0.5)" in section(page, "activations_rpn_class")
    assert "conv1/kernel: dead?" in section(page, "weights") and "290 more flagged weights" in section(page, "weights")
    assert "81 classes" in page and "0 detection(s); 10 layer warning(s), 310 flagged weight(s)" in page


@pytest.mark.slow
def test_a_diverged_model_is_drawn_not_a_traceback(tmp_path, astronaut):
    """Random weights in matterport's layout (what a diverged training leaves): NaN boxes were
    drawn at -2**31 pixels (matplotlib's raster overflow) and an all-NaN layer had no minimum;
    both ended in a traceback, on the model one would most want to look inside."""
    import subprocess
    import sys

    data = os.path.join(os.path.dirname(__file__), "mrcnn", "data")
    weights = tmp_path / "diverged.h5"
    subprocess.run([sys.executable, os.path.join(data, "make_fake_coco_h5.py"),
                    os.path.join(data, "coco_r50_manifest.json"), str(weights), "random"], check=True)
    (tmp_path / "diverged.json").write_text(json.dumps({"config": {"IMAGE_MIN_DIM": 256, "IMAGE_MAX_DIM": 256}}))
    out = tmp_path / "report"
    r = run_vidseg("inspect", astronaut, "--weights", weights, "--out", out, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "index.html").exists() and (out / "refinement.png").exists()


def test_shipped_model(tmp_path, astronaut):
    out = tmp_path / "report"
    r = run_vidseg("inspect", astronaut, "--out", out, timeout=600)
    assert r.returncode == 0, r.stderr
    layers = re.findall(r'src="activations_([^"]+)\.png"', (out / "index.html").read_text())
    assert layers[4:] == ["fpn_p2", "fpn_p3", "fpn_p4", "fpn_p5", "fpn_p6", "rpn_class"] and len(layers) == 10
    check_report(out, layers)


@pytest.mark.slow
def test_trace_agrees_with_detect_and_pictures_have_their_sizes(tiny_weights):
    """The stages shown are the model's own: same detections as detect(), proposals are NMS
    survivors of the pre-NMS boxes in score order, each detection is its source proposal refined."""
    from mrcnn import utils
    from mrcnn.frame_model import MaskRCNNFrameModel
    from vidseg.pipelines import inspect_steps as steps

    model = MaskRCNNFrameModel(tiny_weights[0], min_confidence=0.0)
    image = skimage.data.astronaut()
    t = steps.trace(model.model, image, ["fpn_p2", "mrcnn_mask_conv1"])
    ref = model.model.detect([image])[0]
    assert len(ref["rois"]) > 0
    np.testing.assert_array_equal(t.boxes, ref["rois"])
    np.testing.assert_array_equal(t.class_ids, ref["class_ids"])
    np.testing.assert_allclose(t.scores, ref["scores"], atol=1e-5)
    np.testing.assert_array_equal(t.masks, ref["masks"])

    assert len(t.proposals) == model.config.POST_NMS_ROIS_INFERENCE
    distance = np.abs(t.proposals[:, None] - t.pre_nms[None]).sum(axis=2).min(axis=1)
    assert distance.max() < 1e-5                                   # every proposal is a pre-NMS box
    assert np.all(np.diff(t.proposal_scores) <= 1e-6) and np.all(np.diff(t.pre_nms_scores) <= 0)
    np.testing.assert_allclose(t.proposal_refined[t.detection_sources], t.detections[:, :4], atol=1e-5)
    assert np.all(t.proposal_probs[t.detection_sources].argmax(axis=1) == t.detections[:, 4])

    # Positive anchors overlap a detection by IoU >= 0.7 or are (one of) a detection's best.
    from mrcnn.data import pixel_anchors

    det = utils.denorm_boxes(t.detections[:, :4], t.image.shape[:2])
    overlaps = utils.compute_overlaps(pixel_anchors(model.config, t.image.shape), det)
    pos = t.rpn_match == 1
    assert pos.any() and np.all((t.rpn_match[~pos] == -1) <= (overlaps[~pos].max(axis=1) < 0.3))
    assert np.all((overlaps[pos].max(axis=1) >= 0.7) | np.any(overlaps[pos] == overlaps.max(axis=0), axis=1))
    assert t.activations["fpn_p2"].shape == (32, 32, 32) and t.activations["mrcnn_mask_conv1"].ndim == 4

    from mrcnn import visualize

    figures = {"anchors": steps.draw_anchors(t), "anchor_refinement": steps.draw_anchor_refinement(t),
               "proposals": steps.draw_proposals(t, 0.7), "refinement": steps.draw_refinement(t, TINY_NAMES, 0.0),
               "masks_28x28": steps.draw_masks28(t, TINY_NAMES), "masks_pasted": steps.draw_masks_pasted(t, TINY_NAMES),
               "weights": steps.draw_weights(model.model)[0], "detections": steps.draw_detections(t, TINY_NAMES)}
    for name, fig in figures.items():
        assert visualize.figure_to_image(fig).shape == SIZES[name][::-1] + (3,), name
    fig = steps.draw_activation("mrcnn_mask_conv1", t.activations["mrcnn_mask_conv1"], t)
    assert visualize.figure_to_image(fig).shape == ACTIVATION[::-1] + (3,)


def test_activation_warnings():
    from vidseg.pipelines.inspect_steps import activation_warnings

    rng = np.random.default_rng(0)
    relu = np.maximum(rng.normal(size=(16, 16, 8)), 0)           # half zeros: healthy
    assert activation_warnings(relu) == []
    assert activation_warnings(rng.random((100, 2))) == []
    assert activation_warnings(np.zeros((8, 8, 4))) == ["all zeros"]
    assert activation_warnings(np.full((4, 4), 0.5)) == ["constant (every value = 0.5)"]
    stuck = np.where(rng.random((64, 64)) < 0.5, 1e-7, 1 - 1e-7)  # a sigmoid stuck at 0/1
    assert activation_warnings(stuck)[0].startswith("saturated: 100.0%")
    dead = relu.copy()
    dead[relu > 0] = 0
    dead[0, 0, 0] = 3.0                                           # one live value in 2048
    assert activation_warnings(dead)[0].startswith("saturated")
    nan = relu.copy()
    nan[1, 1, 1] = np.nan
    assert activation_warnings(nan) == ["contains NaN/Inf"]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["input_picture", "folder"])
def test_overwrite_never_replaces_the_input_or_a_folder(tmp_path, astronaut, tiny_weights, case):
    """With --overwrite, an input picture in --out under a name inspect writes was replaced by
    the report's, and a folder of such a name stopped the run halfway (pictures moved in, no
    index.html). Both are refused before any file is moved."""
    out = tmp_path / "pics"
    out.mkdir()
    if case == "input_picture":
        image = out / "detections.png"
        shutil.copy(astronaut, image)
        words = [f"{image} is the input picture", "another --out"]
    else:
        image = astronaut
        (out / "detections.png").mkdir()
        words = [f"{out / 'detections.png'} is a folder"]
    before = {p.name: p.is_dir() or p.read_bytes() for p in out.iterdir()}
    r = run_vidseg("inspect", image, "--weights", tiny_weights[0], "--out", out, "--layers", "fpn_p3", "-y",
                   timeout=600)
    assert_one_line_error(r, *words)
    assert {p.name: p.is_dir() or p.read_bytes() for p in out.iterdir()} == before
    assert sorted(os.listdir(tmp_path)) == ["pics"]


@pytest.mark.slow
def test_a_file_that_appears_in_out_meanwhile_is_not_replaced(tmp_path, astronaut, tiny_weights, monkeypatch):
    """--out was empty when checked; another program wrote detections.png there while the
    model ran. It was replaced: the check compared against the listing made at the start."""
    from vidseg.errors import InputError
    from vidseg.pipelines import inspect

    out = tmp_path / "pics"
    out.mkdir()
    real = inspect.write_pictures

    def write_then_another_program_writes(*args, **kwargs):
        names = real(*args, **kwargs)
        (out / "detections.png").write_bytes(b"theirs")
        return names

    monkeypatch.setattr(inspect, "write_pictures", write_then_another_program_writes)
    job = inspect.InspectJob(image=astronaut, out=str(out), weights=tiny_weights[0], layers=["fpn_p3"])
    with pytest.raises(InputError, match="not empty any more; use --overwrite"):
        inspect.run_inspect(job)
    assert os.listdir(out) == ["detections.png"] and (out / "detections.png").read_bytes() == b"theirs"
    assert sorted(os.listdir(tmp_path)) == ["pics"]


@pytest.mark.slow
def test_a_phone_photo_is_inspected_upright(tmp_path, tiny_weights):
    """The EXIF orientation is applied, as `vidseg image` does (inspect showed it on its side)."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90° clockwise
    Image.fromarray(np.full((120, 200, 3), 90, np.uint8)).save(tmp_path / "phone.jpg", exif=exif)
    r = run_vidseg("inspect", tmp_path / "phone.jpg", "--weights", tiny_weights[0], "--out", tmp_path / "r",
                   "--layers", "fpn_p3", timeout=600)
    assert r.returncode == 0, r.stderr
    assert "Image 120x200, molded to" in (tmp_path / "r" / "index.html").read_text()


@pytest.mark.parametrize("case", ["missing_image", "not_image", "missing_weights", "out_is_file", "out_not_empty",
                                  "no_parent", "empty_layers"])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(tmp_path, astronaut, case):
    args = {"image": astronaut, "out": str(tmp_path / "out"), "extra": []}
    words = []
    if case == "missing_image":
        args["image"], words = str(tmp_path / "nope.png"), ["image not found"]
    elif case == "not_image":
        (tmp_path / "x.png").write_text("not a picture")
        args["image"], words = str(tmp_path / "x.png"), ["x.png", "not an image"]
    elif case == "missing_weights":
        args["extra"], words = ["--weights", str(tmp_path / "w.h5")], ["weights file not found"]
    elif case == "out_is_file":
        (tmp_path / "out").write_text("")
        words = ["is a file"]
    elif case == "out_not_empty":
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "a").write_text("")
        words = ["not empty"]
    elif case == "no_parent":
        args["out"], words = str(tmp_path / "a" / "b"), ["does not exist"]
    elif case == "empty_layers":
        args["extra"], words = ["--layers", " , "], ["--layers"]
    before = sorted(os.listdir(tmp_path))
    r = run_vidseg("inspect", args["image"], "--out", args["out"], *args["extra"])
    assert_one_line_error(r, *words)
    assert sorted(os.listdir(tmp_path)) == before


def test_committed_notebook_is_the_generated_one():
    import nbformat
    from vidseg.samples import inspect_notebook

    with open(inspect_notebook.NOTEBOOK, encoding="utf8") as f:
        committed = f.read()
    assert committed == nbformat.writes(inspect_notebook.build()) + "\n", \
        "regenerate it: python -m vidseg.samples.inspect_notebook"


@pytest.mark.slow
def test_notebook_runs_headless_and_shows_every_stage(tmp_path, tiny_weights):
    import nbclient
    import nbformat

    from vidseg.samples import inspect_notebook

    nb = inspect_notebook.build(weights=tiny_weights[0], min_confidence=0.0)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}},
                            ).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    pictures = [o for o in outputs if "image/png" in o.get("data", {})]
    # 7 stage pictures (with display_top_masks), one per default layer, weights, final result
    assert len(pictures) == 7 + len(TINY_DEFAULT_LAYERS) + 2
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "fpn_p2 (32, 32, 32) ok" in text
    assert any("<table>" in o.get("data", {}).get("text/html", "") for o in outputs)
    nbformat.validate(nb)
