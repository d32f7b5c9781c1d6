"""Show rendered frames in an OpenCV window, with the frame rate and latency drawn on top.

The window is titled with the source (password masked). `q` or Esc, closing the window, or
its destruction by another X client (`xdotool windowclose`) makes write() return False, which
ends the run cleanly. Needs OpenCV built with a GUI
(the opencv-python wheel, not -headless) and a display ($DISPLAY, e.g. Xvfb in tests).
"""
from __future__ import annotations

import ctypes
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
CHECK_EVERY_S = 0.25  # how often the window's existence is asked of the X server (one round trip)
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
        self._x_window = _watch_window(self.title)
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
        """False once the window is closed, or destroyed by another X client (which OpenCV's Qt
        does not notice: it went on "showing" frames in a window that was gone)."""
        try:
            if cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
                return False
        except cv2.error:  # closed: with its last window gone, OpenCV's Qt GUI is gone too
            return False
        return self._x_window is None or self._x_window.exists()

    def close(self) -> None:
        if self._x_window is not None:
            self._x_window.close()
        if not self._opened:
            return
        try:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)
        except cv2.error:  # the user closed it already: OpenCV has nothing left to destroy
            pass


def _watch_window(title: str) -> Optional["XWindowWatch"]:
    """An XWindowWatch of the window titled `title` on $DISPLAY; None with no display, or no
    libxcb to ask it with (then OpenCV's own view of the window is all there is)."""
    if not os.environ.get("DISPLAY"):
        return None
    try:
        return XWindowWatch(title)
    except OSError:  # libxcb.so.1 not found: a system whose OpenCV draws with no X libraries of its own
        return None


