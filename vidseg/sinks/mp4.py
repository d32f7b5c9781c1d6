"""H.264 MP4 sink: PyAV libx264, yuv420p, source timestamps kept, audio remuxed untouched.

RGB→I420 is done with OpenCV (about twice as fast as PyAV's swscale path) in BT.601, its only
matrix; a source in another (BT.709 for HD) is converted back in its own with swscale, and
its colour tags are kept. libx264 runs its own threads. The file is written with
`+faststart` (index at the front) and is always finalised by `close()` (encoder flushed,
remaining audio muxed, trailer written), so a run stopped early still leaves a playable file.
"""
from __future__ import annotations

import os
from fractions import Fraction
from typing import Iterator, Optional

import av
import numpy as np
from av.video.reformatter import ColorRange, Colorspace

from vidseg.sources.file import resilient_demux

# Audio codecs MP4 players take as they are; others are re-encoded to AAC (MP2 too: the muxer
# takes it, but browsers do not play it, and re-encoding fills a damaged broadcast's gaps)
MP4_AUDIO = {"aac", "mp3", "ac3", "eac3", "alac", "opus", "flac"}
# AVColorSpace values (a source's matrix) that OpenCV's BT.601 conversion does not match,
# and swscale's name for each; unspecified (2) is BT.601 to swscale too
SWSCALE_MATRICES = {1: Colorspace.ITU709, 4: Colorspace.FCC, 7: Colorspace.SMPTE240M, 9: Colorspace.BT2020,
                    10: Colorspace.BT2020}
BT601_MATRICES = {5, 6}  # bt470bg, smpte170m
# FFmpeg's default layout for a channel count, for audio that gives a count but no order
DEFAULT_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "4.0", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}


