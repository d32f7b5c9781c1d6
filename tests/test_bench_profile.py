"""`vidseg bench --profile`: the model's per-part cost next to the stage table."""
from __future__ import annotations

import json

import pytest

from tests.conftest import run_vidseg


@pytest.mark.slow
def test_bench_profile_reports_every_part_of_mask_rcnn(tmp_path):
    from vidseg.samples.shapes import write_moving_shapes_clip

    clip = tmp_path / "clip.mp4"
    write_moving_shapes_clip(str(clip), seconds=0.4, width=320, height=180, fps=10, seed=5)
    r = run_vidseg("bench", clip, "--profile", "--frames", "4", "--json")
    assert r.returncode == 0, r.stderr
    parts = json.loads(r.stdout)["model_parts_s"]
    for name in ("backbone", "fpn", "rpn", "proposals", "roi_align", "classifier", "detection", "mask_head", "post"):
        assert parts[name] >= 0, name
    assert parts["total"] > 0 and parts["backbone"] > 0


def test_bench_profile_says_when_a_model_has_no_parts(tmp_path):
    from vidseg.samples.shapes import write_moving_shapes_clip

    clip = tmp_path / "clip.mp4"
    write_moving_shapes_clip(str(clip), seconds=0.3, width=160, height=96, fps=10, seed=5)
    r = run_vidseg("bench", clip, "--model", "none", "--profile", "--frames", "3")
    assert r.returncode == 0, r.stderr
    assert "model none has no per-part profile" in r.stdout
