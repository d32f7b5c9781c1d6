"""Bad input to `image`, `inspect`, `evaluate`, `train` and `weights download`: one line saying
what is wrong and what to do, exit 2, no traceback, nothing left behind. Each case here was a
traceback or a misleading line before."""
from __future__ import annotations

import json
import os
import shutil
import struct
import zlib

import cv2
import h5py
import numpy as np
import pytest

from tests.conftest import BLOB_MODEL, REPO, run_vidseg
from vidseg.errors import InputError

SHIPPED = REPO / "vidseg" / "models" / "shapes.h5"
SQUARE = {"shape_attributes": {"name": "polygon", "all_points_x": [10, 40, 40, 10], "all_points_y": [10, 10, 40, 40]},
          "region_attributes": {}}


def assert_one_line_error(r, *words):
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vidseg: error: "), r.stderr[-3000:]
    for w in words:
        assert w in lines[0], lines[0]


def picture(path) -> str:
    image = np.full((64, 64, 3), 90, np.uint8)
    image[10:40, 10:40] = 230
    assert cv2.imwrite(str(path), image)
    return str(path)


def via_set(root, export) -> str:
    """root/train and root/val, a picture a.jpg in each and `export` as their VIA file."""
    for subset in ("train", "val"):
        (root / subset).mkdir(parents=True)
        picture(root / subset / "a.jpg")
        (root / subset / "via_region_data.json").write_bytes(export)
    return str(root)


def coco_set(root, instances) -> str:
    """root/annotations/instances_{train,val}2014.json holding `instances`, a picture in each subset."""
    (root / "annotations").mkdir(parents=True)
    for subset in ("train", "val"):
        (root / f"{subset}2014").mkdir()
        picture(root / f"{subset}2014" / "a.jpg")
        (root / "annotations" / f"instances_{subset}2014.json").write_bytes(instances)
    return str(root)


COCO = {"images": [{"id": 1, "file_name": "a.jpg", "height": 64, "width": 64}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[10, 10, 40, 10, 40, 40, 10, 40]],
                         "area": 900, "bbox": [10, 10, 30, 30], "iscrowd": 0}],
        "categories": [{"id": 1, "name": "square"}]}
VIA = {"a.jpg": {"filename": "a.jpg", "size": 1, "regions": [SQUARE], "file_attributes": {}}}


def without(key, index=None, field=None):
    data = json.loads(json.dumps(COCO))
    if field is None:
        del data[key]
    else:
        del data[key][index][field]
    return json.dumps(data).encode()


# ---- COCO files: pycocotools failed inside (KeyError 'categories' for a VIA file, a traceback);
# the other cases said "not a COCO instances file (<the exception's repr>)", for random bytes
# the whole file's bytes in the one line

COCO_CASES = {
    "a VIA export": (json.dumps(VIA).encode(), "is not a COCO instances file: it is a VGG Image Annotator export; "
                                               "use --kind via"),
    "a list": (b"[1, 2]", "found a list (a detections or results file?)"),
    "a string": (b'"hello"', "found a string"),
    "not UTF-8": (b'{"images": "\xff"}', "is not UTF-8 text; save it as UTF-8 JSON"),
    "random bytes": (bytes(np.random.default_rng(0).integers(0, 256, 3000, np.uint8)), "is not UTF-8 text"),
    "empty": (b"", "is empty; give a COCO instances file"),
    "not JSON": (b"{not json", "is not JSON (Expecting property name enclosed in double quotes: line 1 column 2)"),
    "numbers for lists": (b'{"images": 1, "annotations": 2, "categories": 3}', "'images' is not a list"),
    "no categories": (without("categories"), "'categories' is missing"),
    "an image without a file name": (without("images", 0, "file_name"),
                                     "images[0] has no 'file_name'; every entry of images needs id, file_name, "
                                     "height, width"),
    "an annotation without a category": (without("annotations", 0, "category_id"), "annotations[0] has no "
                                                                                   "'category_id'"),
    "a size that is text": (json.dumps(dict(COCO, images=[dict(COCO["images"][0], width="64")])).encode(),
                            "images[0] needs a file name and a height and width in pixels"),
}


@pytest.mark.parametrize("case", COCO_CASES)
def test_a_coco_file_of_the_wrong_kind_says_what_it_is(tmp_path, case):
    from vidseg.samples.coco import CocoDataset

    content, message = COCO_CASES[case]
    root = coco_set(tmp_path, content)
    with pytest.raises(InputError) as e:
        CocoDataset().load_coco(root, "train")
    assert str(e.value).startswith(f"{root}/annotations/instances_train2014.json ")
    assert message in str(e.value) and len(str(e.value)) < 300, str(e.value)


