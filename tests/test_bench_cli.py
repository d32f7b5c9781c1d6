"""`vidseg bench` on what a user gives it: clips without a frame count, options that do not apply."""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import run_vidseg


def test_bench_uses_the_whole_clip_when_its_container_gives_no_frame_count(tmp_path):
    """Matroska holds no frame count: bench measured 300 frames of a 330-frame clip, where
    its help says the default is the whole clip."""
    clip = tmp_path / "clip.mkv"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=30", "-frames:v", "330",
                    "-c:v", "libx264", "-preset", "ultrafast", str(clip)], check=True)
    r = run_vidseg("bench", clip, "--model", "none", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["frames"] == 330
    # --model none runs capture into the sink: infer and render have no figures (they had
    # a no-op's hundred thousand fps), and the CPU limit is of the two stages that run
    assert report["stages"]["infer"] is None and report["stages"]["render"] is None
    assert report["slowest"] in ("decode", "encode")
    cpu = report["stages_cpu_ms"]
    limit = 1000 * report["cpus"] / (cpu["decode"] + cpu["encode"])
    assert report["cpu_limit_fps"] == pytest.approx(limit, rel=0.05)  # the CPU figures are rounded to 0.01 ms


def test_bench_table_says_which_stages_did_not_run(tmp_path):
    clip = tmp_path / "clip.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=30", "-frames:v", "20",
                    "-c:v", "libx264", "-preset", "ultrafast", str(clip)], check=True)
    r = run_vidseg("bench", clip, "--model", "none", "--batch", 8)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "vidseg bench clip.mp4: 160x120, 20 frames, model none, preset veryfast"  # no batch: no model
    assert lines[3].split() == ["infer", "alone", "-", "-", "(not", "run", "with", "--model", "none)"]
    assert lines[4].split()[:4] == ["render", "alone", "-", "-"]


def test_bench_of_a_stream_refuses_the_options_it_cannot_use():
    """--preset and --profile were ignored without a word for an rtsp:// input (nothing is
    encoded, and the model is timed as a whole); refused before connecting (nothing listens on 9)."""
    for option in (["--preset", "fast"], ["--profile"]):
        r = run_vidseg("bench", "rtsp://127.0.0.1:9/live", "--model", "none", *option, timeout=60)
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith(f"vidseg: error: {option[0]} is for files") and r.stderr.count("\n") == 1