class Mp4Sink:
    """write(image uint8 RGB [H, W, 3], pts seconds) → one H.264 frame.

    path: output file (written as MP4 whatever its name, so a temp name works).
    width, height: frame size; odd sizes are cropped by one pixel (yuv420p needs even sizes).
    fps: nominal rate (stream metadata); time_base: Fraction the pts are kept in.
    audio_from: a file whose audio stream (FFmpeg's best: the one marked default) is copied into
        the output, interleaved by time.
    time_shift: seconds added to every timestamp, video and audio alike, so that the output
        starts at 0 as ffmpeg's does: players skip what an MP4 holds before 0 (an MPEG-TS whose
        clock wrapped starts below it) and show a blank for a late start (an MPEG-TS's clock:
        1.4 s from ffmpeg, hours from a broadcast). sar: the pixel aspect ratio (anamorphic
        video), None: square.
    keep_as: where the sink stage puts the finalised file if the run's supervisor dies (a live
        recording, kept as a partial); None: the file is removed then (see vidseg.stages).
    colour: the source's {"primaries", "trc", "space", "range"} (FFmpeg's AVColor* numbers,
        `sources.file.probe`): tagged on the output, and the matrix RGB frames are converted
        back to YUV in; None: untagged, BT.601.
    metadata: the source file's tags (creation_time, title, ...), written into the output.
    """

    def __init__(self, path: str, width: int, height: int, fps: Optional[float],
                 time_base: Fraction = Fraction(1, 90000), preset: str = "veryfast", crf: int = 23,
                 audio_from: Optional[str] = None, time_shift: float = 0.0, sar: Optional[Fraction] = None,
                 keep_as: Optional[str] = None, colour: Optional[dict] = None, metadata: Optional[dict] = None):
        self.path = path
        self.keep_as = keep_as
        self.width, self.height = width - width % 2, height - height % 2
        self.time_base = Fraction(time_base)
        self.time_shift = time_shift
        self._out = av.open(path, "w", format="mp4",
                            options={"movflags": "+faststart", **movie_timescale(self.time_base)})
        self._out.metadata.update(metadata or {})
        rate = Fraction(fps).limit_denominator(100000) if fps else Fraction(30)
        self._video = self._out.add_stream("libx264", rate=rate, options={"preset": preset, "crf": str(crf)})
        self._video.width, self._video.height = self.width, self.height
        self._video.pix_fmt = "yuv420p"
        # Frame threads, 1.5 per usable CPU: what libx264 picks for the ffmpeg CLI. (PyAV's
        # defaults are one thread in slice mode; its "auto" count here uses 15 % more CPU.)
        self._video.codec_context.thread_count = x264_threads()
        self._video.codec_context.thread_type = "AUTO"
        self._video.time_base = self.time_base
        self._video.codec_context.time_base = self.time_base
        if sar and sar != 1:
            self._video.codec_context.sample_aspect_ratio = Fraction(sar)
        self._colour = colour
        self._matrix = SWSCALE_MATRICES.get(colour["space"]) if colour else None  # None: OpenCV's BT.601
        self.trim_audio = False  # set for a partial run: audio stops with the last frame
        self.last_duration: Optional[float] = None  # set at the end: seconds the last frame lasts
        self._frame_s = 1.0 / float(rate)
        self._last_pts: Optional[int] = None
        self._end_time = 0.0
        self._audio: Optional[_AudioCopy] = None
        if audio_from:
            self._audio = _AudioCopy.open(audio_from, self._out, time_shift)

    def write(self, image: np.ndarray, pts: float) -> bool:
        """image: uint8 RGB [H, W, 3], converted to limited-range YUV in the source's matrix."""
        image = np.ascontiguousarray(image[: self.height, : self.width])
        self._tag(limited=True)
        if self._matrix is not None:
            frame = av.VideoFrame.from_numpy_buffer(image, format="rgb24").reformat(
                format="yuv420p", dst_colorspace=self._matrix, dst_color_range=ColorRange.MPEG)
            return self._encode(frame, pts)
        import cv2  # here, not at the top: the main process imports this module and never needs OpenCV

        return self._encode(self._i420_frame(cv2.cvtColor(image, cv2.COLOR_RGB2YUV_I420)), pts)

    def write_yuv420p(self, i420: np.ndarray, pts: float) -> bool:
        """i420: the source's own YUV, uint8 [H*3/2, W] C-contiguous at the sink's (even) size.
        libx264 copies the picture during encode(), so the buffer may be reused as soon as this
        returns."""
        self._tag(limited=False)
        return self._encode(self._i420_frame(i420), pts)

    def _i420_frame(self, i420: np.ndarray) -> av.VideoFrame:
        if self.height % 4 == 0:
            return av.VideoFrame.from_numpy_buffer(i420, format="yuv420p")  # no copy
        # PyAV's from_numpy_buffer takes rows // 6 * 4 as the height: 268 for 270, 0 for 2
        return av.VideoFrame.from_ndarray(i420, format="yuv420p")

    def _tag(self, limited: bool) -> None:
        """Before the first frame (the encoder opens with it): the source's colour tags; the
        range is the source's for its own YUV, limited for YUV made here from RGB."""
        if self._colour is None or self._last_pts is not None:
            return
        context = self._video.codec_context
        context.color_primaries, context.color_trc = self._colour["primaries"], self._colour["trc"]
        if self._colour["space"] in SWSCALE_MATRICES or self._colour["space"] in BT601_MATRICES:
            context.colorspace = self._colour["space"]
        context.color_range = ColorRange.MPEG.value if limited else self._colour["range"]

    def _encode(self, frame: av.VideoFrame, pts: float) -> bool:
        ticks = int(round((pts + self.time_shift) / self.time_base))
        if self._last_pts is not None and ticks <= self._last_pts:
            ticks = self._last_pts + 1  # damaged input: keep pts strictly increasing
        self._last_pts = ticks
        frame.pts, frame.time_base = ticks, self.time_base
        self._end_time = float(ticks * self.time_base) - self.time_shift  # the input's time, as the audio's
        if self._audio:
            self._audio.mux_until(self._end_time)
        self._out.mux(self._video.encode(frame))
        return True

    def close(self) -> None:
        """Flush the encoder, mux audio up to the last video frame, write the trailer. The
        last frame lasts `last_duration` if set, else what the muxer gives it (1 / fps)."""
        try:
            for packet in self._video.encode(None):
                if packet.pts == self._last_pts and self.last_duration:
                    packet.duration = max(1, round(self.last_duration / self.time_base))
                self._out.mux(packet)
            if self._audio:
                self._audio.mux_until(self._end_time + self._frame_s if self.trim_audio else float("inf"), final=True)
        finally:
            if self._audio:
                self._audio.close()
            self._out.close()