def test_a_folder_named_as_the_coco_file_is_said_to_be_one(tmp_path):
    from vidseg.samples.coco import CocoDataset

    root = coco_set(tmp_path, json.dumps(COCO).encode())
    path = tmp_path / "annotations" / "instances_train2014.json"
    path.unlink()
    path.mkdir()
    with pytest.raises(InputError, match="instances_train2014.json is a folder; the COCO annotations must be a JSON"):
        CocoDataset().load_coco(root, "train")


# ---- VIA files: a region list of the wrong shape was an AttributeError traceback

VIA_CASES = {
    "regions a string": ({"a.jpg": {"filename": "a.jpg", "regions": "x"}}, "image 'a.jpg' is not a VIA entry"),
    "regions of numbers": ({"a.jpg": {"filename": "a.jpg", "regions": [1, 2]}}, "image 'a.jpg' is not a VIA entry"),
    "shape attributes a list": ({"a.jpg": {"filename": "a.jpg", "regions": [{"shape_attributes": [1]}]}},
                                "image 'a.jpg' is not a VIA entry"),
    "a number for a file name": ({"a": {"filename": 5, "regions": []}}, "image 5 is not a VIA entry"),
    "a COCO file": (COCO, "not a VIA export: it is a COCO instances file; use --kind coco"),
}


@pytest.mark.parametrize("case", VIA_CASES)
def test_a_via_file_of_the_wrong_shape_says_what_is_wrong(tmp_path, case):
    from vidseg.samples.custom import ViaDataset

    export, message = VIA_CASES[case]
    root = via_set(tmp_path, json.dumps(export).encode())
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        ViaDataset().load_via(root, "train", class_name="square")


def test_a_via_file_that_is_not_utf8_says_so_and_a_folder_of_its_name_is_one(tmp_path):
    """The first said "not a readable VIA JSON file ('utf-8' codec can't decode byte 0xff in
    position 11: ...)", the second "[Errno 21] Is a directory"."""
    from vidseg.samples.custom import ViaDataset

    root = via_set(tmp_path, b'{"a.jpg": "\xff"}')
    with pytest.raises(InputError, match=r"not a readable VIA JSON file \(not UTF-8 text\); save it as UTF-8"):
        ViaDataset().load_via(root, "train", class_name="square")
    path = tmp_path / "train" / "via_region_data.json"
    path.unlink()
    path.mkdir()
    with pytest.raises(InputError, match="via_region_data.json is a folder; the VIA export must be a JSON file"):
        ViaDataset().load_via(root, "train", class_name="square")


@pytest.mark.parametrize("command", ["evaluate", "train"])
def test_wrong_kind_annotations_are_one_line_in_the_commands(tmp_path, command):
    """`evaluate --kind coco` on a VIA file was a KeyError traceback, `train --kind via` with a
    region list of the wrong shape an AttributeError one; both exit 1."""
    coco = coco_set(tmp_path / "coco", json.dumps(VIA).encode())
    via = via_set(tmp_path / "via", json.dumps({"a.jpg": {"filename": "a.jpg", "regions": "x"}}).encode())
    before = sorted(os.listdir(tmp_path))
    train = ["--weights", "none", "--epochs", "1", "--model-dir", tmp_path / "logs"] if command == "train" else []
    r = run_vidseg(command, "--kind", "coco", "--dataset", coco, *train)
    assert_one_line_error(r, "it is a VGG Image Annotator export; use --kind via")
    r = run_vidseg(command, "--kind", "via", "--dataset", via, "--class-name", "square", *train)
    assert_one_line_error(r, "image 'a.jpg' is not a VIA entry")
    assert sorted(os.listdir(tmp_path)) == before


def test_weights_for_other_classes_say_what_to_evaluate_instead(tmp_path):
    """It said only "... has 4 classes but the dataset has 2 (with BG)"."""
    via = via_set(tmp_path, json.dumps(VIA).encode())
    r = run_vidseg("evaluate", "--kind", "via", "--dataset", via, "--class-name", "square")
    assert_one_line_error(r, "has 4 classes but the dataset has 2 (with BG); evaluate weights trained on its "
                             "classes (vidseg train --kind via ..., then --weights last)")


@pytest.mark.timeout(60)
def test_evaluate_generates_only_the_shapes_it_evaluates():
    """--images 99999999999 --limit 1 generated every image's description first: it ran for
    12 minutes, its memory growing, before it was stopped."""
    from vidseg.samples.train import EvaluateJob, evaluation_set

    dataset = evaluation_set(EvaluateJob(kind="shapes", images=10 ** 11, limit=3, seed=5))
    assert len(dataset.image_ids) == 3
    whole = evaluation_set(EvaluateJob(kind="shapes", images=10, seed=5))
    assert [dataset.image_info[i]["shapes"] for i in range(3)] == [whole.image_info[i]["shapes"] for i in range(3)]


