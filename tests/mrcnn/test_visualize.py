"""mrcnn.visualize: headless figures, returned not shown, and one pixel-checked drawing."""
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from mrcnn import utils, visualize

EXPECTED = Path(__file__).parent.parent / "data" / "display_instances_expected.png"
CLASS_NAMES = ["BG", "square", "circle", "triangle"]


def _scene():
    """A fixed 64x80 picture with a square and a circle, their masks, boxes and ids."""
    image = np.full((64, 80, 3), 90, np.uint8)
    masks = np.zeros((64, 80, 2), bool)
    masks[8:28, 10:30, 0] = True
    yy, xx = np.mgrid[:64, :80]
    masks[..., 1] = (yy - 40) ** 2 + (xx - 55) ** 2 < 14 ** 2
    image[masks[..., 0]] = (200, 60, 60)
    image[masks[..., 1]] = (60, 200, 60)
    boxes = utils.extract_bboxes(masks)
    return image, boxes, masks, np.array([1, 2]), np.array([0.98, 0.755])


def _draw_expected_scene():
    image, boxes, masks, class_ids, scores = _scene()
    fig = visualize.display_instances(image, boxes, masks, class_ids, CLASS_NAMES, scores,
                                      title="shapes", figsize=(2, 2),
                                      colors=[(1.0, 1.0, 0.0), (0.0, 0.4, 1.0)])
    return visualize.figure_to_image(fig)


def test_display_instances_matches_stored_drawing():
    drawn = _draw_expected_scene()
    expected = cv2.cvtColor(cv2.imread(str(EXPECTED)), cv2.COLOR_BGR2RGB)
    assert drawn.shape == expected.shape == (200, 200, 3)
    diff = np.abs(drawn.astype(int) - expected.astype(int))
    assert diff.mean() < 1.5, f"mean abs difference {diff.mean():.2f}"
    assert (diff.max(axis=2) > 64).mean() < 0.01


def test_display_instances_blends_mask_colour_inside_masks_only():
    image, boxes, masks, class_ids, scores = _scene()
    fig = visualize.display_instances(image, boxes, masks, class_ids, CLASS_NAMES, scores,
                                      figsize=(4, 4), show_bbox=False,
                                      colors=[(0.0, 0.0, 1.0), (0.0, 0.0, 1.0)])
    drawn = visualize.figure_to_image(fig)
    assert drawn.shape == (400, 400, 3)
    # blended square = 0.5 * (200, 60, 60) + 0.5 * (0, 0, 255) = (100, 30, 157)
    square = np.all(np.abs(drawn.astype(int) - (100, 30, 157)) <= 3, axis=2)
    background = np.all(drawn == 90, axis=2)
    assert square.sum() > 1000 and background.sum() > 10000
    # with masks off the square keeps its own colour
    fig = visualize.display_instances(image, boxes, masks, class_ids, CLASS_NAMES, scores,
                                      figsize=(4, 4), show_mask=False)
    assert np.all(np.abs(visualize.figure_to_image(fig).astype(int) - (200, 60, 60)) <= 3, axis=2).sum() > 1000


def test_display_instances_without_instances_says_so():
    image = np.zeros((20, 30, 3), np.uint8)
    fig = visualize.display_instances(image, np.zeros((0, 4)), np.zeros((20, 30, 0)), np.zeros(0, int),
                                      CLASS_NAMES, figsize=(2, 2))
    assert fig.axes[0].get_title() == "No instances to display"


def test_apply_mask_matches_matterport_loop():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 40, 3)).astype(np.uint32)
    mask = rng.random((30, 40)) > 0.5
    color = (0.2, 0.7, 0.9)
    expected = image.copy()
    for c in range(3):
        expected[:, :, c] = np.where(mask == 1, expected[:, :, c] * 0.5 + 0.5 * color[c] * 255,
                                     expected[:, :, c])
    out = visualize.apply_mask(image, mask, color)
    assert out is image
    np.testing.assert_array_equal(out, expected)


def test_random_colors_distinct_and_seeded():
    colors = visualize.random_colors(6, seed=3)
    assert len(set(colors)) == 6 and all(max(c) == 1.0 for c in colors)
    assert colors == visualize.random_colors(6, seed=3)
    assert max(max(c) for c in visualize.random_colors(4, bright=False)) == pytest.approx(0.7)