def video_frames(path: str) -> int:
    """Frames in the video stream of a finalised MP4 (from its index); 0 when it has none or
    cannot be read (a sink killed before it wrote the index leaves such a file)."""
    try:
        with av.open(path) as container:
            return container.streams.video[0].frames if container.streams.video else 0
    except (av.FFmpegError, OSError):
        return 0


def movie_timescale(time_base: Fraction) -> dict:
    """The MP4 muxer's option for a movie clock that ticks in the video's (a time base n/N
    counts in 1/N; N ≤ 2^20), so that a start edit (video or audio starting late) is exact,
    not rounded to the default's milliseconds (every frame was 0.7 ms early at 24000/1001 fps);
    {} otherwise."""
    return {"movie_timescale": str(time_base.denominator)} if 1000 < time_base.denominator <= 1 << 20 else {}


def x264_threads() -> int:
    """libx264's own rule for `threads=auto`, on the CPUs this process may use."""
    return max(1, (3 * len(os.sched_getaffinity(0))) // 2)


class _AudioCopy:
    """Copies the audio stream of a file into an output container, as time advances."""

    def __init__(self, container, in_stream, out_stream, encoder=None, time_shift: float = 0.0,
                 order: Optional[list] = None):
        self._in = container
        self._in_stream = in_stream
        self._out_stream = out_stream
        if in_stream.metadata.get("language"):  # copied or re-encoded, the track keeps its language
            out_stream.metadata["language"] = in_stream.metadata["language"]
        self._shift = time_shift  # seconds added to the input's timestamps (see Mp4Sink)
        self._encoder = encoder  # (resampler) when the codec cannot go into MP4 as is
        self._order = order  # re-encoded audio: the decoded channel for each channel of its layout
        self._next_pts: Optional[int] = None  # re-encoded audio: pts of the next sample, in 1/rate s
        self._input_end: Optional[float] = None  # re-encoded audio: where the last decoded frame ended, s
        self._packets: Iterator = resilient_demux(container, in_stream)
        self._pending = None
        self._last_dts = None
        self._out = out_stream.container

    @classmethod
    def open(cls, path: str, out, time_shift: float = 0.0) -> Optional["_AudioCopy"]:
        container = av.open(path, metadata_errors="ignore")
        in_stream = container.streams.best("audio")  # the one marked default, as for the video; None: no usable one
        if in_stream is None:
            container.close()
            return None
        if in_stream.codec_context.codec.canonical_name in MP4_AUDIO:
            return cls(container, in_stream, out.add_stream_from_template(in_stream), time_shift=time_shift)
        decoder = in_stream.codec_context
        rate = decoder.sample_rate or 48000
        source = decoder.layout  # held until the decoder has another (below)
        layout, order = _decoded_layout(source)
        # PyAV's AudioLayout frees, when it goes, a channel map it shares with the decoder (a
        # layout in an order of the file's own, as a MOV's 7.1 PCM has): the decoder must stop
        # pointing at it before `source` goes, or the sink aborts (double free).
        decoder.layout = layout
        del source
        encoded = layout if _aac_takes(layout, rate) else "stereo"
        out_stream = out.add_stream("aac", rate=rate, layout=encoded)
        resampler = av.AudioResampler(format="fltp", layout=encoded, rate=rate,
                                      frame_size=out_stream.codec_context.frame_size or 1024)
        return cls(container, in_stream, out_stream, encoder=resampler, time_shift=time_shift, order=order)

    def mux_until(self, t: float, final: bool = False) -> None:
        """Mux input audio packets that start before `t` seconds."""
        while True:
            if self._pending is None:
                try:
                    self._pending = next(self._packets)
                except StopIteration:
                    break
            packet = self._pending
            if packet.dts is None:  # demuxer's flush packet
                self._pending = None
                continue
            if packet.pts is not None and float(packet.pts * packet.time_base) >= t:
                break
            self._pending = None
            self._mux(packet)
        if final and self._encoder is not None:
            for resampled in self._encoder.resample(None):
                self._encode(resampled)
            self._out.mux(self._out_stream.encode(None))

    def _mux(self, packet) -> None:
        if self._encoder is None:
            if self._last_dts is not None and packet.dts <= self._last_dts:
                return  # damaged input: the muxer needs increasing timestamps
            self._last_dts = packet.dts
            if self._shift:
                ticks = round(self._shift / packet.time_base)
                packet.dts += ticks
                if packet.pts is not None:
                    packet.pts += ticks
            packet.stream = self._out_stream
            try:
                self._out.mux(packet)
            except av.error.FFmpegError:  # a damaged packet is dropped, the audio goes on
                pass
            return
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            return
        for frame in frames:
            if self._order:
                frame = _reordered(frame, self._order)
            pts = frame.pts if frame.pts is not None else packet.pts
            start = float(pts * (frame.time_base or packet.time_base)) if pts is not None else None
            if self._next_pts is None:  # the first sample keeps its time: the audio starts where it did
                self._next_pts = round((start + self._shift) * self._out_stream.rate) if start is not None else 0
            elif start is not None and start - self._input_end > frame.samples / frame.sample_rate / 2:
                # packets lost in damaged input: silence in their place keeps what follows in sync
                missing = round((start - self._input_end) * frame.sample_rate)
                while missing > 0:  # a second at a time
                    self._resample(_silence(frame, min(missing, frame.sample_rate)))
                    missing -= frame.sample_rate
            duration = frame.samples / frame.sample_rate
            self._input_end = start + duration if start is not None else (self._input_end or 0.0) + duration
            self._resample(frame)

    def _resample(self, frame) -> None:
        frame.pts = None  # the resampler regroups samples: its output is stamped in _encode
        for resampled in self._encoder.resample(frame):
            self._encode(resampled)

    def _encode(self, frame) -> None:
        """Encode and mux one resampled frame, stamped with the sample count since the first
        sample (pts in 1/rate s): continuous audio, from the input's start time."""
        frame.pts, frame.time_base = self._next_pts, Fraction(1, self._out_stream.rate)
        self._next_pts += frame.samples
        self._out.mux(self._out_stream.encode(frame))

    def close(self) -> None:
        self._in.close()


def _decoded_layout(source: av.AudioLayout) -> tuple[str, Optional[list]]:
    """A standard layout with the source's channels (mono stays mono, 5.1 stays 5.1), and the
    order to take the decoded channels in for it (None: as decoded). A count with no order (PCM
    in AVI) takes FFmpeg's default layout for that count; an order of the file's own (a MOV's
    7.1 PCM: side before back) takes the default layout with those channels, reordered, or else
    is decoded as channels with no order."""
    name, count = source.name, source.nb_channels
    custom = name.endswith(")") and f"{count} channels (" in name
    if not custom and not name.endswith(" channels"):
        return name, None
    standard = DEFAULT_LAYOUTS.get(count)
    if standard is None:
        return f"{count} channels", None
    if not custom:
        return standard, None
    channels = [c.name for c in source.channels]
    wanted = [c.name for c in av.AudioLayout(standard).channels]
    if sorted(channels) != sorted(wanted):
        return f"{count} channels", None
    return standard, [channels.index(c) for c in wanted]


def _aac_takes(layout: str, rate: int) -> bool:
    try:
        encoder = av.CodecContext.create("aac", "w")
        encoder.layout, encoder.sample_rate, encoder.format = layout, rate, "fltp"
        encoder.open()
    except (av.FFmpegError, ValueError):
        return False
    return True


def _reordered(frame: av.AudioFrame, order: list) -> av.AudioFrame:
    """`frame` with its channels taken in `order` (decoded channel per channel), same layout."""
    samples = frame.to_ndarray()  # planar: [channels, samples]; packed: [1, samples * channels]
    if frame.format.is_planar:
        samples = samples[order]
    else:
        samples = samples.reshape(-1, len(order))[:, order].reshape(1, -1)
    out = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format=frame.format.name,
                                     layout=frame.layout.name)
    out.sample_rate, out.pts, out.time_base = frame.sample_rate, frame.pts, frame.time_base
    return out


def _silence(like: av.AudioFrame, samples: int) -> av.AudioFrame:
    """`samples` samples of silence in the format, layout and rate of `like`."""
    silent = av.AudioFrame(format=like.format.name, layout=like.layout.name, samples=samples)
    zero = b"\x80" if like.format.name.startswith("u8") else b"\x00"  # unsigned 8-bit is centred on 128
    for plane in silent.planes:
        plane.update(zero * plane.buffer_size)
    silent.sample_rate = like.sample_rate
    return silent
