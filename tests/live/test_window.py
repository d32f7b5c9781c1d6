"""The window sink, for real, under Xvfb: title, overlay, q quits with exit 0, and so does a
window closed or destroyed by another X client."""
import ctypes
import os
import signal
import subprocess
import sys
import time
from functools import partial

import av
import cv2
import numpy as np
import pytest

from tests.conftest import REPO, session, shm_entries, shm_leaked
from vidseg.sinks.window import draw_label

pytestmark = pytest.mark.xvfb


@pytest.fixture
def xvfb(xvfb_server):
    """A virtual X display ":N"; DISPLAY points at it during the test."""
    return xvfb_server[0]


@pytest.fixture
def xvfb_server():
    """(display ":N", the Xvfb process); DISPLAY points at it during the test."""
    read, write = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1280x720x24", "-nolisten", "tcp"],
                            pass_fds=[write], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as f:
        display = ":" + f.readline().strip()
    previous = os.environ.get("DISPLAY")
    os.environ["DISPLAY"] = display
    yield display, proc
    if previous is None:
        del os.environ["DISPLAY"]
    else:
        os.environ["DISPLAY"] = previous
    proc.kill()
    proc.wait()


def find_window(display: str, name: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = subprocess.run(["xdotool", "search", "--onlyvisible", "--name", name], capture_output=True, text=True,
                               env=dict(os.environ, DISPLAY=display)).stdout.split()
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"no window named {name!r} appeared")


def screenshot(display: str, path) -> np.ndarray:
    """uint8 BGR [720, 1280, 3] of the whole screen."""
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "x11grab", "-video_size", "1280x720", "-i", display,
                    "-frames:v", "1", str(path)], check=True)
    return cv2.imread(str(path))


def close_window(display: str, window: str) -> None:
    """What a window manager does when the user clicks the close button: send the window a
    WM_DELETE_WINDOW client message (libX11 through ctypes; Xvfb runs no window manager)."""
    x11 = ctypes.CDLL("libX11.so.6")
    x11.XOpenDisplay.restype = ctypes.c_void_p
    x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
    x11.XInternAtom.restype = ctypes.c_ulong
    x11.XInternAtom.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    x11.XSendEvent.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    x11.XFlush.argtypes = x11.XCloseDisplay.argtypes = [ctypes.c_void_p]

    class ClientMessage(ctypes.Structure):
        _fields_ = [("type", ctypes.c_int), ("serial", ctypes.c_ulong), ("send_event", ctypes.c_int),
                    ("display", ctypes.c_void_p), ("window", ctypes.c_ulong), ("message_type", ctypes.c_ulong),
                    ("format", ctypes.c_int), ("data", ctypes.c_long * 5), ("pad", ctypes.c_long * 12)]

    dpy = x11.XOpenDisplay(display.encode())
    event = ClientMessage(type=33, window=int(window), format=32,  # 33 = ClientMessage
                          message_type=x11.XInternAtom(dpy, b"WM_PROTOCOLS", 0))
    event.data[0] = x11.XInternAtom(dpy, b"WM_DELETE_WINDOW", 0)
    x11.XSendEvent(dpy, int(window), 0, 0, ctypes.byref(event))
    x11.XFlush(dpy)
    x11.XCloseDisplay(dpy)


def start_rtsp_run(url: str, log, *options: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "from vidseg.cli import main; main()", "rtsp", url,
                             "--model", "none", "--duration", "60", *options], cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), start_new_session=True)


def stop_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_label_is_white_text_on_a_dark_box():
    image = np.full((240, 320, 3), 128, np.uint8)
    draw_label(image, "29.8 fps  41 ms")
    corner = image[:20, :100]
    assert (corner == 0).all(axis=2).mean() > 0.5 and (corner > 200).all(axis=2).any()
    assert (image[60:, :] == 128).all()  # nothing drawn outside the label


@pytest.mark.rtsp
def test_window_shows_overlay_and_q_quits_with_exit_0(xvfb, make_rtsp_server, tmp_path):
    server = make_rtsp_server(auth="carol:W1nd0wPass")
    log = open(tmp_path / "vidseg.log", "w+")
    proc = start_rtsp_run(server.url("live"), log)
    try:
        window = find_window(xvfb, "carol")
        title = subprocess.run(["xdotool", "getwindowname", window], capture_output=True, text=True,
                               env=dict(os.environ, DISPLAY=xvfb)).stdout.strip()
        assert title == server.url("live").replace("W1nd0wPass", "***")
        time.sleep(2)
        shot = screenshot(xvfb, tmp_path / "screen.png")
        # the stream's colour bars are on screen ...
        assert shot.std() > 40
        # ... with the overlay: a black box holding white text in the top-left corner, over the bars
        corner = shot[:18, :70]
        assert np.all(corner == 0, axis=2).mean() > 0.4
        assert np.all(corner > 200, axis=2).sum() > 20
        assert np.all(shot[24:150, 10:300] == 0, axis=2).mean() < 0.05  # the bars: no black but the box
        subprocess.run(["xdotool", "key", "--window", window, "q"], env=dict(os.environ, DISPLAY=xvfb), check=True)
        proc.wait(timeout=30)
    finally:
        stop_group(proc)
        log.seek(0)
        output = log.read()
    assert proc.returncode == 0, output
    assert "W1nd0wPass" not in output


