"""Show rendered frames in an OpenCV window, with the frame rate and latency drawn on top.

The window is titled with the source (password masked). `q` or Esc, or closing the window,
makes write() return False, which ends the run cleanly. Needs OpenCV built with a GUI
(the opencv-python wheel, not -headless) and a display ($DISPLAY, e.g. Xvfb in tests).
"""
from __future__ import annotations

import os
import re
import socket
import sys
import time
from collections import deque
from typing import Optional

import cv2
import numpy as np

from vidseg.errors import InputError
from vidseg.secrets import mask

QUIT_KEYS = (ord("q"), ord("Q"), 27)  # 27 = Esc
FONT_DIR = "/usr/share/fonts/truetype/dejavu"  # the opencv-python wheel's Qt ships no fonts


class WindowSink:
    """One window per source.

    title: the source name (masked here as well). slot: position among the run's windows,
    which are laid out side by side. max_size: (width, height) the window is shrunk to fit.
    write(image uint8 RGB [H, W, 3], pts, capture_time) draws "<fps> fps  <latency> ms" where
    latency = now - capture_time (time.monotonic(), same clock in every process).
    """

    wants_capture_time = True  # the sink stage passes each frame's capture time to write()
    exits_on_display_loss = True  # OpenCV's Qt ends the process when the X connection breaks (see stages)

    def __init__(self, title: str, slot: int = 0, max_size: tuple = (960, 720)):
        check_display()
        check_library_order()
        if os.path.isdir(FONT_DIR):
            os.environ.setdefault("QT_QPA_FONTDIR", FONT_DIR)
        self.title = mask(title)
        self._slot = slot
        self._max_size = max_size
        self._opened = False
        self._shown: deque = deque()  # time.monotonic() of the frames shown in the last second

    def _open(self, height: int, width: int) -> None:
        cv2.namedWindow(self.title, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO | cv2.WINDOW_GUI_NORMAL)
        scale = min(1.0, self._max_size[0] / width, self._max_size[1] / height)
        w, h = round(width * scale), round(height * scale)
        cv2.resizeWindow(self.title, w, h)
        cv2.moveWindow(self.title, self._slot * (w + 10), 0)
        self._opened = True

    def write(self, image: np.ndarray, pts: float, capture_time: Optional[float] = None) -> bool:
        """Shows the frame; False when the user asked to quit (q, Esc, window closed)."""
        now = time.monotonic()
        self._shown.append(now)
        while now - self._shown[0] > 1.0:
            self._shown.popleft()
        if not self._opened:
            self._open(*image.shape[:2])
        elif not self._visible():
            return False
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)  # a copy: the frame itself stays clean
        span = now - self._shown[0]
        text = f"{(len(self._shown) - 1) / span:.1f} fps" if span > 0.5 else "-- fps"
        if capture_time is not None:
            text += f"  {(now - capture_time) * 1000:.0f} ms"
        draw_label(bgr, text)
        cv2.imshow(self.title, bgr)
        return (cv2.waitKey(1) & 0xFF) not in QUIT_KEYS

    def _visible(self) -> bool:
        try:
            return cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) >= 1
        except cv2.error:  # closed: with its last window gone, OpenCV's Qt GUI is gone too
            return False

    def close(self) -> None:
        if not self._opened:
            return
        try:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)
        except cv2.error:  # the user closed it already: OpenCV has nothing left to destroy
            pass


def check_library_order() -> None:
    """RuntimeError if PyAV was loaded before OpenCV in this process: both wheels bundle libxcb
    under the same file name, and with PyAV's loaded first OpenCV's window hangs connecting to
    the X server. Stages that show a window come from a server started with window=True."""
    loaded = list(sys.modules)  # in import order
    if "av" in loaded and loaded.index("av") < loaded.index("cv2"):
        raise RuntimeError("PyAV was loaded before OpenCV: an OpenCV window would hang "
                           "(start the stage server with window=True)")


def check_display() -> None:
    """InputError unless a window can be opened here (a display that answers, and OpenCV with
    a GUI). OpenCV's Qt would abort the process at the first frame on a display that does
    not answer (a stale DISPLAY in an ssh or tmux session, a container without the X socket)."""
    display = os.environ.get("DISPLAY")
    if not (display or os.environ.get("WAYLAND_DISPLAY")):
        raise InputError("no display to open a window on; run with --no-window (and -o out.mp4)")
    if display and not x_display_answers(display):
        raise InputError(f"no X display answers at DISPLAY={display}; start one or fix DISPLAY, "
                         "or run with --no-window (and -o out.mp4)")
    if re.search(r"GUI:\s+NONE", cv2.getBuildInformation()):
        raise InputError("this OpenCV has no GUI (opencv-python-headless); install opencv-python "
                         "or run with --no-window")


def x_display_answers(display: str, timeout: float = 2.0) -> bool:
    """True if an X server accepts connections at `display` ("[host]:N[.S]"): its local socket
    (abstract or in /tmp/.X11-unix) for ":N", TCP port 6000+N for "host:N" (ssh -X gives
    "localhost:10.0"). A form not understood here is left to the GUI library (True)."""
    host, _, rest = display.rpartition(":")
    number = rest.split(".")[0]
    if not number.isdigit():
        return True
    if host in ("", "unix"):
        path = f"/tmp/.X11-unix/X{number}"
        for address in ("\0" + path, path):
            with socket.socket(socket.AF_UNIX) as sock:
                try:
                    sock.connect(address)
                    return True
                except OSError:
                    pass
        return False
    try:
        socket.create_connection((host, 6000 + int(number)), timeout).close()
        return True
    except OSError:
        return False


def draw_label(bgr: np.ndarray, text: str) -> None:
    """White text on a dark box in the top-left corner, sized to the frame (uint8 BGR, in place)."""
    scale = max(0.5, bgr.shape[0] / 720)
    thickness = max(1, round(scale * 1.5))
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    pad = round(6 * scale)
    cv2.rectangle(bgr, (0, 0), (w + 2 * pad, h + base + 2 * pad), (0, 0, 0), cv2.FILLED)
    cv2.putText(bgr, text, (pad, pad + h), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness,
                cv2.LINE_AA)
