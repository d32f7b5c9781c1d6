"""Faults: a stage killed, a stage raising, Ctrl-C, the supervisor killed.

Every run must end promptly with a message naming the stage, leave /dev/shm as it was, leave
no process behind, and leave no half-written output: only an MP4 its sink finalised (after
a Ctrl-C, or when another stage failed), which then plays and is announced as partial.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import re
import resource
import shlex
import signal
import subprocess
import sys
import time

import av
import psutil
import pytest

from tests.conftest import REPO, all_gone, make_clip, probe, run_vidseg, session, shm_entries, shm_leaked
from tests.fake_models import limit_address_space
from vidseg import stages

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


def start(*args, tmpdir=None, limits=None) -> subprocess.Popen:
    """The command in a process group of its own (as a shell job is), led by the command;
    its temporary files in `tmpdir` if given; limits: {resource.RLIMIT_*: n}, as `ulimit` sets."""
    env = dict(os.environ, PYTHONPATH=str(REPO), **({"TMPDIR": str(tmpdir)} if tmpdir else {}))

    def set_limits():
        for kind, n in (limits or {}).items():
            resource.setrlimit(kind, (n, n))

    return subprocess.Popen([sys.executable, "-c", "from vidseg.cli import main; main()", *map(str, args)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=set_limits)


def wait_for_stages(pid: int, stages: tuple, timeout: float = 60.0, settle: float = 1.5) -> dict:
    """The stage processes of run `pid` by name, once all are up and, `settle` s later, the
    run is under way (model built, frames flowing)."""
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
            time.sleep(settle)
            return procs
        time.sleep(0.1)
    raise AssertionError(f"stages did not start: {sorted(procs)}")


@pytest.mark.parametrize("path, stage", [(path, stage) for path, (_, stages) in PATHS.items() for stage in stages])
def test_sigkill_a_stage_stops_the_run(path, stage, clip_for, tmp_path):
    """A stage killed (the OOM killer's way) stops the run within seconds, in one line naming
    it, and leaves nothing in /dev/shm, beside the output or in the temporary folder (the
    infer stage's own folder stayed there)."""
    shm = shm_entries()
    options, stages = PATHS[path]
    (tmp_path / "tmp").mkdir()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    run = start("file", clip_for[path], "-o", out_dir / "out.mp4", *options, "--no-progress", tmpdir=tmp_path / "tmp")
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
    assert os.listdir(tmp_path / "tmp") == []
    left = os.listdir(out_dir)  # never a temp file
    if stage == "vidseg-sink0":
        assert left == []
    elif path == "model":  # frames reached the sink before the kill: it finalised them
        assert left == ["out.mp4"]
        assert f"{out_dir / 'out.mp4'} keeps the" in err and "(partial)" in err
        assert int(probe(out_dir / "out.mp4")["video"]["nb_read_frames"]) >= 1
    else:  # veryslow's lookahead can outlast the 2 s the sink gets to finalise: then nothing
        assert left in ([], ["out.mp4"])


def test_sigkill_the_stage_server_stops_the_run(clip_for, tmp_path):
    """The stage server killed mid-run (the OOM killer, `kill -9`): its stages live on,
    reparented, but read as ended with exit code 255. The line blamed a stage ('infer stage
    failed: exited with code 255'), the stages were left to end with the command, and the MP4
    they were writing was lost. They are stopped as after a stage's failure: the sink
    finalises what it has."""
    shm = shm_entries()
    options, stages = PATHS["model"]
    out_dir, tmpdir = tmp_path / "out", tmp_path / "tmp"
    out_dir.mkdir()
    tmpdir.mkdir()
    run = start("file", clip_for["model"], "-o", out_dir / "out.mp4", *options, "--no-progress", tmpdir=tmpdir)
    procs = wait_for_stages(run.pid, stages)
    helpers = psutil.Process(run.pid).children(recursive=True)
    server = procs["vidseg-infer"].parent()
    server.kill()
    t0 = time.monotonic()
    _, err = run.communicate(timeout=30)
    assert time.monotonic() - t0 < 10
    assert run.returncode == 1, err
    assert err.startswith(f"vidseg: error: the stage server (pid {server.pid}) was killed by SIGKILL; "
                          f"{out_dir / 'out.mp4'} keeps the "), err
    assert err.endswith(" frames encoded before it (partial)\n") and err.count("\n") == 1, err
    assert int(probe(out_dir / "out.mp4")["video"]["nb_read_frames"]) >= 1
    assert os.listdir(out_dir) == ["out.mp4"]
    assert all_gone(helpers)
    assert not shm_leaked(shm)
    assert os.listdir(tmpdir) == []


# `vidseg ARGS` with the stage server killed (SIGKILL) as the KILL_AT-th stage is started:
# "after N", once N stages are; "reading N", while the N-th waits for its pid from the server
KILL_SERVER_WHILE_STARTING = """
import os, signal
from multiprocessing import forkserver
from vidseg import supervisor
when, n = os.environ["KILL_AT"].split()
starts, n = [0], int(n)

def kill_server():
    pid = forkserver._forkserver._forkserver_pid
    os.kill(pid, signal.SIGKILL)
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)

def read_signed(fd, read=forkserver.read_signed):  # once
    forkserver.read_signed = read
    kill_server()
    return read(fd)

def start(self, *args, start=supervisor.Supervisor.start, **kwargs):
    starts[0] += 1
    if when == "reading" and starts[0] == n:
        forkserver.read_signed = read_signed
    start(self, *args, **kwargs)
    if when == "after" and starts[0] == n:
        kill_server()

supervisor.Supervisor.start = start
from vidseg.cli import main
main()
"""


@pytest.mark.parametrize("kill_at", ["after 1", "after 3", "reading 2"])
def test_the_stage_server_killed_while_stages_start_stops_the_run(kill_at, long_clip, tmp_path):
    """The stage server killed while the supervisor starts the stages: multiprocessing started
    another server (without this one's set-up) and the run blamed the infer stage ('exited with
    code 255'), its stages left running after the command; killed as a stage waited for its pid,
    the command exited 130 with no word (click's Abort, for the EOFError)."""
    shm = shm_entries()
    out_dir, tmpdir = tmp_path / "out", tmp_path / "tmp"
    out_dir.mkdir()
    tmpdir.mkdir()
    run = subprocess.Popen([sys.executable, "-c", KILL_SERVER_WHILE_STARTING, "file", long_clip, "-o",
                            out_dir / "out.mp4", "--model", SLOW, "--no-progress"], cwd=REPO, text=True,
                           env=dict(os.environ, PYTHONPATH=str(REPO), TMPDIR=str(tmpdir), KILL_AT=kill_at),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 1, err
    assert re.fullmatch(r"vidseg: error: the stage server \(pid \d+\) was killed by SIGKILL\n", err), err
    assert all_gone(session(run))
    assert not shm_leaked(shm)
    assert os.listdir(out_dir) == [] and os.listdir(tmpdir) == []


# sitecustomize.py for the stage server alone (it has VIDSEG_STAGE_SERVER in its environment):
# its first import of the MP4 sink runs out of memory, as under `ulimit -v` of ~100 or ~205 MB
SERVER_SHORT_OF_MEMORY = """
import os
import sys


class ShortOfMemory:
    def find_spec(self, name, path=None, target=None):
        if name == "vidseg.sinks.mp4":
            sys.meta_path.remove(self)
            raise MemoryError


if os.environ.get("VIDSEG_STAGE_SERVER"):
    sys.meta_path.insert(0, ShortOfMemory())
"""


def test_a_stage_server_out_of_memory_preloading_the_stages_still_serves_them(clip_480, tmp_path):
    """A MemoryError as the stage server preloaded the stage modules ended it with a traceback
    (multiprocessing's preload lets only an ImportError pass); the stages import what it could
    not after the fork."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SERVER_SHORT_OF_MEMORY)
    r = subprocess.run([sys.executable, "-c", "from vidseg.cli import main; main()", "file", clip_480, "-o",
                        tmp_path / "out.mp4", "--model", "tests.fake_models:BlobModel", "--no-progress"], cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=f"{tmp_path / 'site'}:{REPO}"), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert int(probe(tmp_path / "out.mp4")["video"]["nb_read_frames"]) == 50


def test_a_stage_killed_by_sigbus_points_at_shared_memory(clip_for, tmp_path):
    """A stage writing to a ring whose /dev/shm filled up after the check at the start (another
    run, another program) gets SIGBUS: the line said only 'killed by SIGBUS'."""
    options, stages = PATHS["model"]
    run = start("file", clip_for["model"], "-o", tmp_path / "out.mp4", *options, "--no-progress")
    procs = wait_for_stages(run.pid, stages)
    procs["vidseg-capture0"].send_signal(signal.SIGBUS)
    _, err = run.communicate(timeout=30)
    assert run.returncode == 1, err
    assert err.startswith("vidseg: error: capture stage failed: killed by SIGBUS (/dev/shm, which holds the frame "
                          "rings, may have filled up: free space there or enlarge it)"), err


def test_stage_exception_names_the_stage(long_clip, tmp_path):
    shm = shm_entries()
    r = run_vidseg("file", long_clip, "-o", tmp_path / "out.mp4", "--model", "tests.fake_models:FailingModel",
                   "--no-progress")
    assert r.returncode == 1
    assert r.stderr.strip() == "vidseg: error: infer stage failed: RuntimeError: test model failed on purpose"
    assert not shm_leaked(shm)
    assert os.listdir(tmp_path) == []


def test_a_stage_error_over_several_lines_keeps_them_all_in_its_one_line(long_clip, tmp_path):
    """A plug-in's or a library's error over several lines was cut at its first: 'cannot run the
    model:', without what was wrong."""
    r = run_vidseg("file", long_clip, "-o", tmp_path / "out.mp4", "--model", "tests.fake_models:MultiLineFailingModel",
                   "--no-progress")
    assert r.returncode == 1
    assert r.stderr == ("vidseg: error: infer stage failed: ValueError: cannot run the model: / expected 4 input "
                        "channels, / got 3 (an RGB frame)\n"), r.stderr
    assert os.listdir(tmp_path) == []


def test_a_huge_stage_error_is_cut_with_an_ellipsis():
    line = stages._one_line(RuntimeError("x" * 5000 + "\n" + "y" * 5000))
    assert line == "RuntimeError: " + "x" * (stages.MESSAGE_MAX - 3) + "..."
    assert stages._one_line(RuntimeError("a\n" * 3)) == "RuntimeError: a / a / a"


@pytest.mark.parametrize("command", ["file", "bench"])
def test_too_few_file_descriptors_is_one_line(command, long_clip, tmp_path):
    """`ulimit -n 30` with a model: the stage server died receiving a stage's descriptors, with
    an EOFError traceback, before the line saying the limit was too low."""
    shm = shm_entries()
    args = ("-o", tmp_path / "out.mp4") if command == "file" else ("--frames", "5")
    run = start(command, long_clip, *args, "--model", "tests.fake_models:BlobModel", tmpdir=tmp_path,
                limits={resource.RLIMIT_NOFILE: 30})
    _, err = run.communicate(timeout=120)
    assert run.returncode == 2, err
    assert re.fullmatch(r"vidseg: error: too few file descriptors \(ulimit -n 30\): vidseg needs about \d+ for this "
                        r"run; raise the limit, e.g. `ulimit -n 1024`\n", err), err
    assert not shm_leaked(shm)
    assert os.listdir(tmp_path) == []
    assert all_gone(session(run))


def run_with_descriptors(limit: int, *args, checked: bool = True) -> subprocess.CompletedProcess:
    """`vidseg ARGS` under `ulimit -n limit`; checked=False: without the check of the limit
    (errors.check_descriptors), to see where the run itself fails."""
    unchecked = "import vidseg.pipelines.run as r; r.check_descriptors = lambda *a: None; "
    return subprocess.run([sys.executable, "-c", f"{'' if checked else unchecked}from vidseg.cli import main; main()",
                           *map(str, args)], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), text=True,
                          capture_output=True, timeout=120,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)))


