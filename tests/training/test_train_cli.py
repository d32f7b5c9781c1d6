"""`vidseg train` then `vidseg evaluate --weights last` on a VGG Image Annotator folder and
on a COCO-layout folder, as a user fine-tunes on their own data: starting from a weights
file with other classes (the shipped model: its class-specific heads are left out), one
step, a checkpoint per epoch that holds the trained weights, and the evaluation of it, with
none of TensorFlow's native log lines on the terminal."""
import glob
import json

import cv2
import h5py
import numpy as np
import pytest

from mrcnn.frame_model import SHIPPED_WEIGHTS
from tests.conftest import run_vidseg
from vidseg.quiet import NOISE

pytestmark = pytest.mark.slow

H, W = 96, 128
SQUARES = {"a.jpg": [(10, 10, 40), (70, 40, 30)], "b.jpg": [(50, 20, 36)], "c.jpg": [(20, 50, 28)]}


def _draw(folder, name):
    """A grey image with a white square per SQUARES[name] entry (x, y, side)."""
    folder.mkdir(parents=True, exist_ok=True)
    image = np.full((H, W, 3), 90, np.uint8)
    for x, y, s in SQUARES[name]:
        image[y:y + s, x:x + s] = 230
    cv2.imwrite(str(folder / name), image)


def _via_polygon(x, y, s):
    return {"shape_attributes": {"name": "polygon", "all_points_x": [x, x + s, x + s, x],
                                 "all_points_y": [y, y, y + s, y + s]}, "region_attributes": {}}


@pytest.fixture(scope="module")
def via_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("via")
    for subset, names in (("train", ["a.jpg", "b.jpg"]), ("val", ["c.jpg"])):
        export = {}
        for name in names:
            _draw(root / subset, name)
            regions = [_via_polygon(*square) for square in SQUARES[name]]
            export[name] = {"filename": name, "size": 1, "regions": regions, "file_attributes": {}}
        (root / subset / "via_region_data.json").write_text(json.dumps(export))
    return root


@pytest.fixture(scope="module")
def coco_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    (root / "annotations").mkdir()
    for subset, names in (("train", ["a.jpg", "b.jpg"]), ("val", ["c.jpg"])):
        images, annotations = [], []
        for image_id, name in enumerate(names, 1):
            _draw(root / f"{subset}2014", name)
            images.append({"id": image_id, "file_name": name, "height": H, "width": W})
            for x, y, s in SQUARES[name]:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 5,
                                    "segmentation": [[x, y, x + s, y, x + s, y + s, x, y + s]],
                                    "area": s * s, "bbox": [x, y, s, s], "iscrowd": 0})
        data = {"images": images, "annotations": annotations, "categories": [{"id": 5, "name": "square"}]}
        (root / "annotations" / f"instances_{subset}2014.json").write_text(json.dumps(data))
    return root


def _kernel(path, layer):
    """The kernel of `layer` in a weights file in matterport's h5 layout."""
    with h5py.File(path, "r") as f:
        return np.array(f[layer][f"{layer}/kernel:0"])


