"""Synthetic shapes: seeded datasets, their masks, the shifted generator, and the video clip."""
import json
import subprocess
import sys

import av
import numpy as np
import pytest

from vidseg.samples import shapes
from vidseg.samples.shapes import ShapesConfig, ShapesDataset


def test_classes_and_config_are_matterports():
    ds = ShapesDataset.generate(5, 128, 128, seed=0)
    assert ds.class_names == ["BG", "square", "circle", "triangle"]
    config = ShapesConfig()
    assert config.NUM_CLASSES == 4 and config.BATCH_SIZE == 8
    assert list(config.IMAGE_SHAPE) == [128, 128, 3]
    assert tuple(config.RPN_ANCHOR_SCALES) == (8, 16, 32, 64, 128)


def test_generation_is_seeded():
    a = ShapesDataset.generate(20, 96, 128, seed=7)
    b = ShapesDataset.generate(20, 96, 128, seed=7)
    c = ShapesDataset.generate(20, 96, 128, seed=8)
    for i in range(20):
        np.testing.assert_array_equal(a.load_image(i), b.load_image(i))
    assert any(not np.array_equal(a.load_image(i), c.load_image(i)) for i in range(20))
    image = a.load_image(0)
    assert image.shape == (96, 128, 3) and image.dtype == np.uint8


def _check_masks_match_pixels(ds):
    """Every mask covers exactly the pixels of its shape's colour; every shape mostly visible."""
    for image_id in ds.image_ids:
        image = ds.load_image(image_id)
        masks, class_ids = ds.load_mask(image_id)
        info = ds.image_info[image_id]
        assert masks.dtype == bool and class_ids.dtype == np.int32
        assert masks.shape[-1] == len(class_ids) == len(info["shapes"]) >= 1
        assert not (masks.sum(axis=-1) > 1).any(), "instances overlap"
        for i, (name, color, (x, y, s)) in enumerate(info["shapes"]):
            assert class_ids[i] == ds.class_names.index(name)
            np.testing.assert_array_equal(image[masks[..., i]], np.tile(color, (masks[..., i].sum(), 1)))
            full = shapes.draw_shape(np.zeros(image.shape[:2], np.uint8), name, (x, y, s), 1).sum()
            assert masks[..., i].sum() >= 0.5 * full
        background = ~masks.any(axis=-1)
        assert (image[background] == info["bg_color"]).all()
        assert min(np.linalg.norm(np.subtract(c, info["bg_color"])) for _, c, _ in info["shapes"]) >= 60


def test_masks_match_the_drawn_pixels():
    _check_masks_match_pixels(ShapesDataset.generate(60, 128, 128, seed=1))
    _check_masks_match_pixels(ShapesDataset.generate_shifted(60, 128, 128, seed=1))


def _stats(ds):
    dims = np.array([d for info in ds.image_info for _, _, d in info["shapes"]])
    colors = [(info["bg_color"], c) for info in ds.image_info for _, c, _ in info["shapes"]]
    return dims[:, 0], dims[:, 1], dims[:, 2], colors


def test_training_generator_follows_matterport_ranges():
    x, y, s, colors = _stats(ShapesDataset.generate(300, 128, 128, seed=2))
    assert s.min() >= 20 and s.max() <= 32
    assert x.min() >= 20 and x.max() <= 107 and y.min() >= 20 and y.max() <= 107
    assert any(len(set(bg)) > 1 for bg, _ in colors)  # coloured backgrounds


def test_shifted_generator_differs_in_size_colour_and_position():
    x, y, s, colors = _stats(ShapesDataset.generate_shifted(300, 128, 128, seed=2))
    outside_sizes = (s < 20) | (s > 32)
    assert 0.3 < outside_sizes.mean() < 0.9
    edge = (np.minimum(x, 127 - x) < 20) | (np.minimum(y, 127 - y) < 20)
    assert 0.35 < edge.mean() < 0.65
    assert all(len(set(bg)) == 1 for bg, _ in colors)  # grey backgrounds
    assert all(max(c) >= 150 and min(c) <= 5 for _, c in colors)  # saturated hues


def test_moving_shapes_clip_is_playable_and_matches_its_truth(tmp_path):
    path, truth_path = tmp_path / "clip.mp4", tmp_path / "truth.jsonl"
    truths = shapes.write_moving_shapes_clip(path, seconds=1, width=320, height=240, fps=30, seed=3,
                                             truth_path=truth_path)
    assert len(truths) == 30
    probe = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_frames",
                            "-show_entries", "stream=codec_name,width,height,r_frame_rate,nb_read_frames",
                            "-of", "json", str(path)], capture_output=True, text=True, check=True)
    stream = json.loads(probe.stdout)["streams"][0]
    assert stream == {"codec_name": "h264", "width": 320, "height": 240, "r_frame_rate": "30/1",
                      "nb_read_frames": "30"}
    lines = truth_path.read_text().splitlines()
    assert len(lines) == 30
    with av.open(str(path)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    checked = 0
    for index in (0, 15, 29):
        masks, boxes, class_ids = truths[index].instances()
        record = json.loads(lines[index])
        assert record["boxes"] == boxes.tolist() and record["class_ids"] == class_ids.tolist()
        drawn = truths[index].shapes
        if len(drawn) == len(class_ids):  # no shape entirely hidden: masks pair with shapes
            for i, (name, color, _) in enumerate(drawn):
                assert class_ids[i] == shapes.CLASS_NAMES.index(name)
                # the decoded shape's mean colour is the drawn colour (codec tolerance)
                assert np.abs(decoded[index][masks[..., i]].mean(axis=0) - color).max() < 12
                checked += 1
    assert checked >= 3
    assert truths[0].instances()[1].tolist() != truths[29].instances()[1].tolist()  # shapes move


def test_clip_rejects_odd_sizes_and_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(ValueError, match="even"):
        shapes.write_moving_shapes_clip(tmp_path / "a.mp4", seconds=1, width=321, height=240)
    with pytest.raises(Exception):
        shapes.write_moving_shapes_clip(tmp_path / "missing" / "b.mp4", seconds=1, width=64, height=64)
    assert list(tmp_path.iterdir()) == []


def test_dataset_modules_do_not_import_tensorflow():
    """`vidseg demo` writes its clip in the main process, which must stay free of TensorFlow."""
    code = ("import sys, vidseg.samples.shapes, vidseg.samples.custom, vidseg.samples.coco; "
            "sys.exit(bool({'tensorflow', 'keras'} & set(sys.modules)))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
