"""Shared fixtures: test clips made with PyAV (real codecs), and helpers to run `vidseg`.

Clips show a red and a green square moving over a dark grey background and a fixed blue
square, which `tests.fake_models.BlobModel` detects; an AAC sine tone is the audio track.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent
BLOB_MODEL = "tests.fake_models:BlobModel"


def blob_frame(i: int, width: int, height: int) -> np.ndarray:
    """uint8 RGB [height, width, 3]: frame i of the test scene (see module doc)."""
    img = np.full((height, width, 3), 40, np.uint8)
    s = max(16, height // 6)
    x = int((width - s) * (0.1 + 0.8 * ((i * 2) % 100) / 100))
    img[height // 6: height // 6 + s, x: x + s] = (230, 20, 20)
    img[height // 2: height // 2 + s, width - x - s: width - x] = (20, 230, 20)
    img[height - s - 8: height - 8, 8: 8 + s] = (20, 20, 230)
    return img


def make_clip(path, width=640, height=480, frames=50, fps=25, audio=True, codec="libx264",
              container_format=None, rotation=0, pix_fmt="yuv420p", noise=0) -> str:
    """Encode the test scene (and a stereo AAC/MP3 tone when audio) into `path`; returns it.
    noise: grey noise of up to ±noise levels on every pixel (seeded), which makes the clip
    costly to encode at slow presets whatever the machine's speed."""
    with av.open(str(path), "w", format=container_format) as c:
        v = c.add_stream(codec, rate=Fraction(fps))
        v.width, v.height, v.pix_fmt = width, height, pix_fmt
        if codec == "libx264":
            v.options = {"preset": "ultrafast"}
        if rotation:
            v.set_display_rotation(rotation)
        a = None
        if audio:
            a = c.add_stream("aac" if codec == "libx264" else "mp3", rate=48000)
            a.layout = "stereo"
        rng = np.random.default_rng(0)
        for i in range(frames):
            image = blob_frame(i, width, height)
            if noise:
                grain = rng.integers(-noise, noise + 1, (height, width, 1), dtype=np.int16)
                image = np.clip(image + grain, 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            c.mux(v.encode(frame))
        c.mux(v.encode(None))
        if a is not None:
            n = 1152 if a.codec_context.name == "mp3" else 1024
            total = int(48000 * frames / fps)
            t = np.arange(total) / 48000.0
            tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for k in range(0, total - n + 1, n):
                af = av.AudioFrame.from_ndarray(np.stack([tone[k:k + n]] * 2), format="fltp", layout="stereo")
                af.sample_rate, af.pts = 48000, k
                c.mux(a.encode(af))
            c.mux(a.encode(None))
    return str(path)


def probe(path) -> dict:
    """ffprobe of the first video and audio streams: frames (counted), fps, start and duration,
    codec, size and pixel aspect ratio, channels."""
    def streams(kind):
        out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", kind, "-count_frames", "-show_entries",
                              "stream=codec_name,nb_read_frames,r_frame_rate,start_time,duration,width,height,"
                              "sample_aspect_ratio,channels",
                              "-of", "json", str(path)], capture_output=True, text=True, check=True).stdout
        import json

        return json.loads(out)["streams"]
    v, a = streams("v"), streams("a")
    return {"video": v[0] if v else None, "audio": a[0] if a else None}


def run_vidseg(*args, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    """Run `python -m vidseg.cli ...` from the repo root (so `tests.fake_models` imports)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", "from vidseg.cli import main; main()", *map(str, args)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)


def session(run: subprocess.Popen) -> list:
    """Every live psutil.Process of the session of `run`, started with start_new_session (its
    own processes, and any orphan of it under PID 1); info holds name, cmdline and status."""
    procs = []
    for p in psutil.process_iter(["name", "cmdline", "status"]):
        try:
            if os.getsid(p.pid) == run.pid and p.info["status"] != psutil.STATUS_ZOMBIE:
                procs.append(p)
        except (ProcessLookupError, PermissionError):
            pass
    return procs


def ctrl_c_once_stalled(proc: subprocess.Popen, wait_stalled, resume) -> tuple:
    """Ctrl-C (SIGINT) to `proc` a second after `wait_stalled()` returns, its source's read
    blocked by then; returns (its stderr, seconds from the signal to its end, the processes left
    in its session). `resume()` ends the stall however this ends; `proc`, if still running, is
    killed with its session."""
    import time

    try:
        wait_stalled()
        time.sleep(1)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
        elapsed = time.monotonic() - started
        time.sleep(0.5)
        left = session(proc)
    finally:
        resume()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return stderr, elapsed, left


def all_gone(procs, timeout: float = 5.0) -> bool:
    """Whether the psutil.Processes `procs` have all ended (or are zombies) within `timeout` s."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in procs):
            return True
        time.sleep(0.1)
    return False


def current_umask() -> int:
    """This process's umask (os.umask can only be read by setting it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def shm_entries() -> set:
    return set(os.listdir("/dev/shm"))


def _mapped_shm() -> set:
    """/dev/shm names some live process has mapped (someone else's run in progress)."""
    names = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            for line in maps.read_text().splitlines():
                if "/dev/shm/" in line:
                    names.add(line.rsplit("/dev/shm/", 1)[1].split(" ")[0])
        except OSError:
            pass
    return names


def shm_leaked(before: set, timeout: float = 5.0) -> set:
    """Entries that appeared in /dev/shm since `before` and that no live process maps: what a
    run left behind. Other runs on the machine may be using /dev/shm at the same time."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        leaked = shm_entries() - before - _mapped_shm()
        if not leaked or time.monotonic() > deadline:
            return leaked
        time.sleep(0.2)


@pytest.fixture(scope="session")
def clips(tmp_path_factory):
    """Factory of cached clips: clips(name, **make_clip kwargs) -> path."""
    root = tmp_path_factory.mktemp("clips")
    made = {}

    def get(name, **kwargs):
        if name not in made:
            made[name] = make_clip(root / name, **kwargs)
        return made[name]
    return get


@pytest.fixture(scope="session")
def clip_480(clips):
    return clips("480p.mp4", width=640, height=480, frames=50, fps=25)


@pytest.fixture(scope="session")
def clip_1080(clips):
    return clips("1080p.mp4", width=1920, height=1080, frames=20, fps=30)