def _nonblank(fig):
    image = visualize.figure_to_image(fig)
    assert image.std() > 5
    return image


def test_other_drawings_render():
    image, boxes, masks, class_ids, scores = _scene()
    assert _nonblank(visualize.display_images([image, masks[..., 0] * 255], ["a", "b"], cols=2)).shape[2] == 3
    top = visualize.display_top_masks(image, masks, class_ids, CLASS_NAMES, limit=2)
    assert [ax.get_title() for ax in top.axes] == ["H x W=64x80", "circle", "square"]
    _nonblank(top)
    refined = boxes + 2
    fig = visualize.draw_boxes(image, boxes=boxes, refined_boxes=refined, masks=masks,
                               captions=["a", "b"], visibilities=[2, 1], title="t")
    _nonblank(fig)
    rois = np.concatenate([boxes, [[0, 0, 10, 10]]]).astype(np.float32)
    fig = visualize.draw_rois(image, rois, rois + 1, np.ones((3, 28, 28)), np.array([1, 2, 0]),
                              CLASS_NAMES, seed=0)
    assert "positive 2, negative 1" in fig.axes[0].get_title()
    _nonblank(fig)
    ap, precisions, recalls, overlaps = utils.compute_ap(boxes, class_ids, masks, boxes, class_ids,
                                                         scores, masks)
    _nonblank(visualize.plot_precision_recall(ap, precisions, recalls))
    fig = visualize.plot_overlaps(class_ids, class_ids, scores, overlaps, CLASS_NAMES)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts.count("1.000\nmatch") == 2
    fig = visualize.display_differences(image, boxes, class_ids, masks, boxes, class_ids, scores,
                                        masks, CLASS_NAMES)
    assert "0.98 / 1.00" in [t.get_text() for t in fig.axes[0].texts]


def test_draw_box_in_place():
    image = np.zeros((10, 10, 3), np.uint8)
    visualize.draw_box(image, (2, 2, 7, 7), (255, 0, 0))
    assert image[2, 3].tolist() == [255, 0, 0] and image[4, 4].tolist() == [0, 0, 0]


def test_display_table_escapes_nothing_but_builds_rows():
    html = visualize.display_table([["A", "B"], [1, "<b>x</b>"]])
    assert html == "<table><tr><td>A</td><td>B</td></tr><tr><td>1</td><td><b>x</b></td></tr></table>"


@pytest.mark.slow
def test_weight_stats_flag_dead_and_overflowing_weights():
    import keras

    inputs = keras.Input((4,))
    x = keras.layers.Dense(3, name="fine")(inputs)
    x = keras.layers.Dense(3, name="dead", kernel_initializer="zeros")(x)
    x = keras.layers.Dense(2, name="huge", kernel_initializer=keras.initializers.Constant(5000.0))(x)
    model = keras.Model(inputs, x)
    model.get_layer("fine").set_weights([np.arange(12, dtype=np.float32).reshape(4, 3) / 10,
                                         np.zeros(3, np.float32)])
    rows = {row["name"]: row for row in visualize.weight_stats(model)}
    assert rows["fine/kernel"]["alerts"] == [] and rows["fine/bias"]["alerts"] == []
    assert rows["fine/kernel"]["max"] == pytest.approx(1.1) and rows["fine/kernel"]["shape"] == (4, 3)
    assert rows["dead/kernel"]["alerts"] == ["dead?"]
    assert rows["huge/kernel"]["alerts"] == ["dead?", "overflow?"]
    html = visualize.display_weight_stats(model)
    assert html.count("<tr>") == 7 and html.count("*** dead?") == 2
    fig = visualize.plot_weight_histograms(model)
    assert [ax.get_title() for ax in fig.axes][:2] == ["fine/kernel", "fine/bias"]


def test_visualize_is_headless_and_never_uses_pyplot():
    code = ("import sys, mrcnn.visualize; "
            "sys.exit('matplotlib.pyplot' in sys.modules or 'tensorflow' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


if __name__ == "__main__":  # regenerate the stored drawing after an intended change
    cv2.imwrite(str(EXPECTED), cv2.cvtColor(_draw_expected_scene(), cv2.COLOR_RGB2BGR))
