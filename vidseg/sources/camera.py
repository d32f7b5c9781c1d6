"""Webcams through OpenCV's V4L2 backend, with the driver's queue cut to one frame.

`--device 0` and `--device /dev/video0` name the same camera. A missing camera is a
`SourceUnavailable` naming the devices that do exist; a camera that stops delivering frames
(unplugged, driver error) is a `SourceLost`, which `Reconnecting` rides out.
"""
from __future__ import annotations

import glob
import os
import stat
import time
from fractions import Fraction
from typing import Callable, Iterator, Optional, Union

import cv2
import numpy as np

from vidseg.sources.base import SourceFrame
from vidseg.sources.reconnect import SourceLost, SourceUnavailable

V4L2_MAJOR = 81  # Linux's device number for Video4Linux


def device_path(device: Union[int, str]) -> str:
    """0 or "0" → /dev/video0; a path is kept as it is."""
    text = str(device)
    return f"/dev/video{text}" if text.isdigit() else text


def is_v4l2_device(path: str) -> bool:
    """A Video4Linux character device (major number 81): /dev/video*, or a udev link to one."""
    st = os.stat(path)
    return stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == V4L2_MAJOR


def _open_v4l2(path: str):
    return cv2.VideoCapture(path, cv2.CAP_V4L2)


class CameraSource:
    """One V4L2 camera.

    device: index (0) or path (/dev/video0).
    open_capture: path → an object with OpenCV's VideoCapture methods (isOpened, read, get,
        set, release); the default opens V4L2. Tests pass a stand-in.
    """

    live = True
    frame_count = None
    time_base = Fraction(1, 1000)

    def __init__(self, device: Union[int, str] = 0,
                 open_capture: Optional[Callable[[str], object]] = None):
        path = device_path(device)
        self.name = path
        if open_capture is None:
            found = ", ".join(sorted(glob.glob("/dev/video*"))) or "none"
            if not os.path.exists(path):
                raise SourceUnavailable(f"no camera at {path} (cameras found: {found}); pick one with --device")
            if not is_v4l2_device(path):
                raise SourceUnavailable(f"{path} is not a camera (cameras found: {found}); pick one with --device")
            open_capture = _open_v4l2
        self._capture = open_capture(path)
        if not self._capture.isOpened():
            self._capture.release()
            raise SourceLost(f"cannot open camera {path} (busy or not a capture device?)")
        self._capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the freshest frame, not a queued one
        self.width = int(self._capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(self._capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0)
        self.fps = fps if fps > 0 else None
        self._origin: Optional[float] = None

    def frames(self) -> Iterator[SourceFrame]:
        """image uint8 RGB [height, width, 3]; pts seconds on the capture clock since the
        first frame; raises SourceLost when the camera stops delivering."""
        while True:
            ok, bgr = self._capture.read()
            now = time.monotonic()
            if not ok or bgr is None:
                raise SourceLost(f"camera {self.name} stopped delivering frames")
            if self._origin is None:
                self._origin = now
            yield SourceFrame(np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)), now - self._origin, now)

    def close(self) -> None:
        self._capture.release()
