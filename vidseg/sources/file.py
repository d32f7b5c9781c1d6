"""A video file as a FrameSource: PyAV decode with threads, rotation applied, damage skipped.

Anything FFmpeg decodes works (H.264, HEVC, MPEG-4 Part 2 in AVI, ...). Frames come out
upright (the stream's display rotation applied, as players do): as the decoder's I420 planes
[H*3/2, W] when it gives yuv420p at an even size (no conversion at all; a `DecodedI420`,
copied once, straight into the ring slot), else as uint8 RGB [H, W, 3]. Packets the decoder
rejects are counted in `skipped` and decoding goes on, so a truncated or partly corrupt file
yields every frame that can be decoded. In a format whose clock may restart (MPEG-TS:
recordings joined end to end, a broadcast), timestamps that jump are made to run on, as
ffmpeg does, so that no frame is squashed against the one before it.
"""
from __future__ import annotations

import os
import time
from collections import Counter
from fractions import Fraction
from typing import Iterator, Optional

import av
import numpy as np

from vidseg.errors import InputError
from vidseg.sources.base import SourceFrame

MAX_DEMUX_ERRORS = 100  # consecutive unreadable packets before giving up on the rest of a file
# ffmpeg's rule for formats whose clock may restart: a dts this far behind the last one, or
# this far ahead of it (its -dts_delta_threshold), starts a new clock
CLOCK_BACK_S, CLOCK_AHEAD_S = 0.1, 10.0
MUXER_TAGS = {"major_brand", "minor_version", "compatible_brands", "encoder"}  # the file's writer's, not its own


