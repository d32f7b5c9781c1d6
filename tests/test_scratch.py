"""A run's temporary folders: removed with the run, or by the next run once their run is dead."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.conftest import REPO
from vidseg import scratch

HOLD = """
import sys, time
from vidseg.scratch import make_scratch_dir
print(make_scratch_dir("test"), flush=True)
time.sleep(60)
"""


def age(path, seconds: float = 60.0) -> None:
    os.utime(path, (time.time() - seconds,) * 2)


def test_a_folder_is_removed_once_the_process_holding_it_is_dead(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(scratch.tempfile, "tempdir", None)
    holder = subprocess.Popen([sys.executable, "-c", HOLD], cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        held = holder.stdout.readline().strip()
        assert os.path.dirname(held) == str(tmp_path) and os.path.basename(held).startswith("vidseg-test-")
        open(os.path.join(held, "clip.mp4"), "w").close()
        age(held)
        assert scratch.reap_stale_scratch_dirs() == [] and os.path.isdir(held)  # its run is alive
    finally:
        holder.kill()  # as SIGKILL or the OOM killer would: nothing of it runs again
        holder.wait()
    assert scratch.reap_stale_scratch_dirs() == [held]
    assert os.listdir(tmp_path) == []


def test_only_old_unheld_vidseg_folders_go(tmp_path, monkeypatch):
    monkeypatch.setattr(scratch.tempfile, "tempdir", str(tmp_path))
    young = tmp_path / "vidseg-demo-young"  # as just made, before its maker holds it
    young.mkdir()
    others = [tmp_path / "vidseg-notes.txt", tmp_path / "mine"]
    others[0].write_text("a file")
    others[1].mkdir()
    (tmp_path / "vidseg-link").symlink_to(others[1])
    for path in others:
        age(path)
    assert scratch.reap_stale_scratch_dirs() == []
    age(young)
    assert scratch.reap_stale_scratch_dirs() == [str(young)]
    assert sorted(os.listdir(tmp_path)) == ["mine", "vidseg-link", "vidseg-notes.txt"]


def test_a_folder_made_and_removed_by_its_run(tmp_path, monkeypatch):
    monkeypatch.setattr(scratch.tempfile, "tempdir", str(tmp_path))
    with scratch.scratch_dir("bench") as folder:
        open(os.path.join(folder, "enc.mp4"), "w").close()
        age(folder)
        assert scratch.reap_stale_scratch_dirs() == []  # held by this process
    assert os.listdir(tmp_path) == []


CTRL_C_AT_EXIT = """
import atexit, os, signal, sys, threading, time
from vidseg import stage_server

stage_server.start(window=False)

def ctrl_c_again_and_again():
    while True:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.001)

# registered after stage_server's: runs just before its clean-up, which now sees Ctrl-C after Ctrl-C
atexit.register(lambda: threading.Thread(target=ctrl_c_again_and_again, daemon=True).start())
sys.exit(130)
"""


def test_ctrl_c_during_the_exit_does_not_cut_the_stage_server_clean_up_short(tmp_path):
    """The terminal's Ctrl-C goes to the whole group, after the command's own: it landed while
    the command reaped the stage server at exit, printed a traceback under the one line and
    left the server's folder behind."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-c", CTRL_C_AT_EXIT], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=60)
    assert "stage_server" not in run.stderr, run.stderr
    assert not [name for name in os.listdir(tmp_path) if name.startswith("vidseg-mp-")]
