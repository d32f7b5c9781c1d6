"""Keep a live source going: reopen it with exponential backoff when it ends, fails or stalls.

Live sources (camera.py, rtsp.py) raise `SourceLost` when reopening may help (stream ended,
read timed out, connection refused) and `SourceUnavailable` when it cannot (wrong password,
no such stream or device). `Reconnecting` wraps the function that opens one, so the rest of
the pipeline never sees an outage: frames simply stop for a while, and their pts (seconds on
the capture clock since the first frame) keep counting, so an MP4 plays across the gap.
"""
from __future__ import annotations

import sys
import threading
import time
from fractions import Fraction
from functools import partial
from typing import Any, Callable, Iterator, Optional

import cv2
import numpy as np

from vidseg.secrets import mask
from vidseg.sources.base import FrameSource, SourceFrame


_GIVEN_UP = object()  # what _heeding_close returns when the wait was ended by close() or interrupt()


class SourceLost(Exception):
    """The source ended, failed or stalled; opening it again may bring it back."""


class SourceUnavailable(Exception):
    """The source cannot be used and retrying will not change that (the message says why)."""


def backoff_delays(first: float = 1.0, longest: float = 30.0) -> Iterator[float]:
    """1, 2, 4, 8, 16, 30, 30, ... seconds."""
    delay = first
    while True:
        yield delay
        delay = min(delay * 2, longest)


def report_line(message: str) -> None:
    """The default `report`: `vidseg: message` on stderr."""
    print(f"vidseg: {message}", file=sys.stderr, flush=True)