def probe(path: str) -> dict:
    """Open `path` and describe its video: width, height (after rotation), fps, time_base,
    frame_count (None if unknown), frames_listed (True: frame_count is the container's own
    count of packets, as an MP4's index gives; False: an estimate from the duration), end (s:
    where the container says the video ends, None if it does not say; a Matroska file gives
    its end, other formats may give a span that reads as earlier, never later),
    rotation (clockwise degrees), has_audio, codec, stream (index of the video stream:
    FFmpeg's best, e.g. the one marked default, never a cover picture), start (s, the earliest
    start of it and of the audio stream copied; None if unknown), sar (pixel aspect ratio as a
    Fraction, after rotation; None if unknown), colour (the stream's {"primaries", "trc",
    "space", "range"} as FFmpeg's AVColor* numbers, 2/0 if unspecified), audio_codec (of the
    audio stream copied, None if none), left_out (stream type → count of the streams an MP4 of
    it does not carry: other audio tracks, subtitles, data), metadata (the file's own tags:
    creation_time, title, location; not the muxer's).
    Raises InputError when the file is missing, not a video, or has no video stream."""
    if not os.path.exists(path):
        raise InputError(f"input not found: {path}")
    if os.path.isdir(path):
        raise InputError(f"input is a directory, not a video file: {path}")
    if not os.path.isfile(path):  # FFmpeg's open of a pipe with no writer blocks, deaf to Ctrl-C
        raise InputError(f"{path} is a pipe or a device, not a file: vidseg reads its input more than once "
                         "(to probe it, to decode it, for its audio); save the video to a file first")
    try:
        container = av.open(path, metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {path} as a video ({_reason(e)}); give a video file FFmpeg can decode") from None
    with container:
        if container.format.name == "image2" or container.format.name.endswith("_pipe"):  # png_pipe, jpeg_pipe, ...
            raise InputError(f"{path} is a picture, not a video: segment it with `vidseg image {path}`")
        # a cover picture (an MP3's or M4A's album art) is a one-frame "video" stream: not video
        videos = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
        if not videos:
            raise InputError(f"{path} has no video stream; give a file with video")
        stream = container.streams.best("video")
        if stream not in videos:
            stream = videos[0]
        ctx = stream.codec_context
        if not ctx.width or not ctx.height:
            raise InputError(f"cannot read {path} as a video (no frame size in its video stream)")
        rotation = _stream_rotation(container, stream)
        w, h = (ctx.height, ctx.width) if rotation in (90, 270) else (ctx.width, ctx.height)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if container.format.flags & av.format.Flags.no_timestamps.value:
            # a raw stream (.h264, .hevc): frames come without pts and are timed by this rate;
            # the average is FFmpeg's 25 fps default there, the guess the bitstream's own
            rate = stream.guessed_rate or rate
        fps = float(rate) if rate else None
        count = stream.frames or None
        listed = count is not None
        first = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        end = first + float(stream.duration * stream.time_base) if stream.duration else None
        if count is None:  # Matroska gives only the container's duration, which is its end
            end = end or (container.duration or 0) / 1e6
            count = int(round((end - first) * fps)) or None if fps and end > first else None
        # none when no audio stream is usable (damage can make FFmpeg see one with no parameters)
        audio = [best] if (best := container.streams.best("audio")) is not None else []
        left_out = Counter(s.type for s in container.streams if s not in (stream, *audio)
                           and not s.disposition & av.stream.Disposition.attached_pic)
        starts = [float(s.start_time * s.time_base) for s in (stream, *audio)
                  if s.start_time is not None]
        sar = stream.sample_aspect_ratio
        if sar and rotation in (90, 270):
            sar = 1 / sar
        return dict(width=w, height=h, fps=fps, rate=Fraction(rate) if rate else None,
                    time_base=Fraction(stream.time_base), frame_count=count, frames_listed=listed, end=end or None,
                    rotation=rotation,
                    has_audio=bool(audio), codec=ctx.name, stream=stream.index,
                    audio_codec=audio[0].codec_context.name if audio else None, left_out=dict(left_out),
                    metadata={k: v for k, v in container.metadata.items() if k not in MUXER_TAGS},
                    start=min(starts) if starts else None, sar=Fraction(sar) if sar else None,
                    colour=dict(primaries=int(ctx.color_primaries), trc=int(ctx.color_trc),
                                space=int(ctx.colorspace), range=int(ctx.color_range)))


def _reason(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e)


def _stream_rotation(container, stream) -> int:
    """Clockwise display rotation in degrees (0/90/180/270) from the first decoded frame's
    display matrix; FFmpeg's `rotation` is counter-clockwise. One decoder thread: frame
    threads would only start threads and hold the first frame back."""
    stream.codec_context.thread_count = 1
    try:
        for frame in container.decode(stream):
            return int(round(-frame.rotation)) % 360 if frame.rotation else 0
    except av.error.FFmpegError:
        pass
    return 0


def resilient_demux(container, stream, counter=None) -> Iterator[av.Packet]:
    """container.demux(stream) that steps over damaged data: each unreadable packet adds one
    to counter.skipped and demuxing resumes after it (up to MAX_DEMUX_ERRORS in a row). In a
    format whose clock may restart, packets come with their timestamps made continuous
    (`ClockJoin`)."""
    errors = 0
    join = ClockJoin(stream.time_base) if container.format.flags & av.format.Flags.ts_discont.value else None
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except (av.error.FFmpegError, IndexError):  # IndexError: PyAV meets a stream born of garbage
            if counter is not None:
                counter.skipped += 1
            errors += 1
            if errors > MAX_DEMUX_ERRORS:
                return
            packets = container.demux(stream)
            continue
        errors = 0
        if join is not None:
            join.fix(packet)
        yield packet


class ClockJoin:
    """Makes one stream's packet timestamps run on where the clock restarts (dts more than
    CLOCK_BACK_S back or CLOCK_AHEAD_S ahead of the last): from there on they are moved so that
    the packet follows the last one by its usual step. Video and audio, demuxed apart, each
    join their own clock; they restart at the same point of the file, so they stay together to
    within a packet's duration."""

    def __init__(self, time_base: Fraction):
        self._back, self._ahead = round(CLOCK_BACK_S / time_base), round(CLOCK_AHEAD_S / time_base)
        self._shift = 0  # ticks added from the last restart on
        self._last: Optional[int] = None  # dts of the last packet, moved
        self._step = 1  # ticks between the last two packets

    def fix(self, packet: av.Packet) -> None:
        if packet.dts is None:
            return
        dts = packet.dts + self._shift
        if self._last is not None and not -self._back <= dts - self._last <= self._ahead:
            moved = self._last + (packet.duration or self._step) - dts
            self._shift += moved
            dts += moved
        elif self._last is not None and dts > self._last:
            self._step = dts - self._last
        self._last = dts
        if self._shift:
            packet.dts = dts
            if packet.pts is not None:
                packet.pts += self._shift


def decode_threads() -> int:
    """Decoder threads for a file: half the CPUs this process may use, at least one.

    The encoder runs alongside (sink process, 1.5 threads per CPU); FFmpeg's automatic count
    (CPUs + 1) on top oversubscribes the machine, and frame-threaded decoding itself costs CPU:
    on 2 vCPUs one thread decoded with 28 % less CPU at 4K (still 31 fps) and 10 % less at
    1080p (docs/benchmarks/runtime.md)."""
    return max(1, len(os.sched_getaffinity(0)) // 2)


class FileSource:
    """Frames of a video file (see module doc); the first `max_frames` only, if given.
    threads: decoder threads (None: `decode_threads()`, 0: FFmpeg's automatic count).
    info: `probe(path)`, when the caller has it already (saves opening and decoding the first
    frame again at the start of the capture stage). `skipped` counts undecodable packets."""

    live = False

    def __init__(self, path: str, threads: Optional[int] = None, max_frames: Optional[int] = None,
                 info: Optional[dict] = None):
        info = info or probe(path)
        self.path = path
        self.name = os.path.basename(path)
        self.width, self.height = info["width"], info["height"]
        self.fps, self.time_base, self.frame_count = info["fps"], info["time_base"], info["frame_count"]
        self.rotation = info["rotation"]
        self.max_frames = max_frames
        if max_frames is not None and (self.frame_count is None or self.frame_count > max_frames):
            self.frame_count = max_frames
        self.skipped = 0
        self.packets = 0  # video packets read (a frame each; an edit list may hide some of them)
        self.end_s: Optional[float] = None  # where the last frame read ends
        self.last_duration: Optional[float] = None  # seconds the last frame read lasts, if the file says
        self._container = av.open(path, metadata_errors="ignore")
        self._stream = self._container.streams[info["stream"]]
        self._stream.thread_type = "AUTO"
        self._stream.codec_context.thread_count = decode_threads() if threads is None else threads
        self._coded_size = (self._stream.codec_context.width, self._stream.codec_context.height)

    def frames(self) -> Iterator[SourceFrame]:
        index = 0
        for packet in resilient_demux(self._container, self._stream, self):
            self.packets += packet.size > 0  # not the demuxer's empty flush packet
            try:
                decoded = packet.decode()
            except av.error.FFmpegError:
                self.skipped += 1
                continue
            for frame in decoded:
                if self.max_frames is not None and index >= self.max_frames:
                    return
                yield self._to_source_frame(frame, index)
                index += 1

    def _to_source_frame(self, frame: av.VideoFrame, index: int) -> SourceFrame:
        if (frame.width, frame.height) != self._coded_size:
            # the stream changed size (joined recordings, a broadcast): scaled to its first
            # size, as ffmpeg does, which the ring's slots and the encoder were made for
            frame = frame.reformat(width=self._coded_size[0], height=self._coded_size[1])
        if self.rotation == 0 and frame.format.name == "yuv420p" and frame.width % 2 == 0 and frame.height % 2 == 0:
            # The decoder's own planes, no colour conversion: I420 [H*3/2, W], copied once where needed.
            image, fmt = DecodedI420(frame), "yuv420p"
        else:
            image, fmt = frame.to_ndarray(format="rgb24"), "rgb24"
            if self.rotation:
                image = _rotate(image, self.rotation)
            image = np.ascontiguousarray(image)
        if frame.pts is not None:
            pts = float(frame.pts * self.time_base)
        else:
            pts = index / (self.fps or 25.0)
        # its own duration (a variable-rate file's last frame may be held for seconds, or not)
        self.last_duration = float(frame.duration * self.time_base) if frame.duration else None
        self.end_s = max(self.end_s or pts, pts + (self.last_duration or 1.0 / (self.fps or 25.0)))
        return SourceFrame(image=image, pts=pts, capture_time=time.monotonic(), format=fmt)

    def stats(self) -> dict:
        return {"packets": self.packets, "end_s": self.end_s}

    def close(self) -> None:
        self._container.close()


def _rotate(image: np.ndarray, degrees: int) -> np.ndarray:
    """image turned `degrees` (90/180/270) clockwise. OpenCV is imported only here: the main
    process probes files through this module and never needs it (0.2 s of its start-up)."""
    import cv2

    codes = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}
    return cv2.rotate(image, codes[degrees])


class DecodedI420:
    """A yuv420p picture still in the decoder's buffers, standing in for its I420 array.

    shape: (H*3/2, W), the array's. copy_to(dst) writes the three planes straight into dst
    (the capture stage's ring slot): one copy, where PyAV's to_ndarray and then a copy into
    the slot make two (4K: 2.7 ms instead of 6.8 ms per frame). np.asarray(it) gives the array.
    """

    dtype = np.dtype(np.uint8)

    def __init__(self, frame: av.VideoFrame):
        self._frame = frame
        self.shape = (frame.height * 3 // 2, frame.width)

    def copy_to(self, dst: np.ndarray) -> None:
        """dst: uint8 [H*3/2, W], C-contiguous: Y rows, then U, then V (cv2's I420 layout)."""
        flat = dst.reshape(-1)
        start = 0
        for plane in self._frame.planes:
            h, w = plane.height, plane.width
            rows = np.frombuffer(plane, np.uint8).reshape(h, plane.line_size)[:, :w]
            np.copyto(flat[start:start + h * w].reshape(h, w), rows)
            start += h * w

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = np.empty(self.shape, np.uint8)
        self.copy_to(out)
        return out if dtype is None else out.astype(dtype, copy=False)
