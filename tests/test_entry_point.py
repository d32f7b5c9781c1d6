"""The `vidseg` entry point (`python -m vidseg`) when the standard streams are closed, or their
reader leaves (`vidseg ... 2>&1 | head -1`), or the address space is limited (`ulimit -v`)."""
from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys

import pytest

from tests.conftest import REPO, all_gone, probe, session, shm_entries, shm_leaked


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


def run_unread(*args) -> int:
    """`python -m vidseg ARGS 2>&1 | true`: stdout and stderr go to a pipe whose reader has
    left before the command writes; returns the exit code."""
    p = subprocess.Popen([sys.executable, "-m", "vidseg", *map(str, args)], cwd=REPO,
                         env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    p.stdout.close()
    return p.wait(timeout=300)


def test_a_run_whose_reader_left_still_writes_its_outputs(clip_480, tmp_path):
    """The first line a run printed raised BrokenPipeError: exit 1 and no --stats file (and a
    demo wrote nothing at all)."""
    out, stats = tmp_path / "out.mp4", tmp_path / "s.json"
    assert run_unread("file", clip_480, "-o", out, "--model", "none", "--stats", stats) == 0
    frames = json.loads(stats.read_text())["frames_out"]
    assert int(probe(out)["video"]["nb_read_frames"]) == frames == 50


def test_a_bench_or_an_error_whose_reader_left_keeps_its_exit_code(clip_480, tmp_path):
    assert run_unread("bench", clip_480, "--model", "none", "--frames", "10", "--json") == 0
    assert run_unread("file", tmp_path / "missing.mp4", "-o", tmp_path / "out.mp4") == 2
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("model", ["mrcnn", "none"])
@pytest.mark.parametrize("mib", [60, 120, 160, 200])
def test_an_address_space_too_small_to_load_the_libraries_is_one_line(mib, model, clip_480, tmp_path):
    """Under `ulimit -v` of a few hundred MB the command's own imports of NumPy and PyAV failed
    with a traceback ('ImportError: libavcodec...so: failed to map segment from shared object';
    NumPy's forty lines of advice). It is the line a stage out of memory gives, exit 1."""
    shm = shm_entries()
    limit = mib << 20
    run = subprocess.Popen([sys.executable, "-m", "vidseg", "file", clip_480, "-o", tmp_path / "out.mp4", "--model",
                            model, "--no-progress"], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                           preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    _, err = run.communicate(timeout=120)
    assert run.returncode == 1, err
    assert re.fullmatch(rf"vidseg: error: (\w+ stage failed: )?out of memory( loading [^ ]+)?: the address space is "
                        rf"limited to {mib} MiB \(ulimit -v {mib << 10}\); raise the limit, e\.g\. `ulimit -v "
                        rf"unlimited`\n", err), err
    assert os.listdir(tmp_path) == []
    assert all_gone(session(run))
    assert not shm_leaked(shm)
