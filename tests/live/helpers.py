"""Test-only model and sink for the live end-to-end tests (importable by the stage processes)."""
from __future__ import annotations

import time

import numpy as np

from tests.fake_models import SlowBlobModel


def slow_model_300ms(batch_size: int = 1, **_ignored) -> SlowBlobModel:
    """A model that takes 300 ms per batch (sleeps, so it leaves the CPU to the rest)."""
    return SlowBlobModel(batch_size=1, delay=0.3)


class FrameLog:
    """A sink that appends "<pts> <capture_time> <sink_time>" per frame to `path` (for
    measuring latency and rate over a run)."""

    wants_capture_time = True

    def __init__(self, path: str):
        self._file = open(path, "w", buffering=1)

    def write(self, image: np.ndarray, pts: float, capture_time: float) -> bool:
        self._file.write(f"{pts:.6f} {capture_time:.6f} {time.monotonic():.6f}\n")
        return True

    def close(self) -> None:
        self._file.close()


def read_log(path) -> np.ndarray:
    """float64 [N, 3]: pts, capture_time, sink_time per frame."""
    return np.loadtxt(path, ndmin=2)


class PacedCapture:
    """Stands in for cv2.VideoCapture on a 640x480 camera at 30 fps: BGR frames with a red
    square the blob model finds; `read()` fails (as when unplugged) after `n` frames."""

    def __init__(self, path: str, n: int = 10 ** 9):
        import cv2

        self._props = {cv2.CAP_PROP_FRAME_WIDTH: 640, cv2.CAP_PROP_FRAME_HEIGHT: 480, cv2.CAP_PROP_FPS: 30}
        self._left = n
        self._next = time.monotonic()

    def isOpened(self) -> bool:
        return True

    def get(self, prop):
        return self._props.get(prop, 0)

    def set(self, prop, value) -> bool:
        return True

    def read(self):
        if self._left == 0:
            return False, None
        self._left -= 1
        self._next += 1 / 30
        time.sleep(max(0.0, self._next - time.monotonic()))
        bgr = np.full((480, 640, 3), 40, np.uint8)
        bgr[100:200, 100:200] = (20, 20, 230)  # red in BGR
        return True, bgr

    def release(self) -> None:
        pass


def standin_camera(frames_per_connection: int, duration: float):
    """The live camera source of `vidseg camera`, over PacedCapture instead of V4L2."""
    from functools import partial

    from vidseg.sources.camera import CameraSource
    from vidseg.sources.reconnect import Reconnecting

    def open_capture(path):
        return PacedCapture(path, frames_per_connection)

    return Reconnecting(partial(CameraSource, 0, open_capture), "/dev/video0", first_delay=0.2, duration=duration)


def _open_with_ffmpeg(path: str):
    import cv2

    return cv2.VideoCapture(path, cv2.CAP_FFMPEG)


def fifo_camera(path: str):
    """The live camera source of `vidseg camera` (CameraSource, reopened by Reconnecting) over a
    FIFO of raw video (YUV4MPEG2) that OpenCV reads with its FFmpeg backend instead of V4L2. A
    camera that stops sending is a writer that stops writing: OpenCV's read then blocks in
    read(2), deaf to signals, until the writer writes or closes the FIFO."""
    from functools import partial

    from vidseg.sources.camera import CameraSource
    from vidseg.sources.reconnect import Reconnecting

    return Reconnecting(partial(CameraSource, path, _open_with_ffmpeg), path)


def record_fifo_camera(path: str, out: str) -> int:
    """fifo_camera(path) into an MP4 at `out` (320x240, 30 fps), with no model; the exit code."""
    from vidseg.pipelines.run import SourcePlan, Spec, run_pipeline
    from vidseg.sinks.mp4 import Mp4Sink

    plan = SourcePlan(name=path, source=Spec(fifo_camera, {"path": path}),
                      sinks=[Spec(Mp4Sink, {"path": out, "width": 320, "height": 240, "fps": 30})],
                      frame_shape=(240, 320), policy="latest")
    return run_pipeline([plan], model="none", batch=1, progress=False).exit_code


def log_run(url: str, log: str, model: str, duration: float):
    """One RTSP source through `model` into a FrameLog at `log` for `duration` s; the RunResult."""
    from vidseg.pipelines.live import live_source
    from vidseg.pipelines.run import SourcePlan, Spec, run_pipeline

    plan = SourcePlan(name="cam", source=Spec(live_source, dict(kind="rtsp", target=url, read_timeout=1,
                                                                open_timeout=1, duration=duration)),
                      sinks=[Spec(FrameLog, {"path": log})], frame_shape=(240, 320), policy="latest")
    return run_pipeline([plan], model=model, batch=1, progress=False)


def slow_loading_model(batch_size: int = 1, load_s: float = 4.0, **_ignored):
    """Takes `load_s` to build (as a real model's loading does), then finds blobs at once."""
    from tests.fake_models import BlobModel

    time.sleep(load_s)
    return BlobModel(batch_size=1)


def very_slow_loading_model(batch_size: int = 1, **_ignored):
    """Takes 30 s to build."""
    return slow_loading_model(load_s=30.0)


def failing_model(batch_size: int = 1, **_ignored):
    """Finds blobs for 30 batches, then raises (a model that breaks in the middle of a run)."""
    from tests.fake_models import FailingModel

    return FailingModel(batch_size=1, fail_at=30)


if __name__ == "__main__":  # python -m tests.live.helpers URL LOG MODEL DURATION (a run alongside a test's)
    import sys

    sys.exit(log_run(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])).exit_code)