@pytest.mark.parametrize("kind, options", [("via", ["--class-name", "square"]), ("coco", [])])
def test_train_then_evaluate_the_last_checkpoint(kind, options, via_dataset, coco_dataset, tmp_path):
    dataset = via_dataset if kind == "via" else coco_dataset
    common = ["--kind", kind, "--dataset", dataset, *options, "--model-dir", tmp_path / "logs"]
    r = run_vidseg("train", *common, "--weights", SHIPPED_WEIGHTS, "--epochs", "1", "--steps", "1",
                   "--val-steps", "1", timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not any(NOISE.match(line) for line in r.stderr.splitlines()), r.stderr[-3000:]
    checkpoints = glob.glob(str(tmp_path / "logs" / f"{kind}*" / f"mask_rcnn_{kind}_0001.h5"))
    assert len(checkpoints) == 1, r.stdout[-2000:]
    assert f"checkpoints in {checkpoints[0].rsplit('/', 1)[0]}" in r.stdout
    # --layers heads: the FPN trained from the shipped model's values; the backbone stayed.
    assert not np.array_equal(_kernel(checkpoints[0], "fpn_c5p5"), _kernel(SHIPPED_WEIGHTS, "fpn_c5p5"))
    assert np.array_equal(_kernel(checkpoints[0], "conv1"), _kernel(SHIPPED_WEIGHTS, "conv1"))

    if kind == "via":
        # the checkpoint's sidecar (training config, class names) makes it a --weights of its own
        meta = json.loads(open(checkpoints[0][:-len(".h5")] + ".json", encoding="utf8").read())
        assert meta["class_names"] == ["BG", "square"] and meta["config"]["IMAGE_MAX_DIM"] == 1024  # CustomConfig
        dets = tmp_path / "d.jsonl"
        r = run_vidseg("image", dataset / "val" / "c.jpg", "-o", tmp_path / "c.png", "--weights", checkpoints[0],
                       "--detections", dets, "--min-confidence", "0.01", timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        assert {d["class_name"] for d in json.loads(dets.read_text())["detections"]} <= {"square"}

    r = run_vidseg("evaluate", *common, "--weights", "last", "--json", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not any(NOISE.match(line) for line in r.stderr.splitlines()), r.stderr[-3000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["images"] == 1
    for eval_type in ("bbox", "segm"):
        assert all(-1 <= value <= 1 for value in report[eval_type].values())


def test_evaluate_with_no_weights_is_one_line(tmp_path):
    """It said 'None has None classes but the dataset has 4'."""
    r = run_vidseg("evaluate", "--kind", "shapes", "--weights", "none", "--images", "2")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == \
        ["vidseg: error: --weights none has nothing to evaluate: give coco, last or a weights file"]


@pytest.fixture(scope="module")
def via_shapes(tmp_path_factory):
    """Pictures of the shipped model's own kind (squares, circles, triangles) as a VGG Image
    Annotator folder, each region's class under the attribute "name"."""
    from vidseg.samples.shapes import ShapesDataset

    root = tmp_path_factory.mktemp("via_shapes")
    shapes = ShapesDataset.generate(6, seed=3)
    export = {}
    for image_id in shapes.image_ids:
        name = f"{image_id}.png"
        _draw_image(root / "val", name, shapes.load_image(image_id))
        masks, class_ids = shapes.load_mask(image_id)
        regions = []
        for k, class_id in enumerate(class_ids):
            contours, _ = cv2.findContours(masks[:, :, k].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            points = max(contours, key=cv2.contourArea)[:, 0]
            regions.append({"shape_attributes": {"name": "polygon", "all_points_x": points[:, 0].tolist(),
                                                 "all_points_y": points[:, 1].tolist()},
                            "region_attributes": {"name": shapes.class_names[class_id]}})
        export[name] = {"filename": name, "size": 1, "regions": regions, "file_attributes": {}}
    (root / "val" / "via_region_data.json").write_text(json.dumps(export))
    return root


def _draw_image(folder, name, rgb):
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def test_evaluate_matches_a_datasets_classes_to_the_models_by_name(via_shapes, tmp_path):
    """A VIA set's class ids follow its sorted names (circle 1, square 2, triangle 3); the
    shipped model's are square 1, circle 2, triangle 3. Ids were compared as they were: AP50
    0.33 on the model's own kind of pictures, and 0 with no word for classes it never knew."""
    r = run_vidseg("evaluate", "--kind", "via", "--dataset", via_shapes, "--attribute", "name", "--json", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["images"] == 6 and report["segm"]["AP50"] > 0.8, report

    export = via_shapes / "val" / "via_region_data.json"
    renamed = tmp_path / "renamed"
    (renamed / "val").mkdir(parents=True)
    for picture in (via_shapes / "val").glob("*.png"):
        (renamed / "val" / picture.name).symlink_to(picture)
    (renamed / "val" / export.name).write_text(export.read_text().replace('"square"', '"box"'))
    r = run_vidseg("evaluate", "--kind", "via", "--dataset", renamed, "--attribute", "name", timeout=900)
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1].endswith(
        "detects square, circle, triangle but the dataset's classes are box, circle, triangle; "
        "evaluate it on a dataset of its own classes"), r.stderr


@pytest.mark.parametrize("command", ["evaluate", "train"])
def test_weights_given_a_folder_say_so(command, tmp_path):
    """It said 'weights file not found' of a folder that is there."""
    epochs = ["--epochs", "1"] if command == "train" else []
    r = run_vidseg(command, "--kind", "shapes", "--weights", tmp_path, *epochs)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"vidseg: error: weights {tmp_path} is a folder; give a weights file (.h5)"


def test_an_unwritable_model_dir_is_refused_before_the_work(tmp_path):
    """It was found at the first checkpoint, after the datasets and TensorFlow had loaded:
    exit 1 and 'Read-only file system'."""
    (tmp_path / "notes").write_text("a file")
    for model_dir, error in [("/proc/vidseg-logs", "cannot write to /proc: it takes no new files; choose a writable "
                              "--model-dir"), (tmp_path / "notes" / "logs", f"--model-dir {tmp_path / 'notes' / 'logs'}: "
                              f"{tmp_path / 'notes'} is a file; give a folder")]:
        r = run_vidseg("train", "--kind", "shapes", "--weights", "none", "--epochs", "1", "--model-dir", model_dir)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().splitlines() == [f"vidseg: error: {error}"]


@pytest.mark.parametrize("command, options, line", [
    ("evaluate", ["--kind", "shapes", "--subset", "train"], "--subset is read by --kind via and coco only; "
     "leave it out with --kind shapes"),
    ("evaluate", ["--kind", "coco", "--dataset", ".", "--seed", "3"], "--seed is read by --kind shapes only; "
     "leave it out with --kind coco"),
    ("train", ["--kind", "shapes", "--weights", "none", "--epochs", "1", "--class-name", "square"],
     "--class-name is read by --kind via only; leave it out with --kind shapes"),
    ("train", ["--kind", "via", "--dataset", ".", "--attribute", "a", "--weights", "none", "--epochs", "1",
               "--year", "2017"], "--year is read by --kind coco only; leave it out with --kind via"),
])
def test_an_option_another_kind_reads_is_refused_not_ignored(command, options, line):
    """`evaluate --kind shapes --subset train` evaluated the generated set as if nothing were
    said; an option the kind does not read is now a usage error, before any work."""
    r = run_vidseg(command, *options)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [f"vidseg: error: {line} (see --help)"]


def test_resuming_the_last_checkpoint_trains_as_its_run_did(tmp_path):
    """`--weights last` ran at --layers heads and the kind's learning rate and steps whatever
    the run it resumes had used: a run of the whole network went on training only its heads.
    The options left out now come from the checkpoint's sidecar; those given win."""
    logs = tmp_path / "logs"
    common = ["--kind", "shapes", "--model-dir", logs]
    r = run_vidseg("train", *common, "--weights", SHIPPED_WEIGHTS, "--epochs", "1", "--layers", "all",
                   "--lr", "0.0007", "--steps", "1", "--val-steps", "1", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_vidseg("train", *common, "--weights", "last", "--epochs", "2", "--steps", "2", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    first, second = sorted(glob.glob(str(logs / "shapes*" / "mask_rcnn_shapes_000?.h5")))
    assert r.stdout.splitlines()[0] == \
        "resuming mask_rcnn_shapes_0001.h5 as its run trained: --layers all --lr 0.0007 --val-steps 1"
    meta = json.loads(open(second[:-len(".h5")] + ".json", encoding="utf8").read())
    assert meta["training"] == {"layers": "all", "learning_rate": 0.0007, "steps_per_epoch": 2, "validation_steps": 1}
    assert not np.array_equal(_kernel(first, "conv1"), _kernel(second, "conv1"))  # the backbone trained on
