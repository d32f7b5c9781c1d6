"""`vidseg demo`: a generated 1280x720 moving-shapes clip segmented with the shipped model."""
import json

import av
import numpy as np
import pytest

from tests.conftest import run_vidseg
from vidseg.samples.shapes import moving_shapes

pytestmark = pytest.mark.slow


def test_demo_end_to_end(tmp_path):
    out, stats = tmp_path / "demo.mp4", tmp_path / "stats.json"
    r = run_vidseg("demo", "-o", out, "--seconds", "2", "--no-progress", "--stats", stats, timeout=600)
    assert r.returncode == 0, r.stderr
    assert json.loads(stats.read_text())["frames_out"] == 60
    with av.open(str(out)) as c:
        stream = c.streams.video[0]
        assert (stream.width, stream.height) == (1280, 720)
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 60
    # the overlays sit on the shapes: the output differs from the clip inside every shape
    # much more than on the background
    for i in (0, 30, 59):
        clip_frames = moving_shapes(seconds=2, seed=0)  # the demo's clip (seed 0)
        for _ in range(i):
            next(clip_frames)
        original, truth = next(clip_frames)
        masks, _, _ = truth.instances()
        diff = np.abs(frames[i].astype(int) - original.astype(int)).sum(axis=2)
        background = diff[~masks.any(axis=2)].mean()
        for k in range(masks.shape[2]):
            assert diff[masks[:, :, k]].mean() > background + 20, (i, k)


def test_demo_refuses_to_overwrite(tmp_path):
    out = tmp_path / "demo.mp4"
    out.write_bytes(b"keep me")
    r = run_vidseg("demo", "-o", out, "--seconds", "1", "--no-progress")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "exists" in r.stderr
    assert out.read_bytes() == b"keep me"


def test_demo_refuses_an_existing_stats_file_before_making_the_clip(tmp_path):
    """The file pipeline behind the demo may replace its own outputs; the user's are checked
    first (a previous demo.mp4 given as --stats was replaced by JSON)."""
    (tmp_path / "old.mp4").write_bytes(b"keep me")
    r = run_vidseg("demo", "-o", tmp_path / "new.mp4", "--seconds", "1", "--stats", tmp_path / "old.mp4",
                   "--no-progress")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "exists" in r.stderr, r.stderr
    assert "writing" not in r.stderr  # refused before the clip was made
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.mp4"]
    assert (tmp_path / "old.mp4").read_bytes() == b"keep me"


def test_demo_refuses_missing_weights_before_making_the_clip(tmp_path):
    """The 10 s clip was made first (7-15 s here), then 'weights file not found'."""
    r = run_vidseg("demo", "-o", tmp_path / "d.mp4", "--weights", tmp_path / "nothere.h5", "--no-progress")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [f"vidseg: error: weights file not found: {tmp_path / 'nothere.h5'}"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("seconds", ["nan", "inf", "0.001", "-1"])
def test_demo_length_out_of_range_is_one_line(tmp_path, seconds):
    r = run_vidseg("demo", "-o", tmp_path / "d.mp4", "--seconds", seconds, "--no-progress")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [f"vidseg: error: --seconds must be from 0.1 to 3600, got {seconds}"]
    assert list(tmp_path.iterdir()) == []