@pytest.mark.parametrize("model", ["none", "tests.fake_models:BlobModel"])
def test_the_file_descriptors_asked_for_are_the_runs_real_minimum(model, clip_480, tmp_path):
    """The estimate (20 + 5 per stage process) refused `--model none`, capture feeding the sink
    directly, at `ulimit -n` 24 to 29, where it runs. At the number the line asks for the run
    works; one fewer, it is refused in one line, exit 2, and would indeed fail without the check."""
    args = ("file", clip_480, "-o", tmp_path / "out.mp4", "-y", "--model", model, "--no-progress")
    need = int(re.search(r"needs about (\d+) ", run_with_descriptors(16, *args).stderr)[1])
    r = run_with_descriptors(need, *args)
    assert r.returncode == 0, (need, r.stderr)
    r = run_with_descriptors(need - 1, *args)
    assert r.returncode == 2 and r.stderr == (f"vidseg: error: too few file descriptors (ulimit -n {need - 1}): vidseg "
                                              f"needs about {need} for this run; raise the limit, e.g. `ulimit -n 1024`\n")
    assert run_with_descriptors(need - 1, *args, checked=False).returncode != 0


@pytest.mark.parametrize("command, who", [("file", "infer stage"), ("bench", "the process measuring the stages")])
def test_running_out_of_memory_says_so(command, who, long_clip, tmp_path):
    """A stage, or bench's measuring process, that runs out of address space loading a library
    (TensorFlow under `ulimit -v 1500000`): the model was blamed ('cannot load model ...:
    ImportError: ... failed to map segment', exit 2), or bench printed a traceback."""
    shm = shm_entries()
    args = ("-o", tmp_path / "out.mp4", "--no-progress") if command == "file" else ("--frames", "5")
    run = start(command, long_clip, *args, "--model", "tests.fake_models:short_of_memory")
    _, err = run.communicate(timeout=120)
    assert run.returncode == 1, err
    assert err.startswith(f"vidseg: error: {who} failed: out of memory loading libscipy_openblas"), err
    assert err.endswith("raise the limit, e.g. `ulimit -v unlimited`\n") and err.count("\n") == 1, err
    assert not shm_leaked(shm)
    assert os.listdir(tmp_path) == []
    assert all_gone(session(run))