# ---- weights files: a truncated .h5 was "not an HDF5 weights file" (it is one, cut short)
# from every command, and a raw h5py line from `file` and `bench` once the check was sharper

def truncated(tmp_path) -> str:
    path = tmp_path / "cut.h5"
    path.write_bytes(SHIPPED.read_bytes()[:SHIPPED.stat().st_size // 2])
    shutil.copy(SHIPPED.with_suffix(".json"), tmp_path / "cut.json")
    return str(path)


@pytest.mark.parametrize("content, message", [
    (None, "is cut short or damaged ("),
    (b"", "is empty; give a Mask R-CNN .h5"),
    (b"hello", "is not an HDF5 weights file; give a Mask R-CNN .h5"),
], ids=["truncated", "empty", "text"])
def test_weights_that_are_not_whole_hdf5_say_which(tmp_path, content, message):
    from mrcnn.utils import not_hdf5

    path = truncated(tmp_path) if content is None else tmp_path / "w.h5"
    if content is not None:
        path.write_bytes(content)
    assert message in not_hdf5(path)
    assert not_hdf5(SHIPPED) is None


@pytest.mark.parametrize("command", ["image", "evaluate", "inspect"])
def test_a_truncated_weights_file_is_one_line_saying_to_copy_it_again(tmp_path, command):
    weights = truncated(tmp_path)
    src = picture(tmp_path / "in.png")
    args = {"image": ["image", src, "-o", tmp_path / "out.png"],
            "evaluate": ["evaluate", "--kind", "shapes", "--images", "1"],
            "inspect": ["inspect", src, "--out", tmp_path / "report"]}[command]
    r = run_vidseg(*args, "--weights", weights)
    assert_one_line_error(r, f"{weights} is cut short or damaged (", "download or copy it again")
    assert sorted(os.listdir(tmp_path)) == ["cut.h5", "cut.json", "in.png"]


def test_weights_download_into_a_folder_that_takes_no_files_is_refused_first(tmp_path):
    """As root, access() said /proc was writable: the download started, and the line said the
    network was down ("cannot reach github.com") or, from a mirror, failed writing the part."""
    weights = tmp_path / "w.h5"
    with h5py.File(weights, "w") as f:
        f.create_dataset("x", data=np.zeros(4))
    r = run_vidseg("weights", "download", "coco", "--dir", "/proc", "--url", weights.as_uri())
    assert_one_line_error(r, "cannot write to /proc: it takes no new files; choose a writable --dir")


def test_weights_download_from_a_mirror_that_sends_a_cut_file_keeps_nothing(tmp_path):
    """With no size announced (file://), a truncated HDF5 file passed h5py.is_hdf5 (the
    signature) and was saved as the weights."""
    source = truncated(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    r = run_vidseg("weights", "download", "coco", "--dir", out, "--url", f"file://{source}", "--no-progress")
    assert_one_line_error(r, "did not send an HDF5 weights file")
    assert os.listdir(out) == []


# ---- pictures and model options

def huge_png(path, width, height) -> str:
    """A PNG of width x height black pixels, written row by row (never whole in memory)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row = zlib.compressobj(9), b"\0" * (1 + 3 * width)
    rows = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["image", "inspect"])
def test_a_picture_too_large_to_decode_is_one_line(tmp_path, command):
    """Over 2^30 pixels OpenCV's imread raised a cv2.error assertion: a traceback."""
    src = huge_png(tmp_path / "huge.png", 40000, 30000)
    args = ["-o", tmp_path / "out.png", "--model", BLOB_MODEL] if command == "image" else ["--out", tmp_path / "r"]
    r = run_vidseg(command, src, *args)
    assert_one_line_error(r, f"cannot decode {src}: 40000x30000 (1,200,000,000 pixels) is too large a picture to "
                             "decode; shrink it first")
    assert os.listdir(tmp_path) == ["huge.png"]


def test_a_max_dim_too_large_for_memory_is_refused(tmp_path):
    """--max-dim 8192 (a multiple of 64, so taken) built a model the kernel killed for memory
    after 80 s: no line at all from `image`, "killed by SIGKILL" from the others."""
    r = run_vidseg("image", picture(tmp_path / "in.png"), "-o", tmp_path / "out.png", "--max-dim", "8192")
    assert_one_line_error(r, "--max-dim", "8192 is not in the range 64<=x<=4096")
    assert os.listdir(tmp_path) == ["in.png"]


@pytest.mark.parametrize("name", ["w.h5", "w.json", "names.txt"])
def test_an_output_is_never_a_file_the_model_is_read_from(tmp_path, name):
    """`--detections w.h5 --weights w.h5 -y` replaced the 16 MB weights with 283 bytes of
    detections and exited 0 (-y replaces outputs, not inputs); so too the class names beside
    them (w.json) or given with --classes."""
    shutil.copy(SHIPPED, tmp_path / "w.h5")
    shutil.copy(SHIPPED.with_suffix(".json"), tmp_path / "w.json")
    (tmp_path / "names.txt").write_text("BG\nsquare\ncircle\ntriangle\n")
    src = picture(tmp_path / "in.png")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    r = run_vidseg("image", src, "-o", tmp_path / "out.png", "--detections", tmp_path / name, "--weights",
                   tmp_path / "w.h5", "--classes", tmp_path / "names.txt", "-y")
    what = {"w.h5": "the --weights file", "w.json": "the class names and settings of --weights",
            "names.txt": "the --classes file"}[name]
    assert_one_line_error(r, f"output {tmp_path / name} is {what}; choose another path")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("command", ["file", "rtsp"])
def test_a_video_run_never_writes_over_the_files_the_model_is_read_from(command, clip_480, tmp_path):
    """`vidseg file` (and camera and rtsp, which share their checks) with `--detections w.h5
    --weights w.h5 -y` replaced the weights with the detections and exited 0; `--stats`
    could do the same to the class names beside them."""
    shutil.copy(SHIPPED, tmp_path / "w.h5")
    shutil.copy(SHIPPED.with_suffix(".json"), tmp_path / "w.json")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    source = [clip_480] if command == "file" else ["--no-window", "rtsp://127.0.0.1:9/none"]
    for option, name, what in (("--detections", "w.h5", "the --weights file"),
                               ("--stats", "w.json", "the class names and settings of --weights")):
        r = run_vidseg(command, *source, option, tmp_path / name, "--weights", tmp_path / "w.h5", "-y",
                       "--no-progress")
        assert_one_line_error(r, f"output {tmp_path / name} is {what}; choose another path")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("command", ["image", "inspect"])
def test_a_pipe_given_as_a_picture_is_not_called_missing(tmp_path, command):
    """A FIFO (or a device) was "image not found"; it is there, and not read (it may never end)."""
    os.mkfifo(tmp_path / "fifo")
    args = ["-o", tmp_path / "out.png", "--model", BLOB_MODEL] if command == "image" else ["--out", tmp_path / "r"]
    r = run_vidseg(command, tmp_path / "fifo", *args, timeout=60)
    assert_one_line_error(r, f"{tmp_path / 'fifo'} is a pipe or a device, not a file; save the picture to a file first")
    assert os.listdir(tmp_path) == ["fifo"]


def test_training_stops_at_the_first_step_whose_loss_is_not_finite():
    from mrcnn.training import StopOnDivergence, TrainingDiverged

    stop = StopOnDivergence()
    stop.on_epoch_begin(2)
    stop.on_train_batch_end(0, {"loss": 5e27})
    with pytest.raises(TrainingDiverged, match="the loss became nan in epoch 3, step 2, so that epoch's checkpoint "
                                               "was not written"):
        stop.on_train_batch_end(1, {"loss": float("nan")})


@pytest.mark.slow
def test_a_learning_rate_that_makes_training_diverge_is_one_line_and_leaves_no_checkpoint(tmp_path):
    """--lr 1e30 trained to NaN weights, saved them as the epoch's checkpoint (178 arrays not
    finite) and exited 0 saying where the checkpoints were."""
    r = run_vidseg("train", "--kind", "shapes", "--weights", "none", "--layers", "all", "--epochs", "1", "--steps", "2",
                   "--val-steps", "1", "--lr", "1e30", "--model-dir", tmp_path / "logs", timeout=600)
    assert_one_line_error(r, "training diverged: the loss became nan in epoch 1, step ",
                          "train again with a lower --lr (this run's: 1e+30)")
    assert os.listdir(tmp_path) == []


def test_inspect_of_a_layer_the_model_runs_per_pyramid_level_is_one_line(tmp_path):
    """--layers rpn_model (a sub-model called once per level) was Keras' 'Output with path
    `7.0` is not connected to `inputs`' traceback."""
    r = run_vidseg("inspect", picture(tmp_path / "in.png"), "--out", tmp_path / "r", "--layers", "fpn_p2,rpn_model")
    assert_one_line_error(r, "rpn_model runs more than once (once per pyramid level), so it has no one activation to "
                             "show; give layers it feeds or is fed by, e.g. fpn_p2")
    assert os.listdir(tmp_path) == ["in.png"]


def test_both_ways_of_naming_via_classes_are_refused_naming_the_options(tmp_path):
    """It said "give either one class name for all regions or the region attribute ...",
    naming no option (the API's words)."""
    via = via_set(tmp_path, json.dumps(VIA).encode())
    r = run_vidseg("evaluate", "--kind", "via", "--dataset", via, "--class-name", "square", "--attribute", "kind")
    assert_one_line_error(r, "--kind via needs --class-name NAME (one class) or --attribute ATTR (class per region), "
                             "not both")
