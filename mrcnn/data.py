"""Training data: ground truth per image, RPN targets, and a prefetching batch generator.

Mirrors matterport's `load_image_gt`, `build_rpn_targets` and `data_generator`
(SPEC §5). The generator builds batches in worker threads (numpy, OpenCV and the
dataset's own loading release the GIL for most of the work), so the next batches
are ready while the model trains on the current one. Batches are deterministic for
a given seed: batch k always holds the same images and augmentation draws.
"""
from __future__ import annotations

import queue
import threading

import numpy as np

from mrcnn import utils
from mrcnn.backbones import compute_backbone_shapes


def compose_image_meta(image_id, original_image_shape, image_shape, window, scale, active_class_ids):
    """Image attributes packed into one float64 vector [12 + NUM_CLASSES] (SPEC §3.3)."""
    return np.array([image_id] + list(original_image_shape) + list(image_shape) + list(window)
                    + [scale] + list(active_class_ids))


def mold_image(images, config):
    """uint8 RGB [..., 3] -> float32 with MEAN_PIXEL subtracted (no scaling)."""
    return images.astype(np.float32) - np.asarray(config.MEAN_PIXEL, np.float32)


def pixel_anchors(config, image_shape):
    """Pyramid anchors for `image_shape` in pixels: float [A, (y1, x1, y2, x2)] (SPEC §3.4)."""
    shapes = compute_backbone_shapes(config, image_shape)
    return utils.generate_pyramid_anchors(config.RPN_ANCHOR_SCALES, config.RPN_ANCHOR_RATIOS, shapes,
                                          config.BACKBONE_STRIDES, config.RPN_ANCHOR_STRIDE)


def load_image_gt(dataset, config, image_id, augmentation=None, use_mini_mask=False, rng=None):
    """Load one image resized as for the model, with its instances.

    augmentation: callable (image, masks, rng) -> (image, masks) (see mrcnn.augmentation),
        applied after resizing; it must keep the shape.
    Returns image uint8 [H, W, 3]; image_meta float64 [12 + NUM_CLASSES];
    class_ids int32 [N] (negative = crowd); bbox int32 [N, (y1, x1, y2, x2)] pixels;
    mask bool [H, W, N], or [MINI_MASK_SHAPE..., N] inside each box when use_mini_mask.
    Instances left with no pixels (e.g. cropped away) are dropped.
    """
    rng = np.random.default_rng() if rng is None else rng
    image = dataset.load_image(image_id)
    mask, class_ids = dataset.load_mask(image_id)
    original_shape = image.shape
    image, window, scale, padding, crop = utils.resize_image(
        image, min_dim=config.IMAGE_MIN_DIM, min_scale=config.IMAGE_MIN_SCALE,
        max_dim=config.IMAGE_MAX_DIM, mode=config.IMAGE_RESIZE_MODE)
    mask = utils.resize_mask(mask, scale, padding, crop)
    if augmentation is not None:
        shape = image.shape, mask.shape
        image, mask = augmentation(image, mask.astype(bool), rng)
        assert (image.shape, mask.shape) == shape, "augmentation changed the image or mask shape"
    keep = np.sum(mask, axis=(0, 1)) > 0
    mask, class_ids = mask[:, :, keep].astype(bool), np.asarray(class_ids, np.int32)[keep]
    bbox = utils.extract_bboxes(mask).astype(np.int32)
    active_class_ids = np.zeros([dataset.num_classes], dtype=np.int32)
    active_class_ids[dataset.source_class_ids[dataset.image_info[image_id]["source"]]] = 1
    if use_mini_mask:
        mask = utils.minimize_mask(bbox, mask, config.MINI_MASK_SHAPE)
    meta = compose_image_meta(image_id, original_shape, image.shape, window, scale, active_class_ids)
    return image, meta, class_ids, bbox, mask