def _loop_short_of_memory(meter) -> None:
    """A stage loop that runs out of address space."""
    limit_address_space()
    bytearray(1 << 30)


def test_a_stage_out_of_memory_still_reports():
    """With no address space left, a stage's report of its failure needs the control queue's
    thread, which could then not start ("can't start new thread": a traceback, and the run's
    line said only 'render stage failed: exited with code 1', as under `ulimit -v 500000`)."""
    ctx = multiprocessing.get_context("spawn")  # a fork of pytest may reuse a dead thread's stack
    ctrl = ctx.Queue()
    stage = ctx.Process(target=stages.run_stage, args=("render[0]", _loop_short_of_memory, (), ctrl))
    stage.start()
    stage.join(10)
    if stage.exitcode is None:
        stage.kill()
    assert stage.exitcode == 1
    messages = [ctrl.get(timeout=5)]
    while not ctrl.empty():
        messages.append(ctrl.get(timeout=5))
    kind, name, line, code = messages[-1]
    assert (kind, name, code) == ("error", "render[0]", 1)
    assert line.startswith("out of memory") and "ulimit -v" in line, line


def _stage_with_no_room_for_a_thread(ctrl) -> None:
    """A stage process that starts with its address space used up (as under `ulimit -v 220000`)."""
    limit_address_space()
    stages.run_stage("sink[0]", lambda meter: None, (), ctrl)


