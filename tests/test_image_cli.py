"""`vidseg image`: pictures in, drawn pictures and JSON-lines detections out; bad input → exit 2.

The fast tests use `tests.fake_models.BlobModel` (no TensorFlow); the slow one runs the real
Mask R-CNN path on a tiny randomly initialised model saved in the test.
"""
from __future__ import annotations

import json
import os

import cv2
import h5py
import numpy as np
import pytest
from pycocotools import mask as mask_util

from tests.conftest import BLOB_MODEL, blob_frame, make_clip, run_vidseg
from vidseg.pipelines.image import ImageJob, run_image


def save_rgb(path, rgb) -> str:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return str(path)


def load_rgb(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def red_square(height=240, width=320, box=(40, 30, 150, 120)) -> np.ndarray:
    """Dark grey picture with one red square at box (y1, x1, y2, x2), y2/x2 exclusive."""
    img = np.full((height, width, 3), 40, np.uint8)
    y1, x1, y2, x2 = box
    img[y1:y2, x1:x2] = (230, 20, 20)
    return img


def read_lines(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


def assert_one_line_error(r, *words):
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vidseg: error:"), r.stderr
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_one_picture_to_one_file_with_detections(tmp_path):
    src = save_rgb(tmp_path / "in.png", red_square())
    out, dets = tmp_path / "out.png", tmp_path / "d.jsonl"
    r = run_vidseg("image", src, "-o", out, "--model", BLOB_MODEL, "--detections", dets)
    assert r.returncode == 0, r.stderr
    drawn = load_rgb(out)
    original = red_square()
    assert drawn.shape == original.shape
    # Inside the square the mask is blended in; far from it nothing changed.
    assert np.abs(drawn[60:130, 50:100].astype(int) - original[60:130, 50:100]).mean() > 20
    assert (drawn[180:, 200:] == original[180:, 200:]).all()
    (line,) = read_lines(dets)
    assert line["image"] == src
    (d,) = line["detections"]
    assert d["class_name"] == "red" and d["class_id"] == 1 and 0 < d["score"] <= 1
    assert d["box"] == [30, 40, 120, 150]                       # x1, y1, x2, y2
    mask = mask_util.decode({"size": d["mask"]["size"], "counts": d["mask"]["counts"].encode()})
    assert mask.shape == (240, 320)
    truth = np.zeros((240, 320), bool)
    truth[40:150, 30:120] = True
    iou = (mask.astype(bool) & truth).sum() / (mask.astype(bool) | truth).sum()
    assert iou > 0.95


def test_folder_to_folder_in_sorted_order(tmp_path):
    src = tmp_path / "pics"
    src.mkdir()
    save_rgb(src / "b.jpg", blob_frame(3, 640, 480))            # red, green and blue squares
    save_rgb(src / "a.png", red_square())
    save_rgb(src / "c.png", np.full((100, 150, 3), 40, np.uint8))  # nothing to find
    (src / "notes.txt").write_text("not a picture")              # ignored: not an image name
    save_rgb(src / ".hidden.png", red_square())                  # ignored: hidden
    out, dets = tmp_path / "out", tmp_path / "d.jsonl"
    r = run_vidseg("image", src, "-o", out, "--model", BLOB_MODEL, "--detections", dets, "--batch", "2")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == ["a.png", "b.jpg", "c.png"]
    assert load_rgb(out / "b.jpg").shape == (480, 640, 3)
    assert load_rgb(out / "c.png").shape == (100, 150, 3)
    lines = read_lines(dets)
    assert [os.path.basename(x["image"]) for x in lines] == ["a.png", "b.jpg", "c.png"]
    assert [sorted(d["class_name"] for d in x["detections"]) for x in lines] == \
        [["red"], ["blue", "green", "red"], []]
    assert all(d["mask"]["size"] == [480, 640] for d in lines[1]["detections"])


def test_a_picture_keeps_its_name_in_a_folder_capitals_too(tmp_path):
    """...and its format, unless OpenCV cannot write that format in colour (PGM: gray only)."""
    pictures = [save_rgb(tmp_path / name, red_square()) for name in ("UP.JPG", "b.Png")]
    assert cv2.imwrite(str(tmp_path / "scan.pgm"), np.full((240, 320), 90, np.uint8))
    r = run_vidseg("image", *pictures, tmp_path / "scan.pgm", "-o", tmp_path / "out", "--model", BLOB_MODEL)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path / "out")) == ["UP.JPG", "b.Png", "scan.png"]
    assert load_rgb(tmp_path / "out" / "UP.JPG").shape == (240, 320, 3)  # a JPEG, readable


