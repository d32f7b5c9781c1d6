"""Reconnecting: backoff, outage reports, give-up, pts across gaps; then a real server."""
import threading
import time
from fractions import Fraction
from itertools import islice

import numpy as np
import pytest

from vidseg.sources.base import SourceFrame
from vidseg.sources.reconnect import Reconnecting, SourceLost, SourceUnavailable, backoff_delays
from vidseg.sources.rtsp import RtspSource


class ScriptedSource:
    """A live source that yields `n` frames then fails with `end` (None = ends normally)."""

    live, fps, time_base, frame_count = True, 30.0, Fraction(1, 1000), None

    def __init__(self, n, end=None, size=(4, 6)):
        self.n, self.end = n, end
        self.height, self.width = size
        self.closed = False
        self.name = "scripted"

    def frames(self):
        for _ in range(self.n):
            yield SourceFrame(np.full((self.height, self.width, 3), 7, np.uint8), 0.0, time.monotonic())
            time.sleep(0.001)
        if self.end:
            raise self.end

    def close(self):
        self.closed = True


def opener(script):
    """open_source() that follows `script`: a ScriptedSource to return or an exception to raise."""
    calls = iter(script)

    def open_source():
        step = next(calls)
        if isinstance(step, Exception):
            raise step
        return step

    return open_source


def test_backoff_doubles_from_one_second_to_thirty():
    assert list(islice(backoff_delays(), 8)) == [1, 2, 4, 8, 16, 30, 30, 30]


def test_outage_is_reported_once_each_way_and_counted():
    reports = []
    script = [ScriptedSource(3, SourceLost("cam: no frame for 5 s")),
              SourceLost("cam: refused"), SourceLost("cam: refused"),
              ScriptedSource(2, None, size=(8, 12)),  # comes back at another size, then ends
              ScriptedSource(4)]
    source = Reconnecting(opener(script), "rtsp://u:pw@cam/x", first_delay=0.01, longest_delay=0.04,
                          report=reports.append)
    frames = list(islice(source.frames(), 9))
    source.close()
    assert source.reconnects == 2
    # the two outages' backoff: 0.01 + 0.02 s, then 0.01 s (it used to show nowhere in --stats)
    assert 0.04 <= source.stats()["outage_s"] < 1
    assert reports == ["cam: no frame for 5 s; reconnecting", "rtsp://u:***@cam/x: reconnected after "
                       + reports[1].split("after ")[1],
                       "rtsp://u:***@cam/x: stream ended; reconnecting", reports[3]]
    assert all(f.image.shape == (4, 6, 3) for f in frames)  # resized to the first size
    pts = [f.pts for f in frames]
    assert pts[0] == 0 and all(b > a for a, b in zip(pts, pts[1:]))
    assert pts == pytest.approx([f.capture_time - frames[0].capture_time for f in frames])
    assert all(s.closed for s in script[:1] + script[3:4])


def test_gives_up_after_max_retries_with_the_last_cause():
    reports = []
    script = [ScriptedSource(2, SourceLost("cam: stream ended"))] + [SourceLost("cam: refused")] * 3
    source = Reconnecting(opener(script), "cam", max_retries=3, first_delay=0.01, report=reports.append)
    frames = source.frames()
    assert len(list(islice(frames, 2))) == 2
    started = time.monotonic()
    with pytest.raises(SourceUnavailable, match="cam: refused; gave up after 3 retries"):
        next(frames)
    assert time.monotonic() - started < 1  # 0.01 + 0.02 + 0.04 s of backoff
    assert reports == ["cam: stream ended; reconnecting"]


def test_no_retries_means_no_reconnecting_line():
    """--max-retries 0: a lost stream said "reconnecting", then "gave up after 0 retries"."""
    reports = []
    source = Reconnecting(opener([ScriptedSource(2, SourceLost("cam: stream ended"))]), "cam", max_retries=0,
                          report=reports.append)
    frames = source.frames()
    assert len(list(islice(frames, 2))) == 2
    with pytest.raises(SourceUnavailable, match=r"^cam: stream ended; not reconnecting \(--max-retries 0\)$"):
        next(frames)
    assert reports == []


def test_connections_that_end_before_a_frame_spend_the_retries():
    """A server that accepts and hangs up at once: each connection opened, ended with no frame,
    and the outage began its count again, so --max-retries 1 retried for ever."""
    reports = []
    script = [ScriptedSource(2)] + [ScriptedSource(0)] * 2 + [ScriptedSource(5)]
    source = Reconnecting(opener(script), "cam", max_retries=2, first_delay=0.01, report=reports.append)
    frames = source.frames()
    assert len(list(islice(frames, 2))) == 2
    with pytest.raises(SourceUnavailable, match="cam: stream ended; gave up after 2 retries"):
        next(frames)
    assert reports == ["cam: stream ended; reconnecting"]


