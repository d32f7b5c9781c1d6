"""The `vidseg` entry point (`python -m vidseg`) when the standard streams are closed."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, probe


def run_entry(*args, close: int) -> subprocess.CompletedProcess:
    """`python -m vidseg ARGS` with file descriptor `close` (1: stdout, 2: stderr) closed, as
    `vidseg ... 2>&-` runs it; the other stream is captured."""
    kept = {1: "stderr", 2: "stdout"}[close]
    return subprocess.run([sys.executable, "-m", "vidseg", *map(str, args)], cwd=REPO, timeout=300, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), preexec_fn=lambda: os.close(close),
                          **{kept: subprocess.PIPE})


@pytest.mark.slow
def test_a_run_with_stderr_closed_writes_its_mp4(clip_480, tmp_path):
    """`2>&-`: Python starts with no sys.stderr and the next file opened takes fd 2. The model's
    stage failed ('Bad file descriptor'), and with the progress bar on, runs ended with exit 1
    and no word; the shipped model and the bar now run as usual."""
    out = tmp_path / "out.mp4"
    r = run_entry("file", clip_480, "-o", out, "--stats", tmp_path / "s.json", close=2)
    assert r.returncode == 0, r.stdout
    frames = json.loads((tmp_path / "s.json").read_text())["frames_out"]
    assert int(probe(out)["video"]["nb_read_frames"]) == frames > 0


def test_a_bench_with_stdout_closed_ends_cleanly(tmp_path):
    """`>&-`: the process measuring the stages died on sys.stdout being None, with a traceback."""
    clip = tmp_path / "clip.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25", "-frames:v", "10",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", str(clip)], check=True)
    r = run_entry("bench", clip, "--model", "none", "--json", close=1)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