class Reconnecting:
    """A FrameSource that reopens `open_source()` after every outage.

    open_source: returns an open live FrameSource, raises SourceLost or SourceUnavailable.
    name: the source as the user wrote it (masked before it is shown).
    max_retries: reopen attempts per outage before giving up with SourceUnavailable
        (None = never give up). The first open is retried the same way.
    report: called with one line when an outage starts and one when it ends.
    duration, max_frames: end frames() `duration` seconds after the first frame, or after
        `max_frames` frames. Before the first frame `duration` bounds the wait for a source that
        is down, counted from the first open() or frames() call; a first connection that works
        always gets its `duration` of frames, however long it took.
    end_on_give_up: when an outage outlasts max_retries, end frames() (the reason goes to
        stats()["error"], and to `report` unless `alone`) instead of raising SourceUnavailable,
        so the stage reading it finishes normally and its frame counts are kept.
    alone: the run's only source, whose giving up ends the run: its reason is then said once,
        by the run's last line, not also when it happens.
    size: (width, height) every frame is fitted to; None: the size of the first connection.
    reconnects: outages survived so far; skipped: undecodable packets of closed connections.

    Nothing is opened until `open()` or `frames()`; width, height, fps, time_base and audio
    (whether the stream carries sound) are known after `open()` (width and height at once when
    `size` is given).
    """

    live = True
    frame_count = None

    def __init__(self, open_source: Callable[[], FrameSource], name: str,
                 max_retries: Optional[int] = None, first_delay: float = 1.0,
                 longest_delay: float = 30.0, report: Callable[[str], None] = report_line,
                 duration: Optional[float] = None, max_frames: Optional[int] = None,
                 end_on_give_up: bool = False, size: Optional[tuple] = None, alone: bool = False):
        self.name = mask(name)
        self.error: Optional[str] = None
        self._end_on_give_up = end_on_give_up
        self._alone = alone
        self._duration = duration
        self._wait_until: Optional[float] = None    # before the first frame
        self._deadline: Optional[float] = None      # from the first frame on
        self._max_frames = max_frames
        self._count = 0
        self.reconnects = 0
        self.outage_s = 0.0  # seconds spent without a connection after the first frame
        self.skipped = 0
        self._open_source = open_source
        self._max_retries = max_retries
        self._delays = (first_delay, longest_delay)
        self._report = report
        self._closed = threading.Event()
        self._origin: Optional[float] = None
        self._last: Optional[float] = None
        self._source: Optional[FrameSource] = None
        self.width, self.height = size or (None, None)
        self.fps: Optional[float] = None
        self.time_base: Optional[Fraction] = None
        self.audio = False

    def open(self) -> "Reconnecting":
        """The first connection, retried as after an outage. Raises SourceUnavailable when the
        source cannot be used, when the retries run out, or when it is closed (or its duration
        ends) before it comes. Returns self."""
        self._start_clock()
        try:
            self._source = self._open_heeding_close()
            if self._source is None:
                raise SourceUnavailable(f"{self.name}: stopped before it came")
        except SourceLost as error:
            if self._max_retries == 0:
                raise SourceUnavailable(mask(error)) from None
            started = time.monotonic()
            self._report(f"{mask(error)}; retrying")
            self._source = self._open_with_retries(str(error))
            if self._source is None:
                raise SourceUnavailable(f"{mask(error)}; stopped before it came back") from None
            self._report(f"{self.name}: connected after {time.monotonic() - started:.1f} s")
        if self.width is None:
            self.width, self.height = self._source.width, self._source.height
        self.fps = self._source.fps
        self.time_base = self._source.time_base
        self.audio = getattr(self._source, "audio", False)
        return self

    def _open_with_retries(self, cause: str, attempts: Optional[Iterator] = None) -> Optional[FrameSource]:
        """Waits 1, 2, 4, ... s before each attempt; None if close() was called meanwhile.

        cause: why the source is down, quoted if we give up. attempts: (number, delay) pairs
        to go on from, when an outage has had attempts already (`_outage`)."""
        for attempt, delay in attempts or enumerate(backoff_delays(*self._delays), start=1):
            if self._max_retries is not None and attempt > self._max_retries:
                retries = f"{self._max_retries} retr{'y' if self._max_retries == 1 else 'ies'}"
                raise SourceUnavailable(f"{mask(cause)}; gave up after {retries}")
            limit = self._deadline if self._deadline is not None else self._wait_until
            if limit is not None:
                delay = min(delay, max(0.0, limit - time.monotonic()))
            if self._closed.wait(delay) or self._done() or limit is not None and time.monotonic() >= limit:
                return None
            try:
                source = self._open_heeding_close()
            except SourceLost as error:
                cause = str(error)
                continue
            return source

    def _open_heeding_close(self) -> Optional[FrameSource]:
        """open_source() heeding close() (see _heeding_close): an RTSP connection that gets no
        answer blocks in FFmpeg, deaf to signals, for its whole open timeout. None when closed
        meanwhile (a source opened after that is closed at once)."""
        source = self._heeding_close(self._open_source, lambda late: late is not None and late.close())
        return None if source is _GIVEN_UP else source

    def _read(self, frames: Iterator[SourceFrame]) -> Optional[SourceFrame]:
        """The current source's next frame from `frames`, None at its end, heeding close() (see
        _heeding_close): a camera or stream that stops sending blocks the read in OpenCV or
        FFmpeg, deaf to signals, until its read timeout. None too when closed meanwhile: the
        source is then left to the reading thread, which closes it once the read returns (it is
        never closed under a read)."""
        source = self._source
        frame = self._heeding_close(partial(next, frames, None), lambda _frame: source.close())
        if frame is _GIVEN_UP:
            self.skipped += int(getattr(source, "decode_errors", 0))
            self._source = None
            return None
        return frame

    def _heeding_close(self, call: Callable[[], Any], abandon: Callable[[Any], None]) -> Any:
        """call() in a thread of its own, so that close() or interrupt() ends the wait for it
        at once. Returns what call() returns, or raises what it raised; _GIVEN_UP when closed
        meanwhile, and then abandon(what call() returns, None if it raised) runs in that thread
        once call() returns."""
        outcome: list = []
        lock, done = threading.Lock(), threading.Event()

        def attempt() -> None:
            try:
                result = (call(), None)
            except BaseException as error:  # noqa: BLE001 - raised in the waiting thread
                result = (None, error)
            with lock:
                if done.is_set():  # given up on: nobody will take it
                    abandon(result[0])
                    return
                outcome.append(result)
                done.set()

        threading.Thread(target=attempt, name="source", daemon=True).start()
        while not done.wait(0.05):
            if self._closed.is_set():
                with lock:
                    if not done.is_set():
                        done.set()
                        return _GIVEN_UP
        value, error = outcome[0]
        if error is not None:
            raise error
        return value

    def frames(self) -> Iterator[SourceFrame]:
        """Yields frames until close(), the duration or the frame limit; an outage only pauses
        the flow.

        image uint8 RGB [height, width, 3] (other sizes fitted to it, see `fit`);
        pts seconds on the capture clock since the first frame; capture_time time.monotonic()."""
        self._start_clock()
        try:
            if self._source is None:
                if self._done():
                    return
                self.open()
            frames = self._source.frames()
            while frames is not None and not self._done():
                try:
                    while (frame := self._read(frames)) is not None:
                        yield self._stamp(frame)
                        if self._done():
                            return
                    cause = f"{self.name}: stream ended"
                except SourceLost as error:
                    cause = str(error)
                self._release()
                if self._done():
                    return
                frames = yield from self._outage(mask(cause))
        except SourceUnavailable as error:
            if self._closed.is_set():
                return  # closed while the source was awaited: no error
            if not self._end_on_give_up:
                raise
            self.error = str(error)
            if not self._alone:
                self._report(self.error)

    def _outage(self, cause: str):
        """Reports the outage, reopens the source until a frame arrives, yields that frame and
        returns the reopened source's frame iterator (None if close() was called)."""
        if self._max_retries == 0:
            raise SourceUnavailable(f"{cause}; not reconnecting (--max-retries 0)")
        started = time.monotonic()
        self._report(f"{cause}; reconnecting")
        # one count for the outage: a connection that opens and ends before a frame is a retry
        # spent (a server that accepts and hangs up at once was retried for ever)
        attempts = enumerate(backoff_delays(*self._delays), start=1)
        try:
            while True:
                self._source = self._open_with_retries(cause, attempts)
                if self._source is None:
                    return None
                frames = self._source.frames()
                try:
                    first = self._read(frames)
                    if first is not None:
                        break
                    cause = f"{self.name}: stream ended"
                except SourceLost as error:
                    cause = mask(error)
                self._release()
        finally:
            self.outage_s += time.monotonic() - started
        self.reconnects += 1
        self._report(f"{self.name}: reconnected after {time.monotonic() - started:.1f} s")
        yield self._stamp(first)
        return frames

    def _start_clock(self) -> None:
        if self._wait_until is None and self._duration is not None:
            self._wait_until = time.monotonic() + self._duration

    def _done(self) -> bool:
        """close() was called, or the duration or frame limit is reached."""
        return (self._closed.is_set() or (self._max_frames is not None and self._count >= self._max_frames)
                or (self._deadline is not None and time.monotonic() >= self._deadline))

    def _stamp(self, frame: SourceFrame) -> SourceFrame:
        """Re-times a frame on this source's clock and keeps its size constant."""
        if self._origin is None:
            self._origin = frame.capture_time
            if self._duration is not None:
                self._deadline = frame.capture_time + self._duration
        self._last = frame.capture_time
        self._count += 1
        image = frame.image
        if image.shape[:2] != (self.height, self.width):
            image = fit(image, self.width, self.height)
        return SourceFrame(image, frame.capture_time - self._origin, frame.capture_time)

    def stats(self) -> dict:
        """For the run's --stats (per source): reconnects; outage_s, the seconds without a
        connection between the first frame and the end; streamed_s, the seconds from the first
        frame to the last plus one frame's interval (0 with fewer than two frames); error."""
        span = self._last - self._origin if self._count > 1 else 0.0
        return {"reconnects": self.reconnects, "outage_s": round(self.outage_s, 3),
                "streamed_s": round(span * self._count / (self._count - 1), 3) if span else 0.0,
                **({"error": self.error} if self.error else {})}

    def _release(self) -> None:
        if self._source is None:  # left to a read given up on (see _read)
            return
        self.skipped += int(getattr(self._source, "decode_errors", 0))
        self._source.close()
        self._source = None

    def interrupt(self) -> None:
        """Ends frames() at once, even in a read or an open that gets no answer, or in a retry
        wait; safe from another thread (the reading thread then calls close())."""
        self._closed.set()

    def close(self) -> None:
        """Ends frames() as interrupt() does and releases the current source: call it from the
        thread that reads frames(), or once frames() has ended."""
        self._closed.set()
        self._release()


def fit(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """image (uint8 [h, w, 3]) scaled to fit width × height, its aspect kept, centred on black."""
    h, w = image.shape[:2]
    scale = min(width / w, height / h)
    new_w, new_h = max(1, min(width, round(w * scale))), max(1, min(height, round(h * scale)))
    out = np.zeros((height, width, 3), np.uint8)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    out[top:top + new_h, left:left + new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
    return out