def build_rpn_targets(image_shape, anchors, gt_class_ids, gt_boxes, config, rng=None):
    """Which anchors are positive/negative, and the box deltas of the positive ones.

    anchors: float [A, 4] pixels; gt_class_ids int [G] (negative = crowd); gt_boxes [G, 4] pixels.
    Returns rpn_match int32 [A] (1 positive, -1 negative, 0 neutral) and rpn_bbox float32
    [RPN_TRAIN_ANCHORS_PER_IMAGE, (dy, dx, log dh, log dw) / RPN_BBOX_STD_DEV], zero-padded,
    in the order of the positive anchors.
    """
    rng = np.random.default_rng() if rng is None else rng
    n_train = config.RPN_TRAIN_ANCHORS_PER_IMAGE
    rpn_match = np.zeros([anchors.shape[0]], dtype=np.int32)
    rpn_bbox = np.zeros((n_train, 4), dtype=np.float32)
    gt_class_ids = np.asarray(gt_class_ids)
    gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
    crowd = gt_class_ids < 0
    no_crowd = np.ones([anchors.shape[0]], dtype=bool)
    if crowd.any():
        no_crowd = utils.compute_overlaps(anchors, gt_boxes[crowd]).max(axis=1) < 0.001
    gt_boxes = gt_boxes[gt_class_ids > 0]

    if len(gt_boxes):
        overlaps = utils.compute_overlaps(anchors, gt_boxes)  # [A, G]
        anchor_iou_argmax = overlaps.argmax(axis=1)
        anchor_iou_max = overlaps[np.arange(len(anchors)), anchor_iou_argmax]
        rpn_match[(anchor_iou_max < 0.3) & no_crowd] = -1
        # Each GT's best anchors (ties all) are positive, unless the GT touches no anchor at all.
        gt_max = overlaps.max(axis=0)
        best = np.argwhere((overlaps == gt_max) & (gt_max > 0))[:, 0]
        rpn_match[best] = 1
        rpn_match[anchor_iou_max >= 0.7] = 1
    else:
        anchor_iou_argmax = np.zeros([anchors.shape[0]], dtype=np.int64)
        rpn_match[no_crowd] = -1

    ids = np.where(rpn_match == 1)[0]
    extra = len(ids) - n_train // 2
    if extra > 0:
        rpn_match[rng.choice(ids, extra, replace=False)] = 0
    ids = np.where(rpn_match == -1)[0]
    extra = len(ids) - (n_train - np.sum(rpn_match == 1))
    if extra > 0:
        rpn_match[rng.choice(ids, extra, replace=False)] = 0

    ids = np.where(rpn_match == 1)[0]
    if len(ids):
        a = anchors[ids]
        gt = gt_boxes[anchor_iou_argmax[ids]]
        a_h, a_w = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
        g_h, g_w = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
        deltas = np.stack([
            (gt[:, 0] + 0.5 * g_h - a[:, 0] - 0.5 * a_h) / a_h,
            (gt[:, 1] + 0.5 * g_w - a[:, 1] - 0.5 * a_w) / a_w,
            np.log(g_h / a_h), np.log(g_w / a_w)], axis=1)
        rpn_bbox[:len(ids)] = deltas / np.asarray(config.RPN_BBOX_STD_DEV)
    return rpn_match, rpn_bbox