def test_a_stage_with_no_room_for_a_thread_still_reports():
    """A stage that could not start even its first thread (the control queue's, or the one that
    watches its parent) showed a traceback and the run said only 'sink stage failed: exited with
    code 1'."""
    ctx = multiprocessing.get_context("spawn")
    ctrl = ctx.Queue()
    stage = ctx.Process(target=_stage_with_no_room_for_a_thread, args=(ctrl,), name="stage")
    stage.start()
    stage.join(10)
    if stage.exitcode is None:
        stage.kill()
    assert stage.exitcode == 1
    kind, name, line, code = ctrl.get(timeout=5)
    assert (kind, name, code) == ("error", "sink[0]", 1)
    assert line.startswith("out of memory: the address space is limited to ") and "ulimit -v" in line, line


def test_a_stage_failing_midway_keeps_the_frames_encoded_before_it(long_clip, tmp_path):
    """The MP4, the detections and the stats of what was done are kept (the detections were
    removed and no stats written: with -y an earlier run's stood beside the new MP4)."""
    shm = shm_entries()
    out, found, stats_path = tmp_path / "out.mp4", tmp_path / "d.jsonl", tmp_path / "s.json"
    found.write_text("an earlier run's\n")
    r = run_vidseg("file", long_clip, "-o", out, "--model", "tests.fake_models:failing_midway", "--no-progress",
                   "--detections", found, "--stats", stats_path, "-y")
    assert r.returncode == 1
    video, audio = probe(out)["video"], probe(out)["audio"]
    frames = int(video["nb_read_frames"])
    assert 1 <= frames <= 9  # one frame per batch; the 10th batch raised
    lines = found.read_text().splitlines()
    assert [json.loads(line)["frame"] for line in lines] == list(range(len(lines))) and len(lines) >= frames
    assert r.stderr.strip() == ("vidseg: error: infer stage failed: RuntimeError: test model failed on purpose; "
                                f"{out} keeps the {frames} frames encoded before it (partial); {found} keeps the "
                                f"detections of the {len(lines)} frames before it (partial)")
    assert abs(float(audio["duration"]) - float(video["duration"])) < 0.1  # audio stops with the video
    stats = json.loads(stats_path.read_text())
    assert stats["partial"] and stats["frames_out"] == frames
    assert stats["frames_in"] == stats["frames_out"] + sum(stats["dropped"].values())
    assert not shm_leaked(shm)
    assert sorted(os.listdir(tmp_path)) == ["d.jsonl", "out.mp4", "s.json"]


