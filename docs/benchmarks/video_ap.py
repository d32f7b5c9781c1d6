"""Mask AP of `vidseg file` on a generated moving-shapes clip, against the clip's own ground truth.

usage: python docs/benchmarks/video_ap.py WIDTH HEIGHT SECONDS SEED [vidseg file options...]
Writes the clip (`write_moving_shapes_clip`) in a temporary folder, runs `vidseg file CLIP
--detections ...` (the shipped model unless the options say otherwise) and prints pycocotools'
segm AP50 and AP, the detection and instance counts, and the run's fps.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from vidseg.samples.coco import coco_ap_table, dataset_to_coco, detections_file_results
from vidseg.samples.shapes import ShapesDataset, write_moving_shapes_clip


def main(argv: list[str]) -> None:
    width, height, seconds, seed = int(argv[0]), int(argv[1]), float(argv[2]), int(argv[3])
    with tempfile.TemporaryDirectory() as tmp:
        clip, found, stats = Path(tmp, "clip.mp4"), Path(tmp, "d.jsonl"), Path(tmp, "stats.json")
        truths = write_moving_shapes_clip(str(clip), seconds=seconds, width=width, height=height, seed=seed)
        subprocess.run(["vidseg", "file", str(clip), "--detections", str(found), "--stats", str(stats),
                        "--no-progress", *argv[4:]], check=True)
        truth = dataset_to_coco(ShapesDataset.from_clip(truths))
        results = detections_file_results(found)
        ap = coco_ap_table(truth, results, eval_type="segm")
        fps = json.loads(stats.read_text())["fps"]
    print(f"{width}x{height} {seconds:g} s seed {seed}: segm AP50 {ap['AP50']:.3f} AP {ap['AP']:.3f}, "
          f"{len(results)} detections of {len(truth.getAnnIds())} instances, {fps:.1f} fps")


if __name__ == "__main__":
    main(sys.argv[1:])
