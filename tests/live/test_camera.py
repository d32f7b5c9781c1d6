"""CameraSource through a stand-in capture object or a FIFO read by OpenCV (no V4L2 device
exists on these machines)."""
import os
import signal
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest

from tests.conftest import REPO, ctrl_c_once_stalled, probe, shm_entries, shm_leaked

from vidseg.sources.camera import CameraSource, device_path
from vidseg.sources.reconnect import Reconnecting, SourceLost, SourceUnavailable


class StandInCapture:
    """Behaves like cv2.VideoCapture on a 64x48 camera that delivers `n` BGR frames."""

    def __init__(self, path, n=5, opened=True):
        self.path, self.n, self.opened = path, n, opened
        self.released = False
        self.props = {cv2.CAP_PROP_FRAME_WIDTH: 64, cv2.CAP_PROP_FRAME_HEIGHT: 48, cv2.CAP_PROP_FPS: 30}

    def isOpened(self):
        return self.opened

    def get(self, prop):
        return self.props.get(prop, 0)

    def set(self, prop, value):
        self.props[prop] = value
        return True

    def read(self):
        if self.n == 0:
            return False, None
        self.n -= 1
        bgr = np.zeros((48, 64, 3), np.uint8)
        bgr[..., 0] = 200  # blue in OpenCV's BGR order
        return True, bgr

    def release(self):
        self.released = True


def test_device_index_and_path_name_the_same_camera():
    assert device_path(0) == device_path("0") == "/dev/video0"
    assert device_path("/dev/video3") == "/dev/video3"


def test_frames_are_rgb_with_capture_clock_pts():
    captures = []
    source = CameraSource("1", open_capture=lambda p: captures.append(StandInCapture(p)) or captures[-1])
    assert captures[0].path == "/dev/video1"
    assert (source.width, source.height, source.fps, source.live) == (64, 48, 30.0, True)
    assert captures[0].props[cv2.CAP_PROP_BUFFERSIZE] == 1
    frames = []
    with pytest.raises(SourceLost, match="camera /dev/video1 stopped delivering frames"):
        for frame in source.frames():
            frames.append(frame)
    source.close()
    assert captures[0].released and len(frames) == 5
    assert frames[0].image.shape == (48, 64, 3) and frames[0].image.dtype == np.uint8
    assert tuple(frames[0].image[0, 0]) == (0, 0, 200)  # blue, now in RGB order
    pts = [f.pts for f in frames]
    assert pts[0] == 0 and pts == sorted(pts)


def test_unplugged_camera_is_reopened():
    reports = []
    source = Reconnecting(lambda: CameraSource(0, open_capture=lambda p: StandInCapture(p, n=3)), "/dev/video0",
                          first_delay=0.01, report=reports.append)
    frames = [f for _, f in zip(range(7), source.frames())]
    source.close()
    assert len(frames) == 7 and source.reconnects == 2
    assert reports[0] == "camera /dev/video0 stopped delivering frames; reconnecting"


def test_camera_that_does_not_open_is_lost_not_fatal():
    with pytest.raises(SourceLost, match="cannot open camera /dev/video0"):
        CameraSource(0, open_capture=lambda p: StandInCapture(p, opened=False))


def test_missing_camera_is_one_clear_line():
    with pytest.raises(SourceUnavailable) as error:
        CameraSource("/dev/video97")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("no camera at /dev/video97 (cameras found: ") and "--device" in message


@pytest.mark.parametrize("path", ["/dev/null", "/tmp", __file__])
def test_a_path_that_is_not_a_camera_is_one_clear_line(path):
    """A device or file that is not a V4L2 camera was retried for ever, with OpenCV warnings."""
    with pytest.raises(SourceUnavailable) as error:
        CameraSource(path)
    assert str(error.value).startswith(f"{path} is not a camera (cameras found: ")
    assert "--device" in str(error.value)


def test_camera_pipeline_end_to_end_with_a_stand_in(tmp_path):
    """The camera path through the real runtime (latest policy, reconnect) into an MP4."""
    from tests.conftest import probe
    from vidseg.pipelines.run import SourcePlan, Spec, run_pipeline
    from vidseg.sinks.mp4 import Mp4Sink

    out = tmp_path / "cam.mp4"
    plan = SourcePlan(name="/dev/video0",
                      source=Spec("tests.live.helpers:standin_camera", {"frames_per_connection": 60, "duration": 5}),
                      sinks=[Spec(Mp4Sink, {"path": str(out), "width": 640, "height": 480, "fps": 30})],
                      frame_shape=(480, 640), policy="latest")
    result = run_pipeline([plan], model="tests.fake_models:BlobModel", batch=1, progress=False)
    assert result.exit_code == 0, result.message
    stats = result.stats
    source = stats["sources"]["/dev/video0"]
    assert source["reconnects"] >= 1  # unplugged every 2 s, reopened
    assert stats["frames_in"] == stats["frames_out"] + sum(stats["dropped"].values())
    video = probe(out)["video"]
    assert int(video["nb_read_frames"]) == stats["frames_out"] > 30


def test_ctrl_c_while_the_camera_stalls_mid_read_ends_the_run_at_once(tmp_path):
    """A camera that stops sending blocks OpenCV's read, deaf to signals, until the driver gives
    up (V4L2 after 10 s), and Ctrl-C waited for that. Now the run ends within about a second of
    Ctrl-C as usual: exit 130, the recording finalised, no process or /dev/shm entry left."""
    fifo, out = tmp_path / "camera.fifo", tmp_path / "cam.mp4"
    os.mkfifo(fifo)
    stalled, unplug = threading.Event(), threading.Event()

    def camera() -> None:  # 2 s of 320x240 video at 30 fps, then nothing for 10 s, then unplugged
        try:
            with open(fifo, "wb") as f:
                f.write(b"YUV4MPEG2 W320 H240 F30:1 Ip A1:1 C420jpeg\n")
                for i in range(60):
                    f.write(b"FRAME\n" + bytes([40 + i]) * (320 * 240) + bytes([128]) * (320 * 240 // 2))
                    f.flush()
                    time.sleep(1 / 30)
                stalled.set()
                unplug.wait(10)
        except BrokenPipeError:  # the reader is gone
            pass

    threading.Thread(target=camera, daemon=True).start()
    shm_before = shm_entries()
    code = f"import sys; from tests.live.helpers import record_fifo_camera as r; sys.exit(r({str(fifo)!r}, {str(out)!r}))"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    stderr, elapsed, left = ctrl_c_once_stalled(proc, lambda: stalled.wait(60), unplug.set)
    assert proc.returncode == 130, stderr
    assert elapsed < 3, f"{elapsed:.1f} s from Ctrl-C to the end, with reads blocked for 10 s"
    assert not left, [p.info["cmdline"] for p in left]
    assert int(probe(out)["video"]["nb_read_frames"]) > 20
    assert not shm_leaked(shm_before)