@pytest.mark.parametrize("path, stop, group, code", [
    (path, signal.SIGINT, group, 130) for path in PATHS for group in (False, True)  # group: a terminal's Ctrl-C
] + [(path, signal.SIGTERM, group, 143) for path in PATHS for group in (False, True)])  # kill; timeout, systemd
def test_stop_signal_drains_and_keeps_a_playable_partial_mp4(path, stop, group, code, clip_for, tmp_path):
    shm = shm_entries()
    options, stages = PATHS[path]
    run = start("file", clip_for[path], "-o", tmp_path / "out.mp4", *options, "--no-progress",
                "--stats", tmp_path / "stats.json")
    procs = wait_for_stages(run.pid, stages)
    if group:
        os.killpg(run.pid, stop)
    else:
        run.send_signal(stop)
    _, err = run.communicate(timeout=30)
    assert run.returncode == code, err
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


def test_timeout_stops_the_run_once_and_it_drains(clip_for, tmp_path):
    """`timeout` sends SIGTERM to the command and then to its whole process group: one stop,
    drained like a Ctrl-C (not the "second signal" that stops at once)."""
    shm = shm_entries()
    options, _ = PATHS["transcode"]
    out, stats_path = tmp_path / "out.mp4", tmp_path / "stats.json"
    r = subprocess.run(["timeout", "4", sys.executable, "-c", "from vidseg.cli import main; main()", "file",
                        clip_for["transcode"], "-o", out, *options, "--no-progress", "--stats", stats_path],
                       cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 124, r.stderr  # timeout's own code: the command ended after the signal
    stats = json.loads(stats_path.read_text())
    assert stats["partial"] is True
    assert 0 < stats["frames_out"] == stats["frames_in"] - sum(stats["dropped"].values())
    assert int(probe(out)["video"]["nb_read_frames"]) == stats["frames_out"]
    assert not shm_leaked(shm)
    assert sorted(os.listdir(tmp_path)) == ["out.mp4", "stats.json"]


@pytest.mark.parametrize("stop, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_while_the_model_loads_ends_at_once_and_writes_nothing(long_clip, tmp_path, stop, code):
    """The model takes 30 s to load: Ctrl-C (or docker stop's SIGTERM) ends the run at once, not
    when the model is ready (docker stop kills after 10 s), and with no frame through, no
    MP4 and no detections file (an empty one was put in place, over an existing one with -y)."""
    (tmp_path / "d.jsonl").write_text("earlier detections\n")
    run = start("file", long_clip, "-o", tmp_path / "out.mp4", "--detections", tmp_path / "d.jsonl", "-y",
                "--model", "tests.live.helpers:very_slow_loading_model", "--no-progress")
    procs = wait_for_stages(run.pid, PATHS["model"][1], timeout=60)
    stopped = time.monotonic()
    run.send_signal(stop)
    _, err = run.communicate(timeout=60)
    assert run.returncode == code, err
    assert time.monotonic() - stopped < 10
    assert all_gone(procs.values())
    assert f"so {tmp_path / 'out.mp4'} and {tmp_path / 'd.jsonl'} were not written" in err
    assert os.listdir(tmp_path) == ["d.jsonl"] and (tmp_path / "d.jsonl").read_text() == "earlier detections\n"


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


def test_second_ctrl_c_keeps_an_mp4_finalised_in_the_grace(long_clip, tmp_path):
    """A sink that finalises within its 2 s (a small clip at veryfast does) reports after the
    run stopped waiting: its MP4 is kept, and the summary and stats count its frames."""
    options, stages = PATHS["model"]
    run = start("file", long_clip, "-o", tmp_path / "out.mp4", *options, "--stats", tmp_path / "s.json",
                "--no-progress")
    wait_for_stages(run.pid, stages)
    run.send_signal(signal.SIGINT)
    time.sleep(0.3)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=30)
    assert run.returncode == 130, err
    frames = int(probe(tmp_path / "out.mp4")["video"]["nb_read_frames"])
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["frames_out"] == frames >= 1, err
    assert stats["frames_in"] == stats["frames_out"] + sum(stats["dropped"].values())
    assert "not written" not in err and sorted(os.listdir(tmp_path)) == ["out.mp4", "s.json"]


def test_ctrl_c_pressed_on_and_on_changes_nothing_after_the_second(clip_for, tmp_path):
    """Ctrl-C after Ctrl-C, while the sink finalises in its grace (x264 medium flushing its
    lookahead): the third one ended the command at once, exit 130 with no word, the MP4 it was
    finishing removed and the stages' clean-up cut short."""
    shm = shm_entries()
    run = start("file", clip_for["transcode"], "-o", tmp_path / "out.mp4", "--model", "none", "--preset", "medium",
                "--no-progress")
    procs = wait_for_stages(run.pid, PATHS["transcode"][1])
    time.sleep(1.0)
    for _ in range(8):
        run.send_signal(signal.SIGINT)
        time.sleep(0.25)  # more than REPEAT_S: each one a press of its own
    _, err = run.communicate(timeout=30)
    assert run.returncode == 130, err
    assert "frames: in" in err, err  # the summary
    if os.listdir(tmp_path):
        assert os.listdir(tmp_path) == ["out.mp4"] and int(probe(tmp_path / "out.mp4")["video"]["nb_read_frames"]) >= 1
    else:
        assert f"so {tmp_path / 'out.mp4'} was not written" in err
    assert all_gone(procs.values())
    assert not shm_leaked(shm)


def test_stop_signals_after_the_run_ended_change_nothing(clips, tmp_path):
    """Ctrl-C, then Ctrl-C again and again until the command has exited, over its whole end (a
    user pressing it on and on; `timeout` signals the command, then its group): one that came
    after the supervisor had put the handlers back raised KeyboardInterrupt in the middle of
    putting the MP4 in place, which left its hidden temporary file beside the output."""
    clip = make_clip(tmp_path / "in.mp4", width=480, height=360, frames=FRAMES, noise=20)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    shm = shm_entries()
    run = start("file", clip, "-o", out_dir / "out.mp4", "--model", "none", "--no-progress")
    procs = wait_for_stages(run.pid, PATHS["transcode"][1], settle=0.0)  # the run takes ~1.5 s
    while run.poll() is None and sum(f.stat().st_size for f in out_dir.iterdir()) < 100_000:
        time.sleep(0.01)  # frames encoded: a stop now keeps them
    while run.poll() is None:
        run.send_signal(signal.SIGINT)
        time.sleep(0.01)  # 20 within REPEAT_S count as one; after it, the second stops the run now
    _, err = run.communicate(timeout=30)
    assert run.returncode == 130, err
    assert "frames: in" in err and "Traceback" not in err, err  # the summary was printed
    assert os.listdir(out_dir) == ["out.mp4"], err
    with av.open(str(out_dir / "out.mp4")) as mp4:
        assert sum(1 for _ in mp4.decode(video=0)) >= 1
    assert all_gone(procs.values())
    assert not shm_leaked(shm)


@pytest.mark.parametrize("path", PATHS)
def test_closing_the_terminal_keeps_a_playable_partial_mp4(path, clip_for, tmp_path):
    """The terminal closing (a terminal window shut, an ssh session dropped) hangs up the run's
    process group: every process died at once, the MP4 was lost, and the ring, its semaphores
    and a hidden .part file were left behind. SIGHUP now drains like SIGTERM, and what is still
    printed goes nowhere instead of failing on the terminal that is gone."""
    shm = shm_entries()
    options, stages = PATHS[path]
    out, stats = tmp_path / "out.mp4", tmp_path / "s.json"
    command = shlex.join(map(str, [sys.executable, "-c", "from vidseg.cli import main; main()", "file",
                                   clip_for[path], "-o", out, *options, "--stats", stats]))
    terminal = subprocess.Popen(["script", "-qefc", command, "/dev/null"], cwd=REPO, start_new_session=True,
                                env=dict(os.environ, PYTHONPATH=str(REPO)), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_stages(terminal.pid, stages)
    everyone = psutil.Process(terminal.pid).children(recursive=True)
    terminal.kill()  # the terminal's end goes: the kernel hangs up the session
    terminal.wait()
    assert all_gone(everyone, timeout=20)
    assert sorted(os.listdir(tmp_path)) == ["out.mp4", "s.json"]
    frames = int(probe(out)["video"]["nb_read_frames"])
    report = json.loads(stats.read_text())
    assert report["partial"] and report["frames_out"] == frames >= 1
    assert not shm_leaked(shm)


@pytest.mark.parametrize("path", PATHS)
def test_supervisor_killed_leaves_no_orphans(path, clip_for, tmp_path):
    shm = shm_entries()
    options, stages = PATHS[path]
    detections = ("--detections", tmp_path / "det.jsonl") if path == "model" else ()
    out_dir, tmpdir = tmp_path / "out", tmp_path / "tmp"
    out_dir.mkdir()
    tmpdir.mkdir()
    run = start("file", clip_for[path], "-o", out_dir / "out.mp4", *options, *detections, "--no-progress",
                tmpdir=tmpdir)
    wait_for_stages(run.pid, stages)
    helpers = psutil.Process(run.pid).children(recursive=True)
    run.kill()
    run.communicate(timeout=10)
    assert all_gone(helpers, timeout=10), [p.name() for p in helpers if p.is_running()]
    assert not shm_leaked(shm, timeout=10)  # the resource tracker unlinks what the supervisor held
    assert os.listdir(out_dir) == []  # sink and render removed the temporary files nobody will finalise
    # The temporary folders of the stage server (its socket) and of the infer stage outlive
    # the run; the next run (any that makes one) removes them, once they are older than a
    # just-made folder can be.
    left = sorted(os.listdir(tmpdir))
    assert [n.rsplit("-", 1)[0] for n in left] == ([] if path == "transcode" else ["vidseg-mp", "vidseg-stage"])
    for name in left:
        os.utime(tmpdir / name, (time.time() - 60,) * 2)
    bench = start("bench", clip_for["model"], "--model", "none", "--frames", "5", "--json", tmpdir=tmpdir)
    assert bench.wait(timeout=120) == 0, bench.communicate()[1]
    assert os.listdir(tmpdir) == []