@pytest.mark.rtsp
def test_closing_the_window_ends_the_run_with_exit_0(xvfb, rtsp_server, tmp_path):
    log = open(tmp_path / "vidseg.log", "w+")
    proc = start_rtsp_run(rtsp_server.url("live"), log)
    try:
        window = find_window(xvfb, "127.0.0.1")
        time.sleep(1)
        close_window(xvfb, window)
        proc.wait(timeout=30)
    finally:
        stop_group(proc)
        log.seek(0)
    assert proc.returncode == 0, log.read()


@pytest.mark.rtsp
def test_a_window_destroyed_by_another_client_ends_the_run_as_a_close(xvfb, rtsp_server, tmp_path):
    """XDestroyWindow from another X client (`xdotool windowclose`), which OpenCV's Qt does not
    notice: the run went on without a window until its --duration (60 s). Now it ends as when
    the window is closed: exit 0 within seconds, the recording finalised, nothing left behind."""
    out = tmp_path / "rec.mp4"
    shm_before = shm_entries()
    log = open(tmp_path / "vidseg.log", "w+")
    proc = start_rtsp_run(rtsp_server.url("live"), log, "-o", str(out))
    try:
        window = find_window(xvfb, "127.0.0.1")
        xdotool = partial(subprocess.run, env=dict(os.environ, DISPLAY=xvfb), check=True)
        xdotool(["xdotool", "windowunmap", window])  # as when minimised: the run goes on
        time.sleep(1.5)
        assert proc.poll() is None
        xdotool(["xdotool", "windowmap", window])
        time.sleep(1)
        xdotool(["xdotool", "windowclose", window])
        proc.wait(timeout=20)  # 60 s, the --duration, without the fix
        time.sleep(0.5)
        left = session(proc)
    finally:
        stop_group(proc)
        log.seek(0)
        output = log.read()
    assert proc.returncode == 0, output
    assert not left, [p.info["cmdline"] for p in left]
    with av.open(str(out)) as container:  # finalised: indexed, and every frame decodes
        frames = container.streams.video[0].frames
        assert frames > 10 and sum(1 for _ in container.decode(video=0)) == frames
    assert sorted(os.listdir(tmp_path)) == ["rec.mp4", "vidseg.log"]
    assert not shm_leaked(shm_before)


@pytest.mark.rtsp
def test_losing_the_display_keeps_the_recording(xvfb_server, rtsp_server, tmp_path):
    """The X server going away (a dropped VNC or ssh -X session) makes Qt end the sink process
    with exit(1): the MP4 recorded in that process is finalised first and kept, and the last
    line says what happened, exit 1."""
    display, server = xvfb_server
    out = tmp_path / "rec.mp4"
    shm_before = set(os.listdir("/dev/shm"))
    log = open(tmp_path / "vidseg.log", "w+")
    proc = start_rtsp_run(rtsp_server.url("live"), log, "-o", str(out))
    try:
        find_window(display, "127.0.0.1")
        time.sleep(2)
        server.kill()
        proc.wait(timeout=30)
    finally:
        stop_group(proc)
        log.seek(0)
        output = log.read()
    last = output.strip().splitlines()[-1]
    assert proc.returncode == 1, output
    assert "display was lost" in last and f"{out} keeps the" in last, output
    frames = int(last.split(" keeps the ")[1].split()[0])
    assert frames > 10
    with av.open(str(out)) as container:  # finalised: indexed, and every frame decodes
        assert container.streams.video[0].frames == frames
        assert sum(1 for _ in container.decode(video=0)) == frames
    assert sorted(os.listdir(tmp_path)) == ["rec.mp4", "vidseg.log"]  # no temporary file left beside it
    assert set(os.listdir("/dev/shm")) <= shm_before


@pytest.mark.parametrize("order, hangs", [("cv2, av", False), ("av, cv2", True)])
def test_window_refuses_to_open_after_pyav(order, hangs):
    """With PyAV's bundled libxcb loaded before OpenCV's, OpenCV's window hangs on the X server;
    the window sink says so at once instead (a stage server started with window=False)."""
    code = (f"import {order}\nfrom vidseg.sinks.window import check_library_order\n"
            "try:\n    check_library_order()\nexcept RuntimeError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert ("window would hang" in out) == hangs


def test_without_libxcb_the_window_is_left_to_opencv(monkeypatch):
    """A system with no libxcb.so.1 (OpenCV drawing with X libraries of its own) still shows
    the window: the check for a window destroyed by another client is skipped, not an error."""
    from vidseg.sinks import window

    def missing(name, *args, **kwargs):
        raise OSError(f"{name}: cannot open shared object file: No such file or directory")

    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(window.ctypes, "CDLL", missing)
    assert window._watch_window("cam0") is None
