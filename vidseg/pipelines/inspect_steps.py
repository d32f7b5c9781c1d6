"""The steps of `vidseg inspect`: one pass of Mask R-CNN over one image, kept stage by stage
(`trace`), and one picture per stage drawn with `mrcnn.visualize` (the `draw_*` functions).

The notebook `vidseg/samples/inspect_notebook.py` builds walks through the same functions.
Pictures of the first stage are in the *molded* image (resized and padded, as the network
sees it); masks and the final composite are in the original image. Every `draw_*` returns an
Agg `Figure` whose pixel size is `SIZES[name]` (figsize x 100 dpi), saved by `save_figure`.

The model object runs the graph (`MaskRCNN.run_graph`); this module imports `mrcnn` (and so
TensorFlow), so import it only in the process that runs the model.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from matplotlib import patches

from mrcnn import utils, visualize
from mrcnn.data import build_rpn_targets

DPI = 100
# Picture -> (width, height) in pixels. activations_<layer> pictures are ACTIVATION_SIZE.
SIZES = {"anchors": (1500, 1000), "anchor_refinement": (1000, 1000), "proposals": (2000, 1000),
         "refinement": (1500, 1000), "masks_28x28": (1200, 1200), "masks_pasted": (1200, 1200),
         "weights": (1600, 1560), "detections": (1000, 1000)}
ACTIVATION_SIZE = (1200, 1200)
GRID = 4                      # activation and mask pictures: GRID x GRID panels
TOP_BOXES = 50                # boxes drawn in the anchor-refinement and proposal pictures
CAPTIONED = 10                # of which this many carry their score
HISTOGRAM_WEIGHTS = 24        # weights in the histogram picture (4 columns x 6 rows)
SATURATED = 0.99              # share of values pinned at min or max that flags a layer


class Level(NamedTuple):
    """One pyramid level's anchors: `anchors[start:end]`, a rows x cols grid (row-major) of
    len(RPN_ANCHOR_RATIOS) anchors each."""

    level: int
    start: int
    end: int
    stride: int
    scale: int
    rows: int
    cols: int


@dataclass
class Trace:
    """Everything one image leaves behind in the network (numpy, batch dimension removed).

    Molded-image arrays: image uint8 [H, W, 3] (resized + padded); window int [4] pixels;
    anchors float32 [A, 4] normalised; anchor_levels list of `Level` (P2..P6) slicing
    `anchors`; rpn_match int32 [A] (1/-1/0, from the detections as ground
    truth); rpn_scores float32 [A] foreground probability; rpn_deltas float32 [A, 4]
    (already times RPN_BBOX_STD_DEV); pre_nms float32 [K, 4] normalised + pre_nms_scores [K]
    (the PRE_NMS_LIMIT best anchors refined and clipped, by descending score);
    proposals float32 [P, 4] normalised (the "ROI" layer after NMS, padding removed);
    proposal_scores [P]; proposal_probs [P, C]; proposal_refined [P, 4] normalised (each
    proposal refined for its best class and clipped to the window); detections [N, 6]
    normalised (y1, x1, y2, x2, class_id, score); detection_sources int [N] (index into
    proposals); masks28 float32 [N, 28, 28] (each detection's class).
    Original-image arrays: original uint8 [h, w, 3]; boxes int32 [N', 4] pixels, class_ids,
    scores, masks bool [h, w, N'] (N' <= N: empty boxes dropped, as `detect` does) and
    final_masks28 [N', 28, 28].
    activations: {layer name: float32 array without the batch dimension}; log: the
    `run_graph` shape/min/max lines.
    """

    original: np.ndarray
    image: np.ndarray
    window: np.ndarray
    anchors: np.ndarray
    anchor_levels: list
    rpn_match: np.ndarray
    rpn_scores: np.ndarray
    rpn_deltas: np.ndarray
    pre_nms: np.ndarray
    pre_nms_scores: np.ndarray
    proposals: np.ndarray
    proposal_scores: np.ndarray
    proposal_probs: np.ndarray
    proposal_refined: np.ndarray
    detections: np.ndarray
    detection_sources: np.ndarray
    masks28: np.ndarray
    boxes: np.ndarray
    class_ids: np.ndarray
    scores: np.ndarray
    masks: np.ndarray
    final_masks28: np.ndarray
    activations: dict = field(default_factory=dict)
    log: str = ""


############################################################
#  Layers
############################################################

def backbone_layers(keras_model):
    """Names of the layers giving C2..C5 (what the FPN's fpn_c2p2..fpn_c5p5 read)."""
    return [keras_model.get_layer(f"fpn_c{i}p{i}").input._keras_history[0].name for i in range(2, 6)]


def default_layers(keras_model):
    """Activation layers shown by default: backbone stages C2..C5, FPN P2..P6, RPN objectness."""
    return backbone_layers(keras_model) + [f"fpn_p{i}" for i in range(2, 7)] + ["rpn_class"]


def unknown_layers(keras_model, names):
    """The names in `names` that are not layers of the model."""
    known = {layer.name for layer in keras_model.layers}
    return [n for n in names if n not in known]


def shared_layers(keras_model, names):
    """The names in `names` of layers the model calls more than once (rpn_model, once per
    pyramid level): they have no one output to show (Keras raised 'not connected to inputs')."""
    return [n for n in names if len(keras_model.get_layer(n)._inbound_nodes) > 1]


############################################################
#  One pass through the network
############################################################

def _pyramid(config, image_shape):
    """Pixel anchors [A, 4] (as `generate_pyramid_anchors`) and their `Level`s."""
    from mrcnn.backbones import compute_backbone_shapes

    shapes = compute_backbone_shapes(config, image_shape)
    levels, parts, start = [], [], 0
    for i, (scale, shape, stride) in enumerate(zip(config.RPN_ANCHOR_SCALES, shapes, config.BACKBONE_STRIDES)):
        a = utils.generate_anchors(scale, config.RPN_ANCHOR_RATIOS, shape, stride, config.RPN_ANCHOR_STRIDE)
        parts.append(a)
        rows, cols = (len(range(0, int(n), config.RPN_ANCHOR_STRIDE)) for n in shape)
        levels.append(Level(i + 2, start, start + len(a), int(stride), int(scale), rows, cols))
        start += len(a)
    return np.concatenate(parts), levels


def _clip(boxes, window):
    """Clip normalised boxes [N, 4] to window (y1, x1, y2, x2), as the graph's clip_boxes. A
    diverged model's NaN (its infinities clip to the edges) becomes the window's top-left: a
    NaN drawn became -2**31 pixels, which matplotlib cannot place a label at."""
    y1, x1, y2, x2 = window
    boxes = np.nan_to_num(boxes, nan=0.0)
    return np.stack([np.clip(boxes[:, 0], y1, y2), np.clip(boxes[:, 1], x1, x2),
                     np.clip(boxes[:, 2], y1, y2), np.clip(boxes[:, 3], x1, x2)], axis=1)


def _nearest(boxes, candidates, chunk=256):
    """Index int [N] of the candidate [M, 4] closest (L1) to each box [N, 4]: which pre-NMS
    box a proposal is (they match to float rounding; degenerate boxes defeat IoU)."""
    return np.concatenate([np.abs(boxes[i:i + chunk, None] - candidates[None]).sum(axis=2).argmin(axis=1)
                           for i in range(0, len(boxes), chunk)] or [np.zeros(0, np.int64)])


def trace(mrcnn_model, image, layers=()):
    """Run `mrcnn_model` (inference mode) on one uint8 RGB image [h, w, 3] and keep every
    stage (see `Trace`). layers: layer names whose outputs go to `Trace.activations`."""
    config, km = mrcnn_model.config, mrcnn_model.keras_model
    molded, metas, windows = mrcnn_model.mold_inputs([image])
    wanted = ["rpn_class", "rpn_bbox", "ROI", "mrcnn_class", "mrcnn_bbox", "mrcnn_detection", "mrcnn_mask"]
    names = wanted + [n for n in layers if n not in wanted]
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        out = mrcnn_model.run_graph(molded, [(n, km.get_layer(n).output) for n in names], image_metas=metas)
    out = {k: v[0] for k, v in out.items()}
    shape = molded[0].shape
    h, w = shape[:2]
    window = utils.norm_boxes(windows[0], shape[:2])
    anchors = mrcnn_model.get_anchors(shape)
    pixel_anchors, levels = _pyramid(config, shape)

    # RPN: scores and refinement of every anchor; the PRE_NMS_LIMIT best, as ProposalLayer.
    rpn_scores = out["rpn_class"][:, 1]
    rpn_deltas = out["rpn_bbox"] * np.asarray(config.RPN_BBOX_STD_DEV, np.float32)
    order = np.argsort(-rpn_scores, kind="stable")[:min(config.PRE_NMS_LIMIT, len(anchors))]
    pre_nms = _clip(utils.apply_box_deltas(anchors[order], rpn_deltas[order]), (0., 0., 1., 1.))
    pre_nms_scores = rpn_scores[order]

    proposals = out["ROI"][np.any(out["ROI"] != 0, axis=1)]
    proposal_scores = pre_nms_scores[_nearest(proposals, pre_nms)]

    # Second stage: each proposal refined for its best class (refine_detections_graph).
    probs = out["mrcnn_class"][:len(proposals)]
    best = probs.argmax(axis=1)
    deltas = out["mrcnn_bbox"][np.arange(len(proposals)), best] * np.asarray(config.BBOX_STD_DEV, np.float32)
    refined = _clip(utils.apply_box_deltas(proposals, deltas), window)
    det = out["mrcnn_detection"]
    det = det[det[:, 4] > 0]
    sources = np.array([np.where(best == int(d[4]), np.abs(refined - d[:4]).sum(axis=1), np.inf).argmin()
                        for d in det], dtype=np.int64)
    masks28 = out["mrcnn_mask"][np.arange(len(det)), :, :, det[:, 4].astype(int)]

    boxes, class_ids, scores, final28 = mrcnn_model.unmold_boxes(out["mrcnn_detection"], out["mrcnn_mask"],
                                                                 image.shape, shape, windows[0])
    full = [utils.unmold_mask(m, b, image.shape) for m, b in zip(final28, boxes)]
    full = np.stack(full, axis=-1) if full else np.zeros(image.shape[:2] + (0,), bool)

    # Anchors the detections would make positive/negative if they were the ground truth.
    det_pixels = utils.denorm_boxes(det[:, :4], (h, w)) if len(det) else np.zeros((0, 4))
    rpn_match, _ = build_rpn_targets(shape, pixel_anchors, det[:, 4].astype(np.int32), det_pixels, config,
                                     rng=np.random.default_rng(0))
    image_molded = np.clip(molded[0] + np.asarray(config.MEAN_PIXEL), 0, 255).astype(np.uint8)
    return Trace(original=image, image=image_molded, window=np.asarray(windows[0]), anchors=anchors,
                 anchor_levels=levels, rpn_match=rpn_match, rpn_scores=rpn_scores, rpn_deltas=rpn_deltas,
                 pre_nms=pre_nms, pre_nms_scores=pre_nms_scores, proposals=proposals,
                 proposal_scores=proposal_scores, proposal_probs=probs, proposal_refined=refined,
                 detections=det, detection_sources=sources, masks28=masks28, boxes=boxes,
                 class_ids=class_ids, scores=scores, masks=full, final_masks28=final28,
                 activations={n: out[n] for n in layers}, log=log.getvalue())


############################################################
#  Pictures
############################################################

def _figure(name):
    w, h = SIZES[name]
    return visualize.new_figure((w / DPI, h / DPI), dpi=DPI)


def _pixels(t, boxes):
    """Normalised boxes -> molded-image pixels (float)."""
    return utils.denorm_boxes(boxes, t.image.shape[:2]).astype(np.float32) if len(boxes) else np.zeros((0, 4))


def _blank(ax, text, image=None):
    """A panel that says why there is nothing to draw (over the faded image, if given)."""
    ax.axis("off")
    if image is not None:
        ax.imshow((image * 0.4 + 153).astype(np.uint8))
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=12, transform=ax.transAxes)


def draw_anchors(t, per_kind=20, seed=0):
    """Per pyramid level: the positive anchors (colour, solid; at most `per_kind`) and a sample
    of `per_kind` negative ones (grey, dotted), labelled as build_rpn_targets would label them
    if the detections were the ground truth. Sixth panel: counts per level."""
    fig, rng = _figure("anchors"), np.random.default_rng(seed)
    pixels = utils.denorm_boxes(t.anchors, t.image.shape[:2]).astype(np.float32)
    counts = []
    for k, (level, start, end, stride, scale, _, _) in enumerate(t.anchor_levels):
        ax = fig.add_subplot(2, 3, k + 1)
        match = t.rpn_match[start:end]
        pos, neg = np.where(match == 1)[0] + start, np.where(match == -1)[0] + start
        counts.append((len(pos), len(neg), end - start))
        shown_pos = pos[:per_kind]
        shown_neg = rng.choice(neg, min(per_kind, len(neg)), replace=False) if len(neg) else neg
        ids = np.concatenate([shown_neg, shown_pos]).astype(int)
        title = f"P{level} (stride {stride}, scale {scale}): {len(pos)} pos, {len(neg)} neg of {end - start}"
        if len(ids):
            visualize.draw_boxes(t.image, boxes=pixels[ids], visibilities=[0] * len(shown_neg) + [2] * len(shown_pos),
                                 title=title, ax=ax)
        else:
            ax.imshow(t.image)
            ax.axis("off")
            ax.set_title(title)
        ax.title.set_fontsize(9)
    ax = fig.add_subplot(2, 3, 6)
    x = np.arange(len(counts))
    ax.bar(x - 0.2, [c[0] for c in counts], 0.4, label="positive")
    ax.bar(x + 0.2, [c[1] for c in counts], 0.4, label="negative")
    ax.set_xticks(x, [f"P{lv.level}" for lv in t.anchor_levels])
    ax.set_title("training anchors per level (256 sampled per image)", fontsize=9)
    ax.legend()
    return fig


def draw_anchor_refinement(t):
    """The TOP_BOXES anchors the RPN scores highest (dotted) and their RPN refinement (solid)."""
    fig = _figure("anchor_refinement")
    top = np.argsort(-t.rpn_scores, kind="stable")[:TOP_BOXES]
    refined = _clip(utils.apply_box_deltas(t.anchors[top], t.rpn_deltas[top]), (0., 0., 1., 1.))
    visualize.draw_boxes(t.image, boxes=_pixels(t, t.anchors[top]), refined_boxes=_pixels(t, refined),
                         title=f"top {len(top)} of {len(t.anchors)} anchors by RPN score: anchor (dotted) -> refined",
                         ax=fig.add_subplot(1, 1, 1))
    return fig


def _scored_boxes(ax, t, boxes, scores, title):
    n = min(TOP_BOXES, len(boxes))
    if not n:
        return _blank(ax, title + "\n(none)", t.image)
    captions = [f"{s:.3f}" if i < CAPTIONED else "" for i, s in enumerate(scores[:n])]
    visualize.draw_boxes(t.image, refined_boxes=_pixels(t, boxes[:n]), captions=captions, title=title, ax=ax)


def draw_proposals(t, nms_threshold):
    """Left: the best TOP_BOXES refined anchors before NMS; right: the first TOP_BOXES
    proposals after NMS (the "ROI" layer); the CAPTIONED best carry their RPN score."""
    fig = _figure("proposals")
    _scored_boxes(fig.add_subplot(1, 2, 1), t, t.pre_nms, t.pre_nms_scores,
                  f"before NMS: top {min(TOP_BOXES, len(t.pre_nms))} of {len(t.pre_nms)}")
    _scored_boxes(fig.add_subplot(1, 2, 2), t, t.proposals, t.proposal_scores,
                  f"after NMS (IoU {nms_threshold}): top {min(TOP_BOXES, len(t.proposals))} of {len(t.proposals)}")
    return fig


def draw_refinement(t, class_names, min_confidence, top=30, max_classes=5):
    """Panel 1: the `top` proposals classified as foreground, by class score (dotted), and
    their box refinement for that class (solid), filled up with background ones (grey) in RPN
    order. Then one panel per detected class (up to `max_classes`): its proposals scoring
    >= min_confidence, those NMS removed grey, the kept ones dotted -> detection solid."""
    fig = _figure("refinement")
    scores = t.proposal_probs.max(axis=1) if len(t.proposals) else np.zeros(0)
    best = t.proposal_probs.argmax(axis=1) if len(t.proposals) else np.zeros(0, int)
    fg = np.where(best > 0)[0]
    fg = fg[np.argsort(-scores[fg], kind="stable")][:top]
    ids = np.concatenate([fg, np.where(best == 0)[0][:top - len(fg)]]).astype(int)
    ax = fig.add_subplot(2, 3, 1)
    if len(ids):
        visualize.draw_boxes(t.image, boxes=_pixels(t, t.proposals[ids]),
                             refined_boxes=_pixels(t, t.proposal_refined[ids]),
                             visibilities=(best[ids] > 0).astype(int), captions=[f"{class_names[best[i]]} {scores[i]:.2f}" for i in ids],
                             title=f"{len(fg)} foreground proposals -> refined (grey: background)", ax=ax)
    else:
        _blank(ax, "no proposals", t.image)
    classes = list(dict.fromkeys(int(c) for c in t.detections[:, 4]))[:max_classes]
    for k, class_id in enumerate(classes):
        ax = fig.add_subplot(2, 3, k + 2)
        cand = np.where((best == class_id) & (scores >= min_confidence))[0]
        kept = set(t.detection_sources[t.detections[:, 4] == class_id].tolist())
        vis = [1 if i in kept else 0 for i in cand]
        captions = [f"{scores[i]:.2f}" if i in kept else "" for i in cand]
        visualize.draw_boxes(t.image, boxes=_pixels(t, t.proposals[cand]),
                             refined_boxes=_pixels(t, t.proposal_refined[cand]), visibilities=vis, captions=captions,
                             title=f"{class_names[class_id]}: {len(cand)} candidates, {len(kept)} kept by NMS", ax=ax)
    if not classes:
        _blank(fig.add_subplot(2, 3, 2), f"no detections scoring >= {min_confidence}", t.image)
    for ax in fig.axes:
        ax.title.set_fontsize(9)
    return fig


def draw_masks28(t, class_names):
    """The 28x28 mask probabilities of the first GRID*GRID detections (0 black .. 1 yellow)."""
    fig = _figure("masks_28x28")
    if not len(t.final_masks28):
        _blank(fig.add_subplot(1, 1, 1), "no detections, so no masks", t.original)
        return fig
    for i, m in enumerate(t.final_masks28[:GRID * GRID]):
        ax = fig.add_subplot(GRID, GRID, i + 1)
        ax.imshow(m, vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
        ax.set_title(f"{i}: {class_names[t.class_ids[i]]} {t.scores[i]:.2f}, {np.mean(m >= 0.5):.0%} >= .5", fontsize=8)
        ax.axis("off")
    return fig


def draw_masks_pasted(t, class_names):
    """Each of the first GRID*GRID masks resized into its box and thresholded at 0.5 on the
    original image (same order as the 28x28 picture)."""
    fig = _figure("masks_pasted")
    if not t.masks.shape[-1]:
        _blank(fig.add_subplot(1, 1, 1), "no detections, so no masks", t.original)
        return fig
    colors = visualize.random_colors(t.masks.shape[-1], seed=0)
    for i in range(min(GRID * GRID, t.masks.shape[-1])):
        ax = fig.add_subplot(GRID, GRID, i + 1)
        ax.imshow(visualize.apply_mask(t.original.copy(), t.masks[..., i], colors[i], alpha=0.6))
        y1, x1, y2, x2 = t.boxes[i]
        ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, edgecolor=colors[i], facecolor="none"))
        ax.set_title(f"{i}: {class_names[t.class_ids[i]]}, {int(t.masks[..., i].sum())} px", fontsize=8)
        ax.axis("off")
    return fig


def draw_detections(t, class_names):
    """The final composite: matterport's display_instances on the original image."""
    fig = _figure("detections")
    n = len(t.boxes)
    visualize.display_instances(t.original, t.boxes, t.masks, t.class_ids, class_names, t.scores,
                                title=f"{n} detection(s)", ax=fig.add_subplot(1, 1, 1),
                                colors=visualize.random_colors(n, seed=0) if n else None)
    return fig


############################################################
#  Activations
############################################################

def activation_warnings(values):
    """What looks broken in a layer's output (float array): list of short str, empty if fine.

    "contains NaN/Inf"; "all zeros"; "constant (every value = v)"; "saturated: p% of values
    at its min or max" when at least SATURATED of the values sit within 0.1% of the range at
    either end (a dead ReLU layer, or a sigmoid/softmax stuck at 0/1).
    """
    v = np.asarray(values, np.float64)
    finite = v[np.isfinite(v)]
    warnings = ["contains NaN/Inf"] if finite.size < v.size else []
    if not finite.size:
        return warnings
    lo, hi = finite.min(), finite.max()
    if lo == hi == 0:
        return warnings + ["all zeros"]
    if lo == hi:
        return warnings + [f"constant (every value = {lo:.4g})"]
    tol = 1e-3 * (hi - lo)
    pinned = np.mean((finite <= lo + tol) | (finite >= hi - tol))
    if pinned >= SATURATED:
        warnings.append(f"saturated: {pinned:.1%} of values at its min or max")
    return warnings


def _channel_panels(name, values, t):
    """([(title, 2-D array)], (vmin, vmax) or None for a colour scale per panel) to show for a
    layer output (batch dimension removed); rpn_class becomes objectness maps per level."""
    if name == "rpn_class" and values.ndim == 2 and len(values) == len(t.anchors):
        panels = []
        for lv in t.anchor_levels:
            maps = values[lv.start:lv.end, 1].reshape(lv.rows, lv.cols, -1)
            panels += [(f"P{lv.level} anchor shape {r}: P(object)", maps[..., r]) for r in range(maps.shape[-1])]
        return panels, (0.0, 1.0)
    if values.ndim == 4:          # TimeDistributed [ROIs, h, w, c]: the first ROI
        values = values[0]
    if values.ndim == 3:          # [h, w, c]
        return [(f"channel {c}", values[..., c]) for c in range(min(values.shape[-1], GRID * GRID))], None
    if values.ndim == 2:
        return [("values", values)], None
    return [], None


def draw_activation(name, values, t):
    """A GRID x GRID grid of a layer's first channels (2-D outputs as one matrix; 1-D as a
    histogram); the title gives shape, min, max, mean and the warnings."""
    fig = visualize.new_figure((ACTIVATION_SIZE[0] / DPI, ACTIVATION_SIZE[1] / DPI), dpi=DPI)
    warnings = activation_warnings(values)
    finite = values[np.isfinite(values)]
    spread = f"min {finite.min():.3g}, max {finite.max():.3g}, mean {finite.mean():.3g}" if finite.size \
        else "no finite value"  # a diverged model's NaN everywhere
    fig.suptitle(f"{name} {tuple(values.shape)}: {spread}, zeros {np.mean(values == 0) if values.size else 0:.0%}"
                 + ("  WARNING: " + "; ".join(warnings) if warnings else ""),
                 color="red" if warnings else "black", fontsize=11)
    panels, scale = _channel_panels(name, values, t)
    vmin, vmax = scale or (None, None)
    if not panels:
        ax = fig.add_subplot(1, 1, 1)
        ax.hist(finite.ravel(), bins=50)
        return fig
    rows = GRID if len(panels) > 1 else 1
    for i, (title, panel) in enumerate(panels[:GRID * GRID]):
        ax = fig.add_subplot(rows, rows, i + 1)
        ax.imshow(panel, cmap="viridis", aspect="auto" if panel.shape[0] > 4 * panel.shape[1] else "equal",
                  interpolation="nearest", vmin=vmin, vmax=vmax)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    return fig


############################################################
#  Weights
############################################################

class _Subset:
    """A matterport-style model view exposing only some layers (for plot_weight_histograms)."""

    def __init__(self, layers):
        self.layers = layers

    def get_trainable_layers(self):
        return self.layers


def draw_weights(mrcnn_model):
    """Histograms of HISTOGRAM_WEIGHTS weights: the layers with a flagged kernel first, then
    conv1 and landmark FPN, RPN and head layers (flagged weights have red titles).
    Returns (Figure, visualize.weight_stats rows of every weight)."""
    rows = visualize.weight_stats(mrcnn_model)
    flagged = list(dict.fromkeys(r["layer"] for r in rows if r["alerts"] and "kernel" in r["name"]))
    landmarks = ["conv1", "fpn_c5p5", "fpn_p2", "rpn_conv_shared", "rpn_class_raw", "rpn_bbox_pred",
                 "mrcnn_class_conv1", "mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_mask_conv1",
                 "mrcnn_mask_deconv", "mrcnn_mask"]
    by_name = {layer.name: layer for layer in mrcnn_model.get_trainable_layers()}
    chosen = [by_name[n] for n in dict.fromkeys(flagged + landmarks) if n in by_name]
    fig = visualize.plot_weight_histograms(_Subset(chosen), max_weights=HISTOGRAM_WEIGHTS, cols=4)
    w, h = SIZES["weights"]
    fig.set_size_inches(w / DPI, h / DPI)
    return fig, rows


def save_figure(fig, path):
    """Write a Figure as PNG at its own pixel size (figsize x DPI; no tight cropping)."""
    fig.savefig(path, dpi=DPI, format="png")