def test_first_open_is_retried_and_permanent_errors_are_not():
    reports = []
    source = Reconnecting(opener([SourceLost("cam: refused"), ScriptedSource(1)]), "cam",
                          first_delay=0.01, report=reports.append)
    assert source.open() is source
    assert source.width == 6 and reports[0] == "cam: refused; retrying"
    assert reports[1].startswith("cam: connected after")
    with pytest.raises(SourceUnavailable, match="401"):
        Reconnecting(opener([SourceUnavailable("cam: 401 Unauthorized")]), "cam").open()


def test_a_source_given_a_size_opens_when_read_and_fits_its_frames_to_it():
    """A camera down at the start of a run of several: it is sized before it is seen, opened
    by frames(), and its 4x6 frames are fitted into 8x16 with their aspect kept."""
    calls = []
    steps = opener([SourceLost("cam: refused"), ScriptedSource(2)])

    def open_source():
        calls.append(1)
        return steps()

    source = Reconnecting(open_source, "cam", first_delay=0.01, size=(16, 8), max_frames=2, report=lambda m: None)
    assert (source.width, source.height) == (16, 8) and calls == []
    frames = list(source.frames())
    assert len(calls) == 2 and len(frames) == 2
    image = frames[0].image
    assert image.shape == (8, 16, 3)
    assert (image[:, 2:14] == 7).all() and (image[:, :2] == 0).all() and (image[:, 14:] == 0).all()


def test_interrupt_ends_the_first_wait_at_once_without_an_error():
    """Ctrl-C while a source that was down at the start is still awaited: frames() just ends."""
    source = Reconnecting(opener([SourceLost("cam: refused")] * 10), "cam", first_delay=30, size=(6, 4),
                          end_on_give_up=True, report=lambda m: None)
    threading.Timer(0.3, source.interrupt).start()
    started = time.monotonic()
    assert list(source.frames()) == []
    assert time.monotonic() - started < 2
    assert source.stats() == {"reconnects": 0, "outage_s": 0.0, "streamed_s": 0.0}


def test_close_ends_a_long_backoff_wait_at_once():
    script = [ScriptedSource(1, SourceLost("cam: gone"))] + [SourceLost("cam: refused")] * 10
    source = Reconnecting(opener(script), "cam", first_delay=30, report=lambda m: None)
    frames = source.frames()
    next(frames)
    threading.Timer(0.3, source.close).start()
    started = time.monotonic()
    assert list(frames) == []
    assert time.monotonic() - started < 2


def test_interrupt_ends_an_open_that_gets_no_answer_at_once():
    """An RTSP open that gets no answer blocks in FFmpeg for its whole timeout (10 s), deaf to
    signals: Ctrl-C while reconnecting took 7-8 s. The source it opens late is closed."""
    late = ScriptedSource(5)

    def open_without_answer():
        time.sleep(1.5)
        return late

    script = [ScriptedSource(1, SourceLost("cam: gone"))]
    source = Reconnecting(lambda: script.pop(0) if script else open_without_answer(), "cam",
                          first_delay=0.01, report=lambda m: None)
    frames = source.frames()
    next(frames)
    threading.Timer(0.3, source.interrupt).start()
    started = time.monotonic()
    assert list(frames) == []
    assert time.monotonic() - started < 1
    time.sleep(1.5)
    assert late.closed


class StallingSource(ScriptedSource):
    """One frame, then a read that blocks for `stall` s (a camera that stopped sending) and
    fails; records whether it was closed while a read was blocked."""

    def __init__(self, stall):
        super().__init__(1)
        self.stall, self.reading, self.closed_under_read = stall, False, False

    def frames(self):
        yield SourceFrame(np.full((self.height, self.width, 3), 7, np.uint8), 0.0, time.monotonic())
        self.reading = True
        time.sleep(self.stall)
        self.reading = False
        raise SourceLost(f"cam: no frame for {self.stall} s")

    def close(self):
        self.closed_under_read |= self.reading
        super().close()


def test_interrupt_ends_a_blocked_read_at_once_and_the_source_is_closed_after_it():
    """A read blocked on a camera that stopped sending held Ctrl-C back until its read timeout.
    frames() now ends at once; the source is closed when the read returns, never under it."""
    stalling = StallingSource(4)
    source = Reconnecting(lambda: stalling, "cam", report=lambda m: None)
    frames = source.frames()
    next(frames)
    threading.Timer(0.3, source.interrupt).start()
    started = time.monotonic()
    assert list(frames) == []
    assert time.monotonic() - started < 2  # not the 4 s of the read
    source.close()
    assert not stalling.closed
    while not stalling.closed and time.monotonic() - started < 20:
        time.sleep(0.05)
    assert stalling.closed and not stalling.closed_under_read


