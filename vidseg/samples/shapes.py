"""Synthetic shapes: matterport's ShapesDataset, a shifted variant, and moving-shapes video clips.

Images are plain backgrounds with 1–4 filled squares, circles and triangles (class ids 1, 2, 3:
`square`, `circle`, `triangle`). Everything is seeded: the same seed gives the same pixels.

- `ShapesDataset.generate(count, height, width, seed)`: the training distribution, matterport's
  `random_image` (half-size 20..32 px and centres at least 20 px from the edges at 128 px,
  scaled with the image; any colour; boxes overlapping with IoU > 0.3 dropped). Unlike
  matterport, a shape's colour always differs visibly from the background and from the shapes
  drawn before it, and a shape more than half hidden by later ones is not drawn, so every
  ground-truth instance is clearly visible.
- `ShapesDataset.generate_shifted(...)`: a generalisation check where the shapes differ from
  the training generator in size (half-size 9–32 % of the short side instead of 16–25 %),
  colour (saturated hues on grey backgrounds) and position (half of the shapes have one
  centre coordinate in the edge band the training generator never uses, yet at least half a
  size from the edge, so most of the shape stays visible).
- `write_moving_shapes_clip(path, ...)`: an H.264 MP4 of shapes bouncing around a frame, and
  the ground truth of every frame.
"""
from __future__ import annotations

import colorsys
import json
import math
import os
import random
from dataclasses import dataclass

import cv2
import numpy as np

from mrcnn import utils
from mrcnn.config import Config

CLASS_NAMES = ["BG", "square", "circle", "triangle"]
SHAPES = CLASS_NAMES[1:]
MIN_COLOR_DISTANCE = 60.0  # Euclidean RGB distance between a shape and what it is drawn on


class ShapesConfig(Config):
    """matterport's configuration for training on the shapes dataset (128x128 images)."""

    NAME = "shapes"
    GPU_COUNT = 1
    IMAGES_PER_GPU = 8
    NUM_CLASSES = 1 + 3
    IMAGE_MIN_DIM = 128
    IMAGE_MAX_DIM = 128
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    TRAIN_ROIS_PER_IMAGE = 32
    STEPS_PER_EPOCH = 100
    VALIDATION_STEPS = 5


@dataclass(frozen=True)
class ShapeStyle:
    """How a random image is drawn; lengths are fractions of the image's short side.

    size: (min, max) half-size of a shape; margin: centres lie at least this far from the
    edges, except for a share `edge_share` of shapes, which get one coordinate inside that
    band. colors: "any" (uniform RGB) or "vivid" (saturated hues on grey backgrounds).
    """

    size: tuple[float, float]
    margin: float
    edge_share: float
    colors: str


TRAIN_STYLE = ShapeStyle(size=(20 / 128, 32 / 128), margin=20 / 128, edge_share=0.0, colors="any")
SHIFTED_STYLE = ShapeStyle(size=(0.09, 0.32), margin=20 / 128, edge_share=0.5, colors="vivid")


def draw_shape(image, shape, dims, color):
    """Draw one filled shape into `image` [H, W, C] in place (uint8) and return it.

    shape: "square" | "circle" | "triangle"; dims: (x, y, s) centre and half-size in pixels;
    color: a C-tuple of ints (or an int for one channel).
    """
    x, y, s = dims
    if shape == "square":
        cv2.rectangle(image, (x - s, y - s), (x + s, y + s), color, -1)
    elif shape == "circle":
        cv2.circle(image, (x, y), s, color, -1)
    elif shape == "triangle":
        half_base = s / math.sin(math.radians(60))
        points = np.array([[(x, y - s), (x - half_base, y + s), (x + half_base, y + s)]], dtype=np.int32)
        cv2.fillPoly(image, points, color)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return image


def render_image(height, width, bg_color, shapes):
    """Draw a picture: uint8 RGB [H, W, 3].

    shapes: list of (shape name, (r, g, b), (x, y, s)), drawn in order (later ones on top).
    """
    image = np.empty((height, width, 3), np.uint8)
    image[:] = np.asarray(bg_color, np.uint8)
    for shape, color, dims in shapes:
        draw_shape(image, shape, dims, tuple(int(c) for c in color))
    return image


def _shape_masks(height, width, shapes):
    """Each shape's full (unoccluded) mask: bool [H, W, N]."""
    masks = np.zeros((height, width, len(shapes)), bool)
    for i, (shape, _, dims) in enumerate(shapes):
        masks[:, :, i] = draw_shape(np.zeros((height, width), np.uint8), shape, dims, 1).astype(bool)
    return masks


def render_masks(height, width, shapes):
    """Instance masks of a picture drawn by `render_image`, occlusion applied.

    Returns (bool [H, W, N], int32 [N] class ids); shapes hidden entirely are left out.
    """
    masks = _shape_masks(height, width, shapes)
    visible = np.ones((height, width), bool)
    for i in range(len(shapes) - 1, -1, -1):
        masks[:, :, i] &= visible
        visible &= ~masks[:, :, i]
    keep = masks.any(axis=(0, 1))
    class_ids = np.array([CLASS_NAMES.index(s[0]) for s in shapes], np.int32).reshape(-1)
    return masks[:, :, keep], class_ids[keep]