def build_batch(dataset, config, image_ids, anchors, augmentation=None, rng=None,
                no_augmentation_sources=None):
    """One training batch from `image_ids`, as the training graph's inputs (SPEC §5).

    Images without any positive (non-crowd) instance are replaced by random other images.
    Returns [images float32 [B,H,W,3] molded, image_meta [B,M], rpn_match int32 [B,A,1],
    rpn_bbox float32 [B,256,4], gt_class_ids int32 [B,G], gt_boxes int32 [B,G,4] pixels,
    gt_masks bool [B,56,56,G] (or [B,H,W,G] without mini masks)] with G = MAX_GT_INSTANCES.
    """
    rng = np.random.default_rng() if rng is None else rng
    items, given, tries = [], iter(list(image_ids)), 0
    while len(items) < len(image_ids):
        image_id = next(given, None)
        if image_id is None:
            image_id = int(rng.choice(dataset.image_ids))
        source = dataset.image_info[image_id]["source"]
        image, meta, class_ids, boxes, masks = load_image_gt(
            dataset, config, image_id, use_mini_mask=config.USE_MINI_MASK, rng=rng,
            augmentation=None if source in (no_augmentation_sources or ()) else augmentation)
        tries += 1
        if not np.any(class_ids > 0):
            if tries > 100 * len(image_ids):
                raise ValueError("no image in the dataset has an instance of a positive class")
            continue
        if len(class_ids) > config.MAX_GT_INSTANCES:
            keep = rng.choice(len(class_ids), config.MAX_GT_INSTANCES, replace=False)
            class_ids, boxes, masks = class_ids[keep], boxes[keep], masks[:, :, keep]
        items.append((image, meta, class_ids, boxes, masks))

    b, g = len(items), config.MAX_GT_INSTANCES
    image_shape = items[0][0].shape
    mask_shape = items[0][4].shape[:2]
    batch = [np.zeros((b,) + image_shape, np.float32),
             np.zeros((b, len(items[0][1])), np.float64),
             np.zeros((b, len(anchors), 1), np.int32),
             np.zeros((b, config.RPN_TRAIN_ANCHORS_PER_IMAGE, 4), np.float32),
             np.zeros((b, g), np.int32),
             np.zeros((b, g, 4), np.int32),
             np.zeros((b,) + mask_shape + (g,), bool)]
    for i, (image, meta, class_ids, boxes, masks) in enumerate(items):
        rpn_match, rpn_bbox = build_rpn_targets(image_shape, anchors, class_ids, boxes, config, rng)
        n = len(class_ids)
        batch[0][i] = mold_image(image, config)
        batch[1][i] = meta
        batch[2][i, :, 0] = rpn_match
        batch[3][i] = rpn_bbox
        batch[4][i, :n] = class_ids
        batch[5][i, :n] = boxes
        batch[6][i, :, :, :n] = masks
    return batch


def data_generator(dataset, config, shuffle=True, augmentation=None, batch_size=1, seed=0,
                   workers=2, prefetch=4, start=0, no_augmentation_sources=None):
    """Endless training batches `(inputs, [])` as matterport's data_generator yields them.

    inputs: the 7 arrays of `build_batch`. Batch k holds stream positions k*B..k*B+B-1 of
    the image order (a new seeded permutation per pass when shuffle) and draws its
    augmentation from a generator seeded with (seed, k), so runs repeat exactly.
    `workers` threads build batches ahead, at most `prefetch` waiting per worker.
    start: index of the first batch (a resumed run continues the stream instead of
    repeating it). Images of `no_augmentation_sources` are never augmented.
    """
    anchors = pixel_anchors(config, config.IMAGE_SHAPE)
    n = len(dataset.image_ids)
    if n == 0:
        raise ValueError("the dataset has no images")
    perms = {}

    def ids_of_batch(k):
        out = []
        for p in range(k * batch_size, (k + 1) * batch_size):
            epoch, pos = divmod(p, n)
            if shuffle:
                if epoch not in perms:
                    perms[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
                    perms.pop(epoch - 2, None)
                out.append(int(dataset.image_ids[perms[epoch][pos]]))
            else:
                out.append(int(dataset.image_ids[pos]))
        return out

    stop = threading.Event()
    queues = [queue.Queue(maxsize=prefetch) for _ in range(workers)]
    lock = threading.Lock()

    def work(w):
        k = start + w
        while not stop.is_set():
            try:
                with lock:
                    ids = ids_of_batch(k)
                item = build_batch(dataset, config, ids, anchors, augmentation,
                                   np.random.default_rng([seed, k, 1]), no_augmentation_sources)
            except Exception as e:  # handed to the consumer, which re-raises it
                item = e
            while not stop.is_set():
                try:
                    queues[w].put(item, timeout=0.2)
                    break
                except queue.Full:
                    continue
            if isinstance(item, Exception):
                return
            k += workers

    threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in range(workers)]
    for t in threads:
        t.start()
    try:
        k = 0
        while True:
            item = queues[k % workers].get()
            if isinstance(item, Exception):
                raise item
            yield item, []
            k += 1
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)
