"""--classes, --max-dim and --backbone reach the Mask R-CNN model from every model command.

Runs the shipped model in-process through `vidseg image` (one TensorFlow import) and through
`vidseg file` (the infer stage process), so the options are proven on both paths."""
from __future__ import annotations

import json
import re

import cv2
import pytest

from tests.conftest import BLOB_MODEL, run_vidseg
from vidseg.samples.shapes import ShapesDataset


@pytest.fixture(scope="module")
def shapes_picture(tmp_path_factory):
    """A 256x256 picture of generated shapes (RGB written as PNG)."""
    ds = ShapesDataset.generate(1, 256, 256, seed=7)
    path = tmp_path_factory.mktemp("pic") / "shapes.png"
    cv2.imwrite(str(path), cv2.cvtColor(ds.load_image(ds.image_ids[0]), cv2.COLOR_RGB2BGR))
    return path


def one_line_error(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


@pytest.mark.slow
def test_classes_file_renames_the_shipped_models_classes(shapes_picture, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("BG\nbox\nball\nwedge\n")
    dets = tmp_path / "d.jsonl"
    r = run_vidseg("image", shapes_picture, "-o", tmp_path / "out.png", "--classes", names, "--detections", dets)
    assert r.returncode == 0, r.stderr
    found = json.loads(dets.read_text())["detections"]
    assert found and {d["class_name"] for d in found} <= {"box", "ball", "wedge"}


@pytest.mark.slow
def test_wrong_class_count_and_bad_max_dim_are_one_line_errors(shapes_picture, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("BG\nonly-one\n")
    line = one_line_error(run_vidseg("image", shapes_picture, "-o", tmp_path / "a.png", "--classes", names))
    assert "2 class names" in line and "4 classes" in line
    line = one_line_error(run_vidseg("image", shapes_picture, "-o", tmp_path / "b.png", "--max-dim", "100"))
    assert "multiple of 64" in line
    line = one_line_error(run_vidseg("image", shapes_picture, "-o", tmp_path / "c.png", "--backbone", "resnet50"))
    assert line.endswith("holds a resnet18 backbone, not resnet50: leave out --backbone (the file says which)")


@pytest.mark.slow
def test_max_dim_changes_the_model_input_in_the_file_pipeline(tmp_path):
    """The shipped model at --max-dim 256 instead of its 128 still finds the clip's shapes."""
    from vidseg.samples.shapes import write_moving_shapes_clip

    clip = tmp_path / "clip.mp4"
    write_moving_shapes_clip(str(clip), seconds=0.4, width=640, height=360, fps=10, seed=3)
    dets = tmp_path / "d.jsonl"
    r = run_vidseg("file", clip, "--detections", dets, "--max-dim", "256", "--backbone", "resnet18")
    assert r.returncode == 0, r.stderr
    frames = [json.loads(line) for line in dets.read_text().splitlines()]
    assert len(frames) == 4 and all(f["detections"] for f in frames)


@pytest.fixture
def mine(tmp_path):
    """The shipped weights as `mine.h5` (a link) with no sidecar yet."""
    from mrcnn.frame_model import SHIPPED_WEIGHTS

    path = tmp_path / "mine.h5"
    path.symlink_to(SHIPPED_WEIGHTS)
    return path


@pytest.mark.parametrize("sidecar, message", [
    ('["BG", "square"]', r"mine.json holds a JSON list, not an object"),
    ('{"config": {"IMAGE_MAX_DIM": 128,}}', r"mine.json is not valid JSON \(.*line 1"),
    ('{"config": {"IMAGE_MAX_DIMS": 128}}', r"unknown config field\(s\) IMAGE_MAX_DIMS"),
    ('{"config": [128]}', r'"config" must be an object'),
    ('{"class_names": "BG square"}', r'"class_names" must be a list'),
    ('{"batch_size": 0}', r'"batch_size" must be a positive'),
    ('{"training": {"layers": "all", "lr": 0.1}}', r'"training" has an unknown field \'lr\''),
    ('{"training": {"learning_rate": -0.1}}', r'"training" learning_rate must be a positive number, got -0.1'),
    ('{"training": {"steps_per_epoch": true}}', r'"training" steps_per_epoch must be a positive number, got True'),
    ('{"training": ["heads"]}', r'"training" must be an object'),
    # these went through: every label shifted by one, or a traceback from deep in the model
    ('{"class_names": ["square", "circle", "triangle", "x"]}', r'"class_names": the first class name must be BG'),
    ('{"class_names": ["BG", "sq", "sq", "sq"]}', r"'sq' is named twice"),
    ('{"config": {"IMAGE_MAX_DIM": 100}}', r"IMAGE_MAX_DIM must be a positive multiple of 64.*got 100"),
    ('{"config": {"IMAGE_MAX_DIM": "128"}}', r"IMAGE_MAX_DIM must be a whole number, got '128'"),
    ('{"config": {"RPN_ANCHOR_SCALES": [8, 16, 32]}}', r"RPN_ANCHOR_SCALES needs one scale per backbone stride \(5\)"),
    ('{"config": {"USE_MINI_MASK": "yes"}}', r"USE_MINI_MASK must be true or false"),
])
def test_a_bad_sidecar_is_an_input_error(mine, sidecar, message):
    from mrcnn.frame_model import MaskRCNNFrameModel
    from vidseg.errors import InputError

    mine.with_suffix(".json").write_text(sidecar)
    with pytest.raises(InputError, match=message + ".*fix it, or move it away to use mine.h5 without it"):
        MaskRCNNFrameModel(weights=mine)


@pytest.mark.parametrize("text, message", [
    ("square\ncircle\ntriangle\nx\n", "the first class name must be BG (the background), got 'square'"),  # labels shifted by one
    ("BG\nsq\nsq\nsq\n", "'sq' is named twice"),
    ('[["BG"], ["a"], ["b"], ["c"]]', "a JSON list must hold names only"),             # labels like "['a']"
])
def test_a_classes_file_without_bg_first_or_with_twins_is_refused(mine, tmp_path, text, message):
    from mrcnn.frame_model import MaskRCNNFrameModel
    from vidseg.errors import InputError

    names = tmp_path / "names.txt"
    names.write_text(text)
    with pytest.raises(InputError, match=r"class names file .*names.txt: " + re.escape(message)):
        MaskRCNNFrameModel(weights=mine, class_names=names)


@pytest.mark.parametrize("text", ["", "\n  \n"])
def test_an_empty_classes_file_is_called_empty(mine, tmp_path, text):
    """It said "the first class name must be BG (the background), got 'none'"."""
    from mrcnn.frame_model import MaskRCNNFrameModel
    from vidseg.errors import InputError

    names = tmp_path / "names.txt"
    names.write_text(text)
    with pytest.raises(InputError, match=r"class names file .*names.txt is empty; give one name per line, BG first"):
        MaskRCNNFrameModel(weights=mine, class_names=names)


def test_a_backbone_other_than_the_files_is_refused(tmp_path):
    """--backbone resnet50 on ResNet-101 weights loaded silently (R50's layers are a subset of
    R101's) and ran a network cut short; the file says which backbone it holds."""
    import h5py
    import numpy as np

    from mrcnn.frame_model import MaskRCNNFrameModel
    from vidseg.errors import InputError

    path = tmp_path / "r101.h5"
    with h5py.File(path, "w") as f:  # the layers architecture_from_file reads, in matterport's layout
        names = ["conv1", "res4w_branch2a", "mrcnn_class_logits"]
        f.attrs["layer_names"] = np.array([n.encode() for n in names])
        for name in names:
            f.create_group(name).attrs["weight_names"] = np.array([b"bias:0"])
            f[name].create_dataset("bias:0", data=np.zeros(81 if name == "mrcnn_class_logits" else 64))
    with pytest.raises(InputError, match="r101.h5 holds a resnet101 backbone, not resnet50: leave out --backbone"):
        MaskRCNNFrameModel(weights=path, backbone="resnet50")


def test_a_classes_file_not_in_utf8_is_an_input_error(mine, tmp_path):
    from mrcnn.frame_model import MaskRCNNFrameModel
    from vidseg.errors import InputError

    names = tmp_path / "names.txt"
    names.write_text("BG\nbox\nball\nwedge\n", encoding="utf-16")
    with pytest.raises(InputError, match=r"class names file .*names.txt is not UTF-8 text .*save it as UTF-8"):
        MaskRCNNFrameModel(weights=mine, class_names=names)


@pytest.mark.slow
def test_bad_sidecar_and_classes_file_are_one_line_errors_in_the_cli(shapes_picture, mine, tmp_path):
    mine.with_suffix(".json").write_text('["BG", "square"]')
    line = one_line_error(run_vidseg("image", shapes_picture, "-o", tmp_path / "a.png", "--weights", mine))
    assert line.startswith("vidseg: error: sidecar ") and "not an object" in line
    names = tmp_path / "names.txt"
    names.write_text("BG\nbox\nball\nwedge\n", encoding="utf-16")
    line = one_line_error(run_vidseg("inspect", shapes_picture, "--out", tmp_path / "report", "--classes", names))
    assert "not UTF-8 text" in line


def test_min_confidence_holds_for_a_plug_in_model_that_ignores_it(clip_480, tmp_path):
    """BlobModel scores red ~0.9, green ~0.8, blue ~0.7 and takes no min_confidence: its blue
    blobs were written and drawn under --min-confidence 0.75."""
    def classes(*options) -> set:
        found = tmp_path / "found.jsonl"
        r = run_vidseg("file", clip_480, "--detections", found, "-y", "--model", BLOB_MODEL, "--no-progress", *options)
        assert r.returncode == 0, r.stderr
        return {d["class_name"] for line in found.read_text().splitlines() for d in json.loads(line)["detections"]}

    assert classes() == {"red", "green", "blue"}
    assert classes("--min-confidence", "0.75") == {"red", "green"}
