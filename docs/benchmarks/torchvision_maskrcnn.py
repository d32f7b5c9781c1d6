"""Benchmark-only: torchvision's maskrcnn_resnet50_fpn (random init) on the same photo at
the same input size as `python -m mrcnn.profile --backbone resnet50 --dim 512`.

    /work/venv/bin/python -c "import skimage.data, cv2; cv2.imwrite('/tmp/astronaut.png', skimage.data.astronaut()[:, :, ::-1])"
    /work/venv-torch/bin/python docs/benchmarks/torchvision_maskrcnn.py --image /tmp/astronaut.png --dim 512

Needs torch + torchvision (a separate venv; not a vidseg dependency). Prints one JSON line
with wall and CPU seconds per image (medians after a warm-up) and the detection count.
"""
import argparse
import json
import time

import numpy as np
import torch
import torchvision
from PIL import Image


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--image", required=True, help="an image file (the docs use skimage's astronaut)")
    args = p.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=args.dim, max_size=args.dim,
        box_score_thresh=0.0).eval()  # keep up to 100 detections, as the random-init TF model does
    image = np.array(Image.open(args.image).convert("RGB"))
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
    with torch.inference_mode():
        model([x])
        wall, cpu = [], []
        for _ in range(args.repeats):
            t, c = time.perf_counter(), time.process_time()
            out = model([x])[0]
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    print(json.dumps({"model": "torchvision maskrcnn_resnet50_fpn", "dim": args.dim, "batch": 1,
                      "threads": torch.get_num_threads(), "s_per_image": float(np.median(wall)),
                      "cpu_s_per_image": float(np.median(cpu)), "detections": int(len(out["boxes"]))}))


if __name__ == "__main__":
    main()