class TimedSource(ScriptedSource):
    """Frames every 10 ms for ever."""

    def frames(self):
        while True:
            time.sleep(0.01)
            yield SourceFrame(np.full((self.height, self.width, 3), 7, np.uint8), 0.0, time.monotonic())


def test_duration_counts_from_the_first_frame_not_from_connecting():
    """`--duration 0.5` on a camera that takes ~1 s to connect gave no frame and no file."""
    def slow_open():
        time.sleep(0.6)
        return TimedSource(0)

    source = Reconnecting(slow_open, "cam", duration=0.3, report=lambda m: None)
    pts = [f.pts for f in source.frames()]
    assert 20 <= len(pts) <= 31 and pts[-1] == pytest.approx(0.3, abs=0.05)
    assert source.stats()["streamed_s"] == pytest.approx(0.3, abs=0.05)


@pytest.mark.rtsp
def test_server_killed_and_restarted_stream_continues(rtsp_server):
    reports = []
    source = Reconnecting(lambda: RtspSource(rtsp_server.url("live"), open_timeout=2, read_timeout=2),
                          rtsp_server.url("live"), report=reports.append)
    frames = source.frames()
    before = list(islice(frames, 20))
    rtsp_server.kill()
    threading.Timer(1.5, rtsp_server.start).start()
    after = []
    for frame in frames:
        after.append(frame)
        if source.reconnects and len(after) >= 40:
            break
    source.close()
    assert source.reconnects == 1
    assert len(reports) == 2 and reports[0].endswith("; reconnecting") and "reconnected after" in reports[1]
    pts = np.array([f.pts for f in before + after])
    assert np.all(np.diff(pts) > 0)
    assert np.diff(pts).max() > 1.0  # the outage shows in the timestamps: playback stays real-time


@pytest.mark.rtsp
def test_stalled_server_reconnects_within_the_read_timeout(rtsp_server):
    reports = []
    source = Reconnecting(lambda: RtspSource(rtsp_server.url("live"), open_timeout=1, read_timeout=1),
                          rtsp_server.url("live"), report=reports.append)
    got, stop = [], threading.Event()

    def read():
        for frame in source.frames():
            got.append(frame)
            if stop.is_set():
                break

    reader = threading.Thread(target=read)
    reader.start()
    deadline = time.monotonic() + 10
    while len(got) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    rtsp_server.pause()
    paused = time.monotonic()
    while not reports and time.monotonic() - paused < 5:
        time.sleep(0.05)
    try:
        assert reports and reports[0].endswith("no frame for 1 s; reconnecting")
        assert time.monotonic() - paused < 1 + 1.0  # never a hang: lost within the read timeout
    finally:
        rtsp_server.resume()
    while not source.reconnects and time.monotonic() - paused < 20:
        time.sleep(0.05)
    stop.set()
    reader.join(timeout=10)
    source.close()
    assert not reader.is_alive()
    assert source.reconnects == 1 and "reconnected after" in reports[-1]


def test_end_on_give_up_ends_the_frames_and_keeps_the_reason():
    reports = []
    script = [ScriptedSource(2, SourceLost("cam: stream ended"))] + [SourceLost("cam: refused")] * 2
    source = Reconnecting(opener(script), "cam", max_retries=2, first_delay=0.01, report=reports.append,
                          end_on_give_up=True)
    assert len(list(source.frames())) == 2
    stats = source.stats()
    assert stats.pop("streamed_s") < 0.1
    assert 0.03 <= stats.pop("outage_s") < 1  # the backoff before giving up: 0.01 + 0.02 s
    assert stats == {"reconnects": 0, "error": "cam: refused; gave up after 2 retries"}
    assert reports == ["cam: stream ended; reconnecting", "cam: refused; gave up after 2 retries"]


def test_a_lone_source_leaves_its_give_up_to_the_runs_last_line():
    reports = []
    script = [ScriptedSource(2, SourceLost("cam: stream ended"))] + [SourceLost("cam: refused")] * 2
    source = Reconnecting(opener(script), "cam", max_retries=2, first_delay=0.01, report=reports.append,
                          end_on_give_up=True, alone=True)
    assert len(list(source.frames())) == 2
    assert source.stats()["error"] == "cam: refused; gave up after 2 retries"
    assert reports == ["cam: stream ended; reconnecting"]