def test_one_picture_into_an_existing_folder(tmp_path):
    src = save_rgb(tmp_path / "in.jpg", red_square())
    (tmp_path / "out").mkdir()
    r = run_vidseg("image", src, "-o", tmp_path / "out", "--model", BLOB_MODEL)
    assert r.returncode == 0, r.stderr
    assert os.listdir(tmp_path / "out") == ["in.jpg"]


def test_gray_alpha_and_phone_rotated_pictures(tmp_path):
    """Gray and RGBA pictures become RGB; the orientation of a JPEG (phone photos) and of a
    TIFF (scanners; OpenCV 5.0 cannot read those) is applied, so boxes are in the picture as
    it is shown."""
    from PIL import Image

    src = tmp_path / "pics"
    src.mkdir()
    cv2.imwrite(str(src / "gray.png"), np.full((50, 60), 128, np.uint8))
    rgba = np.dstack([red_square(), np.full((240, 320), 255, np.uint8)])
    cv2.imwrite(str(src / "rgba.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    exif = Image.Exif()
    exif[0x0112] = 6                                              # stored landscape, shown rotated 90° CW
    Image.fromarray(red_square()).save(src / "phone.jpg", quality=95, exif=exif)
    Image.fromarray(red_square()).save(src / "scan.tif", exif=exif)
    dets = tmp_path / "d.jsonl"
    r = run_vidseg("image", src, "-o", tmp_path / "out", "--model", BLOB_MODEL, "--detections", dets)
    assert r.returncode == 0, r.stderr
    assert load_rgb(tmp_path / "out" / "gray.png").shape == (50, 60, 3)
    assert load_rgb(tmp_path / "out" / "rgba.png").shape == (240, 320, 3)
    assert load_rgb(tmp_path / "out" / "phone.jpg").shape == (320, 240, 3)
    assert load_rgb(tmp_path / "out" / "scan.tif").shape == (320, 240, 3)
    by_name = {os.path.basename(x["image"]): x["detections"] for x in read_lines(dets)}
    assert by_name["gray.png"] == []
    assert [d["box"] for d in by_name["rgba.png"]] == [[30, 40, 120, 150]]
    # Rotating 90° CW maps (x, y) → (H - 1 - y, x): the square's rows 40..150 become columns 90..200.
    for name in ("phone.jpg", "scan.tif"):
        (d,) = by_name[name]
        assert all(abs(a - b) <= 2 for a, b in zip(d["box"], [240 - 150, 30, 240 - 40, 120])), name
    assert r.stderr.count("\n") == 1, r.stderr   # the summary line only, no OpenCV lines


def test_batches_of_the_model_batch_size(tmp_path):
    """In-process: the model is built once and sees at most batch_size pictures per call."""
    paths = [save_rgb(tmp_path / f"{i}.png", red_square(200 + 10 * i, 300)) for i in range(5)]
    RecordingModel.calls.clear()
    RecordingModel.built = 0
    code = run_image(ImageJob(inputs=paths, output=str(tmp_path / "out"), model=f"{__name__}:RecordingModel",
                              batch=2, progress=False))
    assert code == 0
    assert RecordingModel.built == 1
    assert RecordingModel.calls == [[(200, 300), (210, 300)], [(220, 300), (230, 300)], [(240, 300)]]
    assert len(os.listdir(tmp_path / "out")) == 5


def test_a_batch_larger_than_the_pictures_is_built_no_larger(tmp_path):
    """--batch 64 for one picture built (and warmed up) the model for 64: 18 s instead of 5."""
    path = save_rgb(tmp_path / "one.png", red_square())
    RecordingModel.sizes.clear()
    assert run_image(ImageJob(inputs=[path], output=str(tmp_path / "out.png"), model=f"{__name__}:RecordingModel",
                              batch=64, progress=False)) == 0
    assert RecordingModel.sizes == [1]


class RecordingModel:
    """BlobModel-like model that records the frame shapes of each call."""

    calls: list = []
    sizes: list = []  # the batch_size of each model built
    built = 0
    class_names = ("BG", "red")

    def __init__(self, batch_size=1, **_):
        from tests.fake_models import BlobModel

        RecordingModel.built += 1
        RecordingModel.sizes.append(batch_size)
        self.batch_size = batch_size
        self._inner = BlobModel(batch_size)

    def __call__(self, frames):
        RecordingModel.calls.append([f.shape[:2] for f in frames])
        return self._inner(frames)


def test_existing_output_needs_overwrite_and_inputs_are_never_overwritten(tmp_path):
    src = save_rgb(tmp_path / "in.png", red_square())
    out = save_rgb(tmp_path / "out.png", np.zeros((10, 10, 3), np.uint8))
    assert_one_line_error(run_vidseg("image", src, "-o", out, "--model", BLOB_MODEL), "exists", "--overwrite")
    assert load_rgb(out).shape == (10, 10, 3)
    r = run_vidseg("image", src, "-o", out, "--model", BLOB_MODEL, "-y")
    assert r.returncode == 0, r.stderr
    assert load_rgb(out).shape == (240, 320, 3)
    before = open(src, "rb").read()
    assert_one_line_error(run_vidseg("image", src, "-o", src, "--model", BLOB_MODEL, "-y"), "input")
    assert_one_line_error(run_vidseg("image", tmp_path, "-o", tmp_path, "--model", BLOB_MODEL, "-y"), "input")
    assert open(src, "rb").read() == before


BAD_INPUTS = {
    "missing image": (lambda d: [d / "nope.png", "-o", d / "o.png"], "not found"),
    "random bytes": (lambda d: [d / "junk.jpg", "-o", d / "o.png"], "not an image"),
    "text file": (lambda d: [d / "notes.txt", "-o", d / "o.png"], "not an image"),
    "a video": (lambda d: [d / "clip.mp4", "-o", d / "o.png"], "(for a video: vidseg file "),
    "empty folder": (lambda d: [d / "empty", "-o", d / "o"], "no images"),
    "output dir missing": (lambda d: [d / "ok.png", "-o", d / "no" / "o.png"], "does not exist"),
    "folder output's parent missing": (lambda d: [d / "ok.png", d / "ok2.png", "-o", d / "no" / "o"], "does not exist"),
    "unknown output format": (lambda d: [d / "ok.png", "-o", d / "o.xyz"], ".xyz"),
    "gray-only output format": (lambda d: [d / "ok.png", "-o", d / "o.pgm"], ".pgm"),
    "several pictures, output a file": (lambda d: [d / "ok.png", d / "ok2.png", "-o", d / "file.png"], "give a folder"),
    "weights file missing": (lambda d: [d / "ok.png", "-o", d / "o.png", "--weights", d / "w.h5"], "not found"),
    "weights not HDF5": (lambda d: [d / "ok.png", "-o", d / "o.png", "--weights", d / "junk.jpg",
                                "--model", "mrcnn"], "not an HDF5"),
    "unknown model": (lambda d: [d / "ok.png", "-o", d / "o.png", "--model", "bogus"], "unknown model"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(tmp_path, case):
    (tmp_path / "junk.jpg").write_bytes(np.random.default_rng(0).bytes(5000))
    (tmp_path / "notes.txt").write_text("hello")
    make_clip(tmp_path / "clip.mp4", 64, 48, 2, audio=False)
    (tmp_path / "empty").mkdir()
    save_rgb(tmp_path / "ok.png", red_square())
    save_rgb(tmp_path / "ok2.png", red_square())
    save_rgb(tmp_path / "file.png", red_square())
    before = sorted(os.listdir(tmp_path))
    args, words = BAD_INPUTS[case]
    extra = [] if "--model" in args(tmp_path) else ["--model", BLOB_MODEL]
    assert_one_line_error(run_vidseg("image", *args(tmp_path), *extra), words)
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize("name, keep", [("b.png", lambda n: 60),        # PNG signature, then cut
                                        ("b.png", lambda n: n // 2),    # libpng says "Read Error"
                                        ("b.jpg", lambda n: n // 2)])   # libjpeg warns, greys the rest
def test_damaged_picture_midway_leaves_nothing(tmp_path, name, keep):
    """A picture cut short is an error naming it, in one line, whichever decoder reads it
    (a JPEG's decoder only warns and fills the missing part with grey)."""
    src = tmp_path / "pics"
    src.mkdir()
    save_rgb(src / "a.png", red_square())
    noisy = np.random.default_rng(0).integers(0, 256, (240, 320, 3), np.uint8)  # so half is many bytes
    good = open(save_rgb(src / name, noisy), "rb").read()
    (src / name).write_bytes(good[:keep(len(good))])
    r = run_vidseg("image", src, "-o", tmp_path / "out", "--model", BLOB_MODEL, "--detections", tmp_path / "d.jsonl")
    assert_one_line_error(r, name)
    assert sorted(os.listdir(tmp_path)) == ["pics"]              # no folder, no temporary files


@pytest.mark.slow
def test_real_mask_rcnn_path_and_bad_weights(tmp_path):
    """A tiny random-init Mask R-CNN saved with its sidecar JSON, run through `vidseg image`."""
    import keras

    from mrcnn import model as modellib
    from mrcnn.config import Config

    names = ["BG", "square", "circle", "triangle"]
    overrides = dict(IMAGE_MIN_DIM=128, IMAGE_MAX_DIM=128, RPN_ANCHOR_SCALES=[8, 16, 32, 64, 128],
                     POST_NMS_ROIS_INFERENCE=100, DETECTION_MAX_INSTANCES=10)

    tiny = type("Tiny", (Config,), dict(
        NAME="tiny", NUM_CLASSES=4, IMAGES_PER_GPU=1, BACKBONE="resnet18", BACKBONE_WIDTH=0.25,
        TOP_DOWN_PYRAMID_SIZE=32, RPN_CONV_SIZE=32, FPN_CLASSIF_FC_LAYERS_SIZE=64, MASK_HEAD_CONV_SIZE=32,
        **overrides))

    keras.utils.set_random_seed(0)
    weights = tmp_path / "tiny.h5"
    modellib.MaskRCNN("inference", tiny(), model_dir=str(tmp_path)).save_weights(str(weights))
    (tmp_path / "tiny.json").write_text(json.dumps({"config": overrides, "class_names": names}))

    src = tmp_path / "pics"
    src.mkdir()
    sizes = [(240, 320), (300, 200), (128, 128)]
    for i, (h, w) in enumerate(sizes):
        save_rgb(src / f"{i}.png", red_square(h, w, (20, 20, 100, 100)))
    out, dets = tmp_path / "out", tmp_path / "d.jsonl"
    r = run_vidseg("image", src, "-o", out, "--weights", weights, "--min-confidence", "0", "--batch", "2",
                   "--detections", dets, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("3 pictures"), r.stderr
    assert "absl" not in r.stderr and "oneDNN" not in r.stderr, r.stderr   # TensorFlow's chatter filtered
    lines = read_lines(dets)
    assert [os.path.basename(x["image"]) for x in lines] == ["0.png", "1.png", "2.png"]
    assert sum(len(x["detections"]) for x in lines) > 0         # min-confidence 0 keeps non-BG ROIs
    for x, (h, w) in zip(lines, sizes):
        assert load_rgb(out / os.path.basename(x["image"])).shape == (h, w, 3)
        for d in x["detections"]:
            x1, y1, x2, y2 = d["box"]
            assert d["class_name"] in names[1:] and names[d["class_id"]] == d["class_name"]
            assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
            m = mask_util.decode({"size": d["mask"]["size"], "counts": d["mask"]["counts"].encode()})
            assert m.shape == (h, w) and m.sum() == m[y1:y2, x1:x2].sum()   # mask only inside its box

    # Wrong weights: an HDF5 file that is not Mask R-CNN (found after TensorFlow loads; its
    # native log lines must not bury the one-line error).
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("dense/kernel:0", data=np.zeros((4, 4), np.float32))
    r = run_vidseg("image", src, "-o", tmp_path / "out2", "--weights", tmp_path / "other.h5", timeout=600)
    assert_one_line_error(r, "other.h5", "not a Mask R-CNN weights file")
    assert not (tmp_path / "out2").exists()


def test_a_damaged_weights_file_is_one_line(tmp_path):
    """An HDF5 file that opens but has a listed layer's group gone (as overwritten bytes leave
    it) ended in h5py's KeyError traceback."""
    import shutil

    from tests.conftest import REPO

    weights = tmp_path / "damaged.h5"
    shutil.copy(REPO / "vidseg" / "models" / "shapes.h5", weights)
    shutil.copy(REPO / "vidseg" / "models" / "shapes.json", tmp_path / "damaged.json")
    with h5py.File(weights, "r+") as f:
        del f["bn_conv1"]
    picture = save_rgb(tmp_path / "in.png", red_square())
    r = run_vidseg("image", picture, "-o", tmp_path / "out.png", "--weights", weights)
    assert r.returncode == 2, r.stderr
    [line] = r.stderr.strip().splitlines()
    assert line.startswith(f"vidseg: error: {weights} is damaged (") and "bn_conv1" in line
    assert line.endswith("; download or copy it again")
    assert sorted(os.listdir(tmp_path)) == ["damaged.h5", "damaged.json", "in.png"]
