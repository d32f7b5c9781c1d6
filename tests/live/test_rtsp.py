"""RtspSource against a real RTSP server on 127.0.0.1."""
import socket
import subprocess
import time
from itertools import islice

import numpy as np
import pytest

from tests.live.conftest import RtspServer
from vidseg.sources.reconnect import SourceLost, SourceUnavailable
from vidseg.sources.rtsp import RtspSource

pytestmark = pytest.mark.rtsp
OPENING_FRAMES = 20  # read while opening, not passed on: analyzeduration 0.5 s at 30 fps, and slack


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_reads_live_frames_on_the_capture_clock(rtsp_server, transport):
    source = RtspSource(rtsp_server.url("live"), transport=transport, read_timeout=3)
    try:
        assert (source.width, source.height, source.live) == (320, 240, True)
        assert source.fps == pytest.approx(30, abs=1)
        frames = list(islice(source.frames(), 45))
    finally:
        source.close()
    assert all(f.image.shape == (240, 320, 3) and f.image.dtype == np.uint8 for f in frames)
    assert all(f.image.flags.c_contiguous for f in frames)
    pts = np.array([f.pts for f in frames])
    assert pts[0] == 0 and np.all(np.diff(pts) > 0)
    # pts follow the capture clock: 44 intervals of a 30 fps stream take about 1.5 s (what
    # was read while opening, which would come at once, is not passed on)
    assert 1.0 < pts[-1] < 3.0
    assert [f.pts for f in frames] == pytest.approx([f.capture_time - frames[0].capture_time for f in frames])
    assert frames[-1].image.std() > 0  # a picture, not a blank buffer


def test_a_connection_starts_with_frames_a_frame_apart(rtsp_server):
    """The newest frame read while opening was passed on as the stream went live, a few ms
    before the first live frame: every recording started with a 3 ms frame."""
    gaps = []
    for _ in range(3):
        source = RtspSource(rtsp_server.url("live"), read_timeout=3)
        try:
            first, second = islice(source.frames(), 2)
        finally:
            source.close()
        gaps.append(second.pts - first.pts)
    assert min(gaps) > 0.25 / 30, gaps  # the stream's frames are 33 ms apart


def test_file_stream_ends(rtsp_server):
    source = RtspSource(rtsp_server.url("file"), read_timeout=3)
    try:
        frames = list(source.frames())
    finally:
        source.close()
    assert 90 - OPENING_FRAMES <= len(frames) <= 90  # a 3 s clip at 30 fps


def test_a_stream_with_one_keyframe_gives_every_frame(tmp_path):
    """The packets read while probing were thrown away (fflags=nobuffer), the stream's opening
    keyframe with them: no frame decoded until the next keyframe; with none, 0 frames and a
    clean exit. Now only the frames read while opening are not passed on."""
    clip = tmp_path / "onekey.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=30", "-t", "2",
                    "-c:v", "libx264", "-preset", "ultrafast", "-g", "1000", "-pix_fmt", "yuv420p", str(clip)],
                   check=True)
    server = RtspServer(clip=clip).start()
    try:
        source = RtspSource(server.url("file"), read_timeout=3)
        try:
            assert 60 - OPENING_FRAMES <= len(list(source.frames())) <= 60
        finally:
            source.close()
    finally:
        server.kill()


def test_stalled_server_raises_within_the_read_timeout(rtsp_server):
    source = RtspSource(rtsp_server.url("live"), read_timeout=1.5)
    frames = source.frames()
    next(frames)
    rtsp_server.pause()
    try:
        started = time.monotonic()
        with pytest.raises(SourceLost, match="no frame for 1.5 s"):
            for _ in frames:
                pass
        assert time.monotonic() - started < 1.5 + 1.0
    finally:
        rtsp_server.resume()
        source.close()


def test_stalled_server_at_open_times_out(rtsp_server):
    rtsp_server.pause()  # the kernel still accepts the TCP connection; RTSP never answers
    try:
        started = time.monotonic()
        # FFmpeg's own words were "Invalid data found when processing input"
        with pytest.raises(SourceLost, match="cannot open .*: no answer within 1.5 s$"):
            RtspSource(rtsp_server.url("live"), open_timeout=1.5, read_timeout=1.5)
        assert time.monotonic() - started < 1.5 * 2 + 1.0
    finally:
        rtsp_server.resume()


def test_nothing_listening_is_a_lost_source():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SourceLost, match=f"cannot open rtsp://u:\\*\\*\\*@127.0.0.1:{port}/live"):
        RtspSource(f"rtsp://u:topsecret@127.0.0.1:{port}/live", open_timeout=2)


def test_a_host_name_that_does_not_resolve_says_so():
    """FFmpeg's own message for it is 'Input/output error'."""
    with pytest.raises(SourceLost) as error:
        RtspSource("rtsp://u:topsecret@no-such-camera.invalid/live", open_timeout=2)
    message = str(error.value)  # the reason in brackets is the resolver's (no such name, no DNS)
    assert message.startswith("cannot open rtsp://u:***@no-such-camera.invalid/live: cannot resolve "
                              "no-such-camera.invalid (") and message.endswith("); check the host name")


def test_wrong_password_is_permanent_and_masked(make_rtsp_server):
    server = make_rtsp_server(auth="alice:s3cret")
    with pytest.raises(SourceUnavailable) as error:
        RtspSource(server.url("live", credentials="alice:wrongpass"))
    assert "wrongpass" not in str(error.value) and "alice:***@" in str(error.value)
    assert "401" in str(error.value)
    source = RtspSource(server.url("live"))
    try:
        assert source.name == f"rtsp://alice:***@127.0.0.1:{server.port}/live"
        assert next(source.frames()).image.shape == (240, 320, 3)
    finally:
        source.close()


def test_unknown_mount_is_permanent(rtsp_server):
    with pytest.raises(SourceUnavailable, match="cannot open"):
        RtspSource(rtsp_server.url("nosuchpath"))
