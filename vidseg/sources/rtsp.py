"""RTSP cameras through PyAV (FFmpeg), tuned for the freshest frame rather than smoothness.

TCP by default (no smeared frames from lost UDP packets), a small probe so even 4K streams
open in about a second, low-delay decoding, and an open and a read timeout always set: a
camera that stops answering raises `SourceLost` within the read timeout instead of hanging
the capture process. What FFmpeg read while opening (up to 0.5 s of the stream, with the
keyframe it opens with) is decoded but not passed on: only frames from when the stream is
live (a read waits for the camera), starting with the newest of those unless the first live
packet brings a frame of its own.
"""
from __future__ import annotations

import socket
import time
from fractions import Fraction
from typing import Iterator
from urllib.parse import urlsplit

import av
import numpy as np

from vidseg.secrets import mask
from vidseg.sources.base import SourceFrame
from vidseg.sources.reconnect import SourceLost, SourceUnavailable

TRANSPORTS = ("tcp", "udp")
LIVE_WAIT_S = 0.005  # a read that waits this long came from the camera, not from what was read ahead

# FFmpeg answers that no retry will change.
_PERMANENT = (av.error.HTTPUnauthorizedError, av.error.HTTPForbiddenError,
              av.error.HTTPNotFoundError, av.error.ProtocolNotFoundError)


class RtspSource:
    """One connection to an RTSP stream; `frames()` yields until the stream ends or fails.

    url: rtsp://[user:pass@]host[:port]/path (shown masked as `name`).
    transport: "tcp" (default) or "udp".
    open_timeout, read_timeout: seconds; a connect or any single read that takes longer fails.
    Raises SourceUnavailable (bad credentials, no such stream, no video) or SourceLost (anything
    a retry may fix) from the constructor, SourceLost from frames().
    """

    live = True
    frame_count = None

    def __init__(self, url: str, transport: str = "tcp", open_timeout: float = 10.0,
                 read_timeout: float = 5.0):
        if transport not in TRANSPORTS:
            raise SourceUnavailable(f"unknown RTSP transport {transport!r}; use tcp or udp")
        self.name = mask(url)
        self.read_timeout = read_timeout
        self.decode_errors = 0
        # A short probe opens a stream fast (docs/benchmarks/live.md). Its packets are kept
        # (no fflags=nobuffer): they hold the keyframe the stream opens with, without which
        # nothing decodes until the next one (never, for a stream with only that one).
        options = {"rtsp_transport": transport, "probesize": "262144", "analyzeduration": "500000"}
        if transport == "udp":
            options["buffer_size"] = str(4 << 20)  # a 4K keyframe spans thousands of datagrams
        host = urlsplit(url).hostname
        try:  # FFmpeg says only "Input/output error" when the name does not resolve
            socket.getaddrinfo(host, None)
        except socket.gaierror as error:
            raise SourceLost(f"cannot open {self.name}: cannot resolve {host} ({error.strerror}); "
                             "check the host name") from None
        started = time.monotonic()
        try:
            self._container = av.open(url, options=options, timeout=(open_timeout, read_timeout))
        except _PERMANENT as error:
            raise SourceUnavailable(f"cannot open {self.name}: {error.strerror}") from None
        except (av.FFmpegError, OSError) as error:
            # cut by the timeout, FFmpeg says "Invalid data found" or "Immediate exit requested"
            timed_out = time.monotonic() - started >= 0.9 * open_timeout
            raise SourceLost(f"cannot open {self.name}: "
                             + (f"no answer within {open_timeout:g} s" if timed_out else _reason(error))) from None
        if not self._container.streams.video:
            self._container.close()
            raise SourceUnavailable(f"{self.name} has no video stream")
        self._stream = self._container.streams.video[0]
        self.audio = bool(self._container.streams.audio)  # not recorded: live MP4s are video only
        codec = self._stream.codec_context
        codec.flags |= av.codec.context.Flags.low_delay  # also turns off frame threading's lag
        codec.thread_type = "SLICE"
        self.width, self.height = codec.width, codec.height
        self.fps = float(self._stream.average_rate) if self._stream.average_rate else None
        self.time_base = Fraction(1, 90000)
        self._origin = None

    def frames(self) -> Iterator[SourceFrame]:
        """image uint8 RGB [height, width, 3]; pts seconds on the capture clock since this
        connection's first frame; capture_time time.monotonic() when it was decoded.

        Ends when the stream does. A packet that does not decode is counted in `decode_errors`
        and skipped; a stall longer than read_timeout or a network error raises SourceLost.
        Frames decoded from what was read while opening are held back (module doc): played
        at once, they were seconds of stale video in a fraction of a second."""
        packets = self._container.demux(self._stream)
        held = None  # until the stream is live: the newest frame decoded
        live = False
        try:
            while True:
                waited = time.monotonic()
                packet = next(packets, None)
                wait = time.monotonic() - waited
                if packet is None:
                    if held is not None:
                        yield self._source_frame(held)
                    return
                if wait >= 0.9 * self.read_timeout:
                    # the read timeout cut this read; FFmpeg hands over what it had
                    raise SourceLost(f"{self.name}: no frame for {self.read_timeout:g} s")
                live = live or wait >= LIVE_WAIT_S
                try:
                    decoded = packet.decode()
                except av.FFmpegError:
                    self.decode_errors += 1
                    decoded = []
                if live and held is not None:
                    # shown as the stream goes live, unless a fresher frame comes with it (the
                    # two, a few ms apart, made a jumpy start to a recording)
                    if not decoded:
                        yield self._source_frame(held)
                    held = None
                for frame in decoded:
                    if live:
                        yield self._source_frame(frame)
                    else:
                        held = frame
        except av.ExitError:
            raise SourceLost(f"{self.name}: no frame for {self.read_timeout:g} s") from None
        except (av.FFmpegError, OSError) as error:
            raise SourceLost(f"{self.name}: {_reason(error)}") from None

    def _source_frame(self, frame: av.VideoFrame) -> SourceFrame:
        now = time.monotonic()
        if self._origin is None:
            self._origin = now
        return SourceFrame(np.ascontiguousarray(frame.to_ndarray(format="rgb24")), now - self._origin, now)

    def close(self) -> None:
        self._container.close()


def _reason(error: Exception) -> str:
    """The error without the URL FFmpeg appends to it."""
    return mask(getattr(error, "strerror", None) or error)