def _distinct_color(rng, avoid, vivid):
    """A random RGB colour at least MIN_COLOR_DISTANCE from every colour in `avoid`."""
    while True:
        if vivid:
            color = tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(rng.random(), 1.0, rng.uniform(0.6, 1.0)))
        else:
            color = tuple(rng.randint(0, 255) for _ in range(3))
        if all(np.linalg.norm(np.subtract(color, a)) >= MIN_COLOR_DISTANCE for a in avoid):
            return color


def random_shape(rng, height, width, style, avoid):
    """One random (shape, color, (x, y, s)) in `style`, its colour unlike those in `avoid`."""
    short = min(height, width)
    shape = rng.choice(SHAPES)
    color = _distinct_color(rng, avoid, style.colors == "vivid")
    margin = max(1, int(round(style.margin * short)))
    s = rng.randint(max(2, int(round(style.size[0] * short))), max(2, int(round(style.size[1] * short))))
    y = rng.randint(margin, height - margin - 1)
    x = rng.randint(margin, width - margin - 1)
    if rng.random() < style.edge_share:  # move one coordinate into the edge band
        if rng.random() < 0.5:
            y = _edge_coordinate(rng, height, margin, s)
        else:
            x = _edge_coordinate(rng, width, margin, s)
    return shape, color, (x, y, s)


