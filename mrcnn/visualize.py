"""Pictures of Mask R-CNN inputs, intermediate results and detections (matterport's visualize).

Headless: figures are `matplotlib.figure.Figure` objects drawn with the Agg canvas, never
pyplot, so nothing opens a window and nothing accumulates in pyplot's global state.
Every function RETURNS what it drew (a Figure, or HTML for tables) instead of showing it;
`figure_to_image(fig)` turns a Figure into a uint8 RGB array, `fig.savefig(path)` writes a
file, and in Jupyter a returned Figure displays itself.

Differences from matterport: outlines come from `cv2.findContours` (pixel-centre boundary)
instead of skimage's `find_contours` (half-pixel iso-line); `draw_rois` puts its
positive/negative counts in the title instead of printing them; `display_table` and
`display_weight_stats` return HTML instead of displaying it through IPython.
"""
from __future__ import annotations

import colorsys
import html
import itertools
import random

import cv2
import numpy as np
from matplotlib import lines, patches
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Polygon

from mrcnn import utils


############################################################
#  Figures and colours
############################################################

def new_figure(figsize=(12, 12), dpi=100):
    """A blank Agg-backed Figure (no pyplot)."""
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _axes(ax, figsize):
    """(figure, axes): the given axes' figure, or a new single-axes figure."""
    if ax is not None:
        return ax.figure, ax
    fig = new_figure(figsize)
    return fig, fig.add_subplot(1, 1, 1)