class XWindowWatch:
    """Whether this process's window titled `title` still exists on the X display ($DISPLAY),
    asked over an X connection of its own (libxcb, which OpenCV's Qt loads as well) at most
    every CHECK_EVERY_S: OpenCV's Qt does not notice its window being destroyed by another
    client (XDestroyWindow: `xdotool windowclose`), and WND_PROP_VISIBLE stays 1.

    The window is found by its _NET_WM_PID (this process) and _NET_WM_NAME (the title) among
    the root's children and, under a reparenting window manager, their descendants; it is
    looked for again if its id goes (were Qt to replace it). Until it has been found, and when
    the connection fails (a lost display, which Qt reports itself), it counts as existing; a
    minimised (unmapped) window exists."""

    def __init__(self, title: str):
        self._title = title.encode()
        self._window: Optional[int] = None
        self._exists = True
        self._next_check = 0.0
        xcb = self._xcb = ctypes.CDLL("libxcb.so.1")
        self._free = ctypes.CDLL(None).free
        self._free.argtypes = [ctypes.c_void_p]
        for name in ("query_tree", "get_property", "get_window_attributes", "intern_atom"):
            getattr(xcb, f"xcb_{name}").restype = ctypes.c_uint  # a cookie: the request's sequence number
            getattr(xcb, f"xcb_{name}_reply").restype = ctypes.c_void_p
            getattr(xcb, f"xcb_{name}_reply").argtypes = [ctypes.c_void_p, ctypes.c_uint, ctypes.c_void_p]
        xcb.xcb_connect.restype = xcb.xcb_get_setup.restype = ctypes.c_void_p
        xcb.xcb_query_tree_children.restype = ctypes.POINTER(ctypes.c_uint32)
        xcb.xcb_get_property_value.restype = ctypes.c_void_p
        for name in ("connection_has_error", "disconnect", "get_setup", "query_tree_children",
                     "query_tree_children_length", "get_property_value", "get_property_value_length"):
            getattr(xcb, f"xcb_{name}").argtypes = [ctypes.c_void_p]
        xcb.xcb_setup_roots_iterator.restype = _ScreenIterator
        xcb.xcb_setup_roots_iterator.argtypes = [ctypes.c_void_p]
        xcb.xcb_screen_next.argtypes = [ctypes.POINTER(_ScreenIterator)]
        xcb.xcb_query_tree.argtypes = xcb.xcb_get_window_attributes.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        xcb.xcb_get_property.argtypes = [ctypes.c_void_p, ctypes.c_uint8] + [ctypes.c_uint32] * 5
        xcb.xcb_intern_atom.argtypes = [ctypes.c_void_p, ctypes.c_uint8, ctypes.c_uint16, ctypes.c_char_p]
        screen = ctypes.c_int()
        self._conn = xcb.xcb_connect(None, ctypes.byref(screen))
        if self._broken():
            return
        screens = xcb.xcb_setup_roots_iterator(xcb.xcb_get_setup(self._conn))
        for _ in range(screen.value):
            xcb.xcb_screen_next(ctypes.byref(screens))
        self._root = screens.data[0]  # xcb_screen_t starts with its root window
        self._atoms = [self._atom(name) for name in (b"_NET_WM_PID", b"_NET_WM_NAME", b"UTF8_STRING")]

    def exists(self) -> bool:
        now = time.monotonic()
        if self._exists and now >= self._next_check and not self._broken():
            self._next_check = now + CHECK_EVERY_S
            seen = self._window is not None
            if not (seen and self._there(self._window)):
                self._window = self._find()
                self._exists = self._window is not None or not seen
        return self._exists

    def close(self) -> None:
        self._xcb.xcb_disconnect(self._conn)

    def _broken(self) -> bool:
        return bool(self._xcb.xcb_connection_has_error(self._conn))

    def _find(self) -> Optional[int]:
        """The id of this process's window with the title, searched 3 levels down; None if none.
        The requests of a level are all sent before their replies are read: one round trip."""
        pid_atom, name_atom, utf8 = self._atoms
        wanted = (os.getpid().to_bytes(4, sys.byteorder), self._title)
        level = [self._root]
        for _ in range(3):
            cookies = [self._xcb.xcb_query_tree(self._conn, w) for w in level]
            children = []
            for reply in (self._reply("query_tree", cookie) for cookie in cookies):
                if reply:
                    n = self._xcb.xcb_query_tree_children_length(reply)
                    children += self._xcb.xcb_query_tree_children(reply)[:n]
                    self._free(reply)
            cookies = [self._xcb.xcb_get_property(self._conn, 0, w, atom, kind, 0, 1024)
                       for w in children for atom, kind in ((pid_atom, 6), (name_atom, utf8))]  # 6 = CARDINAL
            values = [self._value(self._reply("get_property", cookie)) for cookie in cookies]
            for i, window in enumerate(children):
                if tuple(values[2 * i:2 * i + 2]) == wanted:
                    return window
            level = children
        return None

    def _there(self, window: int) -> bool:
        reply = self._reply("get_window_attributes", self._xcb.xcb_get_window_attributes(self._conn, window))
        self._free(reply)
        return reply is not None

    def _atom(self, name: bytes) -> int:
        reply = self._reply("intern_atom", self._xcb.xcb_intern_atom(self._conn, 0, len(name), name))
        atom = ctypes.cast(reply, ctypes.POINTER(ctypes.c_uint32))[2]  # after type, pad, sequence, length
        self._free(reply)
        return atom

    def _reply(self, request: str, cookie: int) -> Optional[int]:
        """The reply to a request, for the caller to free; None on an X error (a window gone)."""
        error = ctypes.c_void_p()
        reply = getattr(self._xcb, f"xcb_{request}_reply")(self._conn, cookie, ctypes.byref(error))
        self._free(error)
        return reply

    def _value(self, reply: Optional[int]) -> Optional[bytes]:
        """A get_property reply's value (freed); None for no reply."""
        if not reply:
            return None
        xcb = self._xcb
        value = ctypes.string_at(xcb.xcb_get_property_value(reply), xcb.xcb_get_property_value_length(reply))
        self._free(reply)
        return value


class _ScreenIterator(ctypes.Structure):
    _fields_ = [("data", ctypes.POINTER(ctypes.c_uint32)), ("rem", ctypes.c_int), ("index", ctypes.c_int)]


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
