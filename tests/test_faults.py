"""Faults: a stage killed, a stage raising, Ctrl-C, the supervisor killed.

Every run must end promptly with a message naming the stage, leave /dev/shm as it was, leave
no process behind, and leave no half-written output: only an MP4 its sink finalised (after
a Ctrl-C, or when another stage failed), which then plays and is announced as partial.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.conftest import REPO, probe, run_vidseg, shm_entries, shm_leaked

SLOW = "tests.fake_models:SlowBlobModel"
# The two process graphs: with a model (stages forked from the stage server), and the
# transcode path (--model none: capture and sink forked from the main process), slowed down
# by a slow preset on a noisy clip so that it is still running when the test strikes.
PATHS = {
    "model": (("--model", SLOW), ("vidseg-capture0", "vidseg-infer", "vidseg-render0", "vidseg-sink0")),
    "transcode": (("--model", "none", "--preset", "veryslow"), ("vidseg-capture0", "vidseg-sink0")),
}
FRAMES = 250


@pytest.fixture(scope="module")
def long_clip(clips):
    return clips("long.mp4", width=320, height=240, frames=FRAMES, fps=25)


@pytest.fixture(scope="module")
def clip_for(clips, long_clip):
    """The clip each path runs on. The transcode path's is grainy: x264 veryslow encodes the
    flat test scene at ~180 fps on a fast machine, over before the test strikes; with grain
    ~9 fps here (27 s), and a Ctrl-C still drains in ~8 s."""
    big = clips("noisy360.mp4", width=480, height=360, frames=FRAMES, fps=25, noise=20)
    return {"model": long_clip, "transcode": big}


def start(*args) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-c", "from vidseg.cli import main; main()", *map(str, args)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_stages(pid: int, stages: tuple, timeout: float = 60.0) -> dict:
    """The stage processes of run `pid` by name, once all are up and the run is under way."""
    parent = psutil.Process(pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs = {}
        for child in parent.children(recursive=True):
            try:
                procs[child.name()] = child
            except psutil.NoSuchProcess:
                pass
        if all(s in procs for s in stages):
            time.sleep(1.5)  # model built, frames flowing
            return procs
        time.sleep(0.1)
    raise AssertionError(f"stages did not start: {sorted(procs)}")


def all_gone(procs, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in procs):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("path, stage", [(path, stage) for path, (_, stages) in PATHS.items() for stage in stages])
def test_sigkill_a_stage_stops_the_run(path, stage, clip_for, tmp_path):
    shm = shm_entries()
    options, stages = PATHS[path]
    run = start("file", clip_for[path], "-o", tmp_path / "out.mp4", *options, "--no-progress")
    procs = wait_for_stages(run.pid, stages)
    helpers = psutil.Process(run.pid).children(recursive=True)  # stages, their server, the resource tracker
    procs[stage].kill()
    t0 = time.monotonic()
    _, err = run.communicate(timeout=30)
    assert time.monotonic() - t0 < 10
    assert run.returncode not in (0, None)
    kind = stage[len("vidseg-"):].rstrip("0")
    assert f"{kind} stage failed" in err and "SIGKILL" in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert all_gone(helpers)
    assert not shm_leaked(shm)
    left = os.listdir(tmp_path)  # never a temp file
    if stage == "vidseg-sink0":
        assert left == []
    elif path == "model":  # frames reached the sink before the kill: it finalised them
        assert left == ["out.mp4"]
        assert f"{tmp_path / 'out.mp4'} keeps the" in err and "(partial)" in err
        assert int(probe(tmp_path / "out.mp4")["video"]["nb_read_frames"]) >= 1
    else:  # veryslow's lookahead can outlast the 2 s the sink gets to finalise: then nothing
        assert left in ([], ["out.mp4"])


def test_stage_exception_names_the_stage(long_clip, tmp_path):
    shm = shm_entries()
    r = run_vidseg("file", long_clip, "-o", tmp_path / "out.mp4", "--model", "tests.fake_models:FailingModel",
                   "--no-progress")
    assert r.returncode == 1
    assert r.stderr.strip() == "vidseg: error: infer stage failed: RuntimeError: test model failed on purpose"
    assert not shm_leaked(shm)
    assert os.listdir(tmp_path) == []


def test_a_stage_failing_midway_keeps_the_frames_encoded_before_it(long_clip, tmp_path):
    shm = shm_entries()
    out = tmp_path / "out.mp4"
    r = run_vidseg("file", long_clip, "-o", out, "--model", "tests.fake_models:failing_midway", "--no-progress")
    assert r.returncode == 1
    video, audio = probe(out)["video"], probe(out)["audio"]
    frames = int(video["nb_read_frames"])
    assert 1 <= frames <= 9  # one frame per batch; the 10th batch raised
    assert r.stderr.strip() == ("vidseg: error: infer stage failed: RuntimeError: test model failed on purpose; "
                                f"{out} keeps the {frames} frames encoded before it (partial)")
    assert abs(float(audio["duration"]) - float(video["duration"])) < 0.1  # audio stops with the video
    assert not shm_leaked(shm)
    assert os.listdir(tmp_path) == ["out.mp4"]


@pytest.mark.parametrize("path", PATHS)
def test_sigint_drains_and_keeps_a_playable_partial_mp4(path, clip_for, tmp_path):
    shm = shm_entries()
    options, stages = PATHS[path]
    run = start("file", clip_for[path], "-o", tmp_path / "out.mp4", *options, "--no-progress",
                "--stats", tmp_path / "stats.json")
    procs = wait_for_stages(run.pid, stages)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=30)
    assert run.returncode == 130, err
    assert "partial" in err
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["partial"] is True
    assert stats["frames_in"] == stats["frames_out"] + sum(stats["dropped"].values())
    out = probe(tmp_path / "out.mp4")
    assert 0 < int(out["video"]["nb_read_frames"]) == stats["frames_out"] < FRAMES
    assert out["audio"] is not None
    # audio ends with the video (within a frame or one audio packet)
    assert abs(float(out["audio"]["duration"]) - float(out["video"]["duration"])) < 0.1
    assert all_gone(procs.values())
    assert not shm_leaked(shm)
    assert sorted(os.listdir(tmp_path)) == ["out.mp4", "stats.json"]


def test_second_ctrl_c_never_leaves_a_broken_mp4(clip_for, tmp_path):
    """The second Ctrl-C stops the run at once: the sink gets 2 s to finalise, which veryslow's
    lookahead usually outlasts. Whatever the timing, an MP4 left in place plays."""
    shm = shm_entries()
    options, stages = PATHS["transcode"]
    run = start("file", clip_for["transcode"], "-o", tmp_path / "out.mp4", *options, "--no-progress")
    procs = wait_for_stages(run.pid, stages)
    run.send_signal(signal.SIGINT)
    time.sleep(0.3)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=30)
    assert run.returncode == 130, err
    left = os.listdir(tmp_path)
    if left:
        assert left == ["out.mp4"]
        assert int(probe(tmp_path / "out.mp4")["video"]["nb_read_frames"]) >= 1
    else:
        assert f"so {tmp_path / 'out.mp4'} was not written" in err and "(partial)" not in err
    assert all_gone(procs.values())
    assert not shm_leaked(shm)


@pytest.mark.parametrize("path", PATHS)
def test_supervisor_killed_leaves_no_orphans(path, clip_for, tmp_path):
    shm = shm_entries()
    options, stages = PATHS[path]
    run = start("file", clip_for[path], "-o", tmp_path / "out.mp4", *options, "--no-progress")
    wait_for_stages(run.pid, stages)
    helpers = psutil.Process(run.pid).children(recursive=True)
    run.kill()
    run.communicate(timeout=10)
    assert all_gone(helpers, timeout=10), [p.name() for p in helpers if p.is_running()]
    assert not shm_leaked(shm, timeout=10)  # the resource tracker unlinks what the supervisor held
