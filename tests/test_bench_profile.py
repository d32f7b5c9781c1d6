"""`vidseg bench --profile`: the model's per-part cost next to the stage table."""
from __future__ import annotations

import json

import pytest

from tests.conftest import run_vidseg


@pytest.mark.slow
def test_bench_profile_reports_every_part_of_mask_rcnn(tmp_path, monkeypatch):
    """Seconds per part, and the detections per frame apart from them (they were a row of the
    seconds table); TensorFlow's autograph files, 7–9 a run, are not left in the temporary
    folder (the process measuring the stages ends with os._exit, before Python removes them)."""
    from vidseg.samples.shapes import write_moving_shapes_clip

    clip = tmp_path / "clip.mp4"
    write_moving_shapes_clip(str(clip), seconds=0.4, width=320, height=180, fps=10, seed=5)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    r = run_vidseg("bench", clip, "--profile", "--frames", "4", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    parts = report["model_parts_s"]
    assert set(parts) == {"mold", "backbone", "fpn", "rpn", "proposals", "roi_align", "classifier", "detection",
                          "mask_head", "post", "total"}
    assert all(seconds >= 0 for seconds in parts.values())
    assert parts["total"] > 0 and parts["backbone"] > 0
    assert report["detections_per_frame"] > 0  # the shipped model finds the clip's shapes
    assert list((tmp_path / "tmp").iterdir()) == []


def test_bench_profile_says_when_a_model_has_no_parts(tmp_path):
    from vidseg.samples.shapes import write_moving_shapes_clip

    clip = tmp_path / "clip.mp4"
    write_moving_shapes_clip(str(clip), seconds=0.3, width=160, height=96, fps=10, seed=5)
    r = run_vidseg("bench", clip, "--model", "none", "--profile", "--frames", "3")
    assert r.returncode == 0, r.stderr
    assert "model none has no per-part profile" in r.stdout
    r = run_vidseg("bench", clip, "--model", "none", "--profile", "--frames", "3", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["model_parts_s"] is None and report["detections_per_frame"] is None  # as documented
