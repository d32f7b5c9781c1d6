"""`vidseg demo [-o demo.mp4]`: the first command a new user runs; needs no download.

Generates a 1280x720 clip of moving squares, circles and triangles (seeded, 10 s at 30 fps
by default) in a temporary folder, then runs the file pipeline on it with the shipped model,
so the output shows every shape masked, labelled and scored.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from vidseg.errors import InputError
from vidseg.pipelines.file import FileJob, check_model_files, run_file
from vidseg.pipelines.outputs import check_distinct, check_mp4_name, check_output
from vidseg.scratch import scratch_dir


MIN_SECONDS, MAX_SECONDS = 0.1, 3600.0  # the clip: 3 frames to an hour


@dataclass
class DemoJob:
    """Options of `vidseg demo` (see the CLI help for each)."""

    output: str = "demo.mp4"
    seconds: float = 10.0
    seed: int = 0
    weights: str | None = None
    overwrite: bool = False
    progress: bool = True
    stats: str | None = None
    detections: str | None = None


def run_demo(job: DemoJob) -> int:
    """Write the clip, segment it into job.output; returns the file pipeline's exit code."""
    from vidseg.samples.shapes import write_moving_shapes_clip

    if not MIN_SECONDS <= job.seconds <= MAX_SECONDS:  # also refuses nan
        raise InputError(f"--seconds must be from {MIN_SECONDS:g} to {MAX_SECONDS:g}, got {job.seconds:g}")
    check_mp4_name(job.output)
    check_model_files(job.weights)  # before the clip is made, not after
    check_distinct([("-o", job.output), ("--stats", job.stats), ("--detections", job.detections)])
    output = check_output(job.output, "", job.overwrite)
    for path, what in ((job.stats, "stats file"), (job.detections, "detections file")):
        if path:  # checked here, with the user's -y, before the clip is made (the demo's file run overwrites)
            check_output(path, "", job.overwrite, what, stream=what == "stats file")
    with scratch_dir("demo") as tmp:
        clip = os.path.join(tmp, "shapes.mp4")
        print(f"vidseg demo: writing a {job.seconds:g} s 1280x720 moving-shapes clip", file=sys.stderr)
        write_moving_shapes_clip(clip, seconds=job.seconds, width=1280, height=720, fps=30, seed=job.seed)
        code = run_file(FileJob(input=clip, output=output, weights=job.weights, overwrite=True,
                                progress=job.progress, stats=job.stats, detections=job.detections))
    if code == 0:
        print(f"vidseg demo: wrote {output}", file=sys.stderr)
    return code