def _edge_coordinate(rng, length, margin, s):
    """A coordinate within `margin` of either end of [0, length), but at least s/2 from the
    end when possible, so most of a shape of half-size s stays visible."""
    offset = rng.randint(min(s // 2, margin - 1), margin - 1)
    return offset if rng.random() < 0.5 else length - 1 - offset


def random_image(rng, height, width, style=TRAIN_STYLE):
    """A random background colour and 1–4 shapes; shapes whose boxes overlap an earlier kept
    one with IoU > 0.3 are dropped (matterport). Returns (bg_color (r, g, b), shapes)."""
    if style.colors == "vivid":
        level = rng.randint(0, 255)
        bg_color = (level, level, level)
    else:
        bg_color = tuple(rng.randint(0, 255) for _ in range(3))
    shapes = []
    for _ in range(rng.randint(1, 4)):
        shapes.append(random_shape(rng, height, width, style, [bg_color] + [s[1] for s in shapes]))
    boxes = np.array([[y - s, x - s, y + s, x + s] for _, _, (x, y, s) in shapes])
    keep = set(utils.non_max_suppression(boxes, np.arange(len(shapes)), 0.3).tolist())
    shapes = [s for i, s in enumerate(shapes) if i in keep]
    return bg_color, _drop_hidden(height, width, shapes)


def _drop_hidden(height, width, shapes, min_visible=0.5):
    """Remove, one at a time, the shape with the least visible share while it is < min_visible."""
    while shapes:
        full = _shape_masks(height, width, shapes)
        visible = full.copy()
        for i in range(len(shapes) - 2, -1, -1):
            visible[:, :, i] &= ~full[:, :, i + 1:].any(axis=-1)
        share = visible.sum(axis=(0, 1)) / np.maximum(full.sum(axis=(0, 1)), 1)
        worst = int(share.argmin())
        if share[worst] >= min_visible:
            break
        shapes = shapes[:worst] + shapes[worst + 1:]
    return shapes


class ShapesDataset(utils.Dataset):
    """Generated shapes images (matterport's ShapesDataset), drawn on demand from their recipe."""

    @classmethod
    def generate(cls, count, height=128, width=128, seed=0, style=TRAIN_STYLE):
        """A prepared dataset of `count` random images of height x width, seeded."""
        dataset = cls()
        dataset.load_shapes(count, height, width, seed=seed, style=style)
        dataset.prepare()
        return dataset

    @classmethod
    def generate_shifted(cls, count, height=128, width=128, seed=0):
        """A prepared dataset whose shapes differ in size, colour and position from training."""
        return cls.generate(count, height, width, seed=seed, style=SHIFTED_STYLE)

    @classmethod
    def from_clip(cls, truths):
        """A prepared dataset of a clip's frames: image i is frame i (truths: the FrameTruth list
        `write_moving_shapes_clip` returns), e.g. to score a `--detections` file against it."""
        dataset = cls()
        dataset.add_shape_classes()
        for i, truth in enumerate(truths):
            dataset.add_image("shapes", image_id=i, path=None, width=truth.width, height=truth.height,
                              bg_color=truth.bg_color, shapes=truth.shapes)
        dataset.prepare()
        return dataset

    def load_shapes(self, count, height, width, seed=None, style=TRAIN_STYLE):
        """Register `count` random images (matterport's name; seed None uses the global RNG).
        May be called again to add images of another size; image ids keep counting."""
        rng = random if seed is None else random.Random(seed)
        self.add_shape_classes()
        for _ in range(count):
            bg_color, shapes = random_image(rng, height, width, style)
            self.add_image("shapes", image_id=len(self.image_info), path=None, width=width, height=height,
                           bg_color=bg_color, shapes=shapes)

    def add_shape_classes(self):
        """Register the three shape classes under their CLASS_NAMES ids (again is harmless)."""
        for name in SHAPES:
            self.add_class("shapes", CLASS_NAMES.index(name), name)

    def load_image(self, image_id):
        """uint8 RGB [H, W, 3]."""
        info = self.image_info[image_id]
        return render_image(info["height"], info["width"], info["bg_color"], info["shapes"])

    def load_mask(self, image_id):
        """(bool [H, W, N], int32 [N]) with occlusions removed from the masks."""
        info = self.image_info[image_id]
        return render_masks(info["height"], info["width"], info["shapes"])

    def image_reference(self, image_id):
        """The recipe of the image: its list of (shape, colour, (x, y, s))."""
        return self.image_info[image_id]["shapes"]


############################################################
#  Moving shapes video
############################################################

@dataclass
class FrameTruth:
    """Ground truth of one clip frame: the shapes drawn, in drawing order (later on top)."""

    height: int
    width: int
    bg_color: tuple
    shapes: list

    def instances(self):
        """Visible instances: (masks bool [H, W, N] with occlusion applied,
        boxes int32 [N, (y1, x1, y2, x2)], class_ids int32 [N])."""
        masks, class_ids = render_masks(self.height, self.width, self.shapes)
        return masks, utils.extract_bboxes(masks), class_ids

    def to_json(self):
        _, boxes, class_ids = self.instances()
        return {"boxes": boxes.tolist(), "class_ids": class_ids.tolist(),
                "shapes": [[s, list(c), list(d)] for s, c, d in self.shapes]}


def moving_shapes(seconds=10, width=1280, height=720, fps=30, seed=0, count=(2, 4), size=TRAIN_STYLE.size):
    """Yield (frame uint8 RGB [H, W, 3], FrameTruth) for a clip of shapes bouncing off the edges.

    count: (min, max) number of shapes; size: (min, max) half-size as a fraction of `height`
    (default: the training generator's, so a frame scaled to the model's input looks like a
    training image).
    Each shape keeps its class, colour and size and moves at 0.1–0.35 frame heights per second.
    """
    rng = random.Random(seed)
    bg_color = tuple(rng.randint(0, 255) for _ in range(3))
    movers = []
    for _ in range(rng.randint(*count)):
        s = rng.randint(int(size[0] * height), int(size[1] * height))
        color = _distinct_color(rng, [bg_color] + [m["color"] for m in movers], vivid=False)
        speed = rng.uniform(0.1, 0.35) * height / fps
        angle = rng.uniform(0, 2 * math.pi)
        movers.append({"shape": rng.choice(SHAPES), "color": color, "s": s,
                       "pos": [rng.uniform(s, width - s), rng.uniform(s, height - s)],
                       "vel": [speed * math.cos(angle), speed * math.sin(angle)]})
    for _ in range(int(round(seconds * fps))):
        shapes = [(m["shape"], m["color"], (int(round(m["pos"][0])), int(round(m["pos"][1])), m["s"]))
                  for m in movers]
        image = render_image(height, width, bg_color, shapes)
        yield image, FrameTruth(height, width, bg_color, shapes)
        for m in movers:
            for axis, limit in ((0, width), (1, height)):
                m["pos"][axis] += m["vel"][axis]
                if not m["s"] <= m["pos"][axis] <= limit - m["s"]:
                    m["vel"][axis] = -m["vel"][axis]
                    m["pos"][axis] = min(max(m["pos"][axis], m["s"]), limit - m["s"])


def write_moving_shapes_clip(path, seconds=10, width=1280, height=720, fps=30, seed=0, truth_path=None):
    """Encode a moving-shapes clip to an H.264 MP4 (PyAV, libx264, yuv420p) at `path`.

    width and height must be even. Writes the per-frame ground truth as JSON lines to
    `truth_path` if given (one object per frame: boxes [[y1, x1, y2, x2]], class_ids, shapes).
    Returns the list of FrameTruth, one per frame. The file is removed if encoding fails.
    """
    import av

    if width % 2 or height % 2:
        raise ValueError(f"width and height must be even for H.264 (got {width}x{height})")
    truths = []
    try:
        with av.open(str(path), mode="w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"preset": "veryfast", "crf": "18"}
            try:
                for image, truth in moving_shapes(seconds, width, height, fps, seed):
                    container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
                    truths.append(truth)
            finally:
                container.mux(stream.encode())
    except BaseException:
        _remove(path)
        raise
    if truth_path is not None:
        with open(truth_path, "w") as f:
            for truth in truths:
                f.write(json.dumps(truth.to_json()) + "\n")
    return truths


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