def figure_to_image(fig):
    """Render a Figure to uint8 RGB [H, W, 3] (H, W = figsize × dpi)."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def random_colors(N, bright=True, seed=None):
    """N visually distinct RGB colours (floats in [0, 1]), in shuffled order.

    seed: None shuffles with the global `random` (matterport); an int gives a fixed order.
    """
    brightness = 1.0 if bright else 0.7
    colors = [colorsys.hsv_to_rgb(i / N, 1, brightness) for i in range(N)]
    (random if seed is None else random.Random(seed)).shuffle(colors)
    return colors


def apply_mask(image, mask, color, alpha=0.5):
    """Blend `color` into `image` where `mask` is set, in place.

    image: [H, W, 3] (any numeric dtype; results are truncated to it); mask: [H, W] bool or
    0/1; color: RGB floats in [0, 1]; alpha: opacity of the colour. Returns `image`.
    """
    m = np.asarray(mask) == 1
    blended = image[m] * (1 - alpha) + alpha * np.asarray(color[:3], np.float64) * 255
    image[m] = blended.astype(image.dtype)
    return image


def _outline(ax, mask, color):
    """Draw the outline(s) of a binary mask [H, W] as polygons."""
    padded = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), dtype=np.uint8)
    padded[1:-1, 1:-1] = mask
    contours, _ = cv2.findContours(padded, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    for contour in contours:
        verts = contour[:, 0, :].astype(np.float64) - 1  # (x, y)
        ax.add_patch(Polygon(verts, facecolor="none", edgecolor=color))


############################################################
#  Images and instances
############################################################

def display_images(images, titles=None, cols=4, cmap=None, norm=None, interpolation=None):
    """A grid of images with titles. images: list of [H, W] or [H, W, 3]. Returns the Figure."""
    titles = titles if titles is not None else [""] * len(images)
    rows = len(images) // cols + 1
    fig = new_figure((14, 14 * rows // cols))
    for i, (image, title) in enumerate(zip(images, titles), start=1):
        ax = fig.add_subplot(rows, cols, i)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
        ax.imshow(np.asarray(image).astype(np.uint8), cmap=cmap, norm=norm, interpolation=interpolation)
    return fig


def display_instances(image, boxes, masks, class_ids, class_names, scores=None, title="",
                      figsize=(16, 16), ax=None, show_mask=True, show_bbox=True, colors=None,
                      captions=None):
    """Masks, dashed boxes, outlines and "label score" captions over an image.

    image: [H, W, 3] RGB; boxes: [N, (y1, x1, y2, x2)] pixels; masks: [H, W, N] bool;
    class_ids: int [N]; class_names: list[str]; scores: float [N] or None;
    colors: N RGB tuples (default random_colors(N)); captions: N strings replacing labels.
    Returns the Figure (that of `ax` if given).
    """
    N = boxes.shape[0]
    if N:
        assert boxes.shape[0] == masks.shape[-1] == class_ids.shape[0]
    fig, ax = _axes(ax, figsize)
    colors = colors or random_colors(N)
    height, width = image.shape[:2]
    ax.set_ylim(height + 10, -10)
    ax.set_xlim(-10, width + 10)
    ax.axis("off")
    ax.set_title(title if N else (title or "No instances to display"))

    masked_image = image.astype(np.uint32).copy()
    for i in range(N):
        color = colors[i]
        if not np.any(boxes[i]):
            continue  # zero padding
        y1, x1, y2, x2 = boxes[i]
        if show_bbox:
            ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, linewidth=2, alpha=0.7,
                                           linestyle="dashed", edgecolor=color, facecolor="none"))
        if captions:
            caption = captions[i]
        else:
            label = class_names[class_ids[i]]
            score = scores[i] if scores is not None else None
            caption = f"{label} {score:.3f}" if score else label
        ax.text(x1, y1 + 8, caption, color="w", size=11, backgroundcolor="none")
        mask = masks[:, :, i]
        if show_mask:
            masked_image = apply_mask(masked_image, mask, color)
        _outline(ax, mask, color)
    ax.imshow(masked_image.astype(np.uint8))
    return fig


def display_differences(image, gt_box, gt_class_id, gt_mask, pred_box, pred_class_id, pred_score,
                        pred_mask, class_names, title="", ax=None, show_mask=True, show_box=True,
                        iou_threshold=0.5, score_threshold=0.5):
    """Ground truth (green) and predictions (red, captioned "score / IoU") on one image.

    Arguments as `utils.compute_matches` plus the image. Returns the Figure.
    """
    gt_match, pred_match, overlaps = utils.compute_matches(
        gt_box, gt_class_id, gt_mask, pred_box, pred_class_id, pred_score, pred_mask,
        iou_threshold=iou_threshold, score_threshold=score_threshold)
    colors = [(0, 1, 0, .8)] * len(gt_match) + [(1, 0, 0, 1)] * len(pred_match)
    class_ids = np.concatenate([gt_class_id, pred_class_id])
    scores = np.concatenate([np.zeros([len(gt_match)]), pred_score])
    boxes = np.concatenate([gt_box, pred_box])
    masks = np.concatenate([gt_mask, pred_mask], axis=-1)
    captions = [""] * len(gt_match) + [
        "{:.2f} / {:.2f}".format(
            pred_score[i],
            overlaps[i, int(pred_match[i])] if pred_match[i] > -1 else overlaps[i].max(initial=0))
        for i in range(len(pred_match))]
    title = title or "Ground Truth and Detections\n GT=green, pred=red, captions: score/IoU"
    return display_instances(image, boxes, masks, class_ids, class_names, scores, ax=ax,
                             show_bbox=show_box, show_mask=show_mask, colors=colors,
                             captions=captions, title=title)


def display_top_masks(image, mask, class_ids, class_names, limit=4):
    """The image and, per class, the union of its masks, for the `limit` largest classes.

    image: [H, W, 3]; mask: [H, W, N] bool; class_ids: int [N]. Returns the Figure.
    """
    to_display = [image]
    titles = [f"H x W={image.shape[0]}x{image.shape[1]}"]
    unique_class_ids = np.unique(class_ids)
    mask_area = [np.sum(mask[:, :, np.where(class_ids == i)[0]]) for i in unique_class_ids]
    top_ids = [v[0] for v in sorted(zip(unique_class_ids, mask_area), key=lambda r: r[1], reverse=True)
               if v[1] > 0]
    for i in range(limit):
        class_id = top_ids[i] if i < len(top_ids) else -1
        m = mask[:, :, np.where(class_ids == class_id)[0]]
        to_display.append(np.sum(m * np.arange(1, m.shape[-1] + 1), -1))
        titles.append(class_names[class_id] if class_id != -1 else "-")
    return display_images(to_display, titles=titles, cols=limit + 1, cmap="Blues_r")


############################################################
#  ROIs and boxes
############################################################

def draw_rois(image, rois, refined_rois, mask, class_ids, class_names, limit=10, seed=None):
    """Training ROIs: negatives grey dashed; positives dashed → refined solid, with their mask.

    image: [H, W, 3] uint8; rois, refined_rois: [N, 4] pixels; mask: [N, h, w] probabilities;
    class_ids: int [N] (0 = negative). Shows at most `limit` random ROIs (seeded by `seed`).
    Returns the Figure; the title gives the positive/negative counts.
    """
    rng = np.random.default_rng(seed)
    masked_image = image.copy()
    ids = np.arange(rois.shape[0], dtype=np.int32)
    ids = rng.choice(ids, limit, replace=False) if ids.shape[0] > limit else ids
    fig, ax = _axes(None, (12, 12))
    positives = int((class_ids > 0).sum())
    shown = (f"Showing {len(ids)} random ROIs out of {rois.shape[0]}" if rois.shape[0] > limit
             else f"{len(ids)} ROIs")
    ratio = positives / max(len(class_ids), 1)
    ax.set_title(f"{shown}\npositive {positives}, negative {len(class_ids) - positives}, "
                 f"positive ratio {ratio:.2f}")
    ax.set_ylim(image.shape[0] + 20, -20)
    ax.set_xlim(-50, image.shape[1] + 20)
    ax.axis("off")
    for id in ids:
        color = rng.random(3)
        class_id = class_ids[id]
        y1, x1, y2, x2 = rois[id]
        ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, linewidth=2,
                                       edgecolor=color if class_id else "gray", facecolor="none",
                                       linestyle="dashed"))
        if class_id:
            ry1, rx1, ry2, rx2 = refined_rois[id]
            ax.add_patch(patches.Rectangle((rx1, ry1), rx2 - rx1, ry2 - ry1, linewidth=2,
                                           edgecolor=color, facecolor="none"))
            ax.add_line(lines.Line2D([x1, rx1], [y1, ry1], color=color))
            ax.text(rx1, ry1 + 8, class_names[class_id], color="w", size=11, backgroundcolor="none")
            m = utils.unmold_mask(mask[id], rois[id][:4].astype(np.int32), image.shape)
            masked_image = apply_mask(masked_image, m, color)
    ax.imshow(masked_image)
    return fig


def draw_box(image, box, color):
    """Draw a 2-pixel box outline into `image` [H, W, 3] in place. box: int (y1, x1, y2, x2)."""
    y1, x1, y2, x2 = box
    image[y1:y1 + 2, x1:x2] = color
    image[y2:y2 + 2, x1:x2] = color
    image[y1:y2, x1:x1 + 2] = color
    image[y1:y2, x2:x2 + 2] = color
    return image


def draw_boxes(image, boxes=None, refined_boxes=None, masks=None, captions=None, visibilities=None,
               title="", ax=None):
    """Boxes (dotted), their refinements (solid, joined to the box by a line), masks, captions.

    image: [H, W, 3]; boxes, refined_boxes: [N, 4] pixels (either may be None, not both);
    masks: [H, W, N]; captions: N strings; visibilities: N of 0 (grey, skip refinement),
    1 (dotted) or 2 (solid). Returns the Figure.
    """
    assert boxes is not None or refined_boxes is not None
    N = boxes.shape[0] if boxes is not None else refined_boxes.shape[0]
    fig, ax = _axes(ax, (12, 12))
    colors = random_colors(N)
    margin = image.shape[0] // 10
    ax.set_ylim(image.shape[0] + margin, -margin)
    ax.set_xlim(-margin, image.shape[1] + margin)
    ax.axis("off")
    ax.set_title(title)

    masked_image = image.astype(np.uint32).copy()
    for i in range(N):
        visibility = visibilities[i] if visibilities is not None else 1
        color, style, alpha = {0: ("gray", "dotted", 0.5), 1: (colors[i], "dotted", 1),
                               2: (colors[i], "solid", 1)}[int(visibility)]
        if boxes is not None:
            if not np.any(boxes[i]):
                continue  # zero padding
            y1, x1, y2, x2 = boxes[i]
            ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, linewidth=2, alpha=alpha,
                                           linestyle=style, edgecolor=color, facecolor="none"))
        if refined_boxes is not None and visibility > 0:
            ry1, rx1, ry2, rx2 = refined_boxes[i].astype(np.int32)
            ax.add_patch(patches.Rectangle((rx1, ry1), rx2 - rx1, ry2 - ry1, linewidth=2,
                                           edgecolor=color, facecolor="none"))
            if boxes is not None:
                ax.add_line(lines.Line2D([x1, rx1], [y1, ry1], color=color))
        if captions is not None:
            if refined_boxes is not None:
                y1, x1 = refined_boxes[i][:2].astype(np.int32)
            ax.text(x1, y1, captions[i], size=11, verticalalignment="top", color="w",
                    backgroundcolor="none",
                    bbox={"facecolor": color, "alpha": 0.5, "pad": 2, "edgecolor": "none"})
        if masks is not None:
            mask = masks[:, :, i]
            masked_image = apply_mask(masked_image, mask, color)
            _outline(ax, mask, color)
    ax.imshow(masked_image.astype(np.uint8))
    return fig


############################################################
#  Evaluation plots
############################################################

def plot_precision_recall(AP, precisions, recalls):
    """Precision-recall curve as from `utils.compute_ap`. Returns the Figure."""
    fig, ax = _axes(None, (6.4, 4.8))
    ax.set_title(f"Precision-Recall Curve. AP@50 = {AP:.3f}")
    ax.set_ylim(0, 1.1)
    ax.set_xlim(0, 1.1)
    ax.plot(recalls, precisions)
    return fig


def plot_overlaps(gt_class_ids, pred_class_ids, pred_scores, overlaps, class_names, threshold=0.5):
    """Grid of IoUs between predictions (rows) and ground truth (columns), with match/wrong.

    gt_class_ids [G], pred_class_ids [P] (zeros are padding and dropped), pred_scores [P],
    overlaps [P, G]. Returns the Figure.
    """
    gt_class_ids = gt_class_ids[gt_class_ids != 0]
    pred_class_ids = pred_class_ids[pred_class_ids != 0]
    fig, ax = _axes(None, (12, 10))
    ax.imshow(overlaps, interpolation="nearest", cmap="Blues")
    ax.set_yticks(np.arange(len(pred_class_ids)),
                  [f"{class_names[int(id)]} ({pred_scores[i]:.2f})" for i, id in enumerate(pred_class_ids)])
    ax.set_xticks(np.arange(len(gt_class_ids)), [class_names[int(id)] for id in gt_class_ids],
                  rotation=90)
    thresh = overlaps.max(initial=0) / 2.
    for i, j in itertools.product(range(overlaps.shape[0]), range(overlaps.shape[1])):
        text = ""
        if overlaps[i, j] > threshold:
            text = "match" if gt_class_ids[j] == pred_class_ids[i] else "wrong"
        color = "white" if overlaps[i, j] > thresh else "black" if overlaps[i, j] > 0 else "grey"
        ax.text(j, i, f"{overlaps[i, j]:.3f}\n{text}", horizontalalignment="center",
                verticalalignment="center", fontsize=9, color=color)
    ax.set_xlabel("Ground Truth")
    ax.set_ylabel("Predictions")
    fig.tight_layout()
    return fig


############################################################
#  Tables and weights
############################################################

def display_table(table):
    """An HTML <table> of rows (lists of cells; HTML inside cells is kept). Returns str."""
    rows = "".join("<tr>" + "".join(f"<td>{col}</td>" for col in row) + "</tr>" for row in table)
    return "<table>" + rows + "</table>"


def _weighted_layers(model):
    """Layers with weights: a wrapper's `get_trainable_layers()`, else a Keras model's layers."""
    if hasattr(model, "get_trainable_layers"):
        return model.get_trainable_layers()
    return [layer for layer in model.layers if layer.weights]


def weight_stats(model):
    """Per-weight statistics of a model, flagging suspicious ones.

    model: a Keras model, or matterport-style wrapper with `get_trainable_layers()`.
    Returns a list of dicts: name, layer, shape, min, max, mean, std (floats), alerts
    (list of "dead?" — all values equal, biases excepted; "overflow?" — |value| > 1000;
    "nan/inf" — non-finite values).
    """
    rows = []
    for layer in _weighted_layers(model):
        for variable, w in zip(layer.weights, layer.get_weights()):
            name = getattr(variable, "path", None) or variable.name
            finite = w[np.isfinite(w)]
            alerts = ["nan/inf"] if finite.size < w.size else []
            if finite.size:
                if finite.min() == finite.max() and not name.endswith(("bias", "bias:0")):
                    alerts.append("dead?")
                if np.abs(finite).max() > 1000:
                    alerts.append("overflow?")
            else:
                finite = np.zeros(1)
            rows.append({"name": name, "layer": layer.name, "shape": tuple(w.shape),
                         "min": float(finite.min()), "max": float(finite.max()),
                         "mean": float(finite.mean()), "std": float(finite.std()), "alerts": alerts})
    return rows


def display_weight_stats(model):
    """matterport's weight table (name, shape, min, max, mean, std) as HTML, suspicious weights
    marked in red. model: as `weight_stats`. Returns str."""
    table = [["WEIGHT NAME", "SHAPE", "MIN", "MAX", "MEAN", "STD"]]
    for row in weight_stats(model):
        alert = "".join(f"<span style='color:red'> *** {a}</span>" for a in row["alerts"])
        table.append([html.escape(row["name"]) + alert, str(row["shape"]), f"{row['min']:+9.4f}",
                      f"{row['max']:+10.4f}", f"{row['mean']:+9.4f}", f"{row['std']:+9.4f}"])
    return display_table(table)


def plot_weight_histograms(model, max_weights=24, cols=4):
    """Histograms of the first `max_weights` weights of `model` (as `weight_stats`), titled
    with their names; suspicious ones in red. Returns the Figure."""
    values = [(getattr(v, "path", None) or v.name, w)
              for layer in _weighted_layers(model) for v, w in zip(layer.weights, layer.get_weights())][:max_weights]
    stats = {row["name"]: row["alerts"] for row in weight_stats(model)}
    rows = max(1, -(-len(values) // cols))
    fig = new_figure((4 * cols, 2.6 * rows))
    for i, (name, w) in enumerate(values, start=1):
        ax = fig.add_subplot(rows, cols, i)
        finite = w[np.isfinite(w)].ravel()
        ax.hist(finite if finite.size else [0], bins=50)
        ax.set_title(name, fontsize=8, color="red" if stats.get(name) else "black")
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    return fig
