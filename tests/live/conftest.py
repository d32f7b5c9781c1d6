"""Fixtures for live sources: a real RTSP server on 127.0.0.1 and a small H.264 clip."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional

import pytest

SERVER = Path(__file__).with_name("rtsp_server.py")
SYSTEM_PYTHON = "/usr/bin/python3"  # has python3-gi and gst-rtsp-server; the venv does not


class RtspServer:
    """tests/live/rtsp_server.py in a child process: /live (30 fps pattern) and /file (clip).

    kill() and start() again keep the port, so clients see a camera that dropped and came back;
    pause()/resume() SIGSTOP/SIGCONT it, so clients see a stalled camera."""

    def __init__(self, clip: Optional[Path] = None, auth: Optional[str] = None,
                 size: str = "320x240", fps: int = 30):
        self.args = [SYSTEM_PYTHON, str(SERVER), "--size", size, "--fps", str(fps)]
        if clip:
            self.args += ["--file", str(clip)]
        if auth:
            self.args += ["--auth", auth]
        self.auth = auth
        self.port = 0
        self.proc: Optional[subprocess.Popen] = None
        self.clients = 0  # connections since the last start()

    def start(self) -> "RtspServer":
        # The port the first start got is reused; a restart right after a kill may find it in
        # use for a moment.
        for _ in range(50):
            self.proc = subprocess.Popen(self.args + ["--port", str(self.port)], stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True)
            line = self.proc.stdout.readline()
            if line.startswith("READY "):
                self.port = int(line.split()[1])
                self.clients = 0
                threading.Thread(target=self._count_clients, args=(self.proc,), daemon=True).start()
                return self
            self.proc.wait(timeout=10)
            time.sleep(0.1)
        raise RuntimeError(f"RTSP test server did not start: {self.proc.stderr.read()}")

    def _count_clients(self, proc) -> None:
        for line in proc.stdout:
            if line.startswith("CLIENT"):
                self.clients += 1

    def wait_clients(self, n: int, timeout: float = 30) -> None:
        """Until n clients have connected since start() (vidseg probes, then its capture reads)."""
        deadline = time.monotonic() + timeout
        while self.clients < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.clients} of {n} clients connected in {timeout} s")
            time.sleep(0.05)

    def url(self, path: str = "live", credentials: Optional[str] = None) -> str:
        userinfo = f"{credentials or self.auth}@" if (credentials or self.auth) else ""
        return f"rtsp://{userinfo}127.0.0.1:{self.port}/{path}"

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=10)

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)


@pytest.fixture(scope="session")
def h264_clip(tmp_path_factory) -> Path:
    """3 s of 320x240 H.264 at 30 fps, one keyframe a second, no B-frames."""
    path = tmp_path_factory.mktemp("clips") / "clip.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=30",
                    "-t", "3", "-c:v", "libx264", "-preset", "ultrafast", "-g", "30", "-bf", "0",
                    "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


@pytest.fixture
def rtsp_server(h264_clip):
    """A started server with /live and /file; killed after the test."""
    server = RtspServer(clip=h264_clip).start()
    yield server
    server.kill()


@pytest.fixture
def make_rtsp_server(h264_clip):
    """Factory for extra servers (auth, other sizes); all killed after the test."""
    servers = []

    def make(**kwargs) -> RtspServer:
        server = RtspServer(clip=h264_clip, **kwargs).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.kill()
